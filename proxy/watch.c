/*
 * watch — watcher connections for parked sessions (see watch.h).
 *
 * A watcher owns its backend from the pool (it counts under pool_max) and
 * talks to it only through backend_cmd while the backend is HELD: the
 * backend module reads the stream and hands the answers to the handlers
 * here. The IDLE is an internal command that stays in flight while the
 * watcher is UP; its untagged data (BK_CMD_SWALLOW) is what the watcher
 * watches for.
 *
 * One real watcher per process: it lives on the user's owner worker
 * (watch_owner). Another worker's sessions hold a *hold*, a struct watch
 * with id != 0 and no connection, whose up and news come from the owner's
 * messages through the workers' mailboxes (struct watch_box):
 *
 *   holder H (its sessions)                  owner O (the real watcher)
 *   watch_hold: a new hold --HOLD(H, id, backend name, key)--> found or made,
 *                                               reg (H, id) on it, refs + 1
 *        up = true, ready() <--UP(id)-- now if it is up, else when it is
 *        changed(user, mbox) <--CHANGED(id, mbox)-- as for its own sessions
 *        up = false <--DOWN(id)-- lost (CHANGED follows, then UP again)
 *        gone: no more news <--GONE(id)-- no such backend here, no memory,
 *                                          or the owner stops
 *   last release, linger over --RELEASE(H, id)--> reg dropped, refs - 1
 *
 * Messages from one worker to another arrive in the order sent, so what
 * the owner says after registering a hold (UP, then every CHANGED) reaches
 * the hold in that order, and a session parks on a hold only after its UP
 * and then sends NOOP: a change before the registration is in that NOOP's
 * answer, one after it comes as CHANGED. Replies carry the hold's id, so
 * an UP meant for a hold already released never reaches a newer one of the
 * same key. Nothing crosses threads but messages, which own their bytes;
 * the backend goes by name, resolved in the owner's current runtime.
 *
 * Invariants:
 *   - a watcher is in w->watches from watch_hold to its close (a hold:
 *     until the owner says GONE), and freed through the worker's reaper,
 *     never inside its own callbacks; a hold is in w->watch_holds, a reg
 *     in w->watch_regs and on its watcher's regs, until closed;
 *   - refs counts the parked sessions holding it, and on a real watcher
 *     the other workers' holds (regs) too; at 0 it lingers, then closes;
 *   - changed() is never called from inside watch_hold or watch_release;
 *   - only real watchers count in the stats: each once per process.
 */
#include "watch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "log.h"
#include "pool.h"
#include "route.h"

#define WATCH_BACKOFF_MIN 1.0
#define WATCH_BACKOFF_MAX 30.0
#define WATCH_COALESCE    0.02            /* untagged lines of one change come together */
#define WATCH_OWNER_SEED  0x6f776e6572ULL /* the user's owner worker */

struct watch {
	struct defer defer;      /* first: the reaper frees through it */
	struct hmap_node hnode;  /* in w->watches, by key (a hold: until gone) */
	struct hmap_node idnode; /* a hold: in w->watch_holds, by id */
	struct worker *w;
	struct runtime *rt;
	const struct cfg_backend *bc;
	uint8_t *user; /* user, mbox, select and enable: one allocation after the struct */
	size_t ulen;
	uint8_t *mbox;
	size_t mlen;
	char *select;
	char *enable; /* NULL: no ENABLE */
	watch_changed_cb *changed;
	watch_ready_cb *ready;
	unsigned refs;
	bool up;         /* IDLE answered "+": watching */
	bool refreshing; /* DONE sent: the IDLE's OK comes, then IDLE again */
	bool closed;
	bool ever_up;          /* up once before: after a loss, the next up is a catch-up
	                        * (a hold: sessions may be parked on it) */
	uint64_t id;           /* a hold of the owner's watcher (its id), or 0: real */
	int owner;             /* a hold: the worker of the real watcher */
	bool gone;             /* a hold the owner let go of: no more news, not in w->watches */
	struct list_node regs; /* real: other workers' holds of it (struct watch_reg) */
	struct backend *b;
	struct pool_wait *wait;
	ev_timer timer;  /* the setup's deadline, the IDLE refresh, or the backoff */
	ev_timer linger; /* unheld: closes */
	ev_timer soon;   /* coalesces changed() */
	double backoff;
};

/* Another worker's hold of a real watcher, on the owner. */
struct watch_reg {
	struct hmap_node hnode; /* in the owner's w->watch_regs, by (worker, id) */
	struct list_node node;  /* on wt->regs */
	struct watch *wt;
	int worker; /* the holder */
	uint64_t id;
};

enum watch_msg_kind {
	WM_HOLD,    /* holder to owner: hold the watcher of the key for (from, id) */
	WM_RELEASE, /* holder to owner: (from, id) let go */
	WM_UP,      /* owner to holder: the watcher is watching */
	WM_DOWN,    /* owner to holder: it is not any more (lost) */
	WM_CHANGED, /* owner to holder: mbox (NULL: any) may have changed */
	WM_GONE,    /* owner to holder: the hold is over (no backend, no memory, stopping) */
};

