/*
 * test_zone — the zone allocator (common/zone.c): slots are zeroed,
 * 16-byte aligned, never overlap (every slot filled with its own pattern
 * and checked after all the others were written), blocks are unmapped when
 * their last slot goes (one spare kept per class), zrealloc keeps the bytes
 * across size classes and across ZONE_MAX (calloc'd memory) both ways, and
 * a randomized run of allocations, reallocations and frees against a
 * reference copy of every object. Under the sanitizers the zone is off and
 * the same calls are checked on calloc.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "zone.h"

static int setup(void **state)
{
	(void)state;
	zone_enable();
	return 0;
}

static void fill(uint8_t *p, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)(seed * 31 + i);
}

static void check(const uint8_t *p, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		assert_int_equal(p[i], (uint8_t)(seed * 31 + i));
}

static void test_slots_zeroed_aligned_apart(void **state)
{
	enum { N = 3000 };
	static uint8_t *obj[N];
	static size_t len[N];
	size_t before = zone_blocks();

	(void)state;
	/* Off under the sanitizers (zone.h): the same calls, on calloc. */
	bool on = zone_enabled();
	for (unsigned i = 0; i < N; i++) {
		len[i] = 1 + (i * 37) % ZONE_MAX;
		obj[i] = zalloc(len[i]);
		assert_non_null(obj[i]);
		assert_int_equal((uintptr_t)obj[i] % 16, 0);
		for (size_t k = 0; k < len[i]; k++)
			assert_int_equal(obj[i][k], 0);
		fill(obj[i], len[i], i);
	}
	assert_true(!on || zone_blocks() > before);
	for (unsigned i = 0; i < N; i++)
		check(obj[i], len[i], i);
	/* free every other, reuse the slots, all still intact */
	for (unsigned i = 0; i < N; i += 2)
		zfree(obj[i], len[i]);
	for (unsigned i = 0; i < N; i += 2) {
		obj[i] = zalloc(len[i]);
		assert_non_null(obj[i]);
		for (size_t k = 0; k < len[i]; k++)
			assert_int_equal(obj[i][k], 0);
		fill(obj[i], len[i], i + 7);
	}
	for (unsigned i = 0; i < N; i++)
		check(obj[i], len[i], i % 2 ? i : i + 7);
	for (unsigned i = 0; i < N; i++)
		zfree(obj[i], len[i]);
	/* every block emptied: at most one spare per class (20) stays mapped */
	assert_true(zone_blocks() <= 20);
	assert_true(on || zone_blocks() == 0);
	zfree(NULL, 10);
}

static void test_big_objects_are_malloc(void **state)
{
	uint8_t *p = zalloc(ZONE_MAX + 1);

	(void)state;
	assert_non_null(p);
	assert_int_equal(p[ZONE_MAX], 0);
	fill(p, ZONE_MAX + 1, 3);
	zfree(p, ZONE_MAX + 1);
}

static void test_zrealloc_keeps_bytes_across_classes(void **state)
{
	static const size_t sizes[] = {10,           16,   17,  100, 2000, ZONE_MAX,
	                               ZONE_MAX + 1, 9000, 300, 5,   0};
	size_t old = 0;
	uint8_t *p = NULL;

	(void)state;
	for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
		size_t n = sizes[i], keep = old < n ? old : n;
		uint8_t *q = zrealloc(p, old, n);
		assert_non_null(q);
		check(q, keep, 9);
		for (size_t k = keep; k < n; k++)
			assert_int_equal(q[k], 0);
		fill(q, n, 9);
		p = q;
		old = n;
	}
	zfree(p, old);
}

static void test_random_against_reference(void **state)
{
	enum { N = 400, STEPS = 20000 };
	static uint8_t *obj[N], *ref[N];
	static size_t len[N];
	unsigned seed = 12345;

	(void)state;
	for (unsigned step = 0; step < STEPS; step++) {
		seed = seed * 1103515245u + 12345u;
		unsigned i = (seed >> 8) % N;
		size_t n = 1 + (seed >> 3) % (ZONE_MAX + 600);
		if (obj[i] == NULL) {
			obj[i] = zalloc(n);
			ref[i] = calloc(1, n);
			assert_non_null(obj[i]);
			len[i] = n;
			fill(obj[i], n, step);
			fill(ref[i], n, step);
		} else if (seed & 1) {
			uint8_t *q = zrealloc(obj[i], len[i], n);
			uint8_t *r = realloc(ref[i], n);
			assert_non_null(q);
			assert_non_null(r);
			if (n > len[i])
				memset(r + len[i], 0, n - len[i]);
			assert_memory_equal(q, r, n);
			obj[i] = q;
			ref[i] = r;
			len[i] = n;
		} else {
			assert_memory_equal(obj[i], ref[i], len[i]);
			zfree(obj[i], len[i]);
			free(ref[i]);
			obj[i] = ref[i] = NULL;
		}
	}
	for (unsigned i = 0; i < N; i++) {
		if (obj[i] != NULL) {
			assert_memory_equal(obj[i], ref[i], len[i]);
			zfree(obj[i], len[i]);
			free(ref[i]);
		}
	}
	assert_true(zone_blocks() <= 20);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_slots_zeroed_aligned_apart),
	    cmocka_unit_test(test_big_objects_are_malloc),
	    cmocka_unit_test(test_zrealloc_keeps_bytes_across_classes),
	    cmocka_unit_test(test_random_against_reference),
	};

	return cmocka_run_group_tests(tests, setup, NULL);
}
