/*
 * test_mbox_feed — common/mbox_feed.c fed real (Dovecot-shaped) server
 * streams through common/imap_tok.c the way the proxy's pump does.
 *
 * run_stream() plays the pump: it reads the stream in chunks, takes units
 * from the tokenizer, consumes LITERAL units a few bytes at a time when
 * asked, hands each unit's bytes to the feed in a heap block of exactly
 * that size (so ASan and valgrind catch any read past them), and sends the
 * client's mailbox commands to the feed when the stream reaches the offset
 * where they went out. It returns a fingerprint of everything the feed and
 * the view say. check_stream() runs a stream whole, one byte at a time and
 * split at every offset, with and without FRAGMENT units and partial
 * literals, and requires the same fingerprint every time; the table tests
 * then check that fingerprint's contents.
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
#include "mbox_feed.h"
#include "mbox_view.h"

/* ---------------------------------------------------------------- driver */

/* A client command that went out when the stream had reached offset at. */
struct cmd_at {
	size_t at;
	const char *tag;
	enum mbox_cmd kind;
	const char *name;
};

struct opts {
	size_t first;    /* size of the first read (a split there), 0 = none */
	size_t chunk;    /* size of the other reads, 0 = the rest at once */
	size_t lit_step; /* consume LITERAL units at most this much at a time, 0 = whole */
	size_t frag;     /* the tokenizer's frag_size, 0 = none */
};

static char *fingerprint(const struct mbox_feed *f, const struct mbox_view *v, int cmdfail)
{
	char *buf = NULL;
	size_t len = 0, nlen;
	FILE *fp = open_memstream(&buf, &len);
	const uint8_t *name;
	const char *why = NULL;

	assert_non_null(fp);
	name = mbox_view_name(v, &nlen);
	fprintf(fp, "state=%d reliable=%d enabled=%u pending=%zu cmdfail=%d check=%d\n",
	        (int)mbox_feed_state(f), mbox_feed_reliable(f), mbox_feed_enabled(f),
	        mbox_feed_pending(f), cmdfail, mbox_view_check(v, &why));
	fprintf(fp, "uv=%u next=%u hms=%llu nomodseq=%d ro=%d exact=%d name=%.*s count=%u\n",
	        mbox_view_uidvalidity(v), mbox_view_uidnext(v),
	        (unsigned long long)mbox_view_highestmodseq(v), mbox_view_nomodseq(v),
	        mbox_view_readonly(v), mbox_view_flags_exact(v), (int)nlen,
	        name ? (const char *)name : "", mbox_view_count(v));
	for (uint32_t i = 1; i <= mbox_view_count(v); i++) {
		unsigned fl = mbox_view_flags(v, i);
		uint32_t kw = mbox_view_keywords(v, i);

		fprintf(fp, "%u:%u:%s%s%s%s%s", i, mbox_view_uid(v, i), fl & MBOX_F_SEEN ? "S" : "",
		        fl & MBOX_F_ANSWERED ? "A" : "", fl & MBOX_F_FLAGGED ? "F" : "",
		        fl & MBOX_F_DELETED ? "D" : "", fl & MBOX_F_DRAFT ? "R" : "");
		for (unsigned b = 0; b < MBOX_KW_MAX; b++) {
			size_t kl;
			const char *k = mbox_view_keyword_name(v, b, &kl);

			if (kw & 1u << b)
				fprintf(fp, " %.*s", (int)kl, k);
		}
		if (mbox_view_modseq(v, i) != 0)
			fprintf(fp, " ms=%llu", (unsigned long long)mbox_view_modseq(v, i));
		fprintf(fp, "\n");
	}
	assert_int_equal(fclose(fp), 0);
	return buf;
}

static void fire(struct mbox_feed *f, struct mbox_view *v, const struct cmd_at *c, int *cmdfail)
{
	const char *name = c->name ? c->name : "";

	if (mbox_feed_command(f, v, (const uint8_t *)c->tag, strlen(c->tag), c->kind,
	                      (const uint8_t *)name, strlen(name)) < 0)
		(*cmdfail)++;
}

/*
 * Run s[0..n) through a tokenizer and a feed as o says; return the
 * fingerprint (malloc'd). With f_r and v_r, hand back the feed and view
 * (the caller destroys them).
 */
static char *run_stream(const void *sv, size_t n, const struct cmd_at *cmds, size_t ncmds,
                        const struct opts *o, struct mbox_feed **f_r, struct mbox_view **v_r)
{
	const uint8_t *s = sv;
	struct imap_tok_limits lim = {.frag_size = o->frag};
	struct imap_tok t;
	struct mbox_feed *f;
	struct mbox_view *v;
	size_t avail = 0, consumed = 0, ci = 0, reads = 0;
	int cmdfail = 0, last_rc = 0;
	char *fp;

	assert_int_equal(mbox_feed_init(&f), 0);
	assert_int_equal(mbox_view_init(&v), 0);
	imap_tok_init(&t, IMAP_TOK_RESPONSES, &lim);
	for (;;) {
		size_t chunk = n - avail;

		if (reads == 0 && o->first != 0)
			chunk = o->first < n ? o->first : n;
		else if (o->chunk != 0 && o->chunk < chunk)
			chunk = o->chunk;
		avail += chunk;
		reads++;
		for (;;) {
			struct imap_tok_unit u;
			uint8_t *copy;
			size_t take;
			int rc;

			while (ci < ncmds && cmds[ci].at <= consumed)
				fire(f, v, &cmds[ci++], &cmdfail);
			if (consumed == avail)
				break;
			rc = imap_tok_next(&t, s + consumed, avail - consumed, &u);
			if (rc == -2)
				break;
			assert_int_equal(rc, 0);
			take = u.len;
			if (u.type == IMAP_TOK_LITERAL && o->lit_step != 0 && take > o->lit_step)
				take = o->lit_step;
			copy = malloc(take);
			assert_non_null(copy);
			memcpy(copy, s + consumed, take);
			/* -1 says the view is unreliable after this unit: the
			 * fingerprint says so too, and must match the
			 * return of the last unit. */
			last_rc = mbox_feed_unit(f, v, &u, copy, take);
			free(copy);
			imap_tok_consume(&t, &u, take);
			consumed += take;
		}
		if (avail == n)
			break;
	}
	assert_int_equal(last_rc, mbox_feed_reliable(f) ? 0 : -1);
	while (ci < ncmds)
		fire(f, v, &cmds[ci++], &cmdfail);
	fp = fingerprint(f, v, cmdfail);
	if (f_r != NULL) {
		*f_r = f;
		*v_r = v;
	} else {
		mbox_feed_destroy(&f);
		mbox_view_destroy(&v);
	}
	return fp;
}

