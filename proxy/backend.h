/*
 * backend — one connection from imapmux to a backend IMAP server, from TCP
 * connect to logged in, and the channel for the commands imapmux sends on
 * it by itself (backend_cmd). Once logged in, a session may take over the
 * conn and forward streams through it (ATTACHED); a kept session (reuse.c)
 * gives it back to this module's reader while nobody uses it (HELD).
 *
 *   CONNECTING -> [TLS] -> GREETING -> [STARTTLS -> TLS] -> [CAPS] -> READY
 *   READY -> LOGIN -> [LOGIN_CAPS] -> ATTACHED
 *   ATTACHED -> HELD -> ATTACHED            (kept after LOGOUT: backend_hold)
 *   ATTACHED -> UNAUTH -> [CAPS] -> READY   (RFC 8437: back to the pool)
 *   any -> FAILED (the owner is told once, then destroys it)
 *
 * Every move goes through one function (bk_enter in backend.c), which
 * asserts that the move is on this diagram.
 *
 * Who reads the stream: this module, in every state but ATTACHED (one
 * reader: the greeting, the answers to its own commands, and whatever a
 * held or idle connection receives); the session, while ATTACHED, which
 * hands each response it sees to backend_cmd_claims() first.
 *
 * The command channel. backend_cmd() queues a command with an internal tag
 * (BK_TAG_PREFIX and a number counted per connection, never reused on it)
 * and a handler for its answers (the queue itself: cmdq.h). Commands go out
 * one at a time, in the order queued: the next is written once the previous
 * one's tagged answer (or its end, see BK_EV_GONE) has been handed to its
 * handler. No client
 * can send a tag of that form through a session that refuses the tags
 * backend_tag_reserved() names, so an answer with such a tag is always
 * the proxy's own. STARTTLS, CAPABILITY, the logins, UNSELECT and
 * UNAUTHENTICATE on the way back to the pool, reuse.c's reset and every
 * LOGOUT courtesy use it.
 *
 * Timeouts: the backend's own deadline covers its own commands
 * (connect_timeout from connect to READY, command_timeout for a login and
 * for the way back to the pool). An owner that sends commands on a held or
 * attached backend keeps its own deadline and destroys the backend when it
 * passes; the handlers then get BK_EV_GONE.
 */
#ifndef IMAPMUX_BACKEND_H
#define IMAPMUX_BACKEND_H

#include <ev.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "caps.h"
#include "cfg.h"
#include "cmdq.h"
#include "conn.h"
#include "counters.h"
#include "imap_args.h"
#include "imap_tok.h"
#include "list.h"
#include "reaper.h"

enum bk_state {
	BK_CONNECTING, /* TCP connect in flight; connect_timeout running */
	BK_TLS,        /* TLS handshake (implicit, or after STARTTLS) */
	BK_GREETING,   /* waiting for "* OK"; nothing sent yet */
	BK_STARTTLS,   /* STARTTLS in flight */
	BK_CAPS,       /* CAPABILITY in flight (before login, or after UNAUTHENTICATE) */
	BK_READY,      /* greeted, capabilities known, not logged in */
	BK_LOGIN,      /* login command in flight; command_timeout running */
	BK_LOGIN_CAPS, /* logged in, but the OK lacked capabilities: CAPABILITY in flight */
	BK_ATTACHED,   /* logged in; a session owns the conn and reads it */
	BK_HELD,       /* logged in, kept for later (reuse.c): this module reads it */
	BK_UNAUTH,     /* [UNSELECT and] UNAUTHENTICATE queued, going back to READY */
	BK_FAILED,     /* dead; the owner was told */
};

enum bk_result {
	BK_RES_OK,
	BK_RES_AUTH_FAILED, /* the backend refused the credentials */
	BK_RES_UNAVAILABLE, /* no usable backend connection */
};

struct backend;
struct pool;

/* Called once per login attempt (or readiness, or hold); `why` is a static
 * text for logs. After it returns with a failure the owner must destroy the
 * backend. */
typedef void backend_done_cb(void *owner, struct backend *b, enum bk_result r, const char *why);

