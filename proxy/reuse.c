/*
 * reuse — kept backend sessions (see reuse.h).
 *
 * Invariants:
 *   - an entry owns its backend and is the only user of its conn callbacks
 *     while in the cache; reuse_take hands both back and forgets the entry;
 *   - an entry is on the worker's list from park to close; it is freed
 *     through the worker's reaper, never inside its own callbacks;
 *   - only a KEPT entry (the reset answered OK) can be taken.
 */
#include "reuse.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "imap_args.h"
#include "log.h"

enum entry_state {
	ENTRY_RESETTING, /* "R UNSELECT" sent, waiting for its tagged answer */
	ENTRY_KEPT,      /* authenticated, nothing selected: can be taken */
	ENTRY_DEAD,      /* closed; waiting for the reaper */
};

struct reuse_entry {
	struct defer defer; /* first: the reaper frees through it */
	struct reuse_entry *prev, *next;
	struct worker *w;
	struct runtime *rt;
	struct backend *b;
	enum entry_state state;
	uint8_t key[REUSE_KEY_LEN];
	uint8_t user[256];
	size_t ulen;
	struct imap_tok tok;
	ev_timer timer;
};

static uint8_t secret[32];
static pthread_once_t secret_once = PTHREAD_ONCE_INIT;

static void secret_init(void)
{
	if (getrandom(secret, sizeof(secret), 0) != (ssize_t)sizeof(secret))
		log_error("reuse: no random secret; session reuse keys are weaker");
}

void reuse_key(const char *backend, const uint8_t *user, size_t ulen, const uint8_t *sec,
               size_t slen, uint8_t key_r[REUSE_KEY_LEN])
{
	size_t blen = strlen(backend), n = blen + 1 + ulen + 1 + slen;
	uint8_t *msg = malloc(n);
	unsigned int mdlen = REUSE_KEY_LEN;

	pthread_once(&secret_once, secret_init);
	if (msg == NULL) {
		/* Unique garbage: never equal to a real key. */
		(void)getrandom(key_r, REUSE_KEY_LEN, 0);
		return;
	}
	memcpy(msg, backend, blen + 1);
	memcpy(msg + blen + 1, user, ulen);
	msg[blen + 1 + ulen] = '\0';
	memcpy(msg + blen + 2 + ulen, sec, slen);
	if (HMAC(EVP_sha256(), secret, sizeof(secret), msg, n, key_r, &mdlen) == NULL)
		(void)getrandom(key_r, REUSE_KEY_LEN, 0);
	explicit_bzero(msg, n);
	free(msg);
}

static void entry_reap(struct defer *d)
{
	struct reuse_entry *e = (struct reuse_entry *)d;

	backend_destroy(&e->b);
	runtime_unref(&e->rt);
	free(e);
}

static void entry_unlink(struct reuse_entry *e)
{
	struct worker *w = e->w;

	if (e->prev != NULL)
		e->prev->next = e->next;
	else
		w->reuse = e->next;
	if (e->next != NULL)
		e->next->prev = e->prev;
	e->prev = e->next = NULL;
}

static void entry_close(struct reuse_entry *e, const char *why)
{
	if (e->state == ENTRY_DEAD)
		return;
	log_debug("reuse: dropping a kept session of backend %s: %s", e->b->cfg->name, why);
	/* Be polite when the connection still works: one best-effort write. */
	if (!e->b->conn.error && !e->b->conn.eof &&
	    buf_append(&e->b->conn.out, "Z LOGOUT\r\n", 10) == 0)
		(void)conn_flush(&e->b->conn);
	e->state = ENTRY_DEAD;
	ev_timer_stop(e->w->loop, &e->timer);
	conn_stop(&e->b->conn);
	entry_unlink(e);
	e->defer.fn = entry_reap;
	worker_defer(e->w, &e->defer);
}

static void entry_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct reuse_entry *e = t->data;

	(void)loop;
	(void)revents;
	entry_close(e, e->state == ENTRY_RESETTING ? "reset timed out" : "reuse_ttl passed");
}

/* One complete line from the kept backend. */
static void entry_line(struct reuse_entry *e, const uint8_t *p, size_t len)
{
	struct imap_head h;

	if (imap_head_parse(p, len, &h) < 0) {
		entry_close(e, "bad response");
		return;
	}
	if (h.tag_len == 1 && h.tag[0] == '*') {
		if (imap_word_eq(h.w1, h.w1_len, "BYE"))
			entry_close(e, "backend said BYE");
		return; /* other untagged data has nobody to go to */
	}
	if (e->state == ENTRY_RESETTING && imap_word_eq(h.tag, h.tag_len, "R")) {
		if (!imap_word_eq(h.w1, h.w1_len, "OK")) {
			entry_close(e, "UNSELECT refused");
			return;
		}
		e->state = ENTRY_KEPT;
		ev_timer_stop(e->w->loop, &e->timer);
		ev_timer_set(&e->timer, e->b->cfg->reuse_ttl, 0.);
		ev_timer_start(e->w->loop, &e->timer);
		return;
	}
	entry_close(e, "unexpected response");
}

