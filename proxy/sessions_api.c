/*
 * sessions_api — GET /sessions: a snapshot of the instance's sessions, each
 * worker writing its own into a request the stats thread owns.
 *
 *   stats thread                         worker i (its own loop)
 *     sessions_req_new (ref 1)
 *     sessions_req_post ---slot i (ref+1), post(arg, i)--->  mailbox, ev_async
 *     waits (GATHERING, deadline)                            session_snapshot:
 *                                                              sessions_req_add x n
 *     notify <----- the last sessions_slot_done (ref-1) ----   sessions_slot_done
 *     sessions_render, sessions_req_release (ref-1)
 *
 * Invariants:
 *  - Every field of a request after sessions_req_new is under its lock;
 *    rows are copies, never pointers into a worker's sessions.
 *  - A request is freed by whoever drops the last reference: the stats
 *    thread (answered, timed out, client gone) or a worker answering late
 *    or never (sessions_slot_drop at its end). After sessions_req_release
 *    no notify is called, so the stats thread's watcher may go.
 *  - An answer is bounded: at most cap rows (SESSIONS_MAX) are kept and at
 *    most SESSIONS_MAX_BYTES of them rendered; what is left out makes
 *    "truncated" true, never a longer answer.
 *  - Nothing a client or a user controls reaches the text unescaped.
 */
#include "sessions_api.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "metrics.h"

#ifndef IMAPMUX_VERSION
#define IMAPMUX_VERSION "0.1.0" /* as in sess.h */
#endif

struct sessions_req {
	pthread_mutex_t lock;
	unsigned refs;
	void (*notify)(void *arg); /* NULL once released */
	void *notify_arg;
	uint8_t user[IDENT_USER_MAX]; /* the filter, as the client wrote it */
	size_t ulen;
	bool has_user;
	struct sessions_row *rows; /* grown on demand up to cap */
	size_t nrows, rows_cap, cap;
	bool truncated;
	unsigned nslots, nanswered;
	bool *answered; /* [nslots] */
	struct sessions_slot *slots;
};

/* Set by the main thread before the stats thread starts (pthread_create
 * orders it), read-only afterwards. */
static struct {
	sessions_post_fn *post;
	void *arg;
	unsigned n;
} src;

void sessions_api_set_workers(sessions_post_fn *post, void *arg, unsigned n)
{
	src.post = post;
	src.arg = arg;
	src.n = post != NULL ? n : 0;
}

static void req_free(struct sessions_req *rq)
{
	pthread_mutex_destroy(&rq->lock);
	free(rq->rows);
	free(rq->answered);
	free(rq->slots);
	free(rq);
}

/* Drop one reference; called with rq->lock held, which it releases. */
static void req_unref_locked(struct sessions_req *rq)
{
	bool last = --rq->refs == 0;

	pthread_mutex_unlock(&rq->lock);
	if (last)
		req_free(rq);
}

struct sessions_req *sessions_req_new(size_t cap, const uint8_t *user, size_t ulen, bool has_user,
                                      void (*notify)(void *arg), void *arg)
{
	struct sessions_req *rq = calloc(1, sizeof(*rq));
	unsigned n = src.n;

	if (rq == NULL)
		return NULL;
	rq->slots = calloc(n ? n : 1, sizeof(*rq->slots));
	rq->answered = calloc(n ? n : 1, sizeof(*rq->answered));
	if (rq->slots == NULL || rq->answered == NULL || pthread_mutex_init(&rq->lock, NULL) != 0) {
		free(rq->slots);
		free(rq->answered);
		free(rq);
		return NULL;
	}
	rq->refs = 1;
	rq->notify = notify;
	rq->notify_arg = arg;
	rq->cap = cap < 1 ? 1 : cap > SESSIONS_MAX ? SESSIONS_MAX : cap;
	rq->has_user = has_user;
	if (has_user) {
		rq->ulen = ulen > IDENT_USER_MAX ? IDENT_USER_MAX : ulen;
		memcpy(rq->user, user, rq->ulen);
	}
	rq->nslots = n;
	for (unsigned i = 0; i < n; i++) {
		list_init(&rq->slots[i].node);
		rq->slots[i].rq = rq;
		rq->slots[i].index = i;
	}
	return rq;
}

void sessions_req_post(struct sessions_req *rq)
{
	pthread_mutex_lock(&rq->lock);
	rq->refs += rq->nslots;
	pthread_mutex_unlock(&rq->lock);
	for (unsigned i = 0; i < rq->nslots; i++)
		src.post(src.arg, i, &rq->slots[i]);
}

void sessions_req_release(struct sessions_req **rqp)
{
	struct sessions_req *rq = *rqp;

	if (rq == NULL)
		return;
	*rqp = NULL;
	pthread_mutex_lock(&rq->lock);
	rq->notify = NULL;
	req_unref_locked(rq);
}

