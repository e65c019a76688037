/*
 * backend — a backend IMAP connection up to login, and the channel for the
 * proxy's own commands on it (see backend.h).
 *
 * One reader. While no session reads the conn (every state but ATTACHED),
 * bk_io reads it and bk_read cuts it into units with b->tok; the first
 * unit of each response (always a whole LINE here: no fragments, lines
 * bounded by BK_MAX_LINE) goes to bk_response, the rest of the response
 * (literal bodies, further line parts) is skipped by count. While
 * ATTACHED the session's pump hands first units to backend_cmd_claims,
 * which dispatches through the same bk_dispatch.
 *
 *   conn.in --bk_read--> bk_response --greeting--> bk_greeting
 *                                    --"+", tagged, swallowed "*"--> cmdq --> handler
 *                                    --"* BYE"--> bk_fail
 *   session pump --backend_cmd_claims--> cmdq --> handler
 *
 * The queue (cmdq.c) knows tags, order and handlers; this file decides
 * when a command may be written (bk_can_write: past the greeting, no
 * handshake) and writes the next one after each answer. Any tagged answer
 * that is not the command in flight's is a protocol error while this module
 * reads: it sends nothing else. The setup, login and way back to the pool
 * are handlers of their own commands (bk_starttls_cb, bk_caps_cb,
 * bk_login_cb, bk_unauth_cb).
 *
 * Post-login capabilities: a login's tagged OK usually carries them; they
 * are reported through the learn_login_caps hook (the pool keeps the
 * backend's latest list), so a login whose OK lacks them costs no
 * CAPABILITY round trip once any login of this backend has reported them.
 *
 * Secrets: credentials live in this struct until the login is queued (then
 * wiped), in the queued command until it is written, and in conn.out until
 * sent (then the buffer is wiped: cmdq_wipe), and are wiped at the end in
 * any case.
 *
 * Login preference: AUTHENTICATE PLAIN with SASL-IR (one round trip, any
 * bytes), AUTHENTICATE PLAIN with a continuation, then LOGIN with quoted
 * strings (7-bit, no CR/LF) or LITERAL+ literals.
 */
#include "backend.h"

#include <assert.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "caps.h"
#include "imap_args.h"
#include "imap_login.h"
#include "log.h"
#include "proxyproto.h"

#define BK_BUF_SIZE (32 * 1024)
#define BK_MAX_LINE (16 * 1024)

/* What b->caps points to while no list is known (never freed). */
static char bk_no_caps[1];

static void bk_io(struct conn *c, void *arg);

/* ---- states ------------------------------------------------------------ */

#define TO(st) (1u << (st))

/* The moves of backend.h's diagram: moves[from] has bit `to` set (any
 * state may fail, FAILED is final). */
static const unsigned bk_moves[] = {
    [BK_CONNECTING] = TO(BK_TLS) | TO(BK_GREETING),
    [BK_TLS] = TO(BK_GREETING) | TO(BK_CAPS),
    [BK_GREETING] = TO(BK_STARTTLS) | TO(BK_CAPS) | TO(BK_READY),
    [BK_STARTTLS] = TO(BK_TLS),
    [BK_CAPS] = TO(BK_READY),
    [BK_READY] = TO(BK_LOGIN),
    [BK_LOGIN] = TO(BK_LOGIN_CAPS) | TO(BK_ATTACHED),
    [BK_LOGIN_CAPS] = TO(BK_ATTACHED),
    [BK_ATTACHED] = TO(BK_ATTACHED) | TO(BK_HELD) | TO(BK_UNAUTH),
    [BK_HELD] = TO(BK_ATTACHED),
    [BK_UNAUTH] = TO(BK_CAPS) | TO(BK_READY),
    [BK_FAILED] = 0,
};

/* Every state change goes through here. */
void bk_enter(struct backend *b, enum bk_state to)
{
	if (to != BK_FAILED && !(bk_moves[b->state] & TO(to))) {
		log_error("S-%lu backend %s: internal error: state %d -> %d", b->sid, b->cfg->name,
		          (int)b->state, (int)to);
		assert(!"illegal backend state move");
	}
	b->state = to;
}

