/*
 * test_imap_tok — unit tests for common/imap_tok.c.
 *
 * Most tests go through drive(), which plays the proxy's part: it presents
 * the unconsumed bytes in a heap block of exactly that size (so ASan and
 * valgrind catch any read past len), checks every unit's basic promises
 * (len > 0, len <= presented, peek twice gives the same unit, LINE ends in
 * LF, FRAGMENT is frag_size long), consumes it and records it. Splitting
 * tests compare the recorded sequences after merging the LITERAL pieces that
 * different read sizes produce.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "imap_tok.h"

/* ---------------------------------------------------------------- driver */

struct rec {
	enum imap_tok_type type;
	size_t off; /* stream offset of the unit's first byte */
	size_t len;
	bool first, last, text, has_literal, nonsync, binary;
	uint64_t literal;
};

struct run {
	struct rec *recs;
	size_t n, cap;
	int rc;          /* -1 if the tokenizer failed, else -2 (ran out of input) */
	const char *err; /* imap_tok_error() after a failure */
	size_t consumed; /* bytes consumed in all */
	bool boundary;   /* imap_tok_at_boundary() at the end */
};

struct feed {
	const size_t *chunks; /* read sizes, cycled; NULL = all at once */
	size_t nchunks;
	size_t lit_step; /* consume LITERAL units at most this much at a time; 0 = whole */
};

static void run_free(struct run *r)
{
	free(r->recs);
	memset(r, 0, sizeof(*r));
}

static void run_add(struct run *r, const struct imap_tok_unit *u, size_t off, size_t len)
{
	struct rec *x;

	if (r->n == r->cap) {
		r->cap = r->cap ? r->cap * 2 : 16;
		r->recs = realloc(r->recs, r->cap * sizeof(*r->recs));
		assert_non_null(r->recs);
	}
	x = &r->recs[r->n++];
	memset(x, 0, sizeof(*x));
	x->type = u->type;
	x->off = off;
	x->len = len;
	x->first = u->first;
	x->last = u->last;
	x->text = u->text;
	x->has_literal = u->has_literal;
	x->nonsync = u->lit_nonsync;
	x->binary = u->lit_binary;
	x->literal = u->literal;
}

static void assert_same_unit(const struct imap_tok_unit *a, const struct imap_tok_unit *b)
{
	assert_int_equal(a->type, b->type);
	assert_int_equal(a->len, b->len);
	assert_int_equal(a->first, b->first);
	assert_int_equal(a->last, b->last);
	assert_int_equal(a->text, b->text);
	assert_int_equal(a->has_literal, b->has_literal);
	assert_int_equal(a->lit_nonsync, b->lit_nonsync);
	assert_int_equal(a->lit_binary, b->lit_binary);
	assert_int_equal(a->literal, b->literal);
}

/* Every unit the tokenizer hands out must keep these promises. */
static void check_unit(const struct imap_tok_unit *u, const uint8_t *p, size_t len,
                       const struct imap_tok_limits *lim)
{
	assert_true(u->len > 0);
	assert_true(u->len <= len);
	switch (u->type) {
	case IMAP_TOK_LINE:
		assert_int_equal(p[u->len - 1], '\n');
		assert_false(u->has_literal && u->last);
		assert_false(!u->has_literal && !u->last);
		break;
	case IMAP_TOK_FRAGMENT:
		assert_non_null(lim);
		assert_int_equal(u->len, lim->frag_size);
		assert_null(memchr(p, '\n', u->len));
		assert_false(u->last);
		assert_false(u->has_literal);
		break;
	case IMAP_TOK_LITERAL:
		assert_false(u->first);
		assert_false(u->last);
		assert_false(u->has_literal);
		break;
	default:
		fail_msg("bad unit type %d", (int)u->type);
	}
}

/*
 * Run s[0..n) through a fresh tokenizer, read by read as f says, and record
 * every unit. Stops at the first error or when the input is exhausted.
 */
static void drive(const void *s, size_t n, enum imap_tok_dir dir, const struct imap_tok_limits *lim,
                  const struct feed *f, struct run *r)
{
	const uint8_t *src = s;
	struct imap_tok t;
	size_t avail = 0, ci = 0;

	memset(r, 0, sizeof(*r));
	imap_tok_init(&t, dir, lim);
	for (;;) {
		size_t chunk = n - avail;

		if (f != NULL && f->chunks != NULL) {
			chunk = f->chunks[ci++ % f->nchunks];
			if (chunk > n - avail)
				chunk = n - avail;
		}
		avail += chunk;
		for (;;) {
			size_t win = avail - r->consumed;
			uint8_t *p = malloc(win ? win : 1);
			struct imap_tok_unit u, u2;
			size_t take;
			int rc;

			assert_non_null(p);
			memcpy(p, src + r->consumed, win);
			rc = imap_tok_next(&t, p, win, &u);
			if (rc == -1) {
				free(p);
				r->rc = -1;
				r->err = imap_tok_error(&t);
				assert_non_null(r->err);
				assert_int_equal(
				    imap_tok_next(&t, src + r->consumed, avail - r->consumed, &u),
				    -1);
				return;
			}
			if (rc == -2) {
				free(p);
				break;
			}
			assert_int_equal(rc, 0);
			check_unit(&u, p, win, lim);
			/* peek contract */
			assert_int_equal(imap_tok_next(&t, p, win, &u2), 0);
			assert_same_unit(&u, &u2);
			free(p);

			take = u.len;
			if (u.type == IMAP_TOK_LITERAL && f != NULL && f->lit_step != 0 &&
			    take > f->lit_step)
				take = f->lit_step;
			run_add(r, &u, r->consumed, take);
			imap_tok_consume(&t, &u, take);
			r->consumed += take;
		}
		if (avail == n)
			break;
	}
	r->rc = -2;
	assert_null(imap_tok_error(&t));
	r->boundary = imap_tok_at_boundary(&t);
}

/* Merge adjacent LITERAL records: read sizes decide how a body is cut. */
static void normalize(struct run *r)
{
	size_t i, o = 0;

	for (i = 0; i < r->n; i++) {
		if (o > 0 && r->recs[i].type == IMAP_TOK_LITERAL &&
		    r->recs[o - 1].type == IMAP_TOK_LITERAL) {
			assert_int_equal(r->recs[o - 1].off + r->recs[o - 1].len, r->recs[i].off);
			r->recs[o - 1].len += r->recs[i].len;
			continue;
		}
		r->recs[o++] = r->recs[i];
	}
	r->n = o;
}

static void assert_same_run(const struct run *a, const struct run *b)
{
	size_t i;

	assert_int_equal(a->rc, b->rc);
	if (a->rc == -1)
		assert_string_equal(a->err, b->err);
	assert_int_equal(a->consumed, b->consumed);
	assert_int_equal(a->n, b->n);
	for (i = 0; i < a->n; i++) {
		const struct rec *x = &a->recs[i], *y = &b->recs[i];

		assert_int_equal(x->type, y->type);
		assert_int_equal(x->off, y->off);
		assert_int_equal(x->len, y->len);
		assert_int_equal(x->first, y->first);
		assert_int_equal(x->last, y->last);
		assert_int_equal(x->text, y->text);
		assert_int_equal(x->has_literal, y->has_literal);
		assert_int_equal(x->nonsync, y->nonsync);
		assert_int_equal(x->binary, y->binary);
		assert_int_equal(x->literal, y->literal);
	}
	if (a->rc == -2)
		assert_int_equal(a->boundary, b->boundary);
}

/* Units are contiguous and, when no error stopped us, cover every byte
 * that completes a unit. */
static void assert_contiguous(const struct run *r)
{
	size_t i, off = 0;

	for (i = 0; i < r->n; i++) {
		assert_int_equal(r->recs[i].off, off);
		off += r->recs[i].len;
	}
	assert_int_equal(off, r->consumed);
}

/*
 * The central property: however the stream is cut into reads (here: at
 * every single offset, and one byte at a time), the tokenizer reports the
 * same units as when it sees everything at once.
 */
static void check_splits(const void *s, size_t n, enum imap_tok_dir dir,
                         const struct imap_tok_limits *lim)
{
	static const size_t ones[] = {1};
	struct run ref, r;
	struct feed f;
	size_t k, step;

	drive(s, n, dir, lim, NULL, &ref);
	normalize(&ref);
	assert_contiguous(&ref);

	for (k = 0; k <= n; k++) {
		size_t cuts[2] = {k, n - k};

		for (step = 0; step <= 3; step += 3) {
			f.chunks = cuts;
			f.nchunks = 2;
			f.lit_step = step;
			drive(s, n, dir, lim, &f, &r);
			normalize(&r);
			assert_same_run(&ref, &r);
			run_free(&r);
		}
	}

	f.chunks = ones;
	f.nchunks = 1;
	f.lit_step = 0;
	drive(s, n, dir, lim, &f, &r);
	normalize(&r);
	assert_same_run(&ref, &r);
	run_free(&r);
	run_free(&ref);
}

