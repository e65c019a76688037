/*
 * tok_drive — plays the proxy's part for common/imap_tok and checks every
 * answer against imap_tok.h's contract and an oracle over the whole stream.
 *
 * Input: TOK_PARAM_BYTES bytes of parameters, then the byte stream.
 *   [0..1]  max_line = (b0 | b1 << 8) % 4096        0 = no bound
 *   [2]     frag_size = b2 % 128                    0 = no FRAGMENTs
 *   [3]     max_literal = b3                        0 = no bound
 *   [4..7]  read sizes, cycled: (b & 0x7f) + 1, times 32 if b & 0x80
 *   [8]     consume LITERAL units at most b8 bytes at a time; 0 = whole
 *   [9]     bit i % 8 set: before consuming unit i, another read arrives
 *           (the destination was full) and the unit is asked for again
 *   [10]    if not 0: unit number b10 is consumed with a wrong length (one
 *           byte short, or past the end of its literal), a caller bug the
 *           tokenizer must report
 *
 * Like the proxy, the driver presents the unconsumed bytes plus what has
 * arrived, consumes LINE/FRAGMENT units whole and LITERAL units in part.
 * The tokenizer reads a copy of the stream in which ASan poisons what was
 * consumed and what has not arrived yet; the driver's checks read the
 * fuzzer's own bytes.
 *
 * Checked on every answer:
 *   0   len > 0 and within the bytes presented; asking again gives the same
 *       unit (a LITERAL may only grow when more bytes arrived); a LINE ends
 *       at the first LF, a FRAGMENT is frag_size bytes without one, a
 *       LITERAL is min(buffered, literal left); first/last/has_literal as
 *       the logical line stands; text, the announcement (size, +, ~) and
 *       both bounds as an oracle computes them from the bytes of the part;
 *       imap_tok_at_boundary() after each consume.
 *   -2  only when no unit is complete: nothing buffered in a literal, else
 *       no LF and less than frag_size bytes buffered, max_line not passed.
 *   -1  a documented reason that the bytes justify (or the misuse), and it
 *       sticks: asking again, even after a consume, gives -1 again.
 *   And after each answer, the same question with one byte fewer than was
 *   just looked at (a caller bug: bytes "presented again" must not shrink)
 *   gets -2, never a unit reaching past what is presented, and changes
 *   nothing (the run goes on and is checked as before).
 *   end literal bytes consumed plus what is left of the open literal equal
 *       the sizes announced; the units cover the consumed bytes exactly.
 * Then the stream is run again in one read with whole consumption: the
 * two runs must give the same units (LITERAL pieces merged) and outcome.
 */
#include "tok_drive.h"

#include <stdbool.h>
#include <string.h>

#include "fuzz.h"

#define LITERAL_SIZE_MAX ((uint64_t)INT64_MAX)

struct params {
	struct imap_tok_limits lim;
	size_t reads[4];
	size_t lit_step;
	unsigned stall;
	size_t misuse_at;
};

/* A unit as recorded for the comparison of two runs. */
struct rec {
	enum imap_tok_type type;
	size_t off, len;
	bool first, last, text, has_literal, nonsync, binary;
	uint64_t literal;
};

struct run {
	enum imap_tok_dir dir;
	const struct params *par;
	const uint8_t *s; /* the stream, for the driver's checks */
	size_t total;
	uint8_t *tb; /* the tokenizer's copy: poisoned outside [consumed, delivered) */
	size_t delivered, consumed;
	size_t nreads;
	struct imap_tok tok;

	/* The model: where the stream stands, as the driver sees it. */
	bool at_line_start;
	size_t line_start; /* offset of the current logical line */
	size_t part_start; /* offset of the current line part */
	bool first_part;   /* that part is the logical line's first */
	bool line_text;    /* RESPONSES: once the first part ended */
	bool in_literal;
	uint64_t lit_left;
	uint64_t announced, lit_consumed;
	size_t units;
	bool misused;

	struct rec *recs;
	size_t nrecs, cap;
	int rc;
	const char *err;
};

/* What an announcement at the end of a line part says. */
struct ann {
	bool has, nonsync, binary, overflow;
	uint64_t size;
};

/* ---- oracle ------------------------------------------------------------ */

static bool is_digit(uint8_t c)
{
	return c >= '0' && c <= '9';
}