/* This module reads the stream (see backend.h). */
static bool bk_reading(const struct backend *b)
{
	return b->state != BK_FAILED && b->state != BK_ATTACHED && b->state != BK_TLS &&
	       b->state != BK_CONNECTING;
}

/* Commands can be written now: past the greeting, no handshake running. */
static bool bk_can_write(const struct backend *b)
{
	return b->state != BK_FAILED && b->state != BK_CONNECTING && b->state != BK_TLS &&
	       b->state != BK_GREETING && !b->conn.error && b->conn.fd >= 0 &&
	       conn_handshake_done(&b->conn);
}

/* ---- secrets ------------------------------------------------------------ */

void bk_wipe_free(char **p, size_t len)
{
	if (*p != NULL) {
		explicit_bzero(*p, len);
		free(*p);
		*p = NULL;
	}
}

void bk_forget_credentials(struct backend *b)
{
	bk_wipe_free(&b->authz, b->authz_len);
	bk_wipe_free(&b->user, b->user_len);
	bk_wipe_free(&b->pass, b->pass_len);
	if (b->plain_b64 != NULL)
		bk_wipe_free(&b->plain_b64, strlen(b->plain_b64));
	free(b->id_args);
	b->id_args = NULL;
	b->user_len = b->pass_len = b->authz_len = 0;
}

/* ---- the command channel (the queue: cmdq.c) ---------------------------- */

/* Write the head of the queue when it waits and may go now. */
void bk_cmd_write(struct backend *b)
{
	if (bk_can_write(b) && cmdq_write(&b->cmds, &b->conn.out) == -1)
		bk_fail(b, "out of memory");
}

/* Queue one of this module's own commands, whatever the state. */
int bk_cmd_queue(struct backend *b, const char *text, unsigned flags, bk_cmd_cb *cb)
{
	if (b->state == BK_FAILED || cmdq_push(&b->cmds, text, strlen(text), flags, cb, b) < 0)
		return -1;
	bk_cmd_write(b);
	return 0;
}

int backend_cmd(struct backend *b, const void *text, size_t len, unsigned flags, bk_cmd_cb *cb,
                void *arg)
{
	switch (b->state) {
	case BK_CONNECTING:
	case BK_TLS:
	case BK_GREETING:
	case BK_STARTTLS:
	case BK_CAPS:
	case BK_FAILED:
		return -1;
	default:
		break;
	}
	if (cmdq_push(&b->cmds, text, len, flags, cb, arg) < 0)
		return -1;
	bk_cmd_write(b);
	if (b->state != BK_ATTACHED)
		conn_update(&b->conn);
	return 0;
}

void backend_cmd_kick(struct backend *b)
{
	cmdq_wipe(&b->cmds, &b->conn.out, false);
	bk_cmd_write(b);
}

bool backend_cmd_claims(struct backend *b, const uint8_t *p, const struct imap_tok_unit *u)
{
	struct imap_head h;
	int r;

	cmdq_wipe(&b->cmds, &b->conn.out, false);
	if (b->state != BK_ATTACHED || !cmdq_in_flight(&b->cmds) || !u->first ||
	    u->type == IMAP_TOK_LITERAL)
		return false;
	r = cmdq_answer(&b->cmds, b, p, u->len, !(u->type == IMAP_TOK_LINE && u->last), &h);
	/* The next command goes out once one ended. */
	bk_cmd_write(b);
	return r > 0;
}

/* ---- the end of a connection, or of a login ---------------------------- */

void bk_finish(struct backend *b, enum bk_result r, const char *why)
{
	ev_timer_stop(b->conn.loop, &b->timer);
	bk_forget_credentials(b);
	if (r != BK_RES_OK) {
		bk_enter(b, BK_FAILED);
		conn_stop(&b->conn);
		cmdq_gone(&b->cmds, b, why);
	}
	if (b->done != NULL) {
		backend_done_cb *done = b->done;
		b->done = NULL;
		done(b->owner, b, r, why);
	}
}

