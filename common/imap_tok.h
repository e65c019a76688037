/*
 * imap_tok — the incremental IMAP stream tokenizer, used for both directions.
 *
 * It cuts a byte stream into units without copying anything:
 *
 *   "a1 APPEND INBOX {5}\r\n" "hello" " (\\Seen)\r\n"
 *    '------ LINE -------'   LITERAL  '--- LINE ---'
 *    first, has_literal=5              last
 *
 *   LINE      the bytes of one line part up to and including its line end
 *             (CRLF, or a bare LF, which Dovecot accepts too). When the part
 *             ends in a literal announcement ({n}, {n+}, ~{n}, ~{n+}) the
 *             unit says so, the next unit is the LITERAL body, and the
 *             logical line (the command or response) goes on after it.
 *   FRAGMENT  a prefix of an over-long line part, only when frag_size is set:
 *             exactly frag_size bytes without a line end; the rest follows
 *             as further FRAGMENT units and a final LINE. Quote and {n}
 *             recognition carry across fragments.
 *   LITERAL   opaque literal body bytes: at most what is buffered and at most
 *             what is left of the literal. Never interpreted. A {0} literal
 *             has no LITERAL unit: the next line part follows directly.
 *
 * Contract (resumable, never rescans):
 *   - p always starts at the first byte not yet consumed. After -2 the caller
 *     presents the same bytes again with more appended.
 *   - imap_tok_next() only looks; imap_tok_consume() moves on. A LINE or
 *     FRAGMENT is consumed whole; a LITERAL may be consumed in part.
 *   - Calling imap_tok_next() again without consuming returns the same unit.
 *   - No unit has len 0 or reaches past len.
 *
 * Literal announcements are recognised only outside quoted strings (with
 * backslash escapes), and, in the RESPONSES direction, never in the free text
 * of status responses (tag or "*" followed by OK, NO, BAD, BYE or PREAUTH)
 * nor in continuation requests ("+ ..."): servers put human text there and a
 * text ending in "{5}" must not swallow the next response. The response code
 * that may open a status response's text ("[" right after the status word,
 * up to the first "]" outside a quoted string) is not free text: RFC 3501
 * lets astrings, hence literals, stand in it, e.g.
 *
 *   "a1 NO [BADCHARSET ({5}\r\n" "UTF-8" ")] Unknown charset\r\n"
 *
 * and the tokenizer follows such a literal (the LINE's text stays true).
 */
#ifndef IMAPMUX_IMAP_TOK_H
#define IMAPMUX_IMAP_TOK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum imap_tok_dir {
	IMAP_TOK_COMMANDS,  /* client to server */
	IMAP_TOK_RESPONSES, /* server to client */
};

enum imap_tok_type {
	IMAP_TOK_LINE = 1,
	IMAP_TOK_FRAGMENT,
	IMAP_TOK_LITERAL,
};

struct imap_tok_limits {
	size_t max_line;      /* a line part longer than this (line end included) is an error,
	                       * raised as soon as the excess byte arrives; 0 = no bound */
	size_t frag_size;     /* emit FRAGMENT units of this size for longer parts; 0 = never */
	uint64_t max_literal; /* an announced literal larger than this is an error; 0 = no bound */
};

struct imap_tok_unit {
	enum imap_tok_type type;
	size_t len;       /* bytes of input this unit covers */
	bool first;       /* the unit starts a new logical line (never a LITERAL) */
	bool last;        /* a LINE that ends the logical line (no literal follows) */
	bool text;        /* RESPONSES: the logical line is a status or continuation response
	                    * (known once its first word is scanned: a FRAGMENT cut before
	                    * that may still say false; the LINE always knows) */
	bool has_literal; /* a LINE that ends in a literal announcement */
	bool lit_nonsync; /* ... of the form {n+} */
	bool lit_binary;  /* ... of the form ~{n} */
	uint64_t literal; /* ... its size (may be 0) */
};

/* Opaque to callers: only imap_tok.c reads or writes these fields. */
struct imap_tok {
	enum imap_tok_dir dir;
	struct imap_tok_limits lim;
	const char *err; /* why the last call returned -1 */
	bool failed;     /* sticky: once -1, always -1 */

	/* the unit being scanned */
	size_t scanned; /* bytes of the current unit already looked at */
	bool have_unit; /* unit below is complete and not yet consumed */
	struct imap_tok_unit unit;

	/* logical line state */
	bool at_line_start; /* next byte starts a logical line */
	bool in_literal;
	uint64_t lit_left;
	bool line_text;  /* RESPONSES: current logical line is free text */
	int code;        /* RESPONSES: where a status response's [code] stands */
	size_t part_len; /* bytes of the current line part seen in earlier FRAGMENTs */

	/* lexical state inside a line part */
	int head;     /* head scanner state (tag, word) */
	char word[8]; /* first word after the tag, upper-cased, for text detection */
	size_t word_len;
	bool word_long;
	bool in_quote;
	bool quote_esc;
	int ann; /* literal announcement scanner state */
	bool ann_binary;
	bool ann_nonsync;
	bool ann_tilde; /* previous byte was '~' */
	uint64_t ann_num;
	bool ann_overflow;
};

/* Prepare t for a new stream. lim may be NULL (no bounds, no fragments). */
void imap_tok_init(struct imap_tok *t, enum imap_tok_dir dir, const struct imap_tok_limits *lim);

/*
 * Find the next unit in p[0..len). Returns 0 with *u_r set, -2 when the
 * bytes hold no complete unit yet, -1 on a protocol error (imap_tok_error()
 * says which: "line too long", "literal too large" (above max_literal),
 * "literal size too large" (above 2^63-1), or "consume does not match unit"
 * after a misuse of imap_tok_consume()). -1 is sticky until imap_tok_init().
 */
__attribute__((warn_unused_result)) int imap_tok_next(struct imap_tok *t, const uint8_t *p,
                                                      size_t len, struct imap_tok_unit *u_r);

/* Consume n bytes of the unit imap_tok_next() returned: u->len for a LINE
 * or FRAGMENT, anything up to u->len for a LITERAL. */
void imap_tok_consume(struct imap_tok *t, const struct imap_tok_unit *u, size_t n);

/*
 * The literal announced by the LINE just consumed will never come: the
 * server answered the command instead of sending "+" for a synchronizing
 * literal, so the next byte starts a new logical line. Call only right
 * after consuming such a LINE, before imap_tok_next() looked further; a
 * no-op once failed.
 */
void imap_tok_cancel_literal(struct imap_tok *t);

/* Human-readable reason for the last -1, or NULL. */
const char *imap_tok_error(const struct imap_tok *t);

/* True when everything consumed so far ends a logical line: no part of a
 * command or response consumed without its end, no literal open. */
bool imap_tok_at_boundary(const struct imap_tok *t);

#endif
