/* Unit tests for ttlmap: the bounded expiring cache of user routes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cmocka.h>

#include "ttlmap.h"

static void test_put_get_expire(void **state)
{
	struct ttlmap *m = ttlmap_new(8, 42);
	int v = -1;

	(void)state;
	assert_non_null(m);
	assert_int_equal(ttlmap_get(m, "alice", 5, 0, &v), -1);
	assert_int_equal(ttlmap_put(m, "alice", 5, 3, 10.0, 0), 0);
	assert_int_equal(ttlmap_get(m, "alice", 5, 9.9, &v), 0);
	assert_int_equal(v, 3);
	/* A prefix or a longer key is another key. */
	assert_int_equal(ttlmap_get(m, "alic", 4, 1, &v), -1);
	assert_int_equal(ttlmap_get(m, "alice\0", 6, 1, &v), -1);
	/* Replace keeps one entry. */
	assert_int_equal(ttlmap_put(m, "alice", 5, 4, 20.0, 1), 0);
	assert_int_equal(ttlmap_count(m), 1);
	assert_int_equal(ttlmap_get(m, "alice", 5, 15, &v), 0);
	assert_int_equal(v, 4);
	/* Expired entries are dropped on lookup. */
	assert_int_equal(ttlmap_get(m, "alice", 5, 20.0, &v), -1);
	assert_int_equal(ttlmap_count(m), 0);
	ttlmap_destroy(&m);
	assert_null(m);
}

static void test_bound_and_sweep(void **state)
{
	struct ttlmap *m = ttlmap_new(100, 7);
	char key[16];
	int v;

	(void)state;
	for (int i = 0; i < 100; i++) {
		int n = snprintf(key, sizeof(key), "u%d", i);
		assert_int_equal(ttlmap_put(m, key, (size_t)n, i, i < 50 ? 5.0 : 100.0, 0), 0);
	}
	/* Full and nothing expired: refused. */
	assert_int_equal(ttlmap_put(m, "new", 3, 1, 100.0, 1.0), -1);
	assert_int_equal(ttlmap_count(m), 100);
	/* At t=6 half have expired: the insert sweeps them. */
	assert_int_equal(ttlmap_put(m, "new", 3, 1, 100.0, 6.0), 0);
	assert_int_equal(ttlmap_count(m), 51);
	for (int i = 50; i < 100; i++) {
		int n = snprintf(key, sizeof(key), "u%d", i);
		assert_int_equal(ttlmap_get(m, key, (size_t)n, 7.0, &v), 0);
		assert_int_equal(v, i);
	}
	ttlmap_del(m, "new", 3);
	assert_int_equal(ttlmap_get(m, "new", 3, 7.0, &v), -1);
	ttlmap_clear(m);
	assert_int_equal(ttlmap_count(m), 0);
	ttlmap_destroy(&m);
}

static void test_binary_keys(void **state)
{
	struct ttlmap *m = ttlmap_new(4, 1);
	int v;

	(void)state;
	assert_int_equal(ttlmap_put(m, "a\0b", 3, 1, 9, 0), 0);
	assert_int_equal(ttlmap_put(m, "a\0c", 3, 2, 9, 0), 0);
	assert_int_equal(ttlmap_put(m, "", 0, 3, 9, 0), 0);
	assert_int_equal(ttlmap_get(m, "a\0b", 3, 1, &v), 0);
	assert_int_equal(v, 1);
	assert_int_equal(ttlmap_get(m, "a\0c", 3, 1, &v), 0);
	assert_int_equal(v, 2);
	assert_int_equal(ttlmap_get(m, "", 0, 1, &v), 0);
	assert_int_equal(v, 3);
	assert_null(ttlmap_new(0, 1));
	ttlmap_destroy(&m);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_put_get_expire),
	    cmocka_unit_test(test_bound_and_sweep),
	    cmocka_unit_test(test_binary_keys),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
