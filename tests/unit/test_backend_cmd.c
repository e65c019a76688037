/*
 * test_backend_cmd — unit tests for the backend command channel
 * (proxy/backend.c and cmdq.c: backend_cmd, backend_cmd_claims, backend_tag_reserved,
 * the one reader, the login through it, hooks, hold, the LOGOUT courtesy).
 *
 * The fake connection: a loopback listener stands for the backend server.
 * backend_new connects to it for real; the test accepts and drives the
 * other end by hand (what it writes is the server's stream, what it reads
 * is what imapmux sent). A real libev loop runs in bounded steps
 * (ev_run(EVRUN_NOWAIT), at most STEPS of them, 1 ms apart), so a broken
 * backend makes a test fail, never hang. Handlers record every answer they
 * get (struct rec), and the tests compare records: a response split at any
 * offset must give the same record as the response in one piece.
 *
 * Links proxy/backend.o, cmdq.o, conn.o, reaper.o and common/ only:
 * the backend reports to its counter through hooks, and frees through a
 * reaper, so no pool or worker is needed.
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
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "backend.h"
#include "imap_tok.h"
#include "log.h"
#include "reaper.h"

#define STEPS    3000 /* loop steps a wait may take (1 ms apart when idle) */
#define MAX_EVS  64
#define REC_LINE 512

/* ---------------------------------------------------------------- records */

struct ev_rec {
	enum bk_event ev;
	enum bk_status status;
	bool partial;
	char line[REC_LINE]; /* the bytes the handler saw (NUL-terminated copy) */
};

struct rec {
	struct ev_rec evs[MAX_EVS];
	size_t n;
	size_t gone;          /* BK_EV_GONE calls */
	size_t ended;         /* BK_EV_DONE + BK_EV_GONE calls */
	const char *reply;    /* sent with backend_cmd_reply on BK_EV_CONTINUE */
	unsigned reply_flags; /* ... with these flags */
	int order;            /* position among the commands that ended (from 1) */
};

static int ended_so_far;

static void rec_cb(void *arg, struct backend *b, const struct bk_reply *r)
{
	struct rec *rc = arg;
	struct ev_rec *e;

	assert_true(rc->n < MAX_EVS);
	assert_int_equal(rc->ended, 0); /* nothing after the end */
	e = &rc->evs[rc->n++];
	memset(e, 0, sizeof(*e));
	e->ev = r->ev;
	e->status = r->status;
	e->partial = r->partial;
	if (r->ev == BK_EV_GONE) {
		assert_null(r->head);
		assert_non_null(r->why);
		rc->gone++;
	} else {
		assert_non_null(r->head);
		assert_true(r->len < REC_LINE);
		/* The line end is never part of the line. */
		assert_false(r->len > 0 &&
		             (r->line[r->len - 1] == '\n' || r->line[r->len - 1] == '\r'));
		memcpy(e->line, r->line, r->len);
	}
	if (r->ev == BK_EV_DONE || r->ev == BK_EV_GONE) {
		rc->ended++;
		rc->order = ++ended_so_far;
	}
	if (r->ev == BK_EV_CONTINUE && rc->reply != NULL)
		assert_int_equal(
		    backend_cmd_reply(b, rc->reply, strlen(rc->reply), rc->reply_flags), 0);
}

static void assert_same_rec(const struct rec *a, const struct rec *b)
{
	assert_int_equal(a->n, b->n);
	for (size_t i = 0; i < a->n; i++) {
		assert_int_equal(a->evs[i].ev, b->evs[i].ev);
		assert_int_equal(a->evs[i].status, b->evs[i].status);
		assert_int_equal(a->evs[i].partial, b->evs[i].partial);
		assert_string_equal(a->evs[i].line, b->evs[i].line);
	}
}

/* ---------------------------------------------------------------- fixture */

struct fx {
	struct ev_loop *loop;
	struct cfg_backend cfg;
	int lfd; /* the listener */
	int sfd; /* the server's end of the connection */
	struct backend *b;
	struct reaper reaper;
	int done_calls;
	enum bk_result done_r;
	char got[65536]; /* what the server received and no test took yet */
	size_t got_len;
	int gone_hooks;
	int learned;
	char learned_caps[256];
	int queried;
	const char *known_caps;
};

static void fx_done(void *owner, struct backend *b, enum bk_result r, const char *why)
{
	struct fx *fx = owner;

	(void)b;
	assert_non_null(why);
	fx->done_calls++;
	fx->done_r = r;
}

static void hook_gone(void *ctx, struct backend *b)
{
	struct fx *fx = ctx;

	(void)b;
	fx->gone_hooks++;
}

static const char *hook_login_caps(void *ctx)
{
	struct fx *fx = ctx;

	return fx->known_caps;
}

static void hook_learn(void *ctx, const char *caps)
{
	struct fx *fx = ctx;

	fx->learned++;
	snprintf(fx->learned_caps, sizeof(fx->learned_caps), "%s", caps);
}

static void hook_queried(void *ctx)
{
	struct fx *fx = ctx;

	fx->queried++;
}

static const struct backend_hooks hooks = {
    .gone = hook_gone,
    .login_caps = hook_login_caps,
    .learn_login_caps = hook_learn,
    .caps_queried = hook_queried,
};

/* One loop step; sleeps a little when nothing happened. */
static void step(struct fx *fx)
{
	ev_run(fx->loop, EVRUN_NOWAIT);
	(void)reaper_run(&fx->reaper);
	usleep(200);
}

/* Read what the backend sent, without waiting. */
static void srv_pump(struct fx *fx)
{
	for (;;) {
		ssize_t n = read(fx->sfd, fx->got + fx->got_len, sizeof(fx->got) - fx->got_len);
		if (n <= 0)
			return;
		fx->got_len += (size_t)n;
	}
}