#define S(x) (x), (sizeof(x) - 1)

/* --------------------------------------------------- single-step helpers */

/* Expect one unit at the start of p; returns it. */
static struct imap_tok_unit expect_unit(struct imap_tok *t, const char *p, size_t len,
                                        enum imap_tok_type type, size_t ulen)
{
	struct imap_tok_unit u;

	assert_int_equal(imap_tok_next(t, (const uint8_t *)p, len, &u), 0);
	assert_int_equal(u.type, type);
	assert_int_equal(u.len, ulen);
	return u;
}

static void expect_more(struct imap_tok *t, const char *p, size_t len)
{
	struct imap_tok_unit u;

	assert_int_equal(imap_tok_next(t, (const uint8_t *)p, len, &u), -2);
}

static void expect_error(struct imap_tok *t, const char *p, size_t len, const char *why)
{
	struct imap_tok_unit u;

	assert_int_equal(imap_tok_next(t, (const uint8_t *)p, len, &u), -1);
	assert_string_equal(imap_tok_error(t), why);
}

/* ------------------------------------------------------------------ tests */

static void test_simple_commands(void **state)
{
	static const char s[] = "a1 NOOP\r\na2 LOGOUT\r\n";
	struct imap_tok t;
	struct imap_tok_unit u;

	(void)state;
	imap_tok_init(&t, IMAP_TOK_COMMANDS, NULL);
	assert_true(imap_tok_at_boundary(&t));
	assert_null(imap_tok_error(&t));
	u = expect_unit(&t, S(s), IMAP_TOK_LINE, 9);
	assert_true(u.first);
	assert_true(u.last);
	assert_false(u.text);
	assert_false(u.has_literal);
	imap_tok_consume(&t, &u, u.len);
	assert_true(imap_tok_at_boundary(&t));
	u = expect_unit(&t, s + 9, sizeof(s) - 1 - 9, IMAP_TOK_LINE, 11);
	assert_true(u.first);
	assert_true(u.last);
	imap_tok_consume(&t, &u, u.len);
	expect_more(&t, "", 0);
	expect_more(&t, NULL, 0);
	assert_true(imap_tok_at_boundary(&t));
}

static void test_simple_responses(void **state)
{
	static const struct {
		const char *s;
		bool text;
	} cases[] = {
	    {"* OK IMAP4rev1 ready\r\n", true},
	    {"a1 OK done\r\n", true},
	    {"a1 OK\r\n", true},
	    {"a1 OK\n", true},
	    {"* NO x\r\n", true},
	    {"* BAD x\r\n", true},
	    {"* BYE x\r\n", true},
	    {"* PREAUTH x\r\n", true},
	    {"a1 ok lower case\r\n", true},
	    {"* Ok mixed\r\n", true},
	    {"+ go ahead\r\n", true},
	    {"+\r\n", true},
	    {"+ \r\n", true},
	    {"* 3 EXISTS\r\n", false},
	    {"* CAPABILITY IMAP4rev1\r\n", false},
	    {"* OKAY\r\n", false},
	    {"* PREAUTHX\r\n", false},
	    {"* NOPE\r\n", false},
	    {"*\r\n", false},
	    {"\r\n", false},
	    {"\n", false},
	    {"* \r\n", false},
	    {"OK\r\n", false}, /* "OK" is the tag here, not the word */
	};
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct imap_tok t;
		struct imap_tok_unit u;
		size_t n = strlen(cases[i].s);

		imap_tok_init(&t, IMAP_TOK_RESPONSES, NULL);
		u = expect_unit(&t, cases[i].s, n, IMAP_TOK_LINE, n);
		assert_true(u.first);
		assert_true(u.last);
		if (u.text != cases[i].text)
			fail_msg("case %zu (%s): text=%d", i, cases[i].s, u.text);
		/* the same line as a command is never text */
		imap_tok_init(&t, IMAP_TOK_COMMANDS, NULL);
		u = expect_unit(&t, cases[i].s, n, IMAP_TOK_LINE, n);
		assert_false(u.text);
		check_splits(cases[i].s, n, IMAP_TOK_RESPONSES, NULL);
	}
}

static void test_line_ends(void **state)
{
	struct imap_tok t;
	struct imap_tok_unit u;

	(void)state;
	imap_tok_init(&t, IMAP_TOK_COMMANDS, NULL);
	/* bare LF */
	u = expect_unit(&t, S("a1 NOOP\na2"), IMAP_TOK_LINE, 8);
	imap_tok_consume(&t, &u, u.len);
	/* lone CRs are ordinary bytes */
	u = expect_unit(&t, S("a\rb\r\r\n"), IMAP_TOK_LINE, 6);
	assert_true(u.last);
	imap_tok_consume(&t, &u, u.len);
	/* CR without LF yet: not a line */
	expect_more(&t, S("a1 NOOP\r"));
	u = expect_unit(&t, S("a1 NOOP\r\n"), IMAP_TOK_LINE, 9);
	imap_tok_consume(&t, &u, u.len);
	/* empty lines */
	u = expect_unit(&t, S("\n"), IMAP_TOK_LINE, 1);
	assert_true(u.first && u.last);
	imap_tok_consume(&t, &u, u.len);
	u = expect_unit(&t, S("\r\n"), IMAP_TOK_LINE, 2);
	imap_tok_consume(&t, &u, u.len);
	assert_true(imap_tok_at_boundary(&t));
}

/* Literal announcement recognition, one line part at a time. */
static void test_announcements(void **state)
{
	static const struct {
		const char *s;
		bool lit;
		uint64_t n;
		bool nonsync, binary;
	} cases[] = {
	    {"a APPEND x {5}\r\n", true, 5, false, false},
	    {"a APPEND x {5+}\r\n", true, 5, true, false},
	    {"a APPEND x ~{5}\r\n", true, 5, false, true},
	    {"a APPEND x ~{5+}\r\n", true, 5, true, true},
	    {"a APPEND x {0}\r\n", true, 0, false, false},
	    {"a APPEND x {5}\n", true, 5, false, false},
	    {"a APPEND x {007}\r\n", true, 7, false, false},
	    {"{12}\r\n", true, 12, false, false},
	    {"a X {{5}\r\n", true, 5, false, false},
	    {"a X {1{5}\r\n", true, 5, false, false},
	    {"a X ~~{5}\r\n", true, 5, false, true},
	    {"a X ~ {5}\r\n", true, 5, false, false},
	    {"a X ~\"\"{5}\r\n", true, 5, false, false},
	    {"a X {3}{5}\r\n", true, 5, false, false},
	    {"a X \"q\"{5}\r\n", true, 5, false, false},
	    {"a X {9223372036854775807}\r\n", true, UINT64_C(9223372036854775807), false, false},
	    {"a X {}\r\n", false, 0, false, false},
	    {"a X {+}\r\n", false, 0, false, false},
	    {"a X {5} \r\n", false, 0, false, false},
	    {"a X {5}x\r\n", false, 0, false, false},
	    {"a X {5}\r\r\n", false, 0, false, false},
	    {"a X {5}\rx\n", false, 0, false, false},
	    {"a X {5+\r\n", false, 0, false, false},
	    {"a X {5\r\n", false, 0, false, false},
	    {"a X {5++}\r\n", false, 0, false, false},
	    {"a X {+5}\r\n", false, 0, false, false},
	    {"a X { 5}\r\n", false, 0, false, false},
	    {"a X {-5}\r\n", false, 0, false, false},
	    {"a X {12a}\r\n", false, 0, false, false},
	    {"a X {5}}\r\n", false, 0, false, false},
	    {"a X 5}\r\n", false, 0, false, false},
	    {"a X }\r\n", false, 0, false, false},
	    {"a X {\r\n", false, 0, false, false},
	    {"a X ~\r\n", false, 0, false, false},
	    {"a X \"{5}\"\r\n", false, 0, false, false},
	    {"a X \"{5}\r\n", false, 0, false, false},
	    {"a X {5\"}\"\r\n", false, 0, false, false},
	    {"a X {99999999999999999999999}x\r\n", false, 0, false, false},
	};
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct imap_tok t;
		struct imap_tok_unit u;
		size_t n = strlen(cases[i].s);

		imap_tok_init(&t, IMAP_TOK_COMMANDS, NULL);
		u = expect_unit(&t, cases[i].s, n, IMAP_TOK_LINE, n);
		if (u.has_literal != cases[i].lit)
			fail_msg("case %zu (%s): has_literal=%d", i, cases[i].s, u.has_literal);
		assert_true(u.first);
		assert_int_equal(u.last, !cases[i].lit);
		if (cases[i].lit) {
			assert_int_equal(u.literal, cases[i].n);
			assert_int_equal(u.lit_nonsync, cases[i].nonsync);
			assert_int_equal(u.lit_binary, cases[i].binary);
		} else {
			assert_int_equal(u.literal, 0);
			assert_false(u.lit_nonsync);
			assert_false(u.lit_binary);
		}
		check_splits(cases[i].s, n, IMAP_TOK_COMMANDS, NULL);
	}
}

