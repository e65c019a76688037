/*
 * pool — a worker's connections to one backend: ready ones kept warm for
 * logins, and the bound on all of them.
 *
 *   refill --backend_new--> CONNECTING --ready--> IDLE (greeted, caps known)
 *   login: IDLE --pool_acquire--> session (one round trip: the login)
 *          none idle, below bound --> new connection for the session
 *          at the bound --> wait (pool_wait), then NO [UNAVAILABLE]; the
 *          login layer may free a slot meanwhile (close a kept session)
 *   any backend of the pool destroyed --> slot free: serve a waiter, refill
 *   IDLE older than pool_idle_ttl, or BYE/EOF --> closed and replaced
 *   session LOGOUT on a backend with UNAUTHENTICATE --pool_put_back-->
 *          UNAUTHENTICATE (backend_cmd) --> IDLE again (RFC 8437)
 *   worker ending --pool_close_all--> IDLE and CONNECTING ones closed
 *
 * Bounds are per worker: pool_min_idle and pool_max of the backend divided
 * by the number of workers (rounded up), so an instance stays within them.
 * Every backend connection a session, the reuse cache or the pool holds is
 * counted while it exists (b->pool), whoever owns it; what the pool learns
 * from them (post-login capabilities, their end) comes through backend.h's
 * hooks.
 */
#ifndef IMAPMUX_POOL_H
#define IMAPMUX_POOL_H

#include "backend.h"
#include "runtime.h"
#include "worker_state.h"

struct pool;
struct pool_wait;

/* A connection freed up for a waiting login, or NULL when pool_wait passed. */
typedef void pool_got_cb(void *arg, struct backend *b);

/* The pool of backend bc for worker w (made on first use, kept until the
 * worker ends; follows bc's settings after a reload). NULL on OOM. */
struct pool *pool_of(struct worker *w, struct runtime *rt, const struct cfg_backend *bc);

/* Start filling every backend's pool of rt (worker start, reload). */
void pool_prefill(struct worker *w, struct runtime *rt);

/*
 * A backend connection for a login, owned by (done, owner) from now on:
 *   0: *b_r is ready (greeted) or connecting; call backend_login on it;
 *  -2: the pool is at its bound: *wait_r is queued, got(arg, b) comes later
 *      (b with done/owner set, or NULL after pool_wait). The pool frees no
 *      slot by itself: the caller may close a connection it knows nobody
 *      uses (a kept session of this backend: reuse_evict_one), whose slot
 *      then goes to the oldest waiting login once that backend is freed;
 *  -1: cannot connect.
 */
__attribute__((warn_unused_result)) int pool_acquire(struct pool *p, unsigned long sid,
                                                     backend_done_cb *done, void *owner,
                                                     struct backend **b_r, pool_got_cb *got,
                                                     void *arg, struct pool_wait **wait_r);

/* What the pool counts now (for tests and logs): idle connections, every
 * connection it counts (idle, connecting, attached, kept), logins waiting
 * for a slot. Any pointer may be NULL. */
void pool_counts(const struct pool *p, unsigned *idle_r, unsigned *total_r, unsigned *waiting_r);

/* The waiting login went away: got will not be called. */
void pool_wait_cancel(struct pool_wait *wt);

/* Take back b, logged in and at a response boundary, whose client logged
 * out: UNAUTHENTICATE (after UNSELECT when unselect), then idle again. If
 * that cannot be started, b is closed. */
void pool_put_back(struct pool *p, struct backend *b, bool unselect);

/* Worker ending: close the connections the pools own (idle, or opening:
 * a refill, or one coming back through UNAUTHENTICATE) and open no more. */
void pool_close_all(struct worker *w);

/* Backend name was drained: close what its pool owns (idle connections,
 * those opening); pool_refill opens none while it stays drained. Returns
 * how many were closed. */
unsigned pool_drain(struct worker *w, const char *name);

/* Free every pool of w, after every counted backend is gone (worker exit). */
void pool_destroy_all(struct worker *w);

#endif
