/*
 * mbox_feed — see mbox_feed.h. Two layers, both resumable at any byte:
 *
 *   unit bytes --lexer--> tokens --parser--> view calls at the response end
 *   "* 3 FETCH (UID 7 BODY[] {5}\r\n" "hello" " FLAGS (\Seen))\r\n"
 *    TAG  ATOM SP ATOM SP LP ATOM SP ATOM SP ATOM RB SP LITERAL ... RP RP
 *
 * The lexer sees the bytes of line parts only, less the line end: literal
 * bodies are counted (lit_left) and never looked at. It cuts atoms (any
 * byte but SP ( ) " { ] and controls: flags with '\', sections with '[',
 * sequence sets), quoted strings (escapes honoured, content dropped), the
 * delimiters, and a literal announcement, which imap_tok has already
 * recognised: it becomes one LITERAL token at the end of its line part.
 * The first word of a response (the tag) is taken raw up to the first SP,
 * as tags may hold ']'. Once the parser has what it needs from a response
 * (or sees free text), it sets skip and the lexer ignores the rest up to
 * the response's end, literals included.
 *
 * The parser is one state per place in the grammars it reads (see the
 * P_* list). Values it needs (numbers, flag names, item names) are taken
 * from the one atom buffer; the uid-set of VANISHED, which may be long, is
 * parsed byte by byte and applied range by range. A FETCH is gathered into
 * a struct mbox_fetch and applied when its response ends, so a response
 * that breaks off (or is malformed) changes nothing but reliability.
 *
 * Invariants:
 *   - in_resp is true between the first unit of a logical response and
 *     the end of its last LINE; lit_left is what is left of the literal
 *     being forwarded (only LITERAL units come while it is not 0).
 *   - pend[0..npend) are the announced mailbox commands in order; pend[0]
 *     is the active one: a SELECTING state always has a SELECT/EXAMINE
 *     there.
 *   - broken is false in state NONE (an empty view is right when nothing
 *     is selected) unless a command could not be followed.
 */
#include "mbox_feed.h"

#include <stdlib.h>
#include <string.h>

#include "imap_args.h"
#include "zone.h"

#define MODSEQ_MAX 9223372036854775807ull /* mod-sequence values are 63-bit */

enum lex {
	LX_TAG,    /* the first word, up to SP */
	LX_NONE,   /* between tokens */
	LX_ATOM,   /* inside an atom */
	LX_QUOTED, /* inside a quoted string */
	LX_ESC,    /* just after a backslash inside one */
	LX_ANN,    /* inside a literal announcement, up to the line end */
};

enum tok {
	T_ATOM = 1,
	T_SP,
	T_LP,
	T_RP,
	T_RB,
	T_QUOTED,
	T_LITERAL,
	T_BAD, /* a byte no response may hold there */
};

enum parse {
	P_HEAD,        /* after the tag: the first word */
	P_STATUS,      /* tagged: OK, NO or BAD */
	P_OK,          /* after OK: SP and a response code, or the end */
	P_CODE,        /* the code's name, "[NAME" */
	P_CODE_SP,     /* SP before its number */
	P_CODE_NUM,    /* its number */
	P_CODE_RB,     /* the closing ']' */
	P_NUM_SP,      /* "* n": SP */
	P_W2,          /* "* n ": EXISTS, EXPUNGE, FETCH... */
	P_END,         /* nothing more may come */
	P_ENABLED,     /* "* ENABLED": SP or the end */
	P_ENABLED_CAP, /* a capability */
	P_VAN,         /* "* VANISHED": SP */
	P_VAN_FIRST,   /* "(EARLIER)" or the set */
	P_VAN_EARLIER, /* "EARLIER" */
	P_VAN_EAR_RP,  /* ")" */
	P_VAN_EAR_SP,  /* SP before the set */
	P_VAN_SET,     /* the set, byte by byte */
	P_VAN_DONE,    /* the set has ended: nothing more may come */
	P_F_SP,        /* "* n FETCH": SP */
	P_F_LP,        /* "(" */
	P_F_NAME,      /* an item name, or ")" */
	P_F_SECTION,   /* inside "[...]" of an item name */
	P_F_AFTER,     /* after "]": "<origin>" or SP */
	P_F_SP_VALUE,  /* SP before the value */
	P_F_VALUE,     /* the value */
	P_F_MS_NUM,    /* MODSEQ (n */
	P_F_MS_RP,     /* MODSEQ (n) */
	P_F_FLAGS,     /* inside FLAGS (...) */
	P_F_SKIP,      /* inside a list value skipped */
	P_F_NEXT,      /* SP and the next item, or ")" */
	P_F_DONE,      /* after the closing ")" */
};

enum resp {
	R_NONE = 0,
	R_TAGGED, /* a completion: status set */
	R_EXISTS,
	R_EXPUNGE,
	R_FETCH,
};

enum item {
	I_OTHER = 0,
	I_UID,
	I_FLAGS,
	I_MODSEQ,
};

