/*
 * pool — per-worker backend connection pools (see pool.h).
 *
 * Invariants:
 *   - total counts every live backend struct with b->pool == p: connecting
 *     or idle here, attached to a session, or kept by the reuse cache; it is
 *     incremented where the pool creates one and decremented only by
 *     the gone hook (from backend_destroy);
 *   - the pool owns a backend while it is connecting for the pool (a
 *     refill, or a connection coming back through UNAUTHENTICATE) or idle:
 *     its pool_node is then on p->opening or on p->idle (newest first),
 *     with done/owner pointing here, so that its death (BYE, EOF, timeout)
 *     comes back here; pool_close_all closes both lists, so nothing the
 *     pool owns outlives the worker's loop;
 *   - an idle one is READY and b->pool_idle is set; nidle and nopening
 *     are the lengths of the two lists;
 *   - logins waiting for a slot are on p->waiters, oldest first, each with
 *     its pool_wait timer running;
 *   - a failed refill backs off (1 s, doubling to 30 s) instead of looping;
 *     a backend that health checks mark down is not refilled;
 *   - a connection coming back through UNAUTHENTICATE is opening until it
 *     is READY again (its failure is no reason to back off).
 *
 * The pool also keeps the backend's post-login capabilities, learned from
 * the logins made on its connections (see backend.c).
 */
#include "pool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "caps.h"
#include "list.h"
#include "log.h"

#define BACKOFF_MIN 1.0
#define BACKOFF_MAX 30.0

struct pool_wait {
	struct pool *p;
	struct list_node node; /* on p->waiters */
	pool_got_cb *got;
	void *arg;
	unsigned long sid;
	backend_done_cb *done;
	void *owner;
	ev_timer timer;
};

struct pool {
	struct list_node node; /* on w->pools */
	struct worker *w;
	struct runtime *rt; /* the runtime cfg and ctx come from (referenced) */
	const struct cfg_backend *cfg;
	size_t index;
	SSL_CTX *ctx;
	struct list_node idle; /* idle backends (pool_node), newest first */
	unsigned nidle;
	struct list_node opening; /* connecting for the pool, not ready yet (pool_node) */
	unsigned nopening;
	unsigned total;
	struct list_node waiters; /* logins waiting for a slot (pool_wait.node), oldest first */
	ev_timer refill;          /* backoff and idle-age sweeps */
	double backoff;
	double backoff_until;          /* no refill before this time (after failures) */
	bool closing;                  /* worker ending: open nothing more */
	char login_caps[CAPS_MAX + 1]; /* post-login capabilities, "" until a login reported them */
	double caps_logged;            /* when a change of them was last logged */
};

static unsigned per_worker(unsigned n, unsigned workers)
{
	if (n == 0)
		return 0;
	return (n + workers - 1) / workers;
}

static unsigned pool_min(const struct pool *p)
{
	return per_worker(p->cfg->pool_min_idle, p->w->nworkers ? p->w->nworkers : 1);
}

static unsigned pool_max(const struct pool *p)
{
	unsigned m = per_worker(p->cfg->pool_max, p->w->nworkers ? p->w->nworkers : 1);

	return m ? m : 1;
}

/* backend_new zero-fills b: its pool_node starts unlinked, i.e. not owned. */
static bool is_owned(const struct backend *b)
{
	return list_linked(&b->pool_node);
}

static bool is_idle(const struct backend *b)
{
	return is_owned(b) && b->pool_idle;
}

/* The pool lets go of b (idle or opening); a no-op for one it does not own. */
static void disown(struct pool *p, struct backend *b)
{
	if (!is_owned(b))
		return;
	list_remove(&b->pool_node);
	if (b->pool_idle)
		p->nidle--;
	else
		p->nopening--;
	b->pool_idle = false;
}

static void idle_push(struct pool *p, struct backend *b)
{
	list_push_front(&p->idle, &b->pool_node);
	b->pool_idle = true;
	b->pool_since = ev_now(p->w->loop);
	p->nidle++;
}

