/*
 * session — one client connection, its whole life.
 *
 *   accept -> [PROXYHDR] -> [HANDSHAKE] -> PREAUTH <-> STARTTLS -> HANDSHAKE -> PREAUTH
 *   PREAUTH -> LOGIN -> PROXYING -> CLOSING -> (freed)
 *              LOGIN -> PREAUTH (credentials refused, backend unavailable)
 *   any -> CLOSING (BYE if the stream is at a response boundary) -> freed
 *
 * Before login the proxy answers everything itself; a command is assembled
 * whole (line parts and literal bodies) in a bounded buffer and parsed by
 * imap_cmd_parse. After login both streams are cut by imap_tok into lines
 * and literal chunks and copied to the other side as they come:
 *
 *   client.in --ctok--> backend.out        backend.in --btok--> client.out
 *                                                    local --^ (proxy replies,
 *                                                    only between responses)
 *
 * Literal bodies are never held whole: a LITERAL unit moves as far as the
 * destination buffer has room. A full destination stops reading from the
 * source (conn_update arms no read watcher without room): back-pressure.
 *
 * Invariants:
 *   - a session is freed only by the worker's reaper (sess_free_later), never
 *     inside its own callbacks; the backend likewise;
 *   - proxy-made lines reach the client only at a response boundary;
 *   - credentials live in the command buffer until handed to the backend and
 *     are wiped then; no log line carries them.
 */
#include "session.h"

#include <arpa/inet.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "admit.h"
#include "backend.h"
#include "base64.h"
#include "buf.h"
#include "caps.h"
#include "conn.h"
#include "cryptpool.h"
#include "health.h"
#include "ident.h"
#include "imap_args.h"
#include "imap_tok.h"
#include "log.h"
#include "pool.h"
#include "proxyproto.h"
#include "redis.h"
#include "reuse.h"
#include "route.h"
#include "runtime.h"
#include "ttlmap.h"
#include "worker.h"

#define IMAPMUX_NAME "imapmux"
#ifndef IMAPMUX_VERSION
#define IMAPMUX_VERSION "0.1.0"
#endif

#define CLIENT_IN_SIZE      (16 * 1024)
#define CLIENT_OUT_SIZE     (32 * 1024)
#define PREAUTH_MAX_LINE    8192  /* one line part before login */
#define PREAUTH_MAX_LITERAL 4096  /* one literal before login */
#define PREAUTH_MAX_CMD     16384 /* a whole command before login */
#define PREAUTH_MAX_BAD     10    /* invalid commands before we hang up */
#define REPLY_ROOM          2048  /* room kept for one proxy reply */
#define PREAUTH_ROOM                                                                               \
	(CAPS_MAX + 512)                      /* ... before login: the login OK carries the
                                             * backend's capabilities */
#define CAPLINE_MAX         (CAPS_MAX + 1024) /* a capability response from the backend */
#define TAINT_CARRY         15                /* longest word looked for in commands, less one */
#define STREAM_FRAG         4096              /* forwarding unit for long lines */
#define LOCAL_SIZE          4096              /* proxy replies queued during proxying */
#define TAG_MAX             64
#define USER_MAX            IDENT_USER_MAX
#define KEY_ROOM            IDENT_KEY_ROOM(CFG_REDIS_PREFIX_MAX)
#define IDLE_MIN_TIMEOUT    1800.0 /* RFC 3501 5.4: at least 30 minutes */
#define CLOSE_FLUSH_TIMEOUT 5.0
#define RUN_ROUNDS          16 /* fairness: I/O rounds per callback */

/*
 * While a command waits for the backend's "+" the proxy holds the client's
 * further input: only the backend's answer tells whether the next bytes
 * are a literal body (or DONE) or a new command, and the proxy must read
 * them exactly as the backend will. The command is then the only one in
 * flight, so its tagged answer is the one that ends the wait.
 */
enum sess_gate {
	GATE_NONE,
	GATE_LITERAL,     /* the client's {n}: "+" (passed on) or a refusal */
	GATE_LITERAL_OWN, /* the client's {n+}, sent on as {n}: "+" is the proxy's */
	GATE_IDLE,        /* IDLE: "+" (then the next line is DONE) or a refusal */
};

enum sess_state {
	SESS_HANDSHAKE, /* TLS handshake (implicit, or after STARTTLS) running */
	SESS_PROXYHDR,  /* proxy_protocol listener: reading the PROXY header, byte-exact
	                 * (MSG_PEEK), so that nothing of the client's own stream is
	                 * taken; nothing sent yet */
	SESS_PREAUTH,   /* greeted; the proxy answers commands itself */
	SESS_STARTTLS,  /* "OK Begin TLS" flushing; client input ignored */
	SESS_LOGIN,     /* credentials with a backend; client input paused */
	SESS_PROXYING,  /* logged in; streams parsed and forwarded */
	SESS_CLOSING,   /* last words flushing, then freed */
	SESS_DEAD,      /* on the reaper's list */
};

struct session {
	struct defer defer; /* first: the reaper frees through it */
	unsigned long id;
	struct worker *w;
	struct runtime *rt;
	const struct cfg_listen *lcfg;
	size_t lidx;
	enum sess_state state;
	struct session *prev, *next;
	struct conn client;
	struct backend *bk;
	const struct cfg_backend *bcfg;
	char peer[64];               /* "ip:port" */
	char user[64];               /* printable prefix of the user name, for logs */
	char ip[INET6_ADDRSTRLEN];   /* client address, for logs */
	char ipkey[IDENT_IP_MAX];    /* ... its group (IPv6: ipv6_prefix), for per-address
	                              * limits and brute-force counts */
	uint8_t uname[USER_MAX + 1]; /* the user name as imapmux identifies it
	                              * (username_case): kick matches it */
	size_t uname_len;
	struct login *login; /* the login pipeline, while in SESS_LOGIN */
	bool tls_active;
	bool starttls_done;
	uint8_t *phdr; /* the PROXY header's bytes so far (SESS_PROXYHDR only) */
	size_t phdr_len;
	bool conn_counted; /* holds a place under max_connections */
	bool ip_counted;   /* ... and under max_connections_per_ip */
	ev_timer timer;
	ev_tstamp last_activity;
	const char *reason;

	/* before login */
	struct imap_tok ctok; /* client stream (re-initialised at login) */
	struct buf cmd;       /* the command being assembled */
	unsigned nbad;
	bool sasl_wait; /* AUTHENTICATE sent "+ ": next line is the response */
	char tag[TAG_MAX + 1];

	/* after login */
	struct imap_tok btok;       /* backend stream */
	struct buf local;           /* proxy replies waiting for a response boundary */
	enum sess_gate gate;        /* client input held until the backend answers (see pump) */
	bool skip_cmd;              /* dropping the rest of a command the backend will not run */
	bool bskip;                 /* dropping the rest of a backend line not for the client */
	bool idling;                /* backend in IDLE: the client's next line is DONE */
	uint8_t carry[TAINT_CARRY]; /* the end of the command's previous line part */
	size_t carry_len;
	struct buf capline; /* a capability response longer than one unit, assembled */
	bool capline_on;
	char idle_tag[TAG_MAX + 1];
	unsigned inflight;     /* commands forwarded minus tagged completions */
	bool backend_bye;      /* the backend announced its close */
	bool backend_gone;     /* backend EOF or error: drain what it sent, then close */
	bool draining;         /* SIGTERM: close at the next quiet point */
	bool counted_proxying; /* included in stats.sessions_proxying */

	/* reuse after LOGOUT (reuse.c) */
	uint8_t reuse_key[REUSE_KEY_LEN];
	bool reuse_ok;             /* reuse_key is set: the login proved these credentials */
	bool tainted;              /* per-connection state changed (ENABLE, NOTIFY...): no reuse */
	bool selected;             /* a mailbox may be selected: reset with UNSELECT */
	char sel_tag[TAG_MAX + 1]; /* the last SELECT/EXAMINE/CLOSE/UNSELECT in flight */
	bool sel_opens;            /* ... and it was SELECT or EXAMINE */
	bool logging_out;          /* LOGOUT taken by the proxy: waiting for earlier commands */
	bool resetting;            /* "R UNSELECT" sent; its answer is not for the client */
	bool reset_failed;         /* ... and it was not OK: do not keep the session */
	bool reset_sent;
	char logout_tag[TAG_MAX + 1];
};

static void login_free(struct session *s);
static void login_release(struct session *s);

static unsigned long next_session_id(void)
{
	static _Atomic unsigned long counter;

	return atomic_fetch_add(&counter, 1) + 1;
}

static void sess_run(struct session *s);
static void sess_close(struct session *s, const char *reason, const char *bye);
static int sess_proxy_header(struct session *s);

/* ---- list, lifetime ---------------------------------------------------- */

static void sess_link(struct session *s)
{
	struct worker *w = s->w;

	s->prev = NULL;
	s->next = w->sessions;
	if (w->sessions != NULL)
		w->sessions->prev = s;
	w->sessions = s;
	w->nsessions++;
}

static void sess_unlink(struct session *s)
{
	struct worker *w = s->w;

	if (s->prev != NULL)
		s->prev->next = s->next;
	else
		w->sessions = s->next;
	if (s->next != NULL)
		s->next->prev = s->prev;
	s->prev = s->next = NULL;
	w->nsessions--;
}

static void sess_reap(struct defer *d)
{
	struct session *s = (struct session *)d;

	conn_close(&s->client);
	free(s->phdr);
	explicit_bzero(s->cmd.data ? s->cmd.data : (uint8_t *)s->tag, s->cmd.data ? s->cmd.cap : 1);
	buf_free(&s->cmd);
	buf_free(&s->local);
	buf_free(&s->capline);
	runtime_unref(&s->rt);
	free(s);
}

static void sess_free_later(struct session *s)
{
	if (s->state == SESS_DEAD)
		return;
	s->state = SESS_DEAD;
	STAT_DEC(&s->w->stats, sessions_active);
	if (s->conn_counted)
		admit_conn_done();
	if (s->ip_counted)
		admit_ip_done(s->ipkey);
	s->conn_counted = s->ip_counted = false;
	if (s->counted_proxying)
		STAT_DEC(&s->w->stats, sessions_proxying);
	STAT_ADD(&s->w->stats, client_bytes_in, s->client.bytes_in);
	STAT_ADD(&s->w->stats, client_bytes_out, s->client.bytes_out);
	ev_timer_stop(s->w->loop, &s->timer);
	login_free(s);
	conn_stop(&s->client);
	ev_clear_pending(s->w->loop, &s->client.rio);
	ev_clear_pending(s->w->loop, &s->client.wio);
	backend_destroy_later(s->w, &s->bk);
	sess_unlink(s);
	s->defer.fn = sess_reap;
	worker_defer(s->w, &s->defer);
}

/* ---- output helpers ---------------------------------------------------- */

/* Append bytes whose room the caller has checked. */
static void buf_put(struct buf *b, const void *p, size_t n)
{
	if (buf_append(b, p, n) < 0)
		log_error("internal: buffer overrun avoided (%zu bytes)", n);
}