enum code {
	C_UIDVALIDITY = 1,
	C_UIDNEXT,
	C_HIGHESTMODSEQ,
	C_NOMODSEQ,
	C_CLOSED,
};

enum status {
	ST_NONE = 0,
	ST_OK,
	ST_NO,
	ST_BAD,
};

struct mbox_pending {
	enum mbox_cmd kind;
	uint8_t *buf; /* tag then name */
	size_t tag_len;
	size_t name_len;
	bool taint; /* the view cannot hold this mailbox (name too long) */
};

struct mbox_feed {
	enum mbox_feed_state state;
	unsigned enabled;
	bool broken;
	const char *why;
	struct mbox_pending pend[MBOX_FEED_PENDING];
	size_t npend;
	bool exists_seen; /* SELECTING: an EXISTS of the new mailbox came */

	/* the stream */
	bool in_resp;
	bool resync;  /* units out of order: ignore them up to the next response */
	bool held_cr; /* a FRAGMENT ended in CR: the line end, if a bare LF follows */
	uint64_t lit_left;

	/* lexer */
	enum lex lx;
	bool skip;
	bool want_code; /* the next byte: '[' starts a response code, else text */
	uint8_t atom[MBOX_FEED_ATOM_MAX];
	size_t atom_len;
	bool atom_long;
	uint8_t tag[MBOX_TAG_MAX];
	size_t tag_len;
	bool tag_long;

	/* parser */
	enum parse ps;
	enum resp resp;
	enum status status;
	enum code code;
	enum item item;
	uint32_t num; /* "* n ..." */
	uint64_t code_num;
	unsigned depth; /* parentheses open in a skipped value or section */
	struct mbox_fetch fm;
	bool fm_inexact; /* a flag of this FETCH cannot be represented */
	bool earlier;
	/* the uid-set being parsed */
	uint64_t set_cur;
	uint64_t set_lo;
	bool set_digits;
	bool set_range;
};

/* ---- state ---- */

/* The view no longer follows the stream (see mbox_feed.h). */
static void mark_broken(struct mbox_feed *f, const char *why)
{
	if (!f->broken)
		f->why = why;
	f->broken = true;
}

/* ... because of the response being read: the rest of it is skipped.
 * Only while lexing one (a command may go out in the middle of a
 * response, and must not cut its parse short). */
static void fail(struct mbox_feed *f, const char *why)
{
	mark_broken(f, why);
	f->skip = true;
}

static void pending_free(struct mbox_pending *e)
{
	free(e->buf);
	memset(e, 0, sizeof(*e));
}

static void pending_pop(struct mbox_feed *f)
{
	pending_free(&f->pend[0]);
	memmove(&f->pend[0], &f->pend[1], (f->npend - 1) * sizeof(f->pend[0]));
	f->npend--;
	memset(&f->pend[f->npend], 0, sizeof(f->pend[0]));
}

static bool is_select(enum mbox_cmd k)
{
	return k == MBOX_CMD_SELECT || k == MBOX_CMD_EXAMINE;
}

/* The view as pend[0] (a SELECT/EXAMINE) begins: empty, named. */
static void select_begin(struct mbox_feed *f, struct mbox_view *v)
{
	const struct mbox_pending *e = &f->pend[0];

	mbox_view_reset(v);
	mbox_view_set_readonly(v, e->kind == MBOX_CMD_EXAMINE);
	f->exists_seen = false;
	if (e->taint)
		mark_broken(f, "mailbox name too long to keep");
	else if (mbox_view_set_name(v, e->buf + e->tag_len, e->name_len) < 0)
		mark_broken(f, "no memory for the mailbox name");
}

/* pend[0] became the active command. */
static void activate(struct mbox_feed *f, struct mbox_view *v)
{
	if (!is_select(f->pend[0].kind))
		return;
	f->state = MBOX_FEED_SELECTING;
	f->broken = false;
	f->why = NULL;
	select_begin(f, v);
}

/* Nothing is selected now: the empty view is right. */
static void deselect(struct mbox_feed *f, struct mbox_view *v)
{
	mbox_view_reset(v);
	f->state = MBOX_FEED_NONE;
	f->broken = false;
	f->why = NULL;
}

static void complete(struct mbox_feed *f, struct mbox_view *v)
{
	size_t i;
	enum mbox_cmd kind;

	for (i = 0; i < f->npend; i++) {
		if (f->pend[i].tag_len == f->tag_len &&
		    memcmp(f->pend[i].buf, f->tag, f->tag_len) == 0)
			break;
	}
	if (f->tag_long || i == f->npend)
		return; /* not one of ours */
	if (i > 0) {
		/* The server completed a later one first: whatever the
		 * earlier ones did is unknown, and this one never began. */
		while (i-- > 0)
			pending_pop(f);
		if (is_select(f->pend[0].kind)) {
			f->state = MBOX_FEED_SELECTING;
			select_begin(f, v);
		} else if (f->state == MBOX_FEED_SELECTING) {
			/* A SELECT skipped: something may be selected. */
			f->state = MBOX_FEED_SELECTED;
		}
		mark_broken(f, "mailbox commands completed out of order");
	}
	kind = f->pend[0].kind;
	if (is_select(kind)) {
		if (f->status == ST_OK) {
			f->state = MBOX_FEED_SELECTED;
			if (!f->exists_seen)
				mark_broken(f, "SELECT completed without EXISTS");
		} else if (f->status == ST_NO) {
			deselect(f, v);
		} else {
			mbox_view_reset(v);
			f->state = MBOX_FEED_NONE;
			mark_broken(f, "SELECT answered BAD: what is selected is unknown");
		}
	} else if (f->status == ST_OK) {
		deselect(f, v);
	}
	pending_pop(f);
	if (f->npend > 0)
		activate(f, v);
}