static void opening_push(struct pool *p, struct backend *b)
{
	list_push_front(&p->opening, &b->pool_node);
	b->pool_idle = false;
	p->nopening++;
}

static struct backend *idle_first(const struct pool *p)
{
	return list_first_entry(&p->idle, struct backend, pool_node);
}

static void pool_arm(struct pool *p, double secs)
{
	ev_timer_stop(p->w->loop, &p->refill);
	ev_timer_set(&p->refill, secs, 0.);
	ev_timer_start(p->w->loop, &p->refill);
}

static void pool_refill(struct pool *p);

/* A connection attempt failed: no refill for a while, longer each time. */
static void pool_back_off(struct pool *p)
{
	p->backoff_until = ev_now(p->w->loop) + p->backoff;
	pool_arm(p, p->backoff);
	p->backoff = p->backoff * 2 > BACKOFF_MAX ? BACKOFF_MAX : p->backoff * 2;
}
static void wait_arm(struct pool_wait *wt);
static void pool_serve_waiters(struct pool *p);

/* The pool's own connections report here: ready, or dead. */
static void pool_conn_done(void *owner, struct backend *b, enum bk_result r, const char *why)
{
	struct pool *p = owner;

	if (r == BK_RES_OK && !is_idle(b)) {
		disown(p, b);
		if (b->returning) {
			b->returning = false;
			STAT_INC(&p->w->stats, backend_unauths);
			log_debug("pool %s: connection back from a session (UNAUTHENTICATE)",
			          p->cfg->name);
		}
		p->backoff = BACKOFF_MIN;
		p->backoff_until = 0;
		b->done = pool_conn_done; /* later deaths come here too */
		b->owner = p;
		idle_push(p, b);
		pool_serve_waiters(p);
		return;
	}
	if (is_idle(b)) {
		log_debug("pool %s: idle connection lost: %s", p->cfg->name, why);
	} else if (b->returning) {
		log_msg(LOG_LVL_INFO, "pool %s: connection not returned to the pool: %s",
		        p->cfg->name, why);
	} else {
		log_debug("pool %s: connection failed: %s", p->cfg->name, why);
		pool_back_off(p);
	}
	disown(p, b);
	backend_destroy_later(&p->w->reaper, &b);
}

/* What a counted backend reports (backend.h's hooks), defined below. */
static void pool_hook_gone(void *ctx, struct backend *b);
static const char *pool_hook_login_caps(void *ctx);
static void pool_hook_learn_login_caps(void *ctx, const char *caps);
static void pool_hook_caps_queried(void *ctx);

static const struct backend_hooks pool_hooks = {
    .gone = pool_hook_gone,
    .login_caps = pool_hook_login_caps,
    .learn_login_caps = pool_hook_learn_login_caps,
    .caps_queried = pool_hook_caps_queried,
};

/* Open one connection counted in the pool. NULL if it cannot even start. */
static struct backend *pool_open(struct pool *p, unsigned long sid, backend_done_cb *done,
                                 void *owner)
{
	struct backend *b = backend_new(p->w->loop, p->cfg, p->ctx, sid, done, owner);

	if (b == NULL)
		return NULL;
	b->pool = p;
	backend_set_hooks(b, &pool_hooks, p);
	p->total++;
	STAT_INC(&p->w->stats, backend_connects);
	return b;
}

static void pool_refill(struct pool *p)
{
	if (p->closing || p->w->draining || ev_now(p->w->loop) < p->backoff_until ||
	    worker_drained(p->w, p->cfg->name))
		return;
	while (p->nidle + p->nopening < pool_min(p) && p->total < pool_max(p) &&
	       runtime_backend_up(p->rt, p->index)) {
		struct backend *b = pool_open(p, 0, pool_conn_done, p);
		if (b == NULL) {
			pool_back_off(p);
			return;
		}
		backend_notify_ready(b);
		opening_push(p, b);
	}
}

/* When to look again: before idle connections age out, when a backoff
 * ends, and at least every 2 s (a backend marked down may be up again). */