static void sess_reply(struct session *s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Queue a proxy-made line for the client. Before login it goes straight to
 * the output; during proxying to `local`, flushed at a response boundary.
 * The line is sized from what it carries (a login OK holds the backend's
 * capability list): a short one on the stack, a longer one on the heap. */
static void sess_reply(struct session *s, const char *fmt, ...)
{
	char small[1024], *line = small;
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(small, sizeof(small), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if ((size_t)n + 2 >= sizeof(small)) {
		line = malloc((size_t)n + 3);
		if (line == NULL) {
			log_warn("S-%lu %s@%s reply dropped: out of memory", s->id, s->user,
			         s->peer);
			return;
		}
		va_start(ap, fmt);
		(void)vsnprintf(line, (size_t)n + 1, fmt, ap);
		va_end(ap);
	}
	line[n++] = '\r';
	line[n++] = '\n';
	struct buf *dst = s->state == SESS_PROXYING ? &s->local : &s->client.out;
	if (buf_append(dst, line, (size_t)n) < 0)
		log_warn("S-%lu %s@%s reply dropped: output full", s->id, s->user, s->peer);
	if (line != small)
		free(line);
}

static void sess_log(struct session *s, enum log_level lvl, const char *what)
{
	if (log_enabled(lvl))
		log_msg(lvl, "S-%lu %s@%s %s", s->id, s->user[0] ? s->user : "-", s->peer, what);
}

/* Remember a printable, bounded form of the user name for log lines. */
static void sess_set_user(struct session *s, const uint8_t *u, size_t len)
{
	size_t i, n = len < sizeof(s->user) - 1 ? len : sizeof(s->user) - 1;

	for (i = 0; i < n; i++)
		s->user[i] = (u[i] > 0x20 && u[i] < 0x7f) ? (char)u[i] : '?';
	s->user[n] = '\0';
}

static void sess_set_tag(struct session *s, const uint8_t *tag, size_t len)
{
	if (len > TAG_MAX)
		len = TAG_MAX;
	memcpy(s->tag, tag, len);
	s->tag[len] = '\0';
}

/* ---- timers ------------------------------------------------------------ */

static void sess_arm(struct session *s, double secs)
{
	ev_timer_stop(s->w->loop, &s->timer);
	ev_timer_set(&s->timer, secs, 0.);
	ev_timer_start(s->w->loop, &s->timer);
}

static double sess_idle_limit(const struct session *s)
{
	double t = s->rt->cfg->idle_timeout;

	if ((s->idling || s->gate == GATE_IDLE) && t < IDLE_MIN_TIMEOUT)
		t = IDLE_MIN_TIMEOUT;
	return t;
}

static void sess_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct session *s = t->data;

	(void)revents;
	switch (s->state) {
	case SESS_PROXYHDR:
		sess_close(s, "no PROXY header in time", NULL);
		break;
	case SESS_HANDSHAKE:
	case SESS_PREAUTH:
	case SESS_STARTTLS:
	case SESS_LOGIN:
		sess_close(s, "pre-login timeout",
		           s->tls_active || s->lcfg->tls != CFG_TLS_IMPLICIT
		               ? "* BYE Disconnected for inactivity."
		               : NULL);
		break;
	case SESS_PROXYING: {
		if (s->logging_out) {
			/* Earlier commands never finished: no reuse. */
			sess_close(s, "logout: backend did not finish", "* BYE Logging out");
			break;
		}
		if (s->client.eof) {
			sess_close(s, "client closed; answers stalled", NULL);
			break;
		}
		double left = s->last_activity + sess_idle_limit(s) - ev_now(loop);
		if (left > 0.5) {
			sess_arm(s, left);
			return;
		}
		sess_close(s, "idle timeout", "* BYE Autologout; idle for too long.");
		break;
	}
	case SESS_CLOSING:
		sess_free_later(s);
		return;
	case SESS_DEAD:
		return;
	}
	sess_run(s);
}

/* ---- closing ----------------------------------------------------------- */

static bool sess_client_usable(const struct session *s)
{
	return !s->client.error && !s->client.eof &&
	       (s->state != SESS_HANDSHAKE && s->state != SESS_STARTTLS &&
	        s->state != SESS_PROXYHDR);
}

/*
 * End the session: say bye (a full line without CRLF) if the client can
 * take it at a clean point, close the backend, flush, then free.
 */
static void sess_close(struct session *s, const char *reason, const char *bye)
{
	if (s->state == SESS_CLOSING || s->state == SESS_DEAD)
		return;
	s->reason = reason;
	if (bye != NULL && sess_client_usable(s)) {
		bool clean = s->state != SESS_PROXYING || imap_tok_at_boundary(&s->btok);
		if (clean) {
			if (s->state == SESS_PROXYING && !buf_is_empty(&s->local))
				buf_put(&s->client.out, buf_head(&s->local), buf_len(&s->local));
			s->state = SESS_CLOSING; /* so that sess_reply writes to client.out */
			sess_reply(s, "%s", bye);
		}
	}
	if (log_enabled(LOG_LVL_INFO))
		log_info("S-%lu %s@%s closed: %s (in=%llu out=%llu)", s->id,
		         s->user[0] ? s->user : "-", s->peer, reason, s->client.bytes_in,
		         s->client.bytes_out);
	s->state = SESS_CLOSING;
	login_free(s);
	backend_destroy_later(s->w, &s->bk);
	s->client.want_input = false;
	/* EOF only ends the client's input: a half-closed socket still takes
	 * the last words (bounded by CLOSE_FLUSH_TIMEOUT). */
	if (s->client.error || buf_is_empty(&s->client.out)) {
		sess_free_later(s);
		return;
	}
	sess_arm(s, CLOSE_FLUSH_TIMEOUT);
}

/* ---- pre-login --------------------------------------------------------- */

static bool sess_plaintext_ok(const struct session *s)
{
	return s->tls_active || s->lcfg->allow_plaintext_auth;
}

/* Answer NO when credentials would cross the network in clear. */
static bool sess_refuse_plaintext(struct session *s, const char *tag)
{
	if (sess_plaintext_ok(s))
		return false;
	sess_reply(s,
	           "%s NO [PRIVACYREQUIRED] Plaintext authentication disallowed "
	           "on non-secure (SSL/TLS) connections.",
	           tag);
	return true;
}

static void sess_greet(struct session *s)
{
	s->state = SESS_PREAUTH;
	s->client.want_input = true;
	sess_reply(s, "* OK [CAPABILITY %s] %s ready.",
	           runtime_preauth_caps(s->lcfg, s->tls_active), IMAPMUX_NAME);
}

static bool arg_is_string(const struct imap_arg *a)
{
	return a->type == IMAP_ARG_ATOM || a->type == IMAP_ARG_QUOTED ||
	       a->type == IMAP_ARG_LITERAL;
}

static void sess_bad(struct session *s, const char *tag, size_t tag_len, const char *why)
{
	s->nbad++;
	STAT_INC(&s->w->stats, preauth_bad);
	if (tag_len > 0)
		sess_reply(s, "%.*s BAD %s", (int)tag_len, tag, why);
	else
		sess_reply(s, "* BAD %s", why);
	if (s->nbad >= PREAUTH_MAX_BAD)
		sess_close(s, "too many invalid commands", "* BYE Too many invalid commands.");
}

static void sess_login_done(void *owner, struct backend *b, enum bk_result r, const char *why);
static void sess_attach(struct session *s, struct backend *b, bool reused);
static void login_pool_got(void *arg, struct backend *b);
static void login_send(struct session *s, struct backend *b);

/*
 * The login pipeline. Credentials taken from LOGIN or AUTHENTICATE go
 * through these steps, each possibly waiting for Redis or the crypt pool,
 * while the client's input is paused (state SESS_LOGIN):
 *
 *   CHECK: failures of this IP and user below auth_fail_limit?  (Redis MGET)
 *   VERIFY (auth = redis): hash from Redis (HGET), crypt(3) off the loop
 *   ROUTE: cache, else GET <prefix>route:USER, else fallback
 *   BACKEND: connect and log in (user's credentials, or master login)
 *
 * A failure ends in login_fail(): count it in Redis, answer after
 * auth_fail_delay (a timer, never a sleep), back to PREAUTH.
 */
enum login_result {
	LOGIN_AUTH_FAILED, /* NO [AUTHENTICATIONFAILED] after the delay */
	LOGIN_AUTHZ_FAILED,
	LOGIN_UNAVAILABLE, /* NO [UNAVAILABLE] at once */
};

struct login {
	uint8_t user[USER_MAX + 1]; /* as imapmux identifies the user (username_case) */
	size_t ulen;
	uint8_t typed[USER_MAX + 1]; /* as the client typed it */
	uint8_t sent[USER_MAX + 1];  /* as the chosen backend is given it (its username_case) */
	bool reserved;               /* holds one attempt of both brute-force budgets */
	ev_timer retry;              /* the budgets are full of attempts in flight: again */
	double retry_wait;
	uint8_t *pass; /* wiped and freed by login_free */
	size_t plen;
	struct rds_req *req;
	struct crypt_job *job;
	struct pool_wait *wait; /* waiting for a backend connection (pool_max) */
	ev_timer delay;
	enum login_result result;
};

static void login_free(struct session *s)
{
	struct login *l = s->login;

	if (l == NULL)
		return;
	/* Abandoned before its answer was decided: the client learns nothing
	 * of the password, so the attempt frees its place. */
	if (l->reserved)
		login_release(s);
	s->login = NULL;
	rds_cancel(l->req);
	if (l->job != NULL)
		crypt_cancel(l->job);
	pool_wait_cancel(l->wait);
	ev_timer_stop(s->w->loop, &l->delay);
	ev_timer_stop(s->w->loop, &l->retry);
	if (l->pass != NULL) {
		explicit_bzero(l->pass, l->plen);
		free(l->pass);
	}
	explicit_bzero(l, sizeof(*l));
	free(l);
}

static void login_answer(struct session *s)
{
	struct login *l = s->login;
	enum login_result r = l->result;

	login_free(s);
	s->state = SESS_PREAUTH;
	s->client.want_input = true;
	if (r == LOGIN_AUTH_FAILED)
		sess_reply(s, "%s NO [AUTHENTICATIONFAILED] Authentication failed.", s->tag);
	else if (r == LOGIN_AUTHZ_FAILED)
		sess_reply(s, "%s NO [AUTHORIZATIONFAILED] Authorization identity not allowed.",
		           s->tag);
	else
		sess_reply(s, "%s NO [UNAVAILABLE] Backend unavailable.", s->tag);
	/* Run from a fresh callback: the caller may be a Redis or timer one. */
	ev_feed_event(s->w->loop, &s->client.wio, EV_WRITE);
}

static void login_delay_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct session *s = t->data;

	(void)loop;
	(void)revents;
	login_answer(s);
}

/* The Redis key of kind for id (bounded: see ident_key). -1 when it cannot
 * be built, which a bounded prefix and user name never cause. */
static int sess_key(struct session *s, const char *kind, const void *id, size_t idlen,
                    char key[KEY_ROOM], size_t *len_r)
{
	if (ident_key(key, KEY_ROOM, rds_prefix(s->w->rds), kind, id, idlen, len_r) < 0) {
		sess_log(s, LOG_LVL_ERROR, "internal: Redis key too long");
		return -1;
	}
	return 0;
}

/* The brute-force keys of this login: failures (counters) and attempts in
 * flight (sorted sets), for the client's address group and for the user. */
struct fail_keys {
	char k[4][KEY_ROOM];
	size_t len[4];
};

static int login_fail_keys(struct session *s, struct fail_keys *fk)
{
	const struct login *l = s->login;

	if (sess_key(s, "authfail:ip:", s->ipkey, strlen(s->ipkey), fk->k[0], &fk->len[0]) < 0 ||
	    sess_key(s, "authfail:user:", l->user, l->ulen, fk->k[1], &fk->len[1]) < 0 ||
	    sess_key(s, "authtry:ip:", s->ipkey, strlen(s->ipkey), fk->k[2], &fk->len[2]) < 0 ||
	    sess_key(s, "authtry:user:", l->user, l->ulen, fk->k[3], &fk->len[3]) < 0)
		return -1;
	return 0;
}

