/*
 * health — backend health checks on a thread and event loop of their own
 * (see health.h).
 *
 *   main thread                          health thread (its own ev_loop)
 *     health_start: loop, targets,         per target, every check_interval:
 *       pthread_create  ------------->       tick -> backend_new + notify_ready
 *                                                    + deadline (check_timeout)
 *                                            done(OK)  -> LOGOUT, free later -> success
 *                                            done(err) -> free later -> failure
 *                                            reaper (ev_prepare): the frees
 *                                            deadline  -> destroy probe -> failure
 *                                            success/failure -> rise/fall -> backend_up[i]
 *     health_reload: copy states,
 *       mailbox + ev_async  ---------->    wake: carry states by name, new targets
 *     health_stop: mailbox + ev_async ->   wake: ev_break; free targets
 *       join, free the rest
 *
 * Invariants:
 *  - hc.rt, hc.targets and every backend probe belong to the health thread
 *    while it runs, and to the caller of health_start/health_stop before and
 *    after (pthread_create and pthread_join order those accesses). The
 *    mailbox (latest, reload_pending, stop) is the only state shared while
 *    it runs, and only under hc.lock.
 *  - rt->backend_up[i] of the checked runtime is written here only, with
 *    relaxed stores: each flag stands alone, nothing else is published
 *    through it. t->up mirrors it.
 *  - A target has at most one probe in flight (t->probe, its deadline
 *    running). A probe is never freed inside its own callback chain: the
 *    done callback closes it (after a LOGOUT courtesy when it was greeted)
 *    and hands it to the thread's reaper (reaper.h), which frees it before
 *    the loop next sleeps. Any other callback (tick, deadline, wake) is
 *    outside that chain and may free it at once; backend_destroy stops its
 *    watchers and drops their pending events.
 *  - A target with check_interval = 0 has no timer running and is always up.
 *  - The thread installs no signal handler and blocks every signal, so that
 *    the main thread's sigwait sees them all.
 */
#include "health.h"

#include <ev.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "log.h"
#include "reaper.h"

/* Session id in backend.c's log lines about probes ("S-0"): sessions start at 1. */
#define HC_SID 0

struct hc_target {
	size_t index; /* in hc.rt->cfg->backends */
	const struct cfg_backend *cfg;
	SSL_CTX *ctx;          /* hc.rt->backend_ctx[index]; NULL for tls = none */
	ev_timer tick;         /* every check_interval: start a probe; never started if 0 */
	ev_timer deadline;     /* check_timeout of the probe in flight */
	struct backend *probe; /* in flight, or NULL */
	unsigned ok_run;       /* successes in a row (saturating) */
	unsigned fail_run;     /* failures in a row (saturating) */
	bool up;               /* the verdict, as stored in hc.rt->backend_up[index] */
};

static struct {
	bool running; /* health_start succeeded and health_stop has not run */
	pthread_t thread;
	struct ev_loop *loop;
	ev_async wake;
	ev_prepare reap_prepare; /* runs the reaper before the loop sleeps */
	struct reaper reaper;    /* finished probes, freed outside their callbacks */

	pthread_mutex_t lock;   /* protects the mailbox below */
	struct runtime *latest; /* the newest runtime handed over (a reference) */
	bool reload_pending;    /* latest is not yet the one checked */
	bool stop;

	struct runtime *rt;        /* whose backends are checked (a reference) */
	struct hc_target *targets; /* one per rt->cfg->backends */
	size_t ntargets;
} hc;

static void hc_set_up(struct hc_target *t, bool up)
{
	t->up = up;
	runtime_set_backend_up(hc.rt, t->index, up);
}

/* Count one probe's outcome; flip the verdict when a run is long enough. */
static void hc_result(struct hc_target *t, bool ok, const char *why)
{
	if (ok) {
		t->fail_run = 0;
		if (t->ok_run < UINT_MAX)
			t->ok_run++;
		if (!t->up && t->ok_run >= t->cfg->check_rise) {
			hc_set_up(t, true);
			log_info("backend %s (%s) is up again", t->cfg->name, t->cfg->addr.text);
		}
	} else {
		t->ok_run = 0;
		if (t->fail_run < UINT_MAX)
			t->fail_run++;
		log_debug("backend %s (%s) health check failed (%u in a row): %s", t->cfg->name,
		          t->cfg->addr.text, t->fail_run, why);
		if (t->up && t->fail_run >= t->cfg->check_fall) {
			hc_set_up(t, false);
			log_warn("backend %s (%s) is down: %s", t->cfg->name, t->cfg->addr.text,
			         why);
		}
	}
}

/*
 * backend_done_cb of a probe: called from inside the backend's own
 * callbacks, so the probe is closed now and freed by the reaper. After a
 * success, LOGOUT is a courtesy to the backend (a clean end in its logs):
 * one flush, and the answer is not waited for (the closed backend reads
 * nothing more, so its "* BYE" is never taken for a failure).
 */