/* One message; user, mbox, bname, select and enable are copies in one
 * allocation after it (NULL when absent). */
struct watch_msg {
	struct list_node node; /* on the receiver's watch_box.msgs */
	enum watch_msg_kind kind;
	int from;
	uint64_t id;
	watch_changed_cb *changed; /* WM_HOLD: the callbacks for a watcher made for it */
	watch_ready_cb *ready;
	uint8_t *user;
	size_t ulen;
	uint8_t *mbox;
	size_t mlen;
	char *bname;
	char *select;
	char *enable;
};

static void watch_open(struct watch *wt);
static void watch_arm(struct watch *wt, ev_timer *t, double secs);
static void watch_lost(struct watch *wt, const char *why);
static void watch_notify_status(struct watch *wt, const struct bk_reply *r);

static uint64_t watch_hash(const char *bname, const uint8_t *user, size_t ulen, const uint8_t *mbox,
                           size_t mlen)
{
	return route_hash(user, ulen, 0x77617463) ^ (route_hash(mbox, mlen, 0x68) * 31) ^
	       route_hash(bname, strlen(bname), 0x62);
}

static void watch_log(const struct watch *wt, enum log_level lvl, const char *what)
{
	char via[48] = "";

	if (!log_enabled(lvl))
		return;
	if (wt->id != 0)
		snprintf(via, sizeof(via), " (held through worker %d)", wt->owner);
	log_msg(lvl, "worker %d: watch %s %.*s %s%.*s%s%s: %s", wt->w->id, wt->bc->name,
	        (int)wt->ulen, (const char *)wt->user, wt->mbox != NULL ? "\"" : "(NOTIFY",
	        (int)(wt->mlen > 64 ? 64 : wt->mlen),
	        wt->mbox != NULL ? (const char *)wt->mbox : "", wt->mbox != NULL ? "\"" : ")", via,
	        what);
}

/* ---- messages between workers -------------------------------------------- */

int watch_owner(const struct worker *w, const uint8_t *user, size_t ulen)
{
	if (w->nworkers <= 1 || w->all == NULL)
		return w->id;
	return (int)(route_hash(user, ulen, WATCH_OWNER_SEED) % w->nworkers);
}

static uint64_t watch_id_hash(int worker, uint64_t id)
{
	uint64_t k[2] = {(uint64_t)worker, id};

	return route_hash(k, sizeof(k), 0x686f6c64);
}

/* A message with copies of what it names (any may be NULL), or NULL on no
 * memory. */
static struct watch_msg *watch_msg_new(enum watch_msg_kind kind, int from, uint64_t id,
                                       const uint8_t *user, size_t ulen, const uint8_t *mbox,
                                       size_t mlen, const char *bname, const char *select,
                                       const char *enable)
{
	size_t blen = bname != NULL ? strlen(bname) + 1 : 0,
	       slen = select != NULL ? strlen(select) + 1 : 0,
	       elen = enable != NULL ? strlen(enable) + 1 : 0, ul = user != NULL ? ulen + 1 : 0,
	       ml = mbox != NULL ? mlen + 1 : 0;
	struct watch_msg *m = calloc(1, sizeof(*m) + ul + ml + blen + slen + elen);
	char *p;

	if (m == NULL)
		return NULL;
	m->kind = kind;
	m->from = from;
	m->id = id;
	p = (char *)(m + 1);
	if (user != NULL) {
		m->user = (uint8_t *)p;
		memcpy(p, user, ulen);
		m->ulen = ulen;
		p += ul;
	}
	if (mbox != NULL) {
		m->mbox = (uint8_t *)p;
		memcpy(p, mbox, mlen);
		m->mlen = mlen;
		p += ml;
	}
	if (bname != NULL) {
		m->bname = p;
		memcpy(p, bname, blen);
		p += blen;
	}
	if (select != NULL) {
		m->select = p;
		memcpy(p, select, slen);
		p += slen;
	}
	if (enable != NULL) {
		m->enable = p;
		memcpy(p, enable, elen);
	}
	return m;
}

/* Hand m (owned, not NULL) to worker to's mailbox. Returns 0, or -1 when
 * that worker's watchers are closed (it has stopped): m is freed. The
 * async is sent under the lock, as closing takes it: a worker that has
 * closed its mailbox is never woken again. */
static int watch_post(struct worker *w, int to, struct watch_msg *m)
{
	struct worker *dst;
	bool ok;

	if (w->all == NULL || to < 0 || (unsigned)to >= w->nworkers || to == w->id) {
		free(m);
		return -1;
	}
	dst = &w->all[to];
	pthread_mutex_lock(&dst->watch_box.lock);
	ok = !dst->watch_box.closed;
	if (ok) {
		list_push_back(&dst->watch_box.msgs, &m->node);
		ev_async_send(dst->loop, &dst->watch_box.async);
	}
	pthread_mutex_unlock(&dst->watch_box.lock);
	if (!ok)
		free(m);
	return ok ? 0 : -1;
}

