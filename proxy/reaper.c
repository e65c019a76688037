/*
 * reaper — deferred frees (see reaper.h).
 *
 * The list is a stack: reaper_defer pushes, reaper_run pops until empty, so
 * a free that defers another object (a session deferring its backend) is
 * served by the same run. Nothing here knows the objects' types.
 */
#include "reaper.h"

void reaper_init(struct reaper *r)
{
	list_init(&r->dead);
}

void reaper_defer(struct reaper *r, struct defer *d)
{
	list_push_front(&r->dead, &d->node);
}

size_t reaper_run(struct reaper *r)
{
	size_t n = 0;

	while (!list_empty(&r->dead)) {
		struct defer *d = list_first_entry(&r->dead, struct defer, node);

		list_remove(&d->node);
		d->fn(d);
		n++;
	}
	return n;
}