void bk_fail(struct backend *b, const char *why)
{
	bool tell;

	if (b->state == BK_FAILED)
		return;
	/* Health probes (no login, sid 0) report through their own owner. */
	log_msg(b->notify_ready ? LOG_LVL_DEBUG : LOG_LVL_WARN, "S-%lu backend %s (%s): %s", b->sid,
	        b->cfg->name, b->cfg->addr.text, why);
	tell = b->login_wanted || b->notify_ready || b->state == BK_LOGIN ||
	       b->state == BK_LOGIN_CAPS || b->state == BK_HELD;
	bk_enter(b, BK_FAILED);
	conn_stop(&b->conn);
	/* The commands end first, the owner hears last. */
	cmdq_gone(&b->cmds, b, why);
	if (tell)
		bk_finish(b, BK_RES_UNAVAILABLE, why);
}

static void bk_timeout(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct backend *b = w->data;

	(void)loop;
	(void)revents;
	bk_fail(b, b->state == BK_UNAUTH                               ? "UNAUTHENTICATE timed out"
	           : b->state == BK_LOGIN || b->state == BK_LOGIN_CAPS ? "login timed out"
	                                                               : "connect timed out");
}

void bk_arm_timer(struct backend *b, double secs)
{
	ev_timer_stop(b->conn.loop, &b->timer);
	ev_timer_set(&b->timer, secs, 0.);
	ev_timer_start(b->conn.loop, &b->timer);
}

/* ---- setup --------------------------------------------------------------- */

struct backend *backend_new(struct ev_loop *loop, const struct cfg_backend *cfg, SSL_CTX *ctx,
                            unsigned long sid, backend_done_cb *done, void *owner)
{
	struct backend *b;
	int fd;

	fd = conn_socket_connect((const struct sockaddr *)&cfg->addr.ss, cfg->addr.len);
	if (fd < 0) {
		log_msg(sid == 0 ? LOG_LVL_DEBUG : LOG_LVL_WARN,
		        "S-%lu backend %s (%s): connect: %s", sid, cfg->name, cfg->addr.text,
		        strerror(errno));
		return NULL;
	}
	b = calloc(1, sizeof(*b));
	if (b == NULL) {
		close(fd);
		return NULL;
	}
	b->cfg = cfg;
	b->caps = bk_no_caps;
	b->ssl_ctx = ctx;
	b->sid = sid;
	b->done = done;
	b->owner = owner;
	b->state = BK_CONNECTING;
	cmdq_init(&b->cmds);
	conn_init(&b->conn, loop, fd, BK_BUF_SIZE, BK_BUF_SIZE, bk_io, b);
	b->conn.connecting = true;
	b->conn.want_input = true;
	struct imap_tok_limits lim = {.max_line = BK_MAX_LINE};
	imap_tok_init(&b->tok, IMAP_TOK_RESPONSES, &lim);
	ev_timer_init(&b->timer, bk_timeout, cfg->connect_timeout, 0.);
	b->timer.data = b;
	ev_timer_start(loop, &b->timer);
	conn_update(&b->conn);
	return b;
}

int backend_set_proxy(struct backend *b, const uint8_t *hdr, size_t len)
{
	uint8_t *copy;

	if (b->state != BK_CONNECTING || b->proxy_hdr != NULL || (copy = malloc(len)) == NULL)
		return -1;
	memcpy(copy, hdr, len);
	b->proxy_hdr = copy;
	b->proxy_hdr_len = len;
	return 0;
}

/* Connected: the PROXY header goes first, before TLS and IMAP, in one write
 * to an empty socket buffer (it is at most 107 bytes). */
static int bk_send_proxy(struct backend *b)
{
	uint8_t local[PROXYPROTO_BUILD_MAX];
	const uint8_t *p = b->proxy_hdr;
	size_t len = b->proxy_hdr_len;
	ssize_t n;

	if (p == NULL) {
		int l = proxyproto_build(b->cfg->send_proxy == CFG_SEND_PROXY_V1 ? 1 : 2, NULL, 0,
		                         NULL, 0, local, sizeof(local));
		if (l < 0)
			return -1;
		p = local;
		len = (size_t)l;
	}
	do
		n = send(b->conn.fd, p, len, MSG_NOSIGNAL);
	while (n < 0 && errno == EINTR);
	free(b->proxy_hdr);
	b->proxy_hdr = NULL;
	return n == (ssize_t)len ? 0 : -1;
}

