/*
 * counters — the struct every worker counts in (struct stats) and the
 * macros that write it. Header only: the workers' modules write it, the
 * stats thread (stats.c) and the exposition (metrics.c) read it.
 *
 * Each worker owns one struct stats and is its only writer (relaxed atomic
 * adds, no locks on the hot path); readers use relaxed atomic loads.
 */
#ifndef IMAPMUX_COUNTERS_H
#define IMAPMUX_COUNTERS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

/*
 * Backend slots: every backend name a configuration has named gets a slot
 * (runtime.c hands them out, never takes one back, so a name keeps its
 * counters across reloads); counters per backend are kept per slot.
 */
#define STATS_BACKENDS 64
#define STATS_NO_SLOT  STATS_BACKENDS /* over the bound: not counted per backend */

/*
 * A latency histogram with fixed bounds (STATS_HIST_BOUNDS, seconds): one
 * count per bucket, not cumulative (the exposition sums them), the last
 * bucket being everything above the highest bound. The sum is kept in
 * microseconds, so that it is an integer counter like the others.
 */
#define STATS_HIST_N 11
#define STATS_HIST_BOUNDS                                                                          \
	{                                                                                          \
		0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10                            \
	}

struct stats_hist {
	atomic_ulong
	    bucket[STATS_HIST_N + 1]; /* [i]: at most bound i (and above i-1); [N]: above */
	atomic_ulong sum_us;
};

/* Classes of a worker's backend connections, for imapmux_backend_connections{state}. */
enum stats_conn_class {
	STATS_CONN_CONNECTING, /* TCP, TLS, greeting, STARTTLS, CAPABILITY before login */
	STATS_CONN_IDLE,       /* greeted, not logged in (in the pool) */
	STATS_CONN_LOGIN,      /* a login in flight */
	STATS_CONN_IN_USE,     /* logged in, a session's */
	STATS_CONN_HELD,       /* logged in, kept for a later login of its user (reuse.c) */
	STATS_CONN_RETURNING,  /* UNAUTHENTICATE on its way back to the pool */
	STATS_CONN_WATCHER,    /* a watcher's (IDLE for parked sessions) */
	STATS_CONN_N,
	STATS_CONN_NONE = STATS_CONN_N, /* not counted (failed, or not counted at all) */
};

/* The state label of a connection class (metrics and /status). */
static inline const char *stats_conn_class_name(enum stats_conn_class c)
{
	static const char *const names[STATS_CONN_N] = {
	    [STATS_CONN_CONNECTING] = "connecting",
	    [STATS_CONN_IDLE] = "idle",
	    [STATS_CONN_LOGIN] = "login",
	    [STATS_CONN_IN_USE] = "in_use",
	    [STATS_CONN_HELD] = "held",
	    [STATS_CONN_RETURNING] = "returning",
	    [STATS_CONN_WATCHER] = "watcher",
	};

	return c < STATS_CONN_N ? names[c] : "none";
}

/* What a worker counts of one backend (one slot). */
struct stats_backend {
	atomic_long conns[STATS_CONN_N];   /* connections by class (gauges) */
	atomic_ulong connects;             /* connections opened */
	atomic_ulong logins_ok;            /* client logins that ended logged in here */
	atomic_ulong logins_failed;        /* ... refused: credentials, brute-force budget */
	atomic_ulong logins_unavailable;   /* ... the backend could not be had */
	atomic_ulong reuse_hits;           /* logins served by a kept session (reuse.c) */
	atomic_long pool_idle;             /* the pool's idle connections (gauge) */
	atomic_long pool_opening;          /* ... connecting for the pool (gauge) */
	atomic_long pool_total;            /* ... all it counts (gauge) */
	atomic_long pool_waiters;          /* logins waiting for a slot at pool_max (gauge) */
	atomic_long drained;               /* 1 while this worker has it drained (drain.c) */
	struct stats_hist login_seconds;   /* LOGIN/AUTHENTICATE read to its tagged answer */
	struct stats_hist connect_seconds; /* backend_new to READY: TCP, TLS, greeting */
};