static void srv_send(struct fx *fx, const void *p, size_t len)
{
	const uint8_t *q = p;

	while (len > 0) {
		ssize_t n = write(fx->sfd, q, len);
		if (n < 0 && errno == EAGAIN) {
			step(fx);
			continue;
		}
		assert_true(n > 0);
		q += n;
		len -= (size_t)n;
	}
}

static void srv_say(struct fx *fx, const char *s)
{
	srv_send(fx, s, strlen(s));
}

/* The next line the backend sent (CRLF cut off), running the loop until it
 * comes; fails the test when it does not. */
static void srv_line(struct fx *fx, char *out, size_t outlen)
{
	for (int i = 0; i < STEPS; i++) {
		srv_pump(fx);
		char *end = memmem(fx->got, fx->got_len, "\r\n", 2);
		if (end != NULL) {
			size_t n = (size_t)(end - fx->got);
			assert_true(n < outlen);
			memcpy(out, fx->got, n);
			out[n] = '\0';
			memmove(fx->got, end + 2, fx->got_len - n - 2);
			fx->got_len -= n + 2;
			return;
		}
		step(fx);
	}
	fail_msg("the backend sent no line");
}

/* Nothing more arrives from the backend within a few steps. */
static void srv_nothing(struct fx *fx)
{
	for (int i = 0; i < 50; i++)
		step(fx);
	srv_pump(fx);
	assert_int_equal(fx->got_len, 0);
}

/* The tag of a command line the backend sent, checked to be internal. */
static void tag_of(const char *line, char *tag, size_t taglen)
{
	const char *sp = strchr(line, ' ');

	assert_non_null(sp);
	assert_true((size_t)(sp - line) < taglen);
	memcpy(tag, line, (size_t)(sp - line));
	tag[sp - line] = '\0';
	assert_true(backend_tag_reserved((const uint8_t *)tag, strlen(tag)));
	assert_true(strlen(tag) > 1); /* never S, C, L, U, R or Z */
	assert_int_equal(strncmp(tag, BK_TAG_PREFIX, strlen(BK_TAG_PREFIX)), 0);
}

/* Run the loop until cond(fx) or STEPS. */
static bool wait_for(struct fx *fx, bool (*cond)(struct fx *fx))
{
	for (int i = 0; i < STEPS; i++) {
		if (cond(fx))
			return true;
		step(fx);
	}
	return cond(fx);
}

static bool is_done(struct fx *fx)
{
	return fx->done_calls > 0;
}

static bool is_failed(struct fx *fx)
{
	return fx->b->state == BK_FAILED;
}

/* A backend connected to the fake server, not yet greeted. */
static struct fx *fx_new(void)
{
	struct fx *fx = calloc(1, sizeof(*fx));
	struct sockaddr_in sin = {.sin_family = AF_INET};
	socklen_t sl = sizeof(sin);

	assert_non_null(fx);
	log_set_level(LOG_LVL_ERROR);
	fx->loop = ev_loop_new(EVFLAG_AUTO);
	assert_non_null(fx->loop);
	reaper_init(&fx->reaper);
	sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	fx->lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	assert_true(fx->lfd >= 0);
	assert_int_equal(bind(fx->lfd, (struct sockaddr *)&sin, sizeof(sin)), 0);
	assert_int_equal(listen(fx->lfd, 4), 0);
	assert_int_equal(getsockname(fx->lfd, (struct sockaddr *)&sin, &sl), 0);

	snprintf(fx->cfg.name, sizeof(fx->cfg.name), "fake");
	memcpy(&fx->cfg.addr.ss, &sin, sizeof(sin));
	fx->cfg.addr.len = sizeof(sin);
	snprintf(fx->cfg.addr.text, sizeof(fx->cfg.addr.text), "127.0.0.1:%u", ntohs(sin.sin_port));
	fx->cfg.tls = CFG_TLS_NONE;
	fx->cfg.connect_timeout = 10;
	fx->cfg.command_timeout = 10;
	snprintf(fx->cfg.master_separator, sizeof(fx->cfg.master_separator), "*");

	fx->b = backend_new(fx->loop, &fx->cfg, NULL, 7, fx_done, fx);
	assert_non_null(fx->b);
	backend_set_hooks(fx->b, &hooks, fx);
	struct pollfd pfd = {.fd = fx->lfd, .events = POLLIN};
	assert_int_equal(poll(&pfd, 1, 2000), 1);
	fx->sfd = accept4(fx->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
	assert_true(fx->sfd >= 0);
	ended_so_far = 0;
	return fx;
}

/* A READY backend (greeted with capabilities; done(OK) seen). */
static struct fx *fx_ready(const char *caps)
{
	struct fx *fx = fx_new();
	char greet[512];

	backend_notify_ready(fx->b);
	snprintf(greet, sizeof(greet), "* OK [CAPABILITY %s] fake ready\r\n", caps);
	srv_say(fx, greet);
	assert_true(wait_for(fx, is_done));
	assert_int_equal(fx->done_r, BK_RES_OK);
	assert_int_equal(fx->b->state, BK_READY);
	fx->done_calls = 0;
	/* Handed to a "session", as pool_take_idle does. */
	fx->b->done = fx_done;
	fx->b->owner = fx;
	fx->b->notify_ready = false;
	return fx;
}

static void fx_free(struct fx **fxp)
{
	struct fx *fx = *fxp;

	if (fx->b != NULL)
		backend_destroy_later(&fx->reaper, &fx->b);
	(void)reaper_run(&fx->reaper);
	if (fx->sfd >= 0)
		close(fx->sfd);
	close(fx->lfd);
	ev_loop_destroy(fx->loop);
	free(fx);
	*fxp = NULL;
}

static bool rec_ended(const struct rec *rc)
{
	return rc->ended > 0;
}

/* Run until rc's command ended. */
static void wait_end(struct fx *fx, const struct rec *rc)
{
	for (int i = 0; i < STEPS && !rec_ended(rc); i++)
		step(fx);
	assert_true(rec_ended(rc));
}

/* Not a byte of secret left in conn.out's storage (wiped whole once sent,
 * or freed). */
static void assert_no_secret(const struct backend *b, const char *secret)
{
	const struct buf *o = &b->conn.out;

	if (o->data != NULL)
		assert_null(memmem(o->data, o->cap, secret, strlen(secret)));
}

/* ---------------------------------------------------------------- cases */

static void test_tag_reserved(void **state)
{
	(void)state;
	static const char *yes[] = {"imapmux.1", "IMAPMUX.42", "ImapMux.x", "imapmux."};
	static const char *no[] = {"imapmux", "a1", "R", "Z", "ximapmux.1", "imap.mux1", ""};

	for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++)
		assert_true(backend_tag_reserved((const uint8_t *)yes[i], strlen(yes[i])));
	for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++)
		assert_false(backend_tag_reserved((const uint8_t *)no[i], strlen(no[i])));
	/* Only the bytes given count: a longer buffer does not make it reserved. */
	assert_false(backend_tag_reserved((const uint8_t *)"imapmux.1", 7));
}