static void test_literal_append(void **state)
{
	static const char s[] =
	    "a1 APPEND INBOX (\\Seen) {5+}\r\n{3}\r\n {3}\r\nx\r\n (x)\r\na2 NOOP\r\n";
	struct imap_tok t;
	struct imap_tok_unit u;
	const char *p = s;
	size_t left = sizeof(s) - 1;

	(void)state;
	imap_tok_init(&t, IMAP_TOK_COMMANDS, NULL);
	u = expect_unit(&t, p, left, IMAP_TOK_LINE, 30);
	assert_true(u.first);
	assert_false(u.last);
	assert_true(u.has_literal);
	assert_true(u.lit_nonsync);
	assert_int_equal(u.literal, 5);
	imap_tok_consume(&t, &u, u.len);
	p += u.len, left -= u.len;
	assert_false(imap_tok_at_boundary(&t));

	/* the literal body holds a fake announcement and line end */
	u = expect_unit(&t, p, left, IMAP_TOK_LITERAL, 5);
	assert_false(u.first);
	assert_false(u.last);
	assert_false(u.has_literal);
	imap_tok_consume(&t, &u, u.len);
	p += u.len, left -= u.len;

	u = expect_unit(&t, p, left, IMAP_TOK_LINE, 6);
	assert_false(u.first);
	assert_true(u.has_literal);
	assert_int_equal(u.literal, 3);
	imap_tok_consume(&t, &u, u.len);
	p += u.len, left -= u.len;

	u = expect_unit(&t, p, left, IMAP_TOK_LITERAL, 3);
	assert_memory_equal(p, "x\r\n", 3);
	imap_tok_consume(&t, &u, u.len);
	p += u.len, left -= u.len;

	u = expect_unit(&t, p, left, IMAP_TOK_LINE, 6);
	assert_false(u.first);
	assert_true(u.last);
	imap_tok_consume(&t, &u, u.len);
	p += u.len, left -= u.len;
	assert_true(imap_tok_at_boundary(&t));

	u = expect_unit(&t, p, left, IMAP_TOK_LINE, 9);
	assert_true(u.first);
	assert_true(u.last);
	imap_tok_consume(&t, &u, u.len);
	left -= u.len;
	assert_int_equal(left, 0);
}

static void test_literal_zero(void **state)
{
	static const char s[] = "a1 APPEND x {0}\r\n {0+}\r\n)\r\n";
	struct imap_tok t;
	struct imap_tok_unit u;
	const char *p = s;

	(void)state;
	imap_tok_init(&t, IMAP_TOK_COMMANDS, NULL);
	u = expect_unit(&t, S(s), IMAP_TOK_LINE, 17);
	assert_true(u.first);
	assert_false(u.last);
	assert_true(u.has_literal);
	assert_int_equal(u.literal, 0);
	imap_tok_consume(&t, &u, u.len);
	p += u.len;
	assert_false(imap_tok_at_boundary(&t));
	/* no empty LITERAL unit: the next line part comes directly */
	u = expect_unit(&t, p, strlen(p), IMAP_TOK_LINE, 7);
	assert_false(u.first);
	assert_true(u.has_literal);
	assert_true(u.lit_nonsync);
	assert_int_equal(u.literal, 0);
	imap_tok_consume(&t, &u, u.len);
	p += u.len;
	u = expect_unit(&t, p, strlen(p), IMAP_TOK_LINE, 3);
	assert_false(u.first);
	assert_true(u.last);
	imap_tok_consume(&t, &u, u.len);
	assert_true(imap_tok_at_boundary(&t));
	check_splits(S(s), IMAP_TOK_COMMANDS, NULL);
}

/* A refused command's synchronizing literal never comes: after
 * imap_tok_cancel_literal the next bytes are a new command, for {n}, {0}
 * and ~{n} alike, and even when what follows looks like a literal body. */
static void test_cancel_literal(void **state)
{
	static const char *const heads[] = {"a NOOP {17}\r\n", "a APPEND x {0}\r\n",
	                                    "a APPEND x ~{5}\r\n", "a X \"q\" {3}\r\n"};
	static const char next[] = "b ENABLE QRESYNC\r\n";
	struct imap_tok t;
	struct imap_tok_unit u;

	(void)state;
	for (size_t i = 0; i < sizeof(heads) / sizeof(heads[0]); i++) {
		imap_tok_init(&t, IMAP_TOK_COMMANDS, NULL);
		u = expect_unit(&t, heads[i], strlen(heads[i]), IMAP_TOK_LINE, strlen(heads[i]));
		assert_true(u.has_literal);
		imap_tok_consume(&t, &u, u.len);
		assert_false(imap_tok_at_boundary(&t));
		imap_tok_cancel_literal(&t);
		assert_true(imap_tok_at_boundary(&t));
		u = expect_unit(&t, next, strlen(next), IMAP_TOK_LINE, strlen(next));
		assert_true(u.first);
		assert_true(u.last);
		imap_tok_consume(&t, &u, u.len);
		assert_true(imap_tok_at_boundary(&t));
	}
	/* Without the cancel the same bytes are the literal body. */
	imap_tok_init(&t, IMAP_TOK_COMMANDS, NULL);
	u = expect_unit(&t, heads[0], strlen(heads[0]), IMAP_TOK_LINE, strlen(heads[0]));
	imap_tok_consume(&t, &u, u.len);
	u = expect_unit(&t, next, strlen(next), IMAP_TOK_LITERAL, 17);
	/* A failed tokenizer stays failed. */
	imap_tok_consume(&t, &u, u.len + 1);
	imap_tok_cancel_literal(&t);
	assert_int_equal(imap_tok_next(&t, (const uint8_t *)next, strlen(next), &u), -1);
}

/* A LITERAL can be consumed bit by bit, and with no body bytes yet is -2. */
static void test_literal_parts(void **state)
{
	static const char s[] = "a {10}\r\n0123456789\r\n";
	struct imap_tok t;
	struct imap_tok_unit u;
	const char *p = s;

	(void)state;
	imap_tok_init(&t, IMAP_TOK_COMMANDS, NULL);
	u = expect_unit(&t, p, 8, IMAP_TOK_LINE, 8);
	imap_tok_consume(&t, &u, u.len);
	p += 8;
	expect_more(&t, p, 0);
	/* only 4 body bytes here */
	u = expect_unit(&t, p, 4, IMAP_TOK_LITERAL, 4);
	imap_tok_consume(&t, &u, 0); /* consuming nothing is allowed */
	u = expect_unit(&t, p, 4, IMAP_TOK_LITERAL, 4);
	imap_tok_consume(&t, &u, 3);
	p += 3;
	/* everything buffered: the unit stops at the literal's end */
	u = expect_unit(&t, p, strlen(p), IMAP_TOK_LITERAL, 7);
	assert_false(u.first);
	imap_tok_consume(&t, &u, 5);
	p += 5;
	u = expect_unit(&t, p, strlen(p), IMAP_TOK_LITERAL, 2);
	assert_memory_equal(p, "89", 2);
	imap_tok_consume(&t, &u, 2);
	p += 2;
	assert_false(imap_tok_at_boundary(&t));
	u = expect_unit(&t, p, strlen(p), IMAP_TOK_LINE, 2);
	assert_false(u.first);
	assert_true(u.last);
	imap_tok_consume(&t, &u, 2);
	assert_true(imap_tok_at_boundary(&t));
}

