/*
 * zone — a home for the small objects a session keeps for its whole life
 * (the session, its mailbox model, its parking state, its TLS keys), away
 * from malloc's heap.
 *
 * Why: a TLS handshake allocates about 14 KB in many small pieces; when a
 * parked session frees its SSL object, the holes are given back to the
 * system (malloc_trim) only where whole pages came free. Long-lived
 * objects allocated among them, even a 32-byte mailbox name, pin those
 * pages: measured, 3000 parked sessions kept 6 KB of freed memory resident
 * each. Objects from a zone sit packed in blocks of their own, so a parked
 * session costs its live bytes and the handshake's pages go back whole.
 *
 *   zalloc(n): n <= ZONE_MAX: a slot of n's size class (16 .. 2048 bytes)
 *              in a 64 KiB block (mmap, aligned: a slot finds its block by
 *              its address) with room, else a new block; zeroed.
 *              n > ZONE_MAX: calloc.
 *   zfree(p, n): n as given to zalloc (or zrealloc); a block with no slot
 *              used is unmapped, keeping one spare per class.
 *
 * One set of classes per thread (a worker's objects live and die on it);
 * a slot must be freed by the thread that allocated it. Off until
 * zone_enable() (imapmux calls it first thing, unless built with the
 * sanitizers, which must see every object): then zalloc is calloc and
 * zfree free, so unit tests and valgrind check these objects as any other.
 */
#ifndef IMAPMUX_ZONE_H
#define IMAPMUX_ZONE_H

#include <stdbool.h>
#include <stddef.h>

#define ZONE_MAX   2048
#define ZONE_BLOCK (64 * 1024)

/* Before any zalloc, and before threads start. */
void zone_enable(void);
bool zone_enabled(void);

void *zalloc(size_t n);
void zfree(void *p, size_t n);
/* Like realloc: the first min(old, n) bytes kept; p NULL (old 0) allocates.
 * NULL on no memory (p still valid). Bytes past old are zero. */
void *zrealloc(void *p, size_t old, size_t n);

/* Blocks mapped by this thread's classes (for tests). */
size_t zone_blocks(void);

/* All threads: bytes of blocks mapped, and of slots in use (their size
 * classes' bytes), for /metrics. */
void zone_stats(size_t *mapped, size_t *used);

#endif