/*
 * The brute-force budgets hold failures *and* attempts in flight: before
 * a password is checked (by imapmux or the backend) the attempt takes a
 * place under both address group and user, atomically and only while
 * failures + attempts in flight stay below the limit, so no more than
 * auth_fail_limit passwords can fail in a window, however many arrive at
 * once and on however many instances share the Redis. A login finding the
 * budget full of failures is refused; one finding it full of attempts
 * still in flight waits and tries again (a busy webmail host is not a
 * brute force). A failure turns its place into a failure; a success, or an
 * answer that says nothing of the password (backend unavailable), frees
 * it. Attempts are entries of a sorted set scored by their deadline (Redis
 * TIME), so those of an instance that died go by themselves.
 *
 *   KEYS: authfail:ip, authfail:user, authtry:ip, authtry:user
 *   reserve ARGV: limit, attempt id, attempt ttl  -> 0 ok, 1|2 locked, 3|4 busy
 *   finish ARGV: attempt id, failed (0|1), window  -> 0
 */
static const char reserve_lua[] =
    "local now = tonumber(redis.call('TIME')[1])\n"
    "local lim = tonumber(ARGV[1])\n"
    "local f = {}\n"
    "for i = 1, 2 do\n"
    "  f[i] = tonumber(redis.call('GET', KEYS[i])) or 0\n"
    "  if f[i] >= lim then return i end\n"
    "end\n"
    "for i = 1, 2 do\n"
    "  redis.call('ZREMRANGEBYSCORE', KEYS[i + 2], '-inf', now)\n"
    "  if f[i] + redis.call('ZCARD', KEYS[i + 2]) >= lim then return i + 2 end\n"
    "end\n"
    "local ttl = tonumber(ARGV[3])\n"
    "for i = 3, 4 do\n"
    "  redis.call('ZADD', KEYS[i], now + ttl, ARGV[2])\n"
    "  redis.call('EXPIRE', KEYS[i], ttl)\n"
    "end\n"
    "return 0\n";

static const char finish_lua[] = "redis.call('ZREM', KEYS[3], ARGV[1])\n"
                                 "redis.call('ZREM', KEYS[4], ARGV[1])\n"
                                 "if ARGV[2] == '1' then\n"
                                 "  for i = 1, 2 do\n"
                                 "    local n = redis.call('INCR', KEYS[i])\n"
                                 "    if n == 1 or redis.call('TTL', KEYS[i]) < 0 then\n"
                                 "      redis.call('EXPIRE', KEYS[i], ARGV[3])\n"
                                 "    end\n"
                                 "  end\n"
                                 "end\n"
                                 "return 0\n";

/* This attempt's member in the sets: unique across instances (a random
 * number of the process, then the session id). */
static uint64_t login_instance;

static void login_instance_init(void)
{
	if (getentropy(&login_instance, sizeof(login_instance)) < 0)
		login_instance = (uint64_t)getpid() ^ ((uint64_t)time(NULL) << 20);
}

static void login_attempt_id(const struct session *s, char id[48])
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;

	(void)pthread_once(&once, login_instance_init);
	snprintf(id, 48, "%016llx:%lu", (unsigned long long)login_instance, s->id);
}

/* How long an attempt may stay in flight before it counts no more: longer
 * than any login can take (waiting for a pooled connection, connecting,
 * the login's own answer, Redis). */
static unsigned login_attempt_ttl(const struct cfg *cfg)
{
	double most = 0;

	for (size_t i = 0; i < cfg->nbackends; i++) {
		const struct cfg_backend *b = &cfg->backends[i];
		double t = b->pool_wait + b->connect_timeout + 2 * b->command_timeout;
		if (t > most)
			most = t;
	}
	return (unsigned)(most + 4 * cfg->redis_timeout + 30);
}

/* Turn this login's attempt into a failure (failed), or free it. A failure
 * with no attempt reserved (Redis was down when the login began) is
 * counted all the same, as well as Redis lets us. */
static void login_finish_attempt(struct session *s, bool failed)
{
	const struct cfg *cfg = s->rt->cfg;
	struct login *l = s->login;
	struct rds *r = s->w->rds;
	struct fail_keys fk;
	char id[48], window[32];

	if (l == NULL || (!l->reserved && !failed) || cfg->auth_fail_limit == 0 || r == NULL)
		return;
	l->reserved = false;
	if (login_fail_keys(s, &fk) < 0)
		return;
	login_attempt_id(s, id);
	snprintf(window, sizeof(window), "%.0f",
	         cfg->auth_fail_window < 1 ? 1.0 : cfg->auth_fail_window);
	const char *argv[10] = {
	    "EVAL", finish_lua,         "4",   fk.k[0], fk.k[1], fk.k[2], fk.k[3],
	    id,     failed ? "1" : "0", window};
	size_t argvlen[10] = {
	    4, sizeof(finish_lua) - 1, 1, fk.len[0], fk.len[1], fk.len[2], fk.len[3], strlen(id),
	    1, strlen(window)};
	(void)rds_send(r, 10, argv, argvlen);
}

static void login_release(struct session *s)
{
	login_finish_attempt(s, false);
}

static void login_count_failure(struct session *s)
{
	login_finish_attempt(s, true);
}

static void login_fail(struct session *s, enum login_result r, bool count, const char *why)
{
	struct login *l = s->login;
	char what[160];

	snprintf(what, sizeof(what), "login failed: %s", why);
	sess_log(s, LOG_LVL_INFO, what);
	if (r == LOGIN_UNAVAILABLE)
		STAT_INC(&s->w->stats, logins_unavailable);
	else
		STAT_INC(&s->w->stats, logins_auth_failed);
	l->result = r;
	l->req = NULL;
	l->job = NULL;
	if (count)
		login_count_failure(s);
	else
		login_release(s);
	if (r != LOGIN_UNAVAILABLE && s->rt->cfg->auth_fail_delay > 0) {
		ev_timer_set(&l->delay, s->rt->cfg->auth_fail_delay, 0.);
		ev_timer_start(s->w->loop, &l->delay);
		return;
	}
	login_answer(s);
}

static bool backend_usable(size_t i, void *arg)
{
	return health_backend_up(arg, i);
}

static const struct cfg_backend *login_fallback(struct session *s)
{
	const struct cfg *cfg = s->rt->cfg;
	struct login *l = s->login;

	switch (cfg->fallback) {
	case CFG_FALLBACK_BACKEND:
		return cfg_backend_find(cfg, cfg->fallback_backend);
	case CFG_FALLBACK_HASH:
		return route_rendezvous_among(cfg, l->user, l->ulen, backend_usable, s->rt);
	case CFG_FALLBACK_DENY:
		break;
	}
	return NULL;
}

static void login_backend(struct session *s, const struct cfg_backend *bc)
{
	const struct cfg *cfg = s->rt->cfg;
	struct login *l = s->login;
	size_t i;

	if (bc == NULL) {
		login_fail(
		    s, cfg->fallback == CFG_FALLBACK_DENY ? LOGIN_AUTH_FAILED : LOGIN_UNAVAILABLE,
		    false,
		    cfg->fallback == CFG_FALLBACK_DENY ? "no route (fallback = deny)"
		                                       : "no backend up");
		return;
	}
	i = runtime_backend_index(s->rt, bc);
	if (!health_backend_up(s->rt, i)) {
		login_fail(s, LOGIN_UNAVAILABLE, false, "routed backend is down");
		return;
	}
	s->bcfg = bc;
	ident_user_norm(l->typed, l->ulen, bc->username_case == CFG_UCASE_FOLD, l->sent);
	if (bc->reuse_ttl > 0) {
		/* With auth = redis the proxy proved the password: any later
		 * proven login of the user may have the session. */
		static const uint8_t proven[] = "\001verified-by-imapmux";
		if (cfg->auth == CFG_AUTH_REDIS)
			reuse_key(bc->name, l->sent, l->ulen, proven, sizeof(proven), s->reuse_key);
		else
			reuse_key(bc->name, l->sent, l->ulen, l->pass, l->plen, s->reuse_key);
		s->reuse_ok = true;
		struct backend *kept = reuse_take(s->w, bc, s->reuse_key);
		if (kept != NULL) {
			sess_attach(s, kept, true);
			return;
		}
	}
	struct pool *pool = pool_of(s->w, s->rt, bc);
	struct backend *b = NULL;
	int pr = pool == NULL ? -1
	                      : pool_acquire(pool, s->id, sess_login_done, s, &b, login_pool_got, s,
	                                     &l->wait);
	if (pr == 1)
		return; /* at pool_max: login_pool_got goes on */
	if (pr < 0) {
		login_fail(s, LOGIN_UNAVAILABLE, false, "cannot connect to the backend");
		return;
	}
	login_send(s, b);
}

/* A backend connection for this login at last (NULL: pool_wait passed). */
static void login_pool_got(void *arg, struct backend *b)
{
	struct session *s = arg;

	s->login->wait = NULL;
	if (b == NULL) {
		login_fail(s, LOGIN_UNAVAILABLE, false, "no backend connection free (pool_max)");
		return;
	}
	login_send(s, b);
}

/* Log in on b, which this session owns now. */
static void login_send(struct session *s, struct backend *b)
{
	const struct cfg *cfg = s->rt->cfg;
	const struct cfg_backend *bc = s->bcfg;
	struct login *l = s->login;
	int r;

	s->bk = b;
	STAT_INC(&s->w->stats, backend_logins);
	if (cfg->auth == CFG_AUTH_REDIS)
		r = backend_login_as(s->bk, (const char *)l->sent, l->ulen, bc->master_user,
		                     strlen(bc->master_user), bc->master_password,
		                     strlen(bc->master_password));
	else
		r = backend_login(s->bk, (const char *)l->sent, l->ulen, (const char *)l->pass,
		                  l->plen);
	if (r < 0) {
		backend_destroy_later(s->w, &s->bk);
		login_fail(s, LOGIN_UNAVAILABLE, false, "out of memory");
		return;
	}
	/* The backend has its own copy now. */
	explicit_bzero(l->pass, l->plen);
	if (log_enabled(LOG_LVL_DEBUG)) {
		char what[128];
		snprintf(what, sizeof(what), "login: trying backend %s", bc->name);
		sess_log(s, LOG_LVL_DEBUG, what);
	}
}

static void login_route_reply(void *arg, const redisReply *rep)
{
	struct session *s = arg;
	struct login *l = s->login;
	const struct cfg *cfg = s->rt->cfg;
	const struct cfg_backend *bc = NULL;

	l->req = NULL;
	if (rep != NULL && rep->type == REDIS_REPLY_STRING) {
		for (size_t i = 0; i < cfg->nbackends; i++) {
			if (strlen(cfg->backends[i].name) == rep->len &&
			    memcmp(cfg->backends[i].name, rep->str, rep->len) == 0)
				bc = &cfg->backends[i];
		}
		if (bc == NULL)
			sess_log(s, LOG_LVL_WARN, "route names an unknown backend: using fallback");
	}
	if (rep != NULL && rep->type != REDIS_REPLY_ERROR && cfg->cache_ttl > 0) {
		double now = ev_now(s->w->loop);
		int val = bc ? (int)runtime_backend_index(s->rt, bc) : -1;
		(void)ttlmap_put(s->w->routes, l->user, l->ulen, val, now + cfg->cache_ttl, now);
	}
	login_backend(s, bc != NULL ? bc : login_fallback(s));
}

static void login_route(struct session *s)
{
	const struct cfg *cfg = s->rt->cfg;
	struct login *l = s->login;
	struct rds *r = s->w->rds;
	char key[KEY_ROOM];
	size_t klen;
	int val;

	if (cfg->lookup != CFG_LOOKUP_REDIS) {
		login_backend(s, login_fallback(s));
		return;
	}
	if (s->w->routes != NULL &&
	    ttlmap_get(s->w->routes, l->user, l->ulen, ev_now(s->w->loop), &val) == 0) {
		login_backend(s, val >= 0 && (size_t)val < cfg->nbackends ? &cfg->backends[val]
		                                                          : login_fallback(s));
		return;
	}
	if (r == NULL) {
		login_backend(s, login_fallback(s));
		return;
	}
	if (sess_key(s, "route:", l->user, l->ulen, key, &klen) < 0) {
		login_backend(s, login_fallback(s));
		return;
	}
	const char *argv[2] = {"GET", key};
	size_t argvlen[2] = {3, klen};
	l->req = rds_command(r, login_route_reply, s, 2, argv, argvlen);
	if (l->req == NULL) /* Redis down: the fallback still works */
		login_backend(s, login_fallback(s));
}