void backend_set_hooks(struct backend *b, const struct backend_hooks *hooks, void *ctx)
{
	b->hooks = hooks;
	b->hooks_ctx = ctx;
}

/* Take a capability list from a "[CAPABILITY ...]" code or a "* CAPABILITY" line. */
/* A list over CAPS_MAX fails the connection: cut, it could not be filtered
 * (nor forwarded whole). Callers check for BK_FAILED after. */
void bk_store_caps(struct backend *b, const uint8_t *p, size_t len)
{
	if (len > CAPS_MAX) {
		log_warn("S-%lu backend %s: capability list of %zu bytes, over the maximum of %d",
		         b->sid, b->cfg->name, len, CAPS_MAX);
		bk_fail(b, "capability list too long");
		return;
	}
	char *c = b->caps != bk_no_caps ? realloc(b->caps, len + 1) : malloc(len + 1);
	if (c == NULL) {
		bk_fail(b, "out of memory");
		return;
	}
	memcpy(c, p, len);
	c[len] = '\0';
	b->caps = c;
	b->caps_known = true;
}

/* Find "[CAPABILITY ...]" in resp-text rest[0..len) and store it. */
void bk_caps_from_code(struct backend *b, const uint8_t *rest, size_t len)
{
	static const char key[] = "[CAPABILITY ";
	size_t klen = sizeof(key) - 1;

	if (len > klen && imap_word_eq(rest, klen, key)) {
		const uint8_t *end = memchr(rest + klen, ']', len - klen);
		if (end != NULL)
			bk_store_caps(b, rest + klen, (size_t)(end - (rest + klen)));
	}
}

static void bk_forget_caps(struct backend *b)
{
	b->caps_known = false;
	if (b->caps != bk_no_caps)
		free(b->caps);
	b->caps = bk_no_caps;
}

static void bk_ready(struct backend *b)
{
	bk_enter(b, BK_READY);
	ev_timer_stop(b->conn.loop, &b->timer);
	log_debug("S-%lu backend %s ready", b->sid, b->cfg->name);
	if (b->login_wanted)
		bk_send_login(b);
	else if (b->notify_ready)
		bk_finish(b, BK_RES_OK, "ready");
}

void backend_notify_ready(struct backend *b)
{
	b->notify_ready = true;
}

/* A continuation request no internal command of this module asked for. */
static void bk_no_continuation(struct backend *b, const struct bk_reply *r)
{
	if (r->ev == BK_EV_CONTINUE)
		bk_fail(b, "unexpected continuation request");
}

/* CAPABILITY (before login, after UNAUTHENTICATE, or after a login whose OK
 * had none): the untagged answer holds the list. */
static void bk_caps_cb(void *arg, struct backend *b, const struct bk_reply *r)
{
	(void)arg;
	bk_no_continuation(b, r);
	if (r->ev == BK_EV_UNTAGGED) {
		if (!imap_word_eq(r->head->w1, r->head->w1_len, "CAPABILITY"))
			return;
		if (r->partial) {
			bk_fail(b, "literal in a capability list");
			return;
		}
		bk_store_caps(b, r->head->rest, r->head->rest_len);
		return;
	}
	if (r->ev != BK_EV_DONE)
		return;
	if (r->status != BK_ST_OK || !b->caps_known) {
		bk_fail(b, "CAPABILITY failed");
		return;
	}
	if (b->state == BK_LOGIN_CAPS) {
		if (b->hooks != NULL && b->hooks->learn_login_caps != NULL)
			b->hooks->learn_login_caps(b->hooks_ctx, b->caps);
		bk_enter(b, BK_ATTACHED);
		bk_finish(b, BK_RES_OK, "logged in");
	} else {
		bk_ready(b);
	}
}