static void same_as(const char *ref, const void *s, size_t n, const struct cmd_at *cmds,
                    size_t ncmds, const struct opts *o)
{
	char *fp = run_stream(s, n, cmds, ncmds, o, NULL, NULL);

	if (strcmp(fp, ref) != 0) {
		print_message("first=%zu chunk=%zu lit_step=%zu frag=%zu\n", o->first, o->chunk,
		              o->lit_step, o->frag);
		assert_string_equal(fp, ref);
	}
	free(fp);
}

/*
 * However the stream is cut (every offset, one byte at a time, fragments,
 * literals in pieces), the feed ends in the same place as when it sees the
 * stream at once. Returns that fingerprint, and the feed and view of the
 * whole run when f_r is given.
 */
static char *check_stream(const void *s, size_t n, const struct cmd_at *cmds, size_t ncmds,
                          struct mbox_feed **f_r, struct mbox_view **v_r)
{
	static const size_t frags[] = {0, 7, 64};
	static const size_t steps[] = {0, 1, 3};
	struct opts whole = {0};
	char *ref = run_stream(s, n, cmds, ncmds, &whole, f_r, v_r);

	for (size_t a = 0; a < 3; a++) {
		for (size_t b = 0; b < 3; b++) {
			struct opts o = {.chunk = 1, .lit_step = steps[b], .frag = frags[a]};

			same_as(ref, s, n, cmds, ncmds, &o);
			if (b == 1)
				continue;
			for (size_t k = 1; k < n; k++) {
				o = (struct opts){
				    .first = k, .lit_step = steps[b], .frag = frags[a]};
				same_as(ref, s, n, cmds, ncmds, &o);
			}
		}
	}
	return ref;
}

#define S(lit)   lit, sizeof(lit) - 1
#define NCMDS(a) (sizeof(a) / sizeof((a)[0]))

/* The offset of the first occurrence of marker in s (a line a command
 * went out before). */
static size_t at(const char *s, const char *marker)
{
	const char *p = strstr(s, marker);

	assert_non_null(p);
	return (size_t)(p - s);
}

/* ---------------------------------------------------------------- tests */

static const char dovecot_select[] =
    "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Junk)\r\n"
    "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Junk \\*)] Flags "
    "permitted.\r\n"
    "* 3 EXISTS\r\n"
    "* 0 RECENT\r\n"
    "* OK [UNSEEN 2] First unseen.\r\n"
    "* OK [UIDVALIDITY 1700000000] UIDs valid\r\n"
    "* OK [UIDNEXT 8] Predicted next UID\r\n"
    "* OK [HIGHESTMODSEQ 40] Highest\r\n"
    "A1 OK [READ-WRITE] Select completed (0.001 + 0.000 secs).\r\n"
    "* 1 FETCH (UID 4 FLAGS (\\Seen))\r\n"
    "* 2 FETCH (UID 5 FLAGS ())\r\n"
    "* 3 FETCH (UID 7 FLAGS (\\Seen $Junk \\Recent))\r\n"
    "A2 OK Fetch completed (0.001 + 0.000 secs).\r\n";

static void test_select(void **state)
{
	const struct cmd_at cmds[] = {{0, "A1", MBOX_CMD_SELECT, "INBOX"}};
	struct mbox_feed *f;
	struct mbox_view *v;
	char *fp;

	(void)state;
	fp = check_stream(S(dovecot_select), cmds, 1, &f, &v);
	assert_string_equal(fp, "state=2 reliable=1 enabled=0 pending=0 cmdfail=0 check=0\n"
	                        "uv=1700000000 next=8 hms=40 nomodseq=0 ro=0 exact=1 name=INBOX "
	                        "count=3\n"
	                        "1:4:S\n"
	                        "2:5:\n"
	                        "3:7:S $Junk\n");
	free(fp);
	/* The view diffs: it is the client's. */
	assert_true(mbox_view_uids_known(v));
	mbox_feed_destroy(&f);
	mbox_view_destroy(&v);
}

/* The same responses as whole lines (backend.c's way): the same view,
 * with the SELECT announced under a tag of the caller's own and its
 * completion read as that tag's. */
static void test_lines(void **state)
{
	const struct cmd_at cmds[] = {{0, "A1", MBOX_CMD_SELECT, "INBOX"}};
	struct mbox_feed *f;
	struct mbox_view *v;
	char *ref, *fp;
	const char *p = dovecot_select;

	(void)state;
	ref = check_stream(S(dovecot_select), cmds, 1, NULL, NULL);
	assert_int_equal(mbox_feed_init(&f), 0);
	assert_int_equal(mbox_view_init(&v), 0);
	assert_int_equal(mbox_feed_command(f, v, (const uint8_t *)"w1", 2, MBOX_CMD_SELECT,
	                                   (const uint8_t *)"INBOX", 5),
	                 0);
	while (*p != '\0') {
		const char *eol = strstr(p, "\r\n");
		size_t n = (size_t)(eol - p);
		assert_non_null(eol);
		if (strncmp(p, "A1 ", 3) == 0)
			assert_int_equal(mbox_feed_tagged(f, v, "w1", (const uint8_t *)p, n), 0);
		else
			assert_int_equal(mbox_feed_line(f, v, (const uint8_t *)p, n), 0);
		p = eol + 2;
	}
	fp = fingerprint(f, v, 0);
	assert_string_equal(fp, ref);
	/* A completion without a tag breaks the view; an empty line too. */
	assert_int_equal(mbox_feed_tagged(f, v, "w1", (const uint8_t *)"OK", 2), -1);
	assert_false(mbox_feed_reliable(f));
	free(fp);
	free(ref);
	mbox_feed_destroy(&f);
	mbox_view_destroy(&v);
}

/* FETCH items of every shape around UID, FLAGS and MODSEQ. */
static const char fetch_items[] =
    "* 4 EXISTS\r\n"
    "* OK [UIDVALIDITY 9] Ok\r\n"
    "A1 OK [READ-ONLY] Examine completed.\r\n"
    /* literal before FLAGS, holding a CRLF and ")" */
    "* 1 FETCH (UID 4 RFC822.SIZE 1234 BODY[] {14}\r\nhello\r\n)world) FLAGS (\\Seen \\Flagged))\r\n"
    /* a section with a list, and a literal after FLAGS, UID last */
    "* 2 FETCH (FLAGS (\\Answered) BODY[HEADER.FIELDS (FROM SUBJECT)] {25}\r\nFrom: a\r\n"
    "Subject: {9}\r\n\r\n UID 5)\r\n"
    /* ENVELOPE: quoted strings with parentheses, escapes and braces */
    "* 3 FETCH (ENVELOPE (\"Mon, 1 Jan 2024\" \"a (b) \\\"c\\\" ) {5} \\\"say)\" ((NIL NIL \"x\\\\\" "
    "\"y.org\")) NIL NIL NIL NIL NIL NIL \"<id@x>\") UID 7 MODSEQ (45) INTERNALDATE "
    "\"01-Jan-2024 00:00:00 +0000\" FLAGS ($Junk Work))\r\n"
    /* BODYSTRUCTURE, a binary literal with NULs, an empty literal with an origin */
    "* 4 FETCH (BODYSTRUCTURE ((\"text\" \"plain\" (\"charset\" \"us-ascii\") NIL NIL \"7bit\" 5 1 "
    "NIL NIL NIL NIL)(\"text\" \"html\" NIL NIL NIL \"7bit\" 10 1 NIL NIL NIL NIL) "
    "\"alternative\" (\"boundary\" \"b\") NIL NIL NIL) BINARY[1] ~{4}\r\n\0\1\2\3 "
    "BODY[TEXT]<0> {0}\r\n UID 9 FLAGS (\\Draft))\r\n"
    /* a literal inside a list value, and a literal as a section's argument */
    "* 3 FETCH (X-LIST (\"a\" {3}\r\n((() BODY[HEADER.FIELDS ({4}\r\nFROM)] NIL FLAGS "
    "(Work))\r\n"
    "A2 OK Fetch completed.\r\n";