bool sessions_req_complete(struct sessions_req *rq)
{
	bool done;

	pthread_mutex_lock(&rq->lock);
	done = rq->nanswered == rq->nslots;
	pthread_mutex_unlock(&rq->lock);
	return done;
}

bool sessions_req_filter(struct sessions_req *rq, uint8_t *user_r, size_t *ulen_r)
{
	bool has;

	pthread_mutex_lock(&rq->lock);
	has = rq->has_user;
	memcpy(user_r, rq->user, rq->ulen);
	*ulen_r = rq->ulen;
	pthread_mutex_unlock(&rq->lock);
	return has;
}

int sessions_req_add(struct sessions_req *rq, const struct sessions_row *row)
{
	int rc = -1;

	pthread_mutex_lock(&rq->lock);
	if (rq->nrows == rq->cap) {
		rq->truncated = true;
		goto out;
	}
	if (rq->nrows == rq->rows_cap) {
		size_t ncap = rq->rows_cap ? rq->rows_cap * 2 : 64;
		struct sessions_row *p;

		if (ncap > rq->cap)
			ncap = rq->cap;
		p = realloc(rq->rows, ncap * sizeof(*p));
		if (p == NULL) {
			rq->truncated = true;
			goto out;
		}
		rq->rows = p;
		rq->rows_cap = ncap;
	}
	rq->rows[rq->nrows++] = *row;
	rc = 0;
out:
	pthread_mutex_unlock(&rq->lock);
	return rc;
}

static void slot_finish(struct sessions_slot *slot, bool answered)
{
	struct sessions_req *rq = slot->rq;

	pthread_mutex_lock(&rq->lock);
	if (answered && !rq->answered[slot->index]) {
		rq->answered[slot->index] = true;
		if (++rq->nanswered == rq->nslots && rq->notify != NULL)
			rq->notify(rq->notify_arg);
	}
	req_unref_locked(rq);
}

void sessions_slot_done(struct sessions_slot *slot)
{
	slot_finish(slot, true);
}

void sessions_slot_drop(struct sessions_slot *slot)
{
	slot_finish(slot, false);
}

/* ---- rendering ---------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s[0..len) (RFC 3629: no overlong
 * forms, no surrogates, nothing past U+10FFFF), or 0. */
static size_t utf8_seq(const uint8_t *s, size_t len)
{
	uint8_t c = s[0];
	size_t n;
	uint8_t lo = 0x80, hi = 0xbf;

	if (c >= 0xc2 && c <= 0xdf)
		n = 2;
	else if (c >= 0xe0 && c <= 0xef)
		n = 3;
	else if (c >= 0xf0 && c <= 0xf4)
		n = 4;
	else
		return 0;
	if (c == 0xe0)
		lo = 0xa0;
	else if (c == 0xed)
		hi = 0x9f;
	else if (c == 0xf0)
		lo = 0x90;
	else if (c == 0xf4)
		hi = 0x8f;
	if (len < n || s[1] < lo || s[1] > hi)
		return 0;
	for (size_t i = 2; i < n; i++) {
		if (s[i] < 0x80 || s[i] > 0xbf)
			return 0;
	}
	return n;
}

void sessions_json_str(struct text *t, const uint8_t *s, size_t len)
{
	size_t i = 0;

	text_append(t, "\"", 1);
	while (i < len) {
		size_t start = i, n;
		uint8_t c;

		while (i < len && s[i] >= 0x20 && s[i] < 0x7f && s[i] != '"' && s[i] != '\\')
			i++;
		text_append(t, s + start, i - start);
		if (i == len)
			break;
		c = s[i];
		if (c == '"' || c == '\\') {
			char esc[2] = {'\\', (char)c};

			text_append(t, esc, 2);
			i++;
		} else if (c < 0x20 || c == 0x7f) {
			text_printf(t, "\\u%04x", c);
			i++;
		} else if ((n = utf8_seq(s + i, len - i)) > 0) {
			text_append(t, s + i, n);
			i += n;
		} else {
			text_append(t, "\\ufffd", 6);
			i++;
		}
	}
	text_append(t, "\"", 1);
}

static void json_cstr(struct text *t, const char *s)
{
	sessions_json_str(t, (const uint8_t *)s, strlen(s));
}

static int row_cmp(const void *a, const void *b)
{
	const struct sessions_row *x = a, *y = b;

	return x->id < y->id ? -1 : x->id > y->id;
}