struct stats {
	atomic_ulong conns_total;          /* client connections accepted */
	atomic_long sessions_active;       /* client sessions open now (gauge) */
	atomic_long sessions_proxying;     /* of which logged in (gauge) */
	atomic_ulong logins_ok;            /* logins that reached PROXYING */
	atomic_ulong logins_auth_failed;   /* credentials refused */
	atomic_ulong logins_unavailable;   /* no usable backend */
	atomic_ulong backend_connects;     /* backend connections opened */
	atomic_ulong backend_lost;         /* sessions ended by a lost backend */
	atomic_ulong backend_logins;       /* logins sent to backends */
	atomic_ulong sessions_reused;      /* logins served by a kept backend session */
	atomic_ulong backend_unauths;      /* connections back to the pool by UNAUTHENTICATE */
	atomic_ulong caps_queries;         /* CAPABILITY asked after a login (OK lacked them) */
	atomic_ulong caps_changes;         /* a backend's post-login capabilities changed */
	atomic_ulong client_bytes_in;      /* bytes read from clients (after TLS) */
	atomic_ulong client_bytes_out;     /* bytes written to clients (before TLS) */
	atomic_ulong preauth_bad;          /* BAD answers before login */
	atomic_ulong tls_handshake_failed; /* client TLS handshakes that failed */
	atomic_ulong tls_handshakes;       /* client TLS handshakes done: full */
	atomic_ulong tls_resumed;          /* ... resumed from a session ticket */
	atomic_ulong refused_total;        /* connections refused: max_connections */
	atomic_ulong refused_ip;           /* connections refused: max_connections_per_ip */
	atomic_ulong line_too_long;        /* sessions closed: command line over max_line_length */
	atomic_long sessions_parked;       /* parked now, no backend held (gauge) */
	atomic_long sessions_compressed;   /* COMPRESS=DEFLATE on now (gauge) */
	atomic_ulong compress_started;     /* sessions that turned COMPRESS=DEFLATE on */
	atomic_ulong parks;                /* times a session parked */
	atomic_ulong wakes_client;         /* wakes for a client command */
	atomic_ulong wakes_change;         /* wakes for a change (mbox event, watcher, resync) */
	atomic_ulong wakes_failed;         /* wakes that ended the session (backend, mailbox) */
	atomic_ulong park_answers;     /* commands answered while parked (DONE, IDLE, NOOP...) */
	atomic_ulong park_keepalives;  /* "* OK Still here" sent to parked sessions */
	atomic_ulong tls_shed;         /* client TLS handed over from OpenSSL (conn_shed_tls) */
	atomic_long watchers;          /* watcher connections held (gauge, watch.c) */
	atomic_long watchers_up;       /* ... of which in IDLE now (gauge) */
	atomic_ulong watchers_lost;    /* watcher connections lost or refused */
	atomic_ulong redis_reconnects; /* Redis connections made again after a loss */
	atomic_long redis_up;          /* 1 while this worker's Redis link is up (gauge) */
	atomic_ulong lockouts_ip;      /* logins refused: the address's failure budget */
	atomic_ulong lockouts_user;    /* logins refused: the user's failure budget */
	atomic_ulong route_redis;      /* routes read from Redis */
	atomic_ulong route_cache;      /* ... from the worker's route cache */
	atomic_ulong route_fallback;   /* ... none found (or Redis down): fallback */
	atomic_ulong route_static;     /* lookup = static: fallback straight away */
	struct stats_backend bk[STATS_BACKENDS + 1]; /* per slot; [STATS_NO_SLOT] the overflow */
	struct stats_hist login_noslot; /* logins answered before any backend was chosen */
};

#define STAT_ADD(st, field, n) atomic_fetch_add_explicit(&(st)->field, (n), memory_order_relaxed)
#define STAT_INC(st, field)    STAT_ADD(st, field, 1)
#define STAT_DEC(st, field)    atomic_fetch_sub_explicit(&(st)->field, 1, memory_order_relaxed)
#define STAT_SUB(st, field, n) atomic_fetch_sub_explicit(&(st)->field, (n), memory_order_relaxed)

/* Count one observation of secs seconds in h (its only writer's thread). */
static inline void stats_hist_observe(struct stats_hist *h, double secs)
{
	static const double bounds[STATS_HIST_N] = STATS_HIST_BOUNDS;
	size_t i = 0;

	if (secs < 0)
		secs = 0;
	while (i < STATS_HIST_N && secs > bounds[i])
		i++;
	atomic_fetch_add_explicit(&h->bucket[i], 1, memory_order_relaxed);
	atomic_fetch_add_explicit(&h->sum_us, (unsigned long)(secs * 1e6 + 0.5),
	                          memory_order_relaxed);
}

/* Move one connection of sb from class from to class to (either may be
 * STATS_CONN_NONE); sb NULL: not counted. */
static inline void stats_conn_move(struct stats_backend *sb, enum stats_conn_class from,
                                   enum stats_conn_class to)
{
	if (sb == NULL || from == to)
		return;
	if (from != STATS_CONN_NONE)
		atomic_fetch_sub_explicit(&sb->conns[from], 1, memory_order_relaxed);
	if (to != STATS_CONN_NONE)
		atomic_fetch_add_explicit(&sb->conns[to], 1, memory_order_relaxed);
}

#endif