/*
 * What the backend reports to whoever counts it (the pool), instead of
 * calling into that module. Set with backend_set_hooks(); any member may be
 * NULL.
 */
struct backend_hooks {
	/* backend_destroy is freeing b: whatever slot it held is free. */
	void (*gone)(void *ctx, struct backend *b);
	/* The post-login capabilities last learned for this backend, or NULL. */
	const char *(*login_caps)(void *ctx);
	/* A login's OK (or its CAPABILITY answer) reported caps. */
	void (*learn_login_caps)(void *ctx, const char *caps);
	/* A login had to ask CAPABILITY (for /metrics). */
	void (*caps_queried)(void *ctx);
};

struct backend {
	struct defer defer; /* for backend_destroy_later */
	enum bk_state state;
	const struct cfg_backend *cfg;
	SSL_CTX *ssl_ctx; /* NULL for tls = none */
	struct conn conn;
	struct imap_tok tok; /* the stream, while this module reads it */
	ev_timer timer;
	bool after_starttls;
	char *caps; /* the server's capabilities (raw list, at most CAPS_MAX bytes, its own
	             * allocation), "" until known: an idle connection (a watcher's) keeps
	             * the few hundred bytes of its list, not CAPS_MAX */
	bool caps_known;

	struct cmdq cmds; /* the command channel: internal commands, oldest first */

	/* the pending login */
	bool login_wanted;
	char *authz; /* authorization identity (master login), NULL if none */
	size_t authz_len;
	char *user; /* owned copies; wiped and freed once the login is queued */
	size_t user_len;
	char *pass;
	size_t pass_len;
	char *plain_b64;    /* AUTHENTICATE PLAIN without SASL-IR: the response, sent on "+" */
	const char *mech;   /* a client's SASL mechanism passed on (XOAUTH2, OAUTHBEARER), or
	                     * NULL: pass is then its whole SASL message */
	bool mech_failed;   /* ... the backend's error challenge was answered */
	char *id_args;      /* ID's argument list, sent before the login (backend_set_id) */
	uint8_t *proxy_hdr; /* send_proxy: the client's PROXY header (backend_set_proxy);
	                     * NULL: the proxy's own (LOCAL / UNKNOWN) */
	size_t proxy_hdr_len;

	bool notify_ready; /* call done(BK_RES_OK) on READY when no login is pending */
	bool returning;    /* going back to the pool through UNAUTHENTICATE */

	const struct backend_hooks *hooks;
	void *hooks_ctx;

	/* pool.c bookkeeping: the pool counting this connection, and its idle list */
	struct pool *pool;
	struct list_node pool_node; /* on the pool's idle or opening list while it owns b */
	bool pool_idle;             /* on the idle one */
	double pool_since;
	backend_done_cb *done;
	void *owner;
	unsigned long sid; /* session id for logs */

	/* /metrics: the worker's counters of this backend (NULL: not counted,
	 * a health probe), the class it is counted in there, and when its
	 * connect began (for the connect histogram, observed once at READY) */
	struct stats_backend *st;
	enum stats_conn_class st_class;
	bool st_watcher;
	bool st_connected;
	double st_started;
};

/* Start connecting to backend cfg. Returns NULL on immediate failure (no
 * callback then). */
struct backend *backend_new(struct ev_loop *loop, const struct cfg_backend *cfg, SSL_CTX *ctx,
                            unsigned long sid, backend_done_cb *done, void *owner);

/* Count b in sb (one worker's counters of its backend, counters.h): its
 * connection class as it moves, its connect time once READY. The thread of
 * b's loop writes sb only. */
void backend_count_in(struct backend *b, struct stats_backend *sb);

/* Count b as a watcher's connection from now on, whatever its state. */
void backend_count_as_watcher(struct backend *b);

/* Report gone/caps through hooks (ctx passed back); NULL: report nothing. */
void backend_set_hooks(struct backend *b, const struct backend_hooks *hooks, void *ctx);

/* send_proxy: the PROXY header to send first, for the client this
 * connection is made for (copied). Only before it is connected: -1 after,
 * or without memory. Without one, the header says LOCAL (v2) or UNKNOWN
 * (v1): a connection of the proxy's own (health check, watcher). */
