/*
 * mbox_feed — keeps a mbox_view (common/mbox_view.h) of the client's
 * selected mailbox current from the server's responses, as the proxy's pump
 * forwards them, one tokenizer unit at a time (common/imap_tok.h).
 *
 *   backend -> imap_tok -> unit -> pump -> client
 *                            '-> mbox_feed_unit(feed, view, &unit, bytes, n)
 *   client -> pump -> backend: "t SELECT INBOX"
 *                            '-> mbox_feed_command(feed, view, "t", SELECT, "INBOX")
 *
 * The feed reads what the client is told, so the view is the client's view:
 * what a parked session must bring up to date when it wakes. It is pure (no
 * sockets), never copies a response (its own buffers hold one word, at most
 * MBOX_FEED_ATOM_MAX bytes, and one tag; the pending commands' tags and
 * names are on the heap, bounded by MBOX_FEED_PENDING) and is resumable at
 * any byte: a unit may end anywhere, a literal may come in pieces.
 *
 * What it reads:
 *   - "* n EXISTS", "* n EXPUNGE", "* VANISHED [(EARLIER)] uid-set" (after
 *     ENABLE QRESYNC servers send VANISHED instead of EXPUNGE; an EXPUNGE
 *     is applied whenever it comes). VANISHED (EARLIER) names UIDs that
 *     are not in the mailbox and changes nothing, but a view that holds one
 *     of them is unreliable;
 *   - "* n FETCH (...)": UID, FLAGS (system flags, keywords; \Recent is
 *     dropped), MODSEQ; every other item is skipped whatever its value
 *     (BODY[...]<n> literal or ~{n} binary literal, ENVELOPE and
 *     BODYSTRUCTURE lists with quoted strings, numbers, NIL) and wherever
 *     it stands. A MODSEQ in a FETCH also means CONDSTORE is on: servers
 *     only send it after a CONDSTORE enabling command (RFC 7162 3.1);
 *   - "OK [UIDVALIDITY n]", "[UIDNEXT n]", "[HIGHESTMODSEQ n]",
 *     "[NOMODSEQ]", "[CLOSED]", untagged or in a tagged OK (Dovecot puts
 *     HIGHESTMODSEQ in tagged OKs); other codes and all free text are
 *     skipped;
 *   - "* ENABLED ..." (CONDSTORE, QRESYNC, UTF8=ACCEPT);
 *   - the tagged completion of the commands mbox_feed_command announced.
 * Ignored, on purpose: "* FLAGS" and "[PERMANENTFLAGS]" (the view learns
 * keywords from FETCH FLAGS as they come; what a mailbox could hold does
 * not change what the client was told), RECENT, and every other response
 * (LIST, STATUS, SEARCH...: none changes the selected mailbox's messages).
 *
 * Selecting. A SELECT/EXAMINE becomes the active command when it goes out
 * (or when the mailbox commands queued before it complete): the view is
 * reset and named, state SELECTING. Responses to earlier pipelined commands
 * may still arrive then; they belong to the old mailbox. So, while
 * SELECTING: "[CLOSED]" (RFC 7162 3.2.11: the boundary between the two
 * mailboxes) resets the view again; every EXISTS replaces the messages
 * (the SELECT's own EXISTS is absolute); EXPUNGE, VANISHED and FETCH before
 * the first EXISTS are dropped. The tagged OK makes the view current
 * (SELECTED); NO leaves nothing selected (RFC 3501 6.3.1: a failed SELECT
 * closes the old mailbox); BAD makes the view unreliable (whether the old
 * mailbox is still selected is unknown). CLOSE/UNSELECT OK: nothing
 * selected. An unsolicited [CLOSED] while SELECTED: nothing selected.
 * Without [CLOSED] (servers advertising neither CONDSTORE nor QRESYNC need
 * not send it), an old mailbox's UIDNEXT or HIGHESTMODSEQ arriving after the
 * SELECT went out stays unless the new mailbox's responses restate it;
 * RFC 3501 requires UIDVALIDITY and UIDNEXT in them, so only a server that
 * breaks that rule leaves a stale value.
 *
 * Reliability. When a response breaks the view (a FETCH the view refuses,
 * an EXPUNGE of a message it does not have, a malformed item in a response
 * it reads, mailbox data with nothing selected, units out of order), the
 * feed marks it unreliable and goes on following the stream: the view is
 * right again once a SELECT/EXAMINE completes OK from its own responses, or
 * once nothing is selected (CLOSE/UNSELECT OK, SELECT NO).
 *
 * What the client ENABLEd is per connection, so the feed, which follows one
 * connection, holds it (mbox_feed_enabled), not the view; it survives
 * SELECT and CLOSE and is what mbox_view_diff_enabled wants.
 */
#ifndef IMAPMUX_MBOX_FEED_H
#define IMAPMUX_MBOX_FEED_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "imap_tok.h"
#include "mbox_view.h"

/* Longest word the feed buffers (a keyword, a number, an item name);
 * longer ones are recognised as too long (a keyword: flags inexact). */
#define MBOX_FEED_ATOM_MAX 256u
/* Longest tag a mailbox command may carry. */
#define MBOX_TAG_MAX 128u
/* Mailbox commands that may be awaiting their completion at once. */
#define MBOX_FEED_PENDING 8u

