/*
 * test_imap_args — imap_cmd_parse, imap_head_parse and imap_word_eq.
 *
 * Table-driven: valid pre-auth commands with their expected split, one row
 * per error class, then hostile input: every proper prefix of every valid
 * command, trailing garbage, deterministic random and mutated input. Every
 * buffer handed to the parser is an exact-size heap copy, so that a read
 * past the end shows up under valgrind and ASan.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "imap_args.h"

/* A string literal with its length, NULs included. */
#define S(s) s, sizeof(s) - 1

struct exp_arg {
	enum imap_arg_type type;
	const char *data;
	size_t len;
};

#define ATOM(s)                                                                                    \
	{                                                                                          \
		IMAP_ARG_ATOM, S(s)                                                                \
	}
#define QUOTED(s)                                                                                  \
	{                                                                                          \
		IMAP_ARG_QUOTED, S(s)                                                              \
	}
#define LIT(s)                                                                                     \
	{                                                                                          \
		IMAP_ARG_LITERAL, S(s)                                                             \
	}
#define OPEN                                                                                       \
	{                                                                                          \
		IMAP_ARG_LIST_OPEN, S("(")                                                         \
	}
#define CLOSE                                                                                      \
	{                                                                                          \
		IMAP_ARG_LIST_CLOSE, S(")")                                                        \
	}

struct ok_case {
	const char *in;
	size_t in_len;
	const char *tag;
	const char *name;
	size_t nargs;
	struct exp_arg args[16];
};

static const struct ok_case ok_cases[] = {
    {S("a1 LOGIN alice secret\r\n"), "a1", "LOGIN", 2, {ATOM("alice"), ATOM("secret")}},
    {S("a1 login alice secret\n"), "a1", "login", 2, {ATOM("alice"), ATOM("secret")}},
    {S("a2 LOGIN \"alice\" \"se\\\"cr\\\\et\"\r\n"),
     "a2",
     "LOGIN",
     2,
     {QUOTED("alice"), QUOTED("se\"cr\\et")}},
    {S("a2 LOGIN \"\\\\\" \"\\\"\"\r\n"), "a2", "LOGIN", 2, {QUOTED("\\"), QUOTED("\"")}},
    {S("a2 LOGIN \"j\xc3\xb6rg\" \"p\xc3\xa4ss \xff\"\r\n"),
     "a2",
     "LOGIN",
     2,
     {QUOTED("j\xc3\xb6rg"), QUOTED("p\xc3\xa4ss \xff")}},
    {S("a2 LOGIN \"\" \"(){}*%] \"\r\n"), "a2", "LOGIN", 2, {QUOTED(""), QUOTED("(){}*%] ")}},
    {S("a3 LOGIN {5}\r\nalice {6}\r\nsecret\r\n"), "a3", "LOGIN", 2, {LIT("alice"), LIT("secret")}},
    {S("a4 LOGIN {5+}\r\nalice {6+}\r\nsecret\r\n"),
     "a4",
     "LOGIN",
     2,
     {LIT("alice"), LIT("secret")}},
    {S("a4 LOGIN {5}\nalice {6+}\nsecret\n"), "a4", "LOGIN", 2, {LIT("alice"), LIT("secret")}},
    /* A literal body is opaque: NUL, CRLF, quotes, braces, 8-bit. */
    {S("a5 LOGIN alice {13}\r\na\0b\r\nc\"d\"{1}\xff\r\n"),
     "a5",
     "LOGIN",
     2,
     {ATOM("alice"), LIT("a\0b\r\nc\"d\"{1}\xff")}},
    {S("a5 LOGIN {0}\r\n {0+}\r\n\r\n"), "a5", "LOGIN", 2, {LIT(""), LIT("")}},
    {S("a5 LOGIN ~{3}\r\nabc ~{3+}\r\nd\0f\r\n"), "a5", "LOGIN", 2, {LIT("abc"), LIT("d\0f")}},
    {S("a5 LOGIN {005}\r\nalice x\r\n"), "a5", "LOGIN", 2, {LIT("alice"), ATOM("x")}},
    {S("a5 LOGIN \"alice\" {6}\r\nsecret\r\n"), "a5", "LOGIN", 2, {QUOTED("alice"), LIT("secret")}},
    {S("a6 AUTHENTICATE PLAIN\r\n"), "a6", "AUTHENTICATE", 1, {ATOM("PLAIN")}},
    {S("a6 authenticate plain AGFsaWNlAHNlY3JldA==\r\n"),
     "a6",
     "authenticate",
     2,
     {ATOM("plain"), ATOM("AGFsaWNlAHNlY3JldA==")}},
    {S("a6 AUTHENTICATE PLAIN =\r\n"), "a6", "AUTHENTICATE", 2, {ATOM("PLAIN"), ATOM("=")}},
    {S("a7 ID (\"name\" \"Thunderbird\" \"version\" \"115.3.1\")\r\n"),
     "a7",
     "ID",
     6,
     {OPEN, QUOTED("name"), QUOTED("Thunderbird"), QUOTED("version"), QUOTED("115.3.1"), CLOSE}},
    {S("a7 ID (\"name\" NIL \"os\" {5}\r\nLinux)\r\n"),
     "a7",
     "ID",
     6,
     {OPEN, QUOTED("name"), ATOM("NIL"), QUOTED("os"), LIT("Linux"), CLOSE}},
    {S("a7 ID NIL\r\n"), "a7", "ID", 1, {ATOM("NIL")}},
    {S("a7 ID ()\r\n"), "a7", "ID", 2, {OPEN, CLOSE}},
    {S("a8 X (a (b \"c\") () ((d))) e\r\n"),
     "a8",
     "X",
     15,
     {OPEN, ATOM("a"), OPEN, ATOM("b"), QUOTED("c"), CLOSE, OPEN, CLOSE, OPEN, OPEN, ATOM("d"),
      CLOSE, CLOSE, CLOSE, ATOM("e")}},
    {S("a9 NOOP\r\n"), "a9", "NOOP", 0, {{0, NULL, 0}}},
    {S("A001 CAPABILITY\n"), "A001", "CAPABILITY", 0, {{0, NULL, 0}}},
    {S("t-1_2.3]x~ X-FOO.bar_1\r\n"), "t-1_2.3]x~", "X-FOO.bar_1", 0, {{0, NULL, 0}}},
    {S("b LIST \"\" *\r\n"), "b", "LIST", 2, {QUOTED(""), ATOM("*")}},
    {S("b LIST \"\" INBOX.%\r\n"), "b", "LIST", 2, {QUOTED(""), ATOM("INBOX.%")}},
    {S("b FETCH 1:* BODY.PEEK[HEADER]\r\n"),
     "b",
     "FETCH",
     2,
     {ATOM("1:*"), ATOM("BODY.PEEK[HEADER]")}},
    {S("b X a}b ~x +1 =\r\n"), "b", "X", 4, {ATOM("a}b"), ATOM("~x"), ATOM("+1"), ATOM("=")}},
};

