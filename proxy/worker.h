/*
 * worker — one event-loop thread: its own listening sockets (SO_REUSEPORT),
 * its sessions, and a reaper (reaper.h) that frees what callbacks marked
 * dead, run from the loop's ev_prepare. Workers share nothing but the
 * read-only runtime; the main thread talks to them through an ev_async and
 * a mutex-protected mailbox.
 */
#ifndef IMAPMUX_WORKER_H
#define IMAPMUX_WORKER_H

#include "worker_state.h"

struct sessions_slot;

/* Set up worker id with listening fds (one per listener, ownership taken). */
int worker_init(struct worker *w, int id, struct runtime *rt, const int *fds, size_t nfds);
int worker_start(struct worker *w);
void worker_join(struct worker *w);
void worker_destroy(struct worker *w);

/* From the main thread: post a command and wake the worker. */
void worker_post_reload(struct worker *w, struct runtime *rt);
void worker_post_drain(struct worker *w);
void worker_post_stop(struct worker *w);

/* From the stats thread (GET /sessions): w answers slot from its own
 * thread (session_snapshot, then sessions_slot_done). worker_sessions_post
 * is the same for worker i of the array arg, a sessions_post_fn
 * (sessions_api.h). */
void worker_post_sessions(struct worker *w, struct sessions_slot *slot);
void worker_sessions_post(void *arg, unsigned i, struct sessions_slot *slot);

#endif
