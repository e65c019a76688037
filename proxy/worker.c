/*
 * worker — an event-loop thread (see worker.h).
 *
 * The main thread owns configuration and signals; a worker owns its loop,
 * its listening sockets and its sessions, and touches nothing else. The
 * mailbox (new runtime, drain, stop) is the only shared state, under lock,
 * read when the ev_async fires; the watchers' mailbox (watch.h: workers
 * hold each other's watchers by message) is the other, watch.c's alone.
 */
#include "worker.h"

#include <errno.h>
#include <malloc.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "cryptpool.h"
#include "drain.h"
#include "ident.h"
#include "log.h"
#include "pool.h"
#include "redis.h"
#include "reuse.h"
#include "session.h"
#include "sessions_api.h"
#include "tickets.h"
#include "ttlmap.h"
#include "watch.h"

#define TRIM_AFTER_FREES 64  /* frees since the last malloc_trim worth another */
#define TRIM_BUSY_EVERY  5.0 /* seconds between trims while sessions live here */

static void listeners_set(struct worker *w, bool on)
{
	for (size_t i = 0; i < w->nlisteners; i++) {
		struct listener *l = &w->listeners[i];
		if (l->fd < 0)
			continue;
		if (on)
			ev_io_start(w->loop, &l->io);
		else
			ev_io_stop(w->loop, &l->io);
	}
}

static void accept_pause_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct worker *w = t->data;

	(void)loop;
	(void)revents;
	if (!w->draining)
		listeners_set(w, true);
}

static void accept_cb(struct ev_loop *loop, ev_io *io, int revents)
{
	struct listener *l = io->data;
	struct worker *w = l->w;

	(void)loop;
	(void)revents;
	/* A bounded batch: accepting must not starve established sessions. */
	for (int i = 0; i < 64 && !w->draining; i++) {
		struct sockaddr_storage ss;
		socklen_t len = sizeof(ss);
		int one = 1;
		int fd = accept4(l->fd, (struct sockaddr *)&ss, &len, SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno == EMFILE || errno == ENFILE || errno == ENOBUFS ||
			    errno == ENOMEM) {
				log_error("worker %d: accept: %s; pausing accepts for 1s", w->id,
				          strerror(errno));
				listeners_set(w, false);
				ev_timer_stop(w->loop, &w->accept_pause);
				ev_timer_set(&w->accept_pause, 1., 0.);
				ev_timer_start(w->loop, &w->accept_pause);
			}
			break;
		}
		if (ss.ss_family != AF_UNIX)
			(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		session_accept(w, l->index, fd, (struct sockaddr *)&ss, len);
	}
}

static void trim_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct worker *w = t->data;

	(void)revents;
	malloc_trim(0);
	w->trimmed_at = ev_now(loop);
	w->freed = 0;
}

static void reaper_cb(struct ev_loop *loop, ev_prepare *p, int revents)
{
	struct worker *w = p->data;

	(void)revents;
	w->freed += reaper_run(&w->reaper);
	/* Give the heap pages that frees left whole back to the system, so
	 * that RSS follows the load down instead of staying at its peak: at
	 * most once a second when a burst is over (no session left here),
	 * else at most every TRIM_BUSY_EVERY (sessions that parked and freed
	 * their SSL objects leave holes between those that stay). */
	double since = ev_now(loop) - w->trimmed_at;
	if (w->freed >= TRIM_AFTER_FREES && w->nsessions == 0 && since >= 1.0) {
		ev_timer_stop(loop, &w->trim_timer);
		trim_cb(loop, &w->trim_timer, 0);
	} else if (w->freed >= TRIM_AFTER_FREES && !ev_is_active(&w->trim_timer)) {
		ev_timer_set(&w->trim_timer,
		             since >= TRIM_BUSY_EVERY ? 1.0 : TRIM_BUSY_EVERY - since, 0.);
		ev_timer_start(loop, &w->trim_timer);
	}
	if (w->draining && w->nsessions == 0)
		ev_break(loop, EVBREAK_ALL);
}

static void drain_timer_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct worker *w = t->data;

	(void)loop;
	(void)revents;
	log_warn("worker %d: shutdown_timeout reached, closing %zu sessions", w->id, w->nsessions);
	session_drain_all(w, true);
}

