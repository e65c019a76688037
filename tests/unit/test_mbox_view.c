/*
 * test_mbox_view — the mailbox view: feeding it (EXISTS, EXPUNGE, VANISHED,
 * FETCH) and refusing what breaks its invariants; the diff's exact lines on
 * table cases; and a randomized check that applying the diff, line by line
 * as a client would, to the old state gives the new one, for many seeds.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "mbox_view.h"

#define S MBOX_F_SEEN
#define A MBOX_F_ANSWERED
#define F MBOX_F_FLAGGED
#define D MBOX_F_DELETED
#define R MBOX_F_DRAFT

/* A view with UIDVALIDITY uv and messages uids[i] (0 = unknown), flags[i]
 * (flags NULL: none). */
static struct mbox_view *mk(uint32_t uv, uint32_t n, const uint32_t *uids, const unsigned *flags)
{
	struct mbox_view *v;

	assert_int_equal(mbox_view_init(&v), 0);
	mbox_view_set_uidvalidity(v, uv);
	assert_int_equal(mbox_view_exists(v, n), 0);
	for (uint32_t i = 0; i < n; i++) {
		assert_int_equal(
		    mbox_view_fetch(v, i + 1, uids[i], flags != NULL, flags ? flags[i] : 0), 0);
	}
	return v;
}

/* diff(old, now, qresync) must be 0 with exactly want. */
static void diff_is(const struct mbox_view *old, const struct mbox_view *now, bool qresync,
                    const char *want)
{
	char *out = NULL;
	size_t len = 0;

	assert_int_equal(mbox_view_diff(old, now, qresync, &out, &len), 0);
	assert_non_null(out);
	assert_string_equal(out, want);
	assert_int_equal(len, strlen(want));
	free(out);
}

static void diff_fails(const struct mbox_view *old, const struct mbox_view *now, bool qresync)
{
	char *out = (char *)1;
	size_t len = 1;

	assert_int_equal(mbox_view_diff(old, now, qresync, &out, &len), -1);
	assert_null(out);
	assert_int_equal(len, 0);
}

/* ---- feeding ---- */

static void test_init_reset_destroy(void **state)
{
	struct mbox_view *v;
	static const uint32_t u[] = {1, 2, 3};

	(void)state;
	v = mk(7, 3, u, NULL);
	mbox_view_set_uidnext(v, 4);
	mbox_view_set_highestmodseq(v, 99);
	assert_int_equal(mbox_view_count(v), 3);
	assert_int_equal(mbox_view_uidvalidity(v), 7);
	assert_int_equal(mbox_view_uidnext(v), 4);
	assert_int_equal(mbox_view_highestmodseq(v), 99);
	mbox_view_reset(v);
	assert_int_equal(mbox_view_count(v), 0);
	assert_int_equal(mbox_view_uidvalidity(v), 0);
	assert_int_equal(mbox_view_uidnext(v), 0);
	assert_int_equal(mbox_view_highestmodseq(v), 0);
	assert_true(mbox_view_uids_known(v));
	mbox_view_destroy(&v);
	assert_null(v);
	mbox_view_destroy(&v);
	mbox_view_destroy(NULL);
}

static void test_exists(void **state)
{
	struct mbox_view *v;

	(void)state;
	assert_int_equal(mbox_view_init(&v), 0);
	assert_int_equal(mbox_view_exists(v, 0), 0);
	assert_int_equal(mbox_view_exists(v, 3), 0);
	assert_int_equal(mbox_view_count(v), 3);
	assert_false(mbox_view_uids_known(v));
	assert_int_equal(mbox_view_uid(v, 3), 0);
	/* Same count again is fine; shrinking is not; nor a huge count. */
	assert_int_equal(mbox_view_exists(v, 3), 0);
	assert_int_equal(mbox_view_exists(v, 2), -1);
	assert_int_equal(mbox_view_exists(v, MBOX_VIEW_MAX + 1), -1);
	assert_int_equal(mbox_view_exists(v, UINT32_MAX), -1);
	assert_int_equal(mbox_view_count(v), 3);
	/* Growth past the first allocation keeps what was there. */
	assert_int_equal(mbox_view_fetch(v, 1, 10, true, S), 0);
	assert_int_equal(mbox_view_exists(v, 1000), 0);
	assert_int_equal(mbox_view_uid(v, 1), 10);
	assert_int_equal(mbox_view_flags(v, 1), S);
	assert_int_equal(mbox_view_uid(v, 1000), 0);
	assert_int_equal(mbox_view_flags(v, 1000), 0);
	assert_int_equal(mbox_view_uid(v, 0), 0);
	assert_int_equal(mbox_view_uid(v, 1001), 0);
	mbox_view_destroy(&v);
}

static void test_fetch_rules(void **state)
{
	struct mbox_view *v;

	(void)state;
	assert_int_equal(mbox_view_init(&v), 0);
	mbox_view_set_uidnext(v, 5);
	assert_int_equal(mbox_view_exists(v, 4), 0);
	assert_int_equal(mbox_view_fetch(v, 0, 1, false, 0), -1);
	assert_int_equal(mbox_view_fetch(v, 5, 1, false, 0), -1);
	/* Out of order is fine as long as the known UIDs ascend. */
	assert_int_equal(mbox_view_fetch(v, 3, 30, false, 0), 0);
	assert_int_equal(mbox_view_fetch(v, 1, 30, false, 0), -1);
	assert_int_equal(mbox_view_fetch(v, 4, 30, false, 0), -1);
	assert_int_equal(mbox_view_fetch(v, 2, 29, false, 0), 0);
	assert_int_equal(mbox_view_fetch(v, 1, 29, false, 0), -1);
	assert_int_equal(mbox_view_fetch(v, 1, 1, true, S | F | 0x80), 0);
	assert_int_equal(mbox_view_flags(v, 1), S | F); /* other bits dropped */
	/* The same UID again is fine, another one is not. */
	assert_int_equal(mbox_view_fetch(v, 3, 30, true, D), 0);
	assert_int_equal(mbox_view_fetch(v, 3, 31, true, 0), -1);
	assert_int_equal(mbox_view_flags(v, 3), D);
	/* Flags only, UID 0 = not given. */
	assert_int_equal(mbox_view_fetch(v, 4, 0, true, R), 0);
	assert_int_equal(mbox_view_uid(v, 4), 0);
	assert_int_equal(mbox_view_flags(v, 4), R);
	assert_int_equal(mbox_view_fetch(v, 4, 40, false, 0), 0);
	assert_int_equal(mbox_view_flags(v, 4), R);
	assert_true(mbox_view_uids_known(v));
	/* UIDNEXT follows the UIDs seen. */
	assert_int_equal(mbox_view_uidnext(v), 41);
	mbox_view_destroy(&v);
}

static void test_expunge(void **state)
{
	static const uint32_t u[] = {1, 2, 3, 4, 5};
	struct mbox_view *v;

	(void)state;
	v = mk(1, 5, u, NULL);
	assert_int_equal(mbox_view_expunge(v, 0), -1);
	assert_int_equal(mbox_view_expunge(v, 6), -1);
	/* RFC 3501 7.4.1: "* 3 EXPUNGE" three times removes 3, 4, 5. */
	assert_int_equal(mbox_view_expunge(v, 3), 0);
	assert_int_equal(mbox_view_expunge(v, 3), 0);
	assert_int_equal(mbox_view_expunge(v, 3), 0);
	assert_int_equal(mbox_view_expunge(v, 3), -1);
	assert_int_equal(mbox_view_count(v), 2);
	assert_int_equal(mbox_view_uid(v, 2), 2);
	assert_int_equal(mbox_view_expunge(v, 1), 0);
	assert_int_equal(mbox_view_uid(v, 1), 2);
	mbox_view_destroy(&v);
}

static void test_expunge_keeps_tail_order(void **state)
{
	static const uint32_t u[] = {10, 20, 0, 0};
	struct mbox_view *v;

	(void)state;
	v = mk(1, 4, u, NULL);
	/* The last known UID (20) goes: the unknown tail may now take any
	 * UID above 10, and must still ascend. */
	assert_int_equal(mbox_view_expunge(v, 2), 0);
	assert_int_equal(mbox_view_fetch(v, 2, 10, false, 0), -1);
	assert_int_equal(mbox_view_fetch(v, 3, 15, false, 0), 0);
	assert_int_equal(mbox_view_fetch(v, 2, 15, false, 0), -1);
	assert_int_equal(mbox_view_fetch(v, 2, 11, false, 0), 0);
	mbox_view_destroy(&v);
}

static void test_vanished(void **state)
{
	static const uint32_t u[] = {2, 4, 5, 6, 9};
	struct mbox_view *v;

	(void)state;
	v = mk(1, 5, u, NULL);
	assert_int_equal(mbox_view_vanished(v, 0, 3), -1);
	assert_int_equal(mbox_view_vanished(v, 5, 4), -1);
	assert_int_equal(mbox_view_count(v), 5);
	/* UIDs not present are ignored. */
	assert_int_equal(mbox_view_vanished(v, 7, 8), 0);
	assert_int_equal(mbox_view_count(v), 5);
	assert_int_equal(mbox_view_vanished(v, 3, 5), 0);
	assert_int_equal(mbox_view_count(v), 3);
	assert_int_equal(mbox_view_uid(v, 1), 2);
	assert_int_equal(mbox_view_uid(v, 2), 6);
	assert_int_equal(mbox_view_uid(v, 3), 9);
	assert_int_equal(mbox_view_vanished(v, 9, 9), 0);
	assert_int_equal(mbox_view_vanished(v, 1, UINT32_MAX), 0);
	assert_int_equal(mbox_view_count(v), 0);
	mbox_view_destroy(&v);
}