static double pool_period(const struct pool *p, double now)
{
	double t = p->cfg->pool_idle_ttl / 2;

	if (t > 2.0)
		t = 2.0;
	if (p->backoff_until > now && p->backoff_until - now < t)
		t = p->backoff_until - now;
	return t > 0.05 ? t : 0.05;
}

static void refill_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct pool *p = t->data;
	double now = ev_now(loop), ttl = p->cfg->pool_idle_ttl;
	struct list_node *n, *tmp;

	(void)revents;
	/* Replace idle connections before the backend's pre-login timeout. */
	list_for_each_safe (n, tmp, &p->idle) {
		struct backend *b = list_entry(n, struct backend, pool_node);
		if (now - b->pool_since >= ttl) {
			disown(p, b);
			backend_logout_and_destroy_later(&p->w->reaper, &b);
		}
	}
	pool_refill(p);
	if (p->nidle > 0 || pool_min(p) > 0)
		pool_arm(p, pool_period(p, now));
}

static struct pool *pool_find(const struct worker *w, const char *name)
{
	struct list_node *n;

	list_for_each (n, &w->pools) {
		struct pool *p = list_entry(n, struct pool, node);
		if (strcmp(p->cfg->name, name) == 0)
			return p;
	}
	return NULL;
}

struct pool *pool_of(struct worker *w, struct runtime *rt, const struct cfg_backend *bc)
{
	struct pool *p = pool_find(w, bc->name);
	size_t i = runtime_backend_index(rt, bc);

	if (p == NULL) {
		p = calloc(1, sizeof(*p));
		if (p == NULL)
			return NULL;
		p->w = w;
		list_init(&p->idle);
		list_init(&p->opening);
		list_init(&p->waiters);
		p->backoff = BACKOFF_MIN;
		ev_init(&p->refill, refill_cb);
		p->refill.data = p;
		list_push_front(&w->pools, &p->node);
	}
	if (p->rt != rt) {
		/* New or reloaded settings: idle connections made with the
		 * old ones (address, TLS) are not to be handed out. */
		bool moved =
		    p->cfg != NULL && (p->cfg->addr.len != bc->addr.len ||
		                       memcmp(&p->cfg->addr.ss, &bc->addr.ss, bc->addr.len) != 0 ||
		                       p->cfg->tls != bc->tls);
		struct backend *b;
		while (moved && (b = idle_first(p)) != NULL) {
			disown(p, b);
			backend_destroy_later(&w->reaper, &b);
		}
		if (p->rt != NULL)
			runtime_unref(&p->rt);
		p->rt = runtime_ref(rt);
		p->cfg = bc;
		p->index = i;
		p->ctx = rt->backend_ctx[i];
	}
	return p;
}

void pool_prefill(struct worker *w, struct runtime *rt)
{
	for (size_t i = 0; i < rt->cfg->nbackends; i++) {
		struct pool *p = pool_of(w, rt, &rt->cfg->backends[i]);
		if (p == NULL)
			continue;
		pool_refill(p);
		if (pool_min(p) > 0 && !ev_is_active(&p->refill))
			pool_arm(p, pool_period(p, ev_now(w->loop)));
	}
}

static struct backend *pool_take_idle(struct pool *p, unsigned long sid, backend_done_cb *done,
                                      void *owner)
{
	struct backend *b = idle_first(p);

	if (b == NULL)
		return NULL;
	disown(p, b);
	b->done = done;
	b->owner = owner;
	b->sid = sid;
	b->notify_ready = false;
	pool_refill(p);
	return b;
}

int pool_acquire(struct pool *p, unsigned long sid, backend_done_cb *done, void *owner,
                 struct backend **b_r, pool_got_cb *got, void *arg, struct pool_wait **wait_r)
{
	struct pool_wait *wt;

	*b_r = pool_take_idle(p, sid, done, owner);
	if (*b_r != NULL)
		return 0;
	if (p->total < pool_max(p)) {
		*b_r = pool_open(p, sid, done, owner);
		return *b_r != NULL ? 0 : -1;
	}
	wt = calloc(1, sizeof(*wt));
	if (wt == NULL)
		return -1;
	wt->p = p;
	wt->got = got;
	wt->arg = arg;
	wt->sid = sid;
	wt->done = done;
	wt->owner = owner;
	list_push_back(&p->waiters, &wt->node);
	*wait_r = wt;
	wait_arm(wt);
	return -2;
}