static void start_drain(struct worker *w)
{
	if (w->draining)
		return;
	w->draining = true;
	pool_close_all(w);
	listeners_set(w, false);
	for (size_t i = 0; i < w->nlisteners; i++) {
		if (w->listeners[i].fd >= 0) {
			close(w->listeners[i].fd);
			w->listeners[i].fd = -1;
		}
	}
	session_drain_all(w, false);
	ev_timer_set(&w->drain_timer, w->rt->cfg->shutdown_timeout, 0.);
	ev_timer_start(w->loop, &w->drain_timer);
}

static void wake_cb(struct ev_loop *loop, ev_async *a, int revents)
{
	struct worker *w = a->data;
	struct runtime *rt;
	struct list_node reqs;
	bool drain, stop;

	(void)revents;
	list_init(&reqs);
	pthread_mutex_lock(&w->lock);
	rt = w->new_rt;
	w->new_rt = NULL;
	drain = w->cmd_drain;
	stop = w->cmd_stop;
	while (!list_empty(&w->sessions_reqs)) {
		struct list_node *n = list_first(&w->sessions_reqs);

		list_remove(n);
		list_push_back(&reqs, n);
	}
	pthread_mutex_unlock(&w->lock);

	/* GET /sessions: answered from here, this thread's sessions' owner. */
	while (!list_empty(&reqs)) {
		struct sessions_slot *slot = list_first_entry(&reqs, struct sessions_slot, node);

		list_remove(&slot->node);
		session_snapshot(w, slot->rq);
		sessions_slot_done(slot);
	}

	if (rt != NULL) {
		runtime_unref(&w->rt);
		w->rt = rt;
		pool_prefill(w, rt);
	}
	if (stop) {
		ev_break(loop, EVBREAK_ALL);
		return;
	}
	if (drain)
		start_drain(w);
}

int worker_init(struct worker *w, int id, struct runtime *rt, const int *fds, size_t nfds)
{
	memset(w, 0, sizeof(*w));
	w->id = id;
	w->loop = ev_loop_new(EVFLAG_AUTO | EVFLAG_NOSIGMASK);
	if (w->loop == NULL)
		return -1;
	w->rt = runtime_ref(rt);
	pthread_mutex_init(&w->lock, NULL);
	list_init(&w->sessions_reqs);
	w->listeners = calloc(nfds ? nfds : 1, sizeof(*w->listeners));
	if (w->listeners == NULL)
		return -1;
	w->nlisteners = nfds;
	for (size_t i = 0; i < nfds; i++) {
		struct listener *l = &w->listeners[i];
		l->w = w;
		l->fd = fds[i];
		l->index = i;
		ev_io_init(&l->io, accept_cb, fds[i], EV_READ);
		l->io.data = l;
	}
	if (watch_init(w) < 0)
		return -1;
	ev_async_init(&w->wake, wake_cb);
	w->wake.data = w;
	ev_async_start(w->loop, &w->wake);
	reaper_init(&w->reaper);
	list_init(&w->sessions);
	list_init(&w->reuse);
	list_init(&w->pools);
	ev_prepare_init(&w->reap_prepare, reaper_cb);
	w->reap_prepare.data = w;
	ev_prepare_start(w->loop, &w->reap_prepare);
	ev_init(&w->drain_timer, drain_timer_cb);
	w->drain_timer.data = w;
	ev_init(&w->accept_pause, accept_pause_cb);
	w->accept_pause.data = w;
	drain_init(w);
	ev_init(&w->trim_timer, trim_cb);
	w->trim_timer.data = w;
	listeners_set(w, true);
	return 0;
}

/* An event from the Redis channel (see redis.h). */
static void on_event(void *arg, const char *kind, const char *a1, size_t l1, const char *a2,
                     size_t l2)
{
	struct worker *w = arg;

	uint8_t user[IDENT_USER_MAX];

	/* Sessions, kept sessions and cached routes are keyed by the user name
	 * as imapmux identifies users (username_case): name it the same way.
	 * A name longer than any login can have matches nothing. */
	if ((strcmp(kind, "kick") == 0 || strcmp(kind, "route") == 0 ||
	     strcmp(kind, "mbox") == 0) &&
	    l1 > IDENT_USER_MAX)
		return;
	ident_user_norm((const uint8_t *)a1, l1, w->rt->cfg->username_case == CFG_UCASE_FOLD, user);
	if (strcmp(kind, "kick") == 0) {
		session_kick(w, (const char *)user, l1);
		reuse_drop_user(w, (const char *)user, l1);
	} else if (strcmp(kind, "route") == 0) {
		if (w->routes != NULL)
			ttlmap_del(w->routes, user, l1);
	} else if (strcmp(kind, "resync") == 0) {
		/* Events may have been missed while unsubscribed. */
		if (w->routes != NULL)
			ttlmap_clear(w->routes);
		drain_resync(w);
		session_wake_parked(w);
	} else if (strcmp(kind, "drain") == 0 || strcmp(kind, "undrain") == 0) {
		drain_event(w, kind[0] == 'd', a1, l1);
	} else if (strcmp(kind, "mbox") == 0) {
		session_mbox_changed(w, user, l1, (const uint8_t *)a2, l2);
	}
}

