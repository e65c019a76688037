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
 * Pure: no sockets, no libev. The caller parses the server's responses and
 * feeds the values (mbox_view_exists, _expunge, _vanished, _fetch and the
 * status setters); the view checks each against the rules of RFC 3501 and
 * RFC 7162 and refuses (-1, view unchanged) what would break them.
 *
 * Invariants of a view:
 *   - Messages are in sequence order (seq = index + 1). Each has a UID or
 *     0 = not known yet; the known UIDs are strictly ascending with the
 *     sequence number. Unknown UIDs come from EXISTS (new messages are
 *     appended) and stay 0 until a FETCH with UID names them.
 *   - Flags are the system flags only (MBOX_F_*); keywords and \Recent are
 *     out of scope for now: the caller drops them, the view masks them.
 *   - At most MBOX_VIEW_MAX messages (bounds memory whatever a server says).
 *
 * Storage: one growable array of (uid, flags), simple and obviously right;
 * compact UID ranges (a mailbox is mostly runs of consecutive UIDs) are a
 * later optimisation behind the same functions. Expunge is O(count).
 *
 * Not modelled yet: keywords, per-message MODSEQ, \Recent. HIGHESTMODSEQ is
 * kept but the diff does not announce it.
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

/* Most messages a view holds (8 bytes each): EXISTS beyond it fails. */
#define MBOX_VIEW_MAX (16u * 1024u * 1024u)

struct mbox_view;

/* A new empty view (nothing selected: UIDVALIDITY, UIDNEXT, HIGHESTMODSEQ
 * all 0 = unknown, no messages). Returns 0 with *v_r set, or -1 (no memory). */
__attribute__((warn_unused_result)) int mbox_view_init(struct mbox_view **v_r);

/* Back to the state mbox_view_init gives (a new SELECT); frees the message
 * storage, so a reset view holds no more than its header. */
void mbox_view_reset(struct mbox_view *v);

/* Free the view and set *vp = NULL; NULL and *vp == NULL are fine. */
void mbox_view_destroy(struct mbox_view **vp);

/* A deep copy of src (the snapshot of what the client was told). Returns 0
 * with *v_r set, or -1 (no memory). */
__attribute__((warn_unused_result)) int mbox_view_clone(const struct mbox_view *src,
                                                        struct mbox_view **v_r);

/* Status values, from "* OK [UIDVALIDITY n]" etc.; 0 = unknown. */
void mbox_view_set_uidvalidity(struct mbox_view *v, uint32_t uidvalidity);
void mbox_view_set_uidnext(struct mbox_view *v, uint32_t uidnext);
void mbox_view_set_highestmodseq(struct mbox_view *v, uint64_t highestmodseq);

uint32_t mbox_view_uidvalidity(const struct mbox_view *v);
/* UIDNEXT as set, raised past any UID a FETCH named. */
uint32_t mbox_view_uidnext(const struct mbox_view *v);
uint64_t mbox_view_highestmodseq(const struct mbox_view *v);

/* Number of messages (the last EXISTS less expunges since). */
uint32_t mbox_view_count(const struct mbox_view *v);
/* UID of message seq (1..count), 0 when unknown or seq out of range. */
uint32_t mbox_view_uid(const struct mbox_view *v, uint32_t seq);
/* Flags (MBOX_F_*) of message seq (1..count), 0 when seq is out of range. */
unsigned mbox_view_flags(const struct mbox_view *v, uint32_t seq);
/* True when every message's UID is known (an empty view included). */
bool mbox_view_uids_known(const struct mbox_view *v);

/*
 * "* n EXISTS": the mailbox now holds n messages. The ones beyond the
 * current count are appended with UID 0 (unknown) and no flags. Returns 0,
 * or -1 when n is below the current count (only EXPUNGE/VANISHED shrink a
 * mailbox) or above MBOX_VIEW_MAX, or on no memory; -1 leaves v unchanged.
 */
__attribute__((warn_unused_result)) int mbox_view_exists(struct mbox_view *v, uint32_t n);

/*
 * "* seq EXPUNGE": message seq goes, every later one moves down by one
 * (RFC 3501 7.4.1). Returns 0, or -1 when seq is not 1..count.
 */
__attribute__((warn_unused_result)) int mbox_view_expunge(struct mbox_view *v, uint32_t seq);

/*
 * "* VANISHED lo:hi" (RFC 7162 3.2.10; a single UID is lo == hi): every
 * message whose UID is in lo..hi goes. UIDs not in the view are ignored
 * (VANISHED may name UIDs already gone). Returns 0, or -1 when lo is 0 or
 * above hi, or when a message of unknown UID might be in the range (its
 * UID could be any between its known neighbours'): the view cannot tell
 * whether it went, the caller must learn the UIDs first. -1 leaves v
 * unchanged.
 */
__attribute__((warn_unused_result)) int mbox_view_vanished(struct mbox_view *v, uint32_t uid_lo,
                                                           uint32_t uid_hi);

/*
 * "* seq FETCH (...)": uid, when not 0, is the UID of message seq; flags
 * (MBOX_F_*, other bits dropped) replace its flags when has_flags. Returns
 * 0, or -1 (v unchanged) when seq is not 1..count, when the message already
 * has another UID, or when uid would break the ascending order of the
 * known UIDs.
 */
__attribute__((warn_unused_result)) int
mbox_view_fetch(struct mbox_view *v, uint32_t seq, uint32_t uid, bool has_flags, unsigned flags);

/*
 * The untagged lines (CRLF-terminated, in order) that bring a client
 * holding old to now:
 *   - qresync false: "* n EXPUNGE" for each message of old that now lacks,
 *     highest n first, so each n is right in old's numbering as the client
 *     applies the lines one by one;
 *     qresync true: one "* VANISHED <uid-set>" instead (ascending, runs
 *     compacted: "3:5,9"), which also lowers the client's count;
 *   - "* N EXISTS" when the count after those differs from now's (messages
 *     that arrived; the client fetches what it wants of them);
 *   - "* n FETCH (FLAGS (...))" for each message in both whose flags
 *     differ, n in now's numbering, ascending; with qresync the UID comes
 *     first, "* n FETCH (UID u FLAGS (...))" (RFC 7162: once QRESYNC is
 *     on, every untagged FETCH carries the UID; it also wants MODSEQ, which
 *     the view does not model yet, see above).
 * Returns 0 with *out_r a malloc'd NUL-terminated string (the caller frees
 * it; "" when nothing changed) and *len_r its length, or -1 (*out_r NULL)
 * when a UID in either view is unknown, when the UIDVALIDITYs are unknown
 * or differ (the caller handles a new UIDVALIDITY otherwise: the client's
 * view is void), when now has a message old lacks below old's highest UID
 * (UIDs only grow: the views do not belong together), or on no memory.
 * The output is at most about 40 bytes per message of old and now.
 */
__attribute__((warn_unused_result)) int mbox_view_diff(const struct mbox_view *old,
                                                       const struct mbox_view *now, bool qresync,
                                                       char **out_r, size_t *len_r);

#endif