static void login_verified(void *arg, int result)
{
	struct session *s = arg;
	struct login *l = s->login;

	l->job = NULL;
	if (result == 1) {
		login_route(s);
		return;
	}
	login_fail(s, LOGIN_AUTH_FAILED, true,
	           result == 0 ? "wrong password" : "unusable password hash in Redis");
}

/* crypt_verify_dummy's answer: only its time mattered (as long as a wrong password's). */
static void login_unknown(void *arg, int result)
{
	struct session *s = arg;

	(void)result;
	s->login->job = NULL;
	login_fail(s, LOGIN_AUTH_FAILED, true, "unknown user");
}

static void login_hash_reply(void *arg, const redisReply *rep)
{
	struct session *s = arg;
	struct login *l = s->login;
	char hash[512];

	l->req = NULL;
	if (rep == NULL || rep->type == REDIS_REPLY_ERROR) {
		login_fail(s, LOGIN_UNAVAILABLE, false, "Redis unavailable");
		return;
	}
	if (rep->type != REDIS_REPLY_STRING || rep->len == 0 || rep->len >= sizeof(hash)) {
		/* No hash: pay for one all the same, or the answer time tells who exists. */
		l->job = crypt_verify_dummy(s->w->crypt, (const char *)l->pass, l->plen,
		                            login_unknown, s);
		if (l->job == NULL)
			login_fail(s, LOGIN_UNAVAILABLE, false, "password check queue full");
		return;
	}
	memcpy(hash, rep->str, rep->len);
	hash[rep->len] = '\0';
	l->job = crypt_verify(s->w->crypt, (const char *)l->pass, l->plen, hash, login_verified, s);
	explicit_bzero(hash, sizeof(hash));
	if (l->job == NULL)
		login_fail(s, LOGIN_UNAVAILABLE, false, "password check queue full");
}

static void login_verify(struct session *s)
{
	struct login *l = s->login;
	struct rds *r = s->w->rds;
	char key[KEY_ROOM];
	size_t klen;

	if (s->rt->cfg->auth != CFG_AUTH_REDIS) {
		login_route(s);
		return;
	}
	if (r == NULL) {
		login_fail(s, LOGIN_UNAVAILABLE, false, "Redis not set up");
		return;
	}
	if (sess_key(s, "user:", l->user, l->ulen, key, &klen) < 0) {
		login_fail(s, LOGIN_UNAVAILABLE, false, "Redis key too long");
		return;
	}
	const char *argv[3] = {"HGET", key, "password"};
	size_t argvlen[3] = {4, klen, 8};
	l->req = rds_command(r, login_hash_reply, s, 3, argv, argvlen);
	if (l->req == NULL)
		login_fail(s, LOGIN_UNAVAILABLE, false, "Redis unavailable");
}

static void login_check(struct session *s);

static void login_retry_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct session *s = t->data;

	(void)loop;
	(void)revents;
	login_check(s);
}

static void login_check_reply(void *arg, const redisReply *rep)
{
	struct session *s = arg;
	struct login *l = s->login;

	l->req = NULL;
	if (rep != NULL && rep->type == REDIS_REPLY_INTEGER) {
		switch (rep->integer) {
		case 0:
			l->reserved = true;
			break;
		case 1:
		case 2:
			login_fail(s, LOGIN_AUTH_FAILED, false,
			           rep->integer == 1 ? "too many failures from this address"
			                             : "too many failures for this user");
			return;
		default:
			/* The budget is full of attempts still being checked: try
			 * again shortly (25 ms doubling to 400 ms). preauth_timeout
			 * bounds the wait. */
			l->retry_wait = l->retry_wait == 0 ? 0.025 : l->retry_wait * 2;
			if (l->retry_wait > 0.4)
				l->retry_wait = 0.4;
			ev_timer_set(&l->retry, l->retry_wait, 0.);
			ev_timer_start(s->w->loop, &l->retry);
			return;
		}
	} else if (rep != NULL) {
		/* An error (a Redis without Lua, an ACL without EVAL): said once
		 * per login, the limit is not enforced. */
		sess_log(s, LOG_LVL_WARN,
		         rep->type == REDIS_REPLY_ERROR ? "brute-force check failed in Redis (EVAL)"
		                                        : "brute-force check: unexpected reply");
	}
	/* Redis down: the limit cannot be checked; auth = redis fails next. */
	login_verify(s);
}

/* Reserve this attempt under both budgets (reserve_lua), then verify. */
static void login_check(struct session *s)
{
	const struct cfg *cfg = s->rt->cfg;
	struct login *l = s->login;
	struct rds *r = s->w->rds;
	struct fail_keys fk;
	char limit[16], id[48], ttl[16];

	if (cfg->auth_fail_limit == 0 || r == NULL || !rds_up(r) || login_fail_keys(s, &fk) < 0) {
		login_verify(s);
		return;
	}
	snprintf(limit, sizeof(limit), "%u", cfg->auth_fail_limit);
	snprintf(ttl, sizeof(ttl), "%u", login_attempt_ttl(cfg));
	login_attempt_id(s, id);
	const char *argv[10] = {"EVAL",  reserve_lua, "4",   fk.k[0], fk.k[1],
	                        fk.k[2], fk.k[3],     limit, id,      ttl};
	size_t argvlen[10] = {
	    4,         sizeof(reserve_lua) - 1, 1,          fk.len[0],  fk.len[1], fk.len[2],
	    fk.len[3], strlen(limit),           strlen(id), strlen(ttl)};
	l->req = rds_command(r, login_check_reply, s, 10, argv, argvlen);
	if (l->req == NULL)
		login_verify(s);
}

/* True if user contains the master separator of any backend. */
static bool has_master_separator(const struct cfg *cfg, const uint8_t *user, size_t ulen)
{
	for (size_t i = 0; i < cfg->nbackends; i++) {
		const char *sep = cfg->backends[i].master_separator;
		size_t sl = strlen(sep);
		for (size_t j = 0; sl > 0 && j + sl <= ulen; j++) {
			if (memcmp(user + j, sep, sl) == 0)
				return true;
		}
	}
	return false;
}

/* Check the credentials' form and start the login pipeline. */
static void sess_start_login(struct session *s, const uint8_t *user, size_t ulen,
                             const uint8_t *pass, size_t plen)
{
	struct login *l;
	const char *bad = NULL;

	sess_set_user(s, user, ulen);
	if (ulen == 0 || ulen > USER_MAX || plen == 0)
		bad = "empty or over-long user name or password";
	for (size_t i = 0; bad == NULL && i < ulen; i++) {
		if (user[i] < 0x20 || user[i] == 0x7f)
			bad = "control byte in user name";
	}
	for (size_t i = 0; bad == NULL && i < plen; i++) {
		if (pass[i] == '\0' || pass[i] == '\r' || pass[i] == '\n')
			bad = "forbidden byte in password";
	}
	/* Never let a client reach "user*master" logins on a backend. */
	if (bad == NULL && has_master_separator(s->rt->cfg, user, ulen))
		bad = "master-user separator in user name";
	if (bad != NULL) {
		char what[128];
		snprintf(what, sizeof(what), "login refused: %s", bad);
		sess_log(s, LOG_LVL_WARN, what);
		STAT_INC(&s->w->stats, logins_auth_failed);
		sess_reply(s, "%s NO [AUTHENTICATIONFAILED] Authentication failed.", s->tag);
		return;
	}
	l = calloc(1, sizeof(*l));
	if (l == NULL || (l->pass = malloc(plen)) == NULL) {
		free(l);
		sess_reply(s, "%s NO [UNAVAILABLE] Out of memory.", s->tag);
		return;
	}
	/* Normalised once: every count, key, match and log line below sees
	 * one name for one user. */
	memcpy(l->typed, user, ulen);
	ident_user_norm(user, ulen, s->rt->cfg->username_case == CFG_UCASE_FOLD, l->user);
	l->ulen = ulen;
	memcpy(s->uname, l->user, ulen);
	s->uname_len = ulen;
	sess_set_user(s, l->user, ulen);
	memcpy(l->pass, pass, plen);
	l->plen = plen;
	ev_init(&l->delay, login_delay_cb);
	l->delay.data = s;
	ev_init(&l->retry, login_retry_cb);
	l->retry.data = s;
	s->login = l;
	s->state = SESS_LOGIN;
	s->client.want_input = false;
	login_check(s);
}

/* SASL PLAIN (RFC 4616): [authzid] NUL authcid NUL passwd, base64. */
static void sess_sasl_plain(struct session *s, const uint8_t *b64, size_t len)
{
	uint8_t raw[1024];
	size_t rawlen = 0;
	const uint8_t *n1, *n2;

	if (len == 1 && b64[0] == '=')
		len = 0;
	if (b64_decode((const char *)b64, len, raw, sizeof(raw), &rawlen) < 0) {
		sess_bad(s, s->tag, strlen(s->tag), "Invalid base64 data in AUTHENTICATE.");
		return;
	}
	n1 = memchr(raw, '\0', rawlen);
	n2 = n1 ? memchr(n1 + 1, '\0', rawlen - (size_t)(n1 + 1 - raw)) : NULL;
	if (n1 == NULL || n2 == NULL) {
		sess_reply(s, "%s NO [AUTHENTICATIONFAILED] Authentication failed.", s->tag);
		goto out;
	}
	const uint8_t *authz = raw, *authc = n1 + 1, *pass = n2 + 1;
	size_t authz_len = (size_t)(n1 - raw), authc_len = (size_t)(n2 - authc);
	size_t pass_len = rawlen - (size_t)(pass - raw);
	if (authz_len > 0 && (authz_len != authc_len || memcmp(authz, authc, authc_len) != 0)) {
		sess_set_user(s, authc, authc_len);
		sess_log(s, LOG_LVL_WARN, "login refused: SASL authorization identity differs");
		sess_reply(s, "%s NO [AUTHORIZATIONFAILED] Authorization identity not allowed.",
		           s->tag);
		goto out;
	}
	sess_start_login(s, authc, authc_len, pass, pass_len);
out:
	explicit_bzero(raw, sizeof(raw));
}

static bool id_args_ok(const struct imap_cmd *c)
{
	size_t i, pairs = 0;

	if (c->nargs == 1 && c->args[0].type == IMAP_ARG_ATOM &&
	    imap_word_eq(c->args[0].data, c->args[0].len, "NIL"))
		return true;
	if (c->nargs < 2 || c->args[0].type != IMAP_ARG_LIST_OPEN ||
	    c->args[c->nargs - 1].type != IMAP_ARG_LIST_CLOSE)
		return false;
	for (i = 1; i + 1 < c->nargs; i++) {
		if (c->args[i].type == IMAP_ARG_LIST_OPEN || c->args[i].type == IMAP_ARG_LIST_CLOSE)
			return false;
		pairs++;
	}
	return pairs % 2 == 0 && pairs <= 60;
}

static void sess_cmd_starttls(struct session *s, const struct imap_cmd *c)
{
	const char *tag = s->tag;

	if (c->nargs != 0) {
		sess_bad(s, tag, strlen(tag), "STARTTLS takes no arguments.");
		return;
	}
	if (s->lcfg->tls != CFG_TLS_STARTTLS || s->tls_active) {
		sess_bad(s, tag, strlen(tag),
		         s->tls_active ? "TLS is already active." : "STARTTLS is not available.");
		return;
	}
	sess_reply(s, "%s OK Begin TLS negotiation now.", tag);
	/* Whatever the client sent after STARTTLS was sent in the clear and
	 * must not be taken as coming over TLS (plaintext command injection). */
	if (!buf_is_empty(&s->client.in)) {
		char what[96];
		snprintf(what, sizeof(what), "discarded %zu bytes pipelined after STARTTLS",
		         buf_len(&s->client.in));
		sess_log(s, LOG_LVL_WARN, what);
		buf_consume(&s->client.in, buf_len(&s->client.in));
	}
	s->state = SESS_STARTTLS;
	s->client.want_input = false;
}

