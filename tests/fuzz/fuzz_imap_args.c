/*
 * fuzz_imap_args — common/imap_args.c: imap_cmd_parse() on arbitrary
 * commands and imap_head_parse() on arbitrary line heads.
 *
 * Both get the input in a heap block of exactly its size (ASan catches a
 * read past len). Checked for imap_cmd_parse():
 *   0   tag at the start and name non-empty; every argument inside the
 *       buffer, in order; atoms of atom characters; decoded quoted strings
 *       without NUL, CR or LF; parentheses balanced; the command ends in
 *       LF; NUL bytes only inside literal bodies; each argument is its
 *       own bytes of the input (atoms and literal bodies unmoved, a quoted
 *       string's input exactly its value with " and \ escaped, the one
 *       valid spelling), a literal body right after its "}" and line end.
 *       Then the round trip:
 *       the command written back in a canonical form (quoted strings
 *       re-escaped, literals as {n}) parses to the same tag, name and
 *       arguments.
 *   -1  a reason, and a tag, when given, at the start of the buffer.
 * For imap_head_parse(): every part inside the line, words without SP, CR
 * or LF, -1 exactly when there is no tag; and imap_word_eq() on its words
 * agrees with a plain ASCII case-insensitive comparison.
 */
#include <stdbool.h>
#include <string.h>

#include "fuzz.h"
#include "imap_args.h"

/* The canonical form of a parsed command, for the round trip. */
struct out {
	uint8_t *p;
	size_t len, cap;
};

static void put(struct out *o, const void *s, size_t n)
{
	if (o->len + n > o->cap) {
		o->cap = (o->len + n) * 2 + 64;
		o->p = realloc(o->p, o->cap);
		FUZZ_CHECK(o->p != NULL, "out of memory");
	}
	memcpy(o->p + o->len, s, n);
	o->len += n;
}

static bool is_atom_arg_byte(uint8_t c)
{
	/* ATOM-CHAR plus the list wildcards and "]" (imap_args.c's grammar). */
	return c > 0x20 && c < 0x7f && c != '(' && c != ')' && c != '{' && c != '"' && c != '\\';
}

static void serialize(const struct imap_cmd *c, struct out *o)
{
	char num[32];

	put(o, c->tag, c->tag_len);
	put(o, " ", 1);
	put(o, c->name, c->name_len);
	for (size_t i = 0; i < c->nargs; i++) {
		const struct imap_arg *a = &c->args[i];

		if (a->type != IMAP_ARG_LIST_CLOSE &&
		    !(i > 0 && c->args[i - 1].type == IMAP_ARG_LIST_OPEN))
			put(o, " ", 1);
		switch (a->type) {
		case IMAP_ARG_ATOM:
		case IMAP_ARG_LIST_OPEN:
		case IMAP_ARG_LIST_CLOSE:
			put(o, a->data, a->len);
			break;
		case IMAP_ARG_QUOTED:
			put(o, "\"", 1);
			for (size_t k = 0; k < a->len; k++) {
				if (a->data[k] == '"' || a->data[k] == '\\')
					put(o, "\\", 1);
				put(o, &a->data[k], 1);
			}
			put(o, "\"", 1);
			break;
		case IMAP_ARG_LITERAL:
			snprintf(num, sizeof(num), "{%zu}\r\n", a->len);
			put(o, num, strlen(num));
			put(o, a->data, a->len);
			break;
		}
	}
	put(o, "\r\n", 2);
}

/* Offset just past the closing quote of quoted argument a in the input. */
static size_t quoted_end(const uint8_t *buf, const struct imap_arg *a)
{
	size_t off = (size_t)(a->data - buf);

	for (size_t k = 0; k < a->len; k++)
		off += a->data[k] == '"' || a->data[k] == '\\' ? 2 : 1;
	return off + 1;
}

/* The input of a quoted argument is "value" with " and \ escaped. */
static void check_quoted(const uint8_t *orig, const uint8_t *buf, size_t len,
                         const struct imap_arg *a)
{
	size_t off = (size_t)(a->data - buf);

	FUZZ_CHECK(off > 0 && orig[off - 1] == '"', "a quoted string opens with a quote");
	for (size_t k = 0; k < a->len; k++) {
		if (a->data[k] == '"' || a->data[k] == '\\') {
			FUZZ_CHECK(off + 1 < len && orig[off] == '\\', "escaped as \\");
			off++;
		}
		FUZZ_CHECK(off < len && orig[off] == a->data[k], "quoted value is the input's");
		off++;
	}
	FUZZ_CHECK(off < len && orig[off] == '"', "a quoted string closes with a quote");
}

