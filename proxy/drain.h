/*
 * drain — backends an operator takes out of service without a restart
 * (imapmuxctl backend NAME drain|undrain): the Redis set <prefix>drained,
 * announced on the events channel as "drain NAME" and "undrain NAME".
 *
 *   drain NAME --> no new logins routed to NAME (NO [UNAVAILABLE]; hash
 *                  fallback skips it), its pools open nothing and close
 *                  their idle connections, kept sessions of NAME close,
 *                  parked and waking sessions get BYE at once, proxied ones
 *                  at their next quiet point: "* BYE [UNAVAILABLE] Backend
 *                  draining, reconnect."
 *   undrain NAME --> routed and pooled again
 *   (re)subscribed --> the set is read again (SMEMBERS), and what it says
 *                  is applied: events missed meanwhile are not lost
 *
 * State is per worker (struct drained in worker_state.h): each worker hears
 * the events itself and acts on its own sessions.
 */
#ifndef IMAPMUX_DRAIN_H
#define IMAPMUX_DRAIN_H

#include <stdbool.h>
#include <stddef.h>

#include "worker_state.h"

void drain_init(struct worker *w);

/* Read the set from Redis (and retry until it is read). */
void drain_resync(struct worker *w);

/* A drain (on) or undrain event for backend name (not NUL-terminated). */
void drain_event(struct worker *w, bool on, const char *name, size_t len);

/* Worker ending: no more reads. */
void drain_stop(struct worker *w);

#endif