/* ---- applying what a response said ---- */

/* Mailbox data may change the view now? Drops (false) what belongs to the
 * mailbox a SELECT is leaving; fails with nothing selected. */
static bool msgs_apply(struct mbox_feed *f)
{
	if (f->state == MBOX_FEED_NONE) {
		fail(f, "mailbox data with nothing selected");
		return false;
	}
	return f->state == MBOX_FEED_SELECTED || f->exists_seen;
}

static void apply_code(struct mbox_feed *f, struct mbox_view *v, uint64_t n)
{
	if (f->state == MBOX_FEED_NONE)
		return;
	switch (f->code) {
	case C_UIDVALIDITY:
		if (f->state == MBOX_FEED_SELECTED && mbox_view_uidvalidity(v) != 0 &&
		    mbox_view_uidvalidity(v) != n) {
			fail(f, "UIDVALIDITY changed");
			return;
		}
		mbox_view_set_uidvalidity(v, (uint32_t)n);
		break;
	case C_UIDNEXT:
		mbox_view_set_uidnext(v, (uint32_t)n);
		break;
	case C_HIGHESTMODSEQ:
		mbox_view_set_highestmodseq(v, n);
		break;
	case C_NOMODSEQ:
		mbox_view_set_nomodseq(v);
		break;
	case C_CLOSED:
		if (f->state == MBOX_FEED_SELECTING) {
			/* What came before, broken or not, belonged to the
			 * old mailbox. */
			f->broken = false;
			f->why = NULL;
			select_begin(f, v);
		} else {
			deselect(f, v);
		}
		break;
	}
}

static void apply_exists(struct mbox_feed *f, struct mbox_view *v)
{
	if (f->state == MBOX_FEED_NONE) {
		fail(f, "mailbox data with nothing selected");
		return;
	}
	if (f->state == MBOX_FEED_SELECTING) {
		/* The SELECT's EXISTS is absolute: whatever came before it
		 * may have been the old mailbox's. */
		mbox_view_clear_messages(v);
		f->exists_seen = true;
	}
	if (mbox_view_exists(v, f->num) < 0)
		fail(f, "EXISTS the view refuses");
}

static void apply_fetch(struct mbox_feed *f, struct mbox_view *v)
{
	if (!msgs_apply(f))
		return;
	if (mbox_view_fetch_msg(v, f->num, &f->fm) < 0) {
		fail(f, "FETCH the view refuses");
		return;
	}
	if (f->fm.has_flags && f->fm_inexact)
		mbox_view_set_flags_inexact(v);
	if (f->fm.modseq != 0)
		f->enabled |= MBOX_EN_CONDSTORE;
}

static void apply_set_element(struct mbox_feed *f, struct mbox_view *v)
{
	uint64_t lo = f->set_range ? f->set_lo : f->set_cur, hi = f->set_cur;

	if (!f->set_digits) {
		fail(f, "malformed VANISHED");
		return;
	}
	if (lo > hi) {
		uint64_t t = lo;

		lo = hi;
		hi = t;
	}
	if (lo == 0) {
		fail(f, "malformed VANISHED");
		return;
	}
	if (msgs_apply(f)) {
		int r = f->earlier ? mbox_view_vanished_earlier(v, (uint32_t)lo, (uint32_t)hi)
		                   : mbox_view_vanished(v, (uint32_t)lo, (uint32_t)hi);

		if (r < 0)
			fail(f, "VANISHED the view refuses");
	}
	f->set_cur = f->set_lo = 0;
	f->set_digits = f->set_range = false;
}

/* One byte of the uid-set of VANISHED. */
static void set_byte(struct mbox_feed *f, struct mbox_view *v, uint8_t c)
{
	if (c >= '0' && c <= '9') {
		f->set_cur = f->set_cur * 10 + (uint64_t)(c - '0');
		f->set_digits = true;
		if (f->set_cur > UINT32_MAX)
			fail(f, "malformed VANISHED");
	} else if (c == ':' && f->set_digits && !f->set_range) {
		f->set_lo = f->set_cur;
		f->set_cur = 0;
		f->set_digits = false;
		f->set_range = true;
	} else if (c == ',') {
		apply_set_element(f, v);
	} else {
		fail(f, "malformed VANISHED"); /* "*" is not allowed there either */
	}
}

/* ---- the parser ---- */

