/*
 * backend — a backend IMAP connection up to login (see backend.h).
 *
 * The proxy speaks first only after the greeting, one command at a time,
 * with fixed tags ("S" STARTTLS, "C" CAPABILITY, "L" login, "R" UNSELECT
 * and "U" UNAUTHENTICATE on the way back to the pool), so a tagged line
 * with another tag is a protocol error.
 *
 * Post-login capabilities: a login's tagged OK usually carries them; they
 * are handed to the pool (pool_learn_login_caps), which keeps the backend's
 * latest list, so a login whose OK lacks them costs no CAPABILITY round
 * trip once any login of this backend has reported them. Credentials live in this
 * struct only until the login command is queued, and are wiped then.
 *
 * Login preference: AUTHENTICATE PLAIN with SASL-IR (one round trip, any
 * bytes), AUTHENTICATE PLAIN with a continuation, then LOGIN with quoted
 * strings (7-bit, no CR/LF) or LITERAL+ literals.
 */
#include "backend.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base64.h"
#include "caps.h"
#include "imap_args.h"
#include "log.h"
#include "pool.h"

#define BK_BUF_SIZE (32 * 1024)
#define BK_MAX_LINE (16 * 1024)

static void bk_io(struct conn *c, void *arg);

static void wipe_free(char **p, size_t len)
{
	if (*p != NULL) {
		explicit_bzero(*p, len);
		free(*p);
		*p = NULL;
	}
}

static void bk_forget_credentials(struct backend *b)
{
	wipe_free(&b->authz, b->authz_len);
	wipe_free(&b->user, b->user_len);
	wipe_free(&b->pass, b->pass_len);
	if (b->plain_b64 != NULL)
		wipe_free(&b->plain_b64, strlen(b->plain_b64));
	b->user_len = b->pass_len = b->authz_len = 0;
}

static void bk_finish(struct backend *b, enum bk_result r, const char *why)
{
	ev_timer_stop(b->conn.loop, &b->timer);
	bk_forget_credentials(b);
	if (r != BK_RES_OK) {
		b->state = BK_FAILED;
		conn_stop(&b->conn);
	}
	if (b->done != NULL) {
		backend_done_cb *done = b->done;
		b->done = NULL;
		done(b->owner, b, r, why);
	}
}

static void bk_fail(struct backend *b, const char *why)
{
	if (b->state == BK_FAILED)
		return;
	/* Health probes (no login, sid 0) report through their own owner. */
	log_msg(b->notify_ready ? LOG_LVL_DEBUG : LOG_LVL_WARN, "S-%lu backend %s (%s): %s", b->sid,
	        b->cfg->name, b->cfg->addr.text, why);
	if (b->login_wanted || b->notify_ready || b->state == BK_LOGIN || b->state == BK_LOGIN_CAPS)
		bk_finish(b, BK_RES_UNAVAILABLE, why);
	else {
		b->state = BK_FAILED;
		conn_stop(&b->conn);
	}
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

static void bk_arm_timer(struct backend *b, double secs)
{
	ev_timer_stop(b->conn.loop, &b->timer);
	ev_timer_set(&b->timer, secs, 0.);
	ev_timer_start(b->conn.loop, &b->timer);
}

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
	b->ssl_ctx = ctx;
	b->sid = sid;
	b->done = done;
	b->owner = owner;
	b->state = BK_CONNECTING;
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

/* Queue a command line; returns 0 or -1 when the buffer cannot take it. */
static int bk_send(struct backend *b, const char *line)
{
	if (buf_append(&b->conn.out, line, strlen(line)) < 0) {
		bk_fail(b, "command too long");
		return -1;
	}
	return 0;
}

static bool plain_safe(const char *s, size_t len)
{
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c < 0x20 || c >= 0x7f)
			return false;
	}
	return true;
}

/* Append s as an IMAP quoted string or a LITERAL+ literal. */
static int bk_put_string(struct backend *b, const char *s, size_t len, bool literal_plus)
{
	char head[32];

	if (plain_safe(s, len)) {
		if (buf_append(&b->conn.out, "\"", 1) < 0)
			return -1;
		for (size_t i = 0; i < len; i++) {
			if ((s[i] == '"' || s[i] == '\\') && buf_append(&b->conn.out, "\\", 1) < 0)
				return -1;
			if (buf_append(&b->conn.out, &s[i], 1) < 0)
				return -1;
		}
		return buf_append(&b->conn.out, "\"", 1);
	}
	if (!literal_plus)
		return -1;
	snprintf(head, sizeof(head), "{%zu+}\r\n", len);
	if (buf_append(&b->conn.out, head, strlen(head)) < 0)
		return -1;
	return buf_append(&b->conn.out, s, len);
}