static void test_quoted(void **state)
{
	static const struct {
		const char *s;
		bool lit;
	} cases[] = {
	    {"a LOGIN \"us\\\"er{5}\" \"pw\"\r\n", false},
	    {"a SELECT \"{5}\"\r\n", false},
	    {"a X \"\\\\\" {3}\r\n", true}, /* escaped backslash, then the quote closes */
	    {"a X \"\\\" {3}\r\n", false},  /* escaped quote: still inside */
	    {"a X \"a\" \"b\" {3}\r\n", true},
	    {"a X \"a\" \"b {3}\r\n", false},
	    {"a X \"\\{3}\"\r\n", false},
	};
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct imap_tok t;
		struct imap_tok_unit u;
		size_t n = strlen(cases[i].s);

		imap_tok_init(&t, IMAP_TOK_COMMANDS, NULL);
		u = expect_unit(&t, cases[i].s, n, IMAP_TOK_LINE, n);
		if (u.has_literal != cases[i].lit)
			fail_msg("case %zu (%s): has_literal=%d", i, cases[i].s, u.has_literal);
		check_splits(cases[i].s, n, IMAP_TOK_COMMANDS, NULL);
		/* responses track quotes the same way outside free text */
		imap_tok_init(&t, IMAP_TOK_RESPONSES, NULL);
		u = expect_unit(&t, cases[i].s, n, IMAP_TOK_LINE, n);
		assert_int_equal(u.has_literal, cases[i].lit);
	}
}

/* An unterminated quote ends with its line, also across a literal. */
static void test_quote_resets(void **state)
{
	static const char s[] = "a X \"abc\r\nb {3}\r\n\"xy{2}\r\nab\r\n";
	struct imap_tok t;
	struct imap_tok_unit u;
	const char *p = s;

	(void)state;
	imap_tok_init(&t, IMAP_TOK_COMMANDS, NULL);
	u = expect_unit(&t, p, strlen(p), IMAP_TOK_LINE, 10);
	assert_true(u.last);
	imap_tok_consume(&t, &u, u.len);
	p += u.len;
	u = expect_unit(&t, p, strlen(p), IMAP_TOK_LINE, 7);
	assert_true(u.has_literal);
	imap_tok_consume(&t, &u, u.len);
	p += u.len;
	/* the body opens a quote; the part after the literal must not see it */
	u = expect_unit(&t, p, strlen(p), IMAP_TOK_LITERAL, 3);
	imap_tok_consume(&t, &u, u.len);
	p += u.len;
	u = expect_unit(&t, p, strlen(p), IMAP_TOK_LINE, 5);
	assert_true(u.has_literal);
	assert_int_equal(u.literal, 2);
	check_splits(S(s), IMAP_TOK_COMMANDS, NULL);
}

/* Free text in responses never announces a literal. */
static void test_text_responses(void **state)
{
	static const struct {
		const char *s;
		bool text, lit;
	} cases[] = {
	    {"* OK [ALERT] x {5}\r\n", true, false},
	    {"* OK[ALERT] {5}\r\n", true, false},
	    {"a NO foo {3}\r\n", true, false},
	    {"a1 NO foo{5}\r\n", true, false},
	    {"a BAD \"unterminated {3}\r\n", true, false},
	    {"+ {4}\r\n", true, false},
	    {"+{4}\r\n", true, false},
	    {"+ \"x\" {4}\r\n", true, false},
	    {"* BYE {3}\r\n", true, false},
	    {"* PREAUTH {2}\r\n", true, false},
	    {"a1 ok {3}\r\n", true, false},
	    {"* OK {99999999999999999999999}\r\n", true, false},
	    {"* 1 FETCH (BODY[] {4}\r\n", false, true},
	    {"* 1 FETCH (BODY[] \"{4}\" {4}\r\n", false, true},
	    {"* LIST () \"/\" {5}\r\n", false, true},
	    {"* OKAY {3}\r\n", false, true},
	    {"* {3}\r\n", false, true},
	    {"{3}\r\n", false, true},
	    {"a1 {3}\r\n", false, true},
	};
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct imap_tok t;
		struct imap_tok_unit u;
		size_t n = strlen(cases[i].s);

		imap_tok_init(&t, IMAP_TOK_RESPONSES, NULL);
		u = expect_unit(&t, cases[i].s, n, IMAP_TOK_LINE, n);
		if (u.text != cases[i].text || u.has_literal != cases[i].lit)
			fail_msg("case %zu (%s): text=%d has_literal=%d", i, cases[i].s, u.text,
			         u.has_literal);
		assert_int_equal(u.last, !cases[i].lit);
		check_splits(cases[i].s, n, IMAP_TOK_RESPONSES, NULL);
	}
}

/*
 * A status response's code may hold literals (RFC 3501: BADCHARSET's
 * astrings); its free text never does. The stream goes on in step: the
 * next response is found where it starts.
 */
static void test_code_literals(void **state)
{
	static const struct {
		const char *s;
		bool lit;
		uint64_t n;
	} cases[] = {
	    {"a1 NO [BADCHARSET ({5}\r\n", true, 5}, {"a1 NO [BADCHARSET ({5+}\r\n", true, 5},
	    {"* OK[BADCHARSET ({2}\n", true, 2},     {"* NO [X-FOO \"]{3}\" {3}\r\n", true, 3},
	    {"* bad [X ~{4}\r\n", true, 4},          {"* OK [ALERT] {3}\r\n", false, 0},
	    {"* OK [X \"{3}\"] {3}\r\n", false, 0},  {"* OK  [X {2}\r\n", false, 0},
	    {"* OK x [X {2}\r\n", false, 0},         {"+ [X {2}\r\n", false, 0},
	    {"* OKAY [X {2}\r\n", true, 2},          {"* OK [X \"{2}\r\n", false, 0},
	};
	static const char s[] = "a1 NO [BADCHARSET ({5}\r\nUTF-8 {3}\r\nx\"z)] Unknown {4}\r\n"
	                        "* OK [X ~{2}\r\n\0\n] ok\r\n"
	                        "a2 OK done {3}\r\n";
	static const struct {
		enum imap_tok_type type;
		size_t len;
		bool first, last, text, lit;
		uint64_t n;
	} want[] = {
	    {IMAP_TOK_LINE, 24, true, false, true, true, 5},
	    {IMAP_TOK_LITERAL, 5, false, false, false, false, 0},
	    {IMAP_TOK_LINE, 6, false, false, true, true, 3},
	    {IMAP_TOK_LITERAL, 3, false, false, false, false, 0},
	    {IMAP_TOK_LINE, 16, false, true, true, false, 0},
	    {IMAP_TOK_LINE, 14, true, false, true, true, 2},
	    {IMAP_TOK_LITERAL, 2, false, false, false, false, 0},
	    {IMAP_TOK_LINE, 6, false, true, true, false, 0},
	    {IMAP_TOK_LINE, 16, true, true, true, false, 0},
	};
	struct imap_tok_limits frag = {0, 4, 0};
	struct run r;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct imap_tok t;
		struct imap_tok_unit u;
		size_t n = strlen(cases[i].s);

		imap_tok_init(&t, IMAP_TOK_RESPONSES, NULL);
		u = expect_unit(&t, cases[i].s, n, IMAP_TOK_LINE, n);
		if (u.has_literal != cases[i].lit || u.literal != cases[i].n)
			fail_msg("case %zu (%s): has_literal=%d literal=%llu", i, cases[i].s,
			         u.has_literal, (unsigned long long)u.literal);
		check_splits(cases[i].s, n, IMAP_TOK_RESPONSES, NULL);
	}

	drive(S(s), IMAP_TOK_RESPONSES, NULL, NULL, &r);
	assert_int_equal(r.rc, -2);
	assert_int_equal(r.consumed, sizeof(s) - 1);
	assert_true(r.boundary);
	assert_int_equal(r.n, sizeof(want) / sizeof(want[0]));
	for (i = 0; i < r.n; i++) {
		assert_int_equal(r.recs[i].type, want[i].type);
		assert_int_equal(r.recs[i].len, want[i].len);
		assert_int_equal(r.recs[i].first, want[i].first);
		assert_int_equal(r.recs[i].last, want[i].last);
		assert_int_equal(r.recs[i].text, want[i].text);
		assert_int_equal(r.recs[i].has_literal, want[i].lit);
		assert_int_equal(r.recs[i].literal, want[i].n);
	}
	assert_true(r.recs[5].binary);
	run_free(&r);
	check_splits(S(s), IMAP_TOK_RESPONSES, NULL);
	check_splits(S(s), IMAP_TOK_RESPONSES, &frag);
}