static bool atom_is(const struct mbox_feed *f, const char *word)
{
	return !f->atom_long && imap_word_eq(f->atom, f->atom_len, word);
}

/* The atom as a number: 0 with *n_r, or -1. */
static int atom_num(const struct mbox_feed *f, uint64_t max, uint64_t *n_r)
{
	uint64_t n = 0;

	if (f->atom_long || f->atom_len == 0 || f->atom_len > 20)
		return -1;
	for (size_t i = 0; i < f->atom_len; i++) {
		uint8_t c = f->atom[i];

		if (c < '0' || c > '9')
			return -1;
		if (n > (max - (uint64_t)(c - '0')) / 10)
			return -1;
		n = n * 10 + (uint64_t)(c - '0');
	}
	*n_r = n;
	return 0;
}

/* One flag of FETCH FLAGS (...). */
static void fetch_flag(struct mbox_feed *f, struct mbox_view *v)
{
	static const struct {
		const char *name;
		unsigned bit;
	} sys[] = {
	    {"\\Seen", MBOX_F_SEEN},       {"\\Answered", MBOX_F_ANSWERED},
	    {"\\Flagged", MBOX_F_FLAGGED}, {"\\Deleted", MBOX_F_DELETED},
	    {"\\Draft", MBOX_F_DRAFT},
	};
	unsigned bit;

	if (f->atom_long) {
		f->fm_inexact = true;
		return;
	}
	if (f->atom[0] == '\\') {
		for (size_t i = 0; i < sizeof(sys) / sizeof(sys[0]); i++) {
			if (atom_is(f, sys[i].name)) {
				f->fm.flags |= sys[i].bit;
				return;
			}
		}
		if (atom_is(f, "\\Recent"))
			return; /* session state, not modelled */
	}
	/* Dropped FETCHes (an old mailbox's) must not fill the table. */
	if (f->state != MBOX_FEED_SELECTED && !f->exists_seen)
		return;
	if (mbox_view_keyword(v, (const char *)f->atom, f->atom_len, &bit) < 0)
		f->fm_inexact = true;
	else
		f->fm.keywords |= 1u << bit;
}

static void parse_head(struct mbox_feed *f, enum tok t)
{
	uint64_t n;

	if (t != T_ATOM) {
		f->skip = true;
		return;
	}
	if (atom_num(f, UINT32_MAX, &n) == 0) {
		f->num = (uint32_t)n;
		f->ps = P_NUM_SP;
	} else if (atom_is(f, "OK")) {
		f->ps = P_OK;
	} else if (atom_is(f, "ENABLED")) {
		f->ps = P_ENABLED;
	} else if (atom_is(f, "VANISHED")) {
		f->ps = P_VAN;
	} else {
		f->skip = true; /* NO, BAD, BYE, FLAGS, LIST, STATUS... */
	}
}

static void parse_code(struct mbox_feed *f, struct mbox_view *v, enum tok t)
{
	uint64_t n;

	switch (f->ps) {
	case P_CODE:
		if (t != T_ATOM || f->atom_len < 2 || f->atom[0] != '[') {
			f->skip = true;
			break;
		}
		f->atom_len--;
		memmove(f->atom, f->atom + 1, f->atom_len);
		f->ps = P_CODE_SP;
		if (atom_is(f, "UIDVALIDITY"))
			f->code = C_UIDVALIDITY;
		else if (atom_is(f, "UIDNEXT"))
			f->code = C_UIDNEXT;
		else if (atom_is(f, "HIGHESTMODSEQ"))
			f->code = C_HIGHESTMODSEQ;
		else if (atom_is(f, "NOMODSEQ"))
			f->code = C_NOMODSEQ, f->ps = P_CODE_RB;
		else if (atom_is(f, "CLOSED"))
			f->code = C_CLOSED, f->ps = P_CODE_RB;
		else
			f->skip = true; /* READ-WRITE, PERMANENTFLAGS, ALERT... */
		break;
	case P_CODE_SP:
		if (t != T_SP)
			fail(f, "malformed response code");
		f->ps = P_CODE_NUM;
		break;
	case P_CODE_NUM:
		if (t != T_ATOM ||
		    atom_num(f, f->code == C_HIGHESTMODSEQ ? MODSEQ_MAX : UINT32_MAX, &n) < 0 ||
		    (n == 0 && f->code != C_HIGHESTMODSEQ)) {
			fail(f, "malformed response code");
			break;
		}
		f->code_num = n; /* applied at the ']' */
		f->ps = P_CODE_RB;
		break;
	default: /* P_CODE_RB */
		if (t != T_RB) {
			fail(f, "malformed response code");
			break;
		}
		apply_code(f, v, f->code_num);
		f->skip = true; /* the rest is text */
		break;
	}
}

