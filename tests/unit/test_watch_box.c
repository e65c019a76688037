/*
 * test_watch_box — watchers shared by two workers through their mailboxes
 * (proxy/watch.c): the owner holds the one real watcher; the other
 * worker's hold is up only once the owner's watcher is, hears each change
 * and the loss, and lets go on release; a backend the owner does not know
 * (a reload seen by one worker only) and an owner that has stopped answer
 * "gone", never a crash; messages to a stopped worker are refused and
 * freed (ASan and valgrind see the rest).
 *
 * Two workers built by hand from worker_state.h (a loop, a reaper, a
 * runtime from a config file each), both driven from this thread in
 * bounded steps: the mailboxes do not care which thread posts. The
 * watcher connects for real to a loopback fake backend that the test
 * answers by hand (greeting, login, EXAMINE, IDLE). Links watch.o, pool.o,
 * backend.o, cmdq.o, conn.o, reaper.o, runtime.o and common/ only.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cfg.h"
#include "log.h"
#include "pool.h"
#include "reaper.h"
#include "runtime.h"
#include "watch.h"
#include "worker_state.h"

#define STEPS 3000 /* loop steps a wait may take, 1 ms apart */

static const char greeting[] =
    "* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN SASL-IR IDLE CONDSTORE] fake ready\r\n";
static const char select_cmd[] = "EXAMINE \"INBOX\"";

struct fixture {
	struct worker w[2];
	int o, h;              /* the owner of "u1" and the other worker */
	struct runtime *rt[2]; /* each worker's configuration */
	int lfd;               /* the fake backend's listener */
	int srv;               /* its one accepted connection, or -1 */
	char in[2048];         /* what the fake backend has read and not matched */
	size_t inlen;
	char path[2][64];
};

/* What the callbacks heard, per worker. */
struct heard {
	int ready;
	int changed;
	char mbox[64]; /* the last change's mailbox ("*": any) */
};
static struct heard heard[2];

static void changed_cb(struct worker *w, const uint8_t *user, size_t ulen, const uint8_t *mbox,
                       size_t mlen)
{
	struct heard *h = &heard[w->id];

	assert_int_equal(ulen, 2);
	assert_memory_equal(user, "u1", 2);
	h->changed++;
	if (mbox == NULL)
		snprintf(h->mbox, sizeof(h->mbox), "*");
	else
		snprintf(h->mbox, sizeof(h->mbox), "%.*s", (int)mlen, (const char *)mbox);
}

static void ready_cb(struct worker *w, const uint8_t *user, size_t ulen, const uint8_t *mbox,
                     size_t mlen)
{
	(void)user;
	(void)ulen;
	(void)mbox;
	(void)mlen;
	heard[w->id].ready++;
}

static void step(struct fixture *f)
{
	for (int i = 0; i < 2; i++) {
		ev_run(f->w[i].loop, EVRUN_NOWAIT);
		(void)reaper_run(&f->w[i].reaper);
	}
	usleep(1000);
}

static void run_for(struct fixture *f, int n)
{
	for (int i = 0; i < n; i++)
		step(f);
}

/* Accept the watcher's connection and greet it. */
static void srv_accept(struct fixture *f)
{
	for (int k = 0; k < STEPS && f->srv < 0; k++) {
		f->srv = accept(f->lfd, NULL, NULL);
		if (f->srv < 0)
			step(f);
	}
	assert_true(f->srv >= 0);
	assert_int_equal(write(f->srv, greeting, sizeof(greeting) - 1),
	                 (ssize_t)(sizeof(greeting) - 1));
}

/* The next line the fake backend gets (stepping the loops meanwhile); it
 * must contain what; its tag goes to tag. */
