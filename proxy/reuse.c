/*
 * reuse — kept backend sessions (see reuse.h).
 *
 * A kept backend is HELD (backend.h): backend.c reads its stream, drops
 * what nobody asked for, and reports its end to the entry (entry_gone);
 * the reset is an internal command (backend_cmd) whose answer comes to
 * entry_reset_done. This file parses nothing.
 *
 * Invariants:
 *   - an entry owns its backend while in the cache; reuse_take hands it
 *     back and forgets the entry;
 *   - an entry is on the worker's list (newest first: eviction takes the
 *     oldest) and in its index (w->reuse_idx, hashed by the key, which is
 *     a keyed hash already: logins find their session in O(1)) from park
 *     to close; it is freed
 *     through the worker's reaper, never inside its own callbacks, and its
 *     backend likewise (backend_logout_and_destroy_later);
 *   - only a KEPT entry (the reset answered OK) can be taken.
 */
#include "reuse.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "log.h"

enum entry_state {
	ENTRY_RESETTING, /* UNSELECT queued, waiting for its tagged answer */
	ENTRY_KEPT,      /* authenticated, nothing selected: can be taken */
	ENTRY_DEAD,      /* closed; waiting for the reaper */
};

struct reuse_entry {
	struct defer defer;     /* first: the reaper frees through it */
	struct list_node node;  /* on w->reuse, newest first */
	struct hmap_node hnode; /* in w->reuse_idx, by key */
	struct worker *w;
	struct runtime *rt;
	struct backend *b;
	enum entry_state state;
	uint8_t key[REUSE_KEY_LEN];
	uint8_t user[256];
	size_t ulen;
	ev_timer timer;
};

static uint8_t secret[32];
static pthread_once_t secret_once = PTHREAD_ONCE_INIT;

static void secret_init(void)
{
	if (getrandom(secret, sizeof(secret), 0) != (ssize_t)sizeof(secret))
		log_error("reuse: no random secret; session reuse keys are weaker");
}

/* A key no other will equal (a kept session is then neither stored under
 * it nor found): random, and unique among these by a counter even if the
 * random bytes cannot be had. */
static void unmatchable_key(uint8_t key_r[REUSE_KEY_LEN])
{
	static atomic_ulong count;
	unsigned long n = atomic_fetch_add(&count, 1);

	if (getrandom(key_r, REUSE_KEY_LEN, 0) != (ssize_t)REUSE_KEY_LEN)
		memset(key_r, 0xa5, REUSE_KEY_LEN);
	memcpy(key_r, &n, sizeof(n));
}

void reuse_key(const char *backend, const uint8_t *user, size_t ulen, const uint8_t *sec,
               size_t slen, uint8_t key_r[REUSE_KEY_LEN])
{
	size_t blen = strlen(backend), n = blen + 1 + ulen + 1 + slen;
	uint8_t *msg = malloc(n);
	unsigned int mdlen = REUSE_KEY_LEN;

	pthread_once(&secret_once, secret_init);
	if (msg == NULL) {
		unmatchable_key(key_r);
		return;
	}
	memcpy(msg, backend, blen + 1);
	memcpy(msg + blen + 1, user, ulen);
	msg[blen + 1 + ulen] = '\0';
	memcpy(msg + blen + 2 + ulen, sec, slen);
	if (HMAC(EVP_sha256(), secret, sizeof(secret), msg, n, key_r, &mdlen) == NULL)
		unmatchable_key(key_r);
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

/* The index's hash of a key: its first 8 bytes (an HMAC output). */
static uint64_t key_hash(const uint8_t key[REUSE_KEY_LEN])
{
	uint64_t h;

	memcpy(&h, key, sizeof(h));
	return h;
}

static void entry_unlink(struct reuse_entry *e)
{
	list_remove(&e->node);
	hmap_remove(&e->w->reuse_idx, &e->hnode);
}

static void entry_close(struct reuse_entry *e, const char *why)
{
	if (e->state == ENTRY_DEAD)
		return;
	log_debug("reuse: dropping a kept session of backend %s: %s", e->b->cfg->name, why);
	/* Dead first: closing the backend ends its reset (entry_reset_done). */
	e->state = ENTRY_DEAD;
	ev_timer_stop(e->w->loop, &e->timer);
	entry_unlink(e);
	/* Be polite when the connection still works: one best-effort write. */
	backend_logout_and_destroy_later(&e->w->reaper, &e->b);
	e->defer.fn = entry_reap;
	reaper_defer(&e->w->reaper, &e->defer);
}

static void entry_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct reuse_entry *e = t->data;

	(void)loop;
	(void)revents;
	entry_close(e, e->state == ENTRY_RESETTING ? "reset timed out" : "reuse_ttl passed");
}

/* The kept backend ended (BYE, EOF, error, an answer nobody asked for). */
static void entry_gone(void *owner, struct backend *b, enum bk_result r, const char *why)
{
	struct reuse_entry *e = owner;

	(void)b;
	(void)r;
	entry_close(e, why);
}

/* The reset's answer: the session can be taken once it is OK. */
static void entry_reset_done(void *arg, struct backend *b, const struct bk_reply *r)
{
	struct reuse_entry *e = arg;

	(void)b;
	if (e->state != ENTRY_RESETTING)
		return; /* closing: the backend's end ends the command too */
	switch (r->ev) {
	case BK_EV_UNTAGGED:
		return; /* the old mailbox's last news: nobody to tell */
	case BK_EV_CONTINUE:
		entry_close(e, "unexpected continuation request");
		return;
	case BK_EV_GONE:
		entry_close(e, r->why);
		return;
	case BK_EV_DONE:
		break;
	}
	if (r->status != BK_ST_OK) {
		entry_close(e, "UNSELECT refused");
		return;
	}
	e->state = ENTRY_KEPT;
	ev_timer_stop(e->w->loop, &e->timer);
	ev_timer_set(&e->timer, e->b->cfg->reuse_ttl, 0.);
	ev_timer_start(e->w->loop, &e->timer);
}