/* A text response's head is found again after a FETCH with literals. */
static void test_response_stream(void **state)
{
	static const char s[] = "* 1 FETCH (BODY[] {4}\r\nab\r\n UID 5)\r\n"
	                        "* OK [ALERT] beware {3}\r\n"
	                        "* 2 FETCH (BODY[1] ~{2}\r\n\0\1 BODY[2] {0}\r\n)\r\n"
	                        "+ {9}\r\n"
	                        "a1 OK FETCH completed {2}\r\n";
	static const struct {
		enum imap_tok_type type;
		size_t len;
		bool first, last, text, lit;
		uint64_t n;
	} want[] = {
	    {IMAP_TOK_LINE, 23, true, false, false, true, 4},
	    {IMAP_TOK_LITERAL, 4, false, false, false, false, 0},
	    {IMAP_TOK_LINE, 9, false, true, false, false, 0},
	    {IMAP_TOK_LINE, 25, true, true, true, false, 0},
	    {IMAP_TOK_LINE, 25, true, false, false, true, 2},
	    {IMAP_TOK_LITERAL, 2, false, false, false, false, 0},
	    {IMAP_TOK_LINE, 14, false, false, false, true, 0},
	    {IMAP_TOK_LINE, 3, false, true, false, false, 0},
	    {IMAP_TOK_LINE, 7, true, true, true, false, 0},
	    {IMAP_TOK_LINE, 27, true, true, true, false, 0},
	};
	struct run r;
	size_t i;

	(void)state;
	drive(S(s), IMAP_TOK_RESPONSES, NULL, NULL, &r);
	assert_int_equal(r.rc, -2);
	assert_int_equal(r.consumed, sizeof(s) - 1);
	assert_true(r.boundary);
	assert_int_equal(r.n, sizeof(want) / sizeof(want[0]));
	for (i = 0; i < r.n; i++) {
		assert_int_equal(r.recs[i].type, want[i].type);
		assert_int_equal(r.recs[i].len, want[i].len);
		assert_int_equal(r.recs[i].first, want[i].first);
		assert_int_equal(r.recs[i].last, want[i].last);
		assert_int_equal(r.recs[i].text, want[i].text);
		assert_int_equal(r.recs[i].has_literal, want[i].lit);
		assert_int_equal(r.recs[i].literal, want[i].n);
	}
	assert_true(r.recs[4].binary);
	run_free(&r);
	check_splits(S(s), IMAP_TOK_RESPONSES, NULL);
}

/* A full command stream split at every offset and fed byte by byte. */
static void test_split_everywhere(void **state)
{
	static const char cmds[] =
	    "a1 LOGIN {4}\r\nuser {8+}\r\npass\r\n{}\r\n"
	    "a2 APPEND INBOX (\\Seen) ~{12}\r\n\r\n{3}\r\n\"\r\n\0\xff \"{4}\" {0}\r\n\r\n"
	    "a3 SEARCH TEXT \"x\\\"{2}\" {2}\nzz\n"
	    "a4 NOOP\r\n";
	static const char resp[] = "* 12 FETCH (BODY[TEXT] {7}\r\n{5}\r\nab FLAGS (\\Seen))\r\n"
	                           "* OK [UNSEEN 3] {3}\r\n+ ready {2}\r\na1 NO [ALERT] {4}\n"
	                           "* 3 FETCH (BINARY[1] ~{3}\r\n\0\0\0)\r\n";
	struct imap_tok_limits frag = {0, 5, 0};
	struct imap_tok_limits both = {40, 7, 0};

	(void)state;
	check_splits(S(cmds), IMAP_TOK_COMMANDS, NULL);
	check_splits(S(cmds), IMAP_TOK_COMMANDS, &frag);
	check_splits(S(cmds), IMAP_TOK_COMMANDS, &both);
	check_splits(S(resp), IMAP_TOK_RESPONSES, NULL);
	check_splits(S(resp), IMAP_TOK_RESPONSES, &frag);
	check_splits(S(resp), IMAP_TOK_RESPONSES, &both);
	/* the same bytes as commands: everything not quoted is a literal */
	check_splits(S(resp), IMAP_TOK_COMMANDS, NULL);
}

static void test_max_line(void **state)
{
	struct imap_tok_limits lim = {10, 0, 0};
	struct imap_tok t;
	struct imap_tok_unit u;

	(void)state;
	/* exactly max_line, line end included: fine, CRLF or LF */
	imap_tok_init(&t, IMAP_TOK_COMMANDS, &lim);
	u = expect_unit(&t, S("a1 NOOPX\r\n"), IMAP_TOK_LINE, 10);
	imap_tok_consume(&t, &u, u.len);
	u = expect_unit(&t, S("a1 NOOPXY\n"), IMAP_TOK_LINE, 10);
	imap_tok_consume(&t, &u, u.len);

	/* one more: error */
	expect_error(&t, S("a1 NOOPXY\r\n"), "line too long");
	/* sticky */
	expect_error(&t, S("a\r\n"), "line too long");
	imap_tok_consume(&t, &u, u.len);
	expect_error(&t, S("a\r\n"), "line too long");

	/* 10 bytes, no line end: still waiting */
	imap_tok_init(&t, IMAP_TOK_COMMANDS, &lim);
	assert_null(imap_tok_error(&t));
	expect_more(&t, S("0123456789"));
	/* the 11th byte is the error, before any line end arrives */
	expect_error(&t, S("0123456789a"), "line too long");

	/* found early even when everything arrives at once */
	imap_tok_init(&t, IMAP_TOK_COMMANDS, &lim);
	expect_error(&t, S("0123456789abcdefghijklmnopqrstuvwxyz"), "line too long");

	/* a LF as the 11th byte is one too many as well */
	imap_tok_init(&t, IMAP_TOK_COMMANDS, &lim);
	expect_more(&t, S("0123456789"));
	expect_error(&t, S("0123456789\n"), "line too long");

	/* the bound is per line part: literal bodies do not count */
	imap_tok_init(&t, IMAP_TOK_COMMANDS, &lim);
	u = expect_unit(&t, S("a X {20}\r\n"), IMAP_TOK_LINE, 10);
	imap_tok_consume(&t, &u, u.len);
	u = expect_unit(&t, S("01234567890123456789"), IMAP_TOK_LITERAL, 20);
	imap_tok_consume(&t, &u, u.len);
	u = expect_unit(&t, S(" {20} xx\r\n"), IMAP_TOK_LINE, 10);
	imap_tok_consume(&t, &u, u.len);
	expect_error(&t, S(" {20} xxx\r\n"), "line too long");

	/* byte by byte, the error comes with the 11th byte */
	{
		static const char s[] = "a1 NOOP  {3}\r\n";
		struct run r;
		static const size_t ones[] = {1};
		struct feed f = {ones, 1, 0};

		drive(S(s), IMAP_TOK_COMMANDS, &lim, &f, &r);
		assert_int_equal(r.rc, -1);
		assert_string_equal(r.err, "line too long");
		assert_int_equal(r.n, 0);
		run_free(&r);
		check_splits(S(s), IMAP_TOK_COMMANDS, &lim);
	}
}