#define N_OK (sizeof(ok_cases) / sizeof(ok_cases[0]))

struct err_case {
	const char *in;
	size_t in_len;
	const char *err;
	const char *tag; /* NULL: no valid tag */
};

static const struct err_case err_cases[] = {
    /* Tags. */
    {S(""), "Invalid tag", NULL},
    {S("\r\n"), "Invalid tag", NULL},
    {S(" a NOOP\r\n"), "Invalid tag", NULL},
    {S("+ NOOP\r\n"), "Invalid tag", NULL},
    {S("a+ NOOP\r\n"), "Invalid tag", NULL},
    {S("* NOOP\r\n"), "Invalid tag", NULL},
    {S("a* NOOP\r\n"), "Invalid tag", NULL},
    {S("a% NOOP\r\n"), "Invalid tag", NULL},
    {S("a(b NOOP\r\n"), "Invalid tag", NULL},
    {S("a) NOOP\r\n"), "Invalid tag", NULL},
    {S("a{1} NOOP\r\n"), "Invalid tag", NULL},
    {S("a\"b NOOP\r\n"), "Invalid tag", NULL},
    {S("a\\b NOOP\r\n"), "Invalid tag", NULL},
    {S("a\0 NOOP\r\n"), "Invalid tag", NULL},
    {S("a\tb NOOP\r\n"), "Invalid tag", NULL},
    {S("\xc3\xa4 NOOP\r\n"), "Invalid tag", NULL},
    {S("a\x7f NOOP\r\n"), "Invalid tag", NULL},
    /* Command names. */
    {S("a\r\n"), "Missing command name", "a"},
    {S("a\n"), "Missing command name", "a"},
    {S("a \r\n"), "Missing command name", "a"},
    {S("a  NOOP\r\n"), "Unexpected space", "a"},
    {S("a (NOOP)\r\n"), "Missing command name", "a"},
    {S("a NO\"OP\r\n"), "Invalid command name", "a"},
    {S("a NOOP(\r\n"), "Invalid command name", "a"},
    {S("a LOGIN*\r\n"), "Invalid command name", "a"},
    {S("a LOG\xc3\xafN\r\n"), "Invalid command name", "a"},
    {S("a NO\0OP\r\n"), "Invalid command name", "a"},
    /* Spaces. */
    {S("a NOOP \r\n"), "Unexpected space", "a"},
    {S("a LOGIN alice secret \r\n"), "Unexpected space", "a"},
    {S("a LOGIN  alice secret\r\n"), "Unexpected space", "a"},
    {S("a ID ( \"a\")\r\n"), "Unexpected space", "a"},
    {S("a ID (\"a\" )\r\n"), "Unexpected space", "a"},
    {S("a ID ( )\r\n"), "Unexpected space", "a"},
    {S("a LOGIN alice\tsecret\r\n"), "Invalid characters in atom", "a"},
    /* Atoms. */
    {S("a LOGIN al\xc3\xa4"
       "ce x\r\n"),
     "Invalid characters in atom", "a"},
    {S("a LOGIN al\0ce x\r\n"), "Invalid characters in atom", "a"},
    {S("a LOGIN \\Seen\r\n"), "Invalid characters in atom", "a"},
    {S("a LOGIN a\\b\r\n"), "Invalid characters in atom", "a"},
    {S("a LOGIN ab{5}\r\nalice\r\n"), "Invalid characters in atom", "a"},
    {S("a LOGIN a(b)\r\n"), "Invalid characters in atom", "a"},
    {S("a LOGIN a\"b\"\r\n"), "Invalid characters in atom", "a"},
    {S("a LOGIN \x7f\r\n"), "Invalid characters in atom", "a"},
    {S("a LOGIN \x01\r\n"), "Invalid characters in atom", "a"},
    {S("a LOGIN \0\r\n"), "Invalid characters in atom", "a"},
    /* Quoted strings. */
    {S("a LOGIN \"alice\r\n"), "Unterminated quoted string", "a"},
    {S("a LOGIN \"alice\n"), "Unterminated quoted string", "a"},
    {S("a LOGIN \"al\r\nice\" x\r\n"), "Unterminated quoted string", "a"},
    {S("a LOGIN \"alice"), "Unterminated quoted string", "a"},
    {S("a LOGIN \"alice\\"), "Unterminated quoted string", "a"},
    {S("a LOGIN \"alice\\\r\n"), "Invalid escape in quoted string", "a"},
    {S("a LOGIN \"a\\nb\" x\r\n"), "Invalid escape in quoted string", "a"},
    {S("a LOGIN \"a\\x\" x\r\n"), "Invalid escape in quoted string", "a"},
    {S("a LOGIN \"a\\\0\" x\r\n"), "Invalid escape in quoted string", "a"},
    {S("a LOGIN \"a\0b\" x\r\n"), "NUL in quoted string", "a"},
    {S("a LOGIN \"alice\"\"x\"\r\n"), "Missing space after argument", "a"},
    {S("a LOGIN \"alice\"x\r\n"), "Missing space after argument", "a"},
    {S("a ID (\"a\")(\"b\")\r\n"), "Missing space after argument", "a"},
    /* Literals. */
    {S("a LOGIN {}\r\nx\r\n"), "Invalid literal", "a"},
    {S("a LOGIN {+}\r\nx\r\n"), "Invalid literal", "a"},
    {S("a LOGIN {5\r\nalice\r\n"), "Invalid literal", "a"},
    {S("a LOGIN {5}x\r\nalice\r\n"), "Invalid literal", "a"},
    {S("a LOGIN {5} \r\nalice\r\n"), "Invalid literal", "a"},
    {S("a LOGIN {5}\ralice\r\n"), "Invalid literal", "a"},
    {S("a LOGIN {5++}\r\nalice\r\n"), "Invalid literal", "a"},
    {S("a LOGIN {+5}\r\nalice\r\n"), "Invalid literal", "a"},
    {S("a LOGIN {-1}\r\nalice\r\n"), "Invalid literal", "a"},
    {S("a LOGIN { 5}\r\nalice\r\n"), "Invalid literal", "a"},
    {S("a LOGIN {0x5}\r\nalice\r\n"), "Invalid literal", "a"},
    {S("a LOGIN ~{x}\r\nalice\r\n"), "Invalid literal", "a"},
    {S("a LOGIN {4294967296}\r\nalice\r\n"), "Invalid literal", "a"},
    {S("a LOGIN {99999999999999999999999}\r\nalice\r\n"), "Invalid literal", "a"},
    {S("a LOGIN {5}"), "Invalid literal", "a"},
    {S("a LOGIN {4294967295}\r\nalice\r\n"), "Truncated literal", "a"},
    {S("a LOGIN {10}\r\nalice\r\n"), "Truncated literal", "a"},
    {S("a LOGIN {8}\r\nalice\r\n"), "Truncated literal", "a"},
    {S("a LOGIN {5}\r\nalice"), "Unexpected end of command", "a"},
    {S("a LOGIN {4}\r\nalice\r\n"), "Missing space after argument", "a"},
    {S("a LOGIN {5}\r\nalicex y\r\n"), "Missing space after argument", "a"},
    /* Parentheses. */
    {S("a ID (\r\n"), "Unbalanced parentheses", "a"},
    {S("a ID (\"a\" \"b\"\r\n"), "Unbalanced parentheses", "a"},
    {S("a ID ((a)\r\n"), "Unbalanced parentheses", "a"},
    {S("a ID a)\r\n"), "Unbalanced parentheses", "a"},
    {S("a ID ())\r\n"), "Unbalanced parentheses", "a"},
    {S("a NOOP)\r\n"), "Unbalanced parentheses", "a"},
    {S("a ID )(\r\n"), "Unbalanced parentheses", "a"},
    /* Line ends. */
    {S("a NOOP"), "Unexpected end of command", "a"},
    {S("a LOGIN alice"), "Unexpected end of command", "a"},
    {S("a NOOP\r"), "Bare CR", "a"},
    {S("a NOOP\rx\r\n"), "Bare CR", "a"},
    {S("a LOGIN alice\rsecret\r\n"), "Bare CR", "a"},
    {S("a NOOP\r\nb NOOP\r\n"), "Garbage after command", "a"},
    {S("a NOOP\r\n\r\n"), "Garbage after command", "a"},
    {S("a NOOP\n\n"), "Garbage after command", "a"},
    {S("a NOOP\r\n\0"), "Garbage after command", "a"},
    {S("a LOGIN alice\nsecret\n"), "Garbage after command", "a"},
    {S("a\r\nNOOP\r\n"), "Missing command name", "a"},
};

