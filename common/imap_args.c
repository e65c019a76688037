/*
 * imap_args — see imap_args.h. A strict, non-resumable parser for one whole
 * pre-auth command (the tokenizer has already found its end and gathered
 * its literal bodies), and a forgiving peek at line heads.
 *
 *   a1 LOGIN {5}\r\nalice "se\"cret"\r\n
 *   '' '---' '----------' '---------'
 *   tag name   LITERAL      QUOTED (decoded in place to se"cret)
 *
 * imap_cmd_parse() grammar (RFC 3501 / RFC 9051, the part used pre-auth):
 *   command = tag SP name *(SP arg) CRLF       LF alone is accepted too
 *   tag     = 1*<ATOM-CHAR or "]", except "+">
 *   name    = 1*ATOM-CHAR
 *   arg     = atom / quoted / literal / "(" [arg *(SP arg)] ")"
 *   atom    = 1*<ATOM-CHAR or "]" "%" "*">     list-mailbox, fetch-att
 *   quoted  = DQUOTE *(<any byte but NUL CR LF \ ">  /  "\\"  /  "\"") DQUOTE
 *   literal = ["~"] "{" number ["+"] "}" CRLF *OCTET    exactly number bytes
 *
 * Invariants:
 *   - Nothing is read at or beyond buf + len and nothing is allocated.
 *   - Every arg points inside buf. Quoted strings are rewritten in place:
 *     decoding only ever shrinks, so the write position trails the read
 *     position. On error the buffer may already be partly rewritten.
 *   - Exactly one line end, at the very end of the buffer (literal
 *     announcements aside, whose line ends are part of the literal syntax).
 *   - Strict like Dovecot: no double, leading-in-list or trailing spaces.
 *     A proxy that is lenient here would forward or answer commands the
 *     backend reads differently.
 */
#include "imap_args.h"

#include <string.h>

/* The literal size is an RFC 3501 "number": at most 2^32 - 1. */
#define IMAP_NUMBER_MAX 4294967295ULL

struct imap_parser {
	uint8_t *buf;
	size_t len;
	size_t pos;
	struct imap_cmd *cmd;
	unsigned int depth; /* open parentheses */
	const char *err;
};

/* ATOM-CHAR: any CHAR except atom-specials ( ) { SP CTL % * " \ ]. */
static bool is_atom_char(uint8_t c)
{
	if (c <= 0x20 || c >= 0x7f)
		return false;
	switch (c) {
	case '(':
	case ')':
	case '{':
	case '%':
	case '*':
	case '"':
	case '\\':
	case ']':
		return false;
	default:
		return true;
	}
}

static bool is_tag_char(uint8_t c)
{
	return (is_atom_char(c) || c == ']') && c != '+';
}

/*
 * Argument atoms also take the list wildcards (LIST "" *) and "]" (fetch
 * attributes like BODY[HEADER]); "[" is an ATOM-CHAR already.
 */
static bool is_arg_atom_char(uint8_t c)
{
	return is_atom_char(c) || c == '*' || c == '%' || c == ']';
}

/* Length of the line end (CRLF or LF) at pos, or 0 if there is none. */
static size_t eol_len(const struct imap_parser *p, size_t pos)
{
	if (pos < p->len && p->buf[pos] == '\n')
		return 1;
	if (pos + 1 < p->len && p->buf[pos] == '\r' && p->buf[pos + 1] == '\n')
		return 2;
	return 0;
}

static int fail(struct imap_parser *p, const char *err)
{
	p->err = err;
	return -1;
}

static int emit(struct imap_parser *p, enum imap_arg_type type, const uint8_t *data, size_t len)
{
	struct imap_arg *a;

	if (p->cmd->nargs == IMAP_CMD_MAX_ARGS)
		return fail(p, "Too many arguments");
	a = &p->cmd->args[p->cmd->nargs++];
	a->type = type;
	a->data = data;
	a->len = len;
	return 0;
}

/* An atom may only be followed by SP, ")", the line end or the end of buf. */
static bool atom_ends_well(const struct imap_parser *p)
{
	uint8_t c;

	if (p->pos == p->len)
		return true;
	c = p->buf[p->pos];
	return c == ' ' || c == ')' || c == '\r' || c == '\n';
}

static int parse_tag(struct imap_parser *p)
{
	while (p->pos < p->len && is_tag_char(p->buf[p->pos]))
		p->pos++;
	if (p->pos == 0)
		return fail(p, "Invalid tag");
	if (p->pos < p->len && p->buf[p->pos] != ' ' && p->buf[p->pos] != '\r' &&
	    p->buf[p->pos] != '\n')
		return fail(p, "Invalid tag");
	p->cmd->tag = p->buf;
	p->cmd->tag_len = p->pos;
	return 0;
}

