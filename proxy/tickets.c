/*
 * tickets — see tickets.h.
 */
#include "tickets.h"

#include <inttypes.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "redis.h"
#include "runtime.h"
#include "tktkeys.h"
#include "worker_state.h"

#define RETRY_AFTER 1.0   /* seconds, while the current key is not shared */
#define EVERY_MAX   300.0 /* seconds between rounds at most */
#define KEY_NAME    64    /* PREFIX is at most CFG_REDIS_PREFIX_MAX */

static double every(uint64_t lifetime)
{
	double p = (double)lifetime / 4;

	return p < RETRY_AFTER ? RETRY_AFTER : p > EVERY_MAX ? EVERY_MAX : p;
}

static void key_name(char *out, size_t len, const char *prefix, uint64_t lifetime, uint64_t epoch)
{
	snprintf(out, len, "%sticketkey:%" PRIu64 ":%" PRIu64, prefix, lifetime, epoch);
}

static void again(struct worker *w, double after)
{
	ev_timer_stop(w->loop, &w->tickets.timer);
	ev_timer_set(&w->tickets.timer, after, 0.);
	ev_timer_start(w->loop, &w->tickets.timer);
}

/* The MGET's answer: E-1, E, E+1 (nil where Redis has none). */
static void got_keys(void *arg, const redisReply *rep)
{
	struct worker *w = arg;
	struct tktkeys *k = runtime_tickets();
	time_t now = time(NULL);
	uint64_t lifetime, e;
	bool shared;

	w->tickets.req = NULL;
	if (k == NULL)
		return;
	/* The keys are those of the epochs asked for, whatever the time now;
	 * and none at all if a reload changed the lifetime meanwhile. */
	lifetime = w->tickets.lifetime;
	e = w->tickets.epoch;
	if (lifetime != tktkeys_lifetime(k))
		rep = NULL;
	if (rep != NULL && rep->type == REDIS_REPLY_ARRAY && rep->elements == 3) {
		for (size_t i = 0; i < 3; i++) {
			const redisReply *r = rep->element[i];

			if (r->type == REDIS_REPLY_STRING && r->len == TKT_KEY_LEN)
				tktkeys_put(k, e - 1 + i, (const unsigned char *)r->str, now);
			else if (r->type == REDIS_REPLY_STRING)
				log_warn("tls tickets: Redis key for epoch %" PRIu64
				         " is %zu bytes, not %d; ignored",
				         e - 1 + i, r->len, TKT_KEY_LEN);
		}
	}
	shared = tktkeys_shared(k, tktkeys_epoch(k, now));
	if (shared != w->tickets.shared)
		log_info("tls tickets: keys %s", shared
		                                     ? "shared through Redis"
		                                     : "of this instance only (Redis gave none)");
	w->tickets.shared = shared;
	again(w, shared ? every(lifetime) : RETRY_AFTER);
}

static void round_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct worker *w = t->data;
	struct tktkeys *k = runtime_tickets();
	char names[3][KEY_NAME + 48];
	const char *argv[5];
	size_t argvlen[5];
	unsigned char fresh[2][TKT_KEY_LEN];
	char ttl[24];
	uint64_t lifetime, e;
	const char *prefix;

	(void)loop;
	(void)revents;
	if (k == NULL || !w->rt->cfg->tls_tickets) {
		/* Off: only a reload can turn tickets on; look again now and then. */
		again(w, EVERY_MAX);
		return;
	}
	if (w->rds == NULL || !rds_up(w->rds) || w->tickets.req != NULL) {
		again(w, RETRY_AFTER);
		return;
	}
	prefix = rds_prefix(w->rds);
	lifetime = tktkeys_lifetime(k);
	e = tktkeys_epoch(k, time(NULL));
	for (int i = 0; i < 3; i++)
		key_name(names[i], sizeof(names[i]), prefix, lifetime, e - 1 + (uint64_t)i);
	snprintf(ttl, sizeof(ttl), "%" PRIu64, 3 * lifetime);
	if (RAND_bytes(fresh[0], sizeof(fresh)) != 1) {
		again(w, RETRY_AFTER);
		return;
	}
	/* One connection answers in order: the MGET sees both SETs. */
	for (int i = 0; i < 2; i++) {
		const char *set[6] = {"SET", names[1 + i], (const char *)fresh[i], "NX", "EX", ttl};
		size_t setlen[6] = {3, strlen(names[1 + i]), TKT_KEY_LEN, 2, 2, strlen(ttl)};

		(void)rds_send(w->rds, 6, set, setlen);
	}
	OPENSSL_cleanse(fresh, sizeof(fresh));
	argv[0] = "MGET";
	argvlen[0] = 4;
	for (int i = 0; i < 3; i++) {
		argv[1 + i] = names[i];
		argvlen[1 + i] = strlen(names[i]);
	}
	w->tickets.epoch = e;
	w->tickets.lifetime = lifetime;
	w->tickets.req = rds_command(w->rds, got_keys, w, 4, argv, argvlen);
	if (w->tickets.req == NULL)
		again(w, RETRY_AFTER);
}

void tickets_start(struct worker *w)
{
	ev_init(&w->tickets.timer, round_cb);
	w->tickets.timer.data = w;
	w->tickets.req = NULL;
	w->tickets.shared = false;
	if (w->id == 0 && w->rds != NULL)
		again(w, 0.);
}

void tickets_stop(struct worker *w)
{
	if (w->tickets.req != NULL)
		rds_cancel(w->tickets.req);
	w->tickets.req = NULL;
	ev_timer_stop(w->loop, &w->tickets.timer);
}
