/*
 * cmdq — internal commands of one backend connection (see cmdq.h).
 *
 * A command is one allocation: the wire bytes "tag text\r\n" follow its
 * header, so writing it is one append. A secret command's bytes past the
 * tag are wiped as soon as they are in the output buffer (the tag is kept
 * to match the answer), and the whole of it when freed; the output
 * buffer's storage is wiped once it has been sent (cmdq_wipe).
 */
#include "cmdq.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct cmdq_cmd {
	struct list_node node; /* on q->cmds */
	bk_cmd_cb *cb;
	void *arg;
	unsigned flags;
	bool sent;      /* written: in flight */
	size_t tag_len; /* the tag is wire[0..tag_len) */
	size_t len;     /* wire[0..len) = "tag text\r\n" */
	uint8_t wire[];
};

void cmdq_init(struct cmdq *q)
{
	list_init(&q->cmds);
	q->seq = 0;
	q->secret_out = false;
}

/* The head: the command in flight, or the oldest queued; NULL if none. */
static struct cmdq_cmd *cmdq_head(const struct cmdq *q)
{
	return list_first_entry(&q->cmds, struct cmdq_cmd, node);
}

bool cmdq_tag_reserved(const uint8_t *tag, size_t len)
{
	size_t n = sizeof(BK_TAG_PREFIX) - 1;

	return len >= n && imap_word_eq(tag, n, BK_TAG_PREFIX);
}

/* The next tag into tag[BK_TAG_MAX + 1]; its length. */
static size_t cmdq_next_tag(struct cmdq *q, char *tag)
{
	int n = snprintf(tag, BK_TAG_MAX + 1, "%s%lu", BK_TAG_PREFIX, ++q->seq);

	return n > 0 && (size_t)n <= BK_TAG_MAX ? (size_t)n : 0;
}

int cmdq_push(struct cmdq *q, const void *text, size_t len, unsigned flags, bk_cmd_cb *cb,
              void *arg)
{
	char tag[BK_TAG_MAX + 1];
	struct cmdq_cmd *c;
	size_t tlen;

	if (cb == NULL || len > BK_CMD_MAX - BK_TAG_MAX - 3)
		return -1;
	c = malloc(sizeof(*c) + BK_TAG_MAX + 1 + len + 2);
	if (c == NULL)
		return -1;
	tlen = cmdq_next_tag(q, tag);
	c->cb = cb;
	c->arg = arg;
	c->flags = flags;
	c->sent = false;
	c->tag_len = tlen;
	memcpy(c->wire, tag, tlen);
	c->wire[tlen] = ' ';
	if (len > 0)
		memcpy(c->wire + tlen + 1, text, len);
	memcpy(c->wire + tlen + 1 + len, "\r\n", 2);
	c->len = tlen + 1 + len + 2;
	list_push_back(&q->cmds, &c->node);
	return 0;
}

static void cmdq_free(struct cmdq_cmd **cp)
{
	struct cmdq_cmd *c = *cp;

	if (c == NULL)
		return;
	*cp = NULL;
	if (c->flags & BK_CMD_SECRET)
		explicit_bzero(c->wire, c->len);
	free(c);
}

/* Unlink the head (the command in flight, or the oldest queued). */
static struct cmdq_cmd *cmdq_pop(struct cmdq *q)
{
	struct cmdq_cmd *c = cmdq_head(q);

	if (c != NULL)
		list_remove(&c->node);
	return c;
}

int cmdq_write(struct cmdq *q, struct buf *out)
{
	struct cmdq_cmd *c = cmdq_head(q);

	if (c == NULL || c->sent || buf_room(out) < c->len)
		return -2;
	if (buf_append(out, c->wire, c->len) < 0)
		return -1;
	c->sent = true;
	if (c->flags & BK_CMD_SECRET) {
		/* The copy in out is the only one needed now. */
		explicit_bzero(c->wire + c->tag_len, c->len - c->tag_len);
		q->secret_out = true;
	}
	return 0;
}

bool cmdq_pending(const struct cmdq *q)
{
	return !list_empty(&q->cmds);
}

bool cmdq_in_flight(const struct cmdq *q)
{
	const struct cmdq_cmd *c = cmdq_head(q);

	return c != NULL && c->sent;
}

static enum bk_status cmdq_status(const struct imap_head *h)
{
	if (imap_word_eq(h->w1, h->w1_len, "OK"))
		return BK_ST_OK;
	if (imap_word_eq(h->w1, h->w1_len, "NO"))
		return BK_ST_NO;
	return BK_ST_BAD;
}

bool cmdq_dispatch(struct cmdq *q, struct backend *b, const struct imap_head *h,
                   const uint8_t *line, size_t len, bool partial)
{
	struct cmdq_cmd *c = cmdq_head(q);
	struct bk_reply r = {.head = h, .line = line, .len = len, .partial = partial};
	bool cont = h->tag_len == 1 && h->tag[0] == '+';
	bool untagged = h->tag_len == 1 && h->tag[0] == '*';

	if (c == NULL || !c->sent)
		return false;
	if (cont || untagged) {
		if (untagged && !(c->flags & BK_CMD_SWALLOW))
			return false;
		r.ev = cont ? BK_EV_CONTINUE : BK_EV_UNTAGGED;
		/* c stays queued: the handler may end everything, freeing it. */
		c->cb(c->arg, b, &r);
		return !(untagged && imap_word_eq(h->w1, h->w1_len, "BYE"));
	}
	if (h->tag_len != c->tag_len || memcmp(h->tag, c->wire, c->tag_len) != 0)
		return false;
	c = cmdq_pop(q);
	r.ev = BK_EV_DONE;
	r.status = cmdq_status(h);
	c->cb(c->arg, b, &r);
	cmdq_free(&c);
	return true;
}

int cmdq_answer(struct cmdq *q, struct backend *b, const uint8_t *p, size_t len, bool partial,
                struct imap_head *h_r)
{
	while (len > 0 && (p[len - 1] == '\n' || p[len - 1] == '\r'))
		len--;
	if (imap_head_parse(p, len, h_r) < 0)
		return -1;
	return cmdq_dispatch(q, b, h_r, p, len, partial) ? 1 : 0;
}

void cmdq_gone(struct cmdq *q, struct backend *b, const char *why)
{
	struct cmdq_cmd *c;

	while ((c = cmdq_pop(q)) != NULL) {
		struct bk_reply r = {.ev = BK_EV_GONE, .status = BK_ST_BAD, .why = why};

		c->cb(c->arg, b, &r);
		cmdq_free(&c);
	}
}

int cmdq_reply(struct cmdq *q, struct buf *out, const void *text, size_t len, unsigned flags)
{
	if (!cmdq_in_flight(q) || buf_room(out) < len + 2)
		return -1;
	if (buf_append(out, text, len) < 0 || buf_append(out, "\r\n", 2) < 0)
		return -1;
	if (flags & BK_CMD_SECRET)
		q->secret_out = true;
	return 0;
}

int cmdq_logout(struct cmdq *q, struct buf *out)
{
	char tag[BK_TAG_MAX + 1];
	size_t tlen = cmdq_next_tag(q, tag);

	if (buf_room(out) < tlen + 9 || buf_append(out, tag, tlen) < 0)
		return -1;
	return buf_append(out, " LOGOUT\r\n", 9);
}

void cmdq_wipe(struct cmdq *q, struct buf *out, bool always)
{
	if (!q->secret_out || (!always && !buf_is_empty(out)))
		return;
	if (out->data != NULL)
		explicit_bzero(out->data, out->cap);
	q->secret_out = false;
}