static void srv_expect(struct fixture *f, const char *what, char *tag, size_t taglen)
{
	for (int k = 0; k < STEPS; k++) {
		char *eol = memmem(f->in, f->inlen, "\r\n", 2);
		if (eol != NULL) {
			size_t n = (size_t)(eol - f->in) + 2, t = strcspn(f->in, " ");
			*eol = '\0';
			if (strstr(f->in, what) == NULL)
				fail_msg("the fake backend got \"%s\", not %s", f->in, what);
			assert_true(t < taglen);
			memcpy(tag, f->in, t);
			tag[t] = '\0';
			memmove(f->in, f->in + n, f->inlen - n);
			f->inlen -= n;
			return;
		}
		ssize_t r =
		    recv(f->srv, f->in + f->inlen, sizeof(f->in) - 1 - f->inlen, MSG_DONTWAIT);
		if (r > 0)
			f->inlen += (size_t)r;
		else
			step(f);
	}
	fail_msg("the fake backend never received %s", what);
}

static void srv_send(struct fixture *f, const char *text)
{
	assert_int_equal(write(f->srv, text, strlen(text)), (ssize_t)strlen(text));
}

/* The watcher logs in, EXAMINEs and IDLEs: the fake backend answers. */
static void srv_serve_setup(struct fixture *f)
{
	char tag[32], line[128];

	srv_accept(f);
	srv_expect(f, "AUTHENTICATE PLAIN", tag, sizeof(tag));
	snprintf(line, sizeof(line), "%s OK [CAPABILITY IMAP4rev1 IDLE CONDSTORE] in\r\n", tag);
	srv_send(f, line);
	srv_expect(f, select_cmd, tag, sizeof(tag));
	snprintf(line, sizeof(line), "%s OK [READ-ONLY] examined\r\n", tag);
	srv_send(f, line);
	srv_expect(f, "IDLE", tag, sizeof(tag));
	srv_send(f, "+ idling\r\n");
}

static void write_cfg(char *path, size_t cap, unsigned port, const char *extra)
{
	FILE *fp;
	int fd;

	snprintf(path, cap, "/tmp/test_watch_box.XXXXXX");
	fd = mkstemp(path);
	assert_true(fd >= 0);
	fp = fdopen(fd, "w");
	assert_non_null(fp);
	fprintf(fp,
	        "[imapmux]\nworkers = 2\nlog_level = error\npark_idle_after = 1s\n"
	        "[listen plain]\naddress = 127.0.0.1:1\ntls = none\nallow_plaintext_auth = yes\n"
	        "[routing]\nlookup = static\nfallback = a\n"
	        "[backend a]\naddress = 127.0.0.1:%u\ntls = none\ncheck_interval = 0\n"
	        "reuse_ttl = 0\nconnect_timeout = 2s\ncommand_timeout = 2s\npool_min_idle = 0\n"
	        "master_user = master\nmaster_password = secret\nwatch = idle\n%s",
	        port, extra);
	fclose(fp);
}

/* The holder's configuration has a backend b the owner's has not (a
 * reload one of them has not seen yet). */
static struct fixture *setup(void)
{
	struct fixture *f = calloc(1, sizeof(*f));
	struct sockaddr_in sa = {.sin_family = AF_INET};
	socklen_t slen = sizeof(sa);
	char err[256];

	assert_non_null(f);
	f->w[0].nworkers = 2;
	f->w[0].all = f->w;
	f->o = watch_owner(&f->w[0], (const uint8_t *)"u1", 2);
	f->h = 1 - f->o;
	f->srv = -1;
	f->lfd = socket(AF_INET, SOCK_STREAM, 0);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(f->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(f->lfd, 16), 0);
	assert_int_equal(getsockname(f->lfd, (struct sockaddr *)&sa, &slen), 0);
	assert_int_equal(fcntl(f->lfd, F_SETFL, O_NONBLOCK), 0);
	for (int i = 0; i < 2; i++) {
		struct cfg *cfg;
		write_cfg(f->path[i], sizeof(f->path[i]), ntohs(sa.sin_port),
		          i == f->h ? "[backend b]\naddress = 127.0.0.1:1\ntls = none\n"
		                      "check_interval = 0\nmaster_user = master\n"
		                      "master_password = secret\n"
		                    : "");
		if (cfg_load(f->path[i], &cfg, err, sizeof(err)) < 0)
			fail_msg("cfg_load: %s", err);
		f->rt[i] = runtime_new(cfg, err, sizeof(err));
		if (f->rt[i] == NULL)
			fail_msg("runtime_new: %s", err);
	}
	for (int i = 0; i < 2; i++) {
		struct worker *w = &f->w[i];
		w->id = i;
		w->loop = ev_loop_new(EVFLAG_AUTO);
		w->rt = f->rt[i];
		w->nworkers = 2;
		w->all = f->w;
		reaper_init(&w->reaper);
		list_init(&w->sessions);
		list_init(&w->reuse);
		list_init(&w->pools);
		assert_int_equal(watch_init(w), 0);
	}
	memset(heard, 0, sizeof(heard));
	return f;
}

