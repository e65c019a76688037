/*
 * worker — one event-loop thread: its own listening sockets (SO_REUSEPORT),
 * its sessions, and a reaper (reaper.h) that frees what callbacks marked
 * dead, run from the loop's ev_prepare. Workers share nothing but the
 * read-only runtime; the main thread talks to them through an ev_async and
 * a mutex-protected mailbox.
 */
#ifndef IMAPMUX_WORKER_H
#define IMAPMUX_WORKER_H

#include <ev.h>
#include <pthread.h>
#include <stdbool.h>

#include "reaper.h"
#include "runtime.h"
#include "stats.h"

struct rds;
struct ttlmap;
struct crypt_port;
struct reuse_entry;
struct pool;
struct backend;

struct worker;
struct session;

struct listener {
	struct worker *w;
	int fd;
	size_t index; /* in runtime->cfg->listens (same across reloads) */
	ev_io io;
};

struct worker {
	int id;
	pthread_t thread;
	struct ev_loop *loop;
	struct runtime *rt; /* current configuration, for new sessions */
	struct listener *listeners;
	size_t nlisteners;
	ev_async wake;
	ev_prepare reap_prepare; /* runs the reaper before the loop sleeps */
	ev_timer drain_timer;
	ev_timer accept_pause;    /* out of fds: stop accepting for a moment */
	double trimmed_at;        /* last malloc_trim (reaper, when the worker went idle) */
	unsigned long freed;      /* sessions freed since then */
	struct reaper reaper;     /* what callbacks marked dead, freed before the loop sleeps */
	struct session *sessions; /* all live sessions (doubly linked) */
	size_t nsessions;
	bool draining;
	struct stats stats;        /* written by this worker only */
	struct rds *rds;           /* Redis, when [redis] is configured */
	struct ttlmap *routes;     /* cached user routes (lookup = redis) */
	struct crypt_port *crypt;  /* password checks come back here (auth = redis) */
	struct reuse_entry *reuse; /* kept backend sessions (reuse.c) */
	struct pool *pools;        /* backend connection pools (pool.c) */
	unsigned nworkers;         /* how many workers share the pool bounds */

	pthread_mutex_t lock;   /* protects the mailbox below */
	struct runtime *new_rt; /* reload: swap in */
	bool cmd_drain;
	bool cmd_stop;
};

/* Set up worker id with listening fds (one per listener, ownership taken). */
int worker_init(struct worker *w, int id, struct runtime *rt, const int *fds, size_t nfds);
int worker_start(struct worker *w);
void worker_join(struct worker *w);
void worker_destroy(struct worker *w);

/* From the main thread: post a command and wake the worker. */
void worker_post_reload(struct worker *w, struct runtime *rt);
void worker_post_drain(struct worker *w);
void worker_post_stop(struct worker *w);

/* From the worker's own thread: free d->fn(d) after the current callbacks
 * (reaper_defer on w->reaper). */
void worker_defer(struct worker *w, struct defer *d);

/*
 * Transitional (issue #10): backend_destroy_later() (backend.h) takes the
 * reaper it frees through; callers not yet converted (proxy/session.c,
 * pool.c's list code) still pass their worker, whose reaper is then used.
 * Delete this macro and the two helpers once every caller passes
 * &w->reaper (backend.h names the function in parentheses meanwhile, so
 * that its prototype is not expanded).
 */
static inline struct reaper *worker_reaper_of(struct worker *w)
{
	return &w->reaper;
}

static inline struct reaper *worker_reaper_same(struct reaper *r)
{
	return r;
}

void(backend_destroy_later)(struct reaper *r, struct backend **bp);
/* clang-format cannot lay out _Generic. */
/* clang-format off */
#define backend_destroy_later(r, bp)                                                               \
	backend_destroy_later(                                                                     \
	    _Generic((r), struct worker *: worker_reaper_of, default: worker_reaper_same)(r), (bp))
/* clang-format on */

#endif
