/*
 * fuzz_mbox_feed — common/mbox_feed.c (and the mbox_view it keeps) on
 * arbitrary server streams, cut into units by common/imap_tok.c as the
 * proxy's pump does, with the client's mailbox commands going out at
 * arbitrary points.
 *
 * Input: MF_PARAM_BYTES bytes of parameters, then the stream.
 *   [0]     frag_size = b0 % 32                 0 = no FRAGMENTs
 *   [1]     read size = (b1 & 0x3f) + 1
 *   [2]     consume LITERAL units at most b2 % 8 bytes at a time; 0 = whole
 *   [3]     bit 7: "A1 SELECT INBOX" goes out first (bit 6: EXAMINE)
 *   [4..11] four commands, two bytes each: where it goes out (b * len /
 *           256 of the stream) and what (b % 5: none, SELECT Box, EXAMINE
 *           Box, CLOSE, UNSELECT), tagged C0..C3
 *
 * Checked:
 *   - the view's invariants (mbox_view_check) after the run, and that the
 *     feed says why exactly when it says the view is unreliable;
 *   - the same stream read at once (whole literals) ends in the same
 *     place: same state, reliability, enabled, view, message by message;
 *   - the diff of the view and its clone, for each of the four
 *     CONDSTORE/QRESYNC combinations, is "" when it can be made;
 *   - the diff from a snapshot taken halfway (when a mailbox was selected
 *     and the view reliable) to the end, when it can be made, read back by
 *     a fresh feed (imap_tok again) into a copy of the snapshot, gives the
 *     end view: every line is accepted, the count matches, messages the
 *     snapshot knew have their UIDs and flags (keywords by name), new
 *     ones are unknown;
 *   - no crash, leak or sanitizer report anywhere.
 */
#include <stdbool.h>
#include <string.h>

#include "fuzz.h"
#include "imap_tok.h"
#include "mbox_feed.h"
#include "mbox_view.h"

#define MF_PARAM_BYTES 12

struct mf_cmd {
	size_t at;
	enum mbox_cmd kind;
	const char *tag;
	const char *name;
};

struct mf_params {
	size_t frag, read, lit_step;
	struct mf_cmd cmds[5];
	size_t ncmds;
};

static void mf_fire(struct mbox_feed *f, struct mbox_view *v, const struct mf_cmd *c)
{
	const char *name = c->name ? c->name : "";

	/* -1 leaves the view unreliable, which the checks allow for. */
	if (mbox_feed_command(f, v, (const uint8_t *)c->tag, strlen(c->tag), c->kind,
	                      (const uint8_t *)name, strlen(name)) < 0)
		FUZZ_CHECK(!mbox_feed_reliable(f), "a refused command leaves the view unreliable");
}

/*
 * Run s[0..n) through a tokenizer and a new feed and view (returned); at
 * half the stream, *half_r gets a clone of the view when a mailbox is
 * selected and the view reliable (else NULL).
 */
static void mf_run(const uint8_t *s, size_t n, const struct mf_params *par, bool at_once,
                   struct mbox_feed **f_r, struct mbox_view **v_r, struct mbox_view **half_r)
{
	struct imap_tok_limits lim = {.frag_size = par->frag};
	struct imap_tok t;
	struct mbox_feed *f;
	struct mbox_view *v;
	size_t avail = 0, consumed = 0, ci = 0;
	bool halfway = false;

	FUZZ_CHECK(mbox_feed_init(&f) == 0, "feed init");
	FUZZ_CHECK(mbox_view_init(&v) == 0, "view init");
	*half_r = NULL;
	imap_tok_init(&t, IMAP_TOK_RESPONSES, &lim);
	for (;;) {
		size_t chunk = at_once ? n : par->read;

		avail = chunk > n - avail ? n : avail + chunk;
		for (;;) {
			struct imap_tok_unit u;
			size_t take;
			int rc;

			while (ci < par->ncmds && par->cmds[ci].at <= consumed)
				mf_fire(f, v, &par->cmds[ci++]);
			if (!halfway && consumed >= n / 2) {
				halfway = true;
				if (half_r != NULL && mbox_feed_state(f) == MBOX_FEED_SELECTED &&
				    mbox_feed_reliable(f))
					FUZZ_CHECK(mbox_view_clone(v, half_r) == 0, "clone");
			}
			if (consumed == avail)
				break;
			rc = imap_tok_next(&t, s + consumed, avail - consumed, &u);
			if (rc == -2)
				break;
			if (rc == -1)
				goto done; /* the pump would close the session here */
			take = u.len;
			if (!at_once && u.type == IMAP_TOK_LITERAL && par->lit_step != 0 &&
			    take > par->lit_step)
				take = par->lit_step;
			rc = mbox_feed_unit(f, v, &u, s + consumed, take);
			FUZZ_CHECK(rc == (mbox_feed_reliable(f) ? 0 : -1),
			           "unit result is reliability");
			imap_tok_consume(&t, &u, take);
			consumed += take;
		}
		if (avail == n)
			break;
	}
done:
	*f_r = f;
	*v_r = v;
}