static void bk_send_login(struct backend *b)
{
	bool plain = caps_has(b->caps, strlen(b->caps), "AUTH=PLAIN");
	bool sasl_ir = caps_has(b->caps, strlen(b->caps), "SASL-IR");
	size_t rawlen = b->authz_len + 1 + b->user_len + 1 + b->pass_len;

	b->state = BK_LOGIN;
	bk_arm_timer(b, b->cfg->command_timeout);
	if (caps_has(b->caps, strlen(b->caps), "LOGINDISABLED") && !plain) {
		bk_fail(b, "backend refuses plaintext login (LOGINDISABLED): use tls = starttls");
		return;
	}
	if (plain) {
		uint8_t *raw = malloc(rawlen);
		size_t enclen = B64_ENCODED_LEN(rawlen) + 1;
		char *enc = malloc(enclen);

		if (raw == NULL || enc == NULL) {
			free(raw);
			free(enc);
			bk_fail(b, "out of memory");
			return;
		}
		size_t off = 0;
		if (b->authz_len > 0)
			memcpy(raw, b->authz, b->authz_len);
		off = b->authz_len;
		raw[off++] = '\0';
		memcpy(raw + off, b->user, b->user_len);
		off += b->user_len;
		raw[off++] = '\0';
		memcpy(raw + off, b->pass, b->pass_len);
		long n = b64_encode(raw, rawlen, enc, enclen);
		explicit_bzero(raw, rawlen);
		free(raw);
		if (n < 0) {
			free(enc);
			bk_fail(b, "encoding failed");
			return;
		}
		b->plain_b64 = enc;
		if (sasl_ir) {
			if (bk_send(b, "L AUTHENTICATE PLAIN ") < 0 || bk_send(b, enc) < 0 ||
			    bk_send(b, "\r\n") < 0)
				return;
		} else {
			if (bk_send(b, "L AUTHENTICATE PLAIN\r\n") < 0)
				return;
			b->plain_continuation = true;
		}
	} else {
		bool lp = caps_has(b->caps, strlen(b->caps), "LITERAL+");
		char *name = b->user;
		size_t name_len = b->user_len;
		if (b->authz != NULL) {
			/* Dovecot's master login: "user<separator>master". */
			size_t sep = strlen(b->cfg->master_separator);
			name_len = b->authz_len + sep + b->user_len;
			name = malloc(name_len + 1);
			if (name == NULL) {
				bk_fail(b, "out of memory");
				return;
			}
			memcpy(name, b->authz, b->authz_len);
			memcpy(name + b->authz_len, b->cfg->master_separator, sep);
			memcpy(name + b->authz_len + sep, b->user, b->user_len);
			name[name_len] = '\0';
		}
		int r = bk_send(b, "L LOGIN ") < 0 ? -1 : bk_put_string(b, name, name_len, lp);
		if (name != b->user)
			wipe_free(&name, name_len);
		if (r < 0 || buf_append(&b->conn.out, " ", 1) < 0 ||
		    bk_put_string(b, b->pass, b->pass_len, lp) < 0 || bk_send(b, "\r\n") < 0) {
			bk_fail(b, "credentials cannot be sent with LOGIN to this backend");
			return;
		}
	}
	/* What remains is in the output buffer only; it is freed once sent. */
	wipe_free(&b->authz, b->authz_len);
	wipe_free(&b->user, b->user_len);
	wipe_free(&b->pass, b->pass_len);
}

int backend_login(struct backend *b, const char *user, size_t user_len, const char *pass,
                  size_t pass_len)
{
	return backend_login_as(b, NULL, 0, user, user_len, pass, pass_len);
}

