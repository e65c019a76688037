/*
 * imap_args — parse one complete IMAP command, and peek at line heads.
 *
 * imap_cmd_parse() takes a whole command as it came off the wire, literal
 * bodies inline ("a LOGIN {5}\r\nalice {6}\r\nsecret\r\n"), and splits it
 * into tag, command name and arguments. It decodes quoted strings in place
 * (so the buffer must be writable) and points into the buffer: nothing is
 * allocated. It is for the small commands the proxy answers itself before
 * authentication (LOGIN, AUTHENTICATE, ID, ...); the caller bounds the size.
 *
 * imap_head_parse() looks at the first bytes of a line (a command or a
 * response) and returns its tag and first words, for the proxy's tracking
 * of post-login streams it otherwise passes through untouched.
 */
#ifndef IMAPMUX_IMAP_ARGS_H
#define IMAPMUX_IMAP_ARGS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define IMAP_CMD_MAX_ARGS 64

enum imap_arg_type {
	IMAP_ARG_ATOM = 1,   /* includes NIL, numbers, sequence sets */
	IMAP_ARG_QUOTED,     /* decoded: escapes removed */
	IMAP_ARG_LITERAL,    /* {n}, {n+}, ~{n}: the body bytes */
	IMAP_ARG_LIST_OPEN,  /* "(" */
	IMAP_ARG_LIST_CLOSE, /* ")" */
};

struct imap_arg {
	enum imap_arg_type type;
	const uint8_t *data; /* not NUL-terminated */
	size_t len;
};

struct imap_cmd {
	const uint8_t *tag;
	size_t tag_len;
	const uint8_t *name; /* command name as sent (compare case-insensitively) */
	size_t name_len;
	struct imap_arg args[IMAP_CMD_MAX_ARGS];
	size_t nargs;
};

/*
 * Parse buf[0..len), one complete command ending in its final CRLF (or LF),
 * with literal bodies inline after each announcement. Quoted strings are
 * unescaped in place. Returns 0 and fills *c_r; -1 on a syntax error, with
 * *err_r set to a short static reason suitable for "tag BAD reason" (and
 * c_r->tag/tag_len set when a valid tag was found, else tag_len = 0).
 * Rejects: NUL bytes, bare CR, 8-bit bytes outside quoted strings and
 * literals, unbalanced parentheses, too many arguments, a bad tag.
 */
__attribute__((warn_unused_result)) int imap_cmd_parse(uint8_t *buf, size_t len,
                                                       struct imap_cmd *c_r, const char **err_r);

/* Case-insensitive comparison of a byte span with a NUL-terminated ASCII word. */
bool imap_word_eq(const uint8_t *p, size_t len, const char *word);

/* A tag as RFC 3501 defines one (ASTRING-CHARs but "+"), 1..max bytes: one
 * a proxy can track and echo. A server answers a bad tag untagged, which no
 * count of commands in flight could follow. */
bool imap_tag_valid(const uint8_t *t, size_t n, size_t max);

/* The head of a line: tag and up to two following space-separated words. */
struct imap_head {
	const uint8_t *tag; /* "*", "+", or a command tag */
	size_t tag_len;
	const uint8_t *w1; /* command name, or response status / number */
	size_t w1_len;
	const uint8_t *w2; /* e.g. "EXISTS" after "* 3", or the first argument */
	size_t w2_len;
	const uint8_t *rest; /* what follows w1 (and its space), up to the line end */
	size_t rest_len;
};

/*
 * Split the head of line p[0..len) (which may be a FRAGMENT, or end in CRLF).
 * Words end at SP, CR, LF or the end of the bytes given. A word that starts
 * with "[" (a response code) or "(" or '"' or "{" is not taken as w2.
 * Returns 0, or -1 when there is no tag (empty line or leading space).
 */
int imap_head_parse(const uint8_t *p, size_t len, struct imap_head *h_r);

#endif