static void test_vanished_unknown_uids(void **state)
{
	static const uint32_t u[] = {2, 0, 8, 0};
	struct mbox_view *v;

	(void)state;
	v = mk(1, 4, u, NULL);
	/* The unknown at seq 2 is one of 3..7, the one at seq 4 above 8. */
	assert_int_equal(mbox_view_vanished(v, 1, 2), 0);
	assert_int_equal(mbox_view_count(v), 3);
	assert_int_equal(mbox_view_vanished(v, 8, 8), 0);
	assert_int_equal(mbox_view_count(v), 2);
	/* Now seq 1 is unknown above 0 and seq 2 too: any range is unclear. */
	assert_int_equal(mbox_view_vanished(v, 3, 3), -1);
	assert_int_equal(mbox_view_count(v), 2);
	mbox_view_destroy(&v);

	v = mk(1, 4, u, NULL);
	assert_int_equal(mbox_view_vanished(v, 3, 3), -1);
	assert_int_equal(mbox_view_vanished(v, 7, 8), -1);
	assert_int_equal(mbox_view_vanished(v, 9, 9), -1);
	assert_int_equal(mbox_view_count(v), 4);
	mbox_view_destroy(&v);
}

static void test_clone(void **state)
{
	static const uint32_t u[] = {1, 2, 3};
	static const unsigned fl[] = {S, 0, F};
	struct mbox_view *v, *c;

	(void)state;
	v = mk(5, 3, u, fl);
	mbox_view_set_highestmodseq(v, 12);
	assert_int_equal(mbox_view_clone(v, &c), 0);
	assert_int_equal(mbox_view_expunge(v, 1), 0);
	assert_int_equal(mbox_view_count(c), 3);
	assert_int_equal(mbox_view_uid(c, 1), 1);
	assert_int_equal(mbox_view_flags(c, 3), F);
	assert_int_equal(mbox_view_highestmodseq(c), 12);
	diff_is(c, c, false, "");
	assert_int_equal(mbox_view_exists(c, 4), 0); /* a clone grows too */
	assert_int_equal(mbox_view_fetch(c, 4, 9, true, S), 0);
	diff_is(c, v, false, "* 4 EXPUNGE\r\n* 1 EXPUNGE\r\n");
	mbox_view_destroy(&v);
	mbox_view_destroy(&c);
	/* An empty one. */
	assert_int_equal(mbox_view_init(&v), 0);
	assert_int_equal(mbox_view_clone(v, &c), 0);
	assert_int_equal(mbox_view_count(c), 0);
	mbox_view_destroy(&v);
	mbox_view_destroy(&c);
}

/* ---- the diff, table cases ---- */

struct diff_case {
	const char *name;
	uint32_t old_n;
	uint32_t old_uid[8];
	unsigned old_fl[8];
	uint32_t now_n;
	uint32_t now_uid[8];
	unsigned now_fl[8];
	const char *plain;   /* without QRESYNC */
	const char *qresync; /* with */
};

static const struct diff_case diff_cases[] = {
    {"nothing", 3, {1, 2, 3}, {0}, 3, {1, 2, 3}, {0}, "", ""},
    {"empty", 0, {0}, {0}, 0, {0}, {0}, "", ""},
    {"expunge middle", 3, {1, 2, 3}, {0}, 2, {1, 3}, {0}, "* 2 EXPUNGE\r\n", "* VANISHED 2\r\n"},
    {"expunge first", 3, {1, 2, 3}, {0}, 2, {2, 3}, {0}, "* 1 EXPUNGE\r\n", "* VANISHED 1\r\n"},
    {"expunge last", 3, {1, 2, 3}, {0}, 2, {1, 2}, {0}, "* 3 EXPUNGE\r\n", "* VANISHED 3\r\n"},
    {"expunge all",
     2,
     {4, 9},
     {0},
     0,
     {0},
     {0},
     "* 2 EXPUNGE\r\n* 1 EXPUNGE\r\n",
     "* VANISHED 4,9\r\n"},
    {"several, highest first",
     7,
     {3, 4, 5, 6, 9, 10, 12},
     {0},
     3,
     {6, 10, 12},
     {0},
     "* 5 EXPUNGE\r\n* 3 EXPUNGE\r\n* 2 EXPUNGE\r\n* 1 EXPUNGE\r\n",
     "* VANISHED 3:5,9\r\n"},
    {"runs by uid, not seq",
     4,
     {1, 3, 5, 6},
     {0},
     1,
     {1},
     {0},
     "* 4 EXPUNGE\r\n* 3 EXPUNGE\r\n* 2 EXPUNGE\r\n",
     "* VANISHED 3,5:6\r\n"},
    {"new messages", 2, {1, 2}, {0}, 4, {1, 2, 7, 8}, {0}, "* 4 EXISTS\r\n", "* 4 EXISTS\r\n"},
    {"new into empty", 0, {0}, {0}, 1, {5}, {0}, "* 1 EXISTS\r\n", "* 1 EXISTS\r\n"},
    {"flags",
     3,
     {1, 2, 3},
     {S, 0, F},
     3,
     {1, 2, 3},
     {S, S | A | F | D | R, 0},
     "* 2 FETCH (FLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft))\r\n"
     "* 3 FETCH (FLAGS ())\r\n",
     "* 2 FETCH (UID 2 FLAGS (\\Seen \\Answered \\Flagged \\Deleted \\Draft))\r\n"
     "* 3 FETCH (UID 3 FLAGS ())\r\n"},
    {"expunge and new, same count",
     3,
     {1, 2, 3},
     {0},
     3,
     {1, 3, 4},
     {0},
     "* 2 EXPUNGE\r\n* 3 EXISTS\r\n",
     "* VANISHED 2\r\n* 3 EXISTS\r\n"},
    {"combined",
     5,
     {2, 4, 6, 8, 10},
     {S, S, 0, F, 0},
     4,
     {4, 8, 11, 12},
     {S | A, F, 0, S},
     "* 5 EXPUNGE\r\n* 3 EXPUNGE\r\n* 1 EXPUNGE\r\n* 4 EXISTS\r\n"
     "* 1 FETCH (FLAGS (\\Seen \\Answered))\r\n",
     "* VANISHED 2,6,10\r\n* 4 EXISTS\r\n"
     "* 1 FETCH (UID 4 FLAGS (\\Seen \\Answered))\r\n"},
    {"new message flags not sent",
     1,
     {1},
     {0},
     2,
     {1, 2},
     {0, S},
     "* 2 EXISTS\r\n",
     "* 2 EXISTS\r\n"},
};

static void test_diff_table(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(diff_cases) / sizeof(diff_cases[0]); i++) {
		const struct diff_case *c = &diff_cases[i];
		struct mbox_view *old = mk(42, c->old_n, c->old_uid, c->old_fl);
		struct mbox_view *now = mk(42, c->now_n, c->now_uid, c->now_fl);

		print_message("case: %s\n", c->name);
		diff_is(old, now, false, c->plain);
		diff_is(old, now, true, c->qresync);
		mbox_view_destroy(&old);
		mbox_view_destroy(&now);
	}
}

static void test_diff_refusals(void **state)
{
	static const uint32_t u[] = {1, 2, 3};
	static const uint32_t unk[] = {1, 2, 0};
	static const uint32_t below[] = {1, 2, 4}; /* 2 new but below 3 */
	static const uint32_t u5[] = {1, 5};
	struct mbox_view *a = mk(7, 3, u, NULL);
	struct mbox_view *b = mk(8, 3, u, NULL);
	struct mbox_view *c = mk(7, 3, unk, NULL);
	struct mbox_view *z = mk(0, 3, u, NULL);
	struct mbox_view *old5 = mk(7, 2, u5, NULL);
	struct mbox_view *nb = mk(7, 3, below, NULL);

	(void)state;
	diff_fails(a, b, false); /* UIDVALIDITY changed */
	diff_fails(a, b, true);
	diff_fails(z, z, false); /* UIDVALIDITY unknown */
	diff_fails(a, c, false); /* unknown UID in now */
	diff_fails(c, a, true);  /* ... or in old */
	/* now has 2 and 4, old had 1 and 5: 2 cannot be new (below 5). */
	diff_fails(old5, nb, false);
	diff_fails(old5, nb, true);
	/* The other way round is fine: 2 and 4 went, 5 is new. */
	diff_is(nb, old5, false, "* 3 EXPUNGE\r\n* 2 EXPUNGE\r\n* 2 EXISTS\r\n");
	mbox_view_destroy(&a);
	mbox_view_destroy(&b);
	mbox_view_destroy(&c);
	mbox_view_destroy(&z);
	mbox_view_destroy(&old5);
	mbox_view_destroy(&nb);
}

