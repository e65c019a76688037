/*
 * test_hmap — the intrusive hash table (common/hmap.c): every inserted
 * node is found by its hash and only by it, removal (also twice, also of a
 * never-inserted node) keeps the count, equal hashes of different keys are
 * all found, the table grows through many inserts, and a randomized run
 * against a plain array as the reference.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "hmap.h"
#include "route.h"

struct item {
	struct hmap_node hnode;
	uint32_t key;
	bool in;
};

static uint64_t key_hash(uint32_t k)
{
	return route_hash(&k, sizeof(k), 42);
}

static struct item *find(const struct hmap *m, uint32_t key)
{
	struct hmap_node *n;

	hmap_for_each_hash(n, m, key_hash(key))
	{
		struct item *it = hmap_entry(n, struct item, hnode);
		if (it->key == key)
			return it;
	}
	return NULL;
}

static void test_empty_and_zeroed(void **state)
{
	struct hmap m = {0};
	struct item never = {0};

	(void)state;
	assert_null(hmap_first(&m, 7));
	hmap_remove(&m, &never.hnode); /* on no table: nothing */
	assert_int_equal(hmap_count(&m), 0);
	hmap_destroy(&m);
	hmap_destroy(&m);
}

static void test_grow_find_remove(void **state)
{
	enum { N = 20000 };
	struct item *items = calloc(N, sizeof(*items));
	struct hmap m = {0};

	(void)state;
	assert_non_null(items);
	for (uint32_t i = 0; i < N; i++) {
		items[i].key = i * 2654435761u;
		hmap_insert(&m, &items[i].hnode, key_hash(items[i].key));
	}
	assert_int_equal(hmap_count(&m), N);
	assert_true(m.mask + 1 >= N / 2); /* it grew */
	for (uint32_t i = 0; i < N; i++)
		assert_ptr_equal(find(&m, items[i].key), &items[i]);
	assert_null(find(&m, 12345u * 2654435761u + 1));
	for (uint32_t i = 0; i < N; i += 2)
		hmap_remove(&m, &items[i].hnode);
	hmap_remove(&m, &items[0].hnode); /* twice: nothing */
	assert_int_equal(hmap_count(&m), N / 2);
	for (uint32_t i = 0; i < N; i++)
		assert_ptr_equal(find(&m, items[i].key), i % 2 ? &items[i] : NULL);
	hmap_destroy(&m);
	assert_int_equal(hmap_count(&m), 0);
	free(items);
}

static void test_equal_hashes(void **state)
{
	struct item a = {.key = 1}, b = {.key = 2}, c = {.key = 3};
	struct hmap m = {0};
	struct hmap_node *n;
	int seen = 0;

	(void)state;
	hmap_insert(&m, &a.hnode, 99);
	hmap_insert(&m, &b.hnode, 99);
	hmap_insert(&m, &c.hnode, 99 + 16); /* same bucket, other hash */
	hmap_for_each_hash(n, &m, 99) seen |= 1 << hmap_entry(n, struct item, hnode)->key;
	assert_int_equal(seen, (1 << 1) | (1 << 2));
	hmap_remove(&m, &a.hnode);
	seen = 0;
	hmap_for_each_hash(n, &m, 99) seen |= 1 << hmap_entry(n, struct item, hnode)->key;
	assert_int_equal(seen, 1 << 2);
	hmap_destroy(&m);
}

/* Random inserts and removes of 512 possible keys; the array says which
 * are in. */
static void test_random_against_array(void **state)
{
	enum { K = 512, STEPS = 200000 };
	static struct item items[K];
	struct hmap m = {0};
	size_t in = 0;
	uint64_t x = 88172645463325252ull;

	(void)state;
	memset(items, 0, sizeof(items));
	for (uint32_t i = 0; i < K; i++)
		items[i].key = i;
	for (int s = 0; s < STEPS; s++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		struct item *it = &items[x % K];
		if (it->in) {
			hmap_remove(&m, &it->hnode);
			in--;
		} else {
			hmap_insert(&m, &it->hnode, key_hash(it->key));
			in++;
		}
		it->in = !it->in;
		assert_int_equal(hmap_count(&m), in);
		uint32_t probe = (uint32_t)(x >> 32) % K;
		assert_ptr_equal(find(&m, probe), items[probe].in ? &items[probe] : NULL);
	}
	for (uint32_t i = 0; i < K; i++)
		assert_ptr_equal(find(&m, i), items[i].in ? &items[i] : NULL);
	hmap_destroy(&m);
}

/* hmap_any empties a table node by node, whatever its size, each node once. */
static void test_any_drains(void **state)
{
	enum { N = 3000 };
	static struct item items[N];
	struct hmap m = {0};
	struct hmap_node *n;
	size_t seen = 0;

	(void)state;
	assert_null(hmap_any(&m));
	for (uint32_t i = 0; i < N; i++) {
		items[i] = (struct item){.key = i, .in = true};
		hmap_insert(&m, &items[i].hnode, key_hash(i));
	}
	while ((n = hmap_any(&m)) != NULL) {
		struct item *it = hmap_entry(n, struct item, hnode);
		assert_true(it->in);
		it->in = false;
		hmap_remove(&m, n);
		seen++;
	}
	assert_int_equal(seen, N);
	assert_int_equal(hmap_count(&m), 0);
	hmap_destroy(&m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_empty_and_zeroed), cmocka_unit_test(test_grow_find_remove),
	    cmocka_unit_test(test_equal_hashes),     cmocka_unit_test(test_random_against_array),
	    cmocka_unit_test(test_any_drains),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