static void teardown(struct fixture *f)
{
	for (int i = 0; i < 2; i++)
		watch_close_all(&f->w[i]);
	for (int i = 0; i < 2; i++)
		pool_close_all(&f->w[i]);
	run_for(f, 20);
	for (int i = 0; i < 2; i++) {
		pool_destroy_all(&f->w[i]);
		(void)reaper_run(&f->w[i].reaper);
		watch_fini(&f->w[i]);
		ev_loop_destroy(f->w[i].loop);
		runtime_unref(&f->rt[i]);
		unlink(f->path[i]);
	}
	if (f->srv >= 0)
		close(f->srv);
	close(f->lfd);
	free(f);
}

/* The owner of "u1", and the other worker: every worker names the same. */
static void roles(struct fixture *f, int *owner_r, int *holder_r)
{
	assert_int_equal(watch_owner(&f->w[0], (const uint8_t *)"u1", 2), f->o);
	assert_int_equal(watch_owner(&f->w[1], (const uint8_t *)"u1", 2), f->o);
	*owner_r = f->o;
	*holder_r = f->h;
}

/* A counter of a worker's stats (relaxed, as the stats thread reads them). */
#define stat_of(p) ((long)atomic_load_explicit((p), memory_order_relaxed))

static struct watch *hold(struct fixture *f, int i, const char *backend)
{
	const struct cfg_backend *bc = cfg_backend_find(f->rt[i]->cfg, backend);

	assert_non_null(bc);
	return watch_hold(&f->w[i], f->rt[i], bc, (const uint8_t *)"u1", 2,
	                  (const uint8_t *)"INBOX", 5, select_cmd, NULL, changed_cb, ready_cb);
}

static void until(struct fixture *f, bool (*pred)(void *), void *arg, const char *what)
{
	for (int k = 0; k < STEPS; k++) {
		if (pred(arg))
			return;
		step(f);
	}
	fail_msg("never: %s", what);
}

static bool is_up(void *arg)
{
	return watch_up(arg);
}

static bool is_down(void *arg)
{
	return !watch_up(arg);
}

static bool heard_change(void *arg)
{
	return ((struct heard *)arg)->changed > 0;
}