static void test_fragments(void **state)
{
	struct imap_tok_limits lim = {0, 4, 0};
	struct imap_tok t;
	struct imap_tok_unit u;
	const char *p;

	(void)state;
	imap_tok_init(&t, IMAP_TOK_COMMANDS, &lim);
	/* short lines are plain LINEs; exactly frag_size with the LF too */
	u = expect_unit(&t, S("a1\r\n"), IMAP_TOK_LINE, 4);
	assert_true(u.first && u.last);
	imap_tok_consume(&t, &u, u.len);

	p = "a1 NOOP\r\n";
	u = expect_unit(&t, p, strlen(p), IMAP_TOK_FRAGMENT, 4);
	assert_true(u.first);
	assert_false(u.last);
	assert_true(imap_tok_at_boundary(&t)); /* nothing consumed yet */
	imap_tok_consume(&t, &u, u.len);
	assert_false(imap_tok_at_boundary(&t));
	p += 4;
	/* a fragment does not need the line end, only frag_size bytes */
	expect_more(&t, p, 3);
	u = expect_unit(&t, p, 4, IMAP_TOK_FRAGMENT, 4);
	assert_false(u.first);
	assert_memory_equal(p, "OOP\r", 4);
	imap_tok_consume(&t, &u, u.len);
	p += 4;
	/* the CR went with the fragment; the LF alone ends the line */
	u = expect_unit(&t, p, strlen(p), IMAP_TOK_LINE, 1);
	assert_false(u.first);
	assert_true(u.last);
	imap_tok_consume(&t, &u, u.len);
	assert_true(imap_tok_at_boundary(&t));

	/* an announcement spanning fragment boundaries is still one */
	p = "ab {12}\r\n";
	u = expect_unit(&t, p, strlen(p), IMAP_TOK_FRAGMENT, 4);
	imap_tok_consume(&t, &u, u.len);
	p += 4;
	u = expect_unit(&t, p, strlen(p), IMAP_TOK_FRAGMENT, 4);
	assert_memory_equal(p, "12}\r", 4);
	imap_tok_consume(&t, &u, u.len);
	p += 4;
	u = expect_unit(&t, p, strlen(p), IMAP_TOK_LINE, 1);
	assert_true(u.has_literal);
	assert_int_equal(u.literal, 12);
	assert_false(u.last);
	imap_tok_consume(&t, &u, u.len);
	u = expect_unit(&t, S("0123456789ab"), IMAP_TOK_LITERAL, 12);
	imap_tok_consume(&t, &u, u.len);
	/* ... and so is a quote */
	p = "\"ab {5}\" {3}\r\n";
	u = expect_unit(&t, p, strlen(p), IMAP_TOK_FRAGMENT, 4);
	assert_false(u.first);
	imap_tok_consume(&t, &u, u.len);
	p += 4;
	u = expect_unit(&t, p, strlen(p), IMAP_TOK_FRAGMENT, 4);
	imap_tok_consume(&t, &u, u.len);
	p += 4;
	u = expect_unit(&t, p, strlen(p), IMAP_TOK_FRAGMENT, 4);
	imap_tok_consume(&t, &u, u.len);
	p += 4;
	u = expect_unit(&t, p, strlen(p), IMAP_TOK_LINE, 2);
	assert_true(u.has_literal);
	assert_int_equal(u.literal, 3);

	/* a text response's head spanning fragments */
	{
		static const char s[] = "* OK {5}\r\na1 BAD {3}\r\n";
		struct imap_tok_limits one = {0, 1, 0};
		struct imap_tok_limits two = {0, 2, 0};
		struct run r;

		drive(S(s), IMAP_TOK_RESPONSES, &two, NULL, &r);
		assert_int_equal(r.rc, -2);
		assert_int_equal(r.consumed, sizeof(s) - 1);
		assert_true(r.boundary);
		assert_int_equal(r.recs[r.n - 1].type, IMAP_TOK_LINE);
		assert_true(r.recs[r.n - 1].text);
		run_free(&r);
		check_splits(S(s), IMAP_TOK_RESPONSES, &one);
		check_splits(S(s), IMAP_TOK_RESPONSES, &two);
	}
}

/* With both limits, max_line bounds the whole part across its fragments. */
static void test_fragments_max_line(void **state)
{
	struct imap_tok_limits lim = {10, 4, 0};
	struct imap_tok t;
	struct imap_tok_unit u;
	const char *p = "0123456789\n";

	(void)state;
	imap_tok_init(&t, IMAP_TOK_COMMANDS, &lim);
	u = expect_unit(&t, p, strlen(p), IMAP_TOK_FRAGMENT, 4);
	imap_tok_consume(&t, &u, u.len);
	p += 4;
	u = expect_unit(&t, p, strlen(p), IMAP_TOK_FRAGMENT, 4);
	imap_tok_consume(&t, &u, u.len);
	p += 4;
	expect_more(&t, p, 2);
	expect_error(&t, p, strlen(p), "line too long");

	/* 10 in all is fine, and the next part starts counting afresh */
	imap_tok_init(&t, IMAP_TOK_COMMANDS, &lim);
	p = "012345678\nabcdefghi\n";
	u = expect_unit(&t, p, strlen(p), IMAP_TOK_FRAGMENT, 4);
	imap_tok_consume(&t, &u, u.len);
	p += 4;
	u = expect_unit(&t, p, strlen(p), IMAP_TOK_FRAGMENT, 4);
	imap_tok_consume(&t, &u, u.len);
	p += 4;
	u = expect_unit(&t, p, strlen(p), IMAP_TOK_LINE, 2);
	imap_tok_consume(&t, &u, u.len);
	p += 2;
	u = expect_unit(&t, p, strlen(p), IMAP_TOK_FRAGMENT, 4);
	assert_true(u.first);
	check_splits(S("012345678\nabcdefghi\n0123456789a"), IMAP_TOK_COMMANDS, &lim);
}

static void test_max_literal(void **state)
{
	struct imap_tok_limits lim = {0, 0, 10};
	static const struct {
		enum imap_tok_dir dir;
		const char *s;
		int rc;
	} cases[] = {
	    {IMAP_TOK_COMMANDS, "a X {10}\r\n", 0},
	    {IMAP_TOK_COMMANDS, "a X {11}\r\n", -1},
	    {IMAP_TOK_COMMANDS, "a X {11+}\r\n", -1},
	    {IMAP_TOK_COMMANDS, "a X ~{11}\r\n", -1},
	    {IMAP_TOK_COMMANDS, "a X {0000000010}\r\n", 0},
	    {IMAP_TOK_COMMANDS, "a X {11}x\r\n", 0}, /* not an announcement */
	    {IMAP_TOK_COMMANDS, "a X \"{11}\"\r\n", 0},
	    {IMAP_TOK_RESPONSES, "* OK {11}\r\n", 0}, /* text */
	    {IMAP_TOK_RESPONSES, "* 1 FETCH (BODY[] {11}\r\n", -1},
	};
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct imap_tok t;
		struct imap_tok_unit u;
		size_t n = strlen(cases[i].s);
		int rc;

		imap_tok_init(&t, cases[i].dir, &lim);
		rc = imap_tok_next(&t, (const uint8_t *)cases[i].s, n, &u);
		if (rc != cases[i].rc)
			fail_msg("case %zu (%s): rc=%d", i, cases[i].s, rc);
		if (rc == -1)
			assert_string_equal(imap_tok_error(&t), "literal too large");
		else
			assert_null(imap_tok_error(&t));
		check_splits(cases[i].s, n, cases[i].dir, &lim);
	}
}

static void test_literal_overflow(void **state)
{
	static const struct {
		const char *s;
		int rc;
	} cases[] = {
	    {"a X {9223372036854775807}\r\n", 0},
	    {"a X {9223372036854775808}\r\n", -1},
	    {"a X {18446744073709551615}\r\n", -1},
	    {"a X {18446744073709551616}\r\n", -1},
	    {"a X {99999999999999999999999999999999999999}\r\n", -1},
	    {"a X ~{99999999999999999999999999999999999999+}\r\n", -1},
	    {"a X {0000000000000000000000000000000000000001}\r\n", 0},
	    {"a X {99999999999999999999999}x\r\n", 0},
	    {"a X \"{99999999999999999999999}\"\r\n", 0},
	    {"a X {99999999999999999999999}{1}\r\n", 0},
	};
	struct imap_tok_limits big = {0, 0, UINT64_MAX};
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct imap_tok t;
		struct imap_tok_unit u;
		size_t n = strlen(cases[i].s);
		int rc;

		imap_tok_init(&t, IMAP_TOK_COMMANDS, &big);
		rc = imap_tok_next(&t, (const uint8_t *)cases[i].s, n, &u);
		if (rc != cases[i].rc)
			fail_msg("case %zu (%s): rc=%d", i, cases[i].s, rc);
		if (rc == -1)
			assert_string_equal(imap_tok_error(&t), "literal size too large");
		check_splits(cases[i].s, n, IMAP_TOK_COMMANDS, NULL);
	}
}