/* ---- randomized: apply the diff to old, compare with new ---- */

#define RND_MAX 60

struct ref {
	uint32_t n;
	uint32_t uid[4 * RND_MAX];
	unsigned fl[4 * RND_MAX];
};

static uint64_t rnd_state;

static uint32_t rnd(uint32_t bound)
{
	/* xorshift64*: reproducible from the seed, no libc state. */
	rnd_state ^= rnd_state >> 12;
	rnd_state ^= rnd_state << 25;
	rnd_state ^= rnd_state >> 27;
	return (uint32_t)((rnd_state * 2685821657736338717ull) >> 33) % bound;
}

static void ref_del(struct ref *r, uint32_t i)
{
	memmove(&r->uid[i], &r->uid[i + 1], (r->n - i - 1) * sizeof(r->uid[0]));
	memmove(&r->fl[i], &r->fl[i + 1], (r->n - i - 1) * sizeof(r->fl[0]));
	r->n--;
}

static void view_equals_ref(const struct mbox_view *v, const struct ref *r)
{
	assert_int_equal(mbox_view_count(v), r->n);
	for (uint32_t i = 0; i < r->n; i++) {
		assert_int_equal(mbox_view_uid(v, i + 1), r->uid[i]);
		assert_int_equal(mbox_view_flags(v, i + 1), r->fl[i]);
	}
}

static uint32_t parse_u32(const char **p)
{
	char *end;
	unsigned long x = strtoul(*p, &end, 10);

	assert_true(end != *p && x <= UINT32_MAX);
	*p = end;
	return (uint32_t)x;
}

static unsigned parse_flags(const char **p)
{
	static const struct {
		const char *name;
		unsigned bit;
	} names[] = {
	    {"\\Seen", S}, {"\\Answered", A}, {"\\Flagged", F}, {"\\Deleted", D}, {"\\Draft", R}};
	unsigned fl = 0;

	assert_memory_equal(*p, "FLAGS (", 7);
	*p += 7;
	while (**p != ')') {
		size_t k;

		for (k = 0; k < sizeof(names) / sizeof(names[0]); k++) {
			size_t len = strlen(names[k].name);

			if (strncmp(*p, names[k].name, len) == 0) {
				assert_false(fl & names[k].bit); /* no repeats */
				fl |= names[k].bit;
				*p += len;
				break;
			}
		}
		assert_true(k < sizeof(names) / sizeof(names[0]));
		if (**p == ' ')
			(*p)++;
	}
	(*p)++;
	return fl;
}

/* Apply the lines in out to c as a client holding c would. Checks the form
 * of each line on the way: EXPUNGEs strictly descending, each valid. */
static void apply(struct ref *c, const char *out, bool qresync)
{
	const char *p = out;
	uint32_t last_expunge = UINT32_MAX;

	while (*p != '\0') {
		const char *eol = strstr(p, "\r\n");

		assert_non_null(eol);
		assert_memory_equal(p, "* ", 2);
		p += 2;
		if (strncmp(p, "VANISHED ", 9) == 0) {
			assert_true(qresync);
			p += 9;
			for (;;) {
				uint32_t lo = parse_u32(&p), hi = lo;

				if (*p == ':') {
					p++;
					hi = parse_u32(&p);
					assert_true(lo < hi);
				}
				for (uint32_t i = c->n; i-- > 0;) {
					if (c->uid[i] >= lo && c->uid[i] <= hi)
						ref_del(c, i);
				}
				if (*p != ',')
					break;
				p++;
			}
		} else {
			uint32_t n = parse_u32(&p);

			if (strncmp(p, " EXPUNGE", 8) == 0) {
				assert_false(qresync);
				assert_true(n >= 1 && n <= c->n && n < last_expunge);
				last_expunge = n;
				ref_del(c, n - 1);
				p += 8;
			} else if (strncmp(p, " EXISTS", 7) == 0) {
				assert_true(n > c->n);
				while (c->n < n) {
					c->uid[c->n] = 0;
					c->fl[c->n++] = 0;
				}
				p += 7;
			} else {
				assert_memory_equal(p, " FETCH (", 8);
				p += 8;
				assert_true(n >= 1 && n <= c->n);
				if (qresync) {
					assert_memory_equal(p, "UID ", 4);
					p += 4;
					assert_int_equal(parse_u32(&p), c->uid[n - 1]);
					assert_int_equal(*p++, ' ');
				}
				c->fl[n - 1] = parse_flags(&p);
				assert_int_equal(*p++, ')');
			}
		}
		assert_ptr_equal(p, eol);
		p = eol + 2;
	}
}

static struct mbox_view *view_of(const struct ref *r)
{
	return mk(3, r->n, r->uid, r->fl);
}

static void one_seed(uint64_t seed)
{
	struct ref old, nw, c;
	struct mbox_view *vold, *vnow;
	uint32_t next_uid = 1, old_max;
	uint32_t nops;

	rnd_state = seed * 0x9E3779B97F4A7C15ull + 1;
	/* Old: up to RND_MAX messages, UIDs with random gaps. */
	old.n = rnd(RND_MAX + 1);
	for (uint32_t i = 0; i < old.n; i++) {
		next_uid += 1 + (rnd(4) == 0 ? rnd(5) : 0);
		old.uid[i] = next_uid;
		old.fl[i] = rnd(4) == 0 ? rnd(MBOX_F_ALL + 1) : 0;
	}
	old_max = old.n > 0 ? old.uid[old.n - 1] : 0;
	vold = view_of(&old);
	view_equals_ref(vold, &old);

	/* New: random operations on a copy, mirrored through the view's own
	 * feeding functions on a clone of old. */
	nw = old;
	assert_int_equal(mbox_view_clone(vold, &vnow), 0);
	nops = rnd(2 * RND_MAX);
	for (uint32_t k = 0; k < nops; k++) {
		uint32_t op = rnd(10), i;

		if (op < 3 && nw.n > 0) { /* expunge one */
			i = rnd(nw.n);
			ref_del(&nw, i);
			assert_int_equal(mbox_view_expunge(vnow, i + 1), 0);
		} else if (op == 3 && nw.n > 0) { /* vanished, a UID range */
			uint32_t lo = 1 + rnd(next_uid + 2), hi = lo + rnd(4);

			for (i = nw.n; i-- > 0;) {
				if (nw.uid[i] >= lo && nw.uid[i] <= hi)
					ref_del(&nw, i);
			}
			assert_int_equal(mbox_view_vanished(vnow, lo, hi), 0);
		} else if (op < 6 && nw.n < 3 * RND_MAX) { /* new messages, fresh UIDs */
			uint32_t add = 1 + rnd(3);

			assert_int_equal(mbox_view_exists(vnow, nw.n + add), 0);
			for (i = 0; i < add; i++) {
				next_uid += 1 + rnd(2);
				nw.uid[nw.n] = next_uid;
				nw.fl[nw.n] = rnd(2) ? S : 0;
				assert_int_equal(
				    mbox_view_fetch(vnow, nw.n + 1, next_uid, true, nw.fl[nw.n]),
				    0);
				nw.n++;
			}
		} else if (nw.n > 0) { /* flag change */
			i = rnd(nw.n);
			nw.fl[i] = rnd(MBOX_F_ALL + 1);
			assert_int_equal(mbox_view_fetch(vnow, i + 1, 0, true, nw.fl[i]), 0);
		}
	}
	view_equals_ref(vnow, &nw);

	for (int q = 0; q < 2; q++) {
		char *out;
		size_t len;

		assert_int_equal(mbox_view_diff(vold, vnow, q == 1, &out, &len), 0);
		assert_int_equal(len, strlen(out));
		c = old;
		apply(&c, out, q == 1);
		free(out);
		/* Same count; surviving messages keep UID and have now's flags;
		 * the unknown ones are exactly the new ones. */
		assert_int_equal(c.n, nw.n);
		for (uint32_t i = 0; i < nw.n; i++) {
			if (nw.uid[i] > old_max) {
				assert_int_equal(c.uid[i], 0);
			} else {
				assert_int_equal(c.uid[i], nw.uid[i]);
				assert_int_equal(c.fl[i], nw.fl[i]);
			}
		}
	}
	mbox_view_destroy(&vold);
	mbox_view_destroy(&vnow);
}

static void test_diff_random(void **state)
{
	(void)state;
	for (uint64_t seed = 1; seed <= 3000; seed++)
		one_seed(seed);
}

/* A big mailbox: EXISTS then FETCH 1:* (UID FLAGS) in order stays linear
 * (known_end), and a diff over it is exact. */