#define N_ERR (sizeof(err_cases) / sizeof(err_cases[0]))

static uint8_t *dup_exact(const char *s, size_t n)
{
	/* malloc(0) may return NULL; one spare byte is never read. */
	uint8_t *b = malloc(n == 0 ? 1 : n);

	assert_non_null(b);
	if (n > 0)
		memcpy(b, s, n);
	return b;
}

/*
 * What must hold after any successful parse: everything points into buf,
 * lists balance, the command ends in its line end.
 */
static void check_invariants(const uint8_t *buf, size_t len, const struct imap_cmd *c)
{
	long depth = 0;

	assert_true(len >= 1 && buf[len - 1] == '\n');
	assert_ptr_equal(c->tag, buf);
	assert_true(c->tag_len > 0 && c->tag_len < len);
	assert_true(c->name > buf && c->name + c->name_len <= buf + len);
	assert_true(c->name_len > 0);
	assert_true(c->nargs <= IMAP_CMD_MAX_ARGS);
	for (size_t i = 0; i < c->nargs; i++) {
		const struct imap_arg *a = &c->args[i];

		assert_true(a->data >= buf && a->data + a->len <= buf + len);
		if (a->type == IMAP_ARG_LIST_OPEN)
			depth++;
		else if (a->type == IMAP_ARG_LIST_CLOSE)
			depth--;
		else
			assert_true(a->type == IMAP_ARG_ATOM || a->type == IMAP_ARG_QUOTED ||
			            a->type == IMAP_ARG_LITERAL);
		assert_true(depth >= 0);
		if (a->type == IMAP_ARG_ATOM)
			assert_true(a->len > 0);
	}
	assert_int_equal(depth, 0);
}