/* Run one complete pre-login command from s->cmd. */
static void sess_preauth_command(struct session *s)
{
	struct imap_cmd c;
	const char *err = NULL;
	uint8_t *p = s->cmd.data + s->cmd.start;
	size_t len = buf_len(&s->cmd);

	if (imap_cmd_parse(p, len, &c, &err) < 0) {
		sess_bad(s, (const char *)c.tag, c.tag_len, err ? err : "Invalid command.");
		return;
	}
	if (c.tag_len > TAG_MAX) {
		sess_bad(s, NULL, 0, "Tag too long.");
		return;
	}
	sess_set_tag(s, c.tag, c.tag_len);
	const char *tag = s->tag;
	const uint8_t *name = c.name;
	size_t nlen = c.name_len;

	if (imap_word_eq(name, nlen, "CAPABILITY") && c.nargs == 0) {
		sess_reply(s, "* CAPABILITY %s", runtime_preauth_caps(s->lcfg, s->tls_active));
		sess_reply(
		    s, "%s OK Pre-login capabilities listed, post-login capabilities have more.",
		    tag);
	} else if (imap_word_eq(name, nlen, "NOOP") && c.nargs == 0) {
		sess_reply(s, "%s OK NOOP completed.", tag);
	} else if (imap_word_eq(name, nlen, "LOGOUT") && c.nargs == 0) {
		sess_reply(s, "* BYE Logging out");
		sess_reply(s, "%s OK Logout completed.", tag);
		sess_close(s, "logout", NULL);
	} else if (imap_word_eq(name, nlen, "ID")) {
		if (!id_args_ok(&c)) {
			sess_bad(s, tag, strlen(tag), "Invalid ID arguments.");
			return;
		}
		sess_reply(s, "* ID (\"name\" \"%s\" \"version\" \"%s\")", IMAPMUX_NAME,
		           IMAPMUX_VERSION);
		sess_reply(s, "%s OK ID completed.", tag);
	} else if (imap_word_eq(name, nlen, "STARTTLS")) {
		sess_cmd_starttls(s, &c);
	} else if (imap_word_eq(name, nlen, "LOGIN")) {
		if (c.nargs != 2 || !arg_is_string(&c.args[0]) || !arg_is_string(&c.args[1])) {
			sess_bad(s, tag, strlen(tag), "Invalid arguments.");
			return;
		}
		if (sess_refuse_plaintext(s, tag))
			return;
		sess_start_login(s, c.args[0].data, c.args[0].len, c.args[1].data, c.args[1].len);
	} else if (imap_word_eq(name, nlen, "AUTHENTICATE")) {
		if (c.nargs < 1 || c.nargs > 2 || c.args[0].type != IMAP_ARG_ATOM ||
		    (c.nargs == 2 && c.args[1].type != IMAP_ARG_ATOM)) {
			sess_bad(s, tag, strlen(tag), "Invalid arguments.");
			return;
		}
		if (sess_refuse_plaintext(s, tag))
			return;
		if (!imap_word_eq(c.args[0].data, c.args[0].len, "PLAIN")) {
			sess_reply(s, "%s NO Unsupported authentication mechanism.", tag);
			return;
		}
		if (c.nargs == 2) {
			sess_sasl_plain(s, c.args[1].data, c.args[1].len);
		} else {
			sess_reply(s, "+ ");
			s->sasl_wait = true;
		}
	} else {
		sess_bad(s, tag, strlen(tag), "Unknown command or not valid before login.");
	}
}

/* The client's answer to "+ " in AUTHENTICATE: one line, base64 or "*". */
static void sess_sasl_response(struct session *s, const uint8_t *line, size_t len)
{
	s->sasl_wait = false;
	while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
		len--;
	if (len == 1 && line[0] == '*') {
		sess_reply(s, "%s BAD Authentication aborted by client.", s->tag);
		return;
	}
	sess_sasl_plain(s, line, len);
}

static void sess_cmd_reset(struct session *s)
{
	if (s->cmd.data != NULL)
		explicit_bzero(s->cmd.data, s->cmd.cap);
	buf_consume(&s->cmd, buf_len(&s->cmd));
}

/* Take complete pre-login commands from client.in. Returns 1 on progress. */
static int sess_preauth_input(struct session *s)
{
	int progress = 0;

	while (s->state == SESS_PREAUTH && !buf_is_empty(&s->client.in) &&
	       buf_room(&s->client.out) >= PREAUTH_ROOM) {
		struct imap_tok_unit u;
		const uint8_t *p = buf_head(&s->client.in);
		int r = imap_tok_next(&s->ctok, p, buf_len(&s->client.in), &u);

		if (r == -2)
			break;
		if (r < 0) {
			const char *e = imap_tok_error(&s->ctok);
			char bye[128];
			snprintf(bye, sizeof(bye), "* BYE %s.", e ? e : "Protocol error");
			sess_close(s, e ? e : "protocol error", bye);
			return 1;
		}
		progress = 1;
		if (s->sasl_wait) {
			if (u.type != IMAP_TOK_LINE || !u.last) {
				sess_close(s, "bad AUTHENTICATE response",
				           "* BYE Invalid AUTHENTICATE response.");
				return 1;
			}
			uint8_t line[PREAUTH_MAX_LINE];
			memcpy(line, p, u.len);
			imap_tok_consume(&s->ctok, &u, u.len);
			buf_consume(&s->client.in, u.len);
			sess_sasl_response(s, line, u.len);
			explicit_bzero(line, u.len);
			continue;
		}
		if (buf_append(&s->cmd, p, u.len) < 0) {
			sess_close(s, "command too long", "* BYE Command too long.");
			return 1;
		}
		imap_tok_consume(&s->ctok, &u, u.len);
		buf_consume(&s->client.in, u.len);
		if (u.type == IMAP_TOK_LINE && u.has_literal && !u.lit_nonsync && u.literal > 0)
			sess_reply(s, "+ Ready for literal data.");
		if (u.type == IMAP_TOK_LINE && u.last) {
			sess_preauth_command(s);
			sess_cmd_reset(s);
		}
	}
	return progress;
}

/* The TLS handshake finished: greet (implicit TLS) or go on (STARTTLS). */
static void sess_tls_up(struct session *s)
{
	s->tls_active = true;
	if (s->starttls_done) {
		s->state = SESS_PREAUTH;
		s->client.want_input = true;
	} else {
		sess_greet(s);
	}
}

/* ---- login result ------------------------------------------------------ */

static void sess_backend_io(struct conn *c, void *arg);

/* Logged in (by a fresh login or a kept session): proxy from now on. */
static void sess_attach(struct session *s, struct backend *b, bool reused)
{
	char caps[CAPS_MAX + 1];
	char what[160];

	login_release(s);
	login_free(s);
	s->bk = b;
	if (caps_filter(b->caps, strlen(b->caps), caps, sizeof(caps)) < 0)
		caps[0] = '\0';
	backend_attach(b, sess_backend_io, s);
	sess_reply(s, "%s OK [CAPABILITY %s] Logged in", s->tag, caps);
	s->state = SESS_PROXYING;
	STAT_INC(&s->w->stats, logins_ok);
	if (reused)
		STAT_INC(&s->w->stats, sessions_reused);
	STAT_INC(&s->w->stats, sessions_proxying);
	s->counted_proxying = true;
	sess_cmd_reset(s);
	buf_free(&s->cmd);

	struct imap_tok_limits lim = {.frag_size = STREAM_FRAG};
	struct imap_tok_limits clim = {.frag_size = STREAM_FRAG,
	                               .max_line = s->rt->cfg->max_line_length};
	imap_tok_init(&s->ctok, IMAP_TOK_COMMANDS, &clim);
	imap_tok_init(&s->btok, IMAP_TOK_RESPONSES, &lim);
	buf_init(&s->local, LOCAL_SIZE);
	s->client.want_input = true;
	b->conn.want_input = true;
	s->last_activity = ev_now(s->w->loop);
	sess_arm(s, sess_idle_limit(s));
	snprintf(what, sizeof(what), "login ok on backend %s%s", s->bcfg->name,
	         reused ? " (kept session reused)" : "");
	sess_log(s, LOG_LVL_INFO, what);
	/* Run from a fresh callback: this may be the backend's. */
	ev_feed_event(s->w->loop, &s->client.wio, EV_WRITE);
}

static void sess_login_done(void *owner, struct backend *b, enum bk_result r, const char *why)
{
	struct session *s = owner;
	char what[160];

	if (s->state != SESS_LOGIN || s->login == NULL)
		return;
	if (r != BK_RES_OK) {
		bool master = s->rt->cfg->auth == CFG_AUTH_REDIS;
		snprintf(what, sizeof(what), "backend %s: %s%s", s->bcfg->name, why,
		         master && r == BK_RES_AUTH_FAILED ? " (master login refused: check "
		                                             "master_user/master_password)"
		                                           : "");
		backend_destroy_later(s->w, &s->bk);
		/* With auth = redis the password was already right: a refused
		 * master login is the operator's problem, not the user's. */
		if (r == BK_RES_AUTH_FAILED && !master)
			login_fail(s, LOGIN_AUTH_FAILED, true, what);
		else
			login_fail(s, LOGIN_UNAVAILABLE, false, what);
		return;
	}
	sess_attach(s, b, false);
}

/* ---- proxying ---------------------------------------------------------- */

/* May this session's backend be kept when its client logs out? */
static bool sess_can_keep(const struct session *s)
{
	const char *caps = s->bk->caps;

	return s->reuse_ok && !s->tainted && s->gate == GATE_NONE && !s->skip_cmd && !s->idling &&
	       !s->draining && !s->backend_gone && !s->backend_bye && s->bcfg->reuse_ttl > 0 &&
	       (!s->selected || caps_has(caps, strlen(caps), "UNSELECT"));
}

/* May this session's backend go back to the shared pool through
 * UNAUTHENTICATE (RFC 8437) when its client logs out? The backend then
 * drops all of the user's state, ENABLEd extensions included. */
static bool sess_can_unauth(const struct session *s)
{
	const char *caps = s->bk->caps;

	return s->bcfg->unauthenticate && s->bk->pool != NULL && s->gate == GATE_NONE &&
	       !s->skip_cmd && !s->idling && !s->draining && !s->backend_gone && !s->backend_bye &&
	       caps_has(caps, strlen(caps), "UNAUTHENTICATE") &&
	       (!s->selected || caps_has(caps, strlen(caps), "UNSELECT"));
}

/* A tag the proxy can track and echo, as RFC 3501 defines one: ASTRING-CHARs
 * but "+", at most TAG_MAX bytes. A backend answers a bad tag untagged,
 * which no in-flight count could follow: such a line is never forwarded. */
static bool tag_ok(const uint8_t *t, size_t n)
{
	if (n == 0 || n > TAG_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (t[i] <= 0x20 || t[i] >= 0x7f || strchr("(){%*\"\\+", t[i]) != NULL)
			return false;
	}
	return true;
}

/* A command name: ATOM-CHARs only, so that the backend cannot read a
 * different name out of it than the proxy does. */
static bool name_ok(const uint8_t *w, size_t n)
{
	if (n == 0)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (w[i] <= 0x20 || w[i] >= 0x7f || strchr("(){%*\"\\]", w[i]) != NULL)
			return false;
	}
	return true;
}