static void test_big_fill(void **state)
{
	const uint32_t n = 200000;
	struct mbox_view *v, *w;
	char *out;
	size_t len;

	(void)state;
	assert_int_equal(mbox_view_init(&v), 0);
	mbox_view_set_uidvalidity(v, 1);
	assert_int_equal(mbox_view_exists(v, n), 0);
	for (uint32_t i = 0; i < n; i++)
		assert_int_equal(mbox_view_fetch(v, i + 1, 2 * i + 1, true, 0), 0);
	assert_true(mbox_view_uids_known(v));
	assert_int_equal(mbox_view_clone(v, &w), 0);
	assert_int_equal(mbox_view_vanished(w, 1, 2 * (n / 2)), 0);
	assert_int_equal(mbox_view_count(w), n / 2);
	assert_int_equal(mbox_view_diff(v, w, true, &out, &len), 0);
	/* Odd UIDs 1..n-1 (every other one): no runs to join. */
	assert_memory_equal(out, "* VANISHED 1,3,5,", 17);
	free(out);
	assert_int_equal(mbox_view_diff(v, w, false, &out, &len), 0);
	assert_memory_equal(out, "* 100000 EXPUNGE\r\n* 99999 EXPUNGE\r\n", 35);
	free(out);
	mbox_view_destroy(&v);
	mbox_view_destroy(&w);
}

/* ---- compact storage ---- */

static void check_ok(const struct mbox_view *v)
{
	const char *why = NULL;

	if (mbox_view_check(v, &why) != 0)
		fail_msg("view invariant broken: %s", why);
}

/* EXISTS n then FETCH 1:* (UID FLAGS) in order, UIDs first_uid.. */
static struct mbox_view *mk_fill(uint32_t n, uint32_t first_uid)
{
	struct mbox_view *v;

	assert_int_equal(mbox_view_init(&v), 0);
	mbox_view_set_uidvalidity(v, 1);
	assert_int_equal(mbox_view_exists(v, n), 0);
	for (uint32_t i = 0; i < n; i++)
		assert_int_equal(mbox_view_fetch(v, i + 1, first_uid + i, true, 0), 0);
	return v;
}

/* 200,000 messages of consecutive UIDs and the same flags are one run: far
 * less than a byte a message; changes split runs and undoing them merges. */
static void test_compact_storage(void **state)
{
	const uint32_t n = 200000;
	struct mbox_view *v = mk_fill(n, 1), *c;

	(void)state;
	check_ok(v);
	assert_int_equal(mbox_view_runs(v), 1);
	assert_true(mbox_view_mem(v) < 1024);
	assert_true(mbox_view_uids_known(v));
	assert_int_equal(mbox_view_uid(v, 123456), 123456);
	/* A flag in the middle: three runs; back: one again. */
	assert_int_equal(mbox_view_fetch(v, 100000, 0, true, S), 0);
	assert_int_equal(mbox_view_runs(v), 3);
	assert_int_equal(mbox_view_flags(v, 100000), S);
	assert_int_equal(mbox_view_flags(v, 99999), 0);
	assert_int_equal(mbox_view_fetch(v, 100000, 0, true, 0), 0);
	assert_int_equal(mbox_view_runs(v), 1);
	/* Expunge inside the run: UIDs 1..49999 and 50001..: two runs. */
	assert_int_equal(mbox_view_expunge(v, 50000), 0);
	check_ok(v);
	assert_int_equal(mbox_view_runs(v), 2);
	assert_int_equal(mbox_view_uid(v, 49999), 49999);
	assert_int_equal(mbox_view_uid(v, 50000), 50001);
	assert_int_equal(mbox_view_count(v), n - 1);
	/* At either end of a run: no new run. */
	assert_int_equal(mbox_view_expunge(v, 1), 0);
	assert_int_equal(mbox_view_expunge(v, 49998), 0);
	assert_int_equal(mbox_view_runs(v), 2);
	assert_int_equal(mbox_view_uid(v, 1), 2);
	assert_int_equal(mbox_view_uid(v, 49997), 49998);
	assert_int_equal(mbox_view_uid(v, 49998), 50001);
	/* VANISHED strictly inside a run splits it. */
	assert_int_equal(mbox_view_clone(v, &c), 0);
	assert_int_equal(mbox_view_vanished(c, 100000, 100009), 0);
	check_ok(c);
	assert_int_equal(mbox_view_runs(c), 3);
	assert_int_equal(mbox_view_count(c), n - 3 - 10);
	assert_int_equal(mbox_view_uid(c, 100000 - 4), 99999);
	assert_int_equal(mbox_view_uid(c, 100000 - 3), 100010);
	/* A VANISHED over everything but the two ends. */
	assert_int_equal(mbox_view_vanished(c, 3, n - 1), 0);
	check_ok(c);
	assert_int_equal(mbox_view_count(c), 2);
	assert_int_equal(mbox_view_uid(c, 1), 2);
	assert_int_equal(mbox_view_uid(c, 2), n);
	assert_true(mbox_view_mem(c) < 2048); /* the room went back */
	mbox_view_destroy(&c);
	/* Unknown UIDs: EXISTS appends to the unknown run at the end. */
	assert_int_equal(mbox_view_exists(v, n + 1000), 0);
	assert_int_equal(mbox_view_runs(v), 3);
	assert_int_equal(mbox_view_exists(v, n + 2000), 0);
	assert_int_equal(mbox_view_runs(v), 3);
	assert_false(mbox_view_uids_known(v));
	check_ok(v);
	mbox_view_destroy(&v);
}

/* Unknown runs split by flags-only FETCHes, merged by expunges between. */
static void test_unknown_runs(void **state)
{
	struct mbox_view *v;

	(void)state;
	assert_int_equal(mbox_view_init(&v), 0);
	assert_int_equal(mbox_view_exists(v, 5), 0);
	assert_int_equal(mbox_view_fetch(v, 3, 0, true, S), 0);
	assert_int_equal(mbox_view_runs(v), 3);
	/* Expunging the odd one out leaves two unknown runs alike: one. */
	assert_int_equal(mbox_view_expunge(v, 3), 0);
	assert_int_equal(mbox_view_runs(v), 1);
	check_ok(v);
	/* A UID for message 2 of 4 unknown ones: at least 2, at most
	 * UINT32_MAX - 2 (two more messages need room above). */
	assert_int_equal(mbox_view_fetch(v, 2, 1, false, 0), -1);
	assert_int_equal(mbox_view_fetch(v, 2, UINT32_MAX - 1, false, 0), -1);
	assert_int_equal(mbox_view_fetch(v, 2, UINT32_MAX - 2, false, 0), 0);
	assert_int_equal(mbox_view_fetch(v, 4, UINT32_MAX, false, 0), 0);
	/* The one between has exactly one UID left. */
	assert_int_equal(mbox_view_fetch(v, 3, UINT32_MAX - 2, false, 0), -1);
	assert_int_equal(mbox_view_fetch(v, 3, UINT32_MAX, false, 0), -1);
	assert_int_equal(mbox_view_fetch(v, 3, UINT32_MAX - 1, false, 0), 0);
	check_ok(v);
	assert_int_equal(mbox_view_runs(v), 2); /* unknown 1, then 3 in a row */
	assert_int_equal(mbox_view_vanished(v, UINT32_MAX - 1, UINT32_MAX), 0);
	assert_int_equal(mbox_view_count(v), 2);
	check_ok(v);
	mbox_view_destroy(&v);
}

/* ---- randomized: the compact view against a naive array ---- */

#define NREF 300

struct nref {
	uint32_t n;
	uint32_t uid[NREF];
	unsigned fl[NREF];
	uint32_t kw[NREF];
	uint64_t ms[NREF];
	uint64_t floor;
	uint64_t hms;
};

static void nref_del(struct nref *r, uint32_t i)
{
	uint32_t k = r->n - i - 1;

	memmove(&r->uid[i], &r->uid[i + 1], k * sizeof(r->uid[0]));
	memmove(&r->fl[i], &r->fl[i + 1], k * sizeof(r->fl[0]));
	memmove(&r->kw[i], &r->kw[i + 1], k * sizeof(r->kw[0]));
	memmove(&r->ms[i], &r->ms[i + 1], k * sizeof(r->ms[0]));
	r->n--;
}

/* The UIDs message i (0-based, unknown) may take, as the view promises. */
static void nref_bounds(const struct nref *r, uint32_t i, uint64_t *lo_r, uint64_t *hi_r)
{
	uint64_t lo = i + 1, hi = (uint64_t)UINT32_MAX - (r->n - 1 - i);

	for (uint32_t j = 0; j < r->n; j++) {
		if (r->uid[j] == 0)
			continue;
		if (j < i && (uint64_t)r->uid[j] + (i - j) > lo)
			lo = (uint64_t)r->uid[j] + (i - j);
		if (j > i && (uint64_t)r->uid[j] - (j - i) < hi)
			hi = (uint64_t)r->uid[j] - (j - i);
	}
	*lo_r = lo;
	*hi_r = hi;
}

/* The fewest runs that describe r. */
static uint32_t nref_runs(const struct nref *r)
{
	uint32_t runs = 0;

	for (uint32_t i = 0; i < r->n; i++) {
		bool join =
		    i > 0 && r->fl[i] == r->fl[i - 1] && r->kw[i] == r->kw[i - 1] &&
		    r->ms[i] == r->ms[i - 1] &&
		    ((r->uid[i] == 0 && r->uid[i - 1] == 0) ||
		     (r->uid[i] != 0 && r->uid[i - 1] != 0 && r->uid[i] == r->uid[i - 1] + 1));

		if (!join)
			runs++;
	}
	return runs;
}

