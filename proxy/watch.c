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
 * Invariants:
 *   - a watcher is in w->watches from watch_hold to its close, and freed
 *     through the worker's reaper, never inside its own callbacks;
 *   - refs counts the parked sessions holding it; at 0 it lingers, then
 *     closes;
 *   - changed() is never called from inside watch_hold or watch_release.
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
#define WATCH_COALESCE    0.02 /* untagged lines of one change come together */

struct watch {
	struct defer defer; /* first: the reaper frees through it */
	struct hmap_node hnode;
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
	bool ever_up; /* up once before: after a loss, the next up is a catch-up */
	struct backend *b;
	struct pool_wait *wait;
	ev_timer timer;  /* the setup's deadline, the IDLE refresh, or the backoff */
	ev_timer linger; /* unheld: closes */
	ev_timer soon;   /* coalesces changed() */
	double backoff;
};

static void watch_open(struct watch *wt);
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
	if (log_enabled(lvl))
		log_msg(lvl, "watch %s %.*s %s%.*s%s: %s", wt->bc->name, (int)wt->ulen,
		        (const char *)wt->user, wt->mbox != NULL ? "\"" : "(NOTIFY",
		        (int)(wt->mlen > 64 ? 64 : wt->mlen),
		        wt->mbox != NULL ? (const char *)wt->mbox : "",
		        wt->mbox != NULL ? "\"" : ")", what);
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
	wt->changed(wt->w, wt->user, wt->ulen, wt->mbox, wt->mlen);
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
	wt->changed(wt->w, wt->user, wt->ulen, n > 0 ? name : NULL, n);
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
	if (wt->up)
		STAT_DEC(&wt->w->stats, watchers_up);
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
	if (wt->closed)
		return;
	wt->closed = true;
	hmap_remove(&wt->w->watches, &wt->hnode);
	ev_timer_stop(wt->w->loop, &wt->timer);
	ev_timer_stop(wt->w->loop, &wt->linger);
	ev_timer_stop(wt->w->loop, &wt->soon);
	watch_drop_backend(wt);
	STAT_DEC(&wt->w->stats, watchers);
	watch_log(wt, LOG_LVL_DEBUG, "closed");
	wt->defer.fn = watch_reap;
	reaper_defer(&wt->w->reaper, &wt->defer);
}

static void watch_linger_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct watch *wt = t->data;

	(void)loop;
	(void)revents;
	if (wt->refs == 0)
		watch_close(wt);
}

void watch_close_all(struct worker *w)
{
	struct hmap_node *n;

	while ((n = hmap_any(&w->watches)) != NULL)
		watch_close(hmap_entry(n, struct watch, hnode));
	hmap_destroy(&w->watches);
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
			/* The sessions waiting for it may park now. */
			wt->ready(wt->w, wt->user, wt->ulen, wt->mbox, wt->mlen);
		}
		wt->backoff = 0;
		watch_arm(wt, &wt->timer, WATCH_REFRESH);
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

struct watch *watch_hold(struct worker *w, struct runtime *rt, const struct cfg_backend *bc,
                         const uint8_t *user, size_t ulen, const uint8_t *mbox, size_t mlen,
                         const char *select, const char *enable, watch_changed_cb *changed,
                         watch_ready_cb *ready)
{
	uint64_t h =
	    watch_hash(bc->name, user, ulen, mbox != NULL ? mbox : (const uint8_t *)"", mlen);
	struct hmap_node *n;
	struct watch *wt;
	size_t slen = select != NULL ? strlen(select) : 0,
	       elen = enable != NULL ? strlen(enable) : 0;

	hmap_for_each_hash(n, &w->watches, h)
	{
		wt = hmap_entry(n, struct watch, hnode);
		if (wt->bc == bc && wt->ulen == ulen && memcmp(wt->user, user, ulen) == 0 &&
		    (wt->mbox == NULL) == (mbox == NULL) &&
		    (mbox == NULL || (wt->mlen == mlen && memcmp(wt->mbox, mbox, mlen) == 0 &&
		                      strcmp(wt->select, select) == 0))) {
			wt->refs++;
			ev_timer_stop(w->loop, &wt->linger);
			return wt;
		}
	}
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
	ev_init(&wt->timer, watch_timer_cb);
	wt->timer.data = wt;
	ev_init(&wt->linger, watch_linger_cb);
	wt->linger.data = wt;
	ev_init(&wt->soon, watch_soon_cb);
	wt->soon.data = wt;
	hmap_insert(&w->watches, &wt->hnode, h);
	STAT_INC(&w->stats, watchers);
	watch_log(wt, LOG_LVL_DEBUG, "opening");
	watch_open(wt);
	return wt;
}

bool watch_up(const struct watch *wt)
{
	return wt->up;
}

void watch_release(struct watch **wp)
{
	struct watch *wt = *wp;

	*wp = NULL;
	if (wt == NULL || wt->closed)
		return;
	if (wt->refs > 0 && --wt->refs == 0)
		watch_arm(wt, &wt->linger, WATCH_LINGER);
}