/* Setup commands (CAPABILITY when the greeting has none) and later ones
 * carry internal tags, each new. */
static void test_tags_internal_unique(void **state)
{
	(void)state;
	struct fx *fx = fx_new();
	char line[REC_LINE], tags[6][BK_TAG_MAX + 1];
	char ans[REC_LINE];

	backend_notify_ready(fx->b);
	srv_say(fx, "* OK fake ready\r\n");
	srv_line(fx, line, sizeof(line));
	tag_of(line, tags[0], sizeof(tags[0]));
	assert_string_equal(line + strlen(tags[0]), " CAPABILITY");
	snprintf(ans, sizeof(ans), "* CAPABILITY IMAP4rev1 IDLE\r\n%s OK done\r\n", tags[0]);
	srv_say(fx, ans);
	assert_true(wait_for(fx, is_done));
	assert_int_equal(fx->done_r, BK_RES_OK);
	assert_string_equal(fx->b->caps, "IMAP4rev1 IDLE");

	for (int i = 1; i < 5; i++) {
		struct rec rc = {0};
		assert_int_equal(backend_cmd(fx->b, "NOOP", 4, 0, rec_cb, &rc), 0);
		srv_line(fx, line, sizeof(line));
		tag_of(line, tags[i], sizeof(tags[i]));
		assert_string_equal(line + strlen(tags[i]), " NOOP");
		for (int j = 0; j < i; j++)
			assert_string_not_equal(tags[i], tags[j]);
		snprintf(ans, sizeof(ans), "%s OK noop\r\n", tags[i]);
		srv_say(fx, ans);
		wait_end(fx, &rc);
		assert_int_equal(rc.n, 1);
		assert_int_equal(rc.evs[0].ev, BK_EV_DONE);
	}
	/* The LOGOUT courtesy too. */
	backend_logout_and_destroy_later(&fx->reaper, &fx->b);
	assert_null(fx->b);
	srv_line(fx, line, sizeof(line));
	tag_of(line, tags[5], sizeof(tags[5]));
	assert_string_equal(line + strlen(tags[5]), " LOGOUT");
	for (int j = 0; j < 5; j++)
		assert_string_not_equal(tags[5], tags[j]);
	(void)reaper_run(&fx->reaper);
	assert_int_equal(fx->gone_hooks, 1);
	fx_free(&fx);
}

/* Not before READY: the backend's own setup owns the stream. */
static void test_cmd_refused_before_ready(void **state)
{
	(void)state;
	struct fx *fx = fx_new();
	struct rec rc = {0};

	assert_int_equal(backend_cmd(fx->b, "NOOP", 4, 0, rec_cb, &rc), -1);
	fx_free(&fx);
	assert_int_equal(rc.n, 0); /* -1: no callback, ever */
}

static void test_done_ok_no_bad(void **state)
{
	(void)state;
	struct fx *fx = fx_ready("IMAP4rev1");
	static const struct {
		const char *word;
		enum bk_status st;
	} t[] = {{"OK", BK_ST_OK},
	         {"NO", BK_ST_NO},
	         {"BAD", BK_ST_BAD},
	         {"ok", BK_ST_OK},
	         {"PREAUTH", BK_ST_BAD}};

	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		struct rec rc = {0};
		char line[REC_LINE], tag[BK_TAG_MAX + 1], ans[REC_LINE + 2], want[REC_LINE];

		assert_int_equal(backend_cmd(fx->b, "CHECK", 5, 0, rec_cb, &rc), 0);
		srv_line(fx, line, sizeof(line));
		tag_of(line, tag, sizeof(tag));
		snprintf(want, sizeof(want), "%s %s [CAPABILITY IMAP4rev1 X] text %zu", tag,
		         t[i].word, i);
		snprintf(ans, sizeof(ans), "%s\r\n", want);
		srv_say(fx, ans);
		wait_end(fx, &rc);
		assert_int_equal(rc.n, 1);
		assert_int_equal(rc.evs[0].ev, BK_EV_DONE);
		assert_int_equal(rc.evs[0].status, t[i].st);
		assert_false(rc.evs[0].partial);
		assert_string_equal(rc.evs[0].line, want);
		assert_int_equal(fx->b->state, BK_READY);
	}
	fx_free(&fx);
}

