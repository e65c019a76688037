/*
 * backend — one connection from imapmux to a backend IMAP server, from TCP
 * connect to logged in. Once logged in the owning session takes over the
 * conn and forwards streams through it; this module is then only storage.
 *
 *   CONNECTING -> [TLS] -> GREETING -> [STARTTLS -> TLS] -> [CAPS] -> READY
 *   READY -> LOGIN -> [LOGIN_CAPS] -> ATTACHED
 *   ATTACHED -> UNAUTH -> [CAPS] -> READY   (RFC 8437: back to the pool)
 *   any -> FAILED (the owner is told once, then destroys it)
 */
#ifndef IMAPMUX_BACKEND_H
#define IMAPMUX_BACKEND_H

#include <ev.h>
#include <stdbool.h>

#include "caps.h"
#include "cfg.h"
#include "conn.h"
#include "imap_tok.h"
#include "list.h"
#include "worker_state.h"

enum bk_state {
	BK_CONNECTING, /* TCP connect in flight; connect_timeout running */
	BK_TLS,        /* TLS handshake (implicit, or after STARTTLS) */
	BK_GREETING,   /* waiting for "* OK"; nothing sent yet */
	BK_STARTTLS,   /* "S STARTTLS" sent, waiting for its tagged OK */
	BK_CAPS,       /* "C CAPABILITY" sent, waiting for its tagged OK */
	BK_READY,      /* greeted, capabilities known, not logged in */
	BK_LOGIN,      /* login command sent; command_timeout running */
	BK_LOGIN_CAPS, /* logged in, but the OK lacked capabilities: asking */
	BK_ATTACHED,   /* logged in; the session owns the conn */
	BK_UNAUTH,     /* ["R UNSELECT" and] "U UNAUTHENTICATE" sent, waiting for U */
	BK_FAILED,     /* dead; the owner was told */
};

enum bk_result {
	BK_RES_OK,
	BK_RES_AUTH_FAILED, /* the backend refused the credentials */
	BK_RES_UNAVAILABLE, /* no usable backend connection */
};

struct backend;

/* Called once per login attempt; `why` is a static text for logs. After it
 * returns with a failure the owner must destroy the backend. */
typedef void backend_done_cb(void *owner, struct backend *b, enum bk_result r, const char *why);

struct backend {
	struct defer defer; /* for backend_destroy_later */
	enum bk_state state;
	const struct cfg_backend *cfg;
	SSL_CTX *ssl_ctx; /* NULL for tls = none */
	struct conn conn;
	struct imap_tok tok; /* response lines before ATTACHED */
	ev_timer timer;
	bool after_starttls;
	char caps[CAPS_MAX + 1]; /* the server's capabilities (raw list), "" until known */
	bool caps_known;

	/* the pending login */
	bool login_wanted;
	char *authz; /* authorization identity (master login), NULL if none */
	size_t authz_len;
	char *user; /* owned copies; wiped and freed when sent */
	size_t user_len;
	char *pass;
	size_t pass_len;
	bool plain_continuation; /* AUTHENTICATE PLAIN without SASL-IR: send on "+" */
	char *plain_b64;

	bool notify_ready; /* call done(BK_RES_OK) on READY when no login is pending */
	bool returning;    /* going back to the pool through UNAUTHENTICATE */

	/* pool.c bookkeeping: the pool counting this connection, and its idle list */
	struct pool *pool;
	struct list_node pool_node; /* on the pool's idle list exactly while idle */
	double pool_since;
	backend_done_cb *done;
	void *owner;
	unsigned long sid; /* session id for logs */
};

/* Start connecting to backend cfg. Returns NULL on immediate failure (no
 * callback then). */
struct backend *backend_new(struct ev_loop *loop, const struct cfg_backend *cfg, SSL_CTX *ctx,
                            unsigned long sid, backend_done_cb *done, void *owner);

/* Log in with the given credentials as soon as the connection is ready.
 * The backend keeps its own copy (wiped after use). Returns 0 or -1. */
__attribute__((warn_unused_result)) int backend_login(struct backend *b, const char *user,
                                                      size_t user_len, const char *pass,
                                                      size_t pass_len);

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

/* Hand the logged-in conn to a new owner: its callbacks go to cb(owner). */
void backend_attach(struct backend *b, conn_cb *cb, void *owner);

void backend_destroy(struct backend **bp);

/* Stop it now, free it once the current callbacks are done; *bp = NULL. */
void backend_destroy_later(struct worker *w, struct backend **bp);

#endif