static void test_ok_cases(void **state)
{
	(void)state;
	for (size_t i = 0; i < N_OK; i++) {
		const struct ok_case *t = &ok_cases[i];
		uint8_t *buf = dup_exact(t->in, t->in_len);
		struct imap_cmd c;
		const char *err = "unset";

		if (imap_cmd_parse(buf, t->in_len, &c, &err) != 0)
			fail_msg("case %zu rejected: %s", i, err);
		assert_null(err);
		check_invariants(buf, t->in_len, &c);
		assert_int_equal(c.tag_len, strlen(t->tag));
		assert_memory_equal(c.tag, t->tag, c.tag_len);
		assert_int_equal(c.name_len, strlen(t->name));
		assert_memory_equal(c.name, t->name, c.name_len);
		if (c.nargs != t->nargs)
			fail_msg("case %zu: %zu args, want %zu", i, c.nargs, t->nargs);
		for (size_t k = 0; k < t->nargs; k++) {
			if (c.args[k].type != t->args[k].type || c.args[k].len != t->args[k].len ||
			    memcmp(c.args[k].data, t->args[k].data, t->args[k].len) != 0)
				fail_msg("case %zu arg %zu: type %d len %zu, want type %d \"%s\"",
				         i, k, c.args[k].type, c.args[k].len, t->args[k].type,
				         t->args[k].data);
		}
		free(buf);
	}
}

static void test_err_cases(void **state)
{
	(void)state;
	for (size_t i = 0; i < N_ERR; i++) {
		const struct err_case *t = &err_cases[i];
		uint8_t *buf = dup_exact(t->in, t->in_len);
		struct imap_cmd c;
		const char *err = NULL;

		if (imap_cmd_parse(buf, t->in_len, &c, &err) != -1)
			fail_msg("error case %zu accepted", i);
		assert_non_null(err);
		if (strcmp(err, t->err) != 0)
			fail_msg("error case %zu: \"%s\", want \"%s\"", i, err, t->err);
		if (t->tag == NULL) {
			assert_int_equal(c.tag_len, 0);
		} else {
			assert_ptr_equal(c.tag, buf);
			assert_int_equal(c.tag_len, strlen(t->tag));
			assert_memory_equal(c.tag, t->tag, c.tag_len);
		}
		free(buf);
	}
}

/* Quoted strings are decoded in place: the args point at the buffer. */
static void test_quoted_in_place(void **state)
{
	static const char in[] = "x LOGIN \"a\\\\b\\\"c\" y\r\n";
	uint8_t *buf = dup_exact(S(in));
	struct imap_cmd c;
	const char *err;

	(void)state;
	assert_int_equal(imap_cmd_parse(buf, sizeof(in) - 1, &c, &err), 0);
	assert_int_equal(c.nargs, 2);
	assert_ptr_equal(c.args[0].data, buf + 9);
	assert_int_equal(c.args[0].len, 5);
	assert_memory_equal(c.args[0].data, "a\\b\"c", 5);
	assert_ptr_equal(c.args[1].data, buf + 18);
	free(buf);
}