/*
 * RESPONSES: is the logical line that starts with s[0..n) a status response
 * (tag or "*", SP, OK/NO/BAD/BYE/PREAUTH in any case, ended by SP, CR, "["
 * or the line end) or a continuation ("+" first)? final: s[n-1] is the LF
 * ending the first part. 1 yes, 0 no, -1 not known from these bytes.
 */
static int oracle_text(const uint8_t *s, size_t n, bool final)
{
	static const char *const words[] = {"OK", "NO", "BAD", "BYE", "PREAUTH"};
	const uint8_t *sp;
	size_t w, wn;

	if (n == 0)
		return -1;
	if (s[0] == '+')
		return 1;
	if (final)
		n--; /* the LF */
	sp = memchr(s, ' ', n);
	if (sp == NULL)
		return final ? 0 : -1;
	w = (size_t)(sp - s) + 1;
	for (wn = 0; w + wn < n; wn++) {
		uint8_t c = s[w + wn];

		if (c == ' ' || c == '\r' || c == '[')
			break;
	}
	if (w + wn == n && !final)
		return -1;
	for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++) {
		size_t k;

		if (strlen(words[i]) != wn)
			continue;
		for (k = 0; k < wn; k++) {
			uint8_t c = s[w + k];

			if (c >= 'a' && c <= 'z')
				c = (uint8_t)(c - 'a' + 'A');
			if (c != (uint8_t)words[i][k])
				break;
		}
		if (k == wn)
			return 1;
	}
	return 0;
}

/*
 * The line part s[0..n), which ends in its LF: does it end in "{N}" or
 * "{N+}" (optionally "~" before, CR before the LF) with the "{" outside
 * quoted strings (backslash escapes)?
 */
static struct ann oracle_ann(const uint8_t *s, size_t n)
{
	struct ann a = {0}, none = {0};
	size_t e = n - 1, j, k;
	bool in_q = false, esc = false;

	if (e > 0 && s[e - 1] == '\r')
		e--;
	if (e == 0 || s[e - 1] != '}')
		return none;
	j = e - 1; /* "}", then digits end at j */
	if (j > 0 && s[j - 1] == '+') {
		a.nonsync = true;
		j--;
	}
	for (k = j; k > 0 && is_digit(s[k - 1]); k--)
		;
	if (k == j || k == 0 || s[k - 1] != '{')
		return none;
	for (size_t i = 0; i < k - 1; i++) {
		if (in_q) {
			if (esc)
				esc = false;
			else if (s[i] == '\\')
				esc = true;
			else if (s[i] == '"')
				in_q = false;
		} else if (s[i] == '"') {
			in_q = true;
		}
	}
	if (in_q)
		return none;
	a.has = true;
	a.binary = k >= 2 && s[k - 2] == '~';
	for (size_t i = k; i < j; i++) {
		uint64_t d = (uint64_t)(s[i] - '0');

		if (a.size > (LITERAL_SIZE_MAX - d) / 10)
			a.overflow = true;
		else
			a.size = a.size * 10 + d;
	}
	return a;
}

/*
 * A status response's line part s[0..n) (ending in its LF): does it end in
 * an announcement inside the response code? first: the part starts the
 * logical line, and the code opens at the "[" right after the status word
 * (directly or after one SP); a later part starts inside the code (only a
 * literal in the code gives a status response more than one part). The
 * code ends at the first "]" outside quoted strings.
 */
static struct ann oracle_code_ann(const uint8_t *s, size_t n, bool first)
{
	struct ann none = {0};
	size_t from = 0, e = n - 1;
	bool in_q = false, esc = false;

	if (first) {
		const uint8_t *sp = memchr(s, ' ', e);
		size_t w;

		if (s[0] == '+' || sp == NULL)
			return none;
		for (w = (size_t)(sp - s) + 1; w < e && s[w] != ' ' && s[w] != '\r' && s[w] != '[';
		     w++)
			;
		if (w < e && s[w] == '[')
			from = w + 1;
		else if (w + 1 < e && s[w] == ' ' && s[w + 1] == '[')
			from = w + 2;
		else
			return none;
	}
	for (size_t i = from; i < e; i++) {
		if (in_q) {
			if (esc)
				esc = false;
			else if (s[i] == '\\')
				esc = true;
			else if (s[i] == '"')
				in_q = false;
		} else if (s[i] == '"') {
			in_q = true;
		} else if (s[i] == ']') {
			return none;
		}
	}
	return oracle_ann(s + from, n - from);
}