__attribute__((warn_unused_result)) int backend_set_proxy(struct backend *b, const uint8_t *hdr,
                                                          size_t len);

/* Send "ID args" (RFC 2971) ahead of the next login, where the backend
 * offers ID: the client's addresses, for the backend's logs and limits
 * (Dovecot trusts them from login_trusted_networks). Its answer is
 * swallowed, a NO included. The text is copied. 0 or -1 (no memory). */
__attribute__((warn_unused_result)) int backend_set_id(struct backend *b, const char *args);

/* Log in with the given credentials as soon as the connection is ready.
 * The backend keeps its own copy (wiped after use). Returns 0 or -1. */
__attribute__((warn_unused_result)) int backend_login(struct backend *b, const char *user,
                                                      size_t user_len, const char *pass,
                                                      size_t pass_len);

/* Log in with the client's own SASL exchange: AUTHENTICATE mech with msg
 * (the client's whole initial response, decoded) as the initial response;
 * a backend that does not list AUTH=mech fails the login (AUTH_FAILED).
 * mech is a static string. Returns 0 or -1. */
__attribute__((warn_unused_result)) int backend_login_mech(struct backend *b, const char *mech,
                                                           const char *user, size_t user_len,
                                                           const char *msg, size_t msg_len);

/* Log in as authz using the credentials of user (a master user): SASL PLAIN
 * with an authorization identity, or LOGIN "authz<sep>user" when the
 * backend has no AUTH=PLAIN, sep being the backend's master_separator. */
__attribute__((warn_unused_result)) int backend_login_as(struct backend *b, const char *authz,
                                                         size_t authz_len, const char *user,
                                                         size_t user_len, const char *pass,
                                                         size_t pass_len);

/* Report readiness instead of logging in: done(owner, b, BK_RES_OK, "ready")
 * is called once the backend has greeted (and TLS and CAPABILITY are done),
 * or done(..., BK_RES_UNAVAILABLE, why) on failure. For health checks and
 * pools. */
void backend_notify_ready(struct backend *b);

/*
 * Return a logged-in backend at a response boundary to not-authenticated
 * state (RFC 8437), closing the mailbox first with UNSELECT when unselect
 * (never CLOSE, which expunges). The conn comes back from its session;
 * done(owner, b, BK_RES_OK, "ready") follows once the backend is READY
 * again with its pre-login capabilities read, or a failure result. Returns
 * -1 (no callback) when the commands cannot even be queued.
 */
__attribute__((warn_unused_result)) int backend_unauthenticate(struct backend *b, bool unselect,
                                                               backend_done_cb *done, void *owner);

/*
 * Keep a logged-in backend at a response boundary that its session let go
 * (ATTACHED -> HELD): this module reads it again, drops untagged data (the
 * answers to the owner's own commands go to their handlers), and reports
 * its end (BYE, EOF, error, a tagged answer nobody asked for) once through
 * done(owner, b, BK_RES_UNAVAILABLE, why). backend_attach() gives it to a
 * session again. Returns -1 (no change) when b is not ATTACHED or its conn
 * is dead.
 */
__attribute__((warn_unused_result)) int backend_hold(struct backend *b, backend_done_cb *done,
                                                     void *owner);

/* Whether a READY or HELD backend can be handed on right now: its conn is
 * alive, nothing unread or half-read, no internal command queued. */
bool backend_quiet(const struct backend *b);

/* Hand the logged-in conn to a new owner: its callbacks go to cb(owner),
 * which reads the stream from now on (ATTACHED); done is forgotten. */
void backend_attach(struct backend *b, conn_cb *cb, void *owner);

/* ---- the command channel ---- */

/* Whether a tag has the internal form (BK_TAG_PREFIX, compared ASCII
 * case-insensitively). A session must refuse a client command with such a
 * tag: that makes a collision with an internal command impossible. */
static inline bool backend_tag_reserved(const uint8_t *tag, size_t len)
{
	return cmdq_tag_reserved(tag, len);
}

/* The flags, answers and handlers of internal commands: see cmdq.h. */