/* Build "t X" followed by n copies of unit, then CRLF. */
static size_t build_repeat(char *out, size_t cap, const char *unit, size_t n)
{
	size_t o = 0, ulen = strlen(unit);

	memcpy(out, "t X", 3);
	o = 3;
	for (size_t i = 0; i < n; i++) {
		assert_true(o + 1 + ulen + 2 < cap);
		out[o++] = ' ';
		memcpy(out + o, unit, ulen);
		o += ulen;
	}
	memcpy(out + o, "\r\n", 2);
	return o + 2;
}

/* Build "t X (a a ... a)" with n atoms, then CRLF. */
static size_t build_list(char *out, size_t cap, size_t n)
{
	size_t o = 5;

	assert_true(5 + 2 * n + 3 <= cap);
	memcpy(out, "t X (", 5);
	for (size_t i = 0; i < n; i++) {
		if (i > 0)
			out[o++] = ' ';
		out[o++] = 'a';
	}
	memcpy(out + o, ")\r\n", 3);
	return o + 3;
}

static void test_max_args(void **state)
{
	char line[1024];
	struct imap_cmd c;
	const char *err;
	uint8_t *buf;
	size_t n;

	(void)state;
	/* 64 atoms fit, 65 do not. */
	n = build_repeat(line, sizeof(line), "a", IMAP_CMD_MAX_ARGS);
	buf = dup_exact(line, n);
	assert_int_equal(imap_cmd_parse(buf, n, &c, &err), 0);
	assert_int_equal(c.nargs, IMAP_CMD_MAX_ARGS);
	free(buf);

	n = build_repeat(line, sizeof(line), "a", IMAP_CMD_MAX_ARGS + 1);
	buf = dup_exact(line, n);
	assert_int_equal(imap_cmd_parse(buf, n, &c, &err), -1);
	assert_string_equal(err, "Too many arguments");
	assert_int_equal(c.tag_len, 1);
	free(buf);

	/* List markers count: 32 "()" are 64 args, 33 are too many. */
	n = build_repeat(line, sizeof(line), "()", IMAP_CMD_MAX_ARGS / 2);
	buf = dup_exact(line, n);
	assert_int_equal(imap_cmd_parse(buf, n, &c, &err), 0);
	assert_int_equal(c.nargs, IMAP_CMD_MAX_ARGS);
	free(buf);

	n = build_repeat(line, sizeof(line), "()", IMAP_CMD_MAX_ARGS / 2 + 1);
	buf = dup_exact(line, n);
	assert_int_equal(imap_cmd_parse(buf, n, &c, &err), -1);
	assert_string_equal(err, "Too many arguments");
	free(buf);

	/* Nesting is a counter, not recursion; its depth meets the same limit. */
	{
		char deep[2 * IMAP_CMD_MAX_ARGS + 1];

		memset(deep, '(', sizeof(deep) - 1);
		deep[sizeof(deep) - 1] = '\0';
		n = build_repeat(line, sizeof(line), deep, 1);
		buf = dup_exact(line, n);
		assert_int_equal(imap_cmd_parse(buf, n, &c, &err), -1);
		assert_string_equal(err, "Too many arguments");
		free(buf);
	}

	/* The 65th arg being the ")" that closes a list; one atom fewer fits. */
	n = build_list(line, sizeof(line), IMAP_CMD_MAX_ARGS - 1);
	buf = dup_exact(line, n);
	assert_int_equal(imap_cmd_parse(buf, n, &c, &err), -1);
	assert_string_equal(err, "Too many arguments");
	free(buf);
	n = build_list(line, sizeof(line), IMAP_CMD_MAX_ARGS - 2);
	buf = dup_exact(line, n);
	assert_int_equal(imap_cmd_parse(buf, n, &c, &err), 0);
	assert_int_equal(c.nargs, IMAP_CMD_MAX_ARGS);
	assert_int_equal(c.args[IMAP_CMD_MAX_ARGS - 1].type, IMAP_ARG_LIST_CLOSE);
	free(buf);

	/* The 65th arg being a literal is refused before its body is used. */
	n = build_repeat(line, sizeof(line), "a", IMAP_CMD_MAX_ARGS);
	memcpy(line + n - 2, " {1}\r\nz\r\n", 9);
	n += 7;
	buf = dup_exact(line, n);
	assert_int_equal(imap_cmd_parse(buf, n, &c, &err), -1);
	assert_string_equal(err, "Too many arguments");
	free(buf);
}

/* Every proper prefix of a valid command is incomplete, hence an error. */
static void test_truncations(void **state)
{
	(void)state;
	for (size_t i = 0; i < N_OK; i++) {
		for (size_t k = 0; k < ok_cases[i].in_len; k++) {
			uint8_t *buf = dup_exact(ok_cases[i].in, k);
			struct imap_cmd c;
			const char *err = NULL;

			if (imap_cmd_parse(buf, k, &c, &err) != -1)
				fail_msg("case %zu prefix %zu accepted", i, k);
			assert_non_null(err);
			free(buf);
		}
	}
}

