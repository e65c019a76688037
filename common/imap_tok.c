/*
 * imap_tok — the incremental IMAP stream tokenizer (API and unit kinds in
 * imap_tok.h).
 *
 * Role: cut one direction of an IMAP connection into LINE, FRAGMENT and
 * LITERAL units so the proxy learns where commands and responses begin and
 * end, and which bytes are opaque literal bodies, without copying anything.
 *
 * One logical line (a command or a response) goes through:
 *
 *   line start --FRAGMENT*--LINE(last)---------------------------> line start
 *                    |                                                ^
 *                    '--LINE(has_literal)--LITERAL*--next part...-----'
 *
 * Invariants:
 *   - p[0] is always the first unconsumed byte. t->scanned counts the bytes
 *     of the current LINE/FRAGMENT already fed through scan_byte(); each
 *     input byte goes through it exactly once however the stream is split,
 *     so feeding one byte at a time costs O(n) overall.
 *   - All lexical state (quote, announcement, response head) lives in t,
 *     never on the stack, so a scan can stop after any byte and resume.
 *     It is reset at every line end and carried across FRAGMENT units.
 *   - A complete LINE/FRAGMENT is cached in t->unit until consumed, so a
 *     repeated imap_tok_next() is a pure peek. LITERAL units are not cached:
 *     their length depends only on lit_left and the bytes presented.
 *   - No unit ever has len 0 or reaches beyond the bytes presented.
 *   - Once t->failed is set, every call returns -1 until imap_tok_init().
 */
#include "imap_tok.h"

#include <string.h>

/* Where the RESPONSES head scanner stands ("tag SP word ..."). */
enum head_state {
	HEAD_DONE = 0, /* nothing more to learn: COMMANDS, or decided */
	HEAD_START,    /* the next byte is the first of a logical line */
	HEAD_TAG,      /* inside the tag */
	HEAD_WORD,     /* inside the first word after the tag */
};

/* Where the literal announcement scanner stands (outside quotes). */
enum ann_state {
	ANN_NONE = 0,  /* the last bytes cannot end an announcement */
	ANN_OPEN,      /* "{" */
	ANN_DIGITS,    /* "{" and one or more digits */
	ANN_PLUS,      /* "{digits+" */
	ANN_CLOSED,    /* "{digits[+]}": a line end now means a literal */
	ANN_CLOSED_CR, /* ... and a CR: only LF may follow */
};

/* Where a status response's resp-text-code stands (RFC 3501 7.1: "[" right
 * after the status word and its SP, up to "]"). Inside it quotes and
 * literals count, as in any other response; the free text after it is
 * never looked at. */
enum code_state {
	CODE_NONE = 0, /* free text (or no status response): nothing to scan */
	CODE_MAYBE,    /* the status word and its SP: a "[" now opens a code */
	CODE_IN,       /* inside the code: scan_lexical() runs, "]" ends it */
};

/* Literal sizes are uint64_t but must fit a signed 64-bit off_t/ssize_t. */
#define LITERAL_SIZE_MAX ((uint64_t)INT64_MAX)

static int fail(struct imap_tok *t, const char *why)
{
	t->failed = true;
	t->err = why;
	return -1;
}

/* Forget everything learned inside the current line part. */
static void reset_lexical(struct imap_tok *t)
{
	t->in_quote = false;
	t->quote_esc = false;
	t->ann = ANN_NONE;
	t->ann_binary = false;
	t->ann_nonsync = false;
	t->ann_tilde = false;
	t->ann_num = 0;
	t->ann_overflow = false;
	t->scanned = 0;
	t->part_len = 0;
}

static void start_logical_line(struct imap_tok *t)
{
	t->at_line_start = true;
	t->line_text = false;
	t->code = CODE_NONE;
	t->head = t->dir == IMAP_TOK_RESPONSES ? HEAD_START : HEAD_DONE;
	t->word_len = 0;
	t->word_long = false;
	reset_lexical(t);
}

void imap_tok_init(struct imap_tok *t, enum imap_tok_dir dir, const struct imap_tok_limits *lim)
{
	memset(t, 0, sizeof(*t));
	t->dir = dir;
	if (lim != NULL)
		t->lim = *lim;
	start_logical_line(t);
}

static bool word_is(const struct imap_tok *t, const char *w)
{
	size_t n = strlen(w);

	return t->word_len == n && memcmp(t->word, w, n) == 0;
}

/* The first word after the tag is complete: is this a status response? */
static void head_decide(struct imap_tok *t)
{
	t->head = HEAD_DONE;
	if (t->word_long)
		return;
	if (word_is(t, "OK") || word_is(t, "NO") || word_is(t, "BAD") || word_is(t, "BYE") ||
	    word_is(t, "PREAUTH"))
		t->line_text = true;
}