static void parse_enabled(struct mbox_feed *f, enum tok t)
{
	if (f->ps == P_ENABLED) {
		if (t == T_SP)
			f->ps = P_ENABLED_CAP;
		else
			f->skip = true;
		return;
	}
	if (t != T_ATOM) {
		f->skip = true;
		return;
	}
	if (atom_is(f, "CONDSTORE"))
		f->enabled |= MBOX_EN_CONDSTORE;
	else if (atom_is(f, "QRESYNC"))
		f->enabled |= MBOX_EN_QRESYNC | MBOX_EN_CONDSTORE;
	else if (atom_is(f, "UTF8=ACCEPT"))
		f->enabled |= MBOX_EN_UTF8;
	f->ps = P_ENABLED;
}

static void parse_vanished(struct mbox_feed *f, enum tok t)
{
	switch (f->ps) {
	case P_VAN:
		if (t != T_SP)
			fail(f, "malformed VANISHED");
		f->ps = P_VAN_FIRST;
		break;
	case P_VAN_FIRST:
		/* An atom here was taken as the set by the lexer. */
		if (t != T_LP)
			fail(f, "malformed VANISHED");
		f->ps = P_VAN_EARLIER;
		break;
	case P_VAN_EARLIER:
		if (t != T_ATOM || !atom_is(f, "EARLIER"))
			fail(f, "malformed VANISHED");
		f->earlier = true;
		f->ps = P_VAN_EAR_RP;
		break;
	case P_VAN_EAR_RP:
		if (t != T_RP)
			fail(f, "malformed VANISHED");
		f->ps = P_VAN_EAR_SP;
		break;
	case P_VAN_EAR_SP:
		if (t != T_SP)
			fail(f, "malformed VANISHED");
		f->ps = P_VAN_FIRST;
		break;
	default: /* P_VAN_DONE (the lexer passed the set byte by byte) */
		fail(f, "malformed VANISHED");
		break;
	}
}

static void parse_fetch(struct mbox_feed *f, struct mbox_view *v, enum tok t)
{
	uint64_t n;

	switch (f->ps) {
	case P_F_SP:
		if (t != T_SP)
			goto bad;
		f->ps = P_F_LP;
		break;
	case P_F_LP:
		if (t != T_LP)
			goto bad;
		memset(&f->fm, 0, sizeof(f->fm));
		f->fm_inexact = false;
		f->ps = P_F_NAME;
		break;
	case P_F_NAME:
		if (t == T_RP) {
			f->ps = P_F_DONE;
			break;
		}
		if (t != T_ATOM)
			goto bad;
		f->item = I_OTHER;
		f->ps = P_F_SP_VALUE;
		if (f->atom_long || memchr(f->atom, '[', f->atom_len) != NULL) {
			f->depth = 0;
			f->ps = f->atom_long ? P_F_SP_VALUE : P_F_SECTION;
		} else if (atom_is(f, "UID")) {
			f->item = I_UID;
		} else if (atom_is(f, "FLAGS")) {
			f->item = I_FLAGS;
		} else if (atom_is(f, "MODSEQ")) {
			f->item = I_MODSEQ;
		}
		break;
	case P_F_SECTION:
		if (t == T_LP) {
			f->depth++;
		} else if (t == T_RP) {
			if (f->depth == 0)
				goto bad;
			f->depth--;
		} else if (t == T_RB && f->depth == 0) {
			f->ps = P_F_AFTER;
		} else if (t == T_BAD) {
			goto bad;
		}
		break;
	case P_F_AFTER:
		if (t == T_ATOM) /* "<origin>" */
			f->ps = P_F_SP_VALUE;
		else if (t == T_SP)
			f->ps = P_F_VALUE;
		else
			goto bad;
		break;
	case P_F_SP_VALUE:
		if (t != T_SP)
			goto bad;
		f->ps = P_F_VALUE;
		break;
	case P_F_VALUE:
		switch (f->item) {
		case I_UID:
			if (t != T_ATOM || atom_num(f, UINT32_MAX, &n) < 0 || n == 0)
				goto bad;
			f->fm.uid = (uint32_t)n;
			f->ps = P_F_NEXT;
			break;
		case I_MODSEQ:
			if (t != T_LP)
				goto bad;
			f->ps = P_F_MS_NUM;
			break;
		case I_FLAGS:
			if (t != T_LP)
				goto bad;
			f->fm.has_flags = true;
			f->fm.flags = 0;
			f->fm.keywords = 0;
			f->fm_inexact = false;
			f->ps = P_F_FLAGS;
			break;
		default:
			if (t == T_ATOM || t == T_QUOTED || t == T_LITERAL) {
				f->ps = P_F_NEXT;
			} else if (t == T_LP) {
				f->depth = 1;
				f->ps = P_F_SKIP;
			} else {
				goto bad;
			}
			break;
		}
		break;
	case P_F_MS_NUM:
		if (t != T_ATOM || atom_num(f, MODSEQ_MAX, &n) < 0 || n == 0)
			goto bad;
		f->fm.modseq = n;
		f->ps = P_F_MS_RP;
		break;
	case P_F_MS_RP:
		if (t != T_RP)
			goto bad;
		f->ps = P_F_NEXT;
		break;
	case P_F_FLAGS:
		if (t == T_ATOM)
			fetch_flag(f, v);
		else if (t == T_RP)
			f->ps = P_F_NEXT;
		else if (t != T_SP)
			goto bad;
		break;
	case P_F_SKIP:
		if (t == T_LP) {
			f->depth++;
		} else if (t == T_RP) {
			if (--f->depth == 0)
				f->ps = P_F_NEXT;
		} else if (t == T_BAD) {
			goto bad;
		}
		break;
	case P_F_NEXT:
		if (t == T_SP)
			f->ps = P_F_NAME;
		else if (t == T_RP)
			f->ps = P_F_DONE;
		else
			goto bad;
		break;
	default: /* P_F_DONE */
		goto bad;
	}
	return;
bad:
	fail(f, "malformed FETCH");
}