static int parse_name(struct imap_parser *p)
{
	size_t start;

	if (p->pos == p->len || p->buf[p->pos] != ' ')
		return fail(p, "Missing command name");
	p->pos++;
	start = p->pos;
	while (p->pos < p->len && is_atom_char(p->buf[p->pos]))
		p->pos++;
	if (p->pos == start) {
		if (p->pos < p->len && p->buf[p->pos] == ' ')
			return fail(p, "Unexpected space");
		return fail(p, "Missing command name");
	}
	if (!atom_ends_well(p))
		return fail(p, "Invalid command name");
	p->cmd->name = p->buf + start;
	p->cmd->name_len = p->pos - start;
	return 0;
}

/* At an argument atom character, so the atom is never empty. */
static int parse_atom(struct imap_parser *p)
{
	size_t start = p->pos;

	while (p->pos < p->len && is_arg_atom_char(p->buf[p->pos]))
		p->pos++;
	if (!atom_ends_well(p))
		return fail(p, "Invalid characters in atom");
	return emit(p, IMAP_ARG_ATOM, p->buf + start, p->pos - start);
}

/* At the opening DQUOTE. Decodes in place: w never passes p->pos. */
static int parse_quoted(struct imap_parser *p)
{
	size_t start = ++p->pos;
	size_t w = start;

	for (;;) {
		uint8_t c;

		if (p->pos == p->len)
			return fail(p, "Unterminated quoted string");
		c = p->buf[p->pos];
		if (c == '"')
			break;
		if (c == '\r' || c == '\n')
			return fail(p, "Unterminated quoted string");
		if (c == '\0')
			return fail(p, "NUL in quoted string");
		if (c == '\\') {
			if (p->pos + 1 == p->len)
				return fail(p, "Unterminated quoted string");
			c = p->buf[++p->pos];
			if (c != '\\' && c != '"')
				return fail(p, "Invalid escape in quoted string");
		}
		p->buf[w++] = c;
		p->pos++;
	}
	p->pos++; /* the closing DQUOTE */
	return emit(p, IMAP_ARG_QUOTED, p->buf + start, w - start);
}

/* At "{" or "~{": the announcement, its line end, then the body inline. */
static int parse_literal(struct imap_parser *p)
{
	unsigned long long n = 0;
	size_t digits = 0, nl;

	if (p->buf[p->pos] == '~')
		p->pos++;
	p->pos++; /* "{" */
	while (p->pos < p->len && p->buf[p->pos] >= '0' && p->buf[p->pos] <= '9') {
		n = n * 10 + (unsigned long long)(p->buf[p->pos] - '0');
		if (n > IMAP_NUMBER_MAX)
			return fail(p, "Invalid literal");
		digits++;
		p->pos++;
	}
	if (digits == 0)
		return fail(p, "Invalid literal");
	if (p->pos < p->len && p->buf[p->pos] == '+')
		p->pos++;
	if (p->pos == p->len || p->buf[p->pos] != '}')
		return fail(p, "Invalid literal");
	p->pos++;
	nl = eol_len(p, p->pos);
	if (nl == 0)
		return fail(p, "Invalid literal");
	p->pos += nl;
	if (n > p->len - p->pos)
		return fail(p, "Truncated literal");
	if (emit(p, IMAP_ARG_LITERAL, p->buf + p->pos, (size_t)n) < 0)
		return -1;
	p->pos += (size_t)n;
	return 0;
}

/*
 * One argument at p->pos, which is not SP, ")" or a line end: the caller
 * has handled those, since their meaning depends on what came before.
 */
static int parse_arg(struct imap_parser *p)
{
	uint8_t c = p->buf[p->pos];

	if (c == '(') {
		if (emit(p, IMAP_ARG_LIST_OPEN, p->buf + p->pos, 1) < 0)
			return -1;
		p->depth++;
		p->pos++;
		return 0;
	}
	if (c == '"')
		return parse_quoted(p);
	if (c == '{' || (c == '~' && p->pos + 1 < p->len && p->buf[p->pos + 1] == '{'))
		return parse_literal(p);
	if (is_arg_atom_char(c))
		return parse_atom(p);
	return fail(p, "Invalid characters in atom");
}

/*
 * The arguments after the command name, up to and including the final line
 * end. Two states: after an element (name, arg, ")"), where SP, ")" or the
 * line end may follow; and wanting an element (after SP or "("), where an
 * argument or, right after "(", a ")" may follow.
 */