/* Post a message naming only an id (and mbox for WM_CHANGED). Returns 0,
 * or -1 when the receiver has stopped. No memory: logged, and 0 (what was
 * lost cannot be told; the receiver is there). */
static int watch_post_id(struct worker *w, int to, enum watch_msg_kind kind, uint64_t id,
                         const uint8_t *mbox, size_t mlen)
{
	struct watch_msg *m = watch_msg_new(kind, w->id, id, NULL, 0, mbox, mlen, NULL, NULL, NULL);

	if (m == NULL) {
		log_error("worker %d: watch: out of memory, a message to worker %d lost", w->id,
		          to);
		return 0;
	}
	return watch_post(w, to, m);
}

static void watch_unref(struct watch *wt)
{
	if (!wt->closed && wt->refs > 0 && --wt->refs == 0)
		watch_arm(wt, &wt->linger, WATCH_LINGER);
}

/* Drop reg from its watcher (and the watcher's ref; linger at 0). */
static void watch_reg_drop(struct watch_reg *reg, bool unref)
{
	struct watch *wt = reg->wt;

	hmap_remove(&wt->w->watch_regs, &reg->hnode);
	list_remove(&reg->node);
	free(reg);
	if (unref)
		watch_unref(wt);
}

/* Tell every other worker holding real watcher wt; a holder that has
 * stopped will never release: its reg goes. */
static void watch_tell(struct watch *wt, enum watch_msg_kind kind, const uint8_t *mbox, size_t mlen)
{
	struct list_node *n, *tmp;

	list_for_each_safe (n, tmp, &wt->regs) {
		struct watch_reg *reg = list_entry(n, struct watch_reg, node);
		if (watch_post_id(wt->w, reg->worker, kind, reg->id, mbox, mlen) < 0)
			watch_reg_drop(reg, true);
	}
}

/* A real watcher's news, for this worker's sessions and the holds. */
static void watch_tell_changed(struct watch *wt, const uint8_t *mbox, size_t mlen)
{
	wt->changed(wt->w, wt->user, wt->ulen, mbox, mlen);
	watch_tell(wt, WM_CHANGED, mbox, mlen);
}

static void watch_arm(struct watch *wt, ev_timer *t, double secs)
{
	ev_timer_stop(wt->w->loop, t);
	ev_timer_set(t, secs, 0.);
	ev_timer_start(wt->w->loop, t);
}

/* Tell the sessions, from a fresh callback, once for lines that come together. */
static void watch_changed_soon(struct watch *wt)
{
	if (!ev_is_active(&wt->soon))
		watch_arm(wt, &wt->soon, WATCH_COALESCE);
}

static void watch_soon_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct watch *wt = t->data;

	(void)loop;
	(void)revents;
	/* A NOTIFY watcher's catch-up or loss concerns every mailbox (NULL). */
	if (wt->closed)
		return;
	watch_log(wt, LOG_LVL_DEBUG, "change");
	watch_tell_changed(wt, wt->mbox, wt->mlen);
}

/* A NOTIFY watcher: "* STATUS mailbox (...)" names what changed (RFC 5465
 * 5.2-5.4; with CONDSTORE enabled a flag change shows as HIGHESTMODSEQ).
 * A name that cannot be read here (a literal) concerns every mailbox. */
static void watch_notify_status(struct watch *wt, const struct bk_reply *r)
{
	static const char head[] = "* STATUS ";
	size_t hl = sizeof(head) - 1, n = 0;
	const uint8_t *p = r->line + hl, *end = r->line + r->len;
	uint8_t name[1024];

	if (r->len <= hl || memcmp(r->line, head, hl) != 0)
		return; /* nothing else is asked for */
	if (*p == '"') {
		for (p++; p < end && *p != '"'; p++) {
			if (*p == '\\' && ++p == end)
				break;
			if (n == sizeof(name))
				break;
			name[n++] = *p;
		}
		if (p >= end || *p != '"')
			n = 0;
	} else if (*p != '{') {
		while (p < end && *p != ' ' && n < sizeof(name))
			name[n++] = *p++;
	}
	watch_tell_changed(wt, n > 0 ? name : NULL, n);
}

/* ---- the end ------------------------------------------------------------- */

static void watch_reap(struct defer *d)
{
	struct watch *wt = (struct watch *)d;

	runtime_unref(&wt->rt);
	free(wt);
}

