/*
 * status — GET /status: what an operator reads at a glance, as one JSON
 * object, rendered on the stats thread (stats.c owns the HTTP side):
 *
 *   counters[0..n) --relaxed loads, summed--> status_render --> text
 *
 *   {"instance":{"version","pid","started","uptime","workers"},
 *    "sessions":{"total","logged_in","parked"}}
 *
 * Only numbers and fixed strings so far: nothing a client controls reaches
 * this text, so nothing needs escaping yet. Like /metrics, the document is
 * not a consistent snapshot across workers: each counter is read once.
 */
#include "status.h"

#include <stdatomic.h>
#include <stddef.h>
#include <time.h>
#include <unistd.h>

#include "counters.h"
#include "metrics.h"

#ifndef IMAPMUX_VERSION
#define IMAPMUX_VERSION "0.1.0" /* as in sess.h */
#endif

static long gauge_sum(const struct stats *const *counters, unsigned n, size_t off)
{
	long sum = 0;

	for (unsigned i = 0; i < n; i++) {
		const atomic_long *g = (const atomic_long *)((const char *)counters[i] + off);

		sum += atomic_load_explicit(g, memory_order_relaxed);
	}
	/* Each worker's gauge is exact for itself; the sum of loads made at
	 * different moments can dip below zero for an instant. */
	return sum < 0 ? 0 : sum;
}

void status_render(struct text *t, const struct stats *const *counters, unsigned n,
                   double start_time)
{
	struct timespec now;
	double uptime;

	clock_gettime(CLOCK_REALTIME, &now);
	uptime = (double)now.tv_sec + (double)now.tv_nsec / 1e9 - start_time;
	text_printf(t,
	            "{\"instance\":{\"version\":\"%s\",\"pid\":%ld,\"started\":%.0f,"
	            "\"uptime\":%.0f,\"workers\":%u},",
	            IMAPMUX_VERSION, (long)getpid(), start_time, uptime < 0 ? 0. : uptime, n);
	text_printf(t, "\"sessions\":{\"total\":%ld,\"logged_in\":%ld,\"parked\":%ld}}\n",
	            gauge_sum(counters, n, offsetof(struct stats, sessions_active)),
	            gauge_sum(counters, n, offsetof(struct stats, sessions_proxying)),
	            gauge_sum(counters, n, offsetof(struct stats, sessions_parked)));
}
