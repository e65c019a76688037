/*
 * route — weighted rendezvous hashing (see route.h).
 *
 * Score = weight / -ln(u), u uniform in (0,1) from the hash: with this form
 * a backend of weight w wins a share w / sum(weights) of the users.
 */
#include "route.h"

#include <math.h>
#include <string.h>

static uint64_t mix64(uint64_t x)
{
	/* splitmix64 finaliser: FNV alone spreads short keys poorly. */
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	x ^= x >> 31;
	return x;
}

uint64_t route_hash(const void *p, size_t len, uint64_t seed)
{
	const uint8_t *b = p;
	uint64_t h = 0xcbf29ce484222325ULL ^ mix64(seed);

	for (size_t i = 0; i < len; i++) {
		h ^= b[i];
		h *= 0x100000001b3ULL;
	}
	return mix64(h ^ len);
}

double route_score(const uint8_t *user, size_t ulen, const char *name, unsigned weight)
{
	uint64_t h = route_hash(user, ulen, route_hash(name, strlen(name), 0));
	/* 53 random bits, shifted off 0 so that the log is finite. */
	double u = ((double)(h >> 11) + 0.5) / 9007199254740992.0;

	return (double)weight / -log(u);
}

const struct cfg_backend *route_rendezvous_among(const struct cfg *cfg, const uint8_t *user,
                                                 size_t ulen, bool (*usable)(size_t i, void *arg),
                                                 void *arg)
{
	const struct cfg_backend *best = NULL;
	double best_score = -1.0;

	for (size_t i = 0; i < cfg->nbackends; i++) {
		const struct cfg_backend *b = &cfg->backends[i];
		double sc;

		if (usable != NULL && !usable(i, arg))
			continue;
		sc = route_score(user, ulen, b->name, b->weight ? b->weight : 1);
		if (sc > best_score) {
			best_score = sc;
			best = b;
		}
	}
	return best;
}