static void test_fetch_items(void **state)
{
	const struct cmd_at cmds[] = {{0, "A1", MBOX_CMD_EXAMINE, "Archive/2024"}};
	char *fp;

	(void)state;
	fp = check_stream(S(fetch_items), cmds, 1, NULL, NULL);
	assert_string_equal(fp, "state=2 reliable=1 enabled=1 pending=0 cmdfail=0 check=0\n"
	                        "uv=9 next=0 hms=45 nomodseq=0 ro=1 exact=1 name=Archive/2024 "
	                        "count=4\n"
	                        "1:4:SF\n"
	                        "2:5:A\n"
	                        "3:7: Work\n"
	                        "4:9:R\n");
	free(fp);
}

/* ENABLE QRESYNC, a QRESYNC SELECT (VANISHED (EARLIER), FETCH with
 * MODSEQ), filling the UIDs, then VANISHED with ranges splitting runs. */
static const char qresync[] = "* ENABLED QRESYNC\r\n"
                              "E1 OK Enabled.\r\n"
                              "* 8 EXISTS\r\n"
                              "* OK [UIDVALIDITY 77] UIDs valid\r\n"
                              "* OK [UIDNEXT 30] Predicted next UID\r\n"
                              "* OK [HIGHESTMODSEQ 90] Highest\r\n"
                              "* VANISHED (EARLIER) 1:3,5,40:41\r\n"
                              "* 1 FETCH (UID 4 FLAGS (\\Seen) MODSEQ (60))\r\n"
                              "* 4 FETCH (UID 9 MODSEQ (61) FLAGS ())\r\n"
                              "S1 OK [READ-WRITE] Select completed.\r\n"
                              "* 2 FETCH (UID 6 FLAGS ())\r\n"
                              "* 3 FETCH (UID 7 FLAGS ())\r\n"
                              "* 5 FETCH (UID 10 FLAGS ())\r\n"
                              "* 6 FETCH (UID 11 FLAGS ())\r\n"
                              "* 7 FETCH (UID 12 FLAGS ())\r\n"
                              "* 8 FETCH (UID 13 FLAGS ())\r\n"
                              "F1 OK Fetch completed.\r\n"
                              /* 11 from inside the run 9..13 (UID 9 has its own MODSEQ: 10..13) */
                              "* VANISHED 11,3:4\r\n"
                              "* VANISHED 13:12\r\n"
                              "* 7 EXISTS\r\n"
                              "* 5 FETCH (UID 31 MODSEQ (95) FLAGS (\\Seen))\r\n"
                              "* OK [HIGHESTMODSEQ 96] Highest\r\n"
                              "N1 OK NOOP completed.\r\n";

static void test_qresync(void **state)
{
	const struct cmd_at cmds[] = {{at(qresync, "* 8 EXISTS"), "S1", MBOX_CMD_SELECT, "INBOX"}};
	char *fp;

	(void)state;
	fp = check_stream(S(qresync), cmds, 1, NULL, NULL);
	assert_string_equal(fp, "state=2 reliable=1 enabled=3 pending=0 cmdfail=0 check=0\n"
	                        "uv=77 next=32 hms=96 nomodseq=0 ro=0 exact=1 name=INBOX count=7\n"
	                        "1:6:\n"
	                        "2:7:\n"
	                        "3:9: ms=61\n"
	                        "4:10:\n"
	                        "5:31:S ms=95\n"
	                        "6:0:\n"
	                        "7:0:\n");
	free(fp);
}

/* A second SELECT with old-mailbox data still coming: before [CLOSED], and
 * (a server without CONDSTORE) without it. */
static const char reselect[] = "* 3 EXISTS\r\n"
                               "* OK [UIDVALIDITY 1] Ok\r\n"
                               "A1 OK Select done.\r\n"
                               "* 1 FETCH (UID 1 FLAGS (\\Seen))\r\n"
                               "* 2 FETCH (UID 2 FLAGS ())\r\n"
                               "* 3 FETCH (UID 3 FLAGS ())\r\n"
                               "A2 OK Fetch done.\r\n"
                               /* A3 SELECT Archive went out here */
                               "* 2 EXPUNGE\r\n"
                               "* 1 FETCH (FLAGS (\\Deleted))\r\n"
                               "* OK [CLOSED] Previous mailbox closed.\r\n"
                               "* 2 EXISTS\r\n"
                               "* OK [UIDVALIDITY 2] Ok\r\n"
                               "* OK [UIDNEXT 20] Ok\r\n"
                               "* OK [NOMODSEQ] Sorry\r\n"
                               "A3 OK [READ-WRITE] Select done.\r\n"
                               /* A4 SELECT Junk: old data, no CLOSED */
                               "* 1 FETCH (UID 10 FLAGS (\\Seen))\r\n"
                               "* 3 EXISTS\r\n"
                               "* 3 FETCH (UID 30 FLAGS ())\r\n"
                               "* 5 EXISTS\r\n"
                               "* OK [UIDVALIDITY 3] Ok\r\n"
                               "A4 OK [READ-WRITE] Select done.\r\n"
                               "* 5 FETCH (UID 50 FLAGS (\\Flagged))\r\n";

static void test_reselect(void **state)
{
	const struct cmd_at cmds[] = {
	    {0, "A1", MBOX_CMD_SELECT, "INBOX"},
	    {at(reselect, "* 2 EXPUNGE"), "A3", MBOX_CMD_SELECT, "Archive"},
	    {at(reselect, "* 1 FETCH (UID 10"), "A4", MBOX_CMD_SELECT, "Junk"},
	};
	char *fp;

	(void)state;
	fp = check_stream(S(reselect), cmds, NCMDS(cmds), NULL, NULL);
	assert_string_equal(fp, "state=2 reliable=1 enabled=0 pending=0 cmdfail=0 check=0\n"
	                        "uv=3 next=0 hms=0 nomodseq=0 ro=0 exact=1 name=Junk count=5\n"
	                        "1:0:\n"
	                        "2:0:\n"
	                        "3:0:\n"
	                        "4:0:\n"
	                        "5:50:F\n");
	free(fp);
}