/* "+" reaches the handler, and its reply goes out as the next line. */
static void test_continuation(void **state)
{
	(void)state;
	struct fx *fx = fx_ready("IMAP4rev1");
	struct rec rc = {.reply = "dGVzdA==", .reply_flags = BK_CMD_SECRET};
	char line[REC_LINE], tag[BK_TAG_MAX + 1], ans[REC_LINE];

	assert_int_equal(backend_cmd(fx->b, "XAUTH", 5, 0, rec_cb, &rc), 0);
	srv_line(fx, line, sizeof(line));
	tag_of(line, tag, sizeof(tag));
	srv_say(fx, "+ go on\r\n");
	srv_line(fx, line, sizeof(line));
	assert_string_equal(line, "dGVzdA==");
	assert_int_equal(rc.n, 1);
	assert_int_equal(rc.evs[0].ev, BK_EV_CONTINUE);
	assert_string_equal(rc.evs[0].line, "+ go on");
	snprintf(ans, sizeof(ans), "%s OK fine\r\n", tag);
	srv_say(fx, ans);
	wait_end(fx, &rc);
	assert_int_equal(rc.n, 2);
	assert_int_equal(rc.evs[1].ev, BK_EV_DONE);
	/* The secret reply is wiped from conn.out once sent. */
	assert_false(fx->b->cmds.secret_out);
	assert_no_secret(fx->b, "dGVzdA==");
	fx_free(&fx);
}

/* Swallowed untagged data, literals included, goes to the handler (first
 * line parts, the literals skipped by count); without SWALLOW it goes to
 * nobody (this module reads for no owner). */
static void test_swallow_untagged(void **state)
{
	(void)state;
	struct fx *fx = fx_ready("IMAP4rev1");

	for (int swallow = 0; swallow < 2; swallow++) {
		struct rec rc = {0};
		char line[REC_LINE], tag[BK_TAG_MAX + 1], ans[1024];

		assert_int_equal(backend_cmd(fx->b, "FETCH 1 BODY[]", 14,
		                             swallow ? BK_CMD_SWALLOW : 0, rec_cb, &rc),
		                 0);
		srv_line(fx, line, sizeof(line));
		tag_of(line, tag, sizeof(tag));
		snprintf(ans, sizeof(ans),
		         "* 1 FETCH (BODY[] {11}\r\n%s OK x)\r\n* 2 EXPUNGE\r\n"
		         "* 3 FETCH (A {2}\r\nab B {0}\r\n C)\r\n%s OK fetched\r\n",
		         tag, tag);
		srv_say(fx, ans);
		wait_end(fx, &rc);
		if (!swallow) {
			assert_int_equal(rc.n, 1);
			assert_int_equal(rc.evs[0].ev, BK_EV_DONE);
			continue;
		}
		assert_int_equal(rc.n, 4);
		assert_int_equal(rc.evs[0].ev, BK_EV_UNTAGGED);
		assert_string_equal(rc.evs[0].line, "* 1 FETCH (BODY[] {11}");
		assert_true(rc.evs[0].partial);
		assert_int_equal(rc.evs[1].ev, BK_EV_UNTAGGED);
		assert_string_equal(rc.evs[1].line, "* 2 EXPUNGE");
		assert_false(rc.evs[1].partial);
		assert_int_equal(rc.evs[2].ev, BK_EV_UNTAGGED);
		assert_string_equal(rc.evs[2].line, "* 3 FETCH (A {2}");
		assert_int_equal(rc.evs[3].ev, BK_EV_DONE);
		/* The literal's bytes (which look like a tagged answer) were
		 * skipped, not taken for the end. */
		char want[128];
		snprintf(want, sizeof(want), "%s OK fetched", tag);
		assert_string_equal(rc.evs[3].line, want);
	}
	assert_int_equal(fx->b->state, BK_READY);
	fx_free(&fx);
}

/* Two commands queued at once: the second waits for the first's answer,
 * and they end in order. */
static void test_queue_in_order(void **state)
{
	(void)state;
	struct fx *fx = fx_ready("IMAP4rev1");
	struct rec a = {0}, b = {0};
	char line[REC_LINE], ta[BK_TAG_MAX + 1], tb[BK_TAG_MAX + 1], ans[REC_LINE];

	assert_int_equal(backend_cmd(fx->b, "FIRST", 5, 0, rec_cb, &a), 0);
	assert_int_equal(backend_cmd(fx->b, "SECOND", 6, 0, rec_cb, &b), 0);
	assert_true(backend_cmd_pending(fx->b));
	srv_line(fx, line, sizeof(line));
	tag_of(line, ta, sizeof(ta));
	assert_string_equal(line + strlen(ta), " FIRST");
	srv_nothing(fx); /* one at a time */
	snprintf(ans, sizeof(ans), "%s OK one\r\n", ta);
	srv_say(fx, ans);
	srv_line(fx, line, sizeof(line));
	tag_of(line, tb, sizeof(tb));
	assert_string_equal(line + strlen(tb), " SECOND");
	assert_int_equal(a.ended, 1);
	assert_int_equal(b.ended, 0);
	snprintf(ans, sizeof(ans), "%s NO two\r\n", tb);
	srv_say(fx, ans);
	wait_end(fx, &b);
	assert_int_equal(a.order, 1);
	assert_int_equal(b.order, 2);
	assert_int_equal(b.evs[0].status, BK_ST_NO);
	assert_false(backend_cmd_pending(fx->b));
	fx_free(&fx);
}

/* EOF before the answer: BK_EV_GONE exactly once, for the command in flight
 * and for the one queued behind it, also after the backend is destroyed. */
static void test_eof_gone_once(void **state)
{
	(void)state;
	struct fx *fx = fx_ready("IMAP4rev1");
	struct rec a = {0}, b = {0};
	char line[REC_LINE];

	assert_int_equal(backend_cmd(fx->b, "FIRST", 5, 0, rec_cb, &a), 0);
	assert_int_equal(backend_cmd(fx->b, "SECOND", 6, 0, rec_cb, &b), 0);
	srv_line(fx, line, sizeof(line));
	close(fx->sfd);
	fx->sfd = -1;
	assert_true(wait_for(fx, is_failed));
	assert_int_equal(a.n, 1);
	assert_int_equal(a.gone, 1);
	assert_int_equal(b.n, 1);
	assert_int_equal(b.gone, 1);
	assert_int_equal(fx->done_calls, 0); /* done was for readiness, long over */
	for (int i = 0; i < 20; i++)
		step(fx);
	backend_destroy_later(&fx->reaper, &fx->b);
	(void)reaper_run(&fx->reaper);
	assert_int_equal(a.n, 1);
	assert_int_equal(b.n, 1);
	assert_int_equal(fx->gone_hooks, 1);
	fx_free(&fx);
}