static void watch_drop_backend(struct watch *wt)
{
	if (wt->up) {
		STAT_DEC(&wt->w->stats, watchers_up);
		watch_tell(wt, WM_DOWN, NULL, 0);
	}
	wt->up = wt->refreshing = false;
	pool_wait_cancel(wt->wait);
	wt->wait = NULL;
	if (wt->b == NULL)
		return;
	if (wt->b->state == BK_HELD && !wt->b->conn.error && !wt->b->conn.eof) {
		/* Out of IDLE first, then the LOGOUT courtesy. */
		if (backend_cmd_pending(wt->b) && backend_cmd_reply(wt->b, "DONE", 4, 0) < 0)
			log_debug("watch: no room for DONE before LOGOUT");
		backend_logout_and_destroy_later(&wt->w->reaper, &wt->b);
	} else {
		backend_destroy_later(&wt->w->reaper, &wt->b);
	}
}

static void watch_close(struct watch *wt)
{
	struct worker *w = wt->w;

	if (wt->closed)
		return;
	wt->closed = true;
	hmap_remove(&w->watches, &wt->hnode); /* a gone hold's: removed already, fine */
	ev_timer_stop(w->loop, &wt->timer);
	ev_timer_stop(w->loop, &wt->linger);
	ev_timer_stop(w->loop, &wt->soon);
	if (wt->id != 0) {
		/* A hold: the owner drops its reg (unless it is gone, or the
		 * owner has stopped). */
		hmap_remove(&w->watch_holds, &wt->idnode);
		if (!wt->gone)
			(void)watch_post_id(w, wt->owner, WM_RELEASE, wt->id, NULL, 0);
	} else {
		watch_drop_backend(wt);
		STAT_DEC(&w->stats, watchers);
		/* Holds left only when the worker stops: they hear it's over. */
		while (!list_empty(&wt->regs)) {
			struct watch_reg *reg = list_first_entry(&wt->regs, struct watch_reg, node);
			(void)watch_post_id(w, reg->worker, WM_GONE, reg->id, NULL, 0);
			watch_reg_drop(reg, false);
		}
	}
	watch_log(wt, LOG_LVL_DEBUG, "closed");
	wt->defer.fn = watch_reap;
	reaper_defer(&w->reaper, &wt->defer);
}

static void watch_linger_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct watch *wt = t->data;

	(void)loop;
	(void)revents;
	if (wt->refs == 0)
		watch_close(wt);
}

/* ---- the IDLE ------------------------------------------------------------ */

static void watch_idle_cb(void *arg, struct backend *b, const struct bk_reply *r);

static void watch_idle(struct watch *wt)
{
	if (backend_cmd(wt->b, "IDLE", 4, BK_CMD_SWALLOW, watch_idle_cb, wt) < 0)
		watch_lost(wt, "cannot send IDLE");
}

static void watch_idle_cb(void *arg, struct backend *b, const struct bk_reply *r)
{
	struct watch *wt = arg;

	(void)b;
	if (wt->closed)
		return;
	switch (r->ev) {
	case BK_EV_CONTINUE:
		if (!wt->up) {
			wt->up = true;
			STAT_INC(&wt->w->stats, watchers_up);
			watch_log(wt, LOG_LVL_DEBUG, "up");
			/* After a loss: sessions that parked again meanwhile may
			 * have missed a change. */
			if (wt->ever_up)
				watch_changed_soon(wt);
			wt->ever_up = true;
			/* The sessions waiting for it may park now, here and
			 * on the workers holding it. */
			wt->ready(wt->w, wt->user, wt->ulen, wt->mbox, wt->mlen);
			watch_tell(wt, WM_UP, NULL, 0);
		}
		wt->backoff = 0;
		watch_arm(wt, &wt->timer, wt->bc->watch_refresh);
		return;
	case BK_EV_UNTAGGED:
		/* "* OK Still here" and the like are the server's keep-alives. */
		if (r->len >= 5 && memcmp(r->line, "* OK ", 5) == 0)
			return;
		if (log_enabled(LOG_LVL_DEBUG)) {
			char what[96];
			snprintf(what, sizeof(what), "heard \"%.*s\"",
			         (int)(r->len > 60 ? 60 : r->len), (const char *)r->line);
			watch_log(wt, LOG_LVL_DEBUG, what);
		}
		if (wt->mbox == NULL) {
			watch_notify_status(wt, r);
			return;
		}
		watch_changed_soon(wt);
		return;
	case BK_EV_DONE:
		if (r->status != BK_ST_OK) {
			watch_lost(wt, "IDLE refused");
			return;
		}
		/* Our DONE (a refresh), or the server ended it: IDLE again. */
		if (wt->refreshing && log_enabled(LOG_LVL_DEBUG))
			log_debug("watch: %.*s: IDLE renewed", (int)wt->ulen,
			          (const char *)wt->user);
		wt->refreshing = false;
		watch_idle(wt);
		return;
	case BK_EV_GONE:
		watch_lost(wt, r->why != NULL ? r->why : "connection lost");
		return;
	}
}

