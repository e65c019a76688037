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
	atomic_ulong refused_total;        /* connections refused: max_connections */
	atomic_ulong refused_ip;           /* connections refused: max_connections_per_ip */
	atomic_ulong line_too_long;        /* sessions closed: command line over max_line_length */
	atomic_long sessions_parked;       /* parked now, no backend held (gauge) */
	atomic_ulong parks;                /* times a session parked */
	atomic_ulong wakes_client;         /* wakes for a client command */
	atomic_ulong wakes_change;         /* wakes for a change (mbox event, watcher, resync) */
	atomic_ulong wakes_failed;         /* wakes that ended the session (backend, mailbox) */
	atomic_ulong park_answers;    /* commands answered while parked (DONE, IDLE, NOOP...) */
	atomic_ulong park_keepalives; /* "* OK Still here" sent to parked sessions */
	atomic_ulong tls_shed;        /* client TLS handed over from OpenSSL (conn_shed_tls) */
	atomic_long watchers;         /* watcher connections held (gauge, watch.c) */
	atomic_long watchers_up;      /* ... of which in IDLE now (gauge) */
	atomic_ulong watchers_lost;   /* watcher connections lost or refused */
};

#define STAT_ADD(st, field, n) atomic_fetch_add_explicit(&(st)->field, (n), memory_order_relaxed)
#define STAT_INC(st, field)    STAT_ADD(st, field, 1)
#define STAT_DEC(st, field)    atomic_fetch_sub_explicit(&(st)->field, 1, memory_order_relaxed)

#endif