void bk_ask_caps(struct backend *b, enum bk_state st)
{
	bk_enter(b, st);
	if (bk_cmd_queue(b, "CAPABILITY", BK_CMD_SWALLOW, bk_caps_cb) < 0)
		bk_fail(b, "out of memory");
}

static int bk_start_tls(struct backend *b)
{
	const char *sni = b->cfg->tls_name;

	if (b->ssl_ctx == NULL || conn_start_tls(&b->conn, b->ssl_ctx, false, sni) < 0) {
		bk_fail(b, "cannot start TLS");
		return -1;
	}
	bk_enter(b, BK_TLS);
	return 0;
}

static void bk_starttls_cb(void *arg, struct backend *b, const struct bk_reply *r)
{
	(void)arg;
	bk_no_continuation(b, r);
	if (r->ev != BK_EV_DONE)
		return;
	if (r->status != BK_ST_OK) {
		bk_fail(b, "STARTTLS refused");
		return;
	}
	/* Bytes after the OK would be plaintext injected before TLS. */
	if (!buf_is_empty(&b->conn.in)) {
		bk_fail(b, "data after STARTTLS response");
		return;
	}
	b->after_starttls = true;
	bk_forget_caps(b);
	(void)bk_start_tls(b);
}

/* The greeting: "* OK [CAPABILITY ...] ...", then STARTTLS or CAPABILITY
 * as needed. */
static void bk_greeting(struct backend *b, const struct imap_head *h)
{
	if (imap_word_eq(h->w1, h->w1_len, "BYE")) {
		bk_fail(b, "backend said BYE");
		return;
	}
	if (!imap_word_eq(h->w1, h->w1_len, "OK")) {
		bk_fail(b, "unexpected greeting");
		return;
	}
	bk_caps_from_code(b, h->rest, h->rest_len);
	if (b->state == BK_FAILED)
		return;
	if (b->cfg->tls == CFG_TLS_STARTTLS) {
		bk_enter(b, BK_STARTTLS);
		if (bk_cmd_queue(b, "STARTTLS", 0, bk_starttls_cb) < 0)
			bk_fail(b, "out of memory");
	} else if (b->caps_known) {
		bk_ready(b);
	} else {
		bk_ask_caps(b, BK_CAPS);
	}
}

/* ---- the reader ---------------------------------------------------------- */

/* The first unit of one response, p[0..len) with its line end; partial when
 * more of the response follows. */
static void bk_response(struct backend *b, const uint8_t *p, size_t len, bool partial)
{
	struct imap_head h;
	int r = cmdq_answer(&b->cmds, b, p, len, partial, &h);

	if (r < 0) {
		bk_fail(b, "bad response line");
		return;
	}
	if (b->state == BK_FAILED)
		return;
	if (r > 0) {
		bk_cmd_write(b); /* the next one, if that one ended */
		return;
	}
	if (h.tag_len == 1 && h.tag[0] == '+') {
		bk_fail(b, "unexpected continuation request");
		return;
	}
	if (h.tag_len != 1 || h.tag[0] != '*') {
		bk_fail(b, "unexpected tagged response");
		return;
	}
	if (b->state == BK_GREETING)
		bk_greeting(b, &h);
	else if (imap_word_eq(h.w1, h.w1_len, "BYE"))
		bk_fail(b, "backend said BYE");
	/* Other untagged data has nobody to go to here. */
}

/* Consume what has come in while this module reads the stream. */
static void bk_read(struct backend *b)
{
	while (bk_reading(b)) {
		struct imap_tok_unit u;
		int r = imap_tok_next(&b->tok, buf_head(&b->conn.in), buf_len(&b->conn.in), &u);

		if (r == -2)
			return;
		if (r < 0) {
			bk_fail(b, imap_tok_error(&b->tok));
			return;
		}
		if (!u.first) {
			/* The rest of a response whose first unit went its way. */
			imap_tok_consume(&b->tok, &u, u.len);
			buf_consume(&b->conn.in, u.len);
			continue;
		}
		/* Copy the line out: a handler may start TLS, which must find
		 * the buffer empty after the STARTTLS answer. */
		uint8_t line[BK_MAX_LINE];
		bool partial = !(u.type == IMAP_TOK_LINE && u.last);
		memcpy(line, buf_head(&b->conn.in), u.len);
		imap_tok_consume(&b->tok, &u, u.len);
		buf_consume(&b->conn.in, u.len);
		bk_response(b, line, u.len, partial);
	}
}