/* Feed one byte (not LF) of the first line part of a response. */
static void scan_head(struct imap_tok *t, uint8_t c)
{
	if (t->head == HEAD_START) {
		/*
		 * RFC 3501 forbids "+" in tags, so a response starting with
		 * "+" is a continuation request even without the SP ("+\r\n"
		 * or a sloppy "+{4}\r\n").
		 */
		if (c == '+') {
			t->line_text = true;
			t->head = HEAD_DONE;
			return;
		}
		t->head = HEAD_TAG;
	}
	if (t->head == HEAD_TAG) {
		if (c == ' ') {
			t->head = HEAD_WORD;
			t->word_len = 0;
			t->word_long = false;
		}
		return;
	}
	/* HEAD_WORD. '[' ends it too, for servers that send "* OK[ALERT]". */
	if (c == ' ' || c == '\r' || c == '[') {
		head_decide(t);
		if (t->line_text) {
			t->code = c == '[' ? CODE_IN : c == ' ' ? CODE_MAYBE : CODE_NONE;
			/* The tag and word went through scan_lexical(): a code
			 * starts with nothing open ("x\"y NO [..." has no quote). */
			t->in_quote = false;
			t->quote_esc = false;
			t->ann = ANN_NONE;
			t->ann_tilde = false;
		}
	} else if (t->word_len < sizeof(t->word) - 1) {
		/* ASCII only: toupper() would depend on the locale. */
		t->word[t->word_len++] = (char)(c >= 'a' && c <= 'z' ? c - 'a' + 'A' : c);
	} else {
		t->word_long = true;
	}
}

/* Feed one byte (not LF) to the quote and announcement scanners. */
static void scan_lexical(struct imap_tok *t, uint8_t c)
{
	bool after_tilde = t->ann_tilde;

	t->ann_tilde = false;
	if (t->in_quote) {
		if (t->quote_esc)
			t->quote_esc = false;
		else if (c == '\\')
			t->quote_esc = true;
		else if (c == '"')
			t->in_quote = false;
		return;
	}

	switch (t->ann) {
	case ANN_OPEN:
	case ANN_DIGITS:
		if (c >= '0' && c <= '9') {
			uint64_t d = (uint64_t)(c - '0');

			/* Keep scanning after an overflow: it is only an error if
			 * the announcement turns out to be one. */
			if (t->ann_num > (LITERAL_SIZE_MAX - d) / 10)
				t->ann_overflow = true;
			else
				t->ann_num = t->ann_num * 10 + d;
			t->ann = ANN_DIGITS;
			return;
		}
		if (t->ann == ANN_DIGITS && c == '+') {
			t->ann_nonsync = true;
			t->ann = ANN_PLUS;
			return;
		}
		if (t->ann == ANN_DIGITS && c == '}') {
			t->ann = ANN_CLOSED;
			return;
		}
		break;
	case ANN_PLUS:
		if (c == '}') {
			t->ann = ANN_CLOSED;
			return;
		}
		break;
	case ANN_CLOSED:
		if (c == '\r') {
			t->ann = ANN_CLOSED_CR;
			return;
		}
		break;
	default:
		break;
	}

	/* c does not continue an announcement: treat it as an ordinary byte,
	 * which may itself open a quote or a new announcement. */
	t->ann = ANN_NONE;
	if (c == '"') {
		t->in_quote = true;
	} else if (c == '{') {
		t->ann = ANN_OPEN;
		t->ann_binary = after_tilde;
		t->ann_nonsync = false;
		t->ann_num = 0;
		t->ann_overflow = false;
	} else if (c == '~') {
		t->ann_tilde = true;
	}
}

/* Feed one byte (not LF) of a status response's text after its head. */
static void scan_code(struct imap_tok *t, uint8_t c)
{
	if (t->code == CODE_MAYBE) {
		t->code = c == '[' ? CODE_IN : CODE_NONE;
		return;
	}
	if (t->code != CODE_IN)
		return;
	if (c == ']' && !t->in_quote) {
		t->code = CODE_NONE;
		t->ann = ANN_NONE;
		t->ann_tilde = false;
		return;
	}
	scan_lexical(t, c);
}

