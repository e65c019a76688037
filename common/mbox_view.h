/*
 * mbox_view — the client's view of its selected mailbox, and the untagged
 * lines that bring a client holding one view to another.
 *
 * For parked sessions: the proxy keeps a view of what the client was told,
 * later learns (or rebuilds) what the mailbox is now, and must tell the
 * client exactly what changed before it hands the session back.
 *
 *   old view (what the client holds)     now view (what the mailbox is)
 *   seq 1 2 3 4                          seq 1 2 3 4
 *   uid 3 5 7 9                          uid 3 7 9 12
 *           \ mbox_view_diff(old, now, qresync=false) /
 *   "* 2 EXPUNGE\r\n* 4 EXISTS\r\n* 2 FETCH (FLAGS (\Seen))\r\n"
 *
 * Pure: no sockets, no libev. The values come either from the caller
 * (mbox_view_exists, _expunge, _vanished, _fetch and the status setters)
 * or from common/mbox_feed.h, which parses the server's responses as the
 * proxy forwards them and calls these same functions; the view checks each
 * against the rules of RFC 3501 and RFC 7162 and refuses (-1, view
 * unchanged) what would break them.
 *
 * What a view holds:
 *   - the mailbox name (bytes as SELECT named it, at most MBOX_NAME_MAX)
 *     and whether it was opened read-only (EXAMINE);
 *   - UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ (or NOMODSEQ);
 *   - the messages in sequence order, each with a UID or 0 = not known
 *     yet, its system flags (MBOX_F_*), its keywords, and its MODSEQ or 0 =
 *     not known (see the floor below).
 * What the client ENABLEd (MBOX_EN_*) is per connection, not per mailbox:
 * it survives SELECT, CLOSE and mbox_view_reset, and the diff of two views
 * of one connection needs it from outside. So it is not in the view: the
 * feed tracks it (mbox_feed_enabled) and the diff takes it as an argument.
 *
 * Invariants of a view:
 *   - The known UIDs are strictly ascending with the sequence number,
 *     with room between two of them for the messages between (a message
 *     n places after another has a UID at least n above). Unknown UIDs come
 *     from EXISTS (new messages are appended) and stay 0 until a FETCH with
 *     UID names them.
 *   - Flags: the five system flags plus keywords (any other flag name but
 *     \Recent), interned in a per-view table of at most MBOX_KW_MAX names;
 *     a message's keywords are a bitmask over that table. \Recent is
 *     session state a new backend session would not reproduce: not
 *     modelled, and the diff never sends RECENT. When a flag cannot be
 *     represented (table full, name too long) the feeder marks the view
 *     "flags inexact" and every diff involving it fails (-1): the caller
 *     must fall back (resynchronize the client some other way) instead of
 *     telling it wrong flags.
 *   - MODSEQ per message, kept only above the view's floor (0 unless
 *     mbox_view_set_modseq_floor): a diff needs a message's MODSEQ only
 *     when the message changed after what the client knew, and distinct
 *     MODSEQs cost one run each (see storage), so a view can forget the
 *     old ones.
 *   - At most MBOX_VIEW_MAX messages and MBOX_VIEW_MAX_RUNS runs (bounds
 *     memory whatever a server says).
 *
 * Storage: runs of consecutive messages that share everything but the UID,
 * whose UIDs are consecutive too (or all unknown): a mailbox is mostly such
 * runs, so 200,000 messages with UIDs 1..200000 and the same flags are one
 * run of 24 bytes, while a view where every message differs from its
 * neighbours costs 24 bytes a message (3 times the old array). A per-message
 * flag byte array was the other candidate: 1 byte a message always, but it
 * has no room for keywords or MODSEQ and still needs UID runs beside it; one
 * kind of run for everything keeps a single set of split and merge rules.
 * Lookups by sequence number are a binary search over the runs; an expunge
 * or a split is O(runs).
 *
 * Not modelled: \Recent and RECENT counts, UNSEEN, the FLAGS and
 * PERMANENTFLAGS lists (what flags a mailbox could hold, not what the client
 * was told of its messages), message data other than UID, flags and MODSEQ,
 * mailbox annotations, saved search results (SEARCHRES) and CONTEXT
 * updates. A diff says nothing about them.
 */
#ifndef IMAPMUX_MBOX_VIEW_H
#define IMAPMUX_MBOX_VIEW_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* System flags (RFC 3501 2.3.2), as a bitmask; this order is also the order
 * of a FLAGS list the diff writes. */
#define MBOX_F_SEEN     0x01u
#define MBOX_F_ANSWERED 0x02u
#define MBOX_F_FLAGGED  0x04u
#define MBOX_F_DELETED  0x08u
#define MBOX_F_DRAFT    0x10u
#define MBOX_F_ALL      0x1fu