static void hc_probe_done(void *owner, struct backend *b, enum bk_result r, const char *why)
{
	struct hc_target *t = owner;

	ev_timer_stop(hc.loop, &t->deadline);
	t->probe = NULL;
	if (r == BK_RES_OK)
		backend_logout_and_destroy_later(&hc.reaper, &b);
	else
		backend_destroy_later(&hc.reaper, &b);
	hc_result(t, r == BK_RES_OK, why);
}

static void hc_deadline_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct hc_target *t = w->data;
	char why[64];

	(void)loop;
	(void)revents;
	/* Not inside the probe's callbacks: it can go at once. */
	backend_destroy(&t->probe);
	snprintf(why, sizeof(why), "check timed out after %gs", t->cfg->check_timeout);
	hc_result(t, false, why);
}

static void hc_tick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct hc_target *t = w->data;

	(void)revents;
	/* A probe slower than check_interval ends by its own deadline. */
	if (t->probe != NULL)
		return;
	t->probe = backend_new(loop, t->cfg, t->ctx, HC_SID, hc_probe_done, t);
	if (t->probe == NULL) {
		/* backend_new logged why (and calls no callback). */
		hc_result(t, false, "cannot connect");
		return;
	}
	backend_notify_ready(t->probe);
	ev_timer_set(&t->deadline, t->cfg->check_timeout, 0.);
	ev_timer_start(loop, &t->deadline);
}

/* Runs before the loop sleeps: frees the probes that finished meanwhile. */
static void hc_reaper_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
	(void)loop;
	(void)w;
	(void)revents;
	(void)reaper_run(&hc.reaper);
}

/* Stop and free targets[0..n), and any probe they hold. */
static void hc_targets_free(struct hc_target **targetsp, size_t n)
{
	struct hc_target *targets = *targetsp;

	if (targets == NULL)
		return;
	for (size_t i = 0; i < n; i++) {
		struct hc_target *t = &targets[i];

		ev_timer_stop(hc.loop, &t->tick);
		ev_timer_stop(hc.loop, &t->deadline);
		backend_destroy(&t->probe);
	}
	free(targets);
	*targetsp = NULL;
}

static const struct hc_target *hc_find(const struct hc_target *targets, size_t n, const char *name)
{
	for (size_t i = 0; i < n; i++) {
		if (strcmp(targets[i].cfg->name, name) == 0)
			return &targets[i];
	}
	return NULL;
}

/*
 * Targets for rt's backends, each with the state of the old target of the
 * same name (if any, and if it is checked at all), and that state stored
 * in rt->backend_up. Timers are set up, not started. NULL when out of
 * memory.
 */
static struct hc_target *hc_targets_new(struct runtime *rt, const struct hc_target *old,
                                        size_t nold)
{
	size_t n = rt->cfg->nbackends;
	struct hc_target *targets = calloc(n > 0 ? n : 1, sizeof(*targets));

	if (targets == NULL)
		return NULL;
	for (size_t i = 0; i < n; i++) {
		struct hc_target *t = &targets[i];
		const struct hc_target *o;

		t->index = i;
		t->cfg = &rt->cfg->backends[i];
		t->ctx = rt->backend_ctx[i];
		t->up = true;
		o = hc_find(old, nold, t->cfg->name);
		if (o != NULL && t->cfg->check_interval > 0) {
			t->up = o->up;
			t->ok_run = o->ok_run;
			t->fail_run = o->fail_run;
		}
		runtime_set_backend_up(rt, i, t->up);
		/* The first probe at once, so that a dead backend is found early. */
		ev_timer_init(&t->tick, hc_tick_cb, 0., t->cfg->check_interval);
		t->tick.data = t;
		ev_timer_init(&t->deadline, hc_deadline_cb, t->cfg->check_timeout, 0.);
		t->deadline.data = t;
	}
	return targets;
}

static void hc_targets_start(void)
{
	for (size_t i = 0; i < hc.ntargets; i++) {
		if (hc.targets[i].cfg->check_interval > 0)
			ev_timer_start(hc.loop, &hc.targets[i].tick);
	}
}

/* Check nrt's backends from now on (the health thread; takes nrt's reference). */
static void hc_switch(struct runtime *nrt)
{
	struct hc_target *targets = hc_targets_new(nrt, hc.targets, hc.ntargets);

	if (targets == NULL) {
		/* Keep checking the old ones; nrt's backends stay up (optimistic). */
		log_error("health checks: out of memory at reload; checking the old backends");
		runtime_unref(&nrt);
		return;
	}
	hc_targets_free(&hc.targets, hc.ntargets);
	runtime_unref(&hc.rt);
	hc.rt = nrt;
	hc.targets = targets;
	hc.ntargets = nrt->cfg->nbackends;
	hc_targets_start();
}

