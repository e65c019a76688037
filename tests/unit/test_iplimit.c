/* Unit tests for iplimit: per-address connection counts with a bound. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "iplimit.h"

static void test_bound_per_address(void **state)
{
	struct iplimit *l = iplimit_new(4, 7);

	(void)state;
	assert_non_null(l);
	assert_int_equal(iplimit_take(l, "192.0.2.1", 2), 0);
	assert_int_equal(iplimit_take(l, "192.0.2.1", 2), 0);
	assert_int_equal(iplimit_take(l, "192.0.2.1", 2), -1);
	assert_int_equal(iplimit_count(l, "192.0.2.1"), 2);
	/* Other addresses, including prefixes of it, are counted apart. */
	assert_int_equal(iplimit_take(l, "192.0.2.10", 2), 0);
	assert_int_equal(iplimit_take(l, "192.0.2.", 2), 0);
	assert_int_equal(iplimit_take(l, "2001:db8::1", 2), 0);
	assert_int_equal(iplimit_addresses(l), 4);
	/* A release makes room again. */
	iplimit_release(l, "192.0.2.1");
	assert_int_equal(iplimit_count(l, "192.0.2.1"), 1);
	assert_int_equal(iplimit_take(l, "192.0.2.1", 2), 0);
	assert_int_equal(iplimit_take(l, "192.0.2.1", 2), -1);
	/* max 0: no bound. */
	for (int i = 0; i < 1000; i++)
		assert_int_equal(iplimit_take(l, "198.51.100.9", 0), 0);
	assert_int_equal(iplimit_count(l, "198.51.100.9"), 1000);
	iplimit_destroy(&l);
	assert_null(l);
}

static void test_entries_go_when_unused(void **state)
{
	struct iplimit *l = iplimit_new(1, 1); /* one chain: every address collides */
	char ip[32];

	(void)state;
	assert_non_null(l);
	for (int i = 0; i < 300; i++) {
		snprintf(ip, sizeof(ip), "10.0.%d.%d", i / 256, i % 256);
		assert_int_equal(iplimit_take(l, ip, 1), 0);
	}
	assert_int_equal(iplimit_addresses(l), 300);
	/* Release in another order than taken: the chain stays intact. */
	for (int i = 299; i >= 0; i -= 2) {
		snprintf(ip, sizeof(ip), "10.0.%d.%d", i / 256, i % 256);
		iplimit_release(l, ip);
	}
	assert_int_equal(iplimit_addresses(l), 150);
	for (int i = 0; i < 300; i++) {
		snprintf(ip, sizeof(ip), "10.0.%d.%d", i / 256, i % 256);
		assert_int_equal(iplimit_count(l, ip), (unsigned)(i % 2 == 0));
		if (i % 2 == 0)
			iplimit_release(l, ip);
	}
	assert_int_equal(iplimit_addresses(l), 0);
	/* Releasing an address never counted changes nothing. */
	iplimit_release(l, "10.9.9.9");
	assert_int_equal(iplimit_addresses(l), 0);
	iplimit_destroy(&l);
}

static void test_bad_input(void **state)
{
	char longip[100];
	struct iplimit *l = iplimit_new(8, 3);

	(void)state;
	assert_null(iplimit_new(0, 1));
	memset(longip, 'a', sizeof(longip) - 1);
	longip[sizeof(longip) - 1] = '\0';
	assert_int_equal(iplimit_take(l, longip, 0), -1);
	assert_int_equal(iplimit_addresses(l), 0);
	iplimit_destroy(&l);
	iplimit_destroy(&l); /* idempotent on NULL */
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_bound_per_address),
	    cmocka_unit_test(test_entries_go_when_unused),
	    cmocka_unit_test(test_bad_input),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