/* Most messages a view holds: EXISTS beyond it fails. */
#define MBOX_VIEW_MAX (16u * 1024u * 1024u)
/* Most runs (24 bytes each): a change that would split beyond it fails. */
#define MBOX_VIEW_MAX_RUNS (2u * 1024u * 1024u)
/* Keywords a view can name, and the longest name. */
#define MBOX_KW_MAX      27u
#define MBOX_KW_NAME_MAX 255u
/* Longest mailbox name a view keeps. */
#define MBOX_NAME_MAX 1024u

/* What a client ENABLEd (RFC 5161), for the diff; QRESYNC implies CONDSTORE
 * on the wire (RFC 7162 3.2), the feed sets both. */
#define MBOX_EN_CONDSTORE 0x01u
#define MBOX_EN_QRESYNC   0x02u
#define MBOX_EN_UTF8      0x04u /* UTF8=ACCEPT (RFC 6855) */

struct mbox_view;

/* What a FETCH response says about one message. */
struct mbox_fetch {
	uint32_t uid;      /* 0 = not given */
	bool has_flags;    /* a FLAGS item: flags and keywords replace the message's */
	unsigned flags;    /* MBOX_F_*; other bits are dropped */
	uint32_t keywords; /* bit i = keyword i of the view (mbox_view_keyword) */
	uint64_t modseq;   /* MODSEQ item, 0 = not given */
};

/* A new empty view (nothing selected: UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ
 * all 0 = unknown, no messages, no name). Returns 0 with *v_r set, or -1
 * (no memory). */
__attribute__((warn_unused_result)) int mbox_view_init(struct mbox_view **v_r);

/* Back to the state mbox_view_init gives (a new SELECT); frees the message
 * storage, name and keyword table, so a reset view holds no more than its
 * header. */
void mbox_view_reset(struct mbox_view *v);

/* Drop every message (count 0) and the "flags inexact" mark; name, status
 * values, keyword table and floor stay. For the feed: a SELECT's EXISTS
 * replaces what came before it. */
void mbox_view_clear_messages(struct mbox_view *v);

/* Free the view and set *vp = NULL; NULL and *vp == NULL are fine. */
void mbox_view_destroy(struct mbox_view **vp);

/* A deep copy of src (the snapshot of what the client was told). Returns 0
 * with *v_r set, or -1 (no memory). */
__attribute__((warn_unused_result)) int mbox_view_clone(const struct mbox_view *src,
                                                        struct mbox_view **v_r);

/* The mailbox name, bytes as the client's SELECT/EXAMINE named it (the
 * caller decides the form: the feed stores what mbox_feed_command got).
 * Returns 0, or -1 (view unchanged) when len > MBOX_NAME_MAX or no memory.
 * len 0 clears it. */
__attribute__((warn_unused_result)) int mbox_view_set_name(struct mbox_view *v, const uint8_t *name,
                                                           size_t len);
/* The name and *len_r its length; NULL and 0 when none. Not NUL-terminated. */
const uint8_t *mbox_view_name(const struct mbox_view *v, size_t *len_r);
/* Opened with EXAMINE (true) or SELECT (false). */
void mbox_view_set_readonly(struct mbox_view *v, bool readonly);
bool mbox_view_readonly(const struct mbox_view *v);

/* Status values, from "* OK [UIDVALIDITY n]" etc.; 0 = unknown. A non-zero
 * HIGHESTMODSEQ clears NOMODSEQ. */
void mbox_view_set_uidvalidity(struct mbox_view *v, uint32_t uidvalidity);
void mbox_view_set_uidnext(struct mbox_view *v, uint32_t uidnext);
void mbox_view_set_highestmodseq(struct mbox_view *v, uint64_t highestmodseq);
/* "* OK [NOMODSEQ]": the mailbox keeps no mod-sequences (HIGHESTMODSEQ 0). */
void mbox_view_set_nomodseq(struct mbox_view *v);

uint32_t mbox_view_uidvalidity(const struct mbox_view *v);
/* UIDNEXT as set, raised past any UID a FETCH named. */
uint32_t mbox_view_uidnext(const struct mbox_view *v);
/* HIGHESTMODSEQ as set, raised past any MODSEQ a FETCH named (but 0 while
 * NOMODSEQ). */
uint64_t mbox_view_highestmodseq(const struct mbox_view *v);
bool mbox_view_nomodseq(const struct mbox_view *v);

/*
 * MODSEQs at or below floor are not kept per message (stored as 0 = not
 * known): set it to what the client already knows (the HIGHESTMODSEQ of the
 * view it holds) on a view built to be diffed against it, so that only the
 * messages changed since cost a run of their own. Raising the floor forgets
 * the MODSEQs now at or below it. Default 0: every MODSEQ is kept.
 */