/* Destroying a backend with a command out ends it (GONE) at once, before
 * the free: the handler's owner may go in the same reaper run. */
static void test_destroy_gone(void **state)
{
	(void)state;
	struct fx *fx = fx_ready("IMAP4rev1");
	struct rec a = {0};
	char line[REC_LINE];

	assert_int_equal(backend_cmd(fx->b, "IDLE", 4, 0, rec_cb, &a), 0);
	srv_line(fx, line, sizeof(line));
	backend_destroy_later(&fx->reaper, &fx->b);
	assert_int_equal(a.gone, 1);
	assert_int_equal(fx->gone_hooks, 0);
	(void)reaper_run(&fx->reaper);
	assert_int_equal(a.n, 1);
	assert_int_equal(fx->gone_hooks, 1);
	fx_free(&fx);
}

/* A tagged answer whose tag is not the internal one in flight: read here,
 * it is a protocol error (nobody else sends here); the command ends with
 * GONE, not with that answer. */
static void test_foreign_tag_unattached(void **state)
{
	(void)state;
	struct fx *fx = fx_ready("IMAP4rev1");
	struct rec a = {0};
	char line[REC_LINE];

	assert_int_equal(backend_cmd(fx->b, "NOOP", 4, 0, rec_cb, &a), 0);
	srv_line(fx, line, sizeof(line));
	srv_say(fx, "imapmux.999 OK not yours\r\n");
	assert_true(wait_for(fx, is_failed));
	assert_int_equal(a.n, 1);
	assert_int_equal(a.evs[0].ev, BK_EV_GONE);
	fx_free(&fx);
}

/* Log in (SASL PLAIN with a continuation), hooks told of the caps. */
static void log_in(struct fx *fx, const char *ok_text)
{
	char line[REC_LINE], tag[BK_TAG_MAX + 1], ans[REC_LINE];

	assert_int_equal(backend_login(fx->b, "alice", 5, "secret", 6), 0);
	srv_line(fx, line, sizeof(line));
	tag_of(line, tag, sizeof(tag));
	assert_string_equal(line + strlen(tag), " AUTHENTICATE PLAIN");
	srv_say(fx, "+ \r\n");
	srv_line(fx, line, sizeof(line));
	assert_string_equal(line, "AGFsaWNlAHNlY3JldA=="); /* "\0alice\0secret" */
	snprintf(ans, sizeof(ans), "%s OK %s\r\n", tag, ok_text);
	srv_say(fx, ans);
	assert_true(wait_for(fx, is_done));
	assert_int_equal(fx->done_r, BK_RES_OK);
	assert_int_equal(fx->b->state, BK_ATTACHED);
	fx->done_calls = 0;
}

static void test_login_continuation_and_hooks(void **state)
{
	(void)state;
	struct fx *fx = fx_ready("IMAP4rev1 AUTH=PLAIN");

	log_in(fx, "[CAPABILITY IMAP4rev1 IDLE MOVE] Logged in");
	assert_string_equal(fx->b->caps, "IMAP4rev1 IDLE MOVE");
	assert_int_equal(fx->learned, 1);
	assert_string_equal(fx->learned_caps, "IMAP4rev1 IDLE MOVE");
	assert_int_equal(fx->queried, 0);
	assert_null(fx->b->plain_b64);
	assert_false(fx->b->cmds.secret_out);
	assert_no_secret(fx->b, "AGFsaWNlAHNlY3JldA==");
	fx_free(&fx);

	/* An OK without capabilities and none known: CAPABILITY asked. */
	fx = fx_ready("IMAP4rev1 AUTH=PLAIN");
	char line[REC_LINE], tag[BK_TAG_MAX + 1], ans[REC_LINE];
	assert_int_equal(backend_login(fx->b, "alice", 5, "secret", 6), 0);
	srv_line(fx, line, sizeof(line));
	tag_of(line, tag, sizeof(tag));
	srv_say(fx, "+\r\n");
	srv_line(fx, line, sizeof(line));
	snprintf(ans, sizeof(ans), "%s OK Logged in\r\n", tag);
	srv_say(fx, ans);
	srv_line(fx, line, sizeof(line));
	tag_of(line, tag, sizeof(tag));
	assert_string_equal(line + strlen(tag), " CAPABILITY");
	assert_int_equal(fx->queried, 1);
	snprintf(ans, sizeof(ans), "* CAPABILITY IMAP4rev1 X-POST\r\n%s OK done\r\n", tag);
	srv_say(fx, ans);
	assert_true(wait_for(fx, is_done));
	assert_int_equal(fx->done_r, BK_RES_OK);
	assert_string_equal(fx->b->caps, "IMAP4rev1 X-POST");
	assert_string_equal(fx->learned_caps, "IMAP4rev1 X-POST");
	fx_free(&fx);
}

/* A second "+" for the login is a protocol error: the login fails. */
static void test_login_second_continuation(void **state)
{
	(void)state;
	struct fx *fx = fx_ready("IMAP4rev1 AUTH=PLAIN");
	char line[REC_LINE];

	assert_int_equal(backend_login(fx->b, "alice", 5, "secret", 6), 0);
	srv_line(fx, line, sizeof(line));
	srv_say(fx, "+\r\n");
	srv_line(fx, line, sizeof(line));
	srv_say(fx, "+\r\n");
	assert_true(wait_for(fx, is_done));
	assert_int_equal(fx->done_r, BK_RES_UNAVAILABLE);
	assert_int_equal(fx->b->state, BK_FAILED);
	fx_free(&fx);
}