void reuse_park(struct worker *w, struct runtime *rt, struct backend *b,
                const uint8_t key[REUSE_KEY_LEN], const uint8_t *user, size_t ulen,
                bool need_unselect)
{
	struct reuse_entry *e = calloc(1, sizeof(*e));

	if (e == NULL || ulen > sizeof(e->user)) {
		free(e);
		backend_destroy_later(&w->reaper, &b);
		return;
	}
	e->w = w;
	e->rt = runtime_ref(rt);
	e->b = b;
	memcpy(e->key, key, REUSE_KEY_LEN);
	memcpy(e->user, user, ulen);
	e->ulen = ulen;
	ev_init(&e->timer, entry_timeout);
	e->timer.data = e;
	list_push_front(&w->reuse, &e->node);
	hmap_insert(&w->reuse_idx, &e->hnode, key_hash(key));
	e->state = need_unselect ? ENTRY_RESETTING : ENTRY_KEPT;
	if (backend_hold(b, entry_gone, e) < 0) {
		entry_close(e, "connection not usable");
		return;
	}
	if (need_unselect) {
		if (backend_cmd(b, "UNSELECT", 8, BK_CMD_SWALLOW, entry_reset_done, e) < 0) {
			entry_close(e, "output full");
			return;
		}
		ev_timer_set(&e->timer, b->cfg->command_timeout, 0.);
	} else {
		ev_timer_set(&e->timer, b->cfg->reuse_ttl, 0.);
	}
	ev_timer_start(w->loop, &e->timer);
}

bool reuse_has(struct worker *w, const struct cfg_backend *b_cfg, const uint8_t key[REUSE_KEY_LEN])
{
	struct hmap_node *n;

	hmap_for_each_hash(n, &w->reuse_idx, key_hash(key))
	{
		struct reuse_entry *e = hmap_entry(n, struct reuse_entry, hnode);

		if (e->state != ENTRY_DEAD && e->b != NULL &&
		    strcmp(e->b->cfg->name, b_cfg->name) == 0 &&
		    CRYPTO_memcmp(e->key, key, REUSE_KEY_LEN) == 0)
			return true;
	}
	return false;
}

struct backend *reuse_take(struct worker *w, const struct cfg_backend *b_cfg,
                           const uint8_t key[REUSE_KEY_LEN])
{
	struct hmap_node *n;

	hmap_for_each_hash(n, &w->reuse_idx, key_hash(key))
	{
		struct reuse_entry *e = hmap_entry(n, struct reuse_entry, hnode);
		struct backend *b = e->b;

		if (e->state != ENTRY_KEPT || strcmp(b->cfg->name, b_cfg->name) != 0 ||
		    b->cfg->addr.len != b_cfg->addr.len ||
		    memcmp(&b->cfg->addr.ss, &b_cfg->addr.ss, b_cfg->addr.len) != 0 ||
		    CRYPTO_memcmp(e->key, key, REUSE_KEY_LEN) != 0)
			continue;
		if (!backend_quiet(b))
			continue; /* its next callback reads what came, or closes it */
		ev_timer_stop(w->loop, &e->timer);
		conn_stop(&b->conn);
		ev_clear_pending(w->loop, &b->conn.rio);
		ev_clear_pending(w->loop, &b->conn.wio);
		e->b = NULL;
		e->state = ENTRY_DEAD;
		entry_unlink(e);
		e->defer.fn = entry_reap;
		reaper_defer(&w->reaper, &e->defer);
		b->cfg = b_cfg; /* the entry's runtime may go with the entry */
		return b;
	}
	return NULL;
}

void reuse_drop_user(struct worker *w, const char *user, size_t ulen)
{
	struct list_node *n, *tmp;

	list_for_each_safe (n, tmp, &w->reuse) {
		struct reuse_entry *e = list_entry(n, struct reuse_entry, node);
		if (e->ulen == ulen && memcmp(e->user, user, ulen) == 0)
			entry_close(e, "user kicked");
	}
}

unsigned reuse_drop_backend(struct worker *w, const char *backend)
{
	struct list_node *n, *tmp;
	unsigned count = 0;

	list_for_each_safe (n, tmp, &w->reuse) {
		struct reuse_entry *e = list_entry(n, struct reuse_entry, node);
		if (e->state != ENTRY_DEAD && e->b != NULL &&
		    strcmp(e->b->cfg->name, backend) == 0) {
			entry_close(e, "backend drained");
			count++;
		}
	}
	return count;
}

void reuse_drop_all(struct worker *w)
{
	struct reuse_entry *e;

	while ((e = list_first_entry(&w->reuse, struct reuse_entry, node)) != NULL)
		entry_close(e, "shutting down");
	hmap_destroy(&w->reuse_idx); /* empty now: its buckets go too */
}

bool reuse_evict_one(struct worker *w, const char *backend)
{
	/* New entries go to the front: walk from the back, oldest first. */
	for (struct list_node *n = w->reuse.prev; n != &w->reuse; n = n->prev) {
		struct reuse_entry *e = list_entry(n, struct reuse_entry, node);
		if (e->state == ENTRY_KEPT && strcmp(e->b->cfg->name, backend) == 0) {
			entry_close(e, "connection needed for another login (pool_max)");
			return true;
		}
	}
	return false;
}
