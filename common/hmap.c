/*
 * hmap — intrusive hash table (see hmap.h).
 *
 * Invariants: buckets is NULL (then mask and count are 0), or &m->one
 * (mask 0: no array could be allocated), or an array of mask + 1 list
 * heads, each a ring of the nodes whose hash & mask is its index; count is
 * the number of nodes on all rings.
 */
#include "hmap.h"

#include <stdbool.h>
#include <stdlib.h>

#define HMAP_MIN_BUCKETS 16u

/* Relink every node into a table of n buckets; false (m unchanged) on no
 * memory. */
static bool hmap_resize(struct hmap *m, size_t n)
{
	struct list_node *nb = malloc(n * sizeof(*nb));

	if (nb == NULL)
		return false;
	for (size_t i = 0; i < n; i++)
		list_init(&nb[i]);
	if (m->buckets != NULL) {
		for (size_t i = 0; i <= m->mask; i++) {
			while (!list_empty(&m->buckets[i])) {
				struct hmap_node *x =
				    list_first_entry(&m->buckets[i], struct hmap_node, link);
				list_remove(&x->link);
				list_push_back(&nb[x->hash & (n - 1)], &x->link);
			}
		}
		if (m->buckets != &m->one)
			free(m->buckets);
	}
	m->buckets = nb;
	m->mask = n - 1;
	return true;
}

void hmap_insert(struct hmap *m, struct hmap_node *n, uint64_t hash)
{
	size_t nb = m->mask + 1;

	if (m->buckets == NULL) {
		if (!hmap_resize(m, HMAP_MIN_BUCKETS)) {
			list_init(&m->one);
			m->buckets = &m->one;
			m->mask = 0;
		}
	} else if (m->count >= nb && nb <= SIZE_MAX / 2 / sizeof(struct list_node)) {
		(void)hmap_resize(m, nb < HMAP_MIN_BUCKETS ? HMAP_MIN_BUCKETS : nb * 2);
	}
	n->hash = hash;
	list_push_front(&m->buckets[hash & m->mask], &n->link);
	m->count++;
}

void hmap_remove(struct hmap *m, struct hmap_node *n)
{
	if (!list_linked(&n->link))
		return;
	list_remove(&n->link);
	m->count--;
}

static struct hmap_node *hmap_scan(const struct hmap *m, const struct list_node *from,
                                   uint64_t hash)
{
	const struct list_node *head = &m->buckets[hash & m->mask];

	for (const struct list_node *l = from; l != head; l = l->next) {
		struct hmap_node *x = list_entry(l, struct hmap_node, link);
		if (x->hash == hash)
			return x;
	}
	return NULL;
}

struct hmap_node *hmap_first(const struct hmap *m, uint64_t hash)
{
	if (m->buckets == NULL)
		return NULL;
	return hmap_scan(m, m->buckets[hash & m->mask].next, hash);
}

struct hmap_node *hmap_next(const struct hmap *m, const struct hmap_node *n)
{
	return hmap_scan(m, n->link.next, n->hash);
}

struct hmap_node *hmap_any(const struct hmap *m)
{
	if (m->count == 0)
		return NULL;
	for (size_t i = 0; i <= m->mask; i++) {
		if (!list_empty(&m->buckets[i]))
			return list_first_entry(&m->buckets[i], struct hmap_node, link);
	}
	return NULL;
}

void hmap_destroy(struct hmap *m)
{
	if (m->buckets != NULL) {
		for (size_t i = 0; i <= m->mask; i++) {
			while (!list_empty(&m->buckets[i]))
				list_remove(m->buckets[i].next);
		}
	}
	if (m->buckets != &m->one)
		free(m->buckets);
	m->buckets = NULL;
	m->mask = 0;
	m->count = 0;
}