/* A token, with the atom in f->atom when it is T_ATOM. */
static void parse_tok(struct mbox_feed *f, struct mbox_view *v, enum tok t)
{
	switch (f->ps) {
	case P_HEAD:
		parse_head(f, t);
		break;
	case P_STATUS:
		f->status = t != T_ATOM         ? ST_NONE
		            : atom_is(f, "OK")  ? ST_OK
		            : atom_is(f, "NO")  ? ST_NO
		            : atom_is(f, "BAD") ? ST_BAD
		                                : ST_NONE;
		f->resp = f->status != ST_NONE ? R_TAGGED : R_NONE;
		if (f->status == ST_OK)
			f->ps = P_OK;
		else
			f->skip = true;
		break;
	case P_OK:
		if (t != T_SP) {
			f->skip = true;
			break;
		}
		f->want_code = true;
		f->ps = P_CODE;
		break;
	case P_CODE:
	case P_CODE_SP:
	case P_CODE_NUM:
	case P_CODE_RB:
		parse_code(f, v, t);
		break;
	case P_NUM_SP:
		if (t != T_SP)
			fail(f, "malformed message data");
		f->ps = P_W2;
		break;
	case P_W2:
		if (t == T_ATOM && atom_is(f, "EXISTS")) {
			f->resp = R_EXISTS;
			f->ps = P_END;
		} else if (t == T_ATOM && atom_is(f, "EXPUNGE")) {
			f->resp = R_EXPUNGE;
			f->ps = P_END;
		} else if (t == T_ATOM && atom_is(f, "FETCH")) {
			f->resp = R_FETCH;
			f->ps = P_F_SP;
		} else {
			f->skip = true; /* RECENT, or an extension's */
		}
		break;
	case P_END:
		fail(f, "malformed message data");
		break;
	case P_ENABLED:
	case P_ENABLED_CAP:
		parse_enabled(f, t);
		break;
	case P_VAN:
	case P_VAN_FIRST:
	case P_VAN_EARLIER:
	case P_VAN_EAR_RP:
	case P_VAN_EAR_SP:
	case P_VAN_SET:
	case P_VAN_DONE:
		parse_vanished(f, t);
		break;
	default:
		parse_fetch(f, v, t);
		break;
	}
}

/* The logical response ended (its last line part, less the line end, has
 * been lexed). */
static void response_end(struct mbox_feed *f, struct mbox_view *v)
{
	if (f->resp == R_TAGGED) {
		complete(f, v);
		return;
	}
	if (f->skip)
		return;
	switch (f->ps) {
	case P_END:
		if (f->resp == R_EXISTS) {
			apply_exists(f, v);
		} else if (msgs_apply(f)) {
			if (mbox_view_expunge(v, f->num) < 0)
				fail(f, "EXPUNGE the view refuses");
		}
		break;
	case P_F_DONE:
		apply_fetch(f, v);
		break;
	case P_VAN_DONE: /* applied range by range */
	case P_OK:
	case P_ENABLED:
	case P_HEAD:
		break; /* "* OK", "* ENABLED", a bare "*": nothing to do */
	default:
		fail(f, "response ends too early");
		break;
	}
}

/* ---- the lexer ---- */

static bool atom_byte_ok(uint8_t c)
{
	return c > 0x20 && c != 0x7f && c != '(' && c != ')' && c != '"' && c != '{' && c != ']';
}

static void atom_flush(struct mbox_feed *f, struct mbox_view *v)
{
	f->lx = LX_NONE;
	if (f->ps == P_VAN_SET) {
		apply_set_element(f, v); /* the set is one atom: its last element */
		f->ps = P_VAN_DONE;
	} else {
		parse_tok(f, v, T_ATOM);
	}
}

