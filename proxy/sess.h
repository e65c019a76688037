/*
 * sess — the inside of a client session, shared by the files that own its
 * life stages (session.h is the worker's view of it):
 *
 *   session.c   the struct's life: accept, PROXY header, states and their
 *               one transition function, the run loop, timers, closing,
 *               drain and kick
 *   preauth.c   greeting, pre-login commands, STARTTLS, SASL; hands
 *               credentials to the login pipeline
 *   login.c     verify, route, attach a backend: the login pipeline, which
 *               reports through a callback (no client command needed)
 *   pump.c      logged in: both streams parsed and forwarded, the proxy's
 *               own answers, LOGOUT and the backend's reuse
 *   park.c      parked IDLE: giving the backend up when quiet, answering
 *               while parked, waking and resynchronizing the client
 *   sess_state.c  which state changes are legal (pure, unit-tested)
 *
 * A stage calls into another only through the functions declared here.
 */
#ifndef IMAPMUX_SESS_H
#define IMAPMUX_SESS_H

#include <netinet/in.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "buf.h"
#include "caps.h"
#include "conn.h"
#include "ident.h"
#include "imap_tok.h"
#include "log.h"
#include "reuse.h"
#include "runtime.h"
#include "sess_state.h"
#include "worker_state.h"

#define IMAPMUX_NAME "imapmux"
#ifndef IMAPMUX_VERSION
#define IMAPMUX_VERSION "0.1.0"
#endif

#define CLIENT_IN_SIZE      (16 * 1024)
#define CLIENT_OUT_SIZE     (32 * 1024)
#define PREAUTH_MAX_LINE    8192  /* one line part before login */
#define PREAUTH_MAX_LITERAL 4096  /* one literal before login */
#define PREAUTH_MAX_CMD     16384 /* a whole command before login */
/* An ID command before login may be longer: RFC 2971 allows 30 pairs of
 * 30-octet fields and 1,024-octet values, up to ~64 KiB quoted with escapes.
 * Only an ID widens the command buffer to this, for that command alone. */
#define PREAUTH_ID_MAX  (64 * 1024 + 1024)
#define PREAUTH_ID_WIDE 256  /* widened buffers at once per worker: 16.25 MiB */
#define PREAUTH_MAX_BAD 10   /* invalid commands before we hang up */
#define REPLY_ROOM      2048 /* room kept for one proxy reply */
/* ... before login: the login OK carries the backend's capabilities */
#define PREAUTH_ROOM        (CAPS_MAX + 512)
#define CAPLINE_MAX         (CAPS_MAX + 1024) /* a capability response from the backend */
#define TAINT_CARRY         15                /* longest word looked for in commands, less one */
#define STREAM_FRAG         4096              /* forwarding unit for long lines */
#define LOCAL_SIZE          4096              /* proxy replies queued during proxying */
#define TAG_MAX             64
#define USER_MAX            IDENT_USER_MAX
#define KEY_ROOM            IDENT_KEY_ROOM(CFG_REDIS_PREFIX_MAX)
#define IDLE_MIN_TIMEOUT    1800.0 /* RFC 3501 5.4: at least 30 minutes */
#define CLOSE_FLUSH_TIMEOUT 5.0
#define BYE_BACKEND_DRAINED "* BYE [UNAVAILABLE] Backend draining, reconnect."
#define RUN_ROUNDS          16 /* fairness: I/O rounds per callback */

struct login;

struct session {
	struct defer defer; /* first: the reaper frees through it */
	unsigned long id;
	struct worker *w;
	struct runtime *rt;
	const struct cfg_listen *lcfg;
	size_t lidx;
	enum sess_state state; /* changed by sess_to() only */
	enum sess_px px;       /* while SESS_PROXYING; changed by sess_px_to() only */
	struct list_node node; /* on w->sessions */
	struct conn client;
	struct backend *bk; /* the backend side: NULL until login, or when gone */
	const struct cfg_backend *bcfg;
	char peer[64];               /* "ip:port" */
	char user[64];               /* printable prefix of the user name, for logs */
	char ip[INET6_ADDRSTRLEN];   /* client address, for logs */
	char lip[INET6_ADDRSTRLEN];  /* the address the client connected to */
	uint16_t port, lport;        /* ... and both ports (0: a UNIX socket) */
	char ipkey[IDENT_IP_MAX];    /* ... its group (IPv6: ipv6_prefix), for per-address
	                              * limits and brute-force counts */
	uint8_t uname[USER_MAX + 1]; /* the user name as imapmux identifies it
	                              * (username_case): kick matches it */
	size_t uname_len;
	struct login *login; /* the login pipeline (login.c), while one runs */
	bool tls_active;
	bool starttls_done;
	uint8_t *phdr; /* the PROXY header's bytes so far (SESS_PROXYHDR only) */
	size_t phdr_len;
	bool conn_counted; /* holds a place under max_connections */
	bool ip_counted;   /* ... and under max_connections_per_ip */
	ev_timer timer;
	ev_tstamp last_activity;
	const char *reason;
	/* for the summary line at the end (sess_log_end) */
	ev_tstamp started;         /* ev_now at accept */
	const char *method;        /* "login" | "authenticate", from the first login on */
	unsigned long long bk_in;  /* backend bytes of the session's proxied streams ... */
	unsigned long long bk_out; /* ... (the proxy's own login commands not counted) */
	unsigned long long bk_base_in, bk_base_out; /* s->bk's counts at attach */
	unsigned parks;                             /* times parked */
	bool reused;                                /* logged in on a kept session at least once */