static void bk_io(struct conn *c, void *arg)
{
	struct backend *b = arg;
	int progress;

	(void)c;
	do {
		progress = 0;
		if (b->state == BK_CONNECTING) {
			int r = conn_connect_check(&b->conn);
			if (r == -2)
				break;
			if (r < 0) {
				bk_fail(b, b->conn.errmsg);
				return;
			}
			if (b->cfg->send_proxy != CFG_SEND_PROXY_NO && bk_send_proxy(b) < 0) {
				bk_fail(b, "cannot send the PROXY header");
				return;
			}
			if (b->cfg->tls == CFG_TLS_IMPLICIT) {
				if (bk_start_tls(b) < 0)
					return;
			} else {
				bk_enter(b, BK_GREETING);
			}
			progress = 1;
		}
		int rr = conn_read(&b->conn);
		int wr = conn_flush(&b->conn);
		if (rr == -1 || wr == -1) {
			bk_fail(b, b->conn.errmsg);
			return;
		}
		progress |= rr == 0 || wr == 0;
		cmdq_wipe(&b->cmds, &b->conn.out, false);
		if (b->state == BK_TLS && conn_handshake_done(&b->conn)) {
			if (b->after_starttls)
				bk_ask_caps(b, BK_CAPS);
			else
				bk_enter(b, BK_GREETING);
			progress = 1;
		}
		bk_read(b);
		if (b->state == BK_FAILED || b->state == BK_ATTACHED)
			return;
		if (b->conn.eof) {
			bk_fail(b, "connection closed by backend");
			return;
		}
		/* A command that waited for room in conn.out. */
		if (cmdq_pending(&b->cmds) && !cmdq_in_flight(&b->cmds)) {
			bk_cmd_write(b);
			progress |= cmdq_in_flight(&b->cmds);
		}
	} while (progress);
	conn_update(&b->conn);
	/* An idle connection keeps no buffer memory. */
	if ((b->state == BK_READY || b->state == BK_HELD) && buf_is_empty(&b->conn.in) &&
	    buf_is_empty(&b->conn.out) && !b->cmds.secret_out)
		conn_release_buffers(&b->conn);
}

/* ---- after login ---------------------------------------------------------- */

/* Take the conn back from its session, at a response boundary. */
static void bk_take_back(struct backend *b, backend_done_cb *done, void *owner)
{
	struct imap_tok_limits lim = {.max_line = BK_MAX_LINE};

	b->conn.cb = bk_io;
	b->conn.owner = b;
	b->conn.want_input = true;
	b->done = done;
	b->owner = owner;
	/* The session's tokenizer followed the stream until now. */
	imap_tok_init(&b->tok, IMAP_TOK_RESPONSES, &lim);
}

/* UNSELECT on the way back: whatever it says, UNAUTHENTICATE decides. */
static void bk_unselect_cb(void *arg, struct backend *b, const struct bk_reply *r)
{
	(void)arg;
	bk_no_continuation(b, r);
}

static void bk_unauth_cb(void *arg, struct backend *b, const struct bk_reply *r)
{
	(void)arg;
	bk_no_continuation(b, r);
	if (r->ev != BK_EV_DONE)
		return;
	if (r->status != BK_ST_OK) {
		bk_fail(b, "UNAUTHENTICATE refused");
		return;
	}
	/* The capabilities are the pre-login ones again. */
	bk_forget_caps(b);
	bk_caps_from_code(b, r->head->rest, r->head->rest_len);
	if (b->state == BK_FAILED)
		return;
	if (b->caps_known)
		bk_ready(b);
	else
		bk_ask_caps(b, BK_CAPS);
}