/* Text of the logical line as the unit ending at offset end must say. */
static bool expect_text(const struct run *r, size_t end, bool final)
{
	if (r->dir != IMAP_TOK_RESPONSES)
		return false;
	if (!r->first_part)
		return r->line_text;
	return oracle_text(r->s + r->line_start, end - r->line_start, final) == 1;
}

/* ---- the run ----------------------------------------------------------- */

static void deliver(struct run *r)
{
	size_t n = r->par->reads[r->nreads++ % 4];

	if (n > r->total - r->delivered)
		n = r->total - r->delivered;
	FUZZ_UNPOISON(r->tb + r->delivered, n);
	r->delivered += n;
}

static bool same_unit(const struct imap_tok_unit *a, const struct imap_tok_unit *b)
{
	return a->type == b->type && a->len == b->len && a->first == b->first &&
	       a->last == b->last && a->text == b->text && a->has_literal == b->has_literal &&
	       a->lit_nonsync == b->lit_nonsync && a->lit_binary == b->lit_binary &&
	       a->literal == b->literal;
}

static void record(struct run *r, const struct imap_tok_unit *u, size_t off, size_t n)
{
	struct rec *x;

	if (u->type == IMAP_TOK_LITERAL && r->nrecs > 0) {
		x = &r->recs[r->nrecs - 1];
		if (x->type == IMAP_TOK_LITERAL && x->off + x->len == off) {
			x->len += n;
			return;
		}
	}
	if (r->nrecs == r->cap) {
		r->cap = r->cap ? r->cap * 2 : 64;
		r->recs = realloc(r->recs, r->cap * sizeof(*r->recs));
		FUZZ_CHECK(r->recs != NULL, "out of memory");
	}
	x = &r->recs[r->nrecs++];
	memset(x, 0, sizeof(*x));
	x->type = u->type;
	x->off = off;
	x->len = n;
	x->first = u->first;
	x->last = u->last;
	x->text = u->text;
	x->has_literal = u->has_literal;
	x->nonsync = u->lit_nonsync;
	x->binary = u->lit_binary;
	x->literal = u->literal;
}

static void check_unit(const struct run *r, const struct imap_tok_unit *u)
{
	const struct imap_tok_limits *lim = &r->par->lim;
	const uint8_t *p = r->s + r->consumed;
	size_t pending = r->delivered - r->consumed, part_len;
	struct ann a;

	FUZZ_CHECK(u->len > 0, "no unit has len 0");
	FUZZ_CHECK(u->len <= pending, "no unit reaches past len");
	if (r->in_literal) {
		FUZZ_CHECK(u->type == IMAP_TOK_LITERAL, "inside a literal: LITERAL units");
		FUZZ_CHECK(u->len == (pending < r->lit_left ? pending : r->lit_left),
		           "a LITERAL is what is buffered of what is left");
		FUZZ_CHECK(!u->first && !u->last && !u->has_literal, "LITERAL flags");
		return;
	}
	FUZZ_CHECK(u->type == IMAP_TOK_LINE || u->type == IMAP_TOK_FRAGMENT,
	           "outside a literal: LINE or FRAGMENT");
	FUZZ_CHECK(u->first == r->at_line_start, "first: the unit starts a logical line");
	part_len = r->consumed + u->len - r->part_start;
	FUZZ_CHECK(lim->max_line == 0 || part_len <= lim->max_line, "a line part within max_line");

	if (u->type == IMAP_TOK_FRAGMENT) {
		FUZZ_CHECK(lim->frag_size != 0 && u->len == lim->frag_size,
		           "a FRAGMENT is frag_size bytes");
		FUZZ_CHECK(memchr(p, '\n', u->len) == NULL, "a FRAGMENT has no line end");
		FUZZ_CHECK(!u->last && !u->has_literal && u->literal == 0 && !u->lit_nonsync &&
		               !u->lit_binary,
		           "FRAGMENT flags");
		FUZZ_CHECK(u->text == expect_text(r, r->consumed + u->len, false),
		           "FRAGMENT text as far as its bytes tell");
		return;
	}

	FUZZ_CHECK(p[u->len - 1] == '\n', "a LINE ends in LF");
	FUZZ_CHECK(memchr(p, '\n', u->len - 1) == NULL, "a LINE ends at the first LF");
	FUZZ_CHECK(u->text == expect_text(r, r->consumed + u->len, true), "LINE text");
	a = u->text ? oracle_code_ann(r->s + r->part_start, part_len, r->first_part)
	            : oracle_ann(r->s + r->part_start, part_len);
	FUZZ_CHECK(u->has_literal == a.has, "has_literal: the part ends in an announcement");
	FUZZ_CHECK(u->last == !u->has_literal, "last: no literal follows");
	if (!a.has) {
		FUZZ_CHECK(u->literal == 0 && !u->lit_nonsync && !u->lit_binary,
		           "no announcement, no literal flags");
		return;
	}
	FUZZ_CHECK(!a.overflow, "an announcement above 2^63-1 is an error, not a unit");
	FUZZ_CHECK(u->literal == a.size, "literal: the announced size");
	FUZZ_CHECK(u->lit_nonsync == a.nonsync, "lit_nonsync: {n+}");
	FUZZ_CHECK(u->lit_binary == a.binary, "lit_binary: ~{n}");
	FUZZ_CHECK(lim->max_literal == 0 || u->literal <= lim->max_literal,
	           "literal within max_literal");
}

