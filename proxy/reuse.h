/*
 * reuse — a worker's logged-in backend sessions kept after their client's
 * LOGOUT, for the same user's next login (webmail logs in on every click).
 *
 *   session LOGOUT --reuse_park--> backend HELD (backend.c reads it)
 *                                   [RESETTING: UNSELECT through backend_cmd]
 *                                   --its OK--> [KEPT, reuse_ttl timer]
 *   next login, same backend+key --reuse_take--> session attaches it
 *   ttl, BYE, EOF, error, kick --> closed (LOGOUT sent when possible)
 *
 * Entries are keyed by backend and a keyed hash (HMAC-SHA256 with a random
 * per-process secret) of the user name and the credentials, so a session
 * goes back only to a login that proved the same credentials; the password
 * itself is never stored. Keys are compared in constant time.
 */
#ifndef IMAPMUX_REUSE_H
#define IMAPMUX_REUSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "backend.h"
#include "worker_state.h"

#define REUSE_KEY_LEN 32

/* The key for user with secret (the password, or a fixed marker when the
 * proxy verified the password itself) on backend name. */
void reuse_key(const char *backend, const uint8_t *user, size_t ulen, const uint8_t *secret,
               size_t slen, uint8_t key_r[REUSE_KEY_LEN]);

/*
 * Take over b, a logged-in backend at a response boundary whose client
 * logged out: reset it (UNSELECT when need_unselect) and keep it for
 * b->cfg->reuse_ttl. Ownership of b passes to the cache (it may be closed
 * at once). rt is referenced while the entry lives.
 */
void reuse_park(struct worker *w, struct runtime *rt, struct backend *b,
                const uint8_t key[REUSE_KEY_LEN], const uint8_t *user, size_t ulen,
                bool need_unselect);

/* A kept session of backend b_cfg under key, detached from the cache (its
 * conn has no callback owner until attached); NULL if none. */
struct backend *reuse_take(struct worker *w, const struct cfg_backend *b_cfg,
                           const uint8_t key[REUSE_KEY_LEN]);

/* Whether a kept session (or one being reset) of backend b_cfg under key
 * is in the cache: a parked session keeps its backend only when none is,
 * so a user's parked sessions hold one connection at most. */
bool reuse_has(struct worker *w, const struct cfg_backend *b_cfg, const uint8_t key[REUSE_KEY_LEN]);

/* Close every kept session of user (kick), or all of them (shutdown). */
void reuse_drop_user(struct worker *w, const char *user, size_t ulen);
void reuse_drop_all(struct worker *w);

/* Close the oldest kept session of backend to free a connection slot for a
 * waiting login. Returns false if there was none. */
/* Close the kept sessions of backend (drained). Returns how many. */
unsigned reuse_drop_backend(struct worker *w, const char *backend);

bool reuse_evict_one(struct worker *w, const char *backend);

#endif