/* Anything after the final line end is refused. */
static void test_trailing_garbage(void **state)
{
	static const char *const tails[] = {"x", "\n", "\r\n", " ", "\0", "b NOOP\r\n"};

	(void)state;
	for (size_t i = 0; i < N_OK; i++) {
		for (size_t t = 0; t < sizeof(tails) / sizeof(tails[0]); t++) {
			size_t tl = (t == 4) ? 1 : strlen(tails[t]);
			size_t n = ok_cases[i].in_len + tl;
			uint8_t *buf = malloc(n);
			struct imap_cmd c;
			const char *err = NULL;

			assert_non_null(buf);
			memcpy(buf, ok_cases[i].in, ok_cases[i].in_len);
			memcpy(buf + ok_cases[i].in_len, tails[t], tl);
			assert_int_equal(imap_cmd_parse(buf, n, &c, &err), -1);
			assert_string_equal(err, "Garbage after command");
			assert_true(c.tag_len > 0);
			free(buf);
		}
	}
}

/* Deterministic xorshift32: the same inputs every run. */
static uint32_t rng_state;

static uint32_t rng(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 17;
	rng_state ^= rng_state << 5;
	return rng_state;
}

static void parse_any(const uint8_t *src, size_t n, size_t *accepted)
{
	uint8_t *buf = dup_exact((const char *)src, n);
	struct imap_cmd c;
	const char *err = NULL;
	int rc = imap_cmd_parse(buf, n, &c, &err);

	if (rc == 0) {
		assert_null(err);
		check_invariants(buf, n, &c);
		(*accepted)++;
	} else {
		assert_int_equal(rc, -1);
		assert_non_null(err);
		if (c.tag_len > 0)
			assert_ptr_equal(c.tag, buf);
	}
	free(buf);
}

/*
 * Random input, biased towards the bytes that steer the parser so that
 * more than the tag check gets exercised.
 */
static void test_random(void **state)
{
	static const char steer[] = "a1 LOGIN(){}~+\"\\\r\n*%[]NIL059";
	uint8_t in[96];
	size_t accepted = 0;

	(void)state;
	rng_state = 0xC0FFEEu;
	for (int iter = 0; iter < 20000; iter++) {
		size_t n = rng() % sizeof(in), i = 0;

		/* Half the time start past the tag and name, to get deeper. */
		if (n >= 9 && (rng() & 1)) {
			memcpy(in, "a1 LOGIN ", 9);
			i = 9;
		}
		for (; i < n; i++) {
			uint32_t r = rng();

			in[i] = (r & 0x300) ? (uint8_t)steer[(r >> 12) % (sizeof(steer) - 1)]
			                    : (uint8_t)r;
		}
		/* Often end with a line end so that more inputs can pass. */
		if (n >= 2 && (rng() & 1)) {
			in[n - 2] = '\r';
			in[n - 1] = '\n';
		}
		parse_any(in, n, &accepted);
	}
	print_message("random: %zu of 20000 accepted\n", accepted);
}

/* Valid commands with bytes flipped, inserted and deleted. */
static void test_mutations(void **state)
{
	uint8_t in[256];
	size_t accepted = 0;

	(void)state;
	rng_state = 0x5EED1234u;
	for (int iter = 0; iter < 20000; iter++) {
		const struct ok_case *t = &ok_cases[rng() % N_OK];
		size_t n = t->in_len;
		int edits = 1 + (int)(rng() % 3);

		memcpy(in, t->in, n);
		for (int e = 0; e < edits; e++) {
			uint32_t r = rng();
			size_t at = (n == 0) ? 0 : rng() % n;

			switch (r % 3) {
			case 0: /* flip */
				if (n > 0)
					in[at] = (uint8_t)(r >> 8);
				break;
			case 1: /* insert */
				if (n < sizeof(in)) {
					memmove(in + at + 1, in + at, n - at);
					in[at] = (uint8_t)(r >> 8);
					n++;
				}
				break;
			default: /* delete */
				if (n > 0) {
					memmove(in + at, in + at + 1, n - at - 1);
					n--;
				}
				break;
			}
		}
		parse_any(in, n, &accepted);
	}
	print_message("mutations: %zu of 20000 accepted\n", accepted);
}

/* imap_word_eq: ASCII letters fold, nothing else does, lengths must match. */
static void test_word_eq(void **state)
{
	(void)state;
	assert_true(imap_word_eq((const uint8_t *)"LOGIN", 5, "LOGIN"));
	assert_true(imap_word_eq((const uint8_t *)"login", 5, "LOGIN"));
	assert_true(imap_word_eq((const uint8_t *)"LoGiN", 5, "lOgIn"));
	assert_true(imap_word_eq((const uint8_t *)"", 0, ""));
	assert_true(imap_word_eq((const uint8_t *)"LOGINX", 5, "LOGIN"));
	assert_false(imap_word_eq((const uint8_t *)"LOGINX", 6, "LOGIN"));
	assert_false(imap_word_eq((const uint8_t *)"LOGI", 4, "LOGIN"));
	assert_false(imap_word_eq((const uint8_t *)"", 0, "A"));
	assert_false(imap_word_eq((const uint8_t *)"A", 1, ""));
	assert_false(imap_word_eq((const uint8_t *)"A\0", 2, "A"));
	/* '[' and '{', '@' and '`' differ by 0x20 but are not letters. */
	assert_false(imap_word_eq((const uint8_t *)"[", 1, "{"));
	assert_false(imap_word_eq((const uint8_t *)"@", 1, "`"));
	assert_false(imap_word_eq((const uint8_t *)"\xc4", 1, "\xe4"));
	assert_true(imap_word_eq((const uint8_t *)"AUTH=PLAIN", 10, "auth=plain"));
	assert_true(imap_word_eq((const uint8_t *)"BODY[]", 6, "body[]"));
}