static void entry_io(struct conn *c, void *arg)
{
	struct reuse_entry *e = arg;
	int progress;

	do {
		progress = 0;
		int rr = conn_read(c);
		int wr = conn_flush(c);
		if (rr < 0 || wr < 0) {
			entry_close(e, c->errmsg ? c->errmsg : "I/O error");
			return;
		}
		progress = rr | wr;
		while (e->state != ENTRY_DEAD && !buf_is_empty(&c->in)) {
			struct imap_tok_unit u;
			int r = imap_tok_next(&e->tok, buf_head(&c->in), buf_len(&c->in), &u);
			if (r == -2)
				break;
			if (r < 0 || u.type != IMAP_TOK_LINE || !u.first || !u.last) {
				/* Literals (a late FETCH?) have no reader: give up. */
				entry_close(e, "unexpected data");
				return;
			}
			entry_line(e, buf_head(&c->in), u.len);
			imap_tok_consume(&e->tok, &u, u.len);
			buf_consume(&c->in, u.len);
		}
		if (e->state == ENTRY_DEAD)
			return;
		if (c->eof) {
			entry_close(e, "closed by backend");
			return;
		}
	} while (progress);
	conn_update(c);
	if (buf_is_empty(&c->in) && buf_is_empty(&c->out))
		conn_release_buffers(c);
}

void reuse_park(struct worker *w, struct runtime *rt, struct backend *b,
                const uint8_t key[REUSE_KEY_LEN], const uint8_t *user, size_t ulen,
                bool need_unselect)
{
	struct reuse_entry *e = calloc(1, sizeof(*e));
	struct imap_tok_limits lim = {.max_line = 16 * 1024};

	if (e == NULL || ulen > sizeof(e->user)) {
		free(e);
		backend_destroy_later(w, &b);
		return;
	}
	e->w = w;
	e->rt = runtime_ref(rt);
	e->b = b;
	memcpy(e->key, key, REUSE_KEY_LEN);
	memcpy(e->user, user, ulen);
	e->ulen = ulen;
	imap_tok_init(&e->tok, IMAP_TOK_RESPONSES, &lim);
	ev_init(&e->timer, entry_timeout);
	e->timer.data = e;
	e->next = w->reuse;
	if (w->reuse != NULL)
		w->reuse->prev = e;
	w->reuse = e;
	backend_attach(b, entry_io, e);
	b->conn.want_input = true;
	if (need_unselect) {
		e->state = ENTRY_RESETTING;
		if (buf_append(&b->conn.out, "R UNSELECT\r\n", 12) < 0) {
			entry_close(e, "output full");
			return;
		}
		ev_timer_set(&e->timer, b->cfg->command_timeout, 0.);
	} else {
		e->state = ENTRY_KEPT;
		ev_timer_set(&e->timer, b->cfg->reuse_ttl, 0.);
	}
	ev_timer_start(w->loop, &e->timer);
	/* Bytes may already wait in the buffers: run from a fresh callback. */
	ev_feed_event(w->loop, &b->conn.wio, EV_WRITE);
	conn_update(&b->conn);
}

struct backend *reuse_take(struct worker *w, const struct cfg_backend *b_cfg,
                           const uint8_t key[REUSE_KEY_LEN])
{
	for (struct reuse_entry *e = w->reuse; e != NULL; e = e->next) {
		struct backend *b = e->b;

		if (e->state != ENTRY_KEPT || strcmp(b->cfg->name, b_cfg->name) != 0 ||
		    b->cfg->addr.len != b_cfg->addr.len ||
		    memcmp(&b->cfg->addr.ss, &b_cfg->addr.ss, b_cfg->addr.len) != 0 ||
		    CRYPTO_memcmp(e->key, key, REUSE_KEY_LEN) != 0)
			continue;
		if (b->conn.error || b->conn.eof || !buf_is_empty(&b->conn.in))
			continue; /* the next callback closes it */
		ev_timer_stop(w->loop, &e->timer);
		conn_stop(&b->conn);
		ev_clear_pending(w->loop, &b->conn.rio);
		ev_clear_pending(w->loop, &b->conn.wio);
		e->b = NULL;
		e->state = ENTRY_DEAD;
		entry_unlink(e);
		e->defer.fn = entry_reap;
		worker_defer(w, &e->defer);
		b->cfg = b_cfg; /* the entry's runtime may go with the entry */
		return b;
	}
	return NULL;
}

void reuse_drop_user(struct worker *w, const char *user, size_t ulen)
{
	struct reuse_entry *e, *next;

	for (e = w->reuse; e != NULL; e = next) {
		next = e->next;
		if (e->ulen == ulen && memcmp(e->user, user, ulen) == 0)
			entry_close(e, "user kicked");
	}
}

void reuse_drop_all(struct worker *w)
{
	while (w->reuse != NULL)
		entry_close(w->reuse, "shutting down");
}

bool reuse_evict_one(struct worker *w, const char *backend)
{
	struct reuse_entry *e, *oldest = NULL;

	/* New entries go to the head: the last match is the oldest. */
	for (e = w->reuse; e != NULL; e = e->next) {
		if (e->state == ENTRY_KEPT && strcmp(e->b->cfg->name, backend) == 0)
			oldest = e;
	}
	if (oldest == NULL)
		return false;
	entry_close(oldest, "connection needed for another login (pool_max)");
	return true;
}