/* Commands the proxy answers itself after login and never forwards.
 * COMPRESS: the proxy parses both streams. UNAUTHENTICATE, LOGIN,
 * AUTHENTICATE: the client is logged in through the proxy, never to the
 * backend on its own terms; it may not step back to the login prompt or
 * log in as another user past routing, auth checks and rate limits.
 * STARTTLS: TLS toward the client is the proxy's. */
static const char *sess_refusal(const struct imap_head *h)
{
	if (imap_word_eq(h->w1, h->w1_len, "COMPRESS"))
		return "NO [CANNOT] COMPRESS is not available through this proxy.";
	if (imap_word_eq(h->w1, h->w1_len, "UNAUTHENTICATE"))
		return "BAD Unknown command.";
	if (imap_word_eq(h->w1, h->w1_len, "LOGIN") ||
	    imap_word_eq(h->w1, h->w1_len, "AUTHENTICATE"))
		return "BAD Already logged in.";
	if (imap_word_eq(h->w1, h->w1_len, "STARTTLS"))
		return "BAD STARTTLS is not valid in this state.";
	return NULL;
}

/* Does word occur in p[0..len), ASCII case-insensitively? */
static bool line_has_word(const uint8_t *p, size_t len, const char *word)
{
	size_t wl = strlen(word);

	for (size_t i = 0; i + wl <= len; i++) {
		if (imap_word_eq(p + i, wl, word))
			return true;
	}
	return false;
}

static bool has_taint_word(const uint8_t *p, size_t len)
{
	/* CONDSTORE switched on without ENABLE (RFC 7162 3.1) stays on for
	 * the connection: never hand it on. */
	return line_has_word(p, len, "CONDSTORE") || line_has_word(p, len, "MODSEQ") ||
	       line_has_word(p, len, "CHANGEDSINCE");
}

/* Look for the tainting words in every line part of a command (not in its
 * literals), also across the seams between parts and fragments. */
static void sess_scan_taint(struct session *s, const uint8_t *p, size_t len, bool first)
{
	uint8_t seam[2 * TAINT_CARRY];
	size_t k = len < TAINT_CARRY ? len : TAINT_CARRY;

	if (first)
		s->carry_len = 0;
	memcpy(seam, s->carry, s->carry_len);
	memcpy(seam + s->carry_len, p, k);
	if (has_taint_word(seam, s->carry_len + k) || has_taint_word(p, len))
		s->tainted = true;
	/* The new carry: the last TAINT_CARRY bytes of carry + p. */
	size_t total = s->carry_len + k;
	if (len > TAINT_CARRY) {
		memcpy(s->carry, p + len - TAINT_CARRY, TAINT_CARRY);
		s->carry_len = TAINT_CARRY;
	} else {
		size_t keep = total < TAINT_CARRY ? total : TAINT_CARRY;
		memmove(s->carry, seam + total - keep, keep);
		s->carry_len = keep;
	}
}

/* Drop one unit of a command the backend will not see (skip_cmd). The
 * command ends at its last line part, or at a synchronizing literal: the
 * client waits for a "+" that never comes, having had its answer. */
static void sess_skip_unit(struct session *s, const struct imap_tok_unit *u)
{
	imap_tok_consume(&s->ctok, u, u->len);
	buf_consume(&s->client.in, u->len);
	if (u->type != IMAP_TOK_LINE)
		return;
	if (u->has_literal && !u->lit_nonsync) {
		imap_tok_cancel_literal(&s->ctok);
		s->skip_cmd = false;
	} else if (!u->has_literal && u->last) {
		s->skip_cmd = false;
	}
}

/*
 * Client to backend. Returns 1 on progress.
 *
 * Every command's first line part shows its tag and name whole (else it is
 * refused), and every line part is looked at, so nothing the backend runs
 * escapes the proxy's view. A literal is forwarded only once the backend
 * has asked for it: a backend that refuses a command never reads its
 * literal, and would take the bytes as commands. So a line announcing a
 * literal waits until it is the only command in flight, {n+} goes on as
 * {n}, and the client's input is held (gate) until the backend's "+" or
 * its tagged answer; IDLE likewise, until "+" or a refusal says whether the
 * next line is DONE.
 */
static int sess_pump_c2b(struct session *s)
{
	struct conn *b = &s->bk->conn;
	int progress = 0;

	if (s->logging_out)
		return 0;

	while (!buf_is_empty(&s->client.in) && s->gate == GATE_NONE) {
		struct imap_tok_unit u;
		const uint8_t *p = buf_head(&s->client.in);
		int r = imap_tok_next(&s->ctok, p, buf_len(&s->client.in), &u);

		if (r == -2)
			break;
		if (r < 0) {
			const char *e = imap_tok_error(&s->ctok);
			if (e != NULL && strcmp(e, "line too long") == 0) {
				char why[96];
				STAT_INC(&s->w->stats, line_too_long);
				snprintf(why, sizeof(why), "command line over max_line_length (%u)",
				         s->rt->cfg->max_line_length);
				sess_close(s, why, "* BYE Command line too long.");
			} else {
				sess_close(s, e, "* BYE Protocol error.");
			}
			return 1;
		}
		size_t n = u.len;
		if (s->skip_cmd) {
			sess_skip_unit(s, &u);
			progress = 1;
			continue;
		}
		if (u.type == IMAP_TOK_LITERAL) {
			if (n > buf_room(&b->out))
				n = buf_room(&b->out);
			if (n == 0)
				break;
			buf_put(&b->out, p, n);
			imap_tok_consume(&s->ctok, &u, n);
			buf_consume(&s->client.in, n);
			progress = 1;
			continue;
		}
		bool announces = u.type == IMAP_TOK_LINE && u.has_literal;
		bool idle = false;
		if (u.first && s->idling) {
			/* The line that ends IDLE. Anything but a short plain line
			 * (a literal, an endless line) is not passed on: the proxy
			 * ends IDLE with its own DONE and drops the line. */
			if (buf_room(&b->out) < (n > 6 ? n : 6))
				break;
			s->idling = false;
			if (u.type != IMAP_TOK_LINE || !u.last || n > 64) {
				buf_put(&b->out, "DONE\r\n", 6);
				s->skip_cmd = true;
				sess_skip_unit(s, &u);
				progress = 1;
				continue;
			}
		} else if (u.first) {
			struct imap_head h;
			const char *refuse = NULL;
			bool untagged = false;
			if (imap_head_parse(p, u.len, &h) < 0 || !tag_ok(h.tag, h.tag_len)) {
				refuse =
				    h.tag_len > TAG_MAX ? "BAD Tag too long." : "BAD Invalid tag.";
				untagged = true;
			} else if (!name_ok(h.w1, h.w1_len) ||
			           (u.type == IMAP_TOK_FRAGMENT && h.w1 + h.w1_len == p + u.len)) {
				refuse = "BAD Invalid command name.";
			} else {
				refuse = sess_refusal(&h);
			}
			if (refuse != NULL) {
				if (buf_room(&s->local) < REPLY_ROOM / 2)
					break;
				if (untagged)
					sess_reply(s, "* %s", refuse);
				else
					sess_reply(s, "%.*s %s", (int)h.tag_len, h.tag, refuse);
				s->skip_cmd = true;
				sess_skip_unit(s, &u);
				progress = 1;
				continue;
			}
			idle = imap_word_eq(h.w1, h.w1_len, "IDLE");
			/* Wait to be the only command in flight (see above). */
			if ((announces || idle) && s->inflight > 0)
				break;
			if (buf_room(&b->out) < n)
				break;
			if (imap_word_eq(h.w1, h.w1_len, "LOGOUT") && u.last &&
			    (sess_can_keep(s) || sess_can_unauth(s))) {
				/* Answered by the proxy once earlier commands are
				 * done; the backend session is kept (reuse.c). */
				memcpy(s->logout_tag, h.tag, h.tag_len);
				s->logout_tag[h.tag_len] = '\0';
				s->logging_out = true;
				s->client.want_input = false;
				imap_tok_consume(&s->ctok, &u, u.len);
				buf_consume(&s->client.in, u.len);
				/* Nothing after LOGOUT is ever answered. */
				buf_consume(&s->client.in, buf_len(&s->client.in));
				sess_arm(s, s->bcfg->command_timeout);
				return 1;
			}
			bool opens = imap_word_eq(h.w1, h.w1_len, "SELECT") ||
			             imap_word_eq(h.w1, h.w1_len, "EXAMINE");
			if (opens || imap_word_eq(h.w1, h.w1_len, "CLOSE") ||
			    imap_word_eq(h.w1, h.w1_len, "UNSELECT")) {
				/* Until its answer a mailbox may be selected. */
				memcpy(s->sel_tag, h.tag, h.tag_len);
				s->sel_tag[h.tag_len] = '\0';
				s->sel_opens = opens;
				s->selected = true;
			}
			if (imap_word_eq(h.w1, h.w1_len, "ENABLE") ||
			    imap_word_eq(h.w1, h.w1_len, "NOTIFY") ||
			    imap_word_eq(h.w1, h.w1_len, "LANGUAGE"))
				s->tainted = true;
			if (idle) {
				memcpy(s->idle_tag, h.tag, h.tag_len);
				s->idle_tag[h.tag_len] = '\0';
			}
			s->inflight++;
		} else {
			if (announces && s->inflight > 1)
				break;
			if (buf_room(&b->out) < n)
				break;
		}
		sess_scan_taint(s, p, n, u.first);
		if (announces && u.lit_nonsync) {
			/* "{n+}\r\n" or "{n+}\n": send it without the "+". */
			size_t plus = n - (p[n - 2] == '\r' ? 4 : 3);
			buf_put(&b->out, p, plus);
			buf_put(&b->out, p + plus + 1, n - plus - 1);
			s->gate = GATE_LITERAL_OWN;
		} else {
			buf_put(&b->out, p, n);
			if (announces)
				s->gate = GATE_LITERAL;
			else if (idle && u.last)
				s->gate = GATE_IDLE;
		}
		imap_tok_consume(&s->ctok, &u, n);
		buf_consume(&s->client.in, n);
		progress = 1;
	}
	if (progress)
		s->last_activity = ev_now(s->w->loop);
	return progress;
}

/* Where the capability list of response line p[0..len) is, if it has one:
 * a "* CAPABILITY" response, or a "[CAPABILITY ...]" code in a status one. */
static bool caps_span(const uint8_t *p, size_t len, const struct imap_head *h,
                      const uint8_t **start_r, const uint8_t **end_r)
{
	static const char key[] = "[CAPABILITY ";
	size_t klen = sizeof(key) - 1;

	(void)p;
	(void)len;
	if (imap_word_eq(h->w1, h->w1_len, "CAPABILITY") && h->tag_len == 1 && h->tag[0] == '*') {
		*start_r = h->rest;
		*end_r = h->rest + h->rest_len;
		return true;
	}
	if (h->rest_len <= klen || !imap_word_eq(h->rest, klen, key))
		return false;
	*start_r = h->rest + klen;
	*end_r = memchr(*start_r, ']', h->rest_len - klen);
	if (*end_r == NULL) /* the code goes on past these bytes */
		*end_r = h->rest + h->rest_len;
	return true;
}

/* Rewrite the capability list of a whole response line so the client
 * never sees what the proxy does not carry. out needs len + 1 bytes (the
 * filtered line is never longer). Returns the new length, or 0 when the
 * line needs no change. */
static size_t sess_filter_caps_line(const uint8_t *p, size_t len, char *out, size_t outcap)
{
	struct imap_head h;
	const uint8_t *start, *end;

	if (outcap < len + 1 || imap_head_parse(p, len, &h) < 0 ||
	    !caps_span(p, len, &h, &start, &end))
		return 0;
	size_t prefix = (size_t)(start - p), caplen = (size_t)(end - start);
	size_t tail = len - (size_t)(end - p);
	memcpy(out, p, prefix);
	long n = caps_filter((const char *)start, caplen, out + prefix, outcap - prefix);
	if (n < 0 || ((size_t)n == caplen && memcmp(out + prefix, start, caplen) == 0))
		return 0;
	memcpy(out + prefix + (size_t)n, end, tail);
	return prefix + (size_t)n + tail;
}