void mbox_view_set_modseq_floor(struct mbox_view *v, uint64_t floor);
uint64_t mbox_view_modseq_floor(const struct mbox_view *v);

/* Number of messages (the last EXISTS less expunges since). */
uint32_t mbox_view_count(const struct mbox_view *v);
/* UID of message seq (1..count), 0 when unknown or seq out of range. */
uint32_t mbox_view_uid(const struct mbox_view *v, uint32_t seq);
/* System flags (MBOX_F_*) of message seq (1..count), 0 when out of range. */
unsigned mbox_view_flags(const struct mbox_view *v, uint32_t seq);
/* Keywords of message seq as a bitmask over the view's table, 0 when out
 * of range. */
uint32_t mbox_view_keywords(const struct mbox_view *v, uint32_t seq);
/* MODSEQ of message seq, 0 when not known (never told, at or below the
 * floor, or its flags changed without one) or out of range. */
uint64_t mbox_view_modseq(const struct mbox_view *v, uint32_t seq);
/* True when every message's UID is known (an empty view included). */
bool mbox_view_uids_known(const struct mbox_view *v);

/*
 * The bit of keyword name[0..len) in v's table (compared byte for byte, as
 * servers spell a keyword the same way each time), added when new. Returns
 * 0 with *bit_r in 0..MBOX_KW_MAX-1, or -1 when len is 0 or above
 * MBOX_KW_NAME_MAX, the table is full, or no memory (the caller then marks
 * the flags inexact). The table only grows until mbox_view_reset.
 */
__attribute__((warn_unused_result)) int mbox_view_keyword(struct mbox_view *v, const char *name,
                                                          size_t len, unsigned *bit_r);
/* Name of keyword bit (not NUL-terminated) and *len_r, NULL when none. */
const char *mbox_view_keyword_name(const struct mbox_view *v, unsigned bit, size_t *len_r);
unsigned mbox_view_keyword_count(const struct mbox_view *v);

/* Some message's flags are not what the view says (a keyword it cannot
 * name): every diff involving v fails until mbox_view_reset or
 * mbox_view_clear_messages. */
void mbox_view_set_flags_inexact(struct mbox_view *v);
bool mbox_view_flags_exact(const struct mbox_view *v);

/*
 * "* n EXISTS": the mailbox now holds n messages. The ones beyond the
 * current count are appended with UID 0 (unknown) and no flags. Returns 0,
 * or -1 when n is below the current count (only EXPUNGE/VANISHED shrink a
 * mailbox) or above MBOX_VIEW_MAX, or on no memory; -1 leaves v unchanged.
 */
__attribute__((warn_unused_result)) int mbox_view_exists(struct mbox_view *v, uint32_t n);

/*
 * "* seq EXPUNGE": message seq goes, every later one moves down by one
 * (RFC 3501 7.4.1). Returns 0, or -1 (v unchanged) when seq is not
 * 1..count, or when the message splits a run and there is no memory or
 * room (MBOX_VIEW_MAX_RUNS) for one more.
 */
__attribute__((warn_unused_result)) int mbox_view_expunge(struct mbox_view *v, uint32_t seq);

/*
 * "* VANISHED lo:hi" (RFC 7162 3.2.10; a single UID is lo == hi): every
 * message whose UID is in lo..hi goes. UIDs not in the view are ignored
 * (VANISHED may name UIDs already gone). Returns 0, or -1 when lo is 0 or
 * above hi, when a message of unknown UID might be in the range (its
 * UID could be any between its known neighbours'): the view cannot tell
 * whether it went, the caller must learn the UIDs first; or when a run
 * splits without memory or room. -1 leaves v unchanged.
 */
__attribute__((warn_unused_result)) int mbox_view_vanished(struct mbox_view *v, uint32_t uid_lo,
                                                           uint32_t uid_hi);

/*
 * "* VANISHED (EARLIER) lo:hi": UIDs the server says are not in the
 * mailbox; the count does not change (RFC 7162 3.2.10). Messages of
 * unknown UID cannot be among them. Returns 0 (v unchanged), or -1 when lo
 * is 0 or above hi, or when the view holds a message with one of those
 * UIDs: the view and the server disagree.
 */
__attribute__((warn_unused_result)) int
mbox_view_vanished_earlier(const struct mbox_view *v, uint32_t uid_lo, uint32_t uid_hi);

/*
 * "* seq FETCH (...)": f->uid, when not 0, is the UID of message seq;
 * with f->has_flags its flags and keywords become f->flags (MBOX_F_*,
 * other bits dropped) and f->keywords; f->modseq, when not 0, is its MODSEQ
 * (kept when above the floor, and raising HIGHESTMODSEQ unless NOMODSEQ). Flags that
 * change without a MODSEQ make the message's MODSEQ unknown. Returns 0, or
 * -1 (v unchanged) when seq is not 1..count, when the message already has
 * another UID, when uid would break the ascending order of the known UIDs,
 * when f->keywords names a bit the table does not hold, or when the change
 * splits a run without memory or room.
 */