static void lex_byte(struct mbox_feed *f, struct mbox_view *v, uint8_t c)
{
	switch (f->lx) {
	case LX_TAG:
		if (c != ' ') {
			if (f->tag_len < MBOX_TAG_MAX)
				f->tag[f->tag_len++] = c;
			else
				f->tag_long = true;
			return;
		}
		f->lx = LX_NONE;
		if (f->tag_len == 1 && f->tag[0] == '+')
			f->skip = true; /* a continuation request: text */
		else if (f->tag_len == 1 && f->tag[0] == '*')
			f->ps = P_HEAD;
		else
			f->ps = P_STATUS;
		return;
	case LX_QUOTED:
		if (c == '\\')
			f->lx = LX_ESC;
		else if (c == '"')
			f->lx = LX_NONE, parse_tok(f, v, T_QUOTED);
		return;
	case LX_ESC:
		f->lx = LX_QUOTED;
		return;
	case LX_ANN:
		return; /* imap_tok has read the announcement; its end is the line end */
	default:
		break;
	}
	if (f->want_code) {
		f->want_code = false;
		if (c != '[') {
			f->skip = true; /* free text */
			return;
		}
	}
	if (atom_byte_ok(c)) {
		if (f->lx != LX_ATOM) {
			f->lx = LX_ATOM;
			f->atom_len = 0;
			f->atom_long = false;
			if (f->ps == P_VAN_FIRST)
				f->ps = P_VAN_SET;
		}
		if (f->ps == P_VAN_SET)
			set_byte(f, v, c);
		else if (f->atom_len < MBOX_FEED_ATOM_MAX)
			f->atom[f->atom_len++] = c;
		else
			f->atom_long = true;
		return;
	}
	if (f->lx == LX_ATOM) {
		if (c == '{' && f->ps != P_VAN_SET && f->atom_len == 1 && f->atom[0] == '~') {
			f->lx = LX_ANN; /* ~{n}: a binary literal */
			return;
		}
		atom_flush(f, v);
		if (f->skip)
			return;
	}
	switch (c) {
	case ' ':
		parse_tok(f, v, T_SP);
		break;
	case '(':
		parse_tok(f, v, T_LP);
		break;
	case ')':
		parse_tok(f, v, T_RP);
		break;
	case ']':
		parse_tok(f, v, T_RB);
		break;
	case '"':
		f->lx = LX_QUOTED;
		break;
	case '{':
		f->lx = LX_ANN;
		break;
	default:
		/* A control byte: every state that reads a response fails on
		 * it, the others skip. */
		parse_tok(f, v, T_BAD);
		break;
	}
}

static void response_start(struct mbox_feed *f)
{
	f->in_resp = true;
	f->resync = false;
	f->held_cr = false;
	f->lx = LX_TAG;
	f->skip = false;
	f->want_code = false;
	f->atom_len = 0;
	f->atom_long = false;
	f->tag_len = 0;
	f->tag_long = false;
	f->ps = P_HEAD;
	f->resp = R_NONE;
	f->status = ST_NONE;
	f->earlier = false;
	f->set_cur = f->set_lo = 0;
	f->set_digits = f->set_range = false;
}

/* The end of a line part (its line end already cut off). */
static void part_end(struct mbox_feed *f, struct mbox_view *v, const struct imap_tok_unit *u)
{
	if (f->lx == LX_TAG) {
		/* A line that is only a tag: nothing for us. */
		f->lx = LX_NONE;
		f->skip = true;
	}
	if (!f->skip && f->lx == LX_ATOM)
		atom_flush(f, v);
	if (u->has_literal) {
		f->lit_left = u->literal;
		if (f->skip)
			return;
		if (f->lx != LX_ANN) {
			fail(f, "literal where none can be");
			return;
		}
		f->lx = LX_NONE;
		parse_tok(f, v, T_LITERAL);
		return;
	}
	if (!f->skip && f->lx != LX_NONE)
		fail(f, "response ends inside a token");
	response_end(f, v);
	f->in_resp = false;
}

int mbox_feed_unit(struct mbox_feed *f, struct mbox_view *v, const struct imap_tok_unit *u,
                   const uint8_t *p, size_t n)
{
	size_t len = n;

	if (u->type == IMAP_TOK_LITERAL) {
		if (f->resync)
			goto out;
		if (!f->in_resp || n == 0 || n > u->len || n > f->lit_left) {
			f->in_resp = false;
			goto desync;
		}
		f->lit_left -= n;
		goto out;
	}
	if (n != u->len || n == 0 || (u->type != IMAP_TOK_LINE && u->type != IMAP_TOK_FRAGMENT))
		goto desync;
	if (u->first) {
		if (f->lit_left != 0 || (f->in_resp && !f->resync))
			fail(f, "a response broke off");
		f->lit_left = 0;
		response_start(f);
	} else if (f->resync) {
		goto out;
	} else if (!f->in_resp || f->lit_left != 0) {
		f->in_resp = false;
		goto desync;
	}
	if (u->type == IMAP_TOK_LINE) {
		/* Cut the line end: LF, or CRLF. */
		len--;
		if (len > 0 && p[len - 1] == '\r')
			len--;
	}
	if (f->held_cr) {
		/* Not the CR of a CRLF split by the fragment's end: a byte of
		 * the line like any other (and no response may hold one). */
		f->held_cr = false;
		if (!(u->type == IMAP_TOK_LINE && n == 1) && !f->skip)
			lex_byte(f, v, '\r');
	}
	if (u->type == IMAP_TOK_FRAGMENT && p[len - 1] == '\r') {
		len--;
		f->held_cr = true;
	}
	for (size_t i = 0; i < len && !f->skip; i++)
		lex_byte(f, v, p[i]);
	if (u->type == IMAP_TOK_LINE)
		part_end(f, v, u);
out:
	return f->broken ? -1 : 0;
desync:
	/* Not the stream imap_tok cuts: wait for the next response. */
	f->resync = true;
	f->held_cr = false;
	f->lit_left = 0;
	fail(f, "units out of order");
	return -1;
}

