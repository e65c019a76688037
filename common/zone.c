/*
 * zone — see zone.h.
 *
 * A block: its header, then slots of one size, handed out from a free
 * list (slots given back) or, while there are never-used ones, from the
 * bump offset, so that a block's untouched pages stay untouched (not
 * resident). Blocks with a free slot are on their class's `room` list,
 * full ones on no list.
 */
#include "zone.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "list.h"

static const uint16_t class_size[] = {16,  32,  48,  64,  96,   128,  160,  192,  256,  320,
                                      384, 512, 640, 768, 1024, 1280, 1536, 1792, 1920, 2048};
#define NCLASS (sizeof(class_size) / sizeof(class_size[0]))

struct zclass;

struct zblock {
	struct list_node node; /* on cls->room while a slot is free */
	struct zclass *cls;
	void *free;     /* given-back slots, linked through their first bytes */
	uint32_t used;  /* slots in use */
	uint32_t bump;  /* offset of the first never-used slot */
	uint32_t slots; /* slots in the block */
	bool on_room;
};

#define ZBLOCK_HDR 64 /* header, rounded up; slots start here (16-aligned) */
_Static_assert(sizeof(struct zblock) <= ZBLOCK_HDR, "zone block header too big");

struct zclass {
	struct list_node room;
	size_t blocks;
	size_t empty; /* blocks with no slot used (at most one kept) */
	uint16_t size;
	bool init;
};

static bool enabled;
/* Across threads, for /metrics: bytes of blocks mapped, of slots in use. */
static atomic_size_t bytes_mapped, bytes_used;
static _Thread_local struct zclass classes[NCLASS];

/* The sanitizers must see every object: the zone stays off under them. */
#if defined(__SANITIZE_ADDRESS__)
#define ZONE_SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define ZONE_SANITIZED 1
#endif
#endif

void zone_enable(void)
{
#ifndef ZONE_SANITIZED
	enabled = true;
#endif
}

bool zone_enabled(void)
{
	return enabled;
}

static struct zclass *class_of(size_t n)
{
	size_t i = 0;

	while (class_size[i] < n)
		i++;
	struct zclass *c = &classes[i];
	if (!c->init) {
		list_init(&c->room);
		c->size = class_size[i];
		c->init = true;
	}
	return c;
}

static struct zblock *block_new(struct zclass *c)
{
	/* Twice the size, then the unaligned head and tail unmapped. */
	uint8_t *m =
	    mmap(NULL, 2 * ZONE_BLOCK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	uintptr_t a;
	struct zblock *b;

	if (m == MAP_FAILED)
		return NULL;
	a = ((uintptr_t)m + ZONE_BLOCK - 1) & ~(uintptr_t)(ZONE_BLOCK - 1);
	if (a > (uintptr_t)m)
		munmap(m, a - (uintptr_t)m);
	if ((uintptr_t)m + 2 * ZONE_BLOCK > a + ZONE_BLOCK)
		munmap((void *)(a + ZONE_BLOCK), (uintptr_t)m + 2 * ZONE_BLOCK - (a + ZONE_BLOCK));
	b = (struct zblock *)a;
	b->cls = c;
	b->free = NULL;
	b->used = 0;
	b->bump = ZBLOCK_HDR;
	b->slots = (ZONE_BLOCK - ZBLOCK_HDR) / c->size;
	list_push_front(&c->room, &b->node);
	b->on_room = true;
	c->blocks++;
	c->empty++;
	atomic_fetch_add_explicit(&bytes_mapped, ZONE_BLOCK, memory_order_relaxed);
	return b;
}

static struct zblock *block_of(const void *p)
{
	return (struct zblock *)((uintptr_t)p & ~(uintptr_t)(ZONE_BLOCK - 1));
}

void *zalloc(size_t n)
{
	struct zclass *c;
	struct zblock *b;
	void *p;

	if (!enabled || n > ZONE_MAX)
		return calloc(1, n ? n : 1);
	c = class_of(n ? n : 1);
	b = list_empty(&c->room) ? block_new(c) : list_entry(c->room.next, struct zblock, node);
	if (b == NULL)
		return NULL;
	if (b->free != NULL) {
		p = b->free;
		memcpy(&b->free, p, sizeof(void *));
	} else {
		p = (uint8_t *)b + b->bump;
		b->bump += c->size;
	}
	if (b->used++ == 0)
		c->empty--;
	if (b->used == b->slots) {
		list_remove(&b->node);
		b->on_room = false;
	}
	memset(p, 0, c->size);
	atomic_fetch_add_explicit(&bytes_used, c->size, memory_order_relaxed);
	return p;
}

void zfree(void *p, size_t n)
{
	struct zblock *b;
	struct zclass *c;

	if (p == NULL)
		return;
	if (!enabled || n > ZONE_MAX) {
		free(p);
		return;
	}
	b = block_of(p);
	c = b->cls;
	memcpy(p, &b->free, sizeof(void *));
	b->free = p;
	atomic_fetch_sub_explicit(&bytes_used, c->size, memory_order_relaxed);
	if (!b->on_room) {
		list_push_front(&c->room, &b->node);
		b->on_room = true;
	}
	if (--b->used > 0)
		return;
	if (++c->empty > 1) {
		list_remove(&b->node);
		c->blocks--;
		c->empty--;
		munmap(b, ZONE_BLOCK);
		atomic_fetch_sub_explicit(&bytes_mapped, ZONE_BLOCK, memory_order_relaxed);
	}
}

void *zrealloc(void *p, size_t old, size_t n)
{
	void *q;

	if (p == NULL)
		return zalloc(n);
	if (!enabled || (old > ZONE_MAX && n > ZONE_MAX)) {
		q = realloc(p, n ? n : 1);
		if (q != NULL && n > old)
			memset((uint8_t *)q + old, 0, n - old);
		return q;
	}
	if (old <= ZONE_MAX && n <= ZONE_MAX && class_of(old ? old : 1) == class_of(n ? n : 1)) {
		if (n < old)
			memset((uint8_t *)p + n, 0, old - n);
		return p;
	}
	q = zalloc(n);
	if (q == NULL)
		return NULL;
	memcpy(q, p, old < n ? old : n);
	zfree(p, old);
	return q;
}

size_t zone_blocks(void)
{
	size_t n = 0;

	for (size_t i = 0; i < NCLASS; i++)
		n += classes[i].blocks;
	return n;
}

void zone_stats(size_t *mapped, size_t *used)
{
	*mapped = atomic_load_explicit(&bytes_mapped, memory_order_relaxed);
	*used = atomic_load_explicit(&bytes_used, memory_order_relaxed);
}