static uint64_t random_seed(void)
{
	uint64_t seed = 0;

	if (getentropy(&seed, sizeof(seed)) < 0)
		seed = (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)&seed;
	return seed;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	const struct cfg *cfg = w->rt->cfg;

	/* Made here: they belong to this thread's loop. */
	if (cfg->has_redis) {
		w->rds = rds_new(w->loop, cfg, on_event, w);
		if (w->rds != NULL)
			rds_count_in(w->rds, &w->stats.redis_up, &w->stats.redis_reconnects);
		w->routes = ttlmap_new(100000, random_seed());
		if (w->rds == NULL || w->routes == NULL)
			log_error("worker %d: cannot set up Redis; logins needing it will fail",
			          w->id);
	}
	tickets_start(w);
	w->crypt = crypt_port_new(w->loop);
	if (w->crypt == NULL)
		log_error("worker %d: cannot set up password checks", w->id);
	pool_prefill(w, w->rt);
	ev_run(w->loop, 0);
	drain_stop(w);
	session_stop_all(w);
	watch_close_all(w);
	pool_close_all(w);
	reuse_drop_all(w);
	hmap_destroy(&w->parked);
	reaper_cb(w->loop, &w->reap_prepare, 0);
	pool_destroy_all(w);
	tickets_stop(w);
	rds_destroy(&w->rds);
	ttlmap_destroy(&w->routes);
	crypt_port_destroy(&w->crypt);
	return NULL;
}

int worker_start(struct worker *w)
{
	return pthread_create(&w->thread, NULL, worker_main, w) == 0 ? 0 : -1;
}

void worker_join(struct worker *w)
{
	pthread_join(w->thread, NULL);
}

static void worker_post(struct worker *w, struct runtime *rt, bool drain, bool stop)
{
	pthread_mutex_lock(&w->lock);
	if (rt != NULL) {
		if (w->new_rt != NULL)
			runtime_unref(&w->new_rt);
		w->new_rt = runtime_ref(rt);
	}
	w->cmd_drain |= drain;
	w->cmd_stop |= stop;
	pthread_mutex_unlock(&w->lock);
	ev_async_send(w->loop, &w->wake);
}

void worker_post_reload(struct worker *w, struct runtime *rt)
{
	worker_post(w, rt, false, false);
}

void worker_post_drain(struct worker *w)
{
	worker_post(w, NULL, true, false);
}

void worker_post_stop(struct worker *w)
{
	worker_post(w, NULL, false, true);
}

void worker_post_sessions(struct worker *w, struct sessions_slot *slot)
{
	pthread_mutex_lock(&w->lock);
	list_push_back(&w->sessions_reqs, &slot->node);
	pthread_mutex_unlock(&w->lock);
	ev_async_send(w->loop, &w->wake);
}

void worker_sessions_post(void *arg, unsigned i, struct sessions_slot *slot)
{
	struct worker *all = arg;

	worker_post_sessions(&all[i], slot);
}

void worker_destroy(struct worker *w)
{
	/* Sessions still open at a hard stop: their sockets close with the
	 * process; freeing them one by one would gain nothing. */
	for (size_t i = 0; i < w->nlisteners; i++) {
		if (w->listeners[i].fd >= 0)
			close(w->listeners[i].fd);
	}
	free(w->listeners);
	/* Asked after the loop ended (a drain): never answered. */
	while (w->loop != NULL && !list_empty(&w->sessions_reqs)) {
		struct sessions_slot *slot =
		    list_first_entry(&w->sessions_reqs, struct sessions_slot, node);

		list_remove(&slot->node);
		sessions_slot_drop(slot);
	}
	if (w->new_rt != NULL)
		runtime_unref(&w->new_rt);
	runtime_unref(&w->rt);
	watch_fini(w);
	if (w->loop != NULL)
		ev_loop_destroy(w->loop);
	pthread_mutex_destroy(&w->lock);
}
