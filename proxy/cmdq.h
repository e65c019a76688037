/*
 * cmdq — the queue of commands imapmux sends on one backend connection by
 * itself, under internal tags, and the dispatch of their answers to their
 * handlers. The mechanism only: backend.c owns one queue per connection,
 * decides when commands may be written and who reads the stream, and
 * offers the API (backend_cmd & co., backend.h). Nothing here touches a
 * socket or a loop: commands are written into a struct buf, answers come
 * in as parsed first units of responses.
 *
 *   cmdq_push --> [queued ... queued] --cmdq_write (head only)--> out
 *   response --cmdq_dispatch--> head's handler: "+", untagged (SWALLOW),
 *                               its tagged answer (then freed: DONE)
 *   the end --cmdq_gone--> every handler once (GONE), freed
 *
 * Invariants:
 *   - tags are BK_TAG_PREFIX and a number counted per queue, never reused;
 *   - only the head is ever written, so a "+" or an untagged response can
 *     only be the head's, and its tagged answer carries the head's tag;
 *   - each command ends exactly once (DONE or GONE), unlinked before its
 *     handler runs: a handler may push more, or end everything.
 */
#ifndef IMAPMUX_CMDQ_H
#define IMAPMUX_CMDQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "imap_args.h"
#include "list.h"

#define BK_TAG_PREFIX "imapmux."
#define BK_TAG_MAX    (sizeof(BK_TAG_PREFIX) - 1 + 20) /* prefix and a 64-bit number */
#define BK_CMD_MAX    (30 * 1024) /* a whole command line, tag and CRLF included */

enum bk_cmd_flags {
	/* Untagged responses while the command is in flight are its handler's
	 * (BK_EV_UNTAGGED) and, when ATTACHED, not the session's: claimed.
	 * Without it they are the owner's (dropped when nobody reads for one). */
	BK_CMD_SWALLOW = 1u << 0,
	/* The text holds credentials: the copy is wiped once written, and so is
	 * the output buffer once it has been sent. */
	BK_CMD_SECRET = 1u << 1,
};

enum bk_event {
	BK_EV_CONTINUE, /* "+ ...": the server wants more; the handler may backend_cmd_reply() */
	BK_EV_UNTAGGED, /* "* ..." while in flight, with BK_CMD_SWALLOW */
	BK_EV_DONE,     /* the tagged answer: the command is over */
	BK_EV_GONE,     /* the connection failed, timed out or was destroyed first */
};

enum bk_status {
	BK_ST_OK,
	BK_ST_NO,
	BK_ST_BAD, /* BAD, or any other word in a tagged answer */
};

/* One answer, valid during the handler's call only. */
struct bk_reply {
	enum bk_event ev;
	enum bk_status status;        /* BK_EV_DONE */
	const struct imap_head *head; /* the response's first unit, parsed; NULL for GONE */
	const uint8_t *line;          /* ... its bytes, line end removed */
	size_t len;
	bool partial;    /* more of the response follows (a literal, or the rest of a line cut
	                  * into fragments): it is skipped, the handler sees this part only */
	const char *why; /* BK_EV_GONE: static text for logs */
};

struct backend;

/*
 * A command's handler. Called for each answer: BK_EV_CONTINUE and
 * BK_EV_UNTAGGED any number of times, then exactly once either BK_EV_DONE or
 * BK_EV_GONE, after which the command is freed. BK_EV_GONE comes also when
 * the command was never written (queued behind one that failed), and from
 * inside backend_destroy[_later] when the owner destroys b with commands
 * outstanding: a handler must then not destroy b itself. Otherwise the
 * handler may queue commands, destroy b later (backend_destroy_later), or
 * change the owner's state; never backend_destroy.
 */
typedef void bk_cmd_cb(void *arg, struct backend *b, const struct bk_reply *r);

struct cmdq_cmd; /* cmdq.c */

/* cmdq_init makes an empty queue. */
struct cmdq {
	struct list_node cmds; /* oldest first; the head is in flight once written */
	unsigned long seq;     /* number in the last tag made */
	bool secret_out;       /* the output buffer held secret bytes: wipe it once empty */
};

void cmdq_init(struct cmdq *q);

/* Whether a tag has the internal form (BK_TAG_PREFIX, ASCII case-insensitively). */
bool cmdq_tag_reserved(const uint8_t *tag, size_t len);

/* Queue "TAG text\r\n" under a new tag (the text is copied). Returns 0, or
 * -1 (nothing queued) when cb is NULL, the line would be over BK_CMD_MAX,
 * or out of memory. */
__attribute__((warn_unused_result)) int cmdq_push(struct cmdq *q, const void *text, size_t len,
                                                  unsigned flags, bk_cmd_cb *cb, void *arg);

/* Write the head into out if it is not written yet and out has room for
 * it. Returns 0 when written, -2 when there is nothing to write now, -1 out
 * of memory. */
__attribute__((warn_unused_result)) int cmdq_write(struct cmdq *q, struct buf *out);

/* Commands queued or in flight / the head is written and not answered. */
bool cmdq_pending(const struct cmdq *q);
bool cmdq_in_flight(const struct cmdq *q);

/*
 * A response's first unit, parsed (h) and its bytes (line end removed),
 * partial when more of it follows. Returns true when it was the command in
 * flight's, and handed to its handler: a "+", untagged data when the
 * command swallows (except an untagged BYE, handed over but not claimed),
 * or its tagged answer (the command is then over and freed). b is passed
 * to the handler.
 */
bool cmdq_dispatch(struct cmdq *q, struct backend *b, const struct imap_head *h,
                   const uint8_t *line, size_t len, bool partial);

/*
 * The same from the raw first unit of a response, p[0..len) with or
 * without its line end: parsed into *h_r (for the caller, whatever the
 * outcome). Returns 1 when dispatched to the command in flight, 0 when not
 * its, -1 when the bytes have no tag (no response at all).
 */
__attribute__((warn_unused_result)) int cmdq_answer(struct cmdq *q, struct backend *b,
                                                    const uint8_t *p, size_t len, bool partial,
                                                    struct imap_head *h_r);

/* End every command with BK_EV_GONE (why: static text) and free it. */
void cmdq_gone(struct cmdq *q, struct backend *b, const char *why);

/* The continuation of the command in flight: text and CRLF into out (flags:
 * BK_CMD_SECRET). Returns 0, or -1 (nothing written) with none in flight or
 * no room. */
__attribute__((warn_unused_result)) int cmdq_reply(struct cmdq *q, struct buf *out,
                                                   const void *text, size_t len, unsigned flags);

/* "TAG LOGOUT\r\n" under a new tag into out at once, ahead of anything
 * queued (a courtesy before closing). Returns 0 or -1 (no room). */
__attribute__((warn_unused_result)) int cmdq_logout(struct cmdq *q, struct buf *out);

/* Wipe out's storage when it held secret bytes and they are sent (empty),
 * or always (the end). */
void cmdq_wipe(struct cmdq *q, struct buf *out, bool always);

#endif