static void watch_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct watch *wt = t->data;

	(void)loop;
	(void)revents;
	if (wt->closed)
		return;
	if (wt->b == NULL && wt->wait == NULL) {
		watch_open(wt); /* the backoff is over */
		return;
	}
	if (!wt->up) {
		watch_lost(wt, "setup timed out");
		return;
	}
	if (wt->refreshing) {
		watch_lost(wt, "IDLE refresh not answered");
		return;
	}
	/* RFC 2177: servers may end an IDLE after 30 minutes; renew it. */
	if (backend_cmd_reply(wt->b, "DONE", 4, 0) < 0) {
		watch_lost(wt, "cannot end IDLE");
		return;
	}
	conn_update(&wt->b->conn);
	wt->refreshing = true;
	watch_arm(wt, &wt->timer, wt->bc->command_timeout);
}

/* ---- the setup ----------------------------------------------------------- */

static void watch_setup_cb(void *arg, struct backend *b, const struct bk_reply *r)
{
	struct watch *wt = arg;

	(void)b;
	if (wt->closed)
		return;
	if (r->ev == BK_EV_GONE)
		watch_lost(wt, r->why != NULL ? r->why : "connection lost");
	else if (r->ev == BK_EV_DONE && r->status != BK_ST_OK)
		watch_lost(wt, "EXAMINE or ENABLE refused");
	else if (r->ev == BK_EV_CONTINUE)
		watch_lost(wt, "unexpected continuation");
}

static void watch_bk_done(void *owner, struct backend *b, enum bk_result r, const char *why)
{
	struct watch *wt = owner;
	char cmd[64];

	(void)b;
	if (wt->closed)
		return;
	if (r != BK_RES_OK) {
		watch_lost(wt, why);
		return;
	}
	if (backend_hold(wt->b, watch_bk_done, wt) < 0) {
		watch_lost(wt, "connection not usable");
		return;
	}
	int e = 0;
	if (wt->enable != NULL) {
		snprintf(cmd, sizeof(cmd), "ENABLE %s", wt->enable);
		e |= backend_cmd(wt->b, cmd, strlen(cmd), BK_CMD_SWALLOW, watch_setup_cb, wt);
	}
	if (wt->mbox == NULL) {
		/* Every mailbox of the user: what the parked sessions are on
		 * is filtered here. FlagChange needs the other two (RFC 5465
		 * 5.4); CONDSTORE makes flag changes show as HIGHESTMODSEQ. */
		static const char notify[] = "NOTIFY SET (personal (MessageNew MessageExpunge "
		                             "FlagChange))";
		e |= backend_cmd(wt->b, "ENABLE CONDSTORE", 16, BK_CMD_SWALLOW, watch_setup_cb, wt);
		e |= backend_cmd(wt->b, notify, sizeof(notify) - 1, BK_CMD_SWALLOW, watch_setup_cb,
		                 wt);
	} else {
		e |= backend_cmd(wt->b, wt->select, strlen(wt->select), BK_CMD_SWALLOW,
		                 watch_setup_cb, wt);
	}
	if (e != 0) {
		watch_lost(wt, "cannot queue EXAMINE");
		return;
	}
	watch_idle(wt);
}

static void watch_login(struct watch *wt, struct backend *b)
{
	const struct cfg_backend *bc = wt->bc;

	wt->b = b;
	backend_count_as_watcher(b);
	STAT_INC(&wt->w->stats, backend_logins);
	if (backend_login_as(b, (const char *)wt->user, wt->ulen, bc->master_user,
	                     strlen(bc->master_user), bc->master_password,
	                     strlen(bc->master_password)) < 0)
		watch_lost(wt, "out of memory");
}

static void watch_pool_got(void *arg, struct backend *b)
{
	struct watch *wt = arg;

	wt->wait = NULL;
	if (b == NULL) {
		watch_lost(wt, "no backend connection free (pool_max)");
		return;
	}
	watch_login(wt, b);
}

static void watch_open(struct watch *wt)
{
	struct pool *pool = pool_of(wt->w, wt->rt, wt->bc);
	struct backend *b = NULL;
	int r;

	watch_arm(wt, &wt->timer,
	          wt->bc->pool_wait + wt->bc->connect_timeout + 3 * wt->bc->command_timeout);
	r = pool == NULL
	        ? -1
	        : pool_acquire(pool, 0, watch_bk_done, wt, &b, watch_pool_got, wt, &wt->wait);
	if (r == -1) {
		watch_lost(wt, "cannot connect to the backend");
		return;
	}
	if (r == 0)
		watch_login(wt, b);
}

/* The connection ended, or never came: the sessions read the store again
 * (they may have missed a change), and while held, the watcher tries again
 * after a backoff. */
static void watch_lost(struct watch *wt, const char *why)
{
	bool was_up = wt->up;

	if (wt->closed)
		return;
	watch_log(wt, LOG_LVL_WARN, why);
	STAT_INC(&wt->w->stats, watchers_lost);
	watch_drop_backend(wt);
	if (was_up)
		watch_changed_soon(wt);
	if (wt->refs == 0) {
		watch_close(wt);
		return;
	}
	wt->backoff = wt->backoff <= 0 ? WATCH_BACKOFF_MIN : wt->backoff * 2;
	if (wt->backoff > WATCH_BACKOFF_MAX)
		wt->backoff = WATCH_BACKOFF_MAX;
	watch_arm(wt, &wt->timer, wt->backoff);
}

