/*
 * test_pool_acct — a worker's pool of backend connections, counted: the
 * pool_min_idle fill, the pool_max bound, waiting logins served oldest
 * first when a slot frees, a cancelled wait, a wait that times out, an
 * idle connection the server closes, and the worker's end closing what the
 * pool owns while it is still opening (a refill not greeted yet, or a
 * connection coming back through UNAUTHENTICATE).
 *
 * The fake backend is a loopback listener: the pool connects to it for
 * real (proxy/backend.c), the test accepts and greets each connection by
 * hand. The worker is built by hand from worker_state.h (a loop, a reaper,
 * a runtime from a config file) and its loop runs in bounded steps, so a
 * broken pool fails a test and never hangs it. Links pool.o, backend.o,
 * cmdq.o, conn.o, reaper.o, runtime.o and common/ only.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "backend.h"
#include "cfg.h"
#include "log.h"
#include "pool.h"
#include "reaper.h"
#include "runtime.h"
#include "worker_state.h"

#define STEPS   3000 /* loop steps a wait may take, 1 ms apart */
#define MAX_SRV 16

static const char greeting[] = "* OK [CAPABILITY IMAP4rev1 LITERAL+] fake ready\r\n";

struct fixture {
	struct worker w;
	struct runtime *rt;
	struct pool *p;
	int lfd;          /* the fake backend's listener */
	int srv[MAX_SRV]; /* its accepted connections */
	size_t nsrv;
	char path[64];
};

/* got callbacks: the backends handed to waiting logins, in order */
struct got_rec {
	struct backend *b[8];
	int order[8];
	size_t n;
	size_t nulls;
};
static int got_seq;
static struct got_rec got_rec;

static void got_cb(void *arg, struct backend *b)
{
	int who = (int)(intptr_t)arg;

	if (b == NULL) {
		got_rec.nulls++;
		return;
	}
	assert_true(got_rec.n < 8);
	got_rec.order[got_rec.n] = who;
	got_rec.b[got_rec.n++] = b;
	got_seq++;
}

static int done_calls;
static enum bk_result done_last;

static void done_cb(void *owner, struct backend *b, enum bk_result r, const char *why)
{
	(void)owner;
	(void)b;
	(void)why;
	done_calls++;
	done_last = r;
}

static void attached_cb(struct conn *c, void *owner)
{
	(void)c;
	(void)owner;
}

static void step(struct fixture *f)
{
	ev_run(f->w.loop, EVRUN_NOWAIT);
	(void)reaper_run(&f->w.reaper);
	usleep(1000);
}

/* Accept whatever connected and greet it. */
static void serve(struct fixture *f)
{
	for (;;) {
		int fd = accept(f->lfd, NULL, NULL);
		if (fd < 0)
			return;
		assert_true(f->nsrv < MAX_SRV);
		assert_int_equal(write(fd, greeting, sizeof(greeting) - 1),
		                 (ssize_t)(sizeof(greeting) - 1));
		f->srv[f->nsrv++] = fd;
	}
}

/* Read from server connection i until a line containing what arrived
 * (fail after STEPS); its tag goes to tag (NUL-terminated). */
static void srv_expect(struct fixture *f, size_t i, const char *what, char *tag, size_t taglen)
{
	char line[512];
	size_t len = 0;

	for (int k = 0; k < STEPS; k++) {
		ssize_t n = recv(f->srv[i], line + len, sizeof(line) - 1 - len, MSG_DONTWAIT);
		if (n > 0) {
			len += (size_t)n;
			line[len] = '\0';
			char *eol = strstr(line, "\r\n");
			if (eol != NULL && strstr(line, what) != NULL) {
				size_t t = strcspn(line, " ");
				assert_true(t < taglen);
				memcpy(tag, line, t);
				tag[t] = '\0';
				return;
			}
			assert_true(len < sizeof(line) - 1);
		}
		step(f);
	}
	fail_msg("the fake backend never received %s", what);
}

static void srv_send(struct fixture *f, size_t i, const char *text)
{
	assert_int_equal(write(f->srv[i], text, strlen(text)), (ssize_t)strlen(text));
}

static void counts(struct fixture *f, unsigned *idle, unsigned *total, unsigned *waiting)
{
	pool_counts(f->p, idle, total, waiting);
}

/* Run until the pool holds want_idle idle connections (and serve the
 * fake backend meanwhile); fail after STEPS. */
static void until_idle(struct fixture *f, unsigned want_idle)
{
	unsigned idle = 0;

	for (int i = 0; i < STEPS; i++) {
		serve(f);
		step(f);
		counts(f, &idle, NULL, NULL);
		if (idle == want_idle)
			return;
	}
	fail_msg("pool never reached %u idle connections (has %u)", want_idle, idle);
}