enum mbox_cmd {
	MBOX_CMD_SELECT = 1,
	MBOX_CMD_EXAMINE,
	MBOX_CMD_CLOSE,
	MBOX_CMD_UNSELECT,
};

enum mbox_feed_state {
	MBOX_FEED_NONE = 0,  /* nothing selected: the view is empty */
	MBOX_FEED_SELECTING, /* a SELECT/EXAMINE is being answered: the view is being built */
	MBOX_FEED_SELECTED,  /* a mailbox is selected: the view is what the client was told */
};

struct mbox_feed;

/* A new feed for a new stream: nothing selected, nothing pending, nothing
 * enabled. Returns 0 with *f_r set, or -1 (no memory). */
__attribute__((warn_unused_result)) int mbox_feed_init(struct mbox_feed **f_r);

/* Free the feed and set *fp = NULL; NULL and *fp == NULL are fine. */
void mbox_feed_destroy(struct mbox_feed **fp);

/* Back to what mbox_feed_init gives (another stream); the caller resets
 * its view too. */
void mbox_feed_reset(struct mbox_feed *f);

/*
 * The client's command tag[0..tag_len) of kind went to the server; name
 * (for SELECT/EXAMINE: the mailbox name, the bytes the view keeps and a
 * wake-up will select again; ignored for CLOSE/UNSELECT) as the caller
 * chose to give it. Call it before passing on any response to that
 * command; v is the view the feed keeps (the same one every call). When no
 * other mailbox command is pending, a SELECT/EXAMINE resets and names v
 * now. Returns 0, or -1 when the command cannot be followed: tag empty or
 * longer than MBOX_TAG_MAX, MBOX_FEED_PENDING commands already pending, no
 * memory; the view is then unreliable. A name longer than MBOX_NAME_MAX is
 * followed but leaves the view unreliable while that mailbox is selected
 * (the view could not name it).
 */
__attribute__((warn_unused_result)) int mbox_feed_command(struct mbox_feed *f, struct mbox_view *v,
                                                          const uint8_t *tag, size_t tag_len,
                                                          enum mbox_cmd kind, const uint8_t *name,
                                                          size_t name_len);

/*
 * One unit of the server's stream, as the pump forwards it: u as
 * imap_tok_next() gave it and p[0..n) the bytes the pump consumed, all of
 * a LINE or FRAGMENT (n == u->len), any part of a LITERAL (1..u->len).
 * Every unit of the stream must come, in order. Returns 0, or -1 when the
 * view is unreliable after it (see above; the feed keeps following and a
 * later unit may return 0 again once a selection completes).
 */
__attribute__((warn_unused_result)) int mbox_feed_unit(struct mbox_feed *f, struct mbox_view *v,
                                                       const struct imap_tok_unit *u,
                                                       const uint8_t *p, size_t n);

/*
 * For responses the caller holds as whole lines, not as the tokenizer's
 * units (the backend's answers to the proxy's own commands, as backend.c
 * hands them: line[0..len) without its line end, no literal in it):
 * mbox_feed_unit on the units of that one line. mbox_feed_tagged takes a
 * tagged completion and reads it as if it carried tag instead of its own
 * (the caller announced the command to the feed under tag before the
 * server's tag was known). Return as mbox_feed_unit.
 */
__attribute__((warn_unused_result)) int mbox_feed_line(struct mbox_feed *f, struct mbox_view *v,
                                                       const uint8_t *line, size_t len);
__attribute__((warn_unused_result)) int mbox_feed_tagged(struct mbox_feed *f, struct mbox_view *v,
                                                         const char *tag, const uint8_t *line,
                                                         size_t len);

/* The client sent a CONDSTORE enabling command other than ENABLE (RFC 7162
 * 3.1: SELECT/EXAMINE with CONDSTORE, FETCH with MODSEQ or CHANGEDSINCE,
 * STORE with UNCHANGEDSINCE, SEARCH MODSEQ...): bits (MBOX_EN_*) are ORed
 * in. ENABLE itself is learned from the server's "* ENABLED". */
void mbox_feed_enable(struct mbox_feed *f, unsigned bits);
/* What the client has enabled (MBOX_EN_*). */
unsigned mbox_feed_enabled(const struct mbox_feed *f);

/*
 * The caller has put a selected mailbox in the view itself (a woken
 * session: the proxy selected it on a new backend connection and the
 * client has been brought to the view): follow it as if its SELECT had
 * completed. Returns 0, or -1 when a mailbox command is pending.
 */
__attribute__((warn_unused_result)) int mbox_feed_set_selected(struct mbox_feed *f);

enum mbox_feed_state mbox_feed_state(const struct mbox_feed *f);
/* False from the moment the view stopped following the stream until it is
 * right again (see above). */
bool mbox_feed_reliable(const struct mbox_feed *f);
/* Why the view is unreliable (a static string, for the logs), or NULL. */
const char *mbox_feed_error(const struct mbox_feed *f);
/* Mailbox commands awaiting their completion (a session should park only
 * with none). */
size_t mbox_feed_pending(const struct mbox_feed *f);

#endif
