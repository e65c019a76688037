/*
 * session — one client connection, from accept to close. See session.c.
 */
#ifndef IMAPMUX_SESSION_H
#define IMAPMUX_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct worker;
struct session;
struct sessions_req;

/* Take over accepted fd on listener index lidx of w->rt. */
void session_accept(struct worker *w, size_t lidx, int fd, const struct sockaddr *peer,
                    socklen_t peerlen);

/* Shut down every session of w gracefully (SIGTERM): BYE now to the quiet
 * ones, the others at their next quiet point; force: BYE to all now. */
void session_drain_all(struct worker *w, bool force);

/* Close every session of user[0..len) with "* BYE [UNAVAILABLE]" (kick event). */
/* Backend name was drained: its sessions get BYE (proxied ones at their
 * next quiet point). Returns how many were told to leave. */
unsigned session_backend_drain(struct worker *w, const char *name);

void session_kick(struct worker *w, const char *user, size_t len);

/* MAILBOX of user changed (an `mbox` event, a watcher; mbox NULL: any of
 * the user's): wake the sessions parked on it (park.c). */
void session_mbox_changed(struct worker *w, const uint8_t *user, size_t ulen, const uint8_t *mbox,
                          size_t mlen);
/* Events may have been missed (Redis came back): every parked session
 * reads its mailbox again. */
void session_wake_parked(struct worker *w);

/* Copy a row of each of w's sessions (of the request's user only, when it
 * names one) into rq, until it is full (sessions_api.h). */
void session_snapshot(struct worker *w, struct sessions_req *rq);

/* The worker's loop has ended (a hard stop: SIGINT, or a drain past its
 * deadline): every session still open ends now, its end logged, with no
 * goodbye; their memory goes with the next reaper run. */
void session_stop_all(struct worker *w);

#endif