/* Run n steps, serving the fake backend. */
static void run_for(struct fixture *f, int n)
{
	for (int i = 0; i < n; i++) {
		serve(f);
		step(f);
	}
}

static struct fixture *setup(unsigned min_idle, unsigned max, const char *wait)
{
	struct fixture *f = calloc(1, sizeof(*f));
	struct sockaddr_in sa = {.sin_family = AF_INET};
	socklen_t slen = sizeof(sa);
	char err[256];
	struct cfg *cfg;
	FILE *fp;

	assert_non_null(f);
	f->lfd = socket(AF_INET, SOCK_STREAM, 0);
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(bind(f->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
	assert_int_equal(listen(f->lfd, 16), 0);
	assert_int_equal(getsockname(f->lfd, (struct sockaddr *)&sa, &slen), 0);
	assert_int_equal(fcntl(f->lfd, F_SETFL, O_NONBLOCK), 0);

	snprintf(f->path, sizeof(f->path), "/tmp/test_pool_acct.XXXXXX");
	int cfd = mkstemp(f->path);
	assert_true(cfd >= 0);
	fp = fdopen(cfd, "w");
	assert_non_null(fp);
	fprintf(fp,
	        "[imapmux]\nworkers = 1\nlog_level = error\n"
	        "[listen plain]\naddress = 127.0.0.1:1\ntls = none\nallow_plaintext_auth = yes\n"
	        "[routing]\nlookup = static\nfallback = a\n"
	        "[backend a]\naddress = 127.0.0.1:%u\ntls = none\ncheck_interval = 0\n"
	        "reuse_ttl = 0\nconnect_timeout = 2s\ncommand_timeout = 2s\n"
	        "pool_min_idle = %u\npool_max = %u\npool_wait = %s\n",
	        ntohs(sa.sin_port), min_idle, max, wait);
	fclose(fp);
	if (cfg_load(f->path, &cfg, err, sizeof(err)) < 0)
		fail_msg("cfg_load: %s", err);
	f->rt = runtime_new(cfg, err, sizeof(err));
	if (f->rt == NULL)
		fail_msg("runtime_new: %s", err);

	f->w.loop = ev_loop_new(EVFLAG_AUTO);
	f->w.rt = f->rt;
	f->w.nworkers = 1;
	reaper_init(&f->w.reaper);
	list_init(&f->w.sessions);
	list_init(&f->w.reuse);
	list_init(&f->w.pools);
	f->p = pool_of(&f->w, f->rt, &f->rt->cfg->backends[0]);
	assert_non_null(f->p);
	memset(&got_rec, 0, sizeof(got_rec));
	got_seq = 0;
	return f;
}

static void teardown(struct fixture *f)
{
	pool_close_all(&f->w);
	for (int i = 0; i < 50; i++)
		step(f);
	pool_destroy_all(&f->w);
	(void)reaper_run(&f->w.reaper);
	for (size_t i = 0; i < f->nsrv; i++)
		close(f->srv[i]);
	close(f->lfd);
	ev_loop_destroy(f->w.loop);
	runtime_unref(&f->rt);
	unlink(f->path);
	free(f);
}

static void test_min_idle_fill(void **state)
{
	struct fixture *f = setup(2, 3, "1s");
	unsigned idle, total, waiting;

	(void)state;
	pool_prefill(&f->w, f->rt);
	until_idle(f, 2);
	run_for(f, 100); /* no further connection: 2 idle is the target */
	counts(f, &idle, &total, &waiting);
	assert_int_equal(idle, 2);
	assert_int_equal(total, 2);
	assert_int_equal(waiting, 0);
	assert_int_equal(f->nsrv, 2);
	teardown(f);
}

static void test_bound_and_waiters_oldest_first(void **state)
{
	struct fixture *f = setup(0, 2, "5s");
	struct backend *b[2] = {NULL, NULL}, *x = NULL;
	struct pool_wait *w1 = NULL, *w2 = NULL;
	unsigned idle, total, waiting;

	(void)state;
	for (int i = 0; i < 2; i++) {
		struct pool_wait *wt = NULL;
		assert_int_equal(pool_acquire(f->p, 1, done_cb, NULL, &b[i], got_cb, NULL, &wt), 0);
		assert_non_null(b[i]);
	}
	counts(f, &idle, &total, &waiting);
	assert_int_equal(total, 2);
	/* At the bound: queued, nothing handed out. */
	assert_int_equal(pool_acquire(f->p, 2, done_cb, NULL, &x, got_cb, (void *)1, &w1), -2);
	assert_int_equal(pool_acquire(f->p, 3, done_cb, NULL, &x, got_cb, (void *)2, &w2), -2);
	run_for(f, 50);
	counts(f, &idle, &total, &waiting);
	assert_int_equal(total, 2);
	assert_int_equal(waiting, 2);
	assert_int_equal(got_rec.n, 0);
	assert_true(f->nsrv <= 2);

	/* A slot frees: the oldest waiter gets a connection, the other waits. */
	backend_destroy(&b[0]);
	for (int i = 0; i < STEPS && got_rec.n == 0; i++) {
		serve(f);
		step(f);
	}
	assert_int_equal(got_rec.n, 1);
	assert_int_equal(got_rec.order[0], 1);
	counts(f, &idle, &total, &waiting);
	assert_int_equal(total, 2);
	assert_int_equal(waiting, 1);

	backend_destroy(&b[1]);
	for (int i = 0; i < STEPS && got_rec.n == 1; i++) {
		serve(f);
		step(f);
	}
	assert_int_equal(got_rec.n, 2);
	assert_int_equal(got_rec.order[1], 2);
	counts(f, &idle, &total, &waiting);
	assert_int_equal(total, 2);
	assert_int_equal(waiting, 0);
	backend_destroy(&got_rec.b[0]);
	backend_destroy(&got_rec.b[1]);
	counts(f, &idle, &total, &waiting);
	assert_int_equal(total, 0);
	teardown(f);
}

static void test_cancelled_wait_gets_nothing(void **state)
{
	struct fixture *f = setup(0, 1, "5s");
	struct backend *b = NULL, *x = NULL;
	struct pool_wait *wt = NULL;
	unsigned waiting;

	(void)state;
	assert_int_equal(pool_acquire(f->p, 1, done_cb, NULL, &b, got_cb, NULL, &wt), 0);
	assert_int_equal(pool_acquire(f->p, 2, done_cb, NULL, &x, got_cb, (void *)1, &wt), -2);
	counts(f, NULL, NULL, &waiting);
	assert_int_equal(waiting, 1);
	pool_wait_cancel(wt);
	counts(f, NULL, NULL, &waiting);
	assert_int_equal(waiting, 0);
	backend_destroy(&b);
	run_for(f, 100);
	assert_int_equal(got_rec.n, 0);
	assert_int_equal(got_rec.nulls, 0);
	teardown(f);
}

static void test_wait_times_out(void **state)
{
	struct fixture *f = setup(0, 1, "50ms");
	struct backend *b = NULL, *x = NULL;
	struct pool_wait *wt = NULL;
	unsigned waiting;

	(void)state;
	assert_int_equal(pool_acquire(f->p, 1, done_cb, NULL, &b, got_cb, NULL, &wt), 0);
	assert_int_equal(pool_acquire(f->p, 2, done_cb, NULL, &x, got_cb, (void *)1, &wt), -2);
	for (int i = 0; i < STEPS && got_rec.nulls == 0; i++) {
		serve(f);
		step(f);
	}
	assert_int_equal(got_rec.nulls, 1);
	assert_int_equal(got_rec.n, 0);
	counts(f, NULL, NULL, &waiting);
	assert_int_equal(waiting, 0);
	backend_destroy(&b);
	teardown(f);
}

static void test_idle_closed_by_server_is_replaced(void **state)
{
	struct fixture *f = setup(1, 2, "1s");
	unsigned idle, total;

	(void)state;
	pool_prefill(&f->w, f->rt);
	until_idle(f, 1);
	assert_int_equal(f->nsrv, 1);
	close(f->srv[0]);
	f->srv[0] = -1;
	/* The dead one leaves the pool; a new one is opened in its place
	 * (at once or after the refill timer). */
	for (int i = 0; i < STEPS && f->nsrv < 2; i++) {
		serve(f);
		step(f);
	}
	assert_int_equal(f->nsrv, 2);
	until_idle(f, 1);
	counts(f, &idle, &total, NULL);
	assert_int_equal(idle, 1);
	assert_int_equal(total, 1);
	f->srv[0] = dup(f->lfd); /* something to close in teardown */
	teardown(f);
}

/* The worker ends while the pool's refill is connecting (greeting not
 * sent yet): the connection is closed and uncounted, not left behind. */
static void test_close_all_ends_opening_refill(void **state)
{
	struct fixture *f = setup(1, 2, "1s");
	unsigned idle, total;

	(void)state;
	pool_prefill(&f->w, f->rt);
	counts(f, &idle, &total, NULL);
	assert_int_equal(total, 1);
	assert_int_equal(idle, 0);
	pool_close_all(&f->w);
	for (int i = 0; i < 50; i++)
		step(f);
	counts(f, &idle, &total, NULL);
	assert_int_equal(total, 0);
	/* Nothing more is opened after it. */
	run_for(f, 50);
	counts(f, NULL, &total, NULL);
	assert_int_equal(total, 0);
	teardown(f);
}

/* A session's connection goes back through UNAUTHENTICATE, and the worker
 * ends before the server answers: pool_close_all closes it too. */
static void test_close_all_ends_returning(void **state)
{
	struct fixture *f = setup(0, 2, "1s");
	struct backend *b = NULL;
	struct pool_wait *wt = NULL;
	unsigned idle, total;
	char tag[64], reply[128];

	(void)state;
	done_calls = 0;
	assert_int_equal(pool_acquire(f->p, 1, done_cb, NULL, &b, got_cb, NULL, &wt), 0);
	assert_non_null(b);
	for (int i = 0; i < STEPS && f->nsrv == 0; i++) {
		serve(f);
		step(f);
	}
	assert_int_equal(f->nsrv, 1);
	assert_int_equal(backend_login(b, "u", 1, "p", 1), 0);
	srv_expect(f, 0, "LOGIN", tag, sizeof(tag));
	snprintf(reply, sizeof(reply), "%s OK [CAPABILITY IMAP4rev1 UNAUTHENTICATE] in\r\n", tag);
	srv_send(f, 0, reply);
	for (int i = 0; i < STEPS && done_calls == 0; i++)
		step(f);
	assert_int_equal(done_calls, 1);
	assert_int_equal(done_last, BK_RES_OK);
	backend_attach(b, attached_cb, NULL);

	pool_put_back(f->p, b, false);
	srv_expect(f, 0, "UNAUTHENTICATE", tag, sizeof(tag));
	counts(f, &idle, &total, NULL);
	assert_int_equal(total, 1);
	assert_int_equal(idle, 0);
	pool_close_all(&f->w); /* no answer came */
	for (int i = 0; i < 50; i++)
		step(f);
	counts(f, &idle, &total, NULL);
	assert_int_equal(total, 0);
	assert_int_equal(idle, 0);
	teardown(f);
}

/* The same connection, answered: idle in the pool again, then closed by
 * the worker's end like any idle one. */
static void test_returning_becomes_idle(void **state)
{
	struct fixture *f = setup(0, 2, "1s");
	struct backend *b = NULL;
	struct pool_wait *wt = NULL;
	unsigned idle, total;
	char tag[64], reply[128];

	(void)state;
	done_calls = 0;
	assert_int_equal(pool_acquire(f->p, 1, done_cb, NULL, &b, got_cb, NULL, &wt), 0);
	for (int i = 0; i < STEPS && f->nsrv == 0; i++) {
		serve(f);
		step(f);
	}
	assert_int_equal(backend_login(b, "u", 1, "p", 1), 0);
	srv_expect(f, 0, "LOGIN", tag, sizeof(tag));
	snprintf(reply, sizeof(reply), "%s OK [CAPABILITY IMAP4rev1 UNAUTHENTICATE] in\r\n", tag);
	srv_send(f, 0, reply);
	for (int i = 0; i < STEPS && done_calls == 0; i++)
		step(f);
	assert_int_equal(done_last, BK_RES_OK);
	backend_attach(b, attached_cb, NULL);
	pool_put_back(f->p, b, false);
	srv_expect(f, 0, "UNAUTHENTICATE", tag, sizeof(tag));
	snprintf(reply, sizeof(reply), "%s OK [CAPABILITY IMAP4rev1 LITERAL+] out\r\n", tag);
	srv_send(f, 0, reply);
	until_idle(f, 1);
	counts(f, &idle, &total, NULL);
	assert_int_equal(total, 1);
	pool_close_all(&f->w);
	for (int i = 0; i < 50; i++)
		step(f);
	counts(f, &idle, &total, NULL);
	assert_int_equal(idle, 0);
	assert_int_equal(total, 0);
	teardown(f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_min_idle_fill),
	    cmocka_unit_test(test_bound_and_waiters_oldest_first),
	    cmocka_unit_test(test_cancelled_wait_gets_nothing),
	    cmocka_unit_test(test_wait_times_out),
	    cmocka_unit_test(test_idle_closed_by_server_is_replaced),
	    cmocka_unit_test(test_close_all_ends_opening_refill),
	    cmocka_unit_test(test_close_all_ends_returning),
	    cmocka_unit_test(test_returning_becomes_idle),
	};

	log_set_level(LOG_LVL_ERROR);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
