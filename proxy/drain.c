/*
 * drain — drained backends of one worker (see drain.h).
 */
#include "drain.h"

#include <stdio.h>
#include <string.h>

#include "log.h"
#include "pool.h"
#include "redis.h"
#include "reuse.h"
#include "session.h"

#define RETRY_SOON  0.5 /* the command link not up yet, or the read timed out */
#define RETRY_LATER 5.0

static bool name_ok(const char *name, size_t len)
{
	return len > 0 && len < CFG_NAME_MAX && memchr(name, '\0', len) == NULL;
}

/* What a drain does to what this worker holds of backend name. */
static void drain_apply(struct worker *w, const char *name)
{
	unsigned n = session_backend_drain(w, name);
	unsigned kept = reuse_drop_backend(w, name);
	unsigned idle = pool_drain(w, name);

	log_info("worker %d: backend %s drained: %u session(s) leaving, %u kept session(s) "
	         "and %u idle connection(s) closed",
	         w->id, name, n, kept, idle);
}

static bool set_add(struct drained *d, const char *name, size_t len)
{
	for (size_t i = 0; i < d->n; i++)
		if (strlen(d->name[i]) == len && memcmp(d->name[i], name, len) == 0)
			return false;
	if (d->n == DRAINED_MAX) {
		log_warn("drain: more than %d drained backends; ignoring %.*s", DRAINED_MAX,
		         (int)len, name);
		return false;
	}
	memcpy(d->name[d->n], name, len);
	d->name[d->n][len] = '\0';
	d->n++;
	return true;
}

static bool set_del(struct drained *d, const char *name, size_t len)
{
	for (size_t i = 0; i < d->n; i++) {
		if (strlen(d->name[i]) == len && memcmp(d->name[i], name, len) == 0) {
			d->n--;
			if (i != d->n)
				memcpy(d->name[i], d->name[d->n], sizeof(d->name[i]));
			return true;
		}
	}
	return false;
}

void drain_event(struct worker *w, bool on, const char *name, size_t len)
{
	if (!name_ok(name, len)) {
		log_warn("redis: ignoring %s event with a bad backend name",
		         on ? "drain" : "undrain");
		return;
	}
	if (on) {
		if (set_add(&w->drained, name, len))
			drain_apply(w, w->drained.name[w->drained.n - 1]);
	} else if (set_del(&w->drained, name, len)) {
		log_info("worker %d: backend %.*s undrained", w->id, (int)len, name);
		pool_prefill(w, w->rt);
	}
}

static void load_later(struct worker *w, double secs)
{
	ev_timer_stop(w->loop, &w->drained.retry);
	ev_timer_set(&w->drained.retry, secs, 0.);
	ev_timer_start(w->loop, &w->drained.retry);
}

/* The whole set: drain what is new in it, undrain what is gone from it. */
static void load_reply(void *arg, const redisReply *rep)
{
	struct worker *w = arg;
	struct drained *d = &w->drained;
	struct drained was;
	bool undrained = false;

	d->load = NULL;
	if (rep == NULL) {
		load_later(w, RETRY_SOON);
		return;
	}
	if (rep->type != REDIS_REPLY_ARRAY) {
		log_warn("redis: cannot read the drained backends: %s",
		         rep->type == REDIS_REPLY_ERROR ? rep->str : "not a set");
		load_later(w, RETRY_LATER);
		return;
	}
	memcpy(was.name, d->name, sizeof(was.name));
	was.n = d->n;
	d->n = 0;
	for (size_t i = 0; i < rep->elements; i++) {
		const redisReply *e = rep->element[i];
		if (e->type != REDIS_REPLY_STRING || !name_ok(e->str, e->len)) {
			log_warn("redis: ignoring a bad name in the drained backends");
			continue;
		}
		(void)set_add(d, e->str, e->len);
	}
	for (size_t i = 0; i < was.n; i++)
		if (!worker_drained(w, was.name[i])) {
			log_info("worker %d: backend %s undrained", w->id, was.name[i]);
			undrained = true;
		}
	for (size_t i = 0; i < d->n; i++) {
		bool old = false;
		for (size_t j = 0; j < was.n && !old; j++)
			old = strcmp(was.name[j], d->name[i]) == 0;
		if (!old)
			drain_apply(w, d->name[i]);
	}
	if (undrained)
		pool_prefill(w, w->rt);
}

void drain_resync(struct worker *w)
{
	char key[CFG_NAME_MAX + 80];
	int klen;

	if (w->rds == NULL || w->drained.load != NULL)
		return;
	ev_timer_stop(w->loop, &w->drained.retry);
	klen = snprintf(key, sizeof(key), "%sdrained", rds_prefix(w->rds));
	if (klen < 0 || (size_t)klen >= sizeof(key))
		return;
	const char *argv[2] = {"SMEMBERS", key};
	size_t argvlen[2] = {8, (size_t)klen};
	w->drained.load = rds_command(w->rds, load_reply, w, 2, argv, argvlen);
	if (w->drained.load == NULL) /* the command link is not up (yet) */
		load_later(w, RETRY_SOON);
}

static void retry_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
	(void)loop;
	(void)revents;
	drain_resync(t->data);
}

void drain_init(struct worker *w)
{
	w->drained.n = 0;
	w->drained.load = NULL;
	ev_init(&w->drained.retry, retry_cb);
	w->drained.retry.data = w;
}

void drain_stop(struct worker *w)
{
	ev_timer_stop(w->loop, &w->drained.retry);
	rds_cancel(w->drained.load);
	w->drained.load = NULL;
}
