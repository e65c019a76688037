/*
 * ttlmap — a bounded map from byte strings to small integers, each entry
 * with an expiry time. Used for a worker's cache of user routes: lookups
 * drop expired entries; when full, an insert first sweeps expired entries
 * and is refused if none could go (the cache never grows past its bound).
 * Not thread-safe: each worker owns its own.
 */
#ifndef IMAPMUX_TTLMAP_H
#define IMAPMUX_TTLMAP_H

#include <stddef.h>
#include <stdint.h>

struct ttlmap;

/* max_entries > 0; seed keys the hash (pick it at random: hash flooding). */
struct ttlmap *ttlmap_new(size_t max_entries, uint64_t seed);
void ttlmap_destroy(struct ttlmap **mp);

/* 0 with *val_r set if key is present and expires after now; else -1. */
__attribute__((warn_unused_result)) int ttlmap_get(struct ttlmap *m, const void *key, size_t len,
                                                   double now, int *val_r);

/* Insert or replace. 0, or -1 when full (after sweeping) or out of memory. */
int ttlmap_put(struct ttlmap *m, const void *key, size_t len, int val, double expires, double now);

void ttlmap_del(struct ttlmap *m, const void *key, size_t len);
void ttlmap_clear(struct ttlmap *m);
size_t ttlmap_count(const struct ttlmap *m);

#endif