static void consume_unit(struct run *r, const struct imap_tok_unit *u)
{
	size_t n = u->len;

	if (u->type == IMAP_TOK_LITERAL && r->par->lit_step != 0 && n > r->par->lit_step)
		n = r->par->lit_step;
	imap_tok_consume(&r->tok, u, n);
	FUZZ_CHECK(imap_tok_error(&r->tok) == NULL, "a correct consume is no error");
	FUZZ_POISON(r->tb + r->consumed, n);
	record(r, u, r->consumed, n);
	r->consumed += n;

	switch (u->type) {
	case IMAP_TOK_LITERAL:
		r->lit_left -= n;
		r->lit_consumed += n;
		if (r->lit_left == 0) {
			r->in_literal = false;
			r->part_start = r->consumed;
		}
		break;
	case IMAP_TOK_FRAGMENT:
		r->at_line_start = false;
		break;
	case IMAP_TOK_LINE:
		if (r->first_part)
			r->line_text = u->text;
		if (u->has_literal) {
			r->announced += u->literal;
			r->at_line_start = false;
			r->first_part = false;
			r->part_start = r->consumed;
			r->in_literal = u->literal > 0;
			r->lit_left = u->literal;
		} else {
			r->at_line_start = true;
			r->first_part = true;
			r->line_text = false;
			r->line_start = r->part_start = r->consumed;
		}
		break;
	}
	FUZZ_CHECK(imap_tok_at_boundary(&r->tok) == (r->at_line_start && !r->in_literal),
	           "imap_tok_at_boundary");
}

/* -2: no unit may be complete in what is buffered. */
static void check_need_more(const struct run *r)
{
	const struct imap_tok_limits *lim = &r->par->lim;
	size_t pending = r->delivered - r->consumed;

	FUZZ_CHECK(!r->misused, "a misused consume is an error");
	if (r->in_literal) {
		FUZZ_CHECK(pending == 0, "-2 in a literal only with nothing buffered");
		return;
	}
	FUZZ_CHECK(lim->frag_size == 0 || pending < lim->frag_size,
	           "-2 with a whole fragment buffered");
	FUZZ_CHECK(memchr(r->s + r->consumed, '\n', pending) == NULL,
	           "-2 with a line end buffered");
	FUZZ_CHECK(lim->max_line == 0 || r->delivered - r->part_start <= lim->max_line,
	           "-2 with max_line passed");
}