/* Bytes no honest peer sends: never a crash, a bad unit or a hang. */
static void test_hostile(void **state)
{
	static const char *const fixed[] = {
	    "\0\0\0\r\n",
	    "\xff\xfe\x80{5}\xff\r\n",
	    "\r\r\r\r\r",
	    "a{\r\n{\r\n{{{{\r\n",
	    "a {12a}\r\n",
	    "}}}}}\r\n}\n",
	    "{\n",
	    "~{\n~}\n~\n",
	    "{5}\r",
	    "\"\\",
	    "\"\\\r\n\"\\\n",
	    "{1}\n{1}\n{1}\n{1}\n",
	    "* {1}\n+{1}\n* OK{1}\n",
	};
	static const size_t ones[] = {1};
	static const size_t odd[] = {3, 1, 7, 2};
	struct imap_tok_limits lims[] = {
	    {0, 0, 0},
	    {64, 0, 0},
	    {0, 3, 0},
	    {50, 16, 1000},
	};
	uint8_t *big;
	size_t bign = 4096, i, j, d;
	uint64_t x = 88172645463325252ULL;

	(void)state;
	for (i = 0; i < sizeof(fixed) / sizeof(fixed[0]); i++) {
		size_t n = strlen(fixed[i]);

		if (i == 0)
			n = 5;
		for (j = 0; j < sizeof(lims) / sizeof(lims[0]); j++)
			for (d = 0; d < 2; d++)
				check_splits(fixed[i], n, (enum imap_tok_dir)d, &lims[j]);
	}

	big = malloc(bign);
	assert_non_null(big);
	/* very many '{', then '}' */
	memset(big, '{', bign);
	big[bign - 1] = '\n';
	for (j = 0; j < sizeof(lims) / sizeof(lims[0]); j++) {
		struct run r;
		struct feed f = {odd, 4, 0};

		drive(big, bign, IMAP_TOK_COMMANDS, &lims[j], &f, &r);
		run_free(&r);
	}
	memset(big, '}', bign);
	check_splits(big, 200, IMAP_TOK_RESPONSES, &lims[2]);

	/* random bytes biased towards the interesting ones */
	for (i = 0; i < 8; i++) {
		static const char hot[] = "{}+~\"\\\r\n0123456789 \0\xff";

		for (j = 0; j < bign; j++) {
			x ^= x << 13;
			x ^= x >> 7;
			x ^= x << 17;
			big[j] = (x & 1) ? (uint8_t)hot[(x >> 8) % (sizeof(hot) - 1)]
			                 : (uint8_t)(x >> 16);
		}
		for (j = 0; j < sizeof(lims) / sizeof(lims[0]); j++) {
			for (d = 0; d < 2; d++) {
				struct run ref, r;
				struct feed f1 = {ones, 1, 0};
				struct feed f2 = {odd, 4, 2};

				drive(big, bign, (enum imap_tok_dir)d, &lims[j], NULL, &ref);
				normalize(&ref);
				assert_contiguous(&ref);
				drive(big, bign, (enum imap_tok_dir)d, &lims[j], &f1, &r);
				normalize(&r);
				assert_same_run(&ref, &r);
				run_free(&r);
				drive(big, bign, (enum imap_tok_dir)d, &lims[j], &f2, &r);
				normalize(&r);
				assert_same_run(&ref, &r);
				run_free(&r);
				run_free(&ref);
			}
		}
	}
	free(big);
}

static void test_peek_and_sticky(void **state)
{
	static const char s[] = "a1 APPEND x {3}\r\nabc\r\n";
	struct imap_tok t;
	struct imap_tok_unit u, v;

	(void)state;
	imap_tok_init(&t, IMAP_TOK_COMMANDS, NULL);
	/* -2, then the same bytes plus more */
	expect_more(&t, s, 5);
	expect_more(&t, s, 5);
	expect_more(&t, s, 16);
	u = expect_unit(&t, s, 17, IMAP_TOK_LINE, 17);
	/* peeking again, with or without more bytes, gives the same unit */
	v = expect_unit(&t, s, 17, IMAP_TOK_LINE, 17);
	assert_same_unit(&u, &v);
	v = expect_unit(&t, s, sizeof(s) - 1, IMAP_TOK_LINE, 17);
	assert_same_unit(&u, &v);
	/* fewer bytes than the unit: never a unit beyond len */
	expect_more(&t, s, 16);
	imap_tok_consume(&t, &u, u.len);

	u = expect_unit(&t, s + 17, 2, IMAP_TOK_LITERAL, 2);
	v = expect_unit(&t, s + 17, 2, IMAP_TOK_LITERAL, 2);
	assert_same_unit(&u, &v);
	v = expect_unit(&t, s + 17, 5, IMAP_TOK_LITERAL, 3);

	/* misuse of consume is an error, and sticky */
	imap_tok_consume(&t, &v, 4);
	expect_error(&t, s + 17, 5, "consume does not match unit");
	imap_tok_init(&t, IMAP_TOK_COMMANDS, NULL);
	assert_null(imap_tok_error(&t));
	u = expect_unit(&t, S("a\r\nb\r\n"), IMAP_TOK_LINE, 3);
	imap_tok_consume(&t, &u, 2);
	expect_error(&t, S("a\r\nb\r\n"), "consume does not match unit");

	/* consume without a unit */
	imap_tok_init(&t, IMAP_TOK_COMMANDS, NULL);
	imap_tok_consume(&t, &u, u.len);
	expect_error(&t, S("a\r\n"), "consume does not match unit");

	/* init clears an error */
	imap_tok_init(&t, IMAP_TOK_RESPONSES, NULL);
	u = expect_unit(&t, S("* OK\r\n"), IMAP_TOK_LINE, 6);
	assert_true(u.text);
}

static void test_boundary(void **state)
{
	static const struct imap_tok_limits lim = {0, 4, 0};
	struct imap_tok t;
	struct imap_tok_unit u;

	(void)state;
	imap_tok_init(&t, IMAP_TOK_COMMANDS, &lim);
	assert_true(imap_tok_at_boundary(&t));
	/* scanned but nothing consumed: still at the boundary */
	expect_more(&t, S("a1"));
	assert_true(imap_tok_at_boundary(&t));
	u = expect_unit(&t, S("a1 X {2}\r\n"), IMAP_TOK_FRAGMENT, 4);
	assert_true(imap_tok_at_boundary(&t));
	imap_tok_consume(&t, &u, u.len);
	assert_false(imap_tok_at_boundary(&t));
	u = expect_unit(&t, S(" {2}\r\n"), IMAP_TOK_FRAGMENT, 4);
	imap_tok_consume(&t, &u, u.len);
	u = expect_unit(&t, S("\r\n"), IMAP_TOK_LINE, 2);
	assert_true(u.has_literal);
	imap_tok_consume(&t, &u, u.len);
	assert_false(imap_tok_at_boundary(&t));
	u = expect_unit(&t, S("xy"), IMAP_TOK_LITERAL, 2);
	imap_tok_consume(&t, &u, 1);
	assert_false(imap_tok_at_boundary(&t));
	u = expect_unit(&t, S("y"), IMAP_TOK_LITERAL, 1);
	imap_tok_consume(&t, &u, 1);
	assert_false(imap_tok_at_boundary(&t));
	u = expect_unit(&t, S("\r\n"), IMAP_TOK_LINE, 2);
	imap_tok_consume(&t, &u, u.len);
	assert_true(imap_tok_at_boundary(&t));
}

/*
 * Byte at a time must cost O(n): a quadratic rescan of a 256 KiB line
 * would take billions of steps and time the test out.
 */
static void test_linear(void **state)
{
	size_t n = 256 * 1024, i, lines = 0;
	uint8_t *s = malloc(n);
	struct imap_tok t;
	struct imap_tok_unit u;
	size_t start = 0;

	(void)state;
	assert_non_null(s);
	/* one long line with a quoted string, then a literal of 3 */
	memset(s, 'x', n);
	memcpy(s, "a1 X \"", 6);
	memcpy(s + n - 9, "\"{3}\r\nabc", 9);
	imap_tok_init(&t, IMAP_TOK_COMMANDS, NULL);
	for (i = 1; i <= n; i++) {
		int rc = imap_tok_next(&t, s + start, i - start, &u);

		if (rc == -2)
			continue;
		assert_int_equal(rc, 0);
		if (lines == 0) {
			assert_int_equal(u.type, IMAP_TOK_LINE);
			assert_int_equal(u.len, n - 3);
			assert_int_equal(u.literal, 3);
		} else {
			assert_int_equal(u.type, IMAP_TOK_LITERAL);
		}
		imap_tok_consume(&t, &u, u.len);
		start += u.len;
		lines++;
	}
	/* the LINE, then the body one byte per read */
	assert_int_equal(lines, 4);
	assert_int_equal(start, n);
	assert_false(imap_tok_at_boundary(&t)); /* the line goes on after the literal */
	free(s);
}

/* ------------------------------------------------------ random streams */

struct rng {
	uint64_t s;
};

static uint32_t rnd(struct rng *r, uint32_t n)
{
	r->s ^= r->s << 13;
	r->s ^= r->s >> 7;
	r->s ^= r->s << 17;
	return (uint32_t)((r->s >> 11) % n);
}

struct exp_lit {
	size_t body; /* stream offset of the body */
	uint64_t n;
	bool nonsync, binary;
};

struct gen {
	uint8_t *b;
	size_t n, cap;
	struct exp_lit lits[256];
	size_t nlits;
	size_t lines;      /* logical lines */
	size_t text_lines; /* of which free text */
};

static void put(struct gen *g, const void *p, size_t n)
{
	if (g->n + n > g->cap) {
		g->cap = (g->n + n) * 2;
		g->b = realloc(g->b, g->cap);
		assert_non_null(g->b);
	}
	memcpy(g->b + g->n, p, n);
	g->n += n;
}

static void puts_(struct gen *g, const char *s)
{
	put(g, s, strlen(s));
}