/* [CLOSED] is the boundary: what came before it, even after an EXISTS
 * (the old mailbox grew), is dropped with it: status codes, messages and
 * the keywords they named. */
static const char closed_stream[] = "* 2 EXISTS\r\n"
                                    "* OK [UIDVALIDITY 1] Ok\r\n"
                                    "A1 OK Select done.\r\n"
                                    "* 1 FETCH (UID 1 FLAGS ($Old))\r\n"
                                    /* A2 SELECT Archive went out here */
                                    "* 3 EXISTS\r\n"
                                    "* OK [UIDNEXT 99] Ok\r\n"
                                    "* 3 FETCH (UID 5 FLAGS ($Old2))\r\n"
                                    "* OK [CLOSED] Previous mailbox closed.\r\n"
                                    "* 1 EXISTS\r\n"
                                    "* OK [UIDVALIDITY 2] Ok\r\n"
                                    "A2 OK [READ-WRITE] Select done.\r\n";

static void test_closed_boundary(void **state)
{
	const struct cmd_at cmds[] = {
	    {0, "A1", MBOX_CMD_SELECT, "INBOX"},
	    {at(closed_stream, "* 3 EXISTS"), "A2", MBOX_CMD_SELECT, "Archive"}};
	struct mbox_feed *f;
	struct mbox_view *v;
	char *fp;

	(void)state;
	fp = check_stream(S(closed_stream), cmds, NCMDS(cmds), &f, &v);
	assert_string_equal(fp, "state=2 reliable=1 enabled=0 pending=0 cmdfail=0 check=0\n"
	                        "uv=2 next=0 hms=0 nomodseq=0 ro=0 exact=1 name=Archive count=1\n"
	                        "1:0:\n");
	assert_int_equal(mbox_view_keyword_count(v), 0);
	free(fp);
	mbox_feed_destroy(&f);
	mbox_view_destroy(&v);
}

/* Pipelined: a SELECT queued behind a CLOSE begins when the CLOSE ends. */
static const char pipelined[] = "* 2 EXISTS\r\n"
                                "* OK [UIDVALIDITY 5] Ok\r\n"
                                "* OK [HIGHESTMODSEQ 7] Ok\r\n"
                                "A1 OK Select done.\r\n"
                                "* 1 FETCH (UID 3 MODSEQ (6) FLAGS (\\Seen))\r\n"
                                "A2 OK Close done.\r\n"
                                "* 1 EXISTS\r\n"
                                "* OK [UIDVALIDITY 6] Ok\r\n"
                                "A3 OK [READ-ONLY] Examine done.\r\n";

static void test_pipelined(void **state)
{
	const struct cmd_at cmds[] = {
	    {0, "A1", MBOX_CMD_SELECT, "INBOX"},
	    {at(pipelined, "* 1 FETCH"), "A2", MBOX_CMD_CLOSE, NULL},
	    {at(pipelined, "* 1 FETCH"), "A3", MBOX_CMD_EXAMINE, "Sent"},
	};
	struct mbox_feed *f;
	struct mbox_view *v;
	char *fp;

	(void)state;
	fp = check_stream(S(pipelined), cmds, NCMDS(cmds), &f, &v);
	assert_string_equal(fp, "state=2 reliable=1 enabled=1 pending=0 cmdfail=0 check=0\n"
	                        "uv=6 next=0 hms=0 nomodseq=0 ro=1 exact=1 name=Sent count=1\n"
	                        "1:0:\n");
	free(fp);
	mbox_feed_destroy(&f);
	mbox_view_destroy(&v);
}

/* Completions: SELECT NO (nothing selected), CLOSE and UNSELECT OK, a BAD
 * SELECT (unknown: unreliable) and a later good one. */
static const char completions[] = "* 2 EXISTS\r\n"
                                  "A1 OK Select done.\r\n"
                                  "A2 NO Mailbox doesn't exist: Nope\r\n"
                                  "* 1 EXISTS\r\n"
                                  "A3 OK done\r\n"
                                  "A4 OK Unselect done.\r\n"
                                  "A5 BAD Error in IMAP command SELECT: bad args\r\n"
                                  "* 4 EXISTS\r\n"
                                  "A6 OK done\r\n"
                                  "A7 OK Close done.\r\n";

static void test_completions(void **state)
{
	struct {
		const char *upto; /* run the stream up to here */
		int state;
		bool reliable;
		uint32_t count;
	} steps[] = {
	    {"A2 NO", MBOX_FEED_SELECTED, true, 2},   {"* 1 EXISTS", MBOX_FEED_NONE, true, 0},
	    {"A4 OK", MBOX_FEED_SELECTED, true, 1},   {"A5 BAD", MBOX_FEED_NONE, true, 0},
	    {"* 4 EXISTS", MBOX_FEED_NONE, false, 0}, {"A7 OK", MBOX_FEED_SELECTED, true, 4},
	    {NULL, MBOX_FEED_NONE, true, 0},
	};
	const struct cmd_at cmds[] = {
	    {0, "A1", MBOX_CMD_SELECT, "INBOX"},
	    {at(completions, "A2 NO"), "A2", MBOX_CMD_SELECT, "Nope"},
	    {at(completions, "* 1 EXISTS"), "A3", MBOX_CMD_SELECT, "INBOX"},
	    {at(completions, "A4 OK"), "A4", MBOX_CMD_UNSELECT, NULL},
	    {at(completions, "A5 BAD"), "A5", MBOX_CMD_SELECT, "("},
	    {at(completions, "* 4 EXISTS"), "A6", MBOX_CMD_SELECT, "INBOX"},
	    {at(completions, "A7 OK"), "A7", MBOX_CMD_CLOSE, NULL},
	};

	(void)state;
	for (size_t i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
		size_t n = steps[i].upto ? at(completions, steps[i].upto) : strlen(completions);
		size_t nc = 0;
		struct mbox_feed *f;
		struct mbox_view *v;
		char *fp;

		while (nc < NCMDS(cmds) && cmds[nc].at < n)
			nc++;
		fp = check_stream(completions, n, cmds, nc, &f, &v);
		print_message("up to %s\n", steps[i].upto ? steps[i].upto : "the end");
		assert_int_equal(mbox_feed_state(f), steps[i].state);
		assert_int_equal(mbox_feed_reliable(f), steps[i].reliable);
		assert_int_equal(mbox_view_count(v), steps[i].count);
		assert_int_equal(mbox_feed_pending(f), 0);
		if (!steps[i].reliable)
			assert_non_null(mbox_feed_error(f));
		else
			assert_null(mbox_feed_error(f));
		free(fp);
		mbox_feed_destroy(&f);
		mbox_view_destroy(&v);
	}
}

/* A later mailbox command completed first: the earlier ones are dropped,
 * the view is unreliable, and the state never says SELECTING without a
 * SELECT being answered (a [CLOSED] then would have no mailbox to begin). */