static int parse_args(struct imap_parser *p)
{
	bool want_elem = false;
	bool after_open = false; /* wanting an element because of "(", not SP */

	for (;;) {
		size_t nl;
		uint8_t c;

		if (p->pos == p->len)
			return fail(p, "Unexpected end of command");
		c = p->buf[p->pos];

		if (c == '\r' || c == '\n') {
			nl = eol_len(p, p->pos);
			if (nl == 0)
				return fail(p, "Bare CR");
			if (p->pos + nl != p->len)
				return fail(p, "Garbage after command");
			if (want_elem && !after_open)
				return fail(p, "Unexpected space");
			if (p->depth > 0)
				return fail(p, "Unbalanced parentheses");
			p->pos += nl;
			return 0;
		}
		if (c == ' ') {
			if (want_elem)
				return fail(p, "Unexpected space");
			want_elem = true;
			after_open = false;
			p->pos++;
			continue;
		}
		if (c == ')') {
			if (p->depth == 0)
				return fail(p, "Unbalanced parentheses");
			if (want_elem && !after_open)
				return fail(p, "Unexpected space");
			if (emit(p, IMAP_ARG_LIST_CLOSE, p->buf + p->pos, 1) < 0)
				return -1;
			p->depth--;
			p->pos++;
			want_elem = false;
			after_open = false;
			continue;
		}
		if (!want_elem)
			return fail(p, "Missing space after argument");
		if (parse_arg(p) < 0)
			return -1;
		after_open = (c == '(');
		want_elem = after_open;
	}
}

int imap_cmd_parse(uint8_t *buf, size_t len, struct imap_cmd *c_r, const char **err_r)
{
	struct imap_parser p = {.buf = buf, .len = len, .cmd = c_r};

	c_r->tag = NULL;
	c_r->tag_len = 0;
	c_r->name = NULL;
	c_r->name_len = 0;
	c_r->nargs = 0;
	*err_r = NULL;

	if (parse_tag(&p) < 0 || parse_name(&p) < 0 || parse_args(&p) < 0) {
		*err_r = p.err;
		return -1;
	}
	return 0;
}

bool imap_tag_valid(const uint8_t *t, size_t n, size_t max)
{
	if (n == 0 || n > max)
		return false;
	for (size_t i = 0; i < n; i++) {
		if (t[i] <= 0x20 || t[i] >= 0x7f || strchr("(){%*\"\\+", t[i]) != NULL)
			return false;
	}
	return true;
}

bool imap_word_eq(const uint8_t *p, size_t len, const char *word)
{
	size_t i;

	for (i = 0; i < len; i++) {
		uint8_t a = p[i], b = (uint8_t)word[i];

		/* A NUL in word ends it: p is then longer, so not equal. */
		if (b == '\0')
			return false;
		if (a >= 'a' && a <= 'z')
			a = (uint8_t)(a - 'a' + 'A');
		if (b >= 'a' && b <= 'z')
			b = (uint8_t)(b - 'a' + 'A');
		if (a != b)
			return false;
	}
	return word[len] == '\0';
}

static bool head_word_end(uint8_t c)
{
	return c == ' ' || c == '\r' || c == '\n';
}

/* The word at *pos up to SP, CR, LF or len; *pos moves past it. */
static size_t head_word(const uint8_t *p, size_t len, size_t *pos)
{
	size_t start = *pos;

	while (*pos < len && !head_word_end(p[*pos]))
		(*pos)++;
	return *pos - start;
}

/*
 * On success every pointer in *h_r points into p, even for an absent part
 * (length 0), so that callers may pass them to mem*() without a NULL check.
 */
int imap_head_parse(const uint8_t *p, size_t len, struct imap_head *h_r)
{
	size_t pos = 0, wlen, end;

	memset(h_r, 0, sizeof(*h_r));

	wlen = head_word(p, len, &pos);
	if (wlen == 0)
		return -1;
	h_r->tag = p;
	h_r->tag_len = wlen;
	h_r->w1 = h_r->w2 = h_r->rest = p + pos;
	if (pos == len || p[pos] != ' ')
		return 0;
	pos++;

	h_r->w1 = h_r->w2 = h_r->rest = p + pos;
	h_r->w1_len = head_word(p, len, &pos);
	h_r->w2 = h_r->rest = p + pos;
	if (pos == len || p[pos] != ' ')
		return 0;
	pos++;

	/* rest: from here up to the first LF, less a CR before it. */
	end = pos;
	while (end < len && p[end] != '\n')
		end++;
	if (end > pos && p[end - 1] == '\r')
		end--;
	h_r->w2 = h_r->rest = p + pos;
	h_r->rest_len = end - pos;

	if (pos < len) {
		uint8_t c = p[pos];

		if (c != '[' && c != '(' && c != '"' && c != '{')
			h_r->w2_len = head_word(p, len, &pos);
	}
	return 0;
}
