/*
 * worker_state — what one event-loop thread's modules share: its loop, its
 * configuration, its reaper, its sessions, pools, kept sessions, Redis and
 * counters. Header only, and below every module that runs on a worker:
 * sessions, pools, the reuse cache read and change their part of it; only
 * worker.c (the thread's driver, worker.h) creates, runs and ends it. So a
 * module needs this header, never worker.h, and no include cycle runs
 * through the worker (make layering).
 */
#ifndef IMAPMUX_WORKER_STATE_H
#define IMAPMUX_WORKER_STATE_H

#include <ev.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "hmap.h"
#include "list.h"
#include "reaper.h"
#include "runtime.h"
#include "stats.h"

struct rds;
struct rds_req;
struct ttlmap;
struct crypt_port;
struct reuse_entry;
struct pool;

struct worker;
struct session;

/*
 * A worker's watcher mailbox (watch.c): the one part of a worker that the
 * other workers touch, and only under lock. They post messages (hold,
 * release, up, down, changed, gone) that own their bytes; the worker reads
 * them when async fires. Once closed (the worker's watchers are closed) a
 * post is refused and the sender frees its message.
 */
struct watch_box {
	pthread_mutex_t lock;
	struct list_node msgs; /* struct watch_msg, oldest first */
	bool closed;
	bool inited; /* lock, msgs and async are set up (watch_init) */
	ev_async async;
};

/*
 * The backends an operator drained (drain.c: the Redis set <prefix>drained,
 * kept current by drain/undrain events): no new logins are routed there and
 * pools open nothing to them. Read by any module on the worker's thread.
 */
#define DRAINED_MAX 64

struct drained {
	size_t n;
	char name[DRAINED_MAX][CFG_NAME_MAX];
	struct rds_req *load; /* SMEMBERS in flight */
	ev_timer retry;       /* ... or the next try */
};

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
	ev_timer accept_pause; /* out of fds: stop accepting for a moment */
	double trimmed_at;     /* last malloc_trim (reaper_cb, trim_timer) */
	ev_timer trim_timer;   /* the next malloc_trim while sessions live here */
	unsigned long freed;   /* sessions (and parked sessions' SSL objects) freed since then */
	struct reaper reaper;  /* what callbacks marked dead, freed before the loop sleeps */
	struct list_node sessions; /* all live sessions (session.c) */
	size_t nsessions;
	unsigned wide_cmds; /* sessions holding a widened pre-login ID buffer (preauth.c) */
	bool draining;
	struct stats stats;     /* written by this worker only */
	struct rds *rds;        /* Redis, when [redis] is configured */
	struct ttlmap *routes;  /* cached user routes (lookup = redis) */
	struct drained drained; /* drained backends (drain.c) */
	struct tickets_sync {   /* worker 0: TLS ticket keys through Redis (tickets.c) */
		ev_timer timer;
		struct rds_req *req; /* SET, SET, MGET in flight */
		bool shared;         /* the last round got the current epoch's key */
	} tickets;
	struct crypt_port *crypt; /* password checks come back here (auth = redis) */
	struct list_node reuse;   /* kept backend sessions (reuse.c), newest first */
	struct hmap reuse_idx;    /* ... the same, by key (reuse.c) */
	struct hmap parked;       /* parked sessions, by user (park.c) */
	struct hmap watches;      /* watcher connections, by user and mailbox (watch.c) */
	struct list_node pools;   /* backend connection pools (pool.c's node) */
	unsigned nworkers;        /* how many workers share the pool bounds */
	struct worker *all;       /* the nworkers workers (watch.c posts to their watch_box only) */
	struct hmap watch_holds;  /* holds of other workers' watchers, by hold id (watch.c) */
	struct hmap watch_regs;   /* other workers' holds of this one's watchers (watch.c) */
	uint64_t watch_last_id;   /* the last hold id given out here */
	struct watch_box watch_box;

	pthread_mutex_t lock;   /* protects the mailbox below */
	struct runtime *new_rt; /* reload: swap in */
	bool cmd_drain;
	bool cmd_stop;
	struct list_node sessions_reqs; /* GET /sessions: struct sessions_slot, to answer */
};

/* Whether the operator drained backend name (see struct drained). */
static inline bool worker_drained(const struct worker *w, const char *name)
{
	for (size_t i = 0; i < w->drained.n; i++)
		if (strcmp(w->drained.name[i], name) == 0)
			return true;
	return false;
}

#endif