struct head_case {
	const char *in;
	size_t in_len;
	int rc;
	const char *tag, *w1, *w2, *rest; /* "" = absent */
};

static const struct head_case head_cases[] = {
    {S("* 3 EXISTS\r\n"), 0, "*", "3", "EXISTS", "EXISTS"},
    {S("* 3 EXISTS"), 0, "*", "3", "EXISTS", "EXISTS"},
    {S("* 12 FETCH (FLAGS (\\Seen))\r\n"), 0, "*", "12", "FETCH", "FETCH (FLAGS (\\Seen))"},
    {S("a1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n"), 0, "a1", "OK", "",
     "[CAPABILITY IMAP4rev1 IDLE] Logged in"},
    {S("* OK [ALERT] x\n"), 0, "*", "OK", "", "[ALERT] x"},
    {S("a2 NO Bad password\r\n"), 0, "a2", "NO", "Bad", "Bad password"},
    {S("* BYE\r\n"), 0, "*", "BYE", "", ""},
    {S("+ \r\n"), 0, "+", "", "", ""},
    {S("+\r\n"), 0, "+", "", "", ""},
    {S("+ aGVsbG8=\r\n"), 0, "+", "aGVsbG8=", "", ""},
    {S("+ Ready for literal data\r\n"), 0, "+", "Ready", "for", "for literal data"},
    {S("a3 FETCH 1:* (FLAGS)\r\n"), 0, "a3", "FETCH", "1:*", "1:* (FLAGS)"},
    {S("a3 UID FETCH 1 BODY[]\r\n"), 0, "a3", "UID", "FETCH", "FETCH 1 BODY[]"},
    {S("a4 LOGIN \"alice\" x\r\n"), 0, "a4", "LOGIN", "", "\"alice\" x"},
    {S("a4 LOGIN {5}\r\n"), 0, "a4", "LOGIN", "", "{5}"},
    {S("a4 ID (\"name\" \"x\")\r\n"), 0, "a4", "ID", "", "(\"name\" \"x\")"},
    {S("a5 IDLE\r\n"), 0, "a5", "IDLE", "", ""},
    {S("DONE\r\n"), 0, "DONE", "", "", ""},
    {S("a6 SELECT  INBOX\r\n"), 0, "a6", "SELECT", "", " INBOX"},
    {S("a7 LOGIN x\n"), 0, "a7", "LOGIN", "x", "x"},
    {S("a7 X y\r"), 0, "a7", "X", "y", "y"},
    {S("a7 X y\nz"), 0, "a7", "X", "y", "y"},
    /* Fragments of long lines. */
    {S("a8 APPEND INBOX (\\Seen) {50"), 0, "a8", "APPEND", "INBOX", "INBOX (\\Seen) {50"},
    {S("a9 SEL"), 0, "a9", "SEL", "", ""},
    {S("a9 "), 0, "a9", "", "", ""},
    {S("a9"), 0, "a9", "", "", ""},
    /* No tag. */
    {S(""), -1, "", "", "", ""},
    {S(" a NOOP\r\n"), -1, "", "", "", ""},
    {S(" "), -1, "", "", "", ""},
    {S("\r\n"), -1, "", "", "", ""},
    {S("\n"), -1, "", "", "", ""},
};

static void check_span(const uint8_t *buf, size_t len, const uint8_t *p, size_t plen,
                       const char *want, size_t want_len, size_t i, const char *what)
{
	/* Absent parts still point into the buffer (see imap_args.c). */
	if (p < buf || p + plen > buf + len)
		fail_msg("head case %zu: %s points outside the line", i, what);
	if (plen != want_len || (plen > 0 && memcmp(p, want, plen) != 0))
		fail_msg("head case %zu: %s is \"%.*s\", want \"%s\"", i, what, (int)plen,
		         (const char *)p, want);
}

static void test_head_parse(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(head_cases) / sizeof(head_cases[0]); i++) {
		const struct head_case *t = &head_cases[i];
		uint8_t *buf = dup_exact(t->in, t->in_len);
		struct imap_head h;
		int rc = imap_head_parse(buf, t->in_len, &h);

		if (rc != t->rc)
			fail_msg("head case %zu: rc %d, want %d", i, rc, t->rc);
		if (rc == 0) {
			check_span(buf, t->in_len, h.tag, h.tag_len, t->tag, strlen(t->tag), i,
			           "tag");
			check_span(buf, t->in_len, h.w1, h.w1_len, t->w1, strlen(t->w1), i, "w1");
			check_span(buf, t->in_len, h.w2, h.w2_len, t->w2, strlen(t->w2), i, "w2");
			check_span(buf, t->in_len, h.rest, h.rest_len, t->rest, strlen(t->rest), i,
			           "rest");
		}
		free(buf);
	}
}