static void view_equals_nref(const struct mbox_view *v, const struct nref *r)
{
	bool known = true;

	check_ok(v);
	assert_int_equal(mbox_view_count(v), r->n);
	for (uint32_t i = 0; i < r->n; i++) {
		assert_int_equal(mbox_view_uid(v, i + 1), r->uid[i]);
		assert_int_equal(mbox_view_flags(v, i + 1), r->fl[i]);
		assert_int_equal(mbox_view_keywords(v, i + 1), r->kw[i]);
		assert_int_equal(mbox_view_modseq(v, i + 1), r->ms[i]);
		known = known && r->uid[i] != 0;
	}
	assert_int_equal(mbox_view_uids_known(v), known);
	assert_int_equal(mbox_view_runs(v), nref_runs(r));
	assert_int_equal(mbox_view_highestmodseq(v), r->hms);
	assert_true(mbox_view_mem(v) >= (size_t)mbox_view_runs(v) * 24);
}

static void storage_seed(uint64_t seed)
{
	static struct nref r;
	struct mbox_view *v;
	uint64_t next_ms = 10;
	unsigned bit;

	rnd_state = seed * 0x9E3779B97F4A7C15ull + 7;
	memset(&r, 0, sizeof(r));
	assert_int_equal(mbox_view_init(&v), 0);
	mbox_view_set_uidvalidity(v, 9);
	/* Three keywords, bits 0..2. */
	assert_int_equal(mbox_view_keyword(v, "$Junk", 5, &bit), 0);
	assert_int_equal(mbox_view_keyword(v, "$Forwarded", 10, &bit), 0);
	assert_int_equal(mbox_view_keyword(v, "Work", 4, &bit), 0);
	for (int op = 0; op < 250; op++) {
		uint32_t k = rnd(100), i;
		int want, got;

		if (k < 12 && r.n < NREF) { /* EXISTS */
			uint32_t add = 1 + rnd(k < 2 ? 60 : 6);

			if (r.n + add > NREF)
				add = NREF - r.n;
			for (i = 0; i < add; i++) {
				r.uid[r.n] = r.fl[r.n] = r.kw[r.n] = 0;
				r.ms[r.n++] = 0;
			}
			assert_int_equal(mbox_view_exists(v, r.n), 0);
		} else if (k < 40 && r.n > 0) { /* FETCH UID, mostly valid */
			uint64_t lo, hi, uid;

			i = rnd(r.n);
			if (r.uid[i] != 0) {
				uid = rnd(3) == 0 ? r.uid[i] + 1 : r.uid[i];
			} else {
				nref_bounds(&r, i, &lo, &hi);
				if (rnd(5) == 0 || lo > hi)
					uid = lo > 1 && rnd(2) ? lo - 1 : hi + 1;
				else
					uid = lo + (rnd(3) == 0 ? rnd(3) : 0);
				if (uid > hi && rnd(2))
					uid = hi;
			}
			if (uid == 0 || uid > UINT32_MAX)
				uid = 1;
			want = 0;
			if (r.uid[i] != 0 && r.uid[i] != uid) {
				want = -1;
			} else if (r.uid[i] == 0) {
				nref_bounds(&r, i, &lo, &hi);
				want = uid >= lo && uid <= hi ? 0 : -1;
			}
			got = mbox_view_fetch(v, i + 1, (uint32_t)uid, false, 0);
			assert_int_equal(got, want);
			if (want == 0)
				r.uid[i] = (uint32_t)uid;
		} else if (k < 55 && r.n > 0) { /* FETCH FLAGS [MODSEQ] */
			struct mbox_fetch f = {0};
			uint32_t nfl;

			i = rnd(r.n);
			f.has_flags = rnd(4) != 0;
			f.flags = rnd(3) == 0 ? rnd(MBOX_F_ALL + 1) : (rnd(2) ? S : 0);
			f.keywords = rnd(4) == 0 ? rnd(8) : 0;
			if (rnd(2))
				f.modseq = rnd(3) == 0 ? next_ms : next_ms++;
			assert_int_equal(mbox_view_fetch_msg(v, i + 1, &f), 0);
			nfl = f.flags & MBOX_F_ALL;
			if (f.has_flags) {
				if (nfl != r.fl[i] || f.keywords != r.kw[i])
					r.ms[i] = 0;
				r.fl[i] = nfl;
				r.kw[i] = f.keywords;
			}
			if (f.modseq != 0)
				r.ms[i] = f.modseq > r.floor ? f.modseq : 0;
			if (f.modseq > r.hms)
				r.hms = f.modseq;
		} else if (k < 70) { /* EXPUNGE, sometimes out of range */
			i = rnd(r.n + 2);
			want = i >= 1 && i <= r.n ? 0 : -1;
			assert_int_equal(mbox_view_expunge(v, i), want);
			if (want == 0)
				nref_del(&r, i - 1);
		} else if (k < 80) { /* VANISHED lo:hi */
			uint32_t lo = 1 + rnd(2 * NREF), hi = lo + rnd(rnd(4) == 0 ? 40 : 3);

			want = 0;
			for (i = 0; i < r.n && want == 0; i++) {
				uint64_t blo, bhi;

				if (r.uid[i] != 0)
					continue;
				nref_bounds(&r, i, &blo, &bhi);
				if (blo <= hi && bhi >= lo)
					want = -1;
			}
			assert_int_equal(mbox_view_vanished(v, lo, hi), want);
			if (want == 0) {
				for (i = r.n; i-- > 0;) {
					if (r.uid[i] >= lo && r.uid[i] <= hi)
						nref_del(&r, i);
				}
			}
		} else if (k < 85) { /* VANISHED (EARLIER) */
			uint32_t lo = 1 + rnd(2 * NREF), hi = lo + rnd(5);

			want = 0;
			for (i = 0; i < r.n; i++) {
				if (r.uid[i] >= lo && r.uid[i] <= hi)
					want = -1;
			}
			assert_int_equal(mbox_view_vanished_earlier(v, lo, hi), want);
		} else if (k < 88) { /* raise the floor */
			r.floor = rnd((uint32_t)next_ms + 1);
			if (r.floor < mbox_view_modseq_floor(v))
				r.floor = mbox_view_modseq_floor(v);
			mbox_view_set_modseq_floor(v, r.floor);
			for (i = 0; i < r.n; i++) {
				if (r.ms[i] <= r.floor)
					r.ms[i] = 0;
			}
		} else if (k < 92) { /* the clone is the same view */
			struct mbox_view *c;

			assert_int_equal(mbox_view_clone(v, &c), 0);
			mbox_view_destroy(&v);
			v = c;
		} else if (k < 96 && r.n > 0) { /* FETCH 1:* (UID) in order */
			uint64_t lo, hi;

			for (i = 0; i < r.n; i++) {
				if (r.uid[i] != 0)
					continue;
				nref_bounds(&r, i, &lo, &hi);
				if (lo > hi)
					continue;
				assert_int_equal(mbox_view_fetch(v, i + 1, (uint32_t)lo, false, 0),
				                 0);
				r.uid[i] = (uint32_t)lo;
			}
		} else if (r.n > 0) { /* refused: the view stays as it was */
			struct mbox_fetch f = {.has_flags = true, .keywords = 8};

			assert_int_equal(mbox_view_fetch_msg(v, 1, &f), -1);
			assert_int_equal(mbox_view_fetch(v, r.n + 1, 0, true, S), -1);
			assert_int_equal(mbox_view_exists(v, r.n - 1), -1);
			assert_int_equal(mbox_view_vanished(v, 5, 4), -1);
		}
		view_equals_nref(v, &r);
	}
	mbox_view_destroy(&v);
}

static void test_storage_random(void **state)
{
	(void)state;
	for (uint64_t seed = 1; seed <= 400; seed++)
		storage_seed(seed);
}

/* ---- name, read-only, status ---- */

static void test_name_and_status(void **state)
{
	static uint8_t big[MBOX_NAME_MAX + 1];
	struct mbox_view *v, *c;
	const uint8_t *p;
	size_t len;

	(void)state;
	assert_int_equal(mbox_view_init(&v), 0);
	assert_null(mbox_view_name(v, &len));
	assert_int_equal(len, 0);
	assert_int_equal(mbox_view_set_name(v, (const uint8_t *)"INBOX/Sub", 9), 0);
	assert_int_equal(mbox_view_set_name(v, big, sizeof(big)), -1);
	p = mbox_view_name(v, &len);
	assert_int_equal(len, 9);
	assert_memory_equal(p, "INBOX/Sub", 9);
	assert_int_equal(mbox_view_set_name(v, big, MBOX_NAME_MAX), 0);
	assert_int_equal(mbox_view_set_name(v, (const uint8_t *)"Drafts", 6), 0);
	mbox_view_set_readonly(v, true);
	mbox_view_set_nomodseq(v);
	assert_true(mbox_view_nomodseq(v));
	assert_int_equal(mbox_view_highestmodseq(v), 0);
	assert_int_equal(mbox_view_exists(v, 3), 0);
	assert_int_equal(mbox_view_clone(v, &c), 0);
	p = mbox_view_name(c, &len);
	assert_int_equal(len, 6);
	assert_memory_equal(p, "Drafts", 6);
	assert_true(mbox_view_readonly(c));
	assert_true(mbox_view_nomodseq(c));
	/* Clearing the messages keeps the rest; a HIGHESTMODSEQ ends NOMODSEQ. */
	mbox_view_set_flags_inexact(c);
	mbox_view_clear_messages(c);
	assert_true(mbox_view_flags_exact(c));
	assert_int_equal(mbox_view_count(c), 0);
	assert_true(mbox_view_readonly(c));
	assert_non_null(mbox_view_name(c, &len));
	mbox_view_set_highestmodseq(c, 5);
	assert_false(mbox_view_nomodseq(c));
	check_ok(c);
	mbox_view_reset(v);
	assert_null(mbox_view_name(v, &len));
	assert_false(mbox_view_readonly(v));
	assert_false(mbox_view_nomodseq(v));
	assert_int_equal(mbox_view_set_name(v, NULL, 0), 0);
	check_ok(v);
	mbox_view_destroy(&v);
	mbox_view_destroy(&c);
}