static void wait_unlink(struct pool_wait *wt)
{
	list_remove(&wt->node);
	ev_timer_stop(wt->p->w->loop, &wt->timer);
}

static struct pool_wait *wait_first(const struct pool *p)
{
	return list_first_entry(&p->waiters, struct pool_wait, node);
}

static void wait_timeout(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct pool_wait *wt = t->data;
	pool_got_cb *got = wt->got;
	void *arg = wt->arg;

	(void)loop;
	(void)revents;
	wait_unlink(wt);
	free(wt);
	got(arg, NULL);
}

/* The upper bound on a login's wait (idempotent). */
static void wait_arm(struct pool_wait *wt)
{
	if (ev_is_active(&wt->timer))
		return;
	/* The loop's cached time may be a busy iteration old: a login must
	 * wait the whole pool_wait from now, not from then. */
	ev_now_update(wt->p->w->loop);
	ev_timer_init(&wt->timer, wait_timeout, wt->p->cfg->pool_wait, 0.);
	wt->timer.data = wt;
	ev_timer_start(wt->p->w->loop, &wt->timer);
}

void pool_counts(const struct pool *p, unsigned *idle_r, unsigned *total_r, unsigned *waiting_r)
{
	unsigned n = 0;
	struct list_node *node;

	list_for_each (node, &p->waiters)
		n++;
	if (idle_r != NULL)
		*idle_r = p->nidle;
	if (total_r != NULL)
		*total_r = p->total;
	if (waiting_r != NULL)
		*waiting_r = n;
}

void pool_wait_cancel(struct pool_wait *wt)
{
	if (wt == NULL)
		return;
	wait_unlink(wt);
	free(wt);
}

/* Hand free capacity to the logins waiting for it, oldest first. */
static void pool_serve_waiters(struct pool *p)
{
	struct pool_wait *wt;

	while (!p->closing && (wt = wait_first(p)) != NULL) {
		struct backend *b = pool_take_idle(p, wt->sid, wt->done, wt->owner);

		if (b == NULL && p->total < pool_max(p))
			b = pool_open(p, wt->sid, wt->done, wt->owner);
		if (b == NULL) {
			struct list_node *n;
			list_for_each (n, &p->waiters) {
				wait_arm(list_entry(n, struct pool_wait, node));
			}
			return;
		}
		pool_got_cb *got = wt->got;
		void *arg = wt->arg;
		wait_unlink(wt);
		free(wt);
		got(arg, b);
	}
}

/* " +NEW -GONE ..." between two capability lists, cut to fit out. */
static void caps_diff(const char *old, const char *new, char *out, size_t outlen)
{
	size_t used = 0;
	const char *lists[2] = {new, old}, *others[2] = {old, new};

	out[0] = '\0';
	for (int k = 0; k < 2; k++) {
		const char *q = lists[k];
		while (*q != '\0') {
			size_t n;
			while (*q == ' ')
				q++;
			n = strcspn(q, " ");
			char atom[128];
			if (n > 0 && n < sizeof(atom)) {
				memcpy(atom, q, n);
				atom[n] = '\0';
			}
			if (n > 0 && n < sizeof(atom) &&
			    !caps_has(others[k], strlen(others[k]), atom)) {
				int w = snprintf(out + used, outlen - used, " %c%.*s",
				                 k ? '-' : '+', (int)n, q);
				if (w < 0 || (size_t)w >= outlen - used)
					return;
				used += (size_t)w;
			}
			q += n;
		}
	}
}

void pool_put_back(struct pool *p, struct backend *b, bool unselect)
{
	/* Settings reloaded since it was opened, or the worker is ending:
	 * close it instead. */
	if (p->closing || p->w->draining || b->cfg != p->cfg ||
	    worker_drained(p->w, p->cfg->name) ||
	    backend_unauthenticate(b, unselect, pool_conn_done, p) < 0) {
		backend_logout_and_destroy_later(&p->w->reaper, &b);
		return;
	}
	opening_push(p, b);
}

