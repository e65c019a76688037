/*
 * buf — a bounded byte queue with lazily allocated storage.
 *
 *   data: [ consumed | pending bytes | free ]
 *          0       start            end     cap
 *
 * Memory exists only while bytes are pending or a producer asked for room:
 * an idle connection holds no buffer (buf_release). The capacity is fixed at
 * init and never grows: a full buffer means "stop reading the source"
 * (back-pressure), never "allocate more".
 */
#ifndef IMAPMUX_BUF_H
#define IMAPMUX_BUF_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct buf {
	uint8_t *data;
	size_t start; /* first pending byte */
	size_t end;   /* one past the last pending byte */
	size_t cap;   /* fixed capacity */
};

/* Set up an empty buffer of capacity cap; allocates nothing yet. */
void buf_init(struct buf *b, size_t cap);

static inline size_t buf_len(const struct buf *b)
{
	return b->end - b->start;
}

static inline const uint8_t *buf_head(const struct buf *b)
{
	return b->data + b->start;
}

static inline bool buf_is_empty(const struct buf *b)
{
	return b->end == b->start;
}

/* Bytes that can still be added (after compaction). */
static inline size_t buf_room(const struct buf *b)
{
	return b->cap - buf_len(b);
}

/*
 * Make room at the tail: allocate if needed, move pending bytes to the front
 * if that gives more contiguous space. Returns a pointer to the free tail
 * and its size in *room_r (0 when full), or NULL when allocation failed.
 */
__attribute__((warn_unused_result)) uint8_t *buf_tail(struct buf *b, size_t *room_r);

/* Record n bytes written at the tail returned by buf_tail. */
void buf_produced(struct buf *b, size_t n);

/* Drop n pending bytes from the head. */
void buf_consume(struct buf *b, size_t n);

/* Append n bytes; returns 0, or -1 (nothing appended) if they do not fit. */
__attribute__((warn_unused_result)) int buf_append(struct buf *b, const void *p, size_t n);

/* Free the storage if nothing is pending. */
void buf_release(struct buf *b);

/* Free the storage and forget pending bytes. */
void buf_free(struct buf *b);

#endif