static void hc_wake_cb(struct ev_loop *loop, ev_async *w, int revents)
{
	struct runtime *nrt = NULL;
	bool stop;

	(void)w;
	(void)revents;
	pthread_mutex_lock(&hc.lock);
	stop = hc.stop;
	if (hc.reload_pending && !stop) {
		nrt = runtime_ref(hc.latest);
		hc.reload_pending = false;
	}
	pthread_mutex_unlock(&hc.lock);
	if (stop) {
		ev_break(loop, EVBREAK_ALL);
		return;
	}
	if (nrt != NULL)
		hc_switch(nrt);
}

static void *hc_main(void *arg)
{
	(void)arg;
	ev_run(hc.loop, 0);
	/* Everything on the loop goes here, on the loop's own thread. */
	hc_targets_free(&hc.targets, hc.ntargets);
	hc.ntargets = 0;
	(void)reaper_run(&hc.reaper);
	ev_async_stop(hc.loop, &hc.wake);
	ev_prepare_stop(hc.loop, &hc.reap_prepare);
	return NULL;
}

/* Undo health_start's set-up (the thread is not running). */
static void hc_cleanup(void)
{
	hc_targets_free(&hc.targets, hc.ntargets);
	(void)reaper_run(&hc.reaper);
	if (hc.loop != NULL)
		ev_loop_destroy(hc.loop);
	runtime_unref(&hc.rt);
	runtime_unref(&hc.latest);
	pthread_mutex_destroy(&hc.lock);
	memset(&hc, 0, sizeof(hc));
}

int health_start(struct runtime *rt)
{
	sigset_t all, old;
	size_t checked = 0;
	int r;

	if (hc.running) {
		log_error("health checks already running");
		return -1;
	}
	/* The runtime in force starts and changes here (health_reload): the
	 * stats thread reads backend and listener names from it. */
	runtime_publish(rt);
	memset(&hc, 0, sizeof(hc));
	pthread_mutex_init(&hc.lock, NULL);
	/* NOSIGMASK: libev must not touch the signal mask the thread inherits. */
	hc.loop = ev_loop_new(EVFLAG_AUTO | EVFLAG_NOSIGMASK);
	if (hc.loop == NULL) {
		log_error("health checks: cannot create an event loop");
		goto fail;
	}
	hc.rt = runtime_ref(rt);
	hc.latest = runtime_ref(rt);
	hc.targets = hc_targets_new(rt, NULL, 0);
	if (hc.targets == NULL) {
		log_error("health checks: out of memory");
		goto fail;
	}
	hc.ntargets = rt->cfg->nbackends;
	ev_async_init(&hc.wake, hc_wake_cb);
	ev_async_start(hc.loop, &hc.wake);
	reaper_init(&hc.reaper);
	ev_prepare_init(&hc.reap_prepare, hc_reaper_cb);
	ev_prepare_start(hc.loop, &hc.reap_prepare);
	hc_targets_start();
	for (size_t i = 0; i < hc.ntargets; i++)
		checked += hc.targets[i].cfg->check_interval > 0;

	/* Whatever the caller's mask, no signal may be delivered to this thread. */
	sigfillset(&all);
	pthread_sigmask(SIG_SETMASK, &all, &old);
	r = pthread_create(&hc.thread, NULL, hc_main, NULL);
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	if (r != 0) {
		log_error("health checks: cannot start a thread: %s", strerror(r));
		ev_async_stop(hc.loop, &hc.wake);
		ev_prepare_stop(hc.loop, &hc.reap_prepare);
		goto fail;
	}
	hc.running = true;
	log_info("health checks: %zu of %zu backends checked", checked, hc.ntargets);
	return 0;
fail:
	hc_cleanup();
	return -1;
}

void health_reload(struct runtime *rt)
{
	struct runtime *prev;

	runtime_publish(rt);
	if (!hc.running)
		return;
	pthread_mutex_lock(&hc.lock);
	prev = hc.latest;
	/*
	 * Copy the verdicts now, so that workers given rt after this call see
	 * them at once; the thread copies them again when it switches, which
	 * settles any flip that happens in between.
	 */
	for (size_t i = 0; i < rt->cfg->nbackends; i++) {
		const struct cfg_backend *b = &rt->cfg->backends[i];
		const struct cfg_backend *o = cfg_backend_find(prev->cfg, b->name);

		if (o != NULL && b->check_interval > 0) {
			size_t j = runtime_backend_index(prev, o);
			bool up = atomic_load_explicit(&prev->backend_up[j], memory_order_relaxed);

			atomic_store_explicit(&rt->backend_up[i], up, memory_order_relaxed);
		}
	}
	hc.latest = runtime_ref(rt);
	hc.reload_pending = true;
	pthread_mutex_unlock(&hc.lock);
	/* The thread holds its own reference on the runtime it checks. */
	runtime_unref(&prev);
	ev_async_send(hc.loop, &hc.wake);
}

void health_stop(void)
{
	runtime_publish(NULL);
	if (!hc.running)
		return;
	pthread_mutex_lock(&hc.lock);
	hc.stop = true;
	pthread_mutex_unlock(&hc.lock);
	ev_async_send(hc.loop, &hc.wake);
	pthread_join(hc.thread, NULL);
	hc_cleanup();
}
