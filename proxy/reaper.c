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
	r->dead = NULL;
}

void reaper_defer(struct reaper *r, struct defer *d)
{
	d->next = r->dead;
	r->dead = d;
}

size_t reaper_run(struct reaper *r)
{
	size_t n = 0;

	while (r->dead != NULL) {
		struct defer *d = r->dead;

		r->dead = d->next;
		d->next = NULL;
		d->fn(d);
		n++;
	}
	return n;
}