/* A literal body follows "{N}" or "{N+}" and CRLF or LF, N its length. */
static void check_literal_head(const uint8_t *orig, const uint8_t *buf, const struct imap_arg *a)
{
	size_t off = (size_t)(a->data - buf), n = 0, mul = 1;
	bool big = false;

	FUZZ_CHECK(off >= 1 && orig[off - 1] == '\n', "a literal body follows a line end");
	off--;
	if (off >= 1 && orig[off - 1] == '\r')
		off--;
	FUZZ_CHECK(off >= 1 && orig[off - 1] == '}', "a literal body follows }");
	off--;
	if (off >= 1 && orig[off - 1] == '+')
		off--;
	for (; off >= 1 && orig[off - 1] >= '0' && orig[off - 1] <= '9'; off--) {
		/* Leading zeros may be many; a digit past 10^12 is too big anyway. */
		if (mul > 1000000000000) {
			big = big || orig[off - 1] != '0';
		} else {
			n += (size_t)(orig[off - 1] - '0') * mul;
			mul *= 10;
		}
	}
	FUZZ_CHECK(off >= 1 && orig[off - 1] == '{' && !big && n == a->len,
	           "{N}: N is the body's length");
}

static void check_cmd(const uint8_t *orig, const uint8_t *buf, size_t len, const struct imap_cmd *c)
{
	const uint8_t *pos = buf;
	int depth = 0;

	FUZZ_CHECK(len > 0 && orig[len - 1] == '\n', "a command ends in LF");
	FUZZ_CHECK(c->tag == buf && c->tag_len > 0 && c->tag_len < len, "tag at the start");
	FUZZ_CHECK(c->name > buf && c->name_len > 0 && c->name + c->name_len <= buf + len,
	           "name inside");
	FUZZ_CHECK(c->nargs <= IMAP_CMD_MAX_ARGS, "at most IMAP_CMD_MAX_ARGS");
	pos = c->name + c->name_len;
	for (size_t i = 0; i < c->nargs; i++) {
		const struct imap_arg *a = &c->args[i];

		FUZZ_CHECK(a->data >= pos && a->data <= buf + len && a->len <= len &&
		               a->data + a->len <= buf + len,
		           "arguments inside the buffer, in order");
		pos = a->data + a->len;
		switch (a->type) {
		case IMAP_ARG_ATOM:
			FUZZ_CHECK(a->len > 0, "atoms are not empty");
			for (size_t k = 0; k < a->len; k++)
				FUZZ_CHECK(is_atom_arg_byte(a->data[k]), "atom characters");
			FUZZ_CHECK(memcmp(a->data, orig + (a->data - buf), a->len) == 0,
			           "an atom is its input bytes");
			break;
		case IMAP_ARG_QUOTED:
			for (size_t k = 0; k < a->len; k++)
				FUZZ_CHECK(a->data[k] != '\0' && a->data[k] != '\r' &&
				               a->data[k] != '\n',
				           "no NUL, CR or LF in a quoted string");
			check_quoted(orig, buf, len, a);
			pos = buf + quoted_end(buf, a);
			break;
		case IMAP_ARG_LITERAL:
			FUZZ_CHECK(memcmp(a->data, orig + (a->data - buf), a->len) == 0,
			           "a literal body is its input bytes");
			check_literal_head(orig, buf, a);
			break;
		case IMAP_ARG_LIST_OPEN:
			FUZZ_CHECK(a->len == 1 && a->data[0] == '(', "(");
			depth++;
			break;
		case IMAP_ARG_LIST_CLOSE:
			FUZZ_CHECK(a->len == 1 && a->data[0] == ')', ")");
			FUZZ_CHECK(--depth >= 0, "no ) before its (");
			break;
		default:
			FUZZ_CHECK(false, "argument type");
		}
	}
	FUZZ_CHECK(depth == 0, "balanced parentheses");
	/* NUL only in literal bodies, which are never moved by decoding. */
	for (size_t k = 0; k < len; k++) {
		bool in_literal = false;

		if (orig[k] != '\0')
			continue;
		for (size_t i = 0; i < c->nargs && !in_literal; i++) {
			const struct imap_arg *a = &c->args[i];

			in_literal = a->type == IMAP_ARG_LITERAL && buf + k >= a->data &&
			             buf + k < a->data + a->len;
		}
		FUZZ_CHECK(in_literal, "NUL only inside literals");
	}
}