static struct fx *fx_attached(void)
{
	struct fx *fx = fx_ready("IMAP4rev1 AUTH=PLAIN SASL-IR");
	char line[REC_LINE], tag[BK_TAG_MAX + 1], ans[REC_LINE];

	assert_int_equal(backend_login(fx->b, "bob", 3, "pw", 2), 0);
	srv_line(fx, line, sizeof(line));
	tag_of(line, tag, sizeof(tag));
	assert_string_equal(line + strlen(tag), " AUTHENTICATE PLAIN AGJvYgBwdw==");
	snprintf(ans, sizeof(ans), "%s OK [CAPABILITY IMAP4rev1] in\r\n", tag);
	srv_say(fx, ans);
	assert_true(wait_for(fx, is_done));
	assert_int_equal(fx->b->state, BK_ATTACHED);
	return fx;
}

/*
 * The session's side while ATTACHED, as proxy/session.c's pump does it: a
 * tokenizer (fragments of PUMP_FRAG bytes) over the bytes received so far
 * hands the first unit of each response to backend_cmd_claims, drops the
 * rest of a claimed response (literal bodies included), and records what
 * it would have forwarded to the client.
 */
#define PUMP_FRAG 16

struct pump {
	bool started;
	struct imap_tok tok;
	uint8_t in[4096]; /* received, not yet consumed */
	size_t in_len;
	bool skipping; /* the rest of a claimed response */
	char fwd[4096];
	size_t fwd_len;
	int claimed;
};

static void pump_feed(struct backend *b, struct pump *pm, const void *s, size_t len)
{
	struct imap_tok_limits lim = {.frag_size = PUMP_FRAG};

	if (!pm->started)
		imap_tok_init(&pm->tok, IMAP_TOK_RESPONSES, &lim);
	pm->started = true;
	assert_true(pm->in_len + len <= sizeof(pm->in));
	memcpy(pm->in + pm->in_len, s, len);
	pm->in_len += len;
	for (;;) {
		struct imap_tok_unit u;
		int r = imap_tok_next(&pm->tok, pm->in, pm->in_len, &u);

		if (r == -2)
			break;
		assert_int_equal(r, 0);
		if (u.first && backend_cmd_claims(b, pm->in, &u)) {
			pm->claimed++;
			pm->skipping = !(u.type == IMAP_TOK_LINE && u.last);
		} else if (pm->skipping) {
			if (u.type == IMAP_TOK_LINE && u.last)
				pm->skipping = false;
		} else {
			assert_true(pm->fwd_len + u.len < sizeof(pm->fwd));
			memcpy(pm->fwd + pm->fwd_len, pm->in, u.len);
			pm->fwd_len += u.len;
		}
		imap_tok_consume(&pm->tok, &u, u.len);
		memmove(pm->in, pm->in + u.len, pm->in_len - u.len);
		pm->in_len -= u.len;
	}
	pm->fwd[pm->fwd_len] = '\0';
}

static void pump_say(struct backend *b, struct pump *pm, const char *s)
{
	pump_feed(b, pm, s, strlen(s));
}

static void attached_cb(struct conn *c, void *owner)
{
	(void)c;
	(void)owner;
}

/* The next command line the attached backend wrote (the session flushes). */
static void attached_line(struct fx *fx, char *line, size_t len)
{
	assert_true(conn_flush(&fx->b->conn) != -1);
	srv_line(fx, line, len);
}

/* Remove every occurrence of tag from s. */
static void strip_tag(char *s, const char *tag)
{
	char *t;

	while ((t = strstr(s, tag)) != NULL)
		memmove(t, t + strlen(tag), strlen(t + strlen(tag)) + 1);
}

static void test_claims_attached(void **state)
{
	(void)state;
	struct fx *fx = fx_attached();
	struct backend *b = fx->b;
	struct rec rc = {0}, rc2 = {0};
	struct pump pm = {0};
	char line[REC_LINE], tag[BK_TAG_MAX + 1], stream[2048];

	backend_attach(b, attached_cb, fx);
	/* Nothing in flight: nothing is claimed, not even an internal tag. */
	pump_say(b, &pm, "imapmux.1 OK old\r\n+ go\r\n* 1 EXISTS\r\n");
	assert_int_equal(pm.claimed, 0);
	assert_string_equal(pm.fwd, "imapmux.1 OK old\r\n+ go\r\n* 1 EXISTS\r\n");

	assert_int_equal(backend_cmd(b, "UNSELECT", 8, BK_CMD_SWALLOW, rec_cb, &rc), 0);
	assert_int_equal(backend_cmd(b, "NOOP", 4, 0, rec_cb, &rc2), 0);
	attached_line(fx, line, sizeof(line));
	tag_of(line, tag, sizeof(tag));
	assert_string_equal(line + strlen(tag), " UNSELECT");

	pm.fwd_len = 0;
	snprintf(stream, sizeof(stream),
	         "a1 OK foreign\r\n"                           /* the client's */
	         "* 4 FETCH (BODY[] {12}\r\nimapmux.1 OK)\r\n" /* swallowed, literal skipped */
	         "* BYE going\r\n" /* handed over, but the session's too */
	         "+ more\r\n"      /* the internal command's */
	         "%s OK [CLOSED] done\r\n"
	         "* 5 EXISTS\r\n", /* NOOP's time: it does not swallow */
	         tag);
	pump_say(b, &pm, stream);
	assert_int_equal(pm.claimed, 3);
	assert_string_equal(pm.fwd, "a1 OK foreign\r\n* BYE going\r\n* 5 EXISTS\r\n");
	assert_int_equal(rc.n, 4);
	assert_int_equal(rc.evs[0].ev, BK_EV_UNTAGGED);
	assert_true(rc.evs[0].partial); /* a fragment: the line is 24 bytes */
	assert_string_equal(rc.evs[0].line, "* 4 FETCH (BODY[");
	assert_int_equal(rc.evs[1].ev, BK_EV_UNTAGGED);
	assert_string_equal(rc.evs[1].line, "* BYE going");
	assert_false(rc.evs[1].partial);
	assert_int_equal(rc.evs[2].ev, BK_EV_CONTINUE);
	assert_string_equal(rc.evs[2].line, "+ more");
	assert_int_equal(rc.evs[3].ev, BK_EV_DONE);
	assert_int_equal(rc.evs[3].status, BK_ST_OK);
	assert_true(rc.evs[3].partial);

	/* The next one was written when the first ended. */
	attached_line(fx, line, sizeof(line));
	tag_of(line, tag, sizeof(tag));
	assert_string_equal(line + strlen(tag), " NOOP");
	snprintf(stream, sizeof(stream), "%s OK noop\r\n", tag);
	pm.fwd_len = 0;
	pump_say(b, &pm, stream);
	assert_int_equal(rc2.n, 1);
	assert_int_equal(rc2.evs[0].ev, BK_EV_DONE);
	assert_int_equal(pm.fwd_len, 0);
	assert_false(backend_cmd_pending(b));
	fx_free(&fx);
}

