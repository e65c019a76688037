/*
 * buf — see buf.h. Storage is malloc'd on first use and freed again by
 * buf_release when empty, so that thousands of idle sessions cost no
 * buffer memory.
 */
#include "buf.h"

#include <stdlib.h>
#include <string.h>

void buf_init(struct buf *b, size_t cap)
{
	b->data = NULL;
	b->start = 0;
	b->end = 0;
	b->cap = cap;
}

uint8_t *buf_tail(struct buf *b, size_t *room_r)
{
	if (b->data == NULL) {
		b->data = malloc(b->cap);
		if (b->data == NULL) {
			*room_r = 0;
			return NULL;
		}
		b->start = b->end = 0;
	}
	if (b->start == b->end) {
		b->start = b->end = 0;
	} else if (b->start > 0 && b->cap - b->end < b->cap / 2) {
		memmove(b->data, b->data + b->start, b->end - b->start);
		b->end -= b->start;
		b->start = 0;
	}
	*room_r = b->cap - b->end;
	return b->data + b->end;
}

void buf_produced(struct buf *b, size_t n)
{
	b->end += n;
}

void buf_consume(struct buf *b, size_t n)
{
	b->start += n;
	if (b->start == b->end)
		b->start = b->end = 0;
}

int buf_append(struct buf *b, const void *p, size_t n)
{
	size_t room;
	uint8_t *t;

	if (n > buf_room(b))
		return -1;
	t = buf_tail(b, &room);
	if (t == NULL)
		return -1;
	if (room < n) {
		/* buf_tail compacts only when it pays off; force it here. */
		memmove(b->data, b->data + b->start, b->end - b->start);
		b->end -= b->start;
		b->start = 0;
		t = b->data + b->end;
	}
	memcpy(t, p, n);
	b->end += n;
	return 0;
}

void buf_release(struct buf *b)
{
	if (b->data != NULL && b->start == b->end) {
		free(b->data);
		b->data = NULL;
		b->start = b->end = 0;
	}
}

void buf_free(struct buf *b)
{
	free(b->data);
	b->data = NULL;
	b->start = b->end = 0;
}
