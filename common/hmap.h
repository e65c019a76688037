/*
 * hmap — the intrusive hash table of the tree: an object that can be found
 * by key embeds a struct hmap_node; the table holds only bucket heads
 * (common/list.h rings), so inserting and removing allocate nothing but the
 * occasional larger bucket array.
 *
 *   buckets[hash & mask] -> node <-> node <-> ...   (each node keeps its hash)
 *
 * The caller hashes its key (route_hash for text, or bytes of a key that is
 * already a keyed hash) and compares keys itself: the table finds the
 * nodes with an equal 64-bit hash, in O(1) on average. The table grows
 * (doubling, all nodes relinked) when it holds more nodes than buckets; if
 * that allocation fails the chains just grow longer (down to the one bucket
 * inside struct hmap), so an insert never fails. A zeroed struct hmap is an empty table (no buckets until the first
 * insert). Not thread-safe: a table belongs to one thread.
 *
 * Use:
 *   struct item { struct hmap_node hnode; char key[32]; };
 *   hmap_insert(&m, &it->hnode, route_hash(it->key, len, seed));
 *   struct hmap_node *n;
 *   hmap_for_each_hash (n, &m, h) {
 *           struct item *it = hmap_entry(n, struct item, hnode);
 *           if (strcmp(it->key, key) == 0) ...found
 *   }
 *   hmap_remove(&m, &it->hnode);   hmap_destroy(&m) frees the buckets only.
 */
#ifndef IMAPMUX_HMAP_H
#define IMAPMUX_HMAP_H

#include <stddef.h>
#include <stdint.h>

#include "list.h"

struct hmap_node {
	struct list_node link; /* on its bucket */
	uint64_t hash;
};

struct hmap {
	struct list_node *buckets; /* NULL until the first insert */
	size_t mask;               /* buckets - 1 (a power of two) */
	size_t count;
	struct list_node one; /* the only bucket when no array could be had */
};

#define hmap_entry(node, type, member) list_entry(node, type, member)

/* Add n under hash (n must not be in a table). */
void hmap_insert(struct hmap *m, struct hmap_node *n, uint64_t hash);
/* Take n out of m; a node on no table (zeroed, or removed) is fine. */
void hmap_remove(struct hmap *m, struct hmap_node *n);
/* The first / next node with this hash, NULL when there is none. */
struct hmap_node *hmap_first(const struct hmap *m, uint64_t hash);
struct hmap_node *hmap_next(const struct hmap *m, const struct hmap_node *n);
/* Free the buckets; the nodes are the caller's (m is empty and reusable). */
/* Some node of the table, NULL when it is empty (to empty it node by node). */
struct hmap_node *hmap_any(const struct hmap *m);

void hmap_destroy(struct hmap *m);

static inline size_t hmap_count(const struct hmap *m)
{
	return m->count;
}

#define hmap_for_each_hash(n, m, h) for ((n) = hmap_first(m, h); (n) != NULL; (n) = hmap_next(m, n))

#endif
