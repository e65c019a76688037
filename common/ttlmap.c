/*
 * ttlmap — see ttlmap.h. Separate chaining over a power-of-two table sized
 * for the bound (load factor <= 1), so there is no rehashing; keys are
 * copied into the entry.
 */
#include "ttlmap.h"

#include <stdlib.h>
#include <string.h>

#include "route.h"

struct entry {
	struct entry *next;
	double expires;
	int val;
	size_t len;
	uint8_t key[];
};

struct ttlmap {
	struct entry **tab;
	size_t mask;
	size_t count;
	size_t max;
	uint64_t seed;
};

struct ttlmap *ttlmap_new(size_t max_entries, uint64_t seed)
{
	struct ttlmap *m = calloc(1, sizeof(*m));
	size_t n = 16;

	if (m == NULL || max_entries == 0)
		goto fail;
	while (n < max_entries)
		n <<= 1;
	m->tab = calloc(n, sizeof(*m->tab));
	if (m->tab == NULL)
		goto fail;
	m->mask = n - 1;
	m->max = max_entries;
	m->seed = seed;
	return m;
fail:
	free(m);
	return NULL;
}

static struct entry **slot(struct ttlmap *m, const void *key, size_t len)
{
	return &m->tab[route_hash(key, len, m->seed) & m->mask];
}

static struct entry **find(struct ttlmap *m, const void *key, size_t len)
{
	struct entry **pp = slot(m, key, len);

	for (; *pp != NULL; pp = &(*pp)->next) {
		if ((*pp)->len == len && memcmp((*pp)->key, key, len) == 0)
			return pp;
	}
	return pp;
}

static void unlink_free(struct ttlmap *m, struct entry **pp)
{
	struct entry *e = *pp;

	*pp = e->next;
	free(e);
	m->count--;
}

int ttlmap_get(struct ttlmap *m, const void *key, size_t len, double now, int *val_r)
{
	struct entry **pp = find(m, key, len);

	if (*pp == NULL)
		return -1;
	if ((*pp)->expires <= now) {
		unlink_free(m, pp);
		return -1;
	}
	*val_r = (*pp)->val;
	return 0;
}

static void sweep(struct ttlmap *m, double now)
{
	for (size_t i = 0; i <= m->mask; i++) {
		struct entry **pp = &m->tab[i];
		while (*pp != NULL) {
			if ((*pp)->expires <= now)
				unlink_free(m, pp);
			else
				pp = &(*pp)->next;
		}
	}
}

int ttlmap_put(struct ttlmap *m, const void *key, size_t len, int val, double expires, double now)
{
	struct entry **pp = find(m, key, len);
	struct entry *e;

	if (*pp != NULL) {
		(*pp)->val = val;
		(*pp)->expires = expires;
		return 0;
	}
	if (m->count >= m->max) {
		sweep(m, now);
		if (m->count >= m->max)
			return -1;
		pp = find(m, key, len);
	}
	e = malloc(sizeof(*e) + len);
	if (e == NULL)
		return -1;
	e->next = NULL;
	e->expires = expires;
	e->val = val;
	e->len = len;
	memcpy(e->key, key, len);
	*pp = e;
	m->count++;
	return 0;
}

void ttlmap_del(struct ttlmap *m, const void *key, size_t len)
{
	struct entry **pp = find(m, key, len);

	if (*pp != NULL)
		unlink_free(m, pp);
}

void ttlmap_clear(struct ttlmap *m)
{
	for (size_t i = 0; i <= m->mask; i++) {
		while (m->tab[i] != NULL)
			unlink_free(m, &m->tab[i]);
	}
}

size_t ttlmap_count(const struct ttlmap *m)
{
	return m->count;
}

void ttlmap_destroy(struct ttlmap **mp)
{
	struct ttlmap *m = *mp;

	if (m == NULL)
		return;
	*mp = NULL;
	ttlmap_clear(m);
	free(m->tab);
	free(m);
}
