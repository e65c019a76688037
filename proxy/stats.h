/*
 * stats — counters for Prometheus, and the tiny HTTP server that shows them.
 *
 * Each worker owns a struct stats and is its only writer (relaxed atomic
 * adds, no locks on the hot path); the stats thread sums all workers'
 * counters when GET /metrics is scraped.
 */
#ifndef IMAPMUX_STATS_H
#define IMAPMUX_STATS_H

#include "cfg.h"
#include "counters.h"

/*
 * Serve GET /metrics on addr from a thread of its own, summing the n
 * counter blocks *counters[0..n), one per worker (n is shown as
 * imapmux_workers). Only the n pointers are copied: the caller may free
 * the array on return, but each struct stats they point to must stay where
 * it is until stats_stop has returned, for the stats thread reads them
 * (relaxed atomic loads, nothing else) as long as it runs. counters may be
 * NULL when n is 0. Call stats_start and stats_stop from one thread.
 * Returns 0, or -1 (logged): already started, addr not an IP address, out
 * of memory, or the socket, its event loop or its thread cannot be set up.
 */
__attribute__((warn_unused_result)) int
stats_start(const struct cfg_addr *addr, const struct stats *const *counters, unsigned n);

/* The socket alone, bound and listening, ahead of stats_start (which then
 * uses it): imapmux binds it before any IMAP listener, so that a stats
 * port in use stops the start-up before any client is taken. 0, or -1
 * (logged). */
__attribute__((warn_unused_result)) int stats_bind(const struct cfg_addr *addr);

/* From now on GET /health answers 503 "draining": the instance takes no
 * new logins (SIGTERM), so a load balancer sends clients elsewhere while
 * its sessions finish. Safe from any thread. */
void stats_set_draining(void);

/* Stop the stats thread and close its socket (safe if never started). */
void stats_stop(void);

#endif