static const char out_of_order[] = "* 2 EXISTS\r\n"
                                   "A2 BAD no\r\n"
                                   "* OK [CLOSED] x\r\n"
                                   "* 1 EXISTS\r\n"
                                   "A3 OK done\r\n"
                                   "A5 OK done\r\n"
                                   "A4 OK late\r\n";

static void test_out_of_order(void **state)
{
	const struct cmd_at cmds[] = {
	    {0, "A1", MBOX_CMD_SELECT, "INBOX"},
	    {0, "A2", MBOX_CMD_CLOSE, NULL},
	    {at(out_of_order, "* 1 EXISTS"), "A3", MBOX_CMD_SELECT, "Box"},
	    {at(out_of_order, "A5 OK"), "A4", MBOX_CMD_SELECT, "Other"},
	    {at(out_of_order, "A5 OK"), "A5", MBOX_CMD_UNSELECT, NULL},
	};
	struct mbox_feed *f;
	struct mbox_view *v;

	(void)state;
	/* A2 (a CLOSE) answered before A1: a SELECT was skipped, something
	 * may be selected. */
	free(check_stream(out_of_order, at(out_of_order, "* OK [CLOSED]"), cmds, 2, &f, &v));
	assert_int_equal(mbox_feed_state(f), MBOX_FEED_SELECTED);
	assert_false(mbox_feed_reliable(f));
	assert_string_equal(mbox_feed_error(f), "mailbox commands completed out of order");
	assert_int_equal(mbox_feed_pending(f), 0);
	mbox_feed_destroy(&f);
	mbox_view_destroy(&v);
	/* Then [CLOSED]: nothing is selected any more. */
	free(check_stream(out_of_order, at(out_of_order, "* 1 EXISTS"), cmds, 2, &f, &v));
	assert_int_equal(mbox_feed_state(f), MBOX_FEED_NONE);
	assert_true(mbox_feed_reliable(f));
	mbox_feed_destroy(&f);
	mbox_view_destroy(&v);
	/* A5 (UNSELECT) before A4 (SELECT): A4 dropped, A5 deselects, A4's
	 * late answer is nobody's. */
	free(check_stream(out_of_order, at(out_of_order, "A4 OK"), cmds, NCMDS(cmds), &f, &v));
	assert_int_equal(mbox_feed_state(f), MBOX_FEED_NONE);
	assert_true(mbox_feed_reliable(f));
	assert_int_equal(mbox_feed_pending(f), 0);
	mbox_feed_destroy(&f);
	mbox_view_destroy(&v);
	free(check_stream(S(out_of_order), cmds, NCMDS(cmds), &f, &v));
	assert_int_equal(mbox_feed_state(f), MBOX_FEED_NONE);
	assert_true(mbox_feed_reliable(f));
	mbox_feed_destroy(&f);
	mbox_view_destroy(&v);
}

/* Free text is never parsed, whatever it holds. */
static const char text_lines[] = "* 1 EXISTS\r\n"
                                 "* OK [ALERT] Quota {5} (\"almost\r\n"
                                 "* OK Still here {3}\r\n"
                                 "* NO [UIDVALIDITY 99] not really {2}\r\n"
                                 "* BYE (soon) \"\r\n"
                                 "+ go ahead {4}\r\n"
                                 "* OK [UIDVALIDITY 4] fine [UIDNEXT 7] \"\r\n"
                                 "A1 OK [READ-WRITE] done {9}\r\n"
                                 "A2 NO [ALERT] ( {1}\r\n"
                                 "* CAPABILITY IMAP4rev1 LITERAL+ {x}\r\n"
                                 "* LIST (\\HasNoChildren) \"/\" {5}\r\nINBOX\r\n"
                                 "* STATUS x (UIDNEXT 99 HIGHESTMODSEQ 99)\r\n"
                                 "* 1 RECENT\r\n"
                                 "* SEARCH 1 2 3\r\n"
                                 "* 1 FETCH (FLAGS (\\Seen))\r\n";

static void test_text_and_others(void **state)
{
	const struct cmd_at cmds[] = {{0, "A1", MBOX_CMD_SELECT, "INBOX"}};
	char *fp;

	(void)state;
	fp = check_stream(S(text_lines), cmds, 1, NULL, NULL);
	assert_string_equal(fp, "state=2 reliable=1 enabled=0 pending=0 cmdfail=0 check=0\n"
	                        "uv=4 next=0 hms=0 nomodseq=0 ro=0 exact=1 name=INBOX count=1\n"
	                        "1:0:S\n");
	free(fp);
}

/* What breaks the view, and what mends it. */
static void test_unreliable(void **state)
{
	static const struct {
		const char *stream;
		const char *why;
	} cases[] = {
	    {"* 3 EXPUNGE\r\n", "EXPUNGE the view refuses"},
	    {"* 1 FETCH (UID 5 FLAGS (\\Seen)\r\n", "response ends too early"},
	    {"* 1 FETCH (UID x)\r\n", "malformed FETCH"},
	    {"* 1 FETCH (UID 5) junk\r\n", "malformed FETCH"},
	    {"* 1 FETCH (MODSEQ (0))\r\n", "malformed FETCH"},
	    {"* 1 FETCH (FLAGS (\\Seen \"q\"))\r\n", "malformed FETCH"},
	    {"* 1 FETCH (UID 1)\r\n", "FETCH the view refuses"}, /* UID 3 is message 1's */
	    {"* 1 EXISTS\r\n", "EXISTS the view refuses"},
	    {"* 2 EXISTS extra\r\n", "malformed message data"},
	    {"* 2\r\n", "response ends too early"},
	    {"* VANISHED 1:*\r\n", "malformed VANISHED"},
	    {"* VANISHED 0\r\n", "malformed VANISHED"},
	    {"* VANISHED 3,\r\n", "malformed VANISHED"},
	    {"* VANISHED (EARLIER) 3\r\n", "VANISHED the view refuses"},
	    {"* VANISHED (LATER) 9\r\n", "malformed VANISHED"},
	    {"* OK [UIDVALIDITY 8] changed\r\n", "UIDVALIDITY changed"},
	    {"* OK [UIDNEXT x] hm\r\n", "malformed response code"},
	    {"* OK [HIGHESTMODSEQ 9223372036854775808] too big\r\n", "malformed response code"},
	    {"* 1 FETCH (FLAGS (\x01))\r\n", "malformed FETCH"},
	    {"* 1 FETCH (UID 3)\x01\r\n", "malformed FETCH"},
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char buf[512];
		const char *head = "* 2 EXISTS\r\n* OK [UIDVALIDITY 7] x\r\nA1 OK done\r\n"
		                   "* 1 FETCH (UID 3)\r\n";
		const char *tail = "* 1 FETCH (FLAGS (\\Seen))\r\n"
		                   "A2 OK done\r\n"
		                   "* 1 EXISTS\r\n"
		                   "A3 OK done\r\n"
		                   "* 1 FETCH (UID 8 FLAGS ())\r\n";
		struct cmd_at cmds[] = {{0, "A1", MBOX_CMD_SELECT, "INBOX"},
		                        {0, "A2", MBOX_CMD_SELECT, "Other"},
		                        {0, "A3", MBOX_CMD_SELECT, "INBOX"}};
		struct mbox_feed *f;
		struct mbox_view *v;
		size_t n;
		char *fp;

		n = (size_t)snprintf(buf, sizeof(buf), "%s%s%s", head, cases[i].stream, tail);
		cmds[1].at = strlen(head) + strlen(cases[i].stream) +
		             strlen("* 1 FETCH (FLAGS (\\Seen))\r\n");
		cmds[2].at =
		    n - strlen("* 1 EXISTS\r\nA3 OK done\r\n* 1 FETCH (UID 8 FLAGS ())\r\n");
		print_message("case %s", cases[i].stream);
		/* Up to the bad response and the FETCH after it: unreliable,
		 * and the feed still follows (that FETCH is not taken). */
		free(check_stream(buf, cmds[1].at, cmds, 1, &f, &v));
		assert_false(mbox_feed_reliable(f));
		assert_string_equal(mbox_feed_error(f), cases[i].why);
		mbox_feed_destroy(&f);
		mbox_view_destroy(&v);
		/* A later SELECT mends it. */
		fp = check_stream(buf, n, cmds, 3, &f, &v);
		assert_true(mbox_feed_reliable(f));
		assert_int_equal(mbox_view_uid(v, 1), 8);
		free(fp);
		mbox_feed_destroy(&f);
		mbox_view_destroy(&v);
	}
}