/* ---- holders ------------------------------------------------------------- */

/* The watcher or hold of this key on w, or NULL. */
static struct watch *watch_find(struct worker *w, uint64_t h, const struct cfg_backend *bc,
                                const uint8_t *user, size_t ulen, const uint8_t *mbox, size_t mlen,
                                const char *select)
{
	struct hmap_node *n;

	hmap_for_each_hash(n, &w->watches, h)
	{
		struct watch *wt = hmap_entry(n, struct watch, hnode);
		if (wt->bc == bc && wt->ulen == ulen && memcmp(wt->user, user, ulen) == 0 &&
		    (wt->mbox == NULL) == (mbox == NULL) &&
		    (mbox == NULL || (wt->mlen == mlen && memcmp(wt->mbox, mbox, mlen) == 0 &&
		                      strcmp(wt->select, select) == 0)))
			return wt;
	}
	return NULL;
}

/* The watcher or hold of the key on w, held once more; NULL if none. */
static struct watch *watch_find_ref(struct worker *w, uint64_t h, const struct cfg_backend *bc,
                                    const uint8_t *user, size_t ulen, const uint8_t *mbox,
                                    size_t mlen, const char *select)
{
	struct watch *wt = watch_find(w, h, bc, user, ulen, mbox, mlen, select);

	if (wt != NULL) {
		wt->refs++;
		ev_timer_stop(w->loop, &wt->linger);
	}
	return wt;
}

/* A new watcher or hold, held once, in no table yet; NULL on no memory. */
static struct watch *watch_new(struct worker *w, struct runtime *rt, const struct cfg_backend *bc,
                               const uint8_t *user, size_t ulen, const uint8_t *mbox, size_t mlen,
                               const char *select, const char *enable, watch_changed_cb *changed,
                               watch_ready_cb *ready)
{
	struct watch *wt;
	size_t slen = select != NULL ? strlen(select) : 0,
	       elen = enable != NULL ? strlen(enable) : 0;

	wt = calloc(1, sizeof(*wt) + ulen + 1 + mlen + 1 + slen + 1 + elen + 1);
	if (wt == NULL)
		return NULL;
	wt->user = (uint8_t *)(wt + 1);
	memcpy(wt->user, user, ulen);
	wt->ulen = ulen;
	wt->select = (char *)wt->user + ulen + 1;
	if (mbox != NULL) {
		wt->mbox = (uint8_t *)wt->select + slen + 1;
		memcpy(wt->mbox, mbox, mlen);
		wt->mlen = mlen;
		memcpy(wt->select, select, slen + 1);
	}
	if (enable != NULL) {
		wt->enable = wt->select + slen + 1 + mlen + 1;
		memcpy(wt->enable, enable, elen + 1);
	}
	wt->w = w;
	wt->rt = runtime_ref(rt);
	wt->bc = bc;
	wt->changed = changed;
	wt->ready = ready;
	wt->refs = 1;
	wt->owner = w->id;
	list_init(&wt->regs);
	ev_init(&wt->timer, watch_timer_cb);
	wt->timer.data = wt;
	ev_init(&wt->linger, watch_linger_cb);
	wt->linger.data = wt;
	ev_init(&wt->soon, watch_soon_cb);
	wt->soon.data = wt;
	return wt;
}

/* The real watcher of the key on w (its owner), found or made, held once
 * more; NULL on no memory. */
static struct watch *watch_get(struct worker *w, struct runtime *rt, const struct cfg_backend *bc,
                               const uint8_t *user, size_t ulen, const uint8_t *mbox, size_t mlen,
                               const char *select, const char *enable, watch_changed_cb *changed,
                               watch_ready_cb *ready)
{
	uint64_t h =
	    watch_hash(bc->name, user, ulen, mbox != NULL ? mbox : (const uint8_t *)"", mlen);
	struct watch *wt = watch_find_ref(w, h, bc, user, ulen, mbox, mlen, select);

	if (wt != NULL)
		return wt;
	wt = watch_new(w, rt, bc, user, ulen, mbox, mlen, select, enable, changed, ready);
	if (wt == NULL)
		return NULL;
	hmap_insert(&w->watches, &wt->hnode, h);
	STAT_INC(&w->stats, watchers);
	watch_log(wt, LOG_LVL_DEBUG, "opening");
	watch_open(wt);
	return wt;
}

/* A hold of the owner's watcher: asked for (HOLD), up when the owner says
 * so. NULL on no memory, or when the owner has stopped. */
