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
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