static void row_render(struct text *t, const struct sessions_row *r)
{
	text_printf(t, "{\"id\":\"S-%lu\",\"worker\":%d,\"client\":", r->id, r->worker);
	json_cstr(t, r->client);
	text_append(t, ",\"listener\":", 12);
	json_cstr(t, r->listener);
	text_append(t, ",\"tls\":", 7);
	json_cstr(t, r->tls);
	text_printf(t, ",\"state\":\"%s\",\"in_idle\":%s,\"user\":", r->state,
	            r->in_idle ? "true" : "false");
	if (r->user_len > 0)
		sessions_json_str(t, r->user, r->user_len);
	else
		text_append(t, "null", 4);
	text_append(t, ",\"backend\":", 11);
	if (r->backend[0] != '\0')
		json_cstr(t, r->backend);
	else
		text_append(t, "null", 4);
	text_printf(t, ",\"since\":%.0f,\"idle\":%.0f}", r->since, r->idle < 0 ? 0. : r->idle);
}

void sessions_render(struct text *t, struct sessions_req *rq, double start_time)
{
	bool truncated, first = true;

	pthread_mutex_lock(&rq->lock);
	text_printf(t, "{\"instance\":{\"version\":");
	json_cstr(t, IMAPMUX_VERSION);
	text_printf(t,
	            ",\"pid\":%ld,\"started\":%.0f,\"workers\":%u,\"answered\":%u,\"unanswered\":[",
	            (long)getpid(), start_time, rq->nslots, rq->nanswered);
	for (unsigned i = 0; i < rq->nslots; i++) {
		if (!rq->answered[i]) {
			text_printf(t, "%s%u", first ? "" : ",", i);
			first = false;
		}
	}
	text_append(t, "]},\"sessions\":[", 15);
	if (rq->nrows > 1)
		qsort(rq->rows, rq->nrows, sizeof(*rq->rows), row_cmp);
	truncated = rq->truncated;
	size_t base = t->len;
	for (size_t i = 0; i < rq->nrows; i++) {
		size_t before = t->len;

		if (i > 0)
			text_append(t, ",", 1);
		row_render(t, &rq->rows[i]);
		if (t->len - base > SESSIONS_MAX_BYTES) {
			t->len = before; /* this row is one too many */
			truncated = true;
			break;
		}
	}
	text_printf(t, "],\"truncated\":%s}\n", truncated ? "true" : "false");
	pthread_mutex_unlock(&rq->lock);
}

/* ---- the query ---------------------------------------------------------- */

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Percent-decode [p, end) into out (room for max bytes); the length, or
 * -1: a bad escape, too long, or a NUL. */
static long pct_decode(const char *p, const char *end, uint8_t *out, size_t max)
{
	size_t n = 0;

	while (p < end) {
		int c = (unsigned char)*p++;

		if (c == '%') {
			int hi, lo;

			if (end - p < 2 || (hi = hexval(p[0])) < 0 || (lo = hexval(p[1])) < 0)
				return -1;
			c = hi * 16 + lo;
			p += 2;
		} else if (c == '+') {
			c = ' ';
		}
		if (c == 0 || n == max)
			return -1;
		out[n++] = (uint8_t)c;
	}
	return (long)n;
}

int sessions_query_parse(const char *q, size_t len, uint8_t *user_r, size_t *ulen_r,
                         bool *has_user_r, char *err, size_t errlen)
{
	const char *p = q, *end = q + len;

	*has_user_r = false;
	*ulen_r = 0;
	while (p < end) {
		const char *amp = memchr(p, '&', (size_t)(end - p));
		const char *pe = amp != NULL ? amp : end;
		const char *eq = memchr(p, '=', (size_t)(pe - p));
		long n;

		if (pe == p) { /* "a&&b", a trailing '&' */
			p = pe + 1;
			continue;
		}
		if (eq == NULL || eq - p != 4 || memcmp(p, "user", 4) != 0) {
			int klen = (int)((eq != NULL ? eq : pe) - p);

			snprintf(
			    err, errlen,
			    "unknown query parameter '%.*s': GET /sessions takes only user=NAME",
			    klen > 64 ? 64 : klen, p);
			/* The name came from the client: keep the body printable. */
			for (char *e = err; *e != '\0'; e++) {
				if ((unsigned char)*e < 0x20 || (unsigned char)*e >= 0x7f)
					*e = '?';
			}
			return -1;
		}
		if (*has_user_r) {
			snprintf(err, errlen, "user= given more than once");
			return -1;
		}
		n = pct_decode(eq + 1, pe, user_r, IDENT_USER_MAX);
		if (n == 0) {
			snprintf(err, errlen, "user= needs a name");
			return -1;
		}
		if (n < 0) {
			snprintf(err, errlen,
			         "user= is not a percent-encoded name of 1 to %d bytes without NUL",
			         IDENT_USER_MAX);
			return -1;
		}
		*ulen_r = (size_t)n;
		*has_user_r = true;
		p = pe == end ? end : pe + 1;
	}
	return 0;
}