/* ---- keywords ---- */

static void test_keywords(void **state)
{
	char name[MBOX_KW_NAME_MAX + 2];
	struct mbox_view *v, *w;
	struct mbox_fetch f = {.has_flags = true, .flags = S};
	unsigned bit, b2;
	size_t len;

	(void)state;
	assert_int_equal(mbox_view_init(&v), 0);
	assert_int_equal(mbox_view_keyword(v, "$Junk", 5, &bit), 0);
	assert_int_equal(bit, 0);
	assert_int_equal(mbox_view_keyword(v, "$Junk", 5, &b2), 0);
	assert_int_equal(b2, 0);
	assert_int_equal(mbox_view_keyword(v, "$junk", 5, &b2), 0); /* bytes, not case */
	assert_int_equal(b2, 1);
	assert_int_equal(mbox_view_keyword(v, "\\Junk", 5, &b2), 0);
	assert_int_equal(b2, 2);
	/* Not atoms: the diff could not write them back. */
	assert_int_equal(mbox_view_keyword(v, "a b", 3, &b2), -1);
	assert_int_equal(mbox_view_keyword(v, "a)", 2, &b2), -1);
	assert_int_equal(mbox_view_keyword(v, "", 0, &b2), -1);
	memset(name, 'k', sizeof(name));
	assert_int_equal(mbox_view_keyword(v, name, MBOX_KW_NAME_MAX + 1, &b2), -1);
	assert_int_equal(mbox_view_keyword(v, name, MBOX_KW_NAME_MAX, &b2), 0);
	for (unsigned i = mbox_view_keyword_count(v); i < MBOX_KW_MAX; i++) {
		snprintf(name, sizeof(name), "kw%u", i);
		assert_int_equal(mbox_view_keyword(v, name, strlen(name), &b2), 0);
		assert_int_equal(b2, i);
	}
	assert_int_equal(mbox_view_keyword(v, "one-more", 8, &b2), -1);
	assert_int_equal(mbox_view_keyword(v, "$Junk", 5, &b2), 0); /* old ones still */
	assert_memory_equal(mbox_view_keyword_name(v, 1, &len), "$junk", 5);
	assert_int_equal(len, 5);
	assert_null(mbox_view_keyword_name(v, MBOX_KW_MAX, &len));
	/* FETCH with keywords; a bit the table lacks is refused. */
	assert_int_equal(mbox_view_exists(v, 2), 0);
	f.keywords = 1u << 0 | 1u << (MBOX_KW_MAX - 1);
	assert_int_equal(mbox_view_fetch_msg(v, 1, &f), 0);
	assert_int_equal(mbox_view_keywords(v, 1), f.keywords);
	assert_int_equal(mbox_view_flags(v, 1), S);
	f.keywords = 1u << MBOX_KW_MAX;
	assert_int_equal(mbox_view_fetch_msg(v, 2, &f), -1);
	/* The legacy FETCH replaces the keywords too (FLAGS is the whole set). */
	assert_int_equal(mbox_view_fetch(v, 1, 0, true, S), 0);
	assert_int_equal(mbox_view_keywords(v, 1), 0);
	assert_int_equal(mbox_view_clone(v, &w), 0);
	assert_int_equal(mbox_view_keyword_count(w), MBOX_KW_MAX);
	assert_memory_equal(mbox_view_keyword_name(w, 2, &len), "\\Junk", 5);
	check_ok(w);
	mbox_view_destroy(&w);
	mbox_view_reset(v);
	assert_int_equal(mbox_view_keyword_count(v), 0);
	mbox_view_destroy(&v);
}

/* Intern the space-separated keywords of words[0..len) into v; their bits
 * ORed. */
static uint32_t intern_words(struct mbox_view *v, const char *p)
{
	uint32_t mask = 0;

	while (*p != '\0') {
		const char *w = p;
		unsigned bit;

		while (*p != '\0' && *p != ' ')
			p++;
		assert_int_equal(mbox_view_keyword(v, w, (size_t)(p - w), &bit), 0);
		mask |= 1u << bit;
		while (*p == ' ')
			p++;
	}
	return mask;
}

/* A view with uids[i] and the flags spec[i] names (system flags as letters
 * S A F D R, then keywords as words: "S $Junk Work"); the keywords of
 * prelude (NULL: none) are interned first, so two views can give the same
 * names other bits. */
static struct mbox_view *mk_kw(uint32_t n, const uint32_t *uids, const char *const *spec,
                               const char *prelude)
{
	struct mbox_view *v;

	assert_int_equal(mbox_view_init(&v), 0);
	mbox_view_set_uidvalidity(v, 42);
	if (prelude != NULL)
		(void)intern_words(v, prelude);
	assert_int_equal(mbox_view_exists(v, n), 0);
	for (uint32_t i = 0; i < n; i++) {
		struct mbox_fetch f = {.uid = uids[i], .has_flags = true};
		const char *p = spec[i];

		for (; *p != '\0' && *p != ' '; p++)
			f.flags |= *p == 'S'   ? S
			           : *p == 'A' ? A
			           : *p == 'F' ? F
			           : *p == 'D' ? D
			                       : R;
		while (*p == ' ')
			p++;
		f.keywords = intern_words(v, p);
		assert_int_equal(mbox_view_fetch_msg(v, i + 1, &f), 0);
	}
	return v;
}

static void test_diff_keywords(void **state)
{
	static const uint32_t u[] = {1, 2, 3, 4, 5};
	static const char *const o_fl[] = {"S $Junk", "", "S Work", "F", "S"};
	static const char *const n_fl[] = {"S $Junk", "S $Junk", "S Work", "F $New",
	                                   "S $Junk Work"};
	static const char *const n_fl2[] = {"S Work", "S $Junk", "", "F $New", "S"};
	static const char *const same[] = {"", "S Work", "F", "S $Junk", "$Junk Work"};
	/* old's table is $Junk, Work; now's Work, $New, $Junk. */
	struct mbox_view *old = mk_kw(5, u, o_fl, NULL), *now = mk_kw(5, u, n_fl, "Work $New");
	struct mbox_view *a = mk_kw(5, u, same, NULL), *b = mk_kw(5, u, same, "$Junk Work");

	(void)state;
	/* Messages 1 and 3 keep their keywords under other bits: no line;
	 * keywords are written in now's table order. */
	diff_is(old, now, false,
	        "* 2 FETCH (FLAGS (\\Seen $Junk))\r\n"
	        "* 4 FETCH (FLAGS (\\Flagged $New))\r\n"
	        "* 5 FETCH (FLAGS (\\Seen Work $Junk))\r\n");
	mbox_view_destroy(&now);
	now = mk_kw(5, u, n_fl2, "Work $New");
	diff_is(old, now, true,
	        "* 1 FETCH (UID 1 FLAGS (\\Seen Work))\r\n"
	        "* 2 FETCH (UID 2 FLAGS (\\Seen $Junk))\r\n"
	        "* 3 FETCH (UID 3 FLAGS ())\r\n"
	        "* 4 FETCH (UID 4 FLAGS (\\Flagged $New))\r\n");
	diff_is(now, old, false,
	        "* 1 FETCH (FLAGS (\\Seen $Junk))\r\n"
	        "* 2 FETCH (FLAGS ())\r\n"
	        "* 3 FETCH (FLAGS (\\Seen Work))\r\n"
	        "* 4 FETCH (FLAGS (\\Flagged))\r\n");
	/* Same names under other bits: nothing. */
	assert_int_not_equal(mbox_view_keywords(a, 2), mbox_view_keywords(b, 2));
	diff_is(a, b, true, "");
	diff_is(b, a, false, "");
	/* Inexact flags on either side: no diff. */
	mbox_view_set_flags_inexact(b);
	diff_fails(a, b, false);
	diff_fails(b, a, true);
	mbox_view_destroy(&old);
	mbox_view_destroy(&now);
	mbox_view_destroy(&a);
	mbox_view_destroy(&b);
}

/* ---- MODSEQ and the CONDSTORE / QRESYNC diff ---- */

static void set_ms(struct mbox_view *v, uint32_t seq, uint64_t ms)
{
	struct mbox_fetch f = {.modseq = ms};

	assert_int_equal(mbox_view_fetch_msg(v, seq, &f), 0);
}