static void mf_same_view(const struct mbox_view *a, const struct mbox_view *b)
{
	size_t la, lb;
	const uint8_t *na = mbox_view_name(a, &la), *nb = mbox_view_name(b, &lb);

	FUZZ_CHECK(la == lb && (la == 0 || memcmp(na, nb, la) == 0), "same name");
	FUZZ_CHECK(mbox_view_readonly(a) == mbox_view_readonly(b), "same read-only");
	FUZZ_CHECK(mbox_view_uidvalidity(a) == mbox_view_uidvalidity(b), "same UIDVALIDITY");
	FUZZ_CHECK(mbox_view_uidnext(a) == mbox_view_uidnext(b), "same UIDNEXT");
	FUZZ_CHECK(mbox_view_highestmodseq(a) == mbox_view_highestmodseq(b), "same HIGHESTMODSEQ");
	FUZZ_CHECK(mbox_view_nomodseq(a) == mbox_view_nomodseq(b), "same NOMODSEQ");
	FUZZ_CHECK(mbox_view_flags_exact(a) == mbox_view_flags_exact(b), "same exactness");
	FUZZ_CHECK(mbox_view_keyword_count(a) == mbox_view_keyword_count(b), "same keywords");
	for (unsigned k = 0; k < mbox_view_keyword_count(a); k++) {
		const char *ka = mbox_view_keyword_name(a, k, &la),
		           *kb = mbox_view_keyword_name(b, k, &lb);

		FUZZ_CHECK(la == lb && memcmp(ka, kb, la) == 0, "same keyword names");
	}
	FUZZ_CHECK(mbox_view_count(a) == mbox_view_count(b), "same count");
	FUZZ_CHECK(mbox_view_runs(a) == mbox_view_runs(b), "same runs");
	/* Message by message; a huge unknown tail is one run, checked above. */
	for (uint32_t i = 1; i <= mbox_view_count(a) && i <= 4096; i++) {
		FUZZ_CHECK(mbox_view_uid(a, i) == mbox_view_uid(b, i), "same UID");
		FUZZ_CHECK(mbox_view_flags(a, i) == mbox_view_flags(b, i), "same flags");
		FUZZ_CHECK(mbox_view_keywords(a, i) == mbox_view_keywords(b, i), "same keywords");
		FUZZ_CHECK(mbox_view_modseq(a, i) == mbox_view_modseq(b, i), "same MODSEQ");
	}
}

/* Does message i of a have the keywords of message j of b, by name? */
static bool mf_same_keywords(const struct mbox_view *a, uint32_t i, const struct mbox_view *b,
                             uint32_t j)
{
	uint32_t ka = mbox_view_keywords(a, i), kb = mbox_view_keywords(b, j), matched = 0;

	for (unsigned x = 0; x < MBOX_KW_MAX; x++) {
		size_t la, lb;
		const char *na = mbox_view_keyword_name(a, x, &la);
		bool found = false;

		if (!(ka & 1u << x))
			continue;
		for (unsigned y = 0; y < MBOX_KW_MAX && !found; y++) {
			const char *nb = mbox_view_keyword_name(b, y, &lb);

			if ((kb & 1u << y) && la == lb && memcmp(na, nb, la) == 0) {
				found = true;
				matched |= 1u << y;
			}
		}
		if (!found)
			return false;
	}
	return matched == kb;
}