	/* before login */
	struct imap_tok ctok; /* client stream (re-initialised at login) */
	struct buf cmd;       /* the command being assembled */
	unsigned nbad;
	uint32_t cmd_part;  /* bytes of the command's current line part so far */
	uint16_t sasl_ulen; /* AUTHENTICATE LOGIN: the decoded user name heads cmd */
	uint8_t sasl;       /* enum sasl_step (preauth.c): which AUTHENTICATE answer is due */
	char tag[TAG_MAX + 1];

	/* after login (pump.c) */
	struct imap_tok btok; /* backend stream */
	struct buf local;     /* proxy replies waiting for a response boundary */
	bool skip_cmd;        /* c2b: dropping the rest of a command the backend will not run */
	bool bskip;           /* b2c: dropping the rest of a backend line not for the client */
	uint8_t carry[TAINT_CARRY]; /* the end of the command's previous line part */
	size_t carry_len;
	struct buf capline; /* a capability response longer than one unit, assembled */
	bool capline_on;
	char idle_tag[TAG_MAX + 1];
	unsigned inflight;     /* commands forwarded minus tagged completions */
	bool backend_bye;      /* the backend announced its close */
	bool backend_gone;     /* backend EOF or error: drain what it sent, then close */
	bool draining;         /* SIGTERM or backend drain: close at the next quiet point */
	bool bk_drain;         /* ... because the operator drained its backend (drain.h) */
	bool counted_proxying; /* included in stats.sessions_proxying */

	/* reuse after LOGOUT (reuse.c) */
	uint8_t reuse_key[REUSE_KEY_LEN];
	bool reuse_ok;             /* reuse_key is set: the login proved these credentials */
	bool tainted;              /* per-connection state changed (ENABLE, NOTIFY...): no reuse */
	bool selected;             /* a mailbox may be selected: reset with UNSELECT */
	char sel_tag[TAG_MAX + 1]; /* the last SELECT/EXAMINE/CLOSE/UNSELECT in flight */
	bool sel_opens;            /* ... and it was SELECT or EXAMINE */
	bool reset_failed;         /* the logout reset was not OK: do not keep the session */
	bool reset_sent;           /* ... was tried (PX_LOGOUT_RESET came and went) */
	char logout_tag[TAG_MAX + 1];

	/* the client's view of its selected mailbox (common/mbox_feed.h), from
	 * its first SELECT, EXAMINE or ENABLE on; NULL before */
	struct mbox_feed *feed;
	struct mbox_view *view;

	/* parked IDLE (park.c): set from the decision to park until a wake's
	 * lines are all out; NULL otherwise */
	struct park *park;
	bool park_never; /* per-connection state a wake cannot rebuild (NOTIFY, LANGUAGE,
	                  * ENABLE of anything but CONDSTORE, QRESYNC, UTF8=ACCEPT) */
};

/* ---- session.c ---------------------------------------------------------- */

/* The one way to change s->state / s->px. A move sess_move_ok() refuses is
 * a bug: it aborts where assertions are on, else it is logged and the
 * session closes (the move is not made). Entering SESS_PROXYING sets px to
 * PX_NORMAL. */
void sess_to(struct session *s, enum sess_state to);
void sess_px_to(struct session *s, enum sess_px to);

/* Queue a proxy-made line (CRLF added) for the client: straight to the
 * output before login, to `local` while proxying (sent at a response
 * boundary). Sized from what it carries. */
