/*
 * runtime — one loaded configuration with everything built from it: the
 * TLS contexts of listeners and backends. Shared read-only by all workers
 * and reference-counted, so that a reload (SIGHUP) can swap in a new one
 * while sessions keep the one they started with.
 *
 * The one thing in it that changes after runtime_new is backend_up, which
 * only proxy/health.c writes (its thread, and health_reload before handing
 * the runtime over); workers read it with runtime_backend_up, a relaxed
 * atomic load, so that pools and logins need neither a lock nor the health
 * module. Only the newest runtime's array is kept current: an older one
 * keeps the state it had at reload.
 */
#ifndef IMAPMUX_RUNTIME_H
#define IMAPMUX_RUNTIME_H

#include <openssl/ssl.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>

#include "cfg.h"
#include "counters.h"

struct runtime {
	atomic_int refs;
	struct cfg *cfg;
	SSL_CTX **listen_ctx;    /* per cfg->listens[i]; NULL when tls = none */
	SSL_CTX **backend_ctx;   /* per cfg->backends[i]; NULL when tls = none */
	atomic_bool *backend_up; /* per cfg->backends[i]: passes its health checks; starts true */
	unsigned *backend_slot;  /* per cfg->backends[i]: its counters' slot (counters.h), or
	                          * STATS_NO_SLOT past STATS_BACKENDS names */
};

/* Build TLS contexts for cfg. Takes ownership of cfg (also on failure).
 * Returns a runtime with one reference, or NULL with a reason in err. */
struct runtime *runtime_new(struct cfg *cfg, char *err, size_t errlen);

struct runtime *runtime_ref(struct runtime *rt);
void runtime_unref(struct runtime **rtp);

/* The runtime in force, for threads that are given none (the stats
 * thread's /metrics and /status): runtime_publish (the health thread's
 * owner, at start and after each reload; NULL at the end) keeps a reference
 * to rt and drops the one it had; runtime_current returns a new reference
 * (runtime_unref it), or NULL before the first and after the last. */
void runtime_publish(struct runtime *rt);
struct runtime *runtime_current(void);

/* Index of backend b within rt->cfg->backends. */
size_t runtime_backend_index(const struct runtime *rt, const struct cfg_backend *b);

/* Whether backend i of rt passes its health checks (always true when it is
 * not checked, and until the first verdict). Any thread, no lock. */
static inline bool runtime_backend_up(const struct runtime *rt, size_t i)
{
	return atomic_load_explicit(&rt->backend_up[i], memory_order_relaxed);
}

/* Record backend i's health verdict: rt->backend_up[i] and its slot's
 * (runtime_slot_up). The health thread only. */
void runtime_set_backend_up(struct runtime *rt, size_t i, bool up);

/*
 * The backend slots: one per backend name any runtime_new has seen, never
 * given back, so that a name keeps its slot (its counters) across reloads.
 * Any thread may read them, without a lock: runtime_slots() counts those
 * whose name is set (it never changes afterwards).
 */
unsigned runtime_slots(void);
const char *runtime_slot_name(unsigned slot);
/* The last health verdict for the slot's backend (true until one). */
bool runtime_slot_up(unsigned slot);

/* The CAPABILITY list clients see before login: depends on the listener's
 * TLS mode, whether TLS is active and whether plaintext auth is allowed. */
/* The process's TLS ticket keys (tktkeys.h; NULL: out of memory), the same
 * for every runtime; runtime_new gives them tls_ticket_lifetime. */
struct tktkeys *runtime_tickets(void);

const char *runtime_preauth_caps(const struct cfg_listen *l, int tls_active, bool oauth);

#endif