/* ---- what the backends report (hooks) ---------------------------------- */

/* The backend's post-login capabilities as last reported by a login on one
 * of this pool's connections; NULL until one did. */
static const char *pool_hook_login_caps(void *ctx)
{
	const struct pool *p = ctx;

	return p->login_caps[0] != '\0' ? p->login_caps : NULL;
}

/* A login's OK (or its CAPABILITY answer) reported caps: keep them, and
 * count and log a change. */
static void pool_hook_learn_login_caps(void *ctx, const char *caps)
{
	struct pool *p = ctx;
	size_t len = strlen(caps);
	double now = ev_now(p->w->loop);

	if (len == 0 || len >= sizeof(p->login_caps) || strcmp(caps, p->login_caps) == 0)
		return;
	if (p->login_caps[0] != '\0') {
		STAT_INC(&p->w->stats, caps_changes);
		/* Per-user capability lists would change it at every login: say
		 * so at most once a minute. */
		if (now - p->caps_logged >= 60.0) {
			char diff[512];
			p->caps_logged = now;
			caps_diff(p->login_caps, caps, diff, sizeof(diff));
			log_msg(LOG_LVL_INFO, "backend %s: post-login capabilities changed:%s",
			        p->cfg->name, diff);
		}
	} else {
		log_debug("backend %s: post-login capabilities: %.300s", p->cfg->name, caps);
	}
	memcpy(p->login_caps, caps, len + 1);
}

/* A login had to ask CAPABILITY (for /metrics). */
static void pool_hook_caps_queried(void *ctx)
{
	struct pool *p = ctx;

	STAT_INC(&p->w->stats, caps_queries);
}

/* A backend counted here is being freed (backend_destroy): its slot is
 * free. One whose b->pool was cleared (pool_destroy_all) is not counted. */
static void pool_hook_gone(void *ctx, struct backend *b)
{
	struct pool *p = ctx;

	if (b->pool == NULL)
		return;
	disown(p, b);
	p->total--;
	pool_serve_waiters(p);
	pool_refill(p);
}

/* ---- the worker's end ---------------------------------------------------- */

/* Let go of what the pool owns: idle connections and those still opening
 * (a refill, or one coming back through UNAUTHENTICATE). Closed for the
 * reaper, or freed now and no longer counted (now: the pool goes too). */
static void pool_close_owned(struct pool *p, bool now)
{
	struct list_node *heads[2] = {&p->idle, &p->opening};

	for (int i = 0; i < 2; i++) {
		while (!list_empty(heads[i])) {
			struct backend *b = list_first_entry(heads[i], struct backend, pool_node);
			disown(p, b);
			if (now) {
				b->pool = NULL;
				backend_destroy(&b);
			} else {
				backend_destroy_later(&p->w->reaper, &b);
			}
		}
	}
}

unsigned pool_drain(struct worker *w, const char *name)
{
	struct pool *p = pool_find(w, name);
	unsigned n = 0;

	if (p == NULL)
		return 0;
	n = p->nidle + p->nopening;
	pool_close_owned(p, false);
	return n;
}

void pool_close_all(struct worker *w)
{
	struct list_node *n;

	list_for_each (n, &w->pools) {
		struct pool *p = list_entry(n, struct pool, node);
		p->closing = true;
		ev_timer_stop(w->loop, &p->refill);
		pool_close_owned(p, false);
	}
}

void pool_destroy_all(struct worker *w)
{
	while (!list_empty(&w->pools)) {
		struct pool *p = list_first_entry(&w->pools, struct pool, node);
		list_remove(&p->node);
		ev_timer_stop(w->loop, &p->refill);
		struct pool_wait *wt;
		while ((wt = wait_first(p)) != NULL) {
			wait_unlink(wt);
			free(wt);
		}
		p->closing = true;
		pool_close_owned(p, true); /* nothing, after pool_close_all */
		runtime_unref(&p->rt);
		free(p);
	}
}