int backend_login_as(struct backend *b, const char *authz, size_t authz_len, const char *user,
                     size_t user_len, const char *pass, size_t pass_len)
{
	if (authz != NULL) {
		b->authz = malloc(authz_len + 1);
		if (b->authz == NULL)
			return -1;
		memcpy(b->authz, authz, authz_len);
		b->authz[authz_len] = '\0';
		b->authz_len = authz_len;
	}
	b->user = malloc(user_len + 1);
	b->pass = malloc(pass_len + 1);
	if (b->user == NULL || b->pass == NULL) {
		bk_forget_credentials(b);
		return -1;
	}
	memcpy(b->user, user, user_len);
	b->user[user_len] = '\0';
	memcpy(b->pass, pass, pass_len);
	b->pass[pass_len] = '\0';
	b->user_len = user_len;
	b->pass_len = pass_len;
	b->login_wanted = true;
	if (b->state == BK_READY) {
		bk_send_login(b);
		conn_update(&b->conn);
	}
	return 0;
}

/* Take a capability list from a "[CAPABILITY ...]" code or a "* CAPABILITY" line. */
/* A list over CAPS_MAX fails the connection: cut, it could not be filtered
 * (nor forwarded whole). Callers check for BK_FAILED after. */
static void bk_store_caps(struct backend *b, const uint8_t *p, size_t len)
{
	if (len > CAPS_MAX) {
		log_warn("S-%lu backend %s: capability list of %zu bytes, over the maximum of %d",
		         b->sid, b->cfg->name, len, CAPS_MAX);
		bk_fail(b, "capability list too long");
		return;
	}
	memcpy(b->caps, p, len);
	b->caps[len] = '\0';
	b->caps_known = true;
}

/* Find "[CAPABILITY ...]" in resp-text rest[0..len) and store it. */
static void bk_caps_from_code(struct backend *b, const uint8_t *rest, size_t len)
{
	static const char key[] = "[CAPABILITY ";
	size_t klen = sizeof(key) - 1;

	if (len > klen && imap_word_eq(rest, klen, key)) {
		const uint8_t *end = memchr(rest + klen, ']', len - klen);
		if (end != NULL)
			bk_store_caps(b, rest + klen, (size_t)(end - (rest + klen)));
	}
}

