/*
 * metrics — the /metrics text (see metrics.c), and the growing text buffer
 * it is written into.
 */
#ifndef IMAPMUX_METRICS_H
#define IMAPMUX_METRICS_H

#include <stdbool.h>
#include <stddef.h>

struct stats;

/* A growing string with a sticky failure flag, so that the writers need
 * not check each append. */
struct text {
	char *p;
	size_t len, cap;
	bool failed; /* out of memory: the text is incomplete, do not send it */
};

/* An empty text with room for cap bytes (failed when that cannot be had);
 * the caller frees t->p. */
void text_init(struct text *t, size_t cap);
void text_append(struct text *t, const void *p, size_t n);
void text_printf(struct text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Append the exposition of the n workers' counters *counters[0..n) and of
 * this process (started at start_time, seconds since the epoch) to t.
 * Process metrics that cannot be read are left out. */
void metrics_render(struct text *t, const struct stats *const *counters, unsigned n,
                    double start_time);

#endif