/* Attached, the same records and the same forwarded bytes however the
 * session's reads cut the stream. */
static void test_claims_split_every_offset(void **state)
{
	(void)state;
	struct fx *fx = fx_attached();
	struct backend *b = fx->b;
	struct rec ref = {0};
	char ref_fwd[4096] = "";
	size_t len = 0, maxlen = 0;

	backend_attach(b, attached_cb, fx);
	/* Tags of one width from here on (imapmux.100000 ...): a fragment
	 * holds as much of the rest of a line every time. */
	b->cmds.seq = 99999;
	for (int k = -1; k < 0 || (size_t)k < maxlen; k++) {
		struct rec rc = {0};
		struct pump pm = {0};
		char line[REC_LINE], tag[BK_TAG_MAX + 1], stream[1024];

		assert_int_equal(backend_cmd(b, "XTEST", 5, BK_CMD_SWALLOW, rec_cb, &rc), 0);
		attached_line(fx, line, sizeof(line));
		tag_of(line, tag, sizeof(tag));
		len = (size_t)snprintf(stream, sizeof(stream),
		                       "a1 OK foreign\r\n"
		                       "* 1 FETCH (UID 7 BODY[] {30}\r\n%.*s\r\n%s OK no\r\n)\r\n"
		                       "* BYE going\r\n"
		                       "+ more\r\n"
		                       "* 2 FETCH (X {0}\r\n Y {1}\r\nZ)\r\n"
		                       "%s OK [CLOSED] done, with a long text\r\n"
		                       "* 5 EXISTS\r\n",
		                       (int)(20 - strlen(tag)), "....................", tag, tag);
		maxlen = len + 4;
		size_t cut = k < 0 ? len : k >= (int)len ? len - 1 : (size_t)k;
		pump_feed(b, &pm, stream, cut);
		pump_feed(b, &pm, stream + cut, len - cut);
		assert_int_equal(pm.in_len, 0);
		assert_true(rec_ended(&rc));
		for (size_t i = 0; i < rc.n; i++)
			strip_tag(rc.evs[i].line, tag);
		if (k < 0) {
			ref = rc;
			snprintf(ref_fwd, sizeof(ref_fwd), "%s", pm.fwd);
			assert_string_equal(ref_fwd,
			                    "a1 OK foreign\r\n* BYE going\r\n* 5 EXISTS\r\n");
			assert_int_equal(ref.n, 5);
			assert_int_equal(ref.evs[4].ev, BK_EV_DONE);
		} else {
			assert_same_rec(&ref, &rc);
			assert_string_equal(pm.fwd, ref_fwd);
		}
	}
	fx_free(&fx);
}

/* Commands queued while ATTACHED wait for room in conn.out, and go out
 * once the session flushed and kicked. */
static void test_kick_attached(void **state)
{
	(void)state;
	struct fx *fx = fx_attached();
	struct backend *b = fx->b;
	struct rec rc = {0};
	char line[REC_LINE], tag[BK_TAG_MAX + 1];
	static char big[32 * 1024 - 10]; /* conn.out holds 32 KiB */

	backend_attach(b, attached_cb, fx);
	/* The session's own bytes fill conn.out, but for 10 bytes. */
	memset(big, 'x', sizeof(big));
	memcpy(big + sizeof(big) - 2, "\r\n", 2);
	assert_int_equal(buf_append(&b->conn.out, big, sizeof(big)), 0);
	assert_int_equal(backend_cmd(b, "NOOP", 4, 0, rec_cb, &rc), 0);
	assert_true(backend_cmd_pending(b));
	for (int i = 0; i < STEPS && !buf_is_empty(&b->conn.out); i++) {
		assert_true(conn_flush(&b->conn) != -1);
		srv_pump(fx);
		fx->got_len = 0; /* the big line: not checked */
		usleep(100);
	}
	assert_true(buf_is_empty(&b->conn.out));
	backend_cmd_kick(b);
	assert_true(conn_flush(&b->conn) != -1);
	srv_line(fx, line, sizeof(line));
	tag_of(line, tag, sizeof(tag));
	assert_string_equal(line + strlen(tag), " NOOP");
	fx_free(&fx);
	assert_int_equal(rc.gone, 1);
}

/* A held backend (a kept session): this module reads it again; untagged
 * data nobody asked for is dropped, a BYE ends it through done. */