static void bk_ready(struct backend *b)
{
	b->state = BK_READY;
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

static void bk_after_caps(struct backend *b)
{
	if (b->state == BK_LOGIN_CAPS) {
		if (b->pool != NULL)
			pool_learn_login_caps(b->pool, b->caps);
		b->state = BK_ATTACHED;
		bk_finish(b, BK_RES_OK, "logged in");
	} else {
		bk_ready(b);
	}
}

static int bk_start_tls(struct backend *b)
{
	const char *sni = b->cfg->tls_name;

	if (b->ssl_ctx == NULL || conn_start_tls(&b->conn, b->ssl_ctx, false, sni) < 0) {
		bk_fail(b, "cannot start TLS");
		return -1;
	}
	b->state = BK_TLS;
	return 0;
}

/* Map a login NO to the answer the client gets. */
static enum bk_result bk_login_no(const uint8_t *rest, size_t len)
{
	static const char unavail[] = "[UNAVAILABLE]";
	static const char limit[] = "[LIMIT]";

	if (len >= sizeof(unavail) - 1 && imap_word_eq(rest, sizeof(unavail) - 1, unavail))
		return BK_RES_UNAVAILABLE;
	if (len >= sizeof(limit) - 1 && imap_word_eq(rest, sizeof(limit) - 1, limit))
		return BK_RES_UNAVAILABLE;
	return BK_RES_AUTH_FAILED;
}

/* Handle one complete response line (CRLF included). */
static void bk_line(struct backend *b, const uint8_t *p, size_t len)
{
	struct imap_head h;
	bool tagged, ok, no;

	while (len > 0 && (p[len - 1] == '\n' || p[len - 1] == '\r'))
		len--;
	if (imap_head_parse(p, len, &h) < 0) {
		bk_fail(b, "bad response line");
		return;
	}
	tagged = !(h.tag_len == 1 && (h.tag[0] == '*' || h.tag[0] == '+'));
	ok = imap_word_eq(h.w1, h.w1_len, "OK");
	no = imap_word_eq(h.w1, h.w1_len, "NO");

	if (h.tag_len == 1 && h.tag[0] == '+') {
		if (b->state == BK_LOGIN && b->plain_continuation && b->plain_b64 != NULL) {
			b->plain_continuation = false;
			if (bk_send(b, b->plain_b64) == 0)
				(void)bk_send(b, "\r\n");
			wipe_free(&b->plain_b64, strlen(b->plain_b64));
			return;
		}
		bk_fail(b, "unexpected continuation request");
		return;
	}
	if (!tagged) {
		if (imap_word_eq(h.w1, h.w1_len, "CAPABILITY")) {
			bk_store_caps(b, h.rest, h.rest_len);
			return;
		}
		if (imap_word_eq(h.w1, h.w1_len, "BYE")) {
			bk_fail(b, "backend said BYE");
			return;
		}
		if (b->state == BK_GREETING) {
			if (!ok) {
				bk_fail(b, "unexpected greeting");
				return;
			}
			bk_caps_from_code(b, h.rest, h.rest_len);
			if (b->state == BK_FAILED)
				return;
			if (b->cfg->tls == CFG_TLS_STARTTLS) {
				b->state = BK_STARTTLS;
				(void)bk_send(b, "S STARTTLS\r\n");
			} else if (b->caps_known) {
				bk_ready(b);
			} else {
				b->state = BK_CAPS;
				(void)bk_send(b, "C CAPABILITY\r\n");
			}
		}
		/* Other untagged data before login is of no interest. */
		return;
	}

	switch (b->state) {
	case BK_STARTTLS:
		if (!imap_word_eq(h.tag, h.tag_len, "S") || !ok) {
			bk_fail(b, "STARTTLS refused");
			return;
		}
		/* Bytes after the OK would be plaintext injected before TLS. */
		if (!buf_is_empty(&b->conn.in)) {
			bk_fail(b, "data after STARTTLS response");
			return;
		}
		b->after_starttls = true;
		b->caps_known = false;
		b->caps[0] = '\0';
		(void)bk_start_tls(b);
		return;
	case BK_CAPS:
	case BK_LOGIN_CAPS:
		if (!imap_word_eq(h.tag, h.tag_len, "C") || !ok || !b->caps_known) {
			bk_fail(b, "CAPABILITY failed");
			return;
		}
		bk_after_caps(b);
		return;
	case BK_LOGIN:
		if (!imap_word_eq(h.tag, h.tag_len, "L")) {
			bk_fail(b, "unexpected tagged response");
			return;
		}
		if (ok) {
			const char *known = b->pool != NULL ? pool_login_caps(b->pool) : NULL;

			b->caps_known = false;
			bk_caps_from_code(b, h.rest, h.rest_len);
			if (b->state == BK_FAILED)
				return;
			if (b->caps_known && b->pool != NULL)
				pool_learn_login_caps(b->pool, b->caps);
			if (!b->caps_known && known != NULL)
				bk_store_caps(b, (const uint8_t *)known, strlen(known));
			if (b->caps_known) {
				b->state = BK_ATTACHED;
				bk_finish(b, BK_RES_OK, "logged in");
			} else {
				b->state = BK_LOGIN_CAPS;
				if (b->pool != NULL)
					pool_count_caps_query(b->pool);
				(void)bk_send(b, "C CAPABILITY\r\n");
			}
			return;
		}
		bk_finish(b, no ? bk_login_no(h.rest, h.rest_len) : BK_RES_UNAVAILABLE,
		          no ? "credentials refused" : "login command rejected");
		return;
	case BK_UNAUTH:
		if (imap_word_eq(h.tag, h.tag_len, "R"))
			return; /* UNSELECT: whatever it says, UNAUTHENTICATE decides */
		if (!imap_word_eq(h.tag, h.tag_len, "U") || !ok) {
			bk_fail(b, "UNAUTHENTICATE refused");
			return;
		}
		/* The capabilities are the pre-login ones again. */
		b->caps_known = false;
		b->caps[0] = '\0';
		bk_caps_from_code(b, h.rest, h.rest_len);
		if (b->state == BK_FAILED)
			return;
		if (b->caps_known) {
			bk_ready(b);
		} else {
			b->state = BK_CAPS;
			(void)bk_send(b, "C CAPABILITY\r\n");
		}
		return;
	default:
		bk_fail(b, "unexpected tagged response");
		return;
	}
}

/* Consume complete lines from conn.in while in a line-reading state. */
static void bk_read_lines(struct backend *b)
{
	while (b->state != BK_FAILED && b->state != BK_ATTACHED && b->state != BK_TLS &&
	       b->state != BK_CONNECTING) {
		struct imap_tok_unit u;
		int r = imap_tok_next(&b->tok, buf_head(&b->conn.in), buf_len(&b->conn.in), &u);

		if (r == -2)
			return;
		if (r < 0) {
			bk_fail(b, imap_tok_error(&b->tok));
			return;
		}
		if (u.type != IMAP_TOK_LINE || !u.last || !u.first) {
			if (b->state == BK_UNAUTH) {
				/* Untagged data of the old session (a FETCH with a
				 * literal): not ours to read. */
				imap_tok_consume(&b->tok, &u, u.len);
				buf_consume(&b->conn.in, u.len);
				continue;
			}
			bk_fail(b, "unexpected literal before login");
			return;
		}
		/* Copy the line out: bk_line may start TLS, which must find the
		 * buffer empty after the STARTTLS answer. */
		uint8_t line[BK_MAX_LINE];
		memcpy(line, buf_head(&b->conn.in), u.len);
		imap_tok_consume(&b->tok, &u, u.len);
		buf_consume(&b->conn.in, u.len);
		bk_line(b, line, u.len);
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
			if (b->cfg->tls == CFG_TLS_IMPLICIT) {
				if (bk_start_tls(b) < 0)
					return;
			} else {
				b->state = BK_GREETING;
			}
			progress = 1;
		}
		int rr = conn_read(&b->conn);
		int wr = conn_flush(&b->conn);
		if (rr < 0 || wr < 0) {
			bk_fail(b, b->conn.errmsg);
			return;
		}
		progress |= rr | wr;
		if (b->state == BK_TLS && conn_handshake_done(&b->conn)) {
			if (b->after_starttls) {
				b->state = BK_CAPS;
				(void)bk_send(b, "C CAPABILITY\r\n");
			} else {
				b->state = BK_GREETING;
			}
			progress = 1;
		}
		bk_read_lines(b);
		if (b->state == BK_FAILED || b->state == BK_ATTACHED)
			return;
		if (b->conn.eof) {
			bk_fail(b, "connection closed by backend");
			return;
		}
	} while (progress);
	conn_update(&b->conn);
}

