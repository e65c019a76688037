/*
 * test_reaper — deferred frees (proxy/reaper.c): nothing is freed at
 * reaper_defer, reaper_run frees everything newest first, a free that
 * defers another object is served by the same run, and an empty run frees
 * nothing. Links reaper.o only.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>

#include "reaper.h"

struct obj {
	struct defer defer; /* first: fn casts back */
	int id;
	struct obj *child;     /* deferred by this one's free */
	struct reaper *reaper; /* where to defer the child */
};

static int freed[8];
static size_t nfreed;

static void obj_free(struct defer *d)
{
	struct obj *o = (struct obj *)d;

	assert_true(nfreed < 8);
	freed[nfreed++] = o->id;
	if (o->child != NULL)
		reaper_defer(o->reaper, &o->child->defer);
	free(o);
}

static struct obj *obj_new(int id)
{
	struct obj *o = calloc(1, sizeof(*o));

	assert_non_null(o);
	o->id = id;
	o->defer.fn = obj_free;
	return o;
}

static void test_newest_first_and_not_before_run(void **state)
{
	struct reaper r;

	(void)state;
	nfreed = 0;
	reaper_init(&r);
	assert_int_equal(reaper_run(&r), 0);
	for (int i = 1; i <= 3; i++)
		reaper_defer(&r, &obj_new(i)->defer);
	assert_int_equal(nfreed, 0);
	assert_int_equal(reaper_run(&r), 3);
	assert_int_equal(nfreed, 3);
	assert_int_equal(freed[0], 3);
	assert_int_equal(freed[1], 2);
	assert_int_equal(freed[2], 1);
	assert_int_equal(reaper_run(&r), 0);
}

static void test_free_that_defers_is_served_by_the_same_run(void **state)
{
	struct reaper r;
	struct obj *parent = obj_new(1), *child = obj_new(2);

	(void)state;
	nfreed = 0;
	reaper_init(&r);
	parent->child = child;
	parent->reaper = &r;
	reaper_defer(&r, &parent->defer);
	assert_int_equal(reaper_run(&r), 2);
	assert_int_equal(freed[0], 1);
	assert_int_equal(freed[1], 2);
	assert_int_equal(reaper_run(&r), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_newest_first_and_not_before_run),
	    cmocka_unit_test(test_free_that_defers_is_served_by_the_same_run),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