/* Words end only at SP, CR and LF: anything else, even NUL, is part of one. */
static void test_head_nul(void **state)
{
	uint8_t *buf = dup_exact(S("a\0b X\0Y Z\r\n"));
	struct imap_head h;

	(void)state;
	assert_int_equal(imap_head_parse(buf, 12, &h), 0);
	assert_int_equal(h.tag_len, 3);
	assert_int_equal(h.w1_len, 3);
	assert_int_equal(h.w2_len, 1);
	assert_int_equal(h.rest_len, 1);
	assert_ptr_equal(h.rest, buf + 8);
	free(buf);
}

/* Every prefix of a line is a fragment: parse it without reading past it. */
static void test_head_prefixes(void **state)
{
	static const char line[] = "a1 OK [CAPABILITY IMAP4rev1 IDLE] Logged in\r\n";

	(void)state;
	for (size_t k = 0; k < sizeof(line); k++) {
		uint8_t *buf = dup_exact(line, k);
		struct imap_head h;
		int rc = imap_head_parse(buf, k, &h);

		assert_int_equal(rc, k == 0 ? -1 : 0);
		if (rc == 0) {
			assert_true(h.tag_len >= 1 && h.tag_len <= 2);
			assert_true(h.w1 + h.w1_len <= buf + k);
			assert_true(h.w2 + h.w2_len <= buf + k);
			assert_true(h.rest + h.rest_len <= buf + k);
		}
		free(buf);
	}
}

static void test_head_random(void **state)
{
	static const char steer[] = "a* +[({\" \r\nOK";
	uint8_t in[48];

	(void)state;
	rng_state = 0xBADC0DEu;
	for (int iter = 0; iter < 20000; iter++) {
		size_t n = rng() % sizeof(in);
		uint8_t *buf;
		struct imap_head h;

		for (size_t i = 0; i < n; i++)
			in[i] = (uint8_t)steer[rng() % (sizeof(steer) - 1)];
		buf = dup_exact((const char *)in, n);
		if (imap_head_parse(buf, n, &h) == 0) {
			assert_ptr_equal(h.tag, buf);
			assert_true(h.tag_len > 0);
			assert_true(h.w1 >= buf && h.w1 + h.w1_len <= buf + n);
			assert_true(h.w2 >= buf && h.w2 + h.w2_len <= buf + n);
			assert_true(h.rest >= buf && h.rest + h.rest_len <= buf + n);
			assert_null(memchr(h.rest, '\n', h.rest_len));
			if (h.w2_len > 0)
				assert_true(h.w2[0] != '[' && h.w2[0] != '(' && h.w2[0] != '"' &&
				            h.w2[0] != '{');
		}
		free(buf);
	}
}

/* Tags a proxy can track: every ASTRING-CHAR but "+", 1..max bytes. */
static void test_tag_valid(void **state)
{
	static const char *const good[] = {"a", "A1", "a.b-c_d", "x]", "!#$&'", "~", "0"};
	static const char *const bad[] = {"",   "a b", "a+",  "+",   "a(",   "a)",   "a{",
	                                  "a%", "a*",  "a\"", "a\\", "\x7f", "\x01", "\xc3\xa9"};
	uint8_t longtag[65];

	(void)state;
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++)
		assert_true(imap_tag_valid((const uint8_t *)good[i], strlen(good[i]), 64));
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_false(imap_tag_valid((const uint8_t *)bad[i], strlen(bad[i]), 64));
	memset(longtag, 'a', sizeof(longtag));
	assert_true(imap_tag_valid(longtag, 64, 64));
	assert_false(imap_tag_valid(longtag, 65, 64));
	/* Every byte value alone: exactly the ATOM-CHARs and "]" pass. */
	for (unsigned c = 0; c < 256; c++) {
		uint8_t b = (uint8_t)c;
		bool want = c > 0x20 && c < 0x7f && strchr("(){%*\"\\+", (int)c) == NULL;
		assert_int_equal(imap_tag_valid(&b, 1, 64), want);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_tag_valid),        cmocka_unit_test(test_ok_cases),
	    cmocka_unit_test(test_err_cases),        cmocka_unit_test(test_quoted_in_place),
	    cmocka_unit_test(test_max_args),         cmocka_unit_test(test_truncations),
	    cmocka_unit_test(test_trailing_garbage), cmocka_unit_test(test_random),
	    cmocka_unit_test(test_mutations),        cmocka_unit_test(test_word_eq),
	    cmocka_unit_test(test_head_parse),       cmocka_unit_test(test_head_nul),
	    cmocka_unit_test(test_head_prefixes),    cmocka_unit_test(test_head_random),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