__attribute__((warn_unused_result)) int mbox_view_fetch_msg(struct mbox_view *v, uint32_t seq,
                                                            const struct mbox_fetch *f);

/* mbox_view_fetch_msg with no keywords and no MODSEQ: uid (0 = not given),
 * and flags when has_flags. */
__attribute__((warn_unused_result)) int
mbox_view_fetch(struct mbox_view *v, uint32_t seq, uint32_t uid, bool has_flags, unsigned flags);

/*
 * The untagged lines (CRLF-terminated, in order) that bring a client
 * holding old to now, for a client that ENABLEd enabled (MBOX_EN_*):
 *   - without QRESYNC: "* n EXPUNGE" for each message of old that now
 *     lacks, highest n first, so each n is right in old's numbering as the
 *     client applies the lines one by one;
 *     with QRESYNC: one "* VANISHED <uid-set>" instead (ascending, runs
 *     compacted: "3:5,9"; never "(EARLIER)": these are expunges the client
 *     must apply), which also lowers the client's count;
 *   - "* N EXISTS" when the count after those differs from now's (messages
 *     that arrived; the client fetches what it wants of them);
 *   - "* n FETCH (...)" for each message in both whose flags or keywords
 *     differ, n in now's numbering, ascending: "(FLAGS (...))"; with
 *     QRESYNC "UID u" comes first (RFC 7162 3.2: once QRESYNC is on,
 *     every untagged FETCH carries the UID); with CONDSTORE "MODSEQ (m)"
 *     before FLAGS, the message's MODSEQ in now (RFC 7162 3.1: after a
 *     CONDSTORE enabling command, unsolicited FETCH responses carry
 *     MODSEQ), unless now is NOMODSEQ.
 *     With CONDSTORE a message whose flags did not change but whose MODSEQ
 *     in now is above both its MODSEQ in old and old's HIGHESTMODSEQ (it
 *     changed after what the client knew) gets its line too, with its
 *     unchanged FLAGS;
 *   - with CONDSTORE, "* OK [HIGHESTMODSEQ h] Highest" last when now's
 *     HIGHESTMODSEQ h is above old's and above every MODSEQ sent in a
 *     FETCH line: expunges raise it without any FETCH to carry it, and a
 *     client that resynchronizes from its highest mod-sequence must learn
 *     it; sent last, after every change it covers, so a client cut off
 *     halfway never holds a HIGHESTMODSEQ past what it was told (RFC 7162
 *     3.2; Dovecot sends the same line after such changes).
 * UIDNEXT is not announced: EXISTS and the client's FETCH tell it the new
 * UIDs. RECENT is not sent (\Recent is not modelled).
 * Keyword names are matched by bytes between the two views' tables.
 * Returns 0 with *out_r a malloc'd NUL-terminated string (the caller frees
 * it; "" when nothing changed) and *len_r its length, or -1 (*out_r NULL)
 * when a UID in either view is unknown, when either view's flags are
 * inexact, when the UIDVALIDITYs are unknown or differ (the caller
 * handles a new UIDVALIDITY otherwise: the client's view is void), when
 * now has a message old lacks below old's highest UID (UIDs only grow: the
 * views do not belong together), with CONDSTORE when one view is NOMODSEQ
 * and the other not or a FETCH line needs a MODSEQ now does not know (the
 * caller fetches the MODSEQs of the changed messages, or lowers now's
 * floor), or on no memory. The output is bounded by the two counts, a
 * line per message of old and now at most (each line's FLAGS by now's
 * keyword names).
 */
__attribute__((warn_unused_result)) int mbox_view_diff_enabled(const struct mbox_view *old,
                                                               const struct mbox_view *now,
                                                               unsigned enabled, char **out_r,
                                                               size_t *len_r);

/* mbox_view_diff_enabled with MBOX_EN_QRESYNC when qresync, else nothing
 * enabled: no MODSEQ in FETCH lines, no HIGHESTMODSEQ line. */
__attribute__((warn_unused_result)) int mbox_view_diff(const struct mbox_view *old,
                                                       const struct mbox_view *now, bool qresync,
                                                       char **out_r, size_t *len_r);

/* Bytes the view holds on the heap, its header included. */
size_t mbox_view_mem(const struct mbox_view *v);
/* Number of runs (see storage): for tests and statistics. */
uint32_t mbox_view_runs(const struct mbox_view *v);
/* Check every invariant of the representation: 0, or -1 with *why_r (a
 * static string) saying which broke. For tests and fuzzing. */
int mbox_view_check(const struct mbox_view *v, const char **why_r);

#endif
