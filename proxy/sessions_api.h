/*
 * sessions_api — GET /sessions: the list of an instance's sessions, asked
 * of the workers that own them and rendered as JSON on the stats thread
 * (see sessions_api.c).
 *
 * A request (struct sessions_req) is shared by the stats thread, which
 * makes it, and every worker it is posted to, each through a slot of its
 * own. It is reference-counted: whoever lets go last frees it, so a worker
 * that answers after the stats thread gave up on it writes into memory
 * that is still there. Everything in it is under its mutex.
 */
#ifndef IMAPMUX_SESSIONS_API_H
#define IMAPMUX_SESSIONS_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cfg.h"
#include "ident.h"
#include "list.h"

struct text;
struct sessions_req;

#define SESSIONS_MAX       10000             /* rows in one answer */
#define SESSIONS_MAX_BYTES (8 * 1024 * 1024) /* ... and bytes of its "sessions" array */
#define SESSIONS_WAIT      2.0               /* seconds the stats thread waits for workers */

/* One session, copied out of the worker that owns it: nothing here points
 * into the worker's memory. Strings are NUL-terminated. */
struct sessions_row {
	unsigned long id; /* S-<id> in the logs */
	int worker;
	char client[64];              /* "ip:port" (the PROXY header's where one was read) */
	char listener[CFG_NAME_MAX];  /* [listen NAME] */
	char tls[16];                 /* "TLSv1.3", "none", ... */
	const char *state;            /* static: "preauth", "logged_in", ... (session.c) */
	bool in_idle;                 /* the client is in IDLE (the backend's or the proxy's) */
	uint8_t user[IDENT_USER_MAX]; /* as imapmux identifies the user (username_case); */
	size_t user_len;              /* ... 0 before login */
	char backend[CFG_NAME_MAX];   /* [backend NAME] once logged in, else "" */
	double since;                 /* accepted, seconds since the epoch */
	double idle; /* seconds since the client's last input after login (or the accept) */
};

/* A worker's part of a request: what its mailbox holds (node) until the
 * worker answers through sessions_slot_done. */
struct sessions_slot {
	struct list_node node; /* on the worker's mailbox while posted */
	struct sessions_req *rq;
	unsigned index; /* the worker's index */
};

/* Who the workers are, for sessions_req_post: post(arg, i, slot) hands
 * slot to worker i (0 <= i < n) from any thread, and that worker calls
 * sessions_slot_done(slot) later from its own. Set once by the main thread
 * before the stats thread starts. */
typedef void sessions_post_fn(void *arg, unsigned i, struct sessions_slot *slot);
void sessions_api_set_workers(sessions_post_fn *post, void *arg, unsigned n);

/* A new request for at most cap rows (1 <= cap <= SESSIONS_MAX), of the
 * sessions of user[0..ulen) only when has_user, with one slot per worker
 * set by sessions_api_set_workers. notify(arg) is called (from a worker's
 * thread, under the request's lock: it must only signal) once every worker
 * has answered. The caller holds one reference. NULL: out of memory. */
struct sessions_req *sessions_req_new(size_t cap, const uint8_t *user, size_t ulen, bool has_user,
                                      void (*notify)(void *arg), void *arg);
/* Post the request to every worker. Done already when there are none. */
void sessions_req_post(struct sessions_req *rq);
/* No notify from now on, and drop the caller's reference (*rqp = NULL). */
void sessions_req_release(struct sessions_req **rqp);
/* Every worker has answered. */
bool sessions_req_complete(struct sessions_req *rq);

/* ---- a worker's side ----------------------------------------------------- */

/* The user filter (has_user false: none), as the request carries it: the
 * worker names it its own way (username_case) before comparing. ulen is at
 * most IDENT_USER_MAX. */
bool sessions_req_filter(struct sessions_req *rq, uint8_t *user_r, size_t *ulen_r);
/* Add one row; -1 once the request holds cap rows (it is then marked
 * truncated) or out of memory (likewise). */
__attribute__((warn_unused_result)) int sessions_req_add(struct sessions_req *rq,
                                                         const struct sessions_row *row);
/* The worker's answer is complete: its slot is let go (it may free rq). */
void sessions_slot_done(struct sessions_slot *slot);
/* The worker will never answer (it stopped): let its slot go unanswered. */
void sessions_slot_drop(struct sessions_slot *slot);

/* ---- rendering (the stats thread) --------------------------------------- */

/*
 * Append the /sessions document to t:
 *   {"instance":{"version","pid","started","workers","answered","unanswered":[i,...]},
 *    "sessions":[{"id","worker","client","listener","tls","state","in_idle",
 *                 "user","backend","since","idle"},...],
 *    "truncated":bool}
 * Rows are sorted by id. At most SESSIONS_MAX_BYTES of rows go out; the
 * rest make "truncated" true, as do rows the workers could not add (cap).
 * start_time: the instance's, in seconds since the epoch.
 */
void sessions_render(struct text *t, struct sessions_req *rq, double start_time);

/* A JSON string of s[0..len): quotes, backslashes and control bytes
 * escaped, valid UTF-8 kept, every byte of an invalid sequence as U+FFFD. */
void sessions_json_str(struct text *t, const uint8_t *s, size_t len);

/*
 * The query of a GET /sessions target (after '?', without it; len 0: none):
 * only "user=NAME" (percent-encoded, '+' a space; at most once; NAME of 1
 * to IDENT_USER_MAX bytes, no NUL) is known. Returns 0 with the decoded
 * name in user_r (room for IDENT_USER_MAX bytes) and *has_user_r, or -1
 * with why in err (a line for the 400 answer's body).
 */
__attribute__((warn_unused_result)) int sessions_query_parse(const char *q, size_t len,
                                                             uint8_t *user_r, size_t *ulen_r,
                                                             bool *has_user_r, char *err,
                                                             size_t errlen);

#endif