/* Mailbox data with nothing selected; a command the feed cannot follow. */
static void test_nothing_selected(void **state)
{
	static const char s[] = "* 5 EXISTS\r\n";
	static const char t[] = "* OK [UIDVALIDITY 3] x\r\n* ENABLED CONDSTORE UTF8=ACCEPT X\r\n";
	char longtag[MBOX_TAG_MAX + 2];
	struct mbox_feed *f;
	struct mbox_view *v;
	char *fp;

	(void)state;
	fp = check_stream(S(s), NULL, 0, &f, &v);
	assert_false(mbox_feed_reliable(f));
	assert_string_equal(mbox_feed_error(f), "mailbox data with nothing selected");
	assert_int_equal(mbox_view_count(v), 0);
	free(fp);
	/* Commands the feed cannot follow. */
	memset(longtag, 'a', sizeof(longtag));
	assert_int_equal(mbox_feed_command(f, v, (const uint8_t *)longtag, MBOX_TAG_MAX + 1,
	                                   MBOX_CMD_SELECT, (const uint8_t *)"x", 1),
	                 -1);
	assert_int_equal(mbox_feed_command(f, v, (const uint8_t *)"a", 0, MBOX_CMD_SELECT,
	                                   (const uint8_t *)"x", 1),
	                 -1);
	assert_int_equal(mbox_feed_command(f, v, (const uint8_t *)"a", 1, (enum mbox_cmd)0,
	                                   (const uint8_t *)"", 0),
	                 -1);
	for (unsigned i = 0; i < MBOX_FEED_PENDING; i++) {
		assert_int_equal(mbox_feed_command(f, v, (const uint8_t *)longtag, i + 1,
		                                   MBOX_CMD_CLOSE, NULL, 0),
		                 0);
	}
	assert_int_equal(
	    mbox_feed_command(f, v, (const uint8_t *)"z", 1, MBOX_CMD_UNSELECT, NULL, 0), -1);
	assert_int_equal(mbox_feed_pending(f), MBOX_FEED_PENDING);
	assert_int_equal(mbox_feed_set_selected(f), -1);
	mbox_feed_reset(f);
	assert_int_equal(mbox_feed_pending(f), 0);
	assert_true(mbox_feed_reliable(f));
	mbox_feed_destroy(&f);
	mbox_view_destroy(&v);
	/* Codes with nothing selected are nobody's; ENABLED is the
	 * connection's. */
	fp = check_stream(S(t), NULL, 0, &f, &v);
	assert_string_equal(fp, "state=0 reliable=1 enabled=5 pending=0 cmdfail=0 check=0\n"
	                        "uv=0 next=0 hms=0 nomodseq=0 ro=0 exact=1 name= count=0\n");
	free(fp);
	mbox_feed_enable(f, MBOX_EN_QRESYNC);
	assert_int_equal(mbox_feed_enabled(f), 7);
	mbox_feed_destroy(&f);
	mbox_view_destroy(&v);
	mbox_feed_destroy(&f);
	mbox_feed_destroy(NULL);
}

/* Units that are not the stream imap_tok cuts: unreliable, and the feed
 * picks up at the next response. */
static void test_units_out_of_order(void **state)
{
	struct mbox_feed *f;
	struct mbox_view *v;
	struct imap_tok_unit lit = {.type = IMAP_TOK_LITERAL, .len = 3};
	struct imap_tok_unit mid = {.type = IMAP_TOK_LINE, .len = 3, .last = true};
	struct imap_tok_unit closed = {
	    .type = IMAP_TOK_LINE, .len = 15, .first = true, .last = true};
	struct imap_tok_unit exists = {
	    .type = IMAP_TOK_LINE, .len = 12, .first = true, .last = true};
	struct imap_tok_unit ann = {
	    .type = IMAP_TOK_LINE, .len = 11, .first = true, .has_literal = true, .literal = 2};
	struct imap_tok_unit lit2 = {.type = IMAP_TOK_LITERAL, .len = 3};
	struct imap_tok_unit ok = {.type = IMAP_TOK_LINE, .len = 8, .first = true, .last = true};

	(void)state;
	assert_int_equal(mbox_feed_init(&f), 0);
	assert_int_equal(mbox_view_init(&v), 0);
	assert_int_equal(mbox_feed_command(f, v, (const uint8_t *)"A", 1, MBOX_CMD_SELECT,
	                                   (const uint8_t *)"INBOX", 5),
	                 0);
	/* A literal, a line's continuation, with no response begun. */
	assert_int_equal(mbox_feed_unit(f, v, &lit, (const uint8_t *)"abc", 3), -1);
	assert_string_equal(mbox_feed_error(f), "units out of order");
	assert_int_equal(mbox_feed_unit(f, v, &mid, (const uint8_t *)"x\r\n", 3), -1);
	/* The next response is read again; a CLOSED starts the new mailbox
	 * afresh, so what was lost before it does not matter. */
	assert_int_equal(mbox_feed_unit(f, v, &closed, (const uint8_t *)"* OK [CLOSED]\r\n", 15),
	                 0);
	assert_true(mbox_feed_reliable(f));
	/* A LINE consumed in part. */
	assert_int_equal(mbox_feed_unit(f, v, &closed, (const uint8_t *)"* 1 EXISTS\r\n", 12), -1);
	assert_int_equal(mbox_feed_unit(f, v, &closed, (const uint8_t *)"* OK [CLOSED]\r\n", 15),
	                 0);
	/* More literal than announced. */
	assert_int_equal(mbox_feed_unit(f, v, &ann, (const uint8_t *)"* 1 X {2}\r\n", 11), 0);
	assert_int_equal(mbox_feed_unit(f, v, &lit2, (const uint8_t *)"abc", 3), -1);
	assert_int_equal(mbox_feed_unit(f, v, &mid, (const uint8_t *)"x\r\n", 3), -1);
	/* A new response while a literal is still due. */
	assert_int_equal(mbox_feed_unit(f, v, &closed, (const uint8_t *)"* OK [CLOSED]\r\n", 15),
	                 0);
	assert_int_equal(mbox_feed_unit(f, v, &ann, (const uint8_t *)"* 1 X {2}\r\n", 11), 0);
	assert_int_equal(mbox_feed_unit(f, v, &exists, (const uint8_t *)"* 1 EXISTS\r\n", 12), -1);
	assert_string_equal(mbox_feed_error(f), "a response broke off");
	assert_int_equal(mbox_view_count(v), 1); /* that one was read */
	/* Still unreliable when the SELECT completes: a unit was lost. */
	assert_int_equal(mbox_feed_unit(f, v, &ok, (const uint8_t *)"A OK x\r\n", 8), -1);
	assert_int_equal(mbox_feed_state(f), MBOX_FEED_SELECTED);
	mbox_feed_destroy(&f);
	mbox_view_destroy(&v);
}