static void test_hold(void **state)
{
	(void)state;
	struct fx *fx = fx_attached();
	struct rec rc = {0};
	char line[REC_LINE], tag[BK_TAG_MAX + 1], ans[REC_LINE];

	backend_attach(fx->b, attached_cb, fx);
	fx->done_calls = 0;
	assert_int_equal(backend_hold(fx->b, fx_done, fx), 0);
	assert_int_equal(fx->b->state, BK_HELD);
	assert_int_equal(backend_cmd(fx->b, "UNSELECT", 8, BK_CMD_SWALLOW, rec_cb, &rc), 0);
	srv_line(fx, line, sizeof(line));
	tag_of(line, tag, sizeof(tag));
	snprintf(ans, sizeof(ans), "* OK [CLOSED]\r\n%s OK done\r\n* 9 EXISTS\r\n", tag);
	srv_say(fx, ans);
	wait_end(fx, &rc);
	assert_int_equal(rc.n, 2);
	for (int i = 0; i < 20; i++)
		step(fx);
	assert_true(backend_quiet(fx->b));
	assert_int_equal(fx->done_calls, 0);
	srv_say(fx, "* BYE Autologout\r\n");
	assert_true(wait_for(fx, is_done));
	assert_int_equal(fx->done_r, BK_RES_UNAVAILABLE);
	assert_int_equal(fx->b->state, BK_FAILED);
	assert_false(backend_quiet(fx->b));
	fx_free(&fx);
}

/*
 * The same answers however the bytes are cut: a stream of untagged data
 * (with literals, one of them looking like the tagged answer), a "+" and
 * the tagged answer, sent in two pieces split at every offset, and one
 * byte at a time, give the record of the stream sent whole.
 */
static void test_split_every_offset(void **state)
{
	(void)state;
	struct fx *fx = fx_ready("IMAP4rev1");
	struct rec ref = {0};
	char stream[1024];
	size_t len = 0, maxlen = 0;

	/* k = -2: whole; -1: one byte at a time; else split at k (the tags
	 * grow a digit now and then: k covers the longest stream). */
	fx->b->cmds.seq = 99999;
	for (int k = -2; k < 0 || (size_t)k < maxlen; k++) {
		struct rec rc = {.reply = "more"};
		char line[REC_LINE], tag[BK_TAG_MAX + 1];

		assert_int_equal(backend_cmd(fx->b, "XTEST", 5, BK_CMD_SWALLOW, rec_cb, &rc), 0);
		srv_line(fx, line, sizeof(line));
		tag_of(line, tag, sizeof(tag));
		/* The first literal holds a line that looks like the tagged
		 * answer, after a filler that keeps its size at 30 bytes. */
		len = (size_t)snprintf(
		    stream, sizeof(stream),
		    "* CAPABILITY A B\r\n"
		    "* 1 FETCH (BODY[] {30}\r\n%.*s\r\n%s OK no\r\n FLAGS (\\Seen))\r\n"
		    "+ send more\r\n"
		    "* 2 FETCH (X {0}\r\n Y {1}\r\nZ)\r\n"
		    "%s OK [CAPABILITY A] done\r\n",
		    (int)(20 - strlen(tag)), "....................", tag, tag);
		maxlen = len + 4;
		size_t cut = k >= (int)len ? len - 1 : (size_t)k;
		if (k == -2) {
			srv_send(fx, stream, len); /* whole */
		} else if (k == -1) {
			for (size_t i = 0; i < len; i++) { /* one byte at a time */
				srv_send(fx, stream + i, 1);
				step(fx);
			}
		} else {
			srv_send(fx, stream, cut);
			for (int i = 0; i < 3; i++)
				step(fx);
			srv_send(fx, stream + cut, len - cut);
		}
		wait_end(fx, &rc);
		srv_line(fx, line, sizeof(line));
		assert_string_equal(line, "more");
		/* The tag is in the lines: compare without it. */
		for (size_t i = 0; i < rc.n; i++) {
			char *t = strstr(rc.evs[i].line, tag);
			if (t != NULL)
				memmove(t, t + strlen(tag), strlen(t + strlen(tag)) + 1);
		}
		if (k == -2) {
			ref = rc;
			assert_int_equal(ref.n, 5);
			assert_int_equal(ref.evs[0].ev, BK_EV_UNTAGGED);
			assert_int_equal(ref.evs[1].ev, BK_EV_UNTAGGED);
			assert_true(ref.evs[1].partial);
			assert_int_equal(ref.evs[2].ev, BK_EV_CONTINUE);
			assert_int_equal(ref.evs[3].ev, BK_EV_UNTAGGED);
			assert_int_equal(ref.evs[4].ev, BK_EV_DONE);
			assert_string_equal(ref.evs[4].line, " OK [CAPABILITY A] done");
		} else {
			assert_same_rec(&ref, &rc);
		}
		assert_int_equal(fx->b->state, BK_READY);
	}
	fx_free(&fx);
}

/* A command over BK_CMD_MAX is refused at once, no callback. */
static void test_too_long(void **state)
{
	(void)state;
	struct fx *fx = fx_ready("IMAP4rev1");
	struct rec rc = {0};
	char *big = malloc(BK_CMD_MAX);

	assert_non_null(big);
	memset(big, 'a', BK_CMD_MAX);
	assert_int_equal(backend_cmd(fx->b, big, BK_CMD_MAX, 0, rec_cb, &rc), -1);
	free(big);
	fx_free(&fx);
	assert_int_equal(rc.n, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_tag_reserved),
	    cmocka_unit_test(test_tags_internal_unique),
	    cmocka_unit_test(test_cmd_refused_before_ready),
	    cmocka_unit_test(test_done_ok_no_bad),
	    cmocka_unit_test(test_continuation),
	    cmocka_unit_test(test_swallow_untagged),
	    cmocka_unit_test(test_queue_in_order),
	    cmocka_unit_test(test_eof_gone_once),
	    cmocka_unit_test(test_destroy_gone),
	    cmocka_unit_test(test_foreign_tag_unattached),
	    cmocka_unit_test(test_login_continuation_and_hooks),
	    cmocka_unit_test(test_login_second_continuation),
	    cmocka_unit_test(test_claims_attached),
	    cmocka_unit_test(test_claims_split_every_offset),
	    cmocka_unit_test(test_kick_attached),
	    cmocka_unit_test(test_hold),
	    cmocka_unit_test(test_split_every_offset),
	    cmocka_unit_test(test_too_long),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
