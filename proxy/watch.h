/*
 * watch — the watchers of parked sessions: one backend connection, logged
 * in as the user with the backend's master credentials, in IDLE, shared by
 * the user's parked sessions. Two kinds:
 *   - per (backend, user, mailbox) (watch = idle): the mailbox EXAMINEd;
 *     whatever the server says there is a change for its sessions;
 *   - per (backend, user) (watch = notify, RFC 5465): ENABLE CONDSTORE and
 *     NOTIFY SET (personal (MessageNew MessageExpunge FlagChange)); each
 *     "* STATUS mailbox (...)" names the mailbox that changed.
 *
 *   watch_hold --> connect, log in, EXAMINE, IDLE --"+"--> UP
 *   UP: untagged data --> changed(user, mailbox) (coalesced: once a moment)
 *       every watch_refresh ([backend], 25m): DONE, IDLE again (RFC 2177:
 *       before 30 minutes)
 *   lost (BYE, EOF, error, timeout) --> changed() (the sessions read the
 *       store again: what happened meanwhile is unknown), again after a
 *       backoff while held
 *   watch_release of the last holder --> closed after WATCH_LINGER (a
 *       session that wakes and parks again finds it still up)
 *
 * ready() comes when a watcher is UP (first, and after each loss): a
 * session parks only once its watcher is watching, so that no change made
 * after the session's own last look can be missed. Up again after a loss,
 * it also says changed(): sessions that parked again meanwhile may have
 * missed something.
 *
 * One watcher per process, not per worker: the user's *owner* worker (a
 * stable hash of the user, modulo the workers) holds the real one. On any
 * other worker watch_hold gives a hold, a local handle that asks the owner
 * by message (the backend by name, resolved in the owner's configuration)
 * and mirrors what it answers: up when the real watcher is (only then does
 * ready() come), down after a loss, each changed(), and "gone" (no such
 * backend there, or the owner stopped: not up again, changed() if it was).
 * The callbacks always run on the holder's own worker. With one worker,
 * no messages: the owner is the worker itself.
 */
#ifndef IMAPMUX_WATCH_H
#define IMAPMUX_WATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "cfg.h"
#include "runtime.h"
#include "worker_state.h"

#define WATCH_LINGER 30.0 /* an unheld watcher stays this long */

struct watch;

/* MAILBOX of user may have changed; mbox NULL: any of the user's. */
typedef void watch_changed_cb(struct worker *w, const uint8_t *user, size_t ulen,
                              const uint8_t *mbox, size_t mlen);
/* The watcher of user (and mbox, NULL for NOTIFY) is watching now. */
typedef watch_changed_cb watch_ready_cb;

/*
 * The watcher of (bc, user, mbox), made or found, held once more. select
 * is the EXAMINE command for mbox (the mailbox as an IMAP string); enable,
 * when not NULL, an ENABLE command's arguments sent first (UTF8=ACCEPT for
 * a UTF-8 mailbox name). mbox NULL (select ignored): the user's NOTIFY
 * watcher. Returns NULL on no memory (the caller does not park).
 */
struct watch *watch_hold(struct worker *w, struct runtime *rt, const struct cfg_backend *bc,
                         const uint8_t *user, size_t ulen, const uint8_t *mbox, size_t mlen,
                         const char *select, const char *enable, watch_changed_cb *changed,
                         watch_ready_cb *ready);

/* The worker holding the real watchers of user: a stable hash of the
 * user, so that every worker names the same one; with one worker, w. */
int watch_owner(const struct worker *w, const uint8_t *user, size_t ulen);

/* In IDLE now: whatever changes from here on is heard. */
bool watch_up(const struct watch *wt);

/* Let go of *wp (NULL is fine); *wp = NULL. */
void watch_release(struct watch **wp);

/* Close every watcher and hold of w (the worker ends): from here on its
 * mailbox refuses messages, holds asked of it hear "gone". */
void watch_close_all(struct worker *w);

/* w's mailbox, set up on w->loop before any worker runs: 0 or -1. */
__attribute__((warn_unused_result)) int watch_init(struct worker *w);
/* Free what is left in w's mailbox (every worker has stopped). */
void watch_fini(struct worker *w);

#endif
