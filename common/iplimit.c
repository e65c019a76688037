/*
 * iplimit — per-address connection counts (see iplimit.h).
 *
 *   buckets[hash(ip) & mask] -> entry -> entry -> NULL
 *
 * Invariants: every entry has count >= 1 and a unique ip; naddr is the
 * number of entries. The hash is FNV-1a over the seed's bytes and the
 * address text, then mixed, so the chain an address lands in depends on a
 * secret chosen at start.
 */
#include "iplimit.h"

#include <stdlib.h>
#include <string.h>

#define IP_TEXT_MAX 64

struct ip_entry {
	struct ip_entry *next;
	unsigned count;
	char ip[IP_TEXT_MAX];
};

struct iplimit {
	struct ip_entry **buckets;
	size_t mask;
	size_t naddr;
	uint64_t seed;
};

static uint64_t ip_hash(const struct iplimit *l, const char *ip)
{
	uint64_t h = 1469598103934665603ULL ^ l->seed;

	for (const unsigned char *p = (const unsigned char *)ip; *p != '\0'; p++) {
		h ^= *p;
		h *= 1099511628211ULL;
	}
	h ^= h >> 33;
	h *= 0xff51afd7ed558ccdULL;
	h ^= h >> 33;
	return h;
}

struct iplimit *iplimit_new(size_t nbuckets, uint64_t seed)
{
	struct iplimit *l = calloc(1, sizeof(*l));
	size_t n = 1;

	if (l == NULL || nbuckets == 0)
		goto fail;
	while (n < nbuckets)
		n <<= 1;
	l->buckets = calloc(n, sizeof(*l->buckets));
	if (l->buckets == NULL)
		goto fail;
	l->mask = n - 1;
	l->seed = seed;
	return l;
fail:
	free(l);
	return NULL;
}

void iplimit_destroy(struct iplimit **lp)
{
	struct iplimit *l = *lp;

	if (l == NULL)
		return;
	*lp = NULL;
	for (size_t i = 0; i <= l->mask; i++) {
		struct ip_entry *e = l->buckets[i];
		while (e != NULL) {
			struct ip_entry *next = e->next;
			free(e);
			e = next;
		}
	}
	free(l->buckets);
	free(l);
}

static struct ip_entry **ip_find(const struct iplimit *l, const char *ip)
{
	struct ip_entry **ep = &l->buckets[ip_hash(l, ip) & l->mask];

	while (*ep != NULL && strcmp((*ep)->ip, ip) != 0)
		ep = &(*ep)->next;
	return ep;
}

int iplimit_take(struct iplimit *l, const char *ip, unsigned max)
{
	struct ip_entry **ep = ip_find(l, ip);
	struct ip_entry *e = *ep;

	if (e != NULL) {
		if (max > 0 && e->count >= max)
			return -1;
		e->count++;
		return 0;
	}
	if (strlen(ip) >= IP_TEXT_MAX)
		return -1;
	e = calloc(1, sizeof(*e));
	if (e == NULL)
		return -1;
	strcpy(e->ip, ip);
	e->count = 1;
	*ep = e;
	l->naddr++;
	return 0;
}

void iplimit_release(struct iplimit *l, const char *ip)
{
	struct ip_entry **ep = ip_find(l, ip);
	struct ip_entry *e = *ep;

	if (e == NULL)
		return;
	if (--e->count == 0) {
		*ep = e->next;
		free(e);
		l->naddr--;
	}
}

unsigned iplimit_count(const struct iplimit *l, const char *ip)
{
	struct ip_entry *e = *ip_find(l, ip);

	return e != NULL ? e->count : 0;
}

size_t iplimit_addresses(const struct iplimit *l)
{
	return l->naddr;
}