void sess_reply(struct session *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void sess_log(struct session *s, enum log_level lvl, const char *what);
/* A failed login, as one key=value line whose client address comes before
 * anything the client chose (deploy/fail2ban reads it): result is
 * "auth_failed" or "unavailable", why the reason. */
void sess_log_login_failed(struct session *s, const char *result, const char *why);
/* s->bk's bytes since it was attached go to the session's backend counts;
 * call before s->bk is let go. sess_bk_mark: s->bk was just attached. */
void sess_bk_account(struct session *s);
void sess_bk_mark(struct session *s);
/* Remember a printable, bounded form of the user name for log lines. */
void sess_set_user(struct session *s, const uint8_t *u, size_t len);
void sess_set_tag(struct session *s, const uint8_t *tag, size_t len);
/* Append bytes whose room the caller has checked. */
void sess_put(struct buf *b, const void *p, size_t n);
/* (Re)start the session's one timer. */
void sess_arm(struct session *s, double secs);
/* How long a logged-in session may stay silent (longer in IDLE). */
double sess_idle_limit(const struct session *s);
/* When a proxying session's timer should look at it next: the idle limit,
 * or park_idle_after when that comes first. */
double sess_proxy_wait(const struct session *s);
/* End the session: bye (a whole line without CRLF) if the client can take
 * it at a clean point, drop the backend, flush, then free. */
void sess_close(struct session *s, const char *reason, const char *bye);
/* Run the session from a fresh callback (not inside the current one). */
void sess_run_soon(struct session *s);
/* The conn callback of an attached backend. */
void sess_backend_io(struct conn *c, void *arg);

/* ---- preauth.c ---------------------------------------------------------- */

void preauth_greet(struct session *s);
/* Take complete pre-login commands from client.in. True on progress. */
bool preauth_input(struct session *s);
/* The TLS handshake finished: greet (implicit TLS) or go on (STARTTLS). */
void preauth_tls_up(struct session *s);
/* Wipe the command buffer. */
void preauth_cmd_reset(struct session *s);
/* The client stream's tokenizer before login (its bounds). */
void preauth_tok_init(struct session *s);

/* ---- login.c ------------------------------------------------------------ */

enum login_result {
	LOGIN_OK,           /* logged in: b is the session's backend */
	LOGIN_AUTH_FAILED,  /* NO [AUTHENTICATIONFAILED] (after auth_fail_delay) */
	LOGIN_AUTHZ_FAILED, /* NO [AUTHORIZATIONFAILED] */
	LOGIN_UNAVAILABLE,  /* NO [UNAVAILABLE] at once */
};

/* The pipeline's one answer. On LOGIN_OK the backend b is logged in and
 * owned by the caller from now on (reused: a kept session, reuse.c). Never
 * called from inside login_start. */
typedef void login_done_cb(struct session *s, enum login_result r, struct backend *b, bool reused);

/* What to log in. user/pass are copied (pass is wiped when no longer
 * needed). verified: the caller has proved the user already, so the
 * brute-force budgets and the password check are skipped and only routing
 * and the backend login run (auth = redis: master credentials, no pass). */
struct login_req {
	const uint8_t *user;
	size_t ulen;
	const uint8_t *pass;
	size_t plen;
	bool verified;
	/* With verified: log in on this backend, no routing (a wake: the
	 * mailbox's UIDs belong to it); NULL: route as usual. */
	const struct cfg_backend *backend;
	/* Leave s->reuse_key as it is and look for no kept session (a wake
	 * has looked under its own key already). */
	bool keep_key;
	/* A client's SASL mechanism passed on to the backend (XOAUTH2,
	 * OAUTHBEARER; auth = backend): pass is its whole message. NULL: pass
	 * is a password. */
	const char *mech;
	login_done_cb *done;
};

/* Start the login pipeline for s (user name checked by the caller: 1 to
 * USER_MAX bytes, no control bytes). Returns 0 (done follows), or -1 (no
 * memory; done is not called). */
__attribute__((warn_unused_result)) int login_start(struct session *s, const struct login_req *rq);
/* Stop a running login (its attempt leaves the brute-force budgets): no
 * callback follows. A no-op without one. */
void login_abort(struct session *s);

/* ---- pump.c ------------------------------------------------------------- */

/* Logged in on b (fresh or kept): answer the client's login command and
 * start forwarding. */
void pump_attach(struct session *s, struct backend *b, bool reused);
/* One round of forwarding each way. True on progress. */
bool pump_c2b(struct session *s);
bool pump_b2c(struct session *s);
/* At a quiet point: no command half-forwarded, no answer owed. */
bool pump_quiet(const struct session *s);
/* The client's input ended: may the session end now? (see pump.c) */
bool pump_client_finished(const struct session *s, bool progress);
/* The LOGOUT the proxy took may be answered now (earlier commands done). */
void pump_finish_logout(struct session *s);
/* Log the client's mailbox view (debug level), e.g. when the session ends. */
void pump_log_view(struct session *s);

/* ---- park.c ------------------------------------------------------------- */

/* May this proxying session park now (quiet, a mailbox selected and
 * followed, a backend a wake can log in to and a way to hear of changes)? */
bool park_possible(const struct session *s);
/* Start parking (park_possible said yes): ends the backend's IDLE if any.
 * s->park is set from here on. */
void park_begin(struct session *s);
/* PX_PARK_DONE: the tagged answer to the client's IDLE came (ok: OK).
 * True when the pump must drop it (the client is still in IDLE). */
bool park_done_answer(struct session *s, bool ok);
/* PROXYING with s->park: move parking or the wake on. True on progress. */
bool park_step(struct session *s);
/* SESS_PARKED: the run loop's stage. True on progress. */
bool park_run(struct session *s);
/* The session's timer, while s->park is set. */
void park_timeout(struct session *s);
/* The client is in an IDLE the proxy answers. */
bool park_idling(const struct session *s);
/* Lines of a wake still to go to the client, ahead of the backend's:
 * park_output moves what fits; true when none is left. */
bool park_holds_output(const struct session *s);
bool park_output(struct session *s);
/* The session ends: what it owed the client goes out, parking is undone. */
void park_end(struct session *s);

#endif
