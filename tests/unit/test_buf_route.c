/*
 * Unit tests for buf (bounded lazy byte queue) and route (weighted
 * rendezvous hashing).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "buf.h"
#include "cfg.h"
#include "route.h"

static void test_buf_lazy_and_release(void **state)
{
	struct buf b;
	size_t room;

	(void)state;
	buf_init(&b, 64);
	assert_null(b.data);
	assert_int_equal(buf_len(&b), 0);
	assert_int_equal(buf_room(&b), 64);
	assert_int_equal(buf_append(&b, "hello", 5), 0);
	assert_non_null(b.data);
	assert_memory_equal(buf_head(&b), "hello", 5);
	buf_release(&b); /* not empty: keeps storage */
	assert_non_null(b.data);
	buf_consume(&b, 5);
	assert_true(buf_is_empty(&b));
	buf_release(&b);
	assert_null(b.data);
	uint8_t *t = buf_tail(&b, &room);
	assert_non_null(t);
	assert_int_equal(room, 64);
	buf_free(&b);
}

static void test_buf_bounded(void **state)
{
	struct buf b;
	char big[100];

	(void)state;
	memset(big, 'x', sizeof(big));
	buf_init(&b, 64);
	assert_int_equal(buf_append(&b, big, 65), -1);
	assert_int_equal(buf_len(&b), 0);
	assert_int_equal(buf_append(&b, big, 64), 0);
	assert_int_equal(buf_room(&b), 0);
	assert_int_equal(buf_append(&b, big, 1), -1);
	buf_free(&b);
}

static void test_buf_compacts(void **state)
{
	struct buf b;
	size_t room;
	char data[64];

	(void)state;
	for (size_t i = 0; i < sizeof(data); i++)
		data[i] = (char)i;
	buf_init(&b, 64);
	assert_int_equal(buf_append(&b, data, 60), 0);
	buf_consume(&b, 50);
	/* 10 pending at offset 50: appending 40 must compact, not fail. */
	assert_int_equal(buf_append(&b, data, 40), 0);
	assert_int_equal(buf_len(&b), 50);
	assert_memory_equal(buf_head(&b), data + 50, 10);
	assert_memory_equal(buf_head(&b) + 10, data, 40);
	buf_consume(&b, 45);
	uint8_t *t = buf_tail(&b, &room);
	assert_non_null(t);
	assert_int_equal(room, 59);
	assert_memory_equal(buf_head(&b), data + 35, 5);
	buf_free(&b);
}

static struct cfg *make_cfg(size_t n, const unsigned *weights)
{
	struct cfg *cfg = calloc(1, sizeof(*cfg));

	cfg->backends = calloc(n, sizeof(*cfg->backends));
	cfg->nbackends = n;
	for (size_t i = 0; i < n; i++) {
		snprintf(cfg->backends[i].name, sizeof(cfg->backends[i].name), "store%zu", i);
		cfg->backends[i].weight = weights ? weights[i] : 1;
	}
	return cfg;
}

static void free_cfg(struct cfg *cfg)
{
	free(cfg->backends);
	free(cfg);
}

static bool skip_one(size_t i, void *arg)
{
	return i != *(size_t *)arg;
}

static void test_route_stable_and_minimal_moves(void **state)
{
	struct cfg *cfg = make_cfg(4, NULL);
	size_t down = 2, moved = 0, on_down = 0;
	char user[32];

	(void)state;
	for (int i = 0; i < 4000; i++) {
		int n = snprintf(user, sizeof(user), "user%d@example.org", i);
		const struct cfg_backend *a = route_rendezvous(cfg, (uint8_t *)user, (size_t)n);
		const struct cfg_backend *a2 = route_rendezvous(cfg, (uint8_t *)user, (size_t)n);
		const struct cfg_backend *b =
		    route_rendezvous_among(cfg, (uint8_t *)user, (size_t)n, skip_one, &down);
		assert_ptr_equal(a, a2);
		assert_true(b != &cfg->backends[down]);
		if (a == &cfg->backends[down])
			on_down++;
		else if (a != b)
			moved++;
	}
	/* Only the users of the removed backend move. */
	assert_int_equal(moved, 0);
	assert_true(on_down > 700 && on_down < 1300);
	free_cfg(cfg);
}

static void test_route_weights(void **state)
{
	unsigned w[3] = {1, 1, 2};
	struct cfg *cfg = make_cfg(3, w);
	size_t count[3] = {0};
	char user[32];

	(void)state;
	for (int i = 0; i < 20000; i++) {
		int n = snprintf(user, sizeof(user), "u%d", i);
		const struct cfg_backend *b = route_rendezvous(cfg, (uint8_t *)user, (size_t)n);
		count[b - cfg->backends]++;
	}
	/* Expected 5000 / 5000 / 10000; allow 6%. */
	assert_in_range(count[0], 4700, 5300);
	assert_in_range(count[1], 4700, 5300);
	assert_in_range(count[2], 9400, 10600);
	free_cfg(cfg);
}

static bool none(size_t i, void *arg)
{
	(void)i;
	(void)arg;
	return false;
}

static void test_route_empty(void **state)
{
	struct cfg *cfg = make_cfg(2, NULL);

	(void)state;
	assert_null(route_rendezvous_among(cfg, (const uint8_t *)"x", 1, none, NULL));
	cfg->nbackends = 0;
	assert_null(route_rendezvous(cfg, (const uint8_t *)"x", 1));
	free_cfg(cfg);
}

static void test_route_hash_spread(void **state)
{
	(void)state;
	/* Different seeds and lengths give different hashes. */
	assert_true(route_hash("a", 1, 0) != route_hash("a", 1, 1));
	assert_true(route_hash("", 0, 0) != route_hash("\0", 1, 0));
	assert_true(route_hash("ab", 2, 0) != route_hash("ba", 2, 0));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_buf_lazy_and_release),
	    cmocka_unit_test(test_buf_bounded),
	    cmocka_unit_test(test_buf_compacts),
	    cmocka_unit_test(test_route_stable_and_minimal_moves),
	    cmocka_unit_test(test_route_weights),
	    cmocka_unit_test(test_route_empty),
	    cmocka_unit_test(test_route_hash_spread),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