/* ---- the API ---- */

int mbox_feed_init(struct mbox_feed **f_r)
{
	struct mbox_feed *f = zalloc(sizeof(*f));

	*f_r = f;
	return f == NULL ? -1 : 0;
}

void mbox_feed_reset(struct mbox_feed *f)
{
	for (size_t i = 0; i < f->npend; i++)
		pending_free(&f->pend[i]);
	memset(f, 0, sizeof(*f));
}

void mbox_feed_destroy(struct mbox_feed **fp)
{
	if (fp == NULL || *fp == NULL)
		return;
	mbox_feed_reset(*fp);
	zfree(*fp, sizeof(**fp));
	*fp = NULL;
}

int mbox_feed_command(struct mbox_feed *f, struct mbox_view *v, const uint8_t *tag, size_t tag_len,
                      enum mbox_cmd kind, const uint8_t *name, size_t name_len)
{
	struct mbox_pending *e;

	if (!is_select(kind) && kind != MBOX_CMD_CLOSE && kind != MBOX_CMD_UNSELECT)
		goto fail;
	if (!is_select(kind))
		name_len = 0;
	if (tag_len == 0 || tag_len > MBOX_TAG_MAX || f->npend == MBOX_FEED_PENDING)
		goto fail;
	e = &f->pend[f->npend];
	e->taint = name_len > MBOX_NAME_MAX;
	if (e->taint)
		name_len = 0;
	e->buf = malloc(tag_len + name_len);
	if (e->buf == NULL)
		goto fail;
	memcpy(e->buf, tag, tag_len);
	if (name_len > 0)
		memcpy(e->buf + tag_len, name, name_len);
	e->kind = kind;
	e->tag_len = tag_len;
	e->name_len = name_len;
	if (++f->npend == 1)
		activate(f, v);
	return 0;
fail:
	mark_broken(f, "a mailbox command could not be followed");
	return -1;
}

void mbox_feed_enable(struct mbox_feed *f, unsigned bits)
{
	f->enabled |= bits;
	if (bits & MBOX_EN_QRESYNC)
		f->enabled |= MBOX_EN_CONDSTORE;
}

unsigned mbox_feed_enabled(const struct mbox_feed *f)
{
	return f->enabled;
}

/* The units of one line: pieces as FRAGMENTs, then its line end. */
static int feed_pieces(struct mbox_feed *f, struct mbox_view *v, const uint8_t *const *p,
                       const size_t *n, size_t npieces)
{
	static const uint8_t crlf[] = "\r\n";
	bool first = true;
	int r = 0;

	for (size_t i = 0; i < npieces; i++) {
		if (n[i] == 0)
			continue;
		struct imap_tok_unit u = {.type = IMAP_TOK_FRAGMENT, .len = n[i], .first = first};
		first = false;
		if (mbox_feed_unit(f, v, &u, p[i], n[i]) < 0)
			r = -1;
	}
	struct imap_tok_unit end = {.type = IMAP_TOK_LINE, .len = 2, .first = first, .last = true};
	if (mbox_feed_unit(f, v, &end, crlf, 2) < 0)
		r = -1;
	return r < 0 || f->broken ? -1 : 0;
}

int mbox_feed_line(struct mbox_feed *f, struct mbox_view *v, const uint8_t *line, size_t len)
{
	const uint8_t *p[1] = {line};
	size_t n[1] = {len};

	return feed_pieces(f, v, p, n, 1);
}

int mbox_feed_tagged(struct mbox_feed *f, struct mbox_view *v, const char *tag, const uint8_t *line,
                     size_t len)
{
	const uint8_t *sp = memchr(line, ' ', len);
	const uint8_t *p[2] = {(const uint8_t *)tag, sp};
	size_t n[2] = {strlen(tag), sp != NULL ? len - (size_t)(sp - line) : 0};

	if (sp == NULL || n[0] == 0) {
		fail(f, "a tagged completion without a tag");
		return -1;
	}
	return feed_pieces(f, v, p, n, 2);
}

int mbox_feed_set_selected(struct mbox_feed *f)
{
	if (f->npend > 0)
		return -1;
	f->state = MBOX_FEED_SELECTED;
	f->broken = false;
	f->why = NULL;
	return 0;
}

enum mbox_feed_state mbox_feed_state(const struct mbox_feed *f)
{
	return f->state;
}

bool mbox_feed_reliable(const struct mbox_feed *f)
{
	return !f->broken;
}

const char *mbox_feed_error(const struct mbox_feed *f)
{
	return f->broken ? f->why : NULL;
}

size_t mbox_feed_pending(const struct mbox_feed *f)
{
	return f->npend;
}