static void round_trip(const struct imap_cmd *c)
{
	struct out o = {0};
	struct imap_cmd c2;
	const char *err = NULL;

	serialize(c, &o);
	FUZZ_CHECK(imap_cmd_parse(o.p, o.len, &c2, &err) == 0, "the canonical form parses");
	FUZZ_CHECK(c2.tag_len == c->tag_len && memcmp(c2.tag, c->tag, c->tag_len) == 0,
	           "round trip: tag");
	FUZZ_CHECK(c2.name_len == c->name_len && memcmp(c2.name, c->name, c->name_len) == 0,
	           "round trip: name");
	FUZZ_CHECK(c2.nargs == c->nargs, "round trip: argument count");
	for (size_t i = 0; i < c->nargs; i++) {
		const struct imap_arg *a = &c->args[i], *b = &c2.args[i];

		FUZZ_CHECK(a->type == b->type && a->len == b->len &&
		               (a->len == 0 || memcmp(a->data, b->data, a->len) == 0),
		           "round trip: arguments");
	}
	free(o.p);
}

/* ASCII case-insensitive p[0..len) == word, the slow obvious way. */
static bool word_eq_ref(const uint8_t *p, size_t len, const char *word)
{
	if (strlen(word) != len)
		return false;
	for (size_t i = 0; i < len; i++) {
		uint8_t a = p[i], b = (uint8_t)word[i];

		if (a >= 'a' && a <= 'z')
			a = (uint8_t)(a - 'a' + 'A');
		if (b >= 'a' && b <= 'z')
			b = (uint8_t)(b - 'a' + 'A');
		if (a != b)
			return false;
	}
	return true;
}

static void check_words(const uint8_t *w, size_t n)
{
	static const char *const words[] = {"LOGIN", "ok", "Fetch", "", "UID", "*", "+"};

	for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++)
		FUZZ_CHECK(imap_word_eq(w, n, words[i]) == word_eq_ref(w, n, words[i]),
		           "imap_word_eq");
}

static void check_head(const uint8_t *p, size_t len)
{
	struct imap_head h;
	const uint8_t *end = p + len;
	int rc = imap_head_parse(p, len, &h);

	if (rc < 0) {
		FUZZ_CHECK(len == 0 || p[0] == ' ' || p[0] == '\r' || p[0] == '\n',
		           "-1 only without a tag");
		return;
	}
	FUZZ_CHECK(rc == 0, "0 or -1");
	FUZZ_CHECK(h.tag == p && h.tag_len > 0 && h.tag_len <= len, "tag at the start");
	FUZZ_CHECK(h.w1 >= p + h.tag_len && h.w1 + h.w1_len <= end, "w1 inside");
	FUZZ_CHECK(h.w2 >= h.w1 + h.w1_len && h.w2 + h.w2_len <= end, "w2 inside, after w1");
	FUZZ_CHECK(h.rest >= h.w1 + h.w1_len && h.rest <= end && h.rest + h.rest_len <= end,
	           "rest inside, after w1");
	FUZZ_CHECK(memchr(h.rest, '\n', h.rest_len) == NULL, "rest stops at the line end");
	for (size_t k = 0; k < h.tag_len; k++)
		FUZZ_CHECK(h.tag[k] != ' ' && h.tag[k] != '\r' && h.tag[k] != '\n', "tag word");
	for (size_t k = 0; k < h.w1_len; k++)
		FUZZ_CHECK(h.w1[k] != ' ' && h.w1[k] != '\r' && h.w1[k] != '\n', "w1 word");
	for (size_t k = 0; k < h.w2_len; k++)
		FUZZ_CHECK(h.w2[k] != ' ' && h.w2[k] != '\r' && h.w2[k] != '\n', "w2 word");
	check_words(h.tag, h.tag_len);
	check_words(h.w1, h.w1_len);
	check_words(h.w2, h.w2_len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	uint8_t *buf = malloc(size > 0 ? size : 1);
	struct imap_cmd c;
	const char *err = "untouched";

	FUZZ_CHECK(buf != NULL, "out of memory");
	memcpy(buf, data, size);
	check_head(buf, size);

	if (imap_cmd_parse(buf, size, &c, &err) == 0) {
		FUZZ_CHECK(err == NULL, "no reason on success");
		check_cmd(data, buf, size, &c);
		round_trip(&c);
	} else {
		FUZZ_CHECK(err != NULL && err[0] != '\0', "-1 has a reason");
		FUZZ_CHECK(c.tag_len == 0 || (c.tag == buf && c.tag_len <= size),
		           "a tag, if any, at the start");
	}
	free(buf);
	return 0;
}