int backend_unauthenticate(struct backend *b, bool unselect, backend_done_cb *done, void *owner)
{
	if (b->state != BK_ATTACHED || b->conn.eof || b->conn.error || backend_cmd_pending(b))
		return -1;
	if ((unselect && bk_cmd_queue(b, "UNSELECT", BK_CMD_SWALLOW, bk_unselect_cb) < 0) ||
	    bk_cmd_queue(b, "UNAUTHENTICATE", BK_CMD_SWALLOW, bk_unauth_cb) < 0) {
		/* A queued UNSELECT ends (GONE) when the caller closes b. */
		return -1;
	}
	bk_take_back(b, done, owner);
	b->login_wanted = false;
	b->notify_ready = true;
	b->returning = true;
	bk_enter(b, BK_UNAUTH);
	bk_arm_timer(b, b->cfg->command_timeout);
	/* Bytes may be waiting already: look at them from a fresh callback. */
	ev_feed_event(b->conn.loop, &b->conn.wio, EV_WRITE);
	conn_update(&b->conn);
	return 0;
}

int backend_hold(struct backend *b, backend_done_cb *done, void *owner)
{
	if (b->state != BK_ATTACHED || b->conn.eof || b->conn.error)
		return -1;
	bk_take_back(b, done, owner);
	bk_enter(b, BK_HELD);
	ev_timer_stop(b->conn.loop, &b->timer);
	/* Bytes may be waiting already: look at them from a fresh callback. */
	ev_feed_event(b->conn.loop, &b->conn.wio, EV_WRITE);
	conn_update(&b->conn);
	return 0;
}

bool backend_quiet(const struct backend *b)
{
	return (b->state == BK_READY || b->state == BK_HELD) && !b->conn.error && !b->conn.eof &&
	       buf_is_empty(&b->conn.in) && imap_tok_at_boundary(&b->tok) &&
	       !backend_cmd_pending(b);
}

void backend_attach(struct backend *b, conn_cb *cb, void *owner)
{
	bk_enter(b, BK_ATTACHED);
	b->conn.cb = cb;
	b->conn.owner = owner;
	b->done = NULL;
	ev_timer_stop(b->conn.loop, &b->timer);
}

/* ---- the end ------------------------------------------------------------ */

/* Stop everything and close the conn; the struct stays (for the free). */
static void bk_close(struct backend *b)
{
	ev_timer_stop(b->conn.loop, &b->timer);
	bk_forget_credentials(b);
	bk_enter(b, BK_FAILED);
	b->done = NULL;
	/* At once, not at the free: the handlers' owners may go first. */
	cmdq_gone(&b->cmds, b, "connection closed");
	cmdq_wipe(&b->cmds, &b->conn.out, true);
	conn_close(&b->conn);
}

void backend_destroy(struct backend **bp)
{
	struct backend *b = *bp;

	if (b == NULL)
		return;
	*bp = NULL;
	bk_close(b);
	if (b->hooks != NULL && b->hooks->gone != NULL)
		b->hooks->gone(b->hooks_ctx, b);
	bk_forget_caps(b);
	free(b->proxy_hdr);
	free(b);
}

static void backend_defer_free(struct defer *d)
{
	struct backend *b = (struct backend *)d;

	backend_destroy(&b);
}

void backend_destroy_later(struct reaper *r, struct backend **bp)
{
	struct backend *b = *bp;

	if (b == NULL)
		return;
	*bp = NULL;
	bk_close(b);
	b->defer.fn = backend_defer_free;
	reaper_defer(r, &b->defer);
}

void backend_logout_and_destroy_later(struct reaper *r, struct backend **bp)
{
	struct backend *b = *bp;

	if (b == NULL)
		return;
	if (bk_can_write(b) && b->state != BK_STARTTLS && !b->conn.eof &&
	    cmdq_logout(&b->cmds, &b->conn.out) == 0 && conn_flush(&b->conn) == -1)
		log_debug("backend %s: LOGOUT not sent: %s", b->cfg->name,
		          b->conn.errmsg ? b->conn.errmsg : "write error");
	backend_destroy_later(r, bp);
}
