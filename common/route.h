/*
 * route — pick a backend for a user without a stored route.
 *
 * Rendezvous (highest random weight) hashing: every backend gets a score
 * from a hash of (user, backend name) scaled by its weight; the highest
 * wins. A user stays on the same backend while the set of candidates is
 * the same, and when one backend drops out only its users move.
 */
#ifndef IMAPMUX_ROUTE_H
#define IMAPMUX_ROUTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cfg.h"

/* 64-bit hash of a byte string (FNV-1a, then a strong final mix). */
uint64_t route_hash(const void *p, size_t len, uint64_t seed);

/* The score of backend name for user (higher wins). */
double route_score(const uint8_t *user, size_t ulen, const char *name, unsigned weight);

/* Highest-scoring backend among cfg's backends for which usable(i) is true
 * (usable NULL: all). NULL when none is usable. */
const struct cfg_backend *route_rendezvous_among(const struct cfg *cfg, const uint8_t *user,
                                                 size_t ulen, bool (*usable)(size_t i, void *arg),
                                                 void *arg);

static inline const struct cfg_backend *route_rendezvous(const struct cfg *cfg, const uint8_t *user,
                                                         size_t ulen)
{
	return route_rendezvous_among(cfg, user, ulen, NULL, NULL);
}

#endif
