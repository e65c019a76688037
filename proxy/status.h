/*
 * status — the GET /status JSON (see status.c), rendered on the stats
 * thread from the workers' counters.
 */
#ifndef IMAPMUX_STATUS_H
#define IMAPMUX_STATUS_H

#include <stdbool.h>

struct stats;
struct text;

/* Append the /status document of the n workers' counters *counters[0..n),
 * of the configuration in force (runtime_current) and of this process
 * (started at start_time, seconds since the epoch; draining: SIGTERM's
 * drain has begun) to t. Reads the counters with relaxed atomic loads only. */
void status_render(struct text *t, const struct stats *const *counters, unsigned n,
                   double start_time, bool draining);

/* The GET / page: self-contained HTML (inline CSS and JS, no external
 * assets) that fetches /status every few seconds and shows it. */
extern const char status_page_html[];

#endif