/* Long lines: a VANISHED set over many fragments, a FLAGS list with more
 * keywords than a view can name, a keyword longer than the buffer. */
static void test_long_lines(void **state)
{
	const size_t n = 3000;
	size_t cap = 64 * n + 1024, len = 0;
	char *s = malloc(cap);
	struct cmd_at cmds[] = {{0, "A1", MBOX_CMD_SELECT, "INBOX"}};
	struct mbox_feed *f;
	struct mbox_view *v;
	char *fp;

	(void)state;
	assert_non_null(s);
	len += (size_t)snprintf(s + len, cap - len, "* %zu EXISTS\r\nA1 OK done\r\n", n);
	for (size_t i = 1; i <= n; i++)
		len += (size_t)snprintf(s + len, cap - len, "* %zu FETCH (UID %zu)\r\n", i, 2 * i);
	len += (size_t)snprintf(s + len, cap - len, "* VANISHED ");
	for (size_t i = 1; i <= n / 2; i++)
		len += (size_t)snprintf(s + len, cap - len, "%s%zu", i > 1 ? "," : "", 4 * i);
	len += (size_t)snprintf(s + len, cap - len, "\r\n");
	/* Keywords kw0..kw29: the last three do not fit. */
	len += (size_t)snprintf(s + len, cap - len, "* 1 FETCH (FLAGS (\\Seen");
	for (unsigned k = 0; k < 30; k++)
		len += (size_t)snprintf(s + len, cap - len, " kw%u", k);
	len += (size_t)snprintf(s + len, cap - len, "))\r\n");
	assert_true(len < cap);

	/* Every read size is too slow here: fragments of a few sizes. */
	for (size_t frag = 0; frag <= 4096; frag += 512) {
		struct opts o = {.frag = frag, .chunk = 777};

		fp = run_stream(s, len, cmds, 1, &o, &f, &v);
		assert_true(mbox_feed_reliable(f));
		assert_int_equal(mbox_view_count(v), n / 2);
		assert_int_equal(mbox_view_uid(v, 1), 2);
		assert_int_equal(mbox_view_uid(v, 2), 6);
		assert_int_equal(mbox_view_uid(v, n / 2), 2 * n - 2);
		assert_false(mbox_view_flags_exact(v));
		assert_int_equal(mbox_view_keyword_count(v), MBOX_KW_MAX);
		assert_int_equal(mbox_view_flags(v, 1), MBOX_F_SEEN);
		free(fp);
		mbox_feed_destroy(&f);
		mbox_view_destroy(&v);
	}
	/* A keyword longer than the feed's buffer: inexact, not broken. */
	len = (size_t)snprintf(s, cap, "* 1 EXISTS\r\nA1 OK done\r\n* 1 FETCH (FLAGS (\\Seen ");
	memset(s + len, 'k', MBOX_FEED_ATOM_MAX + 1);
	len += MBOX_FEED_ATOM_MAX + 1;
	len += (size_t)snprintf(s + len, cap - len, ") UID 5)\r\n");
	fp = check_stream(s, len, cmds, 1, &f, &v);
	assert_true(mbox_feed_reliable(f));
	assert_false(mbox_view_flags_exact(v));
	assert_int_equal(mbox_view_uid(v, 1), 5);
	free(fp);
	mbox_feed_destroy(&f);
	mbox_view_destroy(&v);
	free(s);
}

/* A long mailbox name is followed but the view cannot hold it. */
static void test_long_name(void **state)
{
	static char name[MBOX_NAME_MAX + 2];
	static const char s[] = "* 1 EXISTS\r\nA1 OK done\r\n";
	struct cmd_at cmds[] = {{0, "A1", MBOX_CMD_SELECT, name}};
	struct mbox_feed *f;
	struct mbox_view *v;
	size_t len;

	(void)state;
	memset(name, 'n', MBOX_NAME_MAX);
	free(check_stream(S(s), cmds, 1, &f, &v));
	assert_true(mbox_feed_reliable(f));
	assert_non_null(mbox_view_name(v, &len));
	assert_int_equal(len, MBOX_NAME_MAX);
	mbox_feed_destroy(&f);
	mbox_view_destroy(&v);
	name[MBOX_NAME_MAX] = 'n';
	free(check_stream(S(s), cmds, 1, &f, &v));
	assert_false(mbox_feed_reliable(f));
	assert_string_equal(mbox_feed_error(f), "mailbox name too long to keep");
	assert_int_equal(mbox_feed_state(f), MBOX_FEED_SELECTED);
	assert_null(mbox_view_name(v, &len));
	mbox_feed_destroy(&f);
	mbox_view_destroy(&v);
}

/* ---- the diff, read back by the feed as a client would ---- */

static uint64_t rnd_state;

static uint32_t rnd(uint32_t bound)
{
	rnd_state ^= rnd_state >> 12;
	rnd_state ^= rnd_state << 25;
	rnd_state ^= rnd_state >> 27;
	return (uint32_t)((rnd_state * 2685821657736338717ull) >> 33) % bound;
}

/* Feed the lines in out to a clone of old through the tokenizer, as if
 * they were the server's, and return the view they give. */