static void test_one_watcher_two_workers(void **state)
{
	struct fixture *f = setup();
	int o, h;
	struct watch *mine, *theirs, *again;

	(void)state;
	roles(f, &o, &h);
	/* The holder asks first: the real watcher is the owner's. */
	theirs = hold(f, h, "a");
	assert_non_null(theirs);
	assert_false(watch_up(theirs));
	mine = hold(f, o, "a");
	assert_non_null(mine);
	srv_serve_setup(f);
	until(f, is_up, mine, "the owner's watcher up");
	until(f, is_up, theirs, "the hold up");
	assert_int_equal(heard[h].ready, 1);
	assert_int_equal(heard[o].ready, 1);
	assert_int_equal(stat_of(&f->w[o].stats.watchers), 1);
	assert_int_equal(stat_of(&f->w[o].stats.watchers_up), 1);
	assert_int_equal(stat_of(&f->w[h].stats.watchers), 0);
	assert_int_equal(stat_of(&f->w[h].stats.watchers_up), 0);
	/* Held again on the holder: the same hold, no second connection. */
	again = hold(f, h, "a");
	assert_ptr_equal(again, theirs);
	watch_release(&again);
	assert_null(again);

	/* A change: both workers hear it, on their own worker. */
	srv_send(f, "* 2 EXISTS\r\n");
	until(f, heard_change, &heard[h], "the holder told");
	assert_int_equal(heard[o].changed, 1);
	assert_int_equal(heard[h].changed, 1);
	assert_string_equal(heard[h].mbox, "INBOX");

	/* The connection lost: down on both, and a change (the sessions read
	 * the store again). */
	close(f->srv);
	f->srv = -1;
	f->inlen = 0;
	until(f, is_down, theirs, "the hold down");
	until(f, heard_change, &heard[h], "the holder told of the loss");
	assert_false(watch_up(mine));
	assert_int_equal(stat_of(&f->w[o].stats.watchers_lost), 1);
	assert_int_equal(stat_of(&f->w[o].stats.watchers), 1);
	memset(heard, 0, sizeof(heard));
	/* Back after the backoff: up again, a catch-up change, ready again. */
	srv_serve_setup(f);
	until(f, is_up, theirs, "the hold up again");
	assert_int_equal(heard[h].ready, 1);
	until(f, heard_change, &heard[h], "the holder's catch-up");

	/* Every hold let go: the holder's lingers, then (closed with its
	 * worker here) releases the owner's reg. */
	watch_release(&theirs);
	watch_release(&mine);
	assert_int_equal(hmap_count(&f->w[o].watch_regs), 1);
	watch_close_all(&f->w[h]);
	run_for(f, 10);
	assert_int_equal(hmap_count(&f->w[o].watch_regs), 0);
	assert_int_equal(stat_of(&f->w[o].stats.watchers), 1); /* lingering */
	teardown(f);
}

static void test_unknown_backend_is_gone(void **state)
{
	struct fixture *f = setup();
	int o, h;
	struct watch *wt, *wt2;

	(void)state;
	roles(f, &o, &h);
	assert_null(cfg_backend_find(f->rt[o]->cfg, "b"));
	wt = hold(f, h, "b");
	assert_non_null(wt);
	run_for(f, 20);
	assert_false(watch_up(wt));
	assert_int_equal(stat_of(&f->w[o].stats.watchers), 0);
	assert_int_equal(hmap_count(&f->w[o].watch_regs), 0);
	assert_int_equal(heard[h].ready, 0);
	/* Gone: the next parking asks again (a new hold), the old one is
	 * only released. */
	wt2 = hold(f, h, "b");
	assert_non_null(wt2);
	assert_ptr_not_equal(wt2, wt);
	watch_release(&wt);
	run_for(f, 20);
	assert_false(watch_up(wt2));
	watch_release(&wt2);
	teardown(f);
}

static void test_owner_stops(void **state)
{
	struct fixture *f = setup();
	int o, h;
	struct watch *wt, *pending;

	(void)state;
	roles(f, &o, &h);
	wt = hold(f, h, "a");
	assert_non_null(wt);
	srv_serve_setup(f);
	until(f, is_up, wt, "the hold up");
	/* Another hold, still on its way when the owner stops: it hears
	 * "gone" from the owner's last look at its mailbox. */
	pending = watch_hold(&f->w[h], f->rt[h], cfg_backend_find(f->rt[h]->cfg, "a"),
	                     (const uint8_t *)"u1", 2, NULL, 0, NULL, NULL, changed_cb, ready_cb);
	assert_non_null(pending);
	watch_close_all(&f->w[o]);
	memset(heard, 0, sizeof(heard));
	until(f, is_down, wt, "the hold down");
	run_for(f, 10);
	assert_false(watch_up(pending));
	/* It was up: its sessions read the store again. */
	until(f, heard_change, &heard[h], "the holder told");
	assert_int_equal(stat_of(&f->w[o].stats.watchers), 0);
	assert_int_equal(stat_of(&f->w[o].stats.watchers_up), 0);
	/* The owner has stopped: a new hold is refused at once. */
	watch_release(&wt);
	wt = hold(f, h, "a");
	assert_null(wt);
	watch_release(&pending);
	teardown(f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_one_watcher_two_workers),
	    cmocka_unit_test(test_unknown_backend_is_gone),
	    cmocka_unit_test(test_owner_stops),
	};

	log_set_level(LOG_LVL_ERROR);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