/* Inspect the first unit of a response. Returns true when the response
 * is not for the client (the "+" the proxy asked for itself). */
static bool sess_track_response(struct session *s, const struct imap_head *h)
{
	bool untagged = h->tag_len == 1 && h->tag[0] == '*';
	bool cont = h->tag_len == 1 && h->tag[0] == '+';

	if (untagged) {
		if (imap_word_eq(h->w1, h->w1_len, "BYE"))
			s->backend_bye = true;
		return false;
	}
	if (cont) {
		enum sess_gate g = s->gate;
		s->gate = GATE_NONE;
		if (g == GATE_IDLE)
			s->idling = true;
		return g == GATE_LITERAL_OWN;
	}
	if (s->inflight > 0)
		s->inflight--;
	/* A tagged answer while waiting for "+": the command was refused (it
	 * is the only one in flight), and its literal never goes to the
	 * backend. A {n} the client held back: its next bytes are a new
	 * command. A {n+} it sent already: drop the rest of that command. */
	if (s->gate == GATE_LITERAL)
		imap_tok_cancel_literal(&s->ctok);
	else if (s->gate == GATE_LITERAL_OWN)
		s->skip_cmd = true;
	s->gate = GATE_NONE;
	if (s->sel_tag[0] != '\0' && strlen(s->sel_tag) == h->tag_len &&
	    memcmp(s->sel_tag, h->tag, h->tag_len) == 0) {
		/* SELECT/EXAMINE: selected iff OK (a failed one leaves none
		 * selected, RFC 3501 6.3.1); CLOSE/UNSELECT OK: none. */
		bool ok = imap_word_eq(h->w1, h->w1_len, "OK");
		s->selected = s->sel_opens ? ok : !ok;
		s->sel_tag[0] = '\0';
	}
	if (s->idling && strlen(s->idle_tag) == h->tag_len &&
	    memcmp(s->idle_tag, h->tag, h->tag_len) == 0)
		s->idling = false;
	return false;
}

/* Backend to client. Returns 1 on progress. */
static int sess_pump_b2c(struct session *s)
{
	struct conn *b = &s->bk->conn;
	struct conn *c = &s->client;
	int progress = 0;

	for (;;) {
		if (!buf_is_empty(&s->local) && imap_tok_at_boundary(&s->btok)) {
			if (buf_room(&c->out) < buf_len(&s->local))
				break;
			buf_put(&c->out, buf_head(&s->local), buf_len(&s->local));
			buf_consume(&s->local, buf_len(&s->local));
			progress = 1;
		}
		if (buf_is_empty(&b->in))
			break;
		struct imap_tok_unit u;
		const uint8_t *p = buf_head(&b->in);
		int r = imap_tok_next(&s->btok, p, buf_len(&b->in), &u);
		if (r == -2)
			break;
		if (r < 0) {
			sess_close(s, "backend protocol error",
			           "* BYE [UNAVAILABLE] Backend protocol error.");
			return 1;
		}
		size_t n = u.len;
		if (u.type == IMAP_TOK_LITERAL) {
			if (n > buf_room(&c->out))
				n = buf_room(&c->out);
			if (n == 0)
				break;
			buf_put(&c->out, p, n);
		} else if (s->bskip) {
			/* The rest of a line that is not for the client. */
			if (u.type == IMAP_TOK_LINE && u.last)
				s->bskip = false;
		} else if (s->capline_on) {
			/* A capability response longer than one unit: assembled
			 * whole (bounded), filtered, then passed on. */
			if (u.type == IMAP_TOK_LINE && u.has_literal) {
				sess_close(s,
				           "backend protocol error (literal in a capability list)",
				           NULL);
				return 1;
			}
			if (buf_len(&s->capline) + n > CAPLINE_MAX) {
				sess_close(s, "backend capability response over the maximum", NULL);
				return 1;
			}
			if (u.type == IMAP_TOK_LINE && buf_room(&c->out) < buf_len(&s->capline) + n)
				break;
			buf_put(&s->capline, p, n);
			if (u.type == IMAP_TOK_LINE) {
				char line[CAPLINE_MAX + 1];
				size_t len = buf_len(&s->capline);
				size_t nl = sess_filter_caps_line(buf_head(&s->capline), len, line,
				                                  sizeof(line));
				buf_put(&c->out,
				        nl > 0 ? (const uint8_t *)line : buf_head(&s->capline),
				        nl > 0 ? nl : len);
				buf_free(&s->capline);
				s->capline_on = false;
			}
		} else {
			char line[CAPLINE_MAX + 1];
			size_t nl = 0;
			if (buf_room(&c->out) < n + 2048)
				break;
			if (u.first) {
				struct imap_head h;
				const uint8_t *cs, *ce;
				if (s->resetting && u.type == IMAP_TOK_LINE && u.last &&
				    imap_head_parse(p, u.len, &h) == 0 &&
				    imap_word_eq(h.tag, h.tag_len, "R")) {
					/* The proxy's own UNSELECT: not for the client. */
					s->resetting = false;
					s->reset_failed = !imap_word_eq(h.w1, h.w1_len, "OK");
					imap_tok_consume(&s->btok, &u, n);
					buf_consume(&b->in, n);
					progress = 1;
					continue;
				}
				if (imap_head_parse(p, u.len, &h) == 0) {
					if (sess_track_response(s, &h)) {
						/* The "+" for a literal the proxy made synchronizing. */
						s->bskip = !(u.type == IMAP_TOK_LINE && u.last);
						imap_tok_consume(&s->btok, &u, n);
						buf_consume(&b->in, n);
						progress = 1;
						continue;
					}
					if (caps_span(p, u.len, &h, &cs, &ce)) {
						if (u.type == IMAP_TOK_LINE) {
							nl = sess_filter_caps_line(p, u.len, line,
							                           sizeof(line));
						} else {
							buf_init(&s->capline, CAPLINE_MAX);
							buf_put(&s->capline, p, n);
							s->capline_on = true;
							imap_tok_consume(&s->btok, &u, n);
							buf_consume(&b->in, n);
							progress = 1;
							continue;
						}
					}
				}
			}
			if (nl > 0)
				buf_put(&c->out, line, nl);
			else
				buf_put(&c->out, p, n);
		}
		imap_tok_consume(&s->btok, &u, n);
		buf_consume(&b->in, n);
		progress = 1;
	}
	return progress;
}

/* The LOGOUT the proxy took: every earlier command is answered. Answer it,
 * hand the backend connection back to the pool (UNAUTHENTICATE) or the
 * session to the reuse cache, close the client. */
static void sess_finish_logout(struct session *s)
{
	struct backend *b = s->bk;
	bool unauth = sess_can_unauth(s);

	if (!unauth && s->selected && !s->reset_sent) {
		/* Reset first, answer after: the client's next login must find
		 * the session ready to take. */
		s->reset_sent = true;
		if (buf_append(&b->conn.out, "R UNSELECT\r\n", 12) == 0) {
			s->resetting = true;
			return;
		}
		s->reset_failed = true;
	}
	if (s->resetting)
		return;
	s->logging_out = false;
	sess_reply(s, "* BYE Logging out");
	sess_reply(s, "%s OK Logout completed.", s->logout_tag);
	/* Move the replies out of `local` before the state changes. */
	buf_put(&s->client.out, buf_head(&s->local), buf_len(&s->local));
	buf_consume(&s->local, buf_len(&s->local));
	if (s->reset_failed) {
		sess_close(s, "logout (backend reset failed)", NULL);
		return;
	}
	s->bk = NULL;
	if (unauth) {
		/* The pool resets it in the background; the client is done. */
		pool_put_back(b->pool, b, s->selected);
		sess_close(s, "logout (backend connection back to the pool)", NULL);
		return;
	}
	reuse_park(s->w, s->rt, b, s->reuse_key, s->uname, s->uname_len, false);
	sess_close(s, "logout (backend session kept)", NULL);
}

static bool sess_quiet(const struct session *s)
{
	return imap_tok_at_boundary(&s->ctok) && imap_tok_at_boundary(&s->btok) &&
	       buf_is_empty(&s->client.in) && (s->inflight == 0 || s->idling);
}

/*
 * The client's input ended (EOF: closed, or shut down for writing only). May
 * the session end now? Not while its remaining input can still go to the
 * backend, nor while answers to the commands it completed are owed to it: a
 * half-closed socket still reads them. A command cut off by the EOF, or an
 * IDLE that can never see its DONE, is not waited for.
 */
static bool sess_client_finished(const struct session *s, int progress)
{
	if (!buf_is_empty(&s->client.in) && (progress || !buf_is_empty(&s->bk->conn.out)))
		return false;
	if (s->gate != GATE_NONE)
		return false; /* the backend still answers; command_timeout bounds it */
	if (!imap_tok_at_boundary(&s->ctok))
		return true;
	if (s->logging_out)
		return false;
	if (s->idling)
		return true;
	return s->inflight == 0 && imap_tok_at_boundary(&s->btok) && buf_is_empty(&s->local);
}

/* ---- the loop body ----------------------------------------------------- */

static void sess_update(struct session *s)
{
	if (s->state == SESS_DEAD)
		return;
	if (s->state == SESS_PROXYING)
		s->client.want_input = !s->logging_out && buf_room(&s->local) >= REPLY_ROOM / 2;
	conn_update(&s->client);
	if (s->bk != NULL && s->state == SESS_PROXYING)
		conn_update(&s->bk->conn);
	if (buf_is_empty(&s->client.in) && buf_is_empty(&s->client.out))
		buf_free(&s->client.in), buf_free(&s->client.out);
	if (s->bk != NULL && s->state == SESS_PROXYING && buf_is_empty(&s->bk->conn.in) &&
	    buf_is_empty(&s->bk->conn.out))
		conn_release_buffers(&s->bk->conn);
}