static struct mbox_view *read_back(const struct mbox_view *old, const char *out, size_t len,
                                   unsigned en)
{
	struct mbox_view *c;
	struct mbox_feed *f;
	struct imap_tok t;
	size_t off = 0;

	assert_int_equal(mbox_view_clone(old, &c), 0);
	assert_int_equal(mbox_feed_init(&f), 0);
	assert_int_equal(mbox_feed_set_selected(f), 0);
	mbox_feed_enable(f, en);
	imap_tok_init(&t, IMAP_TOK_RESPONSES, NULL);
	while (off < len) {
		struct imap_tok_unit u;

		assert_int_equal(imap_tok_next(&t, (const uint8_t *)out + off, len - off, &u), 0);
		assert_int_equal(mbox_feed_unit(f, c, &u, (const uint8_t *)out + off, u.len), 0);
		imap_tok_consume(&t, &u, u.len);
		off += u.len;
	}
	assert_int_equal(mbox_feed_state(f), MBOX_FEED_SELECTED);
	assert_int_equal(mbox_feed_enabled(f), en | (en & MBOX_EN_QRESYNC ? MBOX_EN_CONDSTORE : 0));
	mbox_feed_destroy(&f);
	return c;
}

static const char *const names[] = {"$Junk", "$NotJunk", "Work", "\\Odd"};

static uint32_t rnd_kw(struct mbox_view *v)
{
	uint32_t mask = 0;
	unsigned bit;

	for (unsigned k = 0; k < 4; k++) {
		if (rnd(4) == 0) {
			assert_int_equal(mbox_view_keyword(v, names[k], strlen(names[k]), &bit), 0);
			mask |= 1u << bit;
		}
	}
	return mask;
}

/* The same message's keywords in two views, as names. */
static void same_keywords(const struct mbox_view *a, uint32_t sa, const struct mbox_view *b,
                          uint32_t sb)
{
	uint32_t ka = mbox_view_keywords(a, sa), kb = mbox_view_keywords(b, sb);
	unsigned na = 0, nb = 0;

	for (unsigned i = 0; i < MBOX_KW_MAX; i++) {
		size_t la, lb;
		const char *pa = mbox_view_keyword_name(a, i, &la);
		bool found = false;

		if (!(ka & 1u << i))
			continue;
		na++;
		for (unsigned j = 0; j < MBOX_KW_MAX && !found; j++) {
			const char *pb = mbox_view_keyword_name(b, j, &lb);

			found = (kb & 1u << j) && la == lb && memcmp(pa, pb, la) == 0;
		}
		assert_true(found);
	}
	for (unsigned j = 0; j < MBOX_KW_MAX; j++)
		nb += (kb >> j) & 1u;
	assert_int_equal(na, nb);
}

static void read_back_seed(uint64_t seed)
{
	struct mbox_view *old, *now;
	uint32_t n, uid = 0, old_max;
	uint64_t ms = 1000;

	rnd_state = seed * 0x9E3779B97F4A7C15ull + 5;
	assert_int_equal(mbox_view_init(&old), 0);
	mbox_view_set_uidvalidity(old, 3);
	mbox_view_set_highestmodseq(old, ms);
	n = rnd(40);
	assert_int_equal(mbox_view_exists(old, n), 0);
	for (uint32_t i = 1; i <= n; i++) {
		struct mbox_fetch f = {.has_flags = true};

		uid += 1 + (rnd(3) == 0 ? rnd(4) : 0);
		f.uid = uid;
		f.flags = rnd(3) == 0 ? rnd(MBOX_F_ALL + 1) : 0;
		f.keywords = rnd_kw(old);
		assert_int_equal(mbox_view_fetch_msg(old, i, &f), 0);
	}
	old_max = uid;
	assert_int_equal(mbox_view_clone(old, &now), 0);
	mbox_view_set_modseq_floor(now, ms);
	for (uint32_t k = rnd(40); k-- > 0;) {
		uint32_t op = rnd(6), c = mbox_view_count(now);

		if (op == 0 && c > 0) {
			assert_int_equal(mbox_view_expunge(now, 1 + rnd(c)), 0);
			ms++;
		} else if (op == 1) {
			struct mbox_fetch f = {.uid = ++uid + rnd(2), .has_flags = true};

			uid = f.uid;
			f.modseq = ++ms;
			assert_int_equal(mbox_view_exists(now, c + 1), 0);
			assert_int_equal(mbox_view_fetch_msg(now, c + 1, &f), 0);
		} else if (c > 0) {
			struct mbox_fetch f = {.has_flags = true, .modseq = ++ms};

			f.flags = rnd(MBOX_F_ALL + 1);
			f.keywords = rnd_kw(now);
			assert_int_equal(mbox_view_fetch_msg(now, 1 + rnd(c), &f), 0);
		}
	}
	mbox_view_set_highestmodseq(now, ms + rnd(2));
	for (unsigned e = 0; e < 4; e++) {
		unsigned en = (e & 1 ? MBOX_EN_QRESYNC : 0) | (e & 2 ? MBOX_EN_CONDSTORE : 0);
		struct mbox_view *c;
		char *out;
		size_t len;

		assert_int_equal(mbox_view_diff_enabled(old, now, en, &out, &len), 0);
		c = read_back(old, out, len, en);
		free(out);
		assert_int_equal(mbox_view_count(c), mbox_view_count(now));
		for (uint32_t i = 1; i <= mbox_view_count(now); i++) {
			if (mbox_view_uid(now, i) > old_max) {
				assert_int_equal(mbox_view_uid(c, i), 0);
				continue;
			}
			assert_int_equal(mbox_view_uid(c, i), mbox_view_uid(now, i));
			assert_int_equal(mbox_view_flags(c, i), mbox_view_flags(now, i));
			same_keywords(c, i, now, i);
			if (en & MBOX_EN_CONDSTORE)
				assert_int_equal(mbox_view_modseq(c, i), mbox_view_modseq(now, i));
		}
		if (en & MBOX_EN_CONDSTORE)
			assert_int_equal(mbox_view_highestmodseq(c), mbox_view_highestmodseq(now));
		mbox_view_destroy(&c);
	}
	mbox_view_destroy(&old);
	mbox_view_destroy(&now);
}

static void test_diff_read_back(void **state)
{
	(void)state;
	for (uint64_t seed = 1; seed <= 500; seed++)
		read_back_seed(seed);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_select),
	    cmocka_unit_test(test_lines),
	    cmocka_unit_test(test_fetch_items),
	    cmocka_unit_test(test_qresync),
	    cmocka_unit_test(test_reselect),
	    cmocka_unit_test(test_closed_boundary),
	    cmocka_unit_test(test_pipelined),
	    cmocka_unit_test(test_completions),
	    cmocka_unit_test(test_out_of_order),
	    cmocka_unit_test(test_text_and_others),
	    cmocka_unit_test(test_unreliable),
	    cmocka_unit_test(test_nothing_selected),
	    cmocka_unit_test(test_units_out_of_order),
	    cmocka_unit_test(test_long_lines),
	    cmocka_unit_test(test_long_name),
	    cmocka_unit_test(test_diff_read_back),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