/* The diff from half to end, read back into a copy of half. */
static void mf_read_back(const struct mbox_view *half, const struct mbox_view *end, unsigned en)
{
	struct mbox_view *c;
	struct mbox_feed *f;
	struct imap_tok t;
	uint32_t half_max = 0;
	char *out;
	size_t len, off = 0;

	if (mbox_view_diff_enabled(half, end, en, &out, &len) < 0)
		return;
	FUZZ_CHECK(strlen(out) == len, "diff length");
	FUZZ_CHECK(mbox_view_clone(half, &c) == 0, "clone");
	FUZZ_CHECK(mbox_feed_init(&f) == 0, "feed init");
	FUZZ_CHECK(mbox_feed_set_selected(f) == 0, "set selected");
	mbox_feed_enable(f, en);
	imap_tok_init(&t, IMAP_TOK_RESPONSES, NULL);
	while (off < len) {
		struct imap_tok_unit u;

		FUZZ_CHECK(imap_tok_next(&t, (const uint8_t *)out + off, len - off, &u) == 0,
		           "the diff tokenizes");
		FUZZ_CHECK(mbox_feed_unit(f, c, &u, (const uint8_t *)out + off, u.len) == 0,
		           "the feed takes every line of the diff");
		imap_tok_consume(&t, &u, u.len);
		off += u.len;
	}
	FUZZ_CHECK(imap_tok_at_boundary(&t), "the diff ends its last line");
	if (mbox_view_count(half) > 0)
		half_max = mbox_view_uid(half, mbox_view_count(half));
	FUZZ_CHECK(mbox_view_count(c) == mbox_view_count(end), "read back: count");
	for (uint32_t i = 1; i <= mbox_view_count(end) && i <= 4096; i++) {
		uint32_t uid = mbox_view_uid(end, i);

		if (uid > half_max) {
			FUZZ_CHECK(mbox_view_uid(c, i) == 0, "read back: new messages are unknown");
			continue;
		}
		FUZZ_CHECK(mbox_view_uid(c, i) == uid, "read back: UID");
		FUZZ_CHECK(mbox_view_flags(c, i) == mbox_view_flags(end, i), "read back: flags");
		/* c's table may overflow with half's names and end's. */
		if (mbox_view_flags_exact(c))
			FUZZ_CHECK(mf_same_keywords(c, i, end, i), "read back: keywords");
	}
	FUZZ_CHECK(mbox_view_check(c, &(const char *){NULL}) == 0, "read back: invariants");
	mbox_feed_destroy(&f);
	mbox_view_destroy(&c);
	free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const tags[] = {"C0", "C1", "C2", "C3"};
	static const enum mbox_cmd kinds[] = {MBOX_CMD_SELECT, MBOX_CMD_EXAMINE, MBOX_CMD_CLOSE,
	                                      MBOX_CMD_UNSELECT};
	struct mf_params par = {0};
	struct mbox_feed *f, *g;
	struct mbox_view *v, *w, *half, *unused, *c;
	const uint8_t *s;
	const char *why = NULL;
	size_t n;

	if (size < MF_PARAM_BYTES)
		return 0;
	s = data + MF_PARAM_BYTES;
	n = size - MF_PARAM_BYTES;
	par.frag = data[0] % 32;
	par.read = (size_t)(data[1] & 0x3f) + 1;
	par.lit_step = data[2] % 8;
	if (data[3] & 0x80) {
		par.cmds[par.ncmds++] = (struct mf_cmd){
		    0, data[3] & 0x40 ? MBOX_CMD_EXAMINE : MBOX_CMD_SELECT, "A1", "INBOX"};
	}
	for (size_t i = 0; i < 4; i++) {
		uint8_t pos = data[4 + 2 * i], what = data[5 + 2 * i] % 5;
		size_t at = (size_t)pos * n / 256, j;

		if (what == 0)
			continue;
		/* Keep them in stream order (insertion; five at most). */
		for (j = par.ncmds; j > 0 && par.cmds[j - 1].at > at; j--)
			par.cmds[j] = par.cmds[j - 1];
		par.cmds[j] = (struct mf_cmd){at, kinds[what - 1], tags[i], "Box"};
		par.ncmds++;
	}

	mf_run(s, n, &par, false, &f, &v, &half);
	FUZZ_CHECK(mbox_view_check(v, &why) == 0, why ? why : "view invariants");
	FUZZ_CHECK(mbox_feed_reliable(f) == (mbox_feed_error(f) == NULL),
	           "a reason when unreliable");
	if (mbox_feed_state(f) == MBOX_FEED_NONE && mbox_feed_reliable(f))
		FUZZ_CHECK(mbox_view_count(v) == 0, "nothing selected: no messages");

	/* Resumable: the same units read at once end in the same place. */
	mf_run(s, n, &par, true, &g, &w, &unused);
	FUZZ_CHECK(mbox_feed_state(f) == mbox_feed_state(g), "same state at once");
	FUZZ_CHECK(mbox_feed_reliable(f) == mbox_feed_reliable(g), "same reliability at once");
	FUZZ_CHECK(mbox_feed_enabled(f) == mbox_feed_enabled(g), "same enabled at once");
	FUZZ_CHECK(mbox_feed_pending(f) == mbox_feed_pending(g), "same pending at once");
	mf_same_view(v, w);
	mbox_view_destroy(&unused);

	/* A view against its clone: nothing to say. */
	FUZZ_CHECK(mbox_view_clone(v, &c) == 0, "clone");
	mf_same_view(v, c);
	for (unsigned e = 0; e < 4; e++) {
		unsigned en = (e & 1 ? MBOX_EN_QRESYNC : 0) | (e & 2 ? MBOX_EN_CONDSTORE : 0);
		char *out;
		size_t len;

		if (mbox_view_diff_enabled(c, v, en, &out, &len) == 0) {
			FUZZ_CHECK(len == 0 && out[0] == '\0',
			           "a view against its clone: no lines");
			free(out);
		}
		if (half != NULL && mbox_feed_state(f) == MBOX_FEED_SELECTED)
			mf_read_back(half, v, en);
	}
	mbox_view_destroy(&c);
	mbox_view_destroy(&half);
	mbox_feed_destroy(&f);
	mbox_view_destroy(&v);
	mbox_feed_destroy(&g);
	mbox_view_destroy(&w);
	return 0;
}