static void diff_en_is(const struct mbox_view *old, const struct mbox_view *now, unsigned en,
                       const char *want)
{
	char *out = NULL;
	size_t len = 0;

	assert_int_equal(mbox_view_diff_enabled(old, now, en, &out, &len), 0);
	assert_string_equal(out, want);
	assert_int_equal(len, strlen(want));
	free(out);
}

static void diff_en_fails(const struct mbox_view *old, const struct mbox_view *now, unsigned en)
{
	char *out = (char *)1;
	size_t len = 1;

	assert_int_equal(mbox_view_diff_enabled(old, now, en, &out, &len), -1);
	assert_null(out);
	assert_int_equal(len, 0);
}

static void test_diff_modseq(void **state)
{
	static const uint32_t u[] = {1, 2, 3, 4};
	static const unsigned fl[] = {0, S, 0, 0};
	const unsigned cs = MBOX_EN_CONDSTORE, qr = MBOX_EN_CONDSTORE | MBOX_EN_QRESYNC;
	struct mbox_view *old = mk(7, 4, u, NULL), *now = mk(7, 4, u, fl);

	(void)state;
	mbox_view_set_highestmodseq(old, 100);
	mbox_view_set_highestmodseq(now, 100);
	/* The changed message's MODSEQ is not known: no CONDSTORE diff. */
	diff_en_fails(old, now, cs);
	diff_en_is(old, now, 0, "* 2 FETCH (FLAGS (\\Seen))\r\n");
	set_ms(now, 2, 120);
	assert_int_equal(mbox_view_highestmodseq(now), 120); /* raised */
	diff_en_is(old, now, cs, "* 2 FETCH (MODSEQ (120) FLAGS (\\Seen))\r\n");
	diff_en_is(old, now, qr, "* 2 FETCH (UID 2 MODSEQ (120) FLAGS (\\Seen))\r\n");
	/* Legacy: QRESYNC without MODSEQ. */
	diff_is(old, now, true, "* 2 FETCH (UID 2 FLAGS (\\Seen))\r\n");
	/* An expunge raised HIGHESTMODSEQ past the FETCH: the client learns it
	 * last. */
	assert_int_equal(mbox_view_expunge(now, 4), 0);
	mbox_view_set_highestmodseq(now, 121);
	diff_en_is(old, now, qr,
	           "* VANISHED 4\r\n* 2 FETCH (UID 2 MODSEQ (120) FLAGS (\\Seen))\r\n"
	           "* OK [HIGHESTMODSEQ 121] Highest\r\n");
	diff_en_is(old, now, cs,
	           "* 4 EXPUNGE\r\n* 2 FETCH (MODSEQ (120) FLAGS (\\Seen))\r\n"
	           "* OK [HIGHESTMODSEQ 121] Highest\r\n");
	diff_en_is(old, now, 0, "* 4 EXPUNGE\r\n* 2 FETCH (FLAGS (\\Seen))\r\n");
	/* Only HIGHESTMODSEQ moved (something came and went): just that. */
	diff_en_is(now, now, cs, "");
	{
		struct mbox_view *later;

		assert_int_equal(mbox_view_clone(now, &later), 0);
		mbox_view_set_highestmodseq(later, 130);
		diff_en_is(now, later, cs, "* OK [HIGHESTMODSEQ 130] Highest\r\n");
		diff_en_is(now, later, 0, "");
		/* MODSEQ rose, flags the same: the line, with the same FLAGS. */
		set_ms(later, 2, 125);
		diff_en_is(now, later, qr,
		           "* 2 FETCH (UID 2 MODSEQ (125) FLAGS (\\Seen))\r\n"
		           "* OK [HIGHESTMODSEQ 130] Highest\r\n");
		diff_en_is(now, later, 0, "");
		/* Flags changed without a MODSEQ: the old one is void. */
		assert_int_equal(mbox_view_fetch(later, 2, 0, true, S | F), 0);
		assert_int_equal(mbox_view_modseq(later, 2), 0);
		diff_en_fails(now, later, cs);
		mbox_view_destroy(&later);
	}
	/* NOMODSEQ: no MODSEQ lines; a mix of the two is refused. */
	{
		struct mbox_view *a = mk(7, 4, u, NULL), *b = mk(7, 4, u, fl);

		mbox_view_set_nomodseq(a);
		mbox_view_set_nomodseq(b);
		/* A server contradicting itself does not give it one. */
		set_ms(a, 1, 50);
		assert_int_equal(mbox_view_highestmodseq(a), 0);
		check_ok(a);
		diff_en_is(a, b, qr, "* 2 FETCH (UID 2 FLAGS (\\Seen))\r\n");
		mbox_view_set_highestmodseq(b, 5);
		diff_en_fails(a, b, cs);
		diff_en_is(a, b, MBOX_EN_QRESYNC, "* 2 FETCH (UID 2 FLAGS (\\Seen))\r\n");
		mbox_view_destroy(&a);
		mbox_view_destroy(&b);
	}
	mbox_view_destroy(&old);
	mbox_view_destroy(&now);
}

/* The floor: MODSEQs at or below it are not kept, so a view of a mailbox
 * whose every message was fetched with MODSEQ stays compact. */
static void test_modseq_floor(void **state)
{
	const uint32_t n = 10000;
	struct mbox_view *v = mk_fill(n, 1), *w;

	(void)state;
	assert_int_equal(mbox_view_clone(v, &w), 0);
	for (uint32_t i = 1; i <= n; i++)
		set_ms(v, i, 1000 + i);
	assert_int_equal(mbox_view_runs(v), n); /* every MODSEQ differs */
	mbox_view_set_modseq_floor(v, 1000 + n - 2);
	assert_int_equal(mbox_view_runs(v), 3);
	assert_int_equal(mbox_view_modseq(v, 1), 0);
	assert_int_equal(mbox_view_modseq(v, n), 1000 + n);
	check_ok(v);
	mbox_view_set_modseq_floor(w, n);
	for (uint32_t i = 1; i <= n; i++)
		set_ms(w, i, i);
	assert_int_equal(mbox_view_runs(w), 1);
	assert_int_equal(mbox_view_highestmodseq(w), n);
	mbox_view_destroy(&v);
	mbox_view_destroy(&w);
}

/* ---- randomized diff with keywords and MODSEQ, applied by a client ---- */

#define KW_NAMES 5
static const char *const kw_names[KW_NAMES] = {"$Junk", "$NotJunk", "Work", "$label1", "\\Odd"};

/* A client's state: keywords as a set of kw_names indexes. */
struct cref {
	uint32_t n;
	uint32_t uid[4 * RND_MAX];
	unsigned fl[4 * RND_MAX];
	unsigned kws[4 * RND_MAX];
	uint64_t ms[4 * RND_MAX];
	uint64_t hms; /* the highest mod-sequence the client has seen */
};

static void cref_del(struct cref *c, uint32_t i)
{
	uint32_t k = c->n - i - 1;

	memmove(&c->uid[i], &c->uid[i + 1], k * sizeof(c->uid[0]));
	memmove(&c->fl[i], &c->fl[i + 1], k * sizeof(c->fl[0]));
	memmove(&c->kws[i], &c->kws[i + 1], k * sizeof(c->kws[0]));
	memmove(&c->ms[i], &c->ms[i + 1], k * sizeof(c->ms[0]));
	c->n--;
}

/* The view of c, keywords interned in the order perm gives. */
static struct mbox_view *view_of_cref(const struct cref *c, const unsigned *perm, uint64_t floor)
{
	struct mbox_view *v;
	unsigned bit_of[KW_NAMES];

	assert_int_equal(mbox_view_init(&v), 0);
	mbox_view_set_uidvalidity(v, 11);
	mbox_view_set_modseq_floor(v, floor);
	for (unsigned k = 0; k < KW_NAMES; k++) {
		const char *nm = kw_names[perm[k]];

		assert_int_equal(mbox_view_keyword(v, nm, strlen(nm), &bit_of[perm[k]]), 0);
	}
	assert_int_equal(mbox_view_exists(v, c->n), 0);
	for (uint32_t i = 0; i < c->n; i++) {
		struct mbox_fetch f = {.uid = c->uid[i], .has_flags = true, .flags = c->fl[i]};

		for (unsigned k = 0; k < KW_NAMES; k++) {
			if (c->kws[i] & 1u << k)
				f.keywords |= 1u << bit_of[k];
		}
		f.modseq = c->ms[i];
		assert_int_equal(mbox_view_fetch_msg(v, i + 1, &f), 0);
	}
	mbox_view_set_highestmodseq(v, c->hms);
	return v;
}

/* "FLAGS (...)" with system flags and kw_names. */
static void parse_flags_kw(const char **p, unsigned *fl_r, unsigned *kws_r)
{
	static const struct {
		const char *name;
		unsigned bit;
	} names[] = {
	    {"\\Seen", S}, {"\\Answered", A}, {"\\Flagged", F}, {"\\Deleted", D}, {"\\Draft", R}};
	unsigned fl = 0, kws = 0;

	assert_memory_equal(*p, "FLAGS (", 7);
	*p += 7;
	while (**p != ')') {
		size_t len = strcspn(*p, " )"), k;
		bool found = false;

		for (k = 0; k < sizeof(names) / sizeof(names[0]) && !found; k++) {
			if (strlen(names[k].name) == len && strncmp(*p, names[k].name, len) == 0) {
				assert_false(fl & names[k].bit);
				fl |= names[k].bit;
				found = true;
			}
		}
		for (k = 0; k < KW_NAMES && !found; k++) {
			if (strlen(kw_names[k]) == len && strncmp(*p, kw_names[k], len) == 0) {
				assert_false(kws & 1u << k);
				kws |= 1u << k;
				found = true;
			}
		}
		assert_true(found);
		*p += len;
		if (**p == ' ')
			(*p)++;
	}
	(*p)++;
	*fl_r = fl;
	*kws_r = kws;
}

