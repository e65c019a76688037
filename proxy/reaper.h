/*
 * reaper — deferred frees for one event loop: an object whose callbacks may
 * still be on the stack is put on the reaper's list and freed later, from
 * the loop's ev_prepare hook (before the loop next sleeps), when no
 * callback of it can be running.
 *
 *   callback chain: ... mark dead, stop watchers --reaper_defer--> [list]
 *   ev_prepare (the loop's owner) --reaper_run--> d->fn(d) for each, newest first
 *
 * A reaper belongs to one thread (one loop): a worker's or the health
 * thread's. It holds no memory of its own; each object embeds its struct
 * defer (by convention as its first member, so that fn can cast back).
 */
#ifndef IMAPMUX_REAPER_H
#define IMAPMUX_REAPER_H

#include <stddef.h>

#include "list.h"

/* An object whose free must wait until no callback of it is on the stack. */
struct defer {
	struct list_node node;       /* on the reaper's dead list */
	void (*fn)(struct defer *d); /* frees the object holding d */
};

struct reaper {
	struct list_node dead; /* deferred, not yet freed (newest first) */
};

/* An empty reaper. */
void reaper_init(struct reaper *r);

/* Free d->fn(d) at the next reaper_run. d must not be deferred already. */
void reaper_defer(struct reaper *r, struct defer *d);

/* Free everything deferred, including what those frees defer in turn.
 * Returns how many objects were freed. */
size_t reaper_run(struct reaper *r);

#endif