/* -1: sticky, and justified by the bytes. */
static void check_error(struct run *r)
{
	const struct imap_tok_limits *lim = &r->par->lim;
	const char *e = imap_tok_error(&r->tok);
	struct imap_tok_unit u = {.type = IMAP_TOK_LINE, .len = 1};
	size_t w, end;
	const uint8_t *lf;
	struct ann a;

	FUZZ_CHECK(e != NULL, "-1 has a reason");
	for (int i = 0; i < 2; i++) {
		struct imap_tok_unit v;

		FUZZ_CHECK(imap_tok_next(&r->tok, r->tb + r->consumed, r->delivered - r->consumed,
		                         &v) == -1,
		           "-1 is sticky");
		FUZZ_CHECK(imap_tok_error(&r->tok) == e, "the reason sticks too");
		imap_tok_consume(&r->tok, &u, 1);
	}
	r->err = e;
	if (r->misused) {
		FUZZ_CHECK(strcmp(e, "consume does not match unit") == 0, "misuse reported");
		return;
	}
	FUZZ_CHECK(!r->in_literal, "no error inside a literal");
	w = r->delivered;
	if (lim->frag_size != 0 && w > r->consumed + lim->frag_size)
		w = r->consumed + lim->frag_size;
	lf = memchr(r->s + r->consumed, '\n', w - r->consumed);
	if (strcmp(e, "line too long") == 0) {
		size_t x = r->part_start + lim->max_line; /* first byte past the bound */

		FUZZ_CHECK(lim->max_line != 0, "line too long needs max_line");
		FUZZ_CHECK(x < w, "line too long: the byte past max_line is buffered");
		FUZZ_CHECK(lf == NULL || lf >= r->s + x, "line too long: no line end before it");
		return;
	}
	FUZZ_CHECK(strcmp(e, "literal too large") == 0 || strcmp(e, "literal size too large") == 0,
	           "a documented reason");
	FUZZ_CHECK(lf != NULL, "literal errors come with the line end");
	end = (size_t)(lf - r->s) + 1;
	FUZZ_CHECK(lim->max_line == 0 || end - r->part_start <= lim->max_line,
	           "literal error on a line within max_line");
	a = expect_text(r, end, true)
	        ? oracle_code_ann(r->s + r->part_start, end - r->part_start, r->first_part)
	        : oracle_ann(r->s + r->part_start, end - r->part_start);
	FUZZ_CHECK(a.has, "literal error: the part ends in an announcement (not in free text)");
	if (strcmp(e, "literal size too large") == 0)
		FUZZ_CHECK(a.overflow, "literal size too large: above 2^63-1");
	else
		FUZZ_CHECK(!a.overflow && lim->max_literal != 0 && a.size > lim->max_literal,
		           "literal too large: above max_literal");
}

/* The run is over: -1, or -2 with the whole stream delivered. */
static void check_end(const struct run *r)
{
	size_t covered = 0;

	FUZZ_CHECK(r->lit_consumed + (r->in_literal ? r->lit_left : 0) == r->announced,
	           "literal bytes add up to the announced sizes");
	for (size_t i = 0; i < r->nrecs; i++) {
		FUZZ_CHECK(r->recs[i].off == covered, "units follow each other");
		covered += r->recs[i].len;
	}
	FUZZ_CHECK(covered == r->consumed, "units cover what was consumed");
	FUZZ_CHECK(r->rc == -1 || r->delivered == r->total, "-2 at the end of the stream");
}

/*
 * Present n bytes, fewer than the tokenizer has just looked at: it must
 * say -2 rather than hand out a unit past n, and stay as it was.
 */
static void shrink_probe(struct run *r, size_t n)
{
	struct imap_tok_unit u;

	FUZZ_CHECK(imap_tok_next(&r->tok, r->tb + r->consumed, n, &u) == -2,
	           "fewer bytes than looked at: -2");
	FUZZ_CHECK(imap_tok_error(&r->tok) == NULL, "fewer bytes than looked at: no error");
}