/* Apply the diff to c as a client would, checking each line's form. */
static void apply_full(struct cref *c, const char *out, unsigned en)
{
	const char *p = out;
	uint32_t last_expunge = UINT32_MAX;
	bool qresync = en & MBOX_EN_QRESYNC, condstore = en & MBOX_EN_CONDSTORE;
	bool saw_hms = false;

	while (*p != '\0') {
		const char *eol = strstr(p, "\r\n");

		assert_non_null(eol);
		assert_false(saw_hms); /* HIGHESTMODSEQ comes last */
		assert_memory_equal(p, "* ", 2);
		p += 2;
		if (strncmp(p, "OK [HIGHESTMODSEQ ", 18) == 0) {
			uint64_t h;

			assert_true(condstore);
			p += 18;
			h = strtoull(p, (char **)&p, 10);
			assert_true(h > c->hms);
			c->hms = h;
			assert_memory_equal(p, "] Highest", 9);
			p += 9;
			saw_hms = true;
		} else if (strncmp(p, "VANISHED ", 9) == 0) {
			assert_true(qresync);
			p += 9;
			for (;;) {
				uint32_t lo = parse_u32(&p), hi = lo;

				if (*p == ':') {
					p++;
					hi = parse_u32(&p);
					assert_true(lo < hi);
				}
				for (uint32_t i = c->n; i-- > 0;) {
					if (c->uid[i] >= lo && c->uid[i] <= hi)
						cref_del(c, i);
				}
				if (*p != ',')
					break;
				p++;
			}
		} else {
			uint32_t n = parse_u32(&p);

			if (strncmp(p, " EXPUNGE", 8) == 0) {
				assert_false(qresync);
				assert_true(n >= 1 && n <= c->n && n < last_expunge);
				last_expunge = n;
				cref_del(c, n - 1);
				p += 8;
			} else if (strncmp(p, " EXISTS", 7) == 0) {
				assert_true(n > c->n);
				while (c->n < n) {
					c->uid[c->n] = 0;
					c->fl[c->n] = c->kws[c->n] = 0;
					c->ms[c->n++] = 0;
				}
				p += 7;
			} else {
				assert_memory_equal(p, " FETCH (", 8);
				p += 8;
				assert_true(n >= 1 && n <= c->n);
				if (qresync) {
					assert_memory_equal(p, "UID ", 4);
					p += 4;
					assert_int_equal(parse_u32(&p), c->uid[n - 1]);
					assert_int_equal(*p++, ' ');
				}
				if (condstore) {
					uint64_t m;

					assert_memory_equal(p, "MODSEQ (", 8);
					p += 8;
					m = strtoull(p, (char **)&p, 10);
					assert_true(m > 0);
					assert_memory_equal(p, ") ", 2);
					p += 2;
					c->ms[n - 1] = m;
					if (m > c->hms)
						c->hms = m;
				}
				parse_flags_kw(&p, &c->fl[n - 1], &c->kws[n - 1]);
				assert_int_equal(*p++, ')');
			}
		}
		assert_ptr_equal(p, eol);
		p = eol + 2;
	}
}

static void full_seed(uint64_t seed)
{
	static struct cref old, nw, c;
	unsigned perm_old[KW_NAMES], perm_now[KW_NAMES];
	struct mbox_view *vold, *vnow;
	uint32_t next_uid = 1, old_max;
	uint64_t ms = 100;
	uint32_t nops;

	rnd_state = seed * 0x9E3779B97F4A7C15ull + 3;
	for (unsigned k = 0; k < KW_NAMES; k++)
		perm_old[k] = perm_now[k] = k;
	for (unsigned k = KW_NAMES; k-- > 1;) {
		unsigned j = rnd(k + 1), t = perm_now[k];

		perm_now[k] = perm_now[j];
		perm_now[j] = t;
	}
	memset(&old, 0, sizeof(old));
	old.n = rnd(RND_MAX + 1);
	for (uint32_t i = 0; i < old.n; i++) {
		next_uid += 1 + (rnd(4) == 0 ? rnd(5) : 0);
		old.uid[i] = next_uid;
		old.fl[i] = rnd(4) == 0 ? rnd(MBOX_F_ALL + 1) : 0;
		old.kws[i] = rnd(4) == 0 ? rnd(1u << KW_NAMES) : 0;
		old.ms[i] = rnd(3) == 0 ? 1 + rnd(99) : 0;
	}
	old.hms = 100;
	old_max = old.n > 0 ? old.uid[old.n - 1] : 0;
	vold = view_of_cref(&old, perm_old, 0);

	/* now: changes get MODSEQs above old's HIGHESTMODSEQ, which is its
	 * floor: what the client knew is forgotten, as the proxy would. */
	nw = old;
	for (uint32_t i = 0; i < nw.n; i++)
		nw.ms[i] = 0;
	nops = rnd(2 * RND_MAX);
	for (uint32_t k = 0; k < nops; k++) {
		uint32_t op = rnd(10), i;

		if (op < 3 && nw.n > 0) {
			cref_del(&nw, rnd(nw.n));
			ms++; /* expunges raise HIGHESTMODSEQ */
		} else if (op < 5 && nw.n < 3 * RND_MAX) {
			next_uid += 1 + rnd(2);
			i = nw.n++;
			nw.uid[i] = next_uid;
			nw.fl[i] = rnd(2) ? S : 0;
			nw.kws[i] = rnd(3) == 0 ? 1 : 0;
			nw.ms[i] = ++ms;
		} else if (nw.n > 0) {
			i = rnd(nw.n);
			if (op < 9) {
				nw.fl[i] = rnd(MBOX_F_ALL + 1);
				nw.kws[i] = rnd(2) ? rnd(1u << KW_NAMES) : nw.kws[i];
			}
			nw.ms[i] = ++ms; /* op 9: MODSEQ only (a change the view does not see) */
		}
	}
	nw.hms = rnd(2) ? ms : ms + rnd(3);
	vnow = view_of_cref(&nw, perm_now, old.hms);

	for (unsigned en = 0; en < 4; en++) {
		unsigned e = (en & 1 ? MBOX_EN_QRESYNC : 0) | (en & 2 ? MBOX_EN_CONDSTORE : 0);
		char *out;
		size_t len;

		assert_int_equal(mbox_view_diff_enabled(vold, vnow, e, &out, &len), 0);
		assert_int_equal(len, strlen(out));
		c = old;
		apply_full(&c, out, e);
		free(out);
		assert_int_equal(c.n, nw.n);
		for (uint32_t i = 0; i < nw.n; i++) {
			if (nw.uid[i] > old_max) {
				assert_int_equal(c.uid[i], 0);
				continue;
			}
			assert_int_equal(c.uid[i], nw.uid[i]);
			assert_int_equal(c.fl[i], nw.fl[i]);
			assert_int_equal(c.kws[i], nw.kws[i]);
			/* A changed message's MODSEQ reached a CONDSTORE client. */
			if ((e & MBOX_EN_CONDSTORE) && nw.ms[i] != 0)
				assert_int_equal(c.ms[i], nw.ms[i]);
		}
		/* And so did the mailbox's HIGHESTMODSEQ. */
		if (e & MBOX_EN_CONDSTORE)
			assert_int_equal(c.hms, nw.hms > old.hms ? nw.hms : old.hms);
	}
	mbox_view_destroy(&vold);
	mbox_view_destroy(&vnow);
}

static void test_diff_random_full(void **state)
{
	(void)state;
	for (uint64_t seed = 1; seed <= 3000; seed++)
		full_seed(seed);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_init_reset_destroy),
	    cmocka_unit_test(test_exists),
	    cmocka_unit_test(test_fetch_rules),
	    cmocka_unit_test(test_expunge),
	    cmocka_unit_test(test_expunge_keeps_tail_order),
	    cmocka_unit_test(test_vanished),
	    cmocka_unit_test(test_vanished_unknown_uids),
	    cmocka_unit_test(test_clone),
	    cmocka_unit_test(test_diff_table),
	    cmocka_unit_test(test_diff_refusals),
	    cmocka_unit_test(test_diff_random),
	    cmocka_unit_test(test_big_fill),
	    cmocka_unit_test(test_compact_storage),
	    cmocka_unit_test(test_unknown_runs),
	    cmocka_unit_test(test_storage_random),
	    cmocka_unit_test(test_name_and_status),
	    cmocka_unit_test(test_keywords),
	    cmocka_unit_test(test_diff_keywords),
	    cmocka_unit_test(test_diff_modseq),
	    cmocka_unit_test(test_modseq_floor),
	    cmocka_unit_test(test_diff_random_full),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