/*
 * Queue "TAG text\r\n" with a new internal tag. text[0..len) is the command
 * without tag and final CRLF; it may hold LITERAL+ literals ({n+}\r\n and
 * their bytes), never synchronizing ones (use BK_EV_CONTINUE for those).
 * flags: BK_CMD_SWALLOW, BK_CMD_SECRET. The text is copied. Allowed from
 * READY on (before that the backend's own setup owns the stream), never
 * once FAILED. While ATTACHED the session must write nothing of its own
 * to conn.out while backend_cmd_pending(b), and call backend_cmd_kick()
 * after it flushed conn.out. Returns 0 (cb will be called), or -1 (no
 * callback): not allowed now, over BK_CMD_MAX, or out of memory.
 */
__attribute__((warn_unused_result)) int backend_cmd(struct backend *b, const void *text, size_t len,
                                                    unsigned flags, bk_cmd_cb *cb, void *arg);

/* From a BK_EV_CONTINUE handler only: send text[0..len) and CRLF, the
 * continuation of the command in flight (flags: BK_CMD_SECRET). Returns 0,
 * or -1 when conn.out has no room for it. */
__attribute__((warn_unused_result)) static inline int
backend_cmd_reply(struct backend *b, const void *text, size_t len, unsigned flags)
{
	return cmdq_reply(&b->cmds, &b->conn.out, text, len, flags);
}

/* Internal commands queued or in flight. */
static inline bool backend_cmd_pending(const struct backend *b)
{
	return cmdq_pending(&b->cmds);
}

/* Write the next queued command if its turn has come and conn.out has room
 * (cheap when nothing waits). The session calls it after flushing conn.out
 * while ATTACHED; this module does so itself otherwise. */
void backend_cmd_kick(struct backend *b);

/*
 * For the session's pump while ATTACHED: u is the first unit of a response
 * (u->first; p[0..u->len) its bytes, still unconsumed). Returns true when
 * the response belongs to an internal command, which has been handed it:
 *   - its tagged answer (the internal tag of the command in flight);
 *   - a "+" while an internal command is in flight (the session has sent
 *     nothing of its own that waits for one: see backend_cmd);
 *   - untagged data while an internal command with BK_CMD_SWALLOW is in
 *     flight, but never an untagged BYE (handed to the handler too, and
 *     left to the session so that it sees the backend closing).
 * On true the session forwards nothing of the response: it consumes u and
 * drops every further unit of the same response, literal bodies included,
 * up to and including the LINE unit with last set (none when u is that
 * LINE). On false the response is the session's as usual.
 */
bool backend_cmd_claims(struct backend *b, const uint8_t *p, const struct imap_tok_unit *u);

/* ---- the end ---- */

void backend_destroy(struct backend **bp);

/* Stop it now, free it through reaper r once the current callbacks are
 * done; *bp = NULL. */
void backend_destroy_later(struct reaper *r, struct backend **bp);

/*
 * A courtesy before closing: when the connection can take a command (past
 * the greeting, no TLS handshake or STARTTLS under way, alive), write an
 * internal-tagged LOGOUT at once (ahead of anything queued) and flush once,
 * without waiting for the answer; then backend_destroy_later(r, bp). The
 * caller knows the command stream is at a boundary (nothing half-sent).
 */
void backend_logout_and_destroy_later(struct reaper *r, struct backend **bp);

/* ---- inside the backend module: backend.c and backend_login.c --------------
 * Not for other modules. */
void bk_enter(struct backend *b, enum bk_state to);
void bk_fail(struct backend *b, const char *why);
void bk_finish(struct backend *b, enum bk_result r, const char *why);
void bk_arm_timer(struct backend *b, double secs);
void bk_store_caps(struct backend *b, const uint8_t *p, size_t len);
void bk_caps_from_code(struct backend *b, const uint8_t *rest, size_t len);
void bk_ask_caps(struct backend *b, enum bk_state st);
int bk_cmd_queue(struct backend *b, const char *text, unsigned flags, bk_cmd_cb *cb);
void bk_cmd_write(struct backend *b);
void bk_wipe_free(char **p, size_t len);
void bk_forget_credentials(struct backend *b);
/* READY with a login wanted: send it (backend_login.c). */
void bk_send_login(struct backend *b);

#endif