static void put_eol(struct gen *g, struct rng *r)
{
	puts_(g, rnd(r, 4) ? "\r\n" : "\n");
}

static void put_atom(struct gen *g, struct rng *r)
{
	static const char ch[] = "abcXYZ019.[]()<>\\*%-";
	size_t i, n = 1 + rnd(r, 8);

	for (i = 0; i < n; i++)
		put(g, &ch[rnd(r, sizeof(ch) - 1)], 1);
}

/* A quoted string whose content holds announcement look-alikes. */
static void put_quoted(struct gen *g, struct rng *r)
{
	static const char *const bits[] = {"a", "{5}", "{12+}", "~{3}", "\\\"", "\\\\",
	                                   "}", "{",   " ",     "+",    "\xe9"};
	size_t i, n = rnd(r, 6);

	puts_(g, "\"");
	for (i = 0; i < n; i++)
		puts_(g, bits[rnd(r, sizeof(bits) / sizeof(bits[0]))]);
	puts_(g, "\"");
}

/* A literal announcement, line end and body; records what to expect. */
static void put_literal(struct gen *g, struct rng *r)
{
	static const char body[] = "{5}\r\n\"\\ax+~\0\xff";
	struct exp_lit *e;
	char ann[48];
	size_t i;

	assert_true(g->nlits < sizeof(g->lits) / sizeof(g->lits[0]));
	e = &g->lits[g->nlits++];
	e->n = rnd(r, 4) ? rnd(r, 40) : 0;
	e->nonsync = rnd(r, 2);
	e->binary = rnd(r, 3) == 0;
	snprintf(ann, sizeof(ann), "%s{%s%llu%s}", e->binary ? "~" : "", rnd(r, 8) ? "" : "00",
	         (unsigned long long)e->n, e->nonsync ? "+" : "");
	puts_(g, ann);
	put_eol(g, r);
	e->body = g->n;
	for (i = 0; i < e->n; i++)
		put(g, &body[rnd(r, sizeof(body) - 1)], 1);
}

/* Arguments: atoms, quoted strings and literals in any order. */
static void put_args(struct gen *g, struct rng *r)
{
	size_t i, n = rnd(r, 5);

	for (i = 0; i < n; i++) {
		puts_(g, " ");
		switch (rnd(r, 3)) {
		case 0:
			put_atom(g, r);
			break;
		case 1:
			put_quoted(g, r);
			break;
		default:
			put_literal(g, r);
			break;
		}
	}
}

static void gen_command(struct gen *g, struct rng *r)
{
	static const char *const cmds[] = {"APPEND INBOX", "LOGIN", "SEARCH", "NOOP", "X"};
	char tag[16];

	snprintf(tag, sizeof(tag), "a%u ", (unsigned)rnd(r, 1000));
	puts_(g, tag);
	puts_(g, cmds[rnd(r, sizeof(cmds) / sizeof(cmds[0]))]);
	put_args(g, r);
	put_eol(g, r);
	g->lines++;
}

static void gen_response(struct gen *g, struct rng *r)
{
	static const char *const heads[] = {"* OK",  "* NO", "a7 BAD",   "* BYE",
	                                    "a1 ok", "+",    "* PREAUTH"};
	static const char *const tails[] = {" [ALERT] x", " {5}", " \"{3}", " ~{2+}",
	                                    " {0}",       " }{",  ""};
	size_t i, n;

	switch (rnd(r, 3)) {
	case 0: /* free text, which may end in what looks like an announcement */
		puts_(g, heads[rnd(r, sizeof(heads) / sizeof(heads[0]))]);
		n = rnd(r, 3);
		for (i = 0; i < n; i++)
			puts_(g, tails[rnd(r, sizeof(tails) / sizeof(tails[0]))]);
		g->text_lines++;
		break;
	case 1:
		puts_(g, "* 1 FETCH (BODY[]");
		put_args(g, r);
		puts_(g, ")");
		break;
	default:
		puts_(g, "* LIST () \"/\"");
		put_args(g, r);
		break;
	}
	put_eol(g, r);
	g->lines++;
}

/* Check a normalized run against what the generator put in. */
static void check_against_gen(const struct run *x, const struct gen *g, bool frags)
{
	size_t i, li = 0, lines = 0, text = 0;

	assert_int_equal(x->rc, -2);
	assert_int_equal(x->consumed, g->n);
	assert_true(x->boundary);
	assert_contiguous(x);
	for (i = 0; i < x->n; i++) {
		const struct rec *c = &x->recs[i];

		if (c->type == IMAP_TOK_FRAGMENT) {
			assert_true(frags);
			continue;
		}
		if (c->type == IMAP_TOK_LITERAL) {
			/* a body follows the LINE that announced it, exactly */
			assert_true(li > 0);
			assert_int_equal(c->off, g->lits[li - 1].body);
			assert_int_equal(c->len, g->lits[li - 1].n);
			assert_true(i > 0 && x->recs[i - 1].has_literal);
			continue;
		}
		if (c->has_literal) {
			assert_true(li < g->nlits);
			assert_int_equal(c->literal, g->lits[li].n);
			assert_int_equal(c->nonsync, g->lits[li].nonsync);
			assert_int_equal(c->binary, g->lits[li].binary);
			assert_int_equal(c->off + c->len, g->lits[li].body);
			/* a zero-length literal has no LITERAL unit */
			if (g->lits[li].n == 0 && i + 1 < x->n)
				assert_int_not_equal(x->recs[i + 1].type, IMAP_TOK_LITERAL);
			li++;
		}
		if (c->last) {
			lines++;
			text += c->text;
		}
	}
	assert_int_equal(li, g->nlits);
	assert_int_equal(lines, g->lines);
	assert_int_equal(text, g->text_lines);
}

static void test_random_streams(void **state)
{
	struct rng r = {0x9e3779b97f4a7c15ULL};
	size_t iter;

	(void)state;
	for (iter = 0; iter < 2000; iter++) {
		struct gen g;
		enum imap_tok_dir dir = rnd(&r, 2) ? IMAP_TOK_RESPONSES : IMAP_TOK_COMMANDS;
		struct imap_tok_limits lim = {0, 0, 0};
		size_t chunks[8], i, nl = 1 + rnd(&r, 8);
		struct feed f;
		struct run ref, x;

		memset(&g, 0, sizeof(g));
		for (i = 0; i < nl; i++) {
			if (dir == IMAP_TOK_COMMANDS)
				gen_command(&g, &r);
			else
				gen_response(&g, &r);
		}
		if (rnd(&r, 3) == 0)
			lim.frag_size = 1 + rnd(&r, 16);
		if (rnd(&r, 2))
			lim.max_line = 100000;
		if (rnd(&r, 2))
			lim.max_literal = 40;

		drive(g.b, g.n, dir, &lim, NULL, &ref);
		normalize(&ref);
		check_against_gen(&ref, &g, lim.frag_size != 0);

		for (i = 0; i < 8; i++)
			chunks[i] = 1 + rnd(&r, rnd(&r, 2) ? 4 : 64);
		f.chunks = chunks;
		f.nchunks = 8;
		f.lit_step = rnd(&r, 2) ? 0 : 1 + rnd(&r, 7);
		drive(g.b, g.n, dir, &lim, &f, &x);
		normalize(&x);
		assert_same_run(&ref, &x);
		check_against_gen(&x, &g, lim.frag_size != 0);

		run_free(&x);
		run_free(&ref);
		free(g.b);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_simple_commands),    cmocka_unit_test(test_simple_responses),
	    cmocka_unit_test(test_line_ends),          cmocka_unit_test(test_announcements),
	    cmocka_unit_test(test_literal_append),     cmocka_unit_test(test_literal_zero),
	    cmocka_unit_test(test_literal_parts),      cmocka_unit_test(test_quoted),
	    cmocka_unit_test(test_quote_resets),       cmocka_unit_test(test_text_responses),
	    cmocka_unit_test(test_response_stream),    cmocka_unit_test(test_split_everywhere),
	    cmocka_unit_test(test_max_line),           cmocka_unit_test(test_fragments),
	    cmocka_unit_test(test_fragments_max_line), cmocka_unit_test(test_max_literal),
	    cmocka_unit_test(test_literal_overflow),   cmocka_unit_test(test_hostile),
	    cmocka_unit_test(test_peek_and_sticky),    cmocka_unit_test(test_boundary),
	    cmocka_unit_test(test_cancel_literal),     cmocka_unit_test(test_linear),
	    cmocka_unit_test(test_random_streams),     cmocka_unit_test(test_code_literals),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