static struct watch *watch_hold_remote(struct worker *w, int owner, struct runtime *rt,
                                       const struct cfg_backend *bc, const uint8_t *user,
                                       size_t ulen, const uint8_t *mbox, size_t mlen,
                                       const char *select, const char *enable,
                                       watch_changed_cb *changed, watch_ready_cb *ready)
{
	uint64_t h =
	    watch_hash(bc->name, user, ulen, mbox != NULL ? mbox : (const uint8_t *)"", mlen);
	struct watch *wt = watch_find_ref(w, h, bc, user, ulen, mbox, mlen, select);
	struct watch_msg *m;

	if (wt != NULL)
		return wt;
	wt = watch_new(w, rt, bc, user, ulen, mbox, mlen, select, enable, changed, ready);
	if (wt == NULL)
		return NULL;
	wt->id = ++w->watch_last_id;
	wt->owner = owner;
	m = watch_msg_new(WM_HOLD, w->id, wt->id, user, ulen, mbox, mlen, bc->name,
	                  mbox != NULL ? select : NULL, enable);
	if (m != NULL) {
		m->changed = changed;
		m->ready = ready;
	}
	if (m == NULL || watch_post(w, owner, m) < 0) {
		watch_log(wt, LOG_LVL_DEBUG, "cannot ask the owner (stopped, or no memory)");
		runtime_unref(&wt->rt);
		free(wt);
		return NULL;
	}
	hmap_insert(&w->watches, &wt->hnode, h);
	hmap_insert(&w->watch_holds, &wt->idnode, watch_id_hash(w->id, wt->id));
	watch_log(wt, LOG_LVL_DEBUG, "holding");
	return wt;
}

struct watch *watch_hold(struct worker *w, struct runtime *rt, const struct cfg_backend *bc,
                         const uint8_t *user, size_t ulen, const uint8_t *mbox, size_t mlen,
                         const char *select, const char *enable, watch_changed_cb *changed,
                         watch_ready_cb *ready)
{
	int owner = watch_owner(w, user, ulen);

	if (owner != w->id)
		return watch_hold_remote(w, owner, rt, bc, user, ulen, mbox, mlen, select, enable,
		                         changed, ready);
	return watch_get(w, rt, bc, user, ulen, mbox, mlen, select, enable, changed, ready);
}

bool watch_up(const struct watch *wt)
{
	return wt->up;
}

void watch_release(struct watch **wp)
{
	struct watch *wt = *wp;

	*wp = NULL;
	if (wt != NULL)
		watch_unref(wt);
}

/* ---- the mailbox ----------------------------------------------------------- */

/* The owner: hold the watcher of m's key for (m->from, m->id), or say GONE. */
static void watch_take_hold(struct worker *w, const struct watch_msg *m)
{
	const struct cfg_backend *bc = cfg_backend_find(w->rt->cfg, m->bname);
	struct watch_reg *reg = NULL;
	struct watch *wt;

	if (bc == NULL || bc->master_user == NULL) {
		/* A reload the holder has not seen yet (or has, and we have
		 * not): its sessions do not park on this. */
		log_warn("worker %d: watch: backend %s %s here; worker %d's hold refused", w->id,
		         m->bname, bc == NULL ? "unknown" : "has no master_user", m->from);
		goto fail;
	}
	reg = calloc(1, sizeof(*reg));
	if (reg == NULL)
		goto fail;
	wt = watch_get(w, w->rt, bc, m->user, m->ulen, m->mbox, m->mlen, m->select, m->enable,
	               m->changed, m->ready);
	if (wt == NULL)
		goto fail;
	reg->wt = wt;
	reg->worker = m->from;
	reg->id = m->id;
	list_push_back(&wt->regs, &reg->node);
	hmap_insert(&w->watch_regs, &reg->hnode, watch_id_hash(m->from, m->id));
	/* Up already: the holder's sessions may park (and then look once
	 * more); every change from here on reaches the holder after this. */
	if (wt->up && watch_post_id(w, m->from, WM_UP, m->id, NULL, 0) < 0)
		watch_reg_drop(reg, true);
	return;
fail:
	free(reg);
	(void)watch_post_id(w, m->from, WM_GONE, m->id, NULL, 0);
}

static struct watch_reg *watch_reg_find(struct worker *w, int worker, uint64_t id)
{
	struct hmap_node *n;

	hmap_for_each_hash(n, &w->watch_regs, watch_id_hash(worker, id))
	{
		struct watch_reg *reg = hmap_entry(n, struct watch_reg, hnode);
		if (reg->worker == worker && reg->id == id)
			return reg;
	}
	return NULL;
}

static struct watch *watch_hold_find(struct worker *w, uint64_t id)
{
	struct hmap_node *n;

	hmap_for_each_hash(n, &w->watch_holds, watch_id_hash(w->id, id))
	{
		struct watch *wt = hmap_entry(n, struct watch, idnode);
		if (wt->id == id)
			return wt;
	}
	return NULL;
}

/* A hold the owner let go of: if it was ever up, sessions may be parked
 * on it (a DOWN may have come first, from the owner's close): they read
 * the store again, for what happens from now on is not heard; the next
 * parking asks again (a new hold). */