static void run_stream(struct run *r)
{
	imap_tok_init(&r->tok, r->dir, &r->par->lim);
	r->at_line_start = true;
	r->first_part = true;
	deliver(r);
	for (;;) {
		struct imap_tok_unit u, v;
		int rc =
		    imap_tok_next(&r->tok, r->tb + r->consumed, r->delivered - r->consumed, &u);

		if (rc == -1) {
			r->rc = -1;
			check_error(r);
			check_end(r);
			return;
		}
		if (rc == -2) {
			check_need_more(r);
			if (r->delivered > r->consumed)
				shrink_probe(r, r->delivered - r->consumed - 1);
			if (r->delivered == r->total) {
				r->rc = -2;
				check_end(r);
				return;
			}
			deliver(r);
			continue;
		}
		FUZZ_CHECK(rc == 0, "imap_tok_next returns 0, -1 or -2");
		FUZZ_CHECK(!r->misused, "a misused consume is an error");
		check_unit(r, &u);
		shrink_probe(r, u.type == IMAP_TOK_LITERAL ? 0 : u.len - 1);
		FUZZ_CHECK(imap_tok_next(&r->tok, r->tb + r->consumed, r->delivered - r->consumed,
		                         &v) == 0 &&
		               same_unit(&u, &v),
		           "asking again gives the same unit");
		r->units++;

		if ((r->par->stall >> (r->units % 8) & 1) && r->delivered < r->total) {
			/* The destination was full; meanwhile more arrived. */
			deliver(r);
			rc = imap_tok_next(&r->tok, r->tb + r->consumed, r->delivered - r->consumed,
			                   &v);
			FUZZ_CHECK(rc == 0, "a unit stays available");
			if (u.type == IMAP_TOK_LITERAL) {
				FUZZ_CHECK(v.type == IMAP_TOK_LITERAL && v.len >= u.len,
				           "a LITERAL may grow");
				check_unit(r, &v);
			} else {
				FUZZ_CHECK(same_unit(&u, &v),
				           "a LINE or FRAGMENT is the same unit");
			}
			u = v;
		}
		if (r->units == r->par->misuse_at) {
			imap_tok_consume(&r->tok, &u,
			                 u.type == IMAP_TOK_LITERAL ? (size_t)r->lit_left + 1
			                                            : u.len - 1);
			r->misused = true;
			continue;
		}
		consume_unit(r, &u);
	}
}

static void run_init(struct run *r, enum imap_tok_dir dir, const struct params *par,
                     const uint8_t *s, size_t n)
{
	memset(r, 0, sizeof(*r));
	r->dir = dir;
	r->par = par;
	r->s = s;
	r->total = n;
	r->tb = malloc(n + 1); /* never NULL + 0, even for an empty stream */
	FUZZ_CHECK(r->tb != NULL, "out of memory");
	memcpy(r->tb, s, n);
	FUZZ_POISON(r->tb, n + 1);
}

static void run_free(struct run *r)
{
	FUZZ_UNPOISON(r->tb, r->total + 1);
	free(r->tb);
	free(r->recs);
}

static size_t read_params(const uint8_t *d, size_t n, struct params *par)
{
	uint8_t b[TOK_PARAM_BYTES] = {0};

	if (n > TOK_PARAM_BYTES)
		n = TOK_PARAM_BYTES;
	memcpy(b, d, n);
	memset(par, 0, sizeof(*par));
	par->lim.max_line = (size_t)(b[0] | b[1] << 8) % 4096;
	par->lim.frag_size = b[2] % 128;
	par->lim.max_literal = b[3];
	for (size_t i = 0; i < 4; i++) {
		uint8_t c = b[4 + i];

		par->reads[i] = ((size_t)(c & 0x7f) + 1) * (c & 0x80 ? 32 : 1);
	}
	par->lit_step = b[8];
	par->stall = b[9];
	par->misuse_at = b[10];
	return n;
}

void tok_drive(enum imap_tok_dir dir, const uint8_t *data, size_t size)
{
	struct params par, one;
	struct run a, b;
	size_t skip = read_params(data, size, &par);

	run_init(&a, dir, &par, data + skip, size - skip);
	run_stream(&a);

	if (!a.misused) {
		/* The same stream in one read, literals consumed whole. */
		one = par;
		for (size_t i = 0; i < 4; i++)
			one.reads[i] = size + 1;
		one.lit_step = 0;
		one.stall = 0;
		one.misuse_at = 0;
		run_init(&b, dir, &one, data + skip, size - skip);
		run_stream(&b);
		FUZZ_CHECK(a.rc == b.rc, "same outcome however the stream is read");
		FUZZ_CHECK(a.rc == -2 || strcmp(a.err, b.err) == 0, "same error");
		FUZZ_CHECK(a.consumed == b.consumed, "same bytes consumed");
		FUZZ_CHECK(a.nrecs == b.nrecs, "same number of units");
		for (size_t i = 0; i < a.nrecs; i++)
			FUZZ_CHECK(memcmp(&a.recs[i], &b.recs[i], sizeof(a.recs[i])) == 0,
			           "same units");
		run_free(&b);
	}
	run_free(&a);
}