int backend_unauthenticate(struct backend *b, bool unselect, backend_done_cb *done, void *owner)
{
	static const char unsel[] = "R UNSELECT\r\n", unauth[] = "U UNAUTHENTICATE\r\n";
	struct imap_tok_limits lim = {.max_line = BK_MAX_LINE};

	if (b->state != BK_ATTACHED || b->conn.eof || b->conn.error)
		return -1;
	if ((unselect && buf_append(&b->conn.out, unsel, sizeof(unsel) - 1) < 0) ||
	    buf_append(&b->conn.out, unauth, sizeof(unauth) - 1) < 0)
		return -1;
	b->conn.cb = bk_io;
	b->conn.owner = b;
	b->conn.want_input = true;
	b->done = done;
	b->owner = owner;
	b->login_wanted = false;
	b->plain_continuation = false;
	b->notify_ready = true;
	b->returning = true;
	b->state = BK_UNAUTH;
	/* The session left the stream at a response boundary. */
	imap_tok_init(&b->tok, IMAP_TOK_RESPONSES, &lim);
	bk_arm_timer(b, b->cfg->command_timeout);
	/* Bytes may be waiting already: look at them from a fresh callback. */
	ev_feed_event(b->conn.loop, &b->conn.wio, EV_WRITE);
	conn_update(&b->conn);
	return 0;
}

void backend_attach(struct backend *b, conn_cb *cb, void *owner)
{
	b->conn.cb = cb;
	b->conn.owner = owner;
	b->done = NULL;
	ev_timer_stop(b->conn.loop, &b->timer);
}

void backend_destroy(struct backend **bp)
{
	struct backend *b = *bp;

	if (b == NULL)
		return;
	*bp = NULL;
	ev_timer_stop(b->conn.loop, &b->timer);
	bk_forget_credentials(b);
	conn_close(&b->conn);
	if (b->pool != NULL)
		pool_backend_gone(b->pool, b);
	free(b);
}

static void backend_defer_free(struct defer *d)
{
	struct backend *b = (struct backend *)d;

	backend_destroy(&b);
}

void backend_destroy_later(struct worker *w, struct backend **bp)
{
	struct backend *b = *bp;

	if (b == NULL)
		return;
	*bp = NULL;
	ev_timer_stop(b->conn.loop, &b->timer);
	bk_forget_credentials(b);
	conn_close(&b->conn);
	b->state = BK_FAILED;
	b->done = NULL;
	b->defer.fn = backend_defer_free;
	worker_defer(w, &b->defer);
}