static void watch_hold_gone(struct watch *wt)
{
	watch_log(wt, LOG_LVL_DEBUG, "the owner let go");
	wt->up = false;
	wt->gone = true;
	hmap_remove(&wt->w->watches, &wt->hnode);
	if (wt->ever_up)
		wt->changed(wt->w, wt->user, wt->ulen, wt->mbox, wt->mlen);
	if (wt->refs == 0)
		watch_close(wt);
}

static void watch_msg_run(struct worker *w, const struct watch_msg *m)
{
	struct watch_reg *reg;
	struct watch *wt;

	switch (m->kind) {
	case WM_HOLD:
		watch_take_hold(w, m);
		return;
	case WM_RELEASE:
		reg = watch_reg_find(w, m->from, m->id);
		if (reg != NULL)
			watch_reg_drop(reg, true);
		return;
	case WM_UP:
	case WM_DOWN:
	case WM_CHANGED:
	case WM_GONE:
		break;
	}
	/* News for a hold: none for one closed since (no session of it is
	 * parked; a newer hold of the key waits for its own UP). */
	wt = watch_hold_find(w, m->id);
	if (wt == NULL || wt->closed)
		return;
	switch (m->kind) {
	case WM_UP:
		if (!wt->up && !wt->gone) {
			wt->up = wt->ever_up = true;
			watch_log(wt, LOG_LVL_DEBUG, "up");
			wt->ready(w, wt->user, wt->ulen, wt->mbox, wt->mlen);
		}
		return;
	case WM_DOWN:
		wt->up = false;
		return;
	case WM_CHANGED:
		wt->changed(w, wt->user, wt->ulen, m->mbox, m->mlen);
		return;
	case WM_GONE:
		if (!wt->gone)
			watch_hold_gone(wt);
		return;
	case WM_HOLD:
	case WM_RELEASE:
		return;
	}
}

/* Take every message posted so far (the lock held only to move them). */
static void watch_box_take(struct worker *w, struct list_node *into)
{
	struct watch_box *box = &w->watch_box;

	pthread_mutex_lock(&box->lock);
	while (!list_empty(&box->msgs)) {
		struct list_node *n = list_first(&box->msgs);
		list_remove(n);
		list_push_back(into, n);
	}
	pthread_mutex_unlock(&box->lock);
}

static void watch_box_cb(struct ev_loop *loop, ev_async *a, int revents)
{
	struct worker *w = a->data;
	struct list_node msgs;

	(void)loop;
	(void)revents;
	list_init(&msgs);
	watch_box_take(w, &msgs);
	while (!list_empty(&msgs)) {
		struct watch_msg *m = list_first_entry(&msgs, struct watch_msg, node);
		list_remove(&m->node);
		watch_msg_run(w, m);
		free(m);
	}
}

int watch_init(struct worker *w)
{
	struct watch_box *box = &w->watch_box;

	if (pthread_mutex_init(&box->lock, NULL) != 0)
		return -1;
	list_init(&box->msgs);
	ev_async_init(&box->async, watch_box_cb);
	box->async.data = w;
	ev_async_start(w->loop, &box->async);
	box->inited = true;
	return 0;
}

void watch_close_all(struct worker *w)
{
	struct hmap_node *n;
	struct list_node msgs;

	/* No more messages from here on; holds asked for meanwhile hear no. */
	list_init(&msgs);
	if (w->watch_box.inited) {
		pthread_mutex_lock(&w->watch_box.lock);
		w->watch_box.closed = true;
		pthread_mutex_unlock(&w->watch_box.lock);
		watch_box_take(w, &msgs);
	}
	while (!list_empty(&msgs)) {
		struct watch_msg *m = list_first_entry(&msgs, struct watch_msg, node);
		list_remove(&m->node);
		if (m->kind == WM_HOLD)
			(void)watch_post_id(w, m->from, WM_GONE, m->id, NULL, 0);
		free(m);
	}
	/* Real watchers tell their holders GONE; holds RELEASE theirs. */
	while ((n = hmap_any(&w->watches)) != NULL)
		watch_close(hmap_entry(n, struct watch, hnode));
	while ((n = hmap_any(&w->watch_holds)) != NULL)
		watch_close(hmap_entry(n, struct watch, idnode));
	hmap_destroy(&w->watches);
	hmap_destroy(&w->watch_holds);
	hmap_destroy(&w->watch_regs);
}

void watch_fini(struct worker *w)
{
	struct watch_box *box = &w->watch_box;
	struct list_node msgs;

	if (!box->inited)
		return;
	/* Every thread has stopped: what is left (posted to a worker that
	 * never ran) is only freed. */
	list_init(&msgs);
	watch_box_take(w, &msgs);
	while (!list_empty(&msgs)) {
		struct watch_msg *m = list_first_entry(&msgs, struct watch_msg, node);
		list_remove(&m->node);
		free(m);
	}
	if (w->loop != NULL)
		ev_async_stop(w->loop, &box->async);
	pthread_mutex_destroy(&box->lock);
	box->inited = false;
}