/* A LF ended the current line part after n bytes: build the LINE unit. */
static int finish_line(struct imap_tok *t, size_t n, struct imap_tok_unit *u_r)
{
	struct imap_tok_unit *u = &t->unit;
	bool literal;

	/* A head cut short by the line end ("a1 OK\n") is decided now. */
	if (t->head == HEAD_WORD)
		head_decide(t);
	t->head = HEAD_DONE;

	literal = (!t->line_text || t->code == CODE_IN) &&
	          (t->ann == ANN_CLOSED || t->ann == ANN_CLOSED_CR);
	if (literal) {
		if (t->ann_overflow)
			return fail(t, "literal size too large");
		if (t->lim.max_literal != 0 && t->ann_num > t->lim.max_literal)
			return fail(t, "literal too large");
	}

	memset(u, 0, sizeof(*u));
	u->type = IMAP_TOK_LINE;
	u->len = n;
	u->first = t->at_line_start;
	u->last = !literal;
	u->text = t->line_text;
	if (literal) {
		u->has_literal = true;
		u->lit_nonsync = t->ann_nonsync;
		u->lit_binary = t->ann_binary;
		u->literal = t->ann_num;
	}
	t->have_unit = true;
	t->scanned = n;
	*u_r = *u;
	return 0;
}

int imap_tok_next(struct imap_tok *t, const uint8_t *p, size_t len, struct imap_tok_unit *u_r)
{
	size_t i, end;

	if (t->failed)
		return -1;

	if (t->in_literal) {
		if (len == 0)
			return -2;
		memset(u_r, 0, sizeof(*u_r));
		u_r->type = IMAP_TOK_LITERAL;
		u_r->len = (uint64_t)len < t->lit_left ? len : (size_t)t->lit_left;
		return 0;
	}

	/*
	 * Fewer bytes than already scanned break the contract ("present the
	 * same bytes again"); answer "need more" rather than hand out a unit
	 * that reaches past the input.
	 */
	if (t->have_unit) {
		if (t->unit.len > len)
			return -2;
		*u_r = t->unit;
		return 0;
	}
	if (t->scanned > len)
		return -2;

	end = len;
	if (t->lim.frag_size != 0 && end > t->lim.frag_size)
		end = t->lim.frag_size;
	for (i = t->scanned; i < end; i++) {
		uint8_t c = p[i];

		/* Checked before the LF so that the bound includes the line
		 * end, and before the line end arrives so that a peer cannot
		 * make us wait on an endless line. */
		if (t->lim.max_line != 0 && t->part_len + i + 1 > t->lim.max_line)
			return fail(t, "line too long");
		if (c == '\n')
			return finish_line(t, i + 1, u_r);
		if (t->head != HEAD_DONE)
			scan_head(t, c);
		else if (t->line_text)
			scan_code(t, c);
		/* Free text is never interpreted: skip quotes and {n}. */
		if (!t->line_text)
			scan_lexical(t, c);
	}
	t->scanned = i;

	if (t->lim.frag_size != 0 && i == t->lim.frag_size) {
		memset(&t->unit, 0, sizeof(t->unit));
		t->unit.type = IMAP_TOK_FRAGMENT;
		t->unit.len = i;
		t->unit.first = t->at_line_start;
		t->unit.text = t->line_text;
		t->have_unit = true;
		*u_r = t->unit;
		return 0;
	}
	return -2;
}

void imap_tok_consume(struct imap_tok *t, const struct imap_tok_unit *u, size_t n)
{
	if (t->failed)
		return;

	if (t->in_literal) {
		if (u->type != IMAP_TOK_LITERAL || (uint64_t)n > t->lit_left) {
			fail(t, "consume does not match unit");
			return;
		}
		t->lit_left -= n;
		/* The next line part starts with fresh lexical state, which
		 * consuming the announcing LINE already set up. */
		if (t->lit_left == 0)
			t->in_literal = false;
		return;
	}

	if (!t->have_unit || u->type != t->unit.type || n != t->unit.len) {
		fail(t, "consume does not match unit");
		return;
	}
	t->have_unit = false;

	if (t->unit.type == IMAP_TOK_FRAGMENT) {
		/* Same line part goes on: keep the lexical state. */
		t->part_len += n;
		t->scanned = 0;
		t->at_line_start = false;
		return;
	}

	if (!t->unit.has_literal) {
		start_logical_line(t);
		return;
	}

	/* The logical line goes on after the literal, with no head to scan. */
	t->at_line_start = false;
	t->head = HEAD_DONE;
	reset_lexical(t);
	t->lit_left = t->unit.literal;
	t->in_literal = t->lit_left > 0;
}

void imap_tok_cancel_literal(struct imap_tok *t)
{
	if (t->failed)
		return;
	t->have_unit = false;
	t->in_literal = false;
	t->lit_left = 0;
	start_logical_line(t);
}

const char *imap_tok_error(const struct imap_tok *t)
{
	return t->failed ? t->err : NULL;
}

bool imap_tok_at_boundary(const struct imap_tok *t)
{
	return t->at_line_start && !t->in_literal;
}
