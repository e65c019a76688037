/*
 * park — the inside of parked IDLE, shared by park.c (parking, answering
 * while parked, timers, changes) and wake.c (waking, resynchronizing the
 * client). Other files use sess.h's park_* functions.
 *
 *   PROXYING --quiet for park_idle_after--> [DONE to the backend, its OK
 *     swallowed; UIDs the client was not told learned; NOOP] --> the
 *     backend to the user's reuse cache (or closed) --> PARKED
 *   PARKED: DONE, IDLE, NOOP and CHECK (nothing changed) and LOGOUT are
 *     answered by the proxy; "* OK Still here" every park_keepalive in IDLE
 *   PARKED --any other command, or a change while in IDLE--> WAKING -->
 *     PROXYING/WAKE_SYNC --> NORMAL, or PARKED again (wake.c)
 */
#ifndef IMAPMUX_PARK_H
#define IMAPMUX_PARK_H

#include "sess.h"

enum park_phase {
	PARK_SETTLING, /* PROXYING: waiting for the backend to be quiet, then parking */
	PARK_PARKED,   /* SESS_PARKED: no backend */
	PARK_WAKING,   /* SESS_WAKING: getting a backend */
	PARK_SYNCING,  /* PROXYING/WAKE_SYNC: the proxy's commands running */
	PARK_SYNCED,   /* ... all answered: the diff is due */
	PARK_DRAINING, /* the wake is over; its lines are still going to the client */
};

struct park {
	struct session *s;
	enum park_phase phase;
	struct hmap_node hnode; /* in w->parked, by user */
	bool linked;
	uint8_t key[REUSE_KEY_LEN]; /* the kept session's key (see park_begin) */
	bool keep;                  /* the reuse cache may hold a session under key */
	bool idling;                /* the client is in IDLE, answered by the proxy */
	bool dirty;                 /* the store may differ from what the client holds */
	bool by_client;             /* this wake is for a client command */
	bool skipping;              /* dropping the rest of a command (BAD Expected DONE) */
	bool counted;               /* included in stats.sessions_parked */
	bool waiting;               /* parking waits for its watcher to be up; nothing sent yet */
	bool asking;                /* the proxy's FETCH (UID) or NOOP is out */
	unsigned refetches;         /* a wake's FETCHes of messages that came meanwhile */
	bool synced;                /* ... and its NOOP answered: the view is the store's,
	                             * or dirty says it is not */
	ev_tstamp keepalive_at;
	ev_tstamp deadline; /* settling or waking must be done by then */
	const char *fail;   /* the wake failed: why (static) */
	struct mbox_feed *feed;
	struct mbox_view *now;
	struct buf out;      /* lines for the client ahead of everything else */
	struct watch *watch; /* the watcher held (watch = idle), or NULL (events) */
};

/* park.c */
void park_count(struct session *s, bool on);
/* Queue lines for the client ahead of anything else (grows as needed): 0 or -1. */
int park_emit(struct park *p, const void *data, size_t n);
/* Move whole lines of p->out to client.out as room allows; true when empty. */
bool park_drain(struct session *s);
/* The view's mailbox as an IMAP quoted string in out; 0 when it cannot be one. */
size_t park_quote(const struct session *s, char *out, size_t cap);
/* A wake or parking failed: counted, the session closes with bye. */
void park_fail(struct session *s, const char *why, const char *bye);
/* Undo parking: s->park freed (the watcher let go, out of the table). */
void park_free(struct session *s);

/* wake.c */
/* Take a backend again (by_client: for a command in client.in). */
void park_wake(struct session *s, bool by_client);
/* PARK_SYNCED: tell the client, swap the views. True on progress. */
bool park_synced(struct session *s);

#endif