static void sess_run(struct session *s)
{
	int rounds = 0;
	int progress = 0;
	bool moved = false;

	do {
		moved = moved || progress;
		progress = 0;
		if (s->state == SESS_DEAD)
			return;
		if (s->state == SESS_PROXYHDR) {
			if (sess_proxy_header(s) <= 0)
				break;
			progress = 1;
			continue;
		}

		int r = conn_read(&s->client);
		if (r < 0) {
			if (s->state == SESS_HANDSHAKE)
				STAT_INC(&s->w->stats, tls_handshake_failed);
			sess_close(s, s->client.errmsg ? s->client.errmsg : "client error", NULL);
			if (s->state == SESS_DEAD)
				return;
		}
		progress |= r > 0;
		if (s->state == SESS_HANDSHAKE && conn_handshake_done(&s->client) &&
		    !s->client.error) {
			sess_tls_up(s);
			progress = 1;
		}
		if (s->state == SESS_PROXYING && !s->backend_gone) {
			r = conn_read(&s->bk->conn);
			if (r < 0 || s->bk->conn.eof)
				s->backend_gone = true;
			progress |= r > 0;
		}

		if (s->state == SESS_PREAUTH)
			progress |= sess_preauth_input(s);
		if (s->state == SESS_PROXYING)
			progress |= sess_pump_c2b(s);
		if (s->state == SESS_PROXYING)
			progress |= sess_pump_b2c(s);

		if (s->state == SESS_PROXYING && !s->backend_gone) {
			r = conn_flush(&s->bk->conn);
			if (r < 0)
				s->backend_gone = true;
			progress |= r > 0;
		}
		r = conn_flush(&s->client);
		if (r < 0) {
			sess_close(s, s->client.errmsg ? s->client.errmsg : "client error", NULL);
			if (s->state == SESS_DEAD)
				return;
		}
		progress |= r > 0;

		if (s->state == SESS_STARTTLS && buf_is_empty(&s->client.out)) {
			SSL_CTX *ctx = s->rt->listen_ctx[s->lidx];
			if (conn_start_tls(&s->client, ctx, true, NULL) < 0) {
				sess_close(s, "cannot start TLS", NULL);
				return;
			}
			s->starttls_done = true;
			s->state = SESS_HANDSHAKE;
			imap_tok_init(
			    &s->ctok, IMAP_TOK_COMMANDS,
			    &(struct imap_tok_limits){.max_line = PREAUTH_MAX_LINE,
			                              .max_literal = PREAUTH_MAX_LITERAL});
			progress = 1;
		}
		if (s->state == SESS_CLOSING && buf_is_empty(&s->client.out)) {
			sess_free_later(s);
			return;
		}
		if (s->state == SESS_PROXYING) {
			if (s->backend_gone && (buf_is_empty(&s->bk->conn.in) || !progress)) {
				if (s->backend_bye)
					sess_close(s, "backend closed the session", NULL);
				else {
					STAT_INC(&s->w->stats, backend_lost);
					sess_close(s,
					           s->bk->conn.error ? s->bk->conn.errmsg
					                             : "backend lost",
					           "* BYE [UNAVAILABLE] Backend connection lost.");
				}
				continue;
			}
			if (s->client.eof && sess_client_finished(s, progress)) {
				sess_close(s, "client closed", NULL);
				continue;
			}
			if (s->logging_out && !s->resetting && sess_quiet(s) &&
			    buf_is_empty(&s->local) && buf_is_empty(&s->bk->conn.in)) {
				sess_finish_logout(s);
				progress = 1;
				continue;
			}
			if (s->draining && sess_quiet(s)) {
				sess_close(s, "shutdown", "* BYE Server shutting down.");
				continue;
			}
		} else if (s->client.eof && s->state != SESS_CLOSING && s->state != SESS_LOGIN &&
		           (s->state != SESS_PREAUTH || buf_is_empty(&s->client.in) || !progress)) {
			/* Commands completed before the EOF are answered first, and
			 * a login under way ends with its answer (SESS_LOGIN). */
			sess_close(s, "client closed", NULL);
			continue;
		}
	} while (progress && ++rounds < RUN_ROUNDS);
	moved = moved || progress;

	/* A client at EOF waits for its answers while they keep coming: each
	 * step forward restarts command_timeout (sess_timeout ends it). */
	if (moved && s->state == SESS_PROXYING && s->client.eof)
		sess_arm(s, s->bcfg->command_timeout);
	sess_update(s);
	/* Out of rounds with work left: come back after the other sessions. */
	if (progress && s->state != SESS_DEAD)
		ev_feed_event(s->w->loop, &s->client.wio, EV_WRITE);
}

static void sess_client_io(struct conn *c, void *arg)
{
	(void)c;
	sess_run(arg);
}

static void sess_backend_io(struct conn *c, void *arg)
{
	(void)c;
	sess_run(arg);
}

/* ---- accept, drain ------------------------------------------------------ */

static void peer_text(const struct sockaddr *sa, char *out, size_t outlen, char *ip, size_t iplen)
{
	char host[INET6_ADDRSTRLEN] = "?";
	unsigned port = 0;

	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
		inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
		port = ntohs(in->sin_port);
		snprintf(out, outlen, "%s:%u", host, port);
	} else if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
		inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
		port = ntohs(in6->sin6_port);
		snprintf(out, outlen, "[%s]:%u", host, port);
	} else {
		snprintf(out, outlen, "local");
	}
	snprintf(ip, iplen, "%s", sa->sa_family == AF_UNIX ? "local" : host);
}

/* A connection limit says no: one log line a second at most (a flood must
 * not flood the log too), a BYE where the client can read one. */
static void sess_refuse(struct session *s, const char *limit, unsigned max)
{
	static _Thread_local double logged_at;
	static _Thread_local unsigned quiet;
	double now = ev_now(s->w->loop);
	char why[96];

	snprintf(why, sizeof(why), "refused: %s (%u) reached", limit, max);
	if (now - logged_at >= 1.0) {
		log_warn("S-%lu -@%s %s%s", s->id, s->peer, why,
		         quiet ? " (and more refusals in the last second)" : "");
		logged_at = now;
		quiet = 0;
	} else {
		quiet++;
	}
	/* Without TLS yet on an implicit-TLS port nothing can be said. */
	if (s->lcfg->tls == CFG_TLS_IMPLICIT && !s->tls_active) {
		sess_close(s, why, NULL);
		return;
	}
	s->state = SESS_PREAUTH; /* a state where the client can take a BYE */
	s->reason = NULL;
	sess_close(s, why,
	           strcmp(limit, "max_connections") == 0
	               ? "* BYE [UNAVAILABLE] Too many connections, try again later."
	               : "* BYE [UNAVAILABLE] Too many connections from your address.");
}

/* The client's address is final (after a PROXY header where one comes):
 * count it under max_connections_per_ip. false: refused and closing. */
static bool sess_admit_ip(struct session *s)
{
	unsigned max = s->rt->cfg->max_connections_per_ip;

	if (max == 0)
		return true;
	if (!admit_ip(s->ipkey, max)) {
		STAT_INC(&s->w->stats, refused_ip);
		sess_refuse(s, "max_connections_per_ip", max);
		return false;
	}
	s->ip_counted = true;
	return true;
}

/* The client's address is final: admit it, then TLS or the greeting. */
static void sess_begin(struct session *s)
{
	/* IPv6 clients are counted by prefix: one host has a whole /64. */
	if (ident_ip_group(s->ip, s->rt->cfg->ipv6_prefix, s->ipkey, sizeof(s->ipkey)) < 0)
		snprintf(s->ipkey, sizeof(s->ipkey), "%s", s->ip);
	if (!sess_admit_ip(s))
		return;
	if (s->lcfg->tls == CFG_TLS_IMPLICIT) {
		if (conn_start_tls(&s->client, s->rt->listen_ctx[s->lidx], true, NULL) < 0) {
			sess_close(s, "cannot start TLS", NULL);
			return;
		}
		s->state = SESS_HANDSHAKE;
	} else {
		sess_greet(s);
	}
}

/*
 * Read the PROXY header without taking a byte more (what follows may be a
 * TLS ClientHello, which the TLS layer must read from the socket itself):
 * peek, and take only bytes the parser has shown to be header. Returns 1
 * when the header is done and the session began, -2 to wait for more, -1
 * when the session is closing.
 */
static int sess_proxy_header(struct session *s)
{
	int fd = s->client.fd;
	size_t have = s->phdr_len, used = 0;
	struct proxyproto_result pr;
	const char *err = "invalid";
	ssize_t n = recv(fd, s->phdr + have, PROXYPROTO_MAX_HEADER - have, MSG_PEEK);

	if (n < 0) {
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
			return -2;
		sess_close(s, "read error before the PROXY header", NULL);
		return -1;
	}
	if (n == 0) {
		sess_close(s, "closed before the PROXY header", NULL);
		return -1;
	}
	int r = proxyproto_parse(s->phdr, have + (size_t)n, &pr, &used, &err);
	if (r == -1) {
		char why[96];
		snprintf(why, sizeof(why), "bad PROXY header: %s", err);
		sess_log(s, LOG_LVL_WARN, why);
		sess_close(s, why, NULL);
		return -1;
	}
	/* Every byte peeked is header while it is incomplete; once complete,
	 * exactly the rest of it. */
	size_t take = r == 0 ? used - have : (size_t)n;
	if (recv(fd, s->phdr + have, take, 0) != (ssize_t)take) {
		sess_close(s, "read error in the PROXY header", NULL);
		return -1;
	}
	s->phdr_len += take;
	if (r == -2)
		return -2;
	if (pr.command == PROXYPROTO_CMD_PROXY && (pr.family == AF_INET || pr.family == AF_INET6)) {
		char via[sizeof(s->peer)], what[192];
		memcpy(via, s->peer, sizeof(via));
		peer_text((const struct sockaddr *)&pr.src, s->peer, sizeof(s->peer), s->ip,
		          sizeof(s->ip));
		snprintf(what, sizeof(what), "PROXY v%d header: client %s via %s", pr.version,
		         s->peer, via);
		sess_log(s, LOG_LVL_DEBUG, what);
	}
	free(s->phdr);
	s->phdr = NULL;
	sess_begin(s);
	return 1;
}

void session_accept(struct worker *w, size_t lidx, int fd, const struct sockaddr *peer,
                    socklen_t peerlen)
{
	struct session *s = calloc(1, sizeof(*s));

	(void)peerlen;
	if (s == NULL) {
		close(fd);
		return;
	}
	s->id = next_session_id();
	s->w = w;
	STAT_INC(&w->stats, conns_total);
	STAT_INC(&w->stats, sessions_active);
	s->rt = runtime_ref(w->rt);
	s->lidx = lidx;
	s->lcfg = &s->rt->cfg->listens[lidx];
	peer_text(peer, s->peer, sizeof(s->peer), s->ip, sizeof(s->ip));
	conn_init(&s->client, w->loop, fd, CLIENT_IN_SIZE, CLIENT_OUT_SIZE, sess_client_io, s);
	buf_init(&s->cmd, PREAUTH_MAX_CMD);
	buf_init(&s->local, LOCAL_SIZE);
	struct imap_tok_limits lim = {.max_line = PREAUTH_MAX_LINE,
	                              .max_literal = PREAUTH_MAX_LITERAL};
	imap_tok_init(&s->ctok, IMAP_TOK_COMMANDS, &lim);
	imap_tok_init(&s->btok, IMAP_TOK_RESPONSES, NULL);
	ev_timer_init(&s->timer, sess_timeout, s->rt->cfg->preauth_timeout, 0.);
	s->timer.data = s;
	sess_link(s);
	log_debug("S-%lu -@%s connected on %s", s->id, s->peer, s->lcfg->name);

	unsigned maxc = admit_max_connections(s->rt->cfg->max_connections);
	if (!admit_conn(maxc)) {
		STAT_INC(&w->stats, refused_total);
		sess_refuse(s, "max_connections", maxc);
		sess_run(s);
		return;
	}
	s->conn_counted = true;
	ev_timer_start(w->loop, &s->timer);
	if (s->lcfg->proxy_protocol) {
		s->phdr = malloc(PROXYPROTO_MAX_HEADER);
		if (s->phdr == NULL) {
			sess_close(s, "out of memory", NULL);
			return;
		}
		s->state = SESS_PROXYHDR;
		s->client.want_input = true;
	} else {
		sess_begin(s);
	}
	sess_run(s);
}

void session_drain_all(struct worker *w, bool force)
{
	struct session *s, *next;

	for (s = w->sessions; s != NULL; s = next) {
		next = s->next;
		if (s->state == SESS_CLOSING || s->state == SESS_DEAD)
			continue;
		s->draining = true;
		if (s->state != SESS_PROXYING || force || sess_quiet(s))
			sess_close(s, "shutdown", "* BYE Server shutting down.");
		sess_run(s);
	}
}

void session_kick(struct worker *w, const char *user, size_t len)
{
	struct session *s, *next;
	unsigned n = 0;

	for (s = w->sessions; s != NULL; s = next) {
		next = s->next;
		if (s->state == SESS_CLOSING || s->state == SESS_DEAD || s->uname_len != len ||
		    memcmp(s->uname, user, len) != 0)
			continue;
		/* In the middle of a response no BYE fits: close without one. */
		sess_close(s, "kicked",
		           "* BYE [UNAVAILABLE] Session terminated by the administrator.");
		sess_run(s);
		n++;
	}
	if (n > 0)
		log_info("worker %d: kicked %u session(s) of %.*s", w->id, n,
		         (int)(len > 64 ? 64 : len), user);
}

void session_cancel_all(struct worker *w)
{
	for (struct session *s = w->sessions; s != NULL; s = s->next)
		login_free(s);
}
