/*
 * rds — Redis for one worker (see redis.h).
 *
 * Each link is one hiredis async context at a time and one timer (step):
 *
 *   cmd    the sessions' commands                 on the Redis server
 *   sub    SUBSCRIBE <prefix>events               on the Redis server
 *   watch  SUBSCRIBE +switch-master (sentinels)   on one Sentinel
 *
 * address = HOST:PORT | unix:PATH (cmd, sub):
 *
 *   DOWN --step--> CONNECTING: AUTH [USER] PASSWORD, SELECT queued first
 *                  --connected, every setup reply OK--> UP
 *
 * sentinels = ... with master_name = NAME (cmd, sub):
 *
 *   DOWN --step--> ASKING sentinel i: SENTINEL get-master-addr-by-name NAME
 *                    answer  --> LEAVING --> DOWN --at once--> CONNECTING
 *                    none    --> sentinel i+1 at once; after a whole round
 *                                without an answer, the backoff
 *                  CONNECTING to the answer: AUTH, SELECT, ROLE queued first
 *                    ROLE's first element "master" --> UP
 *                    anything else --> DOWN, the backoff, the next sentinel
 *   UP --connection lost | -READONLY or -LOADING | +switch-master--> ask again
 *
 * watch (sentinel mode only): DOWN --> CONNECTING to sentinel i --subscribed-->
 * UP; each +switch-master of NAME that names another address than a link's
 * sends that link to ask again at once. Lost or failed: the next sentinel.
 *
 *   the backoff: 0.2 s doubling to 5 s, back to 0.2 s once a link is UP
 *                (or a failover is announced)
 *   ASKING and CONNECTING (setup included) end after [redis] timeout
 *
 * Lifetimes: l->ac is the link's context or NULL; every hiredis callback
 * first checks that its context is still l->ac, so the replies hiredis
 * hands out while a context is freed (all NULL) find nobody. A context is
 * freed by hiredis itself (connection failed or lost: l->ac is cleared in
 * the callback) or by us, but never inside one of its own callbacks: the
 * callback marks the link LEAVING and starts step at 0, and step frees it.
 *
 * Request lifetime: a struct rds_req is handed to hiredis as privdata and
 * freed only in the hiredis reply callback, which hiredis always calls
 * (with NULL when the connection goes). The caller's callback is cleared
 * when the deadline fires (the caller got NULL) or the caller cancels, so it
 * runs at most once and never after rds_cancel.
 */
#include "redis.h"

#include <arpa/inet.h>
#include <hiredis/async.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <unistd.h>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wshadow"
#pragma GCC diagnostic ignored "-Wstrict-prototypes"
#include <hiredis/adapters/libev.h>
#pragma GCC diagnostic pop

#include "log.h"

#define RETRY_MIN 0.2
#define RETRY_MAX 5.0

/* Failures of a link logged at warn before it is up again; the rest at
 * debug, so that a long outage costs a few lines, not one per retry. */
#define LOUD_FAILURES 6

struct rds_req {
	struct rds *r;
	rds_reply_cb *cb; /* NULL once answered by the deadline, or cancelled */
	void *arg;
	ev_timer deadline;
};

/* Where a context connects: an address from the file or a Sentinel's answer. */
struct target {
	bool is_unix;
	char host[INET6_ADDRSTRLEN];
	int port;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	char text[300]; /* for logs: "127.0.0.1:6379", "[::1]:6379", "unix:/path" */
};

enum link_kind {
	LINK_CMD,   /* the sessions' commands */
	LINK_SUB,   /* the events channel */
	LINK_WATCH, /* a Sentinel's +switch-master (sentinel mode only) */
};

enum link_state {
	LINK_DOWN,       /* ac NULL; step runs (the next attempt) unless closing */
	LINK_ASKING,     /* ac asks sentinels[ask] for the master; step is the deadline */
	LINK_CONNECTING, /* ac connects and sets up (setup replies outstanding); step is
	                  * the deadline */
	LINK_UP,         /* ac takes commands / delivers messages; step stopped */
	LINK_LEAVING,    /* ac (if not NULL) to be freed by step, which then waits
	                  * l->after seconds and goes on from DOWN */
};

struct link {
	struct rds *r;
	enum link_kind kind;
	enum link_state state;
	redisAsyncContext *ac;
	ev_timer step;
	double backoff; /* the next wait after a failure */
	double after;   /* LEAVING: the wait before the next attempt */
	unsigned setup; /* CONNECTING: setup replies still to come */
	unsigned loud;  /* failures logged at warn since the link was last up */
	/* sentinel mode */
	size_t ask;           /* the sentinel to ask (or to watch) next */
	size_t asked;         /* sentinels asked in this round without an answer */
	bool have_master;     /* master holds a fresh answer, not tried yet or in use */
	struct target master; /* the master this link connects or is connected to */
	char from[300];       /* the sentinel that named it */
	char last[300];       /* the master this link was last up at ("" never) */
	bool was_up;          /* up at least once (a reconnection, for /metrics) */
};

struct rds {
	struct ev_loop *loop;
	/* /metrics (rds_count_in): 1 while the command link is up, and its
	 * reconnections; NULL: not counted */
	atomic_long *up_gauge;
	atomic_ulong *reconnects;
	struct target addr;       /* address mode */
	struct target *sentinels; /* sentinel mode: nsentinels of them, else NULL */
	size_t nsentinels;
	char *master_name;
	char label[340]; /* logs: "127.0.0.1:6379" or "master NAME" */
	char *username;
	char *password;
	unsigned db;
	char *prefix;
	char *channel;
	double timeout;
	bool closing;
	struct link cmd;
	struct link sub;
	struct link watch;
	rds_event_cb *on_event;
	void *event_arg;
};

static const char *const link_names[] = {
    [LINK_CMD] = "command",
    [LINK_SUB] = "subscriber",
    [LINK_WATCH] = "sentinel watch",
};

static void link_start(struct link *l);
static const struct target *link_target(const struct link *l);

/* A failure of l, at level (warn or error) for the first few since it was
 * last up, then at debug. */
__attribute__((format(printf, 3, 4))) static void link_fail_log(struct link *l, bool error,
                                                                const char *fmt, ...)
{
	char msg[768];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (l->loud >= LOUD_FAILURES) {
		log_debug("redis %s: %s connection: %s", l->r->label, link_names[l->kind], msg);
		return;
	}
	l->loud++;
	if (error)
		log_error("redis %s: %s connection: %s%s", l->r->label, link_names[l->kind], msg,
		          l->loud == LOUD_FAILURES ? " (further failures logged at debug)" : "");
	else
		log_warn("redis %s: %s connection: %s%s", l->r->label, link_names[l->kind], msg,
		         l->loud == LOUD_FAILURES ? " (further failures logged at debug)" : "");
}

#define link_warn(l, ...) link_fail_log((l), false, __VA_ARGS__)

static void target_from_addr(const struct cfg_addr *a, struct target *t)
{
	const struct sockaddr *sa = (const struct sockaddr *)&a->ss;

	memset(t, 0, sizeof(*t));
	snprintf(t->text, sizeof(t->text), "%s", a->text);
	if (sa->sa_family == AF_UNIX) {
		t->is_unix = true;
		snprintf(t->path, sizeof(t->path), "%s",
		         ((const struct sockaddr_un *)sa)->sun_path);
	} else if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
		inet_ntop(AF_INET, &in->sin_addr, t->host, sizeof(t->host));
		t->port = ntohs(in->sin_port);
	} else {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
		inet_ntop(AF_INET6, &in6->sin6_addr, t->host, sizeof(t->host));
		t->port = ntohs(in6->sin6_port);
	}
}

/*
 * A Sentinel's "IP", "PORT" into t. Only address literals: a host name
 * would need a lookup, and nothing on a worker may block (Sentinel
 * announces addresses unless told announce-hostnames yes). 0 or -1.
 */
static int target_from_reply(const char *ip, size_t iplen, const char *port, size_t portlen,
                             struct target *t)
{
	struct in6_addr a6;
	struct in_addr a4;
	unsigned long p = 0;

	memset(t, 0, sizeof(*t));
	if (iplen == 0 || iplen >= sizeof(t->host) || portlen == 0 || portlen > 5)
		return -1;
	memcpy(t->host, ip, iplen);
	t->host[iplen] = '\0';
	for (size_t i = 0; i < portlen; i++) {
		if (port[i] < '0' || port[i] > '9')
			return -1;
		p = p * 10 + (unsigned long)(port[i] - '0');
	}
	if (p == 0 || p > 65535)
		return -1;
	t->port = (int)p;
	if (inet_pton(AF_INET, t->host, &a4) == 1)
		snprintf(t->text, sizeof(t->text), "%s:%d", t->host, t->port);
	else if (inet_pton(AF_INET6, t->host, &a6) == 1)
		snprintf(t->text, sizeof(t->text), "[%s]:%d", t->host, t->port);
	else
		return -1;
	return 0;
}

/* ---------------------------------------------------------------------- */
/* link transitions */

/* The backoff to wait now, doubled for the next failure. */
static double backoff_next(struct link *l)
{
	double d = l->backoff;

	l->backoff = l->backoff * 2 > RETRY_MAX ? RETRY_MAX : l->backoff * 2;
	return d;
}

/*
 * The wait before the next attempt after a failure in l's current state:
 * asking a sentinel (or watching one) moves on to the next sentinel at
 * once until a whole round failed; a master (or the address) that failed
 * or went away is asked for again after the backoff, starting with the
 * next sentinel (the one that named it may be the stale one).
 */
static double fail_delay(struct link *l)
{
	size_t n = l->r->nsentinels;

	if (l->kind == LINK_WATCH || l->state == LINK_ASKING) {
		l->ask = (l->ask + 1) % n;
		if (++l->asked < n)
			return 0;
		l->asked = 0;
		return backoff_next(l);
	}
	if (n > 0) {
		l->have_master = false;
		l->ask = (l->ask + 1) % n;
	}
	return backoff_next(l);
}

/* l->ac is gone (or never was): try again after delay seconds. */
/* The command link's gauge (rds_count_in) follows its state. */
static void link_gauge(struct link *l, bool up)
{
	struct rds *r = l->r;

	if (l->kind != LINK_CMD || r->up_gauge == NULL)
		return;
	atomic_store_explicit(r->up_gauge, up ? 1 : 0, memory_order_relaxed);
	if (up && l->was_up)
		atomic_fetch_add_explicit(r->reconnects, 1, memory_order_relaxed);
}

static void link_later(struct link *l, double delay)
{
	struct rds *r = l->r;

	if (l->state == LINK_UP)
		link_gauge(l, false);
	l->state = LINK_DOWN;
	l->ac = NULL;
	ev_timer_stop(r->loop, &l->step);
	if (r->closing)
		return;
	ev_timer_set(&l->step, delay, 0.);
	ev_timer_start(r->loop, &l->step);
}

/* Free l->ac from step (this may be inside one of its callbacks, where it
 * must not be freed), then wait after seconds and go on. */
static void link_leave(struct link *l, double after)
{
	struct rds *r = l->r;

	if (l->state == LINK_UP)
		link_gauge(l, false);
	l->state = LINK_LEAVING;
	l->after = after;
	ev_timer_stop(r->loop, &l->step);
	if (r->closing)
		return;
	ev_timer_set(&l->step, 0., 0.);
	ev_timer_start(r->loop, &l->step);
}

/* Outside l->ac's callbacks: free it now (callbacks it runs find nobody). */
static void link_drop(struct link *l)
{
	redisAsyncContext *ac = l->ac;

	l->ac = NULL;
	if (ac != NULL)
		redisAsyncFree(ac);
}

static void link_up(struct link *l)
{
	struct rds *r = l->r;

	l->state = LINK_UP;
	link_gauge(l, true);
	l->was_up = true;
	ev_timer_stop(r->loop, &l->step);
	l->backoff = RETRY_MIN;
	l->asked = 0;
	l->loud = 0;
	if (l->kind == LINK_WATCH) {
		log_info("redis %s: watching sentinel %s for failovers", r->label,
		         r->sentinels[l->ask].text);
	} else if (r->nsentinels == 0) {
		log_info("redis %s: %s connection up", r->label, link_names[l->kind]);
	} else {
		if (l->last[0] != '\0' && strcmp(l->last, l->master.text) != 0)
			log_info("redis %s: %s connection moved from %s to %s (the master now, "
			         "from sentinel %s)",
			         r->label, link_names[l->kind], l->last, l->master.text, l->from);
		else
			log_info("redis %s: %s connection up at %s (the master, from sentinel %s)",
			         r->label, link_names[l->kind], l->master.text, l->from);
		snprintf(l->last, sizeof(l->last), "%s", l->master.text);
	}
	if (l->kind == LINK_SUB)
		r->on_event(r->event_arg, "resync", "", 0, NULL, 0);
}

/* One setup reply arrived and was fine. */
static void link_setup_done(struct link *l)
{
	if (l->setup > 0 && --l->setup == 0 && l->state == LINK_CONNECTING)
		link_up(l);
}

/* A failover was announced (or a master lost its role): l asks the
 * sentinels again, at once. */
static void link_rediscover(struct link *l)
{
	l->have_master = false;
	l->backoff = RETRY_MIN;
	l->asked = 0;
	switch (l->state) {
	case LINK_DOWN:
		link_later(l, 0.);
		break;
	case LINK_LEAVING:
		l->after = 0.;
		break;
	case LINK_ASKING:
	case LINK_CONNECTING:
	case LINK_UP:
		link_leave(l, 0.);
		break;
	}
}

static void step_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct link *l = t->data;
	double d;

	(void)loop;
	(void)revents;
	switch (l->state) {
	case LINK_DOWN:
		link_start(l);
		break;
	case LINK_ASKING:
		link_warn(l, "sentinel %s: no answer within %.1fs", l->r->sentinels[l->ask].text,
		          l->r->timeout);
		d = fail_delay(l);
		link_drop(l);
		link_later(l, d);
		break;
	case LINK_CONNECTING:
		link_warn(l, "%s: not ready within %.1fs", link_target(l)->text, l->r->timeout);
		d = fail_delay(l);
		link_drop(l);
		link_later(l, d);
		break;
	case LINK_LEAVING:
		link_drop(l);
		link_later(l, l->after);
		break;
	case LINK_UP:
		break;
	}
}

static void parse_event(struct rds *r, const char *p, size_t len)
{
	const char *sp = memchr(p, ' ', len);
	char kind[8];
	size_t klen;

	if (sp == NULL || (size_t)(sp - p) >= sizeof(kind)) {
		log_warn("redis: ignoring malformed event (%zu bytes)", len);
		return;
	}
	klen = (size_t)(sp - p);
	memcpy(kind, p, klen);
	kind[klen] = '\0';
	const char *a1 = sp + 1;
	size_t l1 = len - klen - 1;
	const char *a2 = NULL;
	size_t l2 = 0;
	if (strcmp(kind, "mbox") == 0) {
		const char *sp2 = memchr(a1, ' ', l1);
		if (sp2 == NULL) {
			log_warn("redis: ignoring malformed mbox event");
			return;
		}
		a2 = sp2 + 1;
		l2 = l1 - (size_t)(a2 - a1);
		l1 = (size_t)(sp2 - a1);
	} else if (strcmp(kind, "kick") != 0 && strcmp(kind, "route") != 0 &&
	           strcmp(kind, "drain") != 0 && strcmp(kind, "undrain") != 0) {
		log_warn("redis: ignoring unknown event '%s'", kind);
		return;
	}
	if (l1 == 0) {
		log_warn("redis: ignoring %s event without a %s", kind,
		         kind[0] == 'd' || kind[0] == 'u' ? "backend" : "user");
		return;
	}
	r->on_event(r->event_arg, kind, a1, l1, a2, l2);
}

/* ---------------------------------------------------------------------- */
/* hiredis callbacks */

/* What l connects to in its current attempt. */
static const struct target *link_target(const struct link *l)
{
	const struct rds *r = l->r;

	if (l->kind == LINK_WATCH || l->state == LINK_ASKING)
		return &r->sentinels[l->ask];
	return r->nsentinels > 0 ? &l->master : &r->addr;
}

static void connected_cb(const redisAsyncContext *ac, int status)
{
	struct link *l = ac->data;

	if (l == NULL || l->ac != ac)
		return;
	if (status != REDIS_OK && l->state == LINK_LEAVING) {
		l->ac = NULL; /* freed by hiredis after this callback; step goes on */
		return;
	}
	if (status != REDIS_OK) {
		/* hiredis frees the context after this callback. */
		link_warn(l, "%s%s: %s", l->state == LINK_ASKING ? "sentinel " : "",
		          link_target(l)->text, ac->errstr);
		double d = fail_delay(l);
		link_later(l, d);
		return;
	}
	if (l->state == LINK_CONNECTING && l->setup == 0)
		link_up(l);
}

static void disconnected_cb(const redisAsyncContext *ac, int status)
{
	struct link *l = ac->data;
	struct rds *r;

	if (l == NULL || l->ac != ac)
		return;
	r = l->r;
	/* hiredis frees the context after this callback. */
	if (l->state == LINK_LEAVING) {
		l->ac = NULL;
		return;
	}
	if (l->state == LINK_UP)
		log_warn("redis %s: %s connection to %s lost%s%s", r->label, link_names[l->kind],
		         link_target(l)->text, status == REDIS_OK ? "" : ": ",
		         status == REDIS_OK ? "" : ac->errstr);
	else
		link_warn(l, "%s%s: closed before it was ready%s%s",
		          l->state == LINK_ASKING ? "sentinel " : "", link_target(l)->text,
		          status == REDIS_OK ? "" : ": ", status == REDIS_OK ? "" : ac->errstr);
	double d = fail_delay(l);
	link_later(l, d);
}

/* AUTH, SELECT, ROLE: an error or a wrong role ends the attempt. NULL
 * (the connection is going) is left to disconnected_cb. */
static void setup_reply(struct link *l, redisAsyncContext *ac, const redisReply *rep,
                        const char *what)
{
	struct rds *r = l->r;

	if (rep == NULL || l->ac != ac || l->state != LINK_CONNECTING)
		return;
	if (rep->type == REDIS_REPLY_ERROR) {
		if (strcmp(what, "AUTH") == 0 && r->username != NULL)
			link_fail_log(l, true, "AUTH as user '%s' at %s failed: %s", r->username,
			              link_target(l)->text, rep->str);
		else
			link_fail_log(l, true, "%s at %s failed: %s", what, link_target(l)->text,
			              rep->str);
		link_leave(l, fail_delay(l));
		return;
	}
	if (strcmp(what, "ROLE") == 0) {
		const char *role = "(no answer)";
		if (rep->type == REDIS_REPLY_ARRAY && rep->elements > 0 &&
		    rep->element[0]->type == REDIS_REPLY_STRING)
			role = rep->element[0]->str;
		if (strcmp(role, "master") != 0) {
			link_warn(l,
			          "%s (named by sentinel %s) is a %s, not the master; asking again",
			          l->master.text, l->from, role);
			link_leave(l, fail_delay(l));
			return;
		}
	}
	link_setup_done(l);
}

static void auth_reply_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
	setup_reply(privdata, ac, reply, "AUTH");
}

static void select_reply_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
	setup_reply(privdata, ac, reply, "SELECT");
}

static void role_reply_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
	setup_reply(privdata, ac, reply, "ROLE");
}

/* SENTINEL get-master-addr-by-name NAME: ["IP", "PORT"], or nil when this
 * sentinel does not monitor NAME. */
static void ask_reply_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
	struct link *l = privdata;
	struct rds *r = l->r;
	const redisReply *rep = reply;
	const char *sentinel = r->sentinels[l->ask].text;

	if (rep == NULL || l->ac != ac || l->state != LINK_ASKING)
		return;
	if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
	    rep->element[0]->type == REDIS_REPLY_STRING &&
	    rep->element[1]->type == REDIS_REPLY_STRING &&
	    target_from_reply(rep->element[0]->str, rep->element[0]->len, rep->element[1]->str,
	                      rep->element[1]->len, &l->master) == 0) {
		snprintf(l->from, sizeof(l->from), "%s", sentinel);
		log_debug("redis %s: %s connection: sentinel %s names %s", r->label,
		          link_names[l->kind], sentinel, l->master.text);
		l->have_master = true;
		link_leave(l, 0.);
		return;
	}
	if (rep->type == REDIS_REPLY_ERROR)
		link_warn(l, "sentinel %s: %s", sentinel, rep->str);
	else if (rep->type == REDIS_REPLY_NIL)
		link_warn(l, "sentinel %s does not know master %s", sentinel, r->master_name);
	else if (rep->type == REDIS_REPLY_ARRAY && rep->elements == 2 &&
	         rep->element[0]->type == REDIS_REPLY_STRING)
		link_warn(l,
		          "sentinel %s names the master '%.64s', not an address (imapmux does "
		          "not resolve names at run time: announce-hostnames no)",
		          sentinel, rep->element[0]->str);
	else
		link_warn(l, "sentinel %s: unexpected answer", sentinel);
	link_leave(l, fail_delay(l));
}

/* One pub/sub reply: ["subscribe", CHANNEL, N] once the subscription holds,
 * then ["message", CHANNEL, PAYLOAD] for each message. The payload, or NULL
 * (subscribed: the setup step counted). */
static const redisReply *pubsub_message(struct link *l, redisAsyncContext *ac,
                                        const redisReply *rep)
{
	struct rds *r = l->r;

	if (rep == NULL || l->ac != ac || r->closing)
		return NULL;
	if (rep->type == REDIS_REPLY_ERROR) {
		log_error("redis %s: %s connection: SUBSCRIBE failed: %s", r->label,
		          link_names[l->kind], rep->str);
		if (l->state == LINK_CONNECTING || l->state == LINK_UP)
			link_leave(l, fail_delay(l));
		return NULL;
	}
	if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 3 ||
	    rep->element[0]->type != REDIS_REPLY_STRING)
		return NULL;
	if (strcmp(rep->element[0]->str, "subscribe") == 0) {
		link_setup_done(l);
		return NULL;
	}
	if (strcmp(rep->element[0]->str, "message") != 0 ||
	    rep->element[2]->type != REDIS_REPLY_STRING || l->state != LINK_UP)
		return NULL;
	return rep->element[2];
}

static void sub_reply_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
	struct link *l = privdata;
	const redisReply *msg = pubsub_message(l, ac, reply);

	if (msg != NULL)
		parse_event(l->r, msg->str, msg->len);
}

/* +switch-master: "NAME OLD-IP OLD-PORT NEW-IP NEW-PORT". */
static void watch_reply_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
	struct link *l = privdata;
	struct rds *r = l->r;
	const redisReply *msg = pubsub_message(l, ac, reply);
	const char *w[5];
	size_t wl[5], n = 0, i = 0;
	struct target to;

	if (msg == NULL)
		return;
	while (i < msg->len && n < 5) {
		w[n] = msg->str + i;
		while (i < msg->len && msg->str[i] != ' ')
			i++;
		wl[n] = (size_t)(msg->str + i - w[n]);
		n++;
		while (i < msg->len && msg->str[i] == ' ')
			i++;
	}
	if (n < 5 || wl[0] != strlen(r->master_name) || memcmp(w[0], r->master_name, wl[0]) != 0)
		return;
	if (target_from_reply(w[3], wl[3], w[4], wl[4], &to) < 0) {
		log_warn("redis %s: sentinel %s announced a failover to an address imapmux cannot "
		         "use: %.*s",
		         r->label, r->sentinels[l->ask].text,
		         (int)(msg->len > 200 ? 200 : msg->len), msg->str);
		return;
	}
	log_info("redis %s: sentinel %s announced a failover from %.*s:%.*s to %s", r->label,
	         r->sentinels[l->ask].text, (int)wl[1], w[1], (int)wl[2], w[2], to.text);
	/* A link already at the new master stays; any other asks again. */
	struct link *data[2] = {&r->cmd, &r->sub};
	for (size_t k = 0; k < 2; k++) {
		if (data[k]->state == LINK_UP && strcmp(data[k]->master.text, to.text) == 0)
			continue;
		link_rediscover(data[k]);
	}
}

/* ---------------------------------------------------------------------- */
/* starting an attempt */

static int link_send(struct link *l, redisCallbackFn *fn, int argc, const char **argv)
{
	size_t argvlen[4];

	for (int i = 0; i < argc; i++)
		argvlen[i] = strlen(argv[i]);
	return redisAsyncCommandArgv(l->ac, fn, l, argc, argv, argvlen);
}

/*
 * Queue what must precede everything else on a data connection; nothing
 * overtakes it. setup counts the replies to wait for before UP.
 */
static int link_queue_setup(struct link *l)
{
	struct rds *r = l->r;
	char db[16];
	int rc = REDIS_OK;

	l->setup = 0;
	if (l->kind == LINK_WATCH) {
		const char *sub[2] = {"SUBSCRIBE", "+switch-master"};
		l->setup = 1;
		return link_send(l, watch_reply_cb, 2, sub);
	}
	if (r->password != NULL) {
		const char *a3[3] = {"AUTH", r->username, r->password};
		const char *a2[2] = {"AUTH", r->password};
		rc |= r->username != NULL ? link_send(l, auth_reply_cb, 3, a3)
		                          : link_send(l, auth_reply_cb, 2, a2);
		l->setup++;
	}
	if (l->kind == LINK_CMD && r->db != 0) {
		snprintf(db, sizeof(db), "%u", r->db);
		const char *sel[2] = {"SELECT", db};
		rc |= link_send(l, select_reply_cb, 2, sel);
		l->setup++;
	}
	if (r->nsentinels > 0) {
		const char *role[1] = {"ROLE"};
		rc |= link_send(l, role_reply_cb, 1, role);
		l->setup++;
	}
	if (l->kind == LINK_SUB) {
		const char *sub[2] = {"SUBSCRIBE", r->channel};
		rc |= link_send(l, sub_reply_cb, 2, sub);
		l->setup++;
	}
	return rc == REDIS_OK ? 0 : -1;
}

/* From DOWN: the next attempt (a sentinel to ask, the master, the address). */
static void link_start(struct link *l)
{
	struct rds *r = l->r;
	const struct target *t;
	redisAsyncContext *ac;
	double d;

	if (r->closing)
		return;
	l->state = l->kind != LINK_WATCH && r->nsentinels > 0 && !l->have_master ? LINK_ASKING
	                                                                         : LINK_CONNECTING;
	t = link_target(l);
	ac = t->is_unix ? redisAsyncConnectUnix(t->path) : redisAsyncConnect(t->host, t->port);
	if (ac == NULL || ac->err) {
		link_warn(l, "cannot connect to %s: %s", t->text,
		          ac ? ac->errstr : "out of memory");
		goto fail;
	}
	ac->data = l;
	if (redisLibevAttach(r->loop, ac) != REDIS_OK) {
		link_warn(l, "cannot watch the connection to %s", t->text);
		goto fail;
	}
	redisAsyncSetConnectCallback(ac, connected_cb);
	redisAsyncSetDisconnectCallback(ac, disconnected_cb);
	l->ac = ac;
	ac = NULL;
	if (l->state == LINK_ASKING) {
		const char *q[3] = {"SENTINEL", "get-master-addr-by-name", r->master_name};
		log_debug("redis %s: %s connection: asking sentinel %s", r->label,
		          link_names[l->kind], t->text);
		if (link_send(l, ask_reply_cb, 3, q) != REDIS_OK)
			goto fail;
	} else if (link_queue_setup(l) < 0) {
		goto fail;
	}
	/* The deadline of the whole attempt, setup included. */
	ev_timer_set(&l->step, r->timeout, 0.);
	ev_timer_start(r->loop, &l->step);
	return;
fail:
	if (ac != NULL)
		redisAsyncFree(ac);
	d = fail_delay(l);
	link_drop(l);
	link_later(l, d);
}

static void link_init(struct rds *r, struct link *l, enum link_kind kind)
{
	l->r = r;
	l->kind = kind;
	l->backoff = RETRY_MIN;
	l->state = LINK_DOWN;
	ev_init(&l->step, step_cb);
	l->step.data = l;
}

struct rds *rds_new(struct ev_loop *loop, const struct cfg *cfg, rds_event_cb *on_event,
                    void *event_arg)
{
	struct rds *r = calloc(1, sizeof(*r));
	size_t n = cfg->redis_sentinels.n;

	if (r == NULL)
		return NULL;
	r->loop = loop;
	r->on_event = on_event;
	r->event_arg = event_arg;
	r->timeout = cfg->redis_timeout > 0 ? cfg->redis_timeout : 2.0;
	r->db = cfg->redis_db;
	link_init(r, &r->cmd, LINK_CMD);
	link_init(r, &r->sub, LINK_SUB);
	link_init(r, &r->watch, LINK_WATCH);
	if (n > 0) {
		r->sentinels = calloc(n, sizeof(*r->sentinels));
		r->master_name = strdup(cfg->redis_master_name ? cfg->redis_master_name : "");
		if (r->sentinels == NULL || r->master_name == NULL)
			goto fail;
		r->nsentinels = n;
		for (size_t i = 0; i < n; i++)
			target_from_addr(&cfg->redis_sentinels.addrs[i], &r->sentinels[i]);
		snprintf(r->label, sizeof(r->label), "master %s", r->master_name);
		/* Spread the first questions of the workers (their struct rds
		 * differ) and of the instances (their pids) over the sentinels. */
		r->cmd.ask = r->sub.ask = r->watch.ask =
		    (size_t)(((uintptr_t)r >> 6) ^ (uintptr_t)getpid()) % n;
	} else {
		target_from_addr(&cfg->redis_addr, &r->addr);
		snprintf(r->label, sizeof(r->label), "%s", r->addr.text);
	}
	r->prefix = strdup(cfg->redis_prefix ? cfg->redis_prefix : "");
	r->password = cfg->redis_password ? strdup(cfg->redis_password) : NULL;
	r->username = cfg->redis_username ? strdup(cfg->redis_username) : NULL;
	if (r->prefix == NULL || (cfg->redis_password && r->password == NULL) ||
	    (cfg->redis_username && r->username == NULL) ||
	    asprintf(&r->channel, "%sevents", r->prefix) < 0) {
		r->channel = NULL;
		goto fail;
	}
	link_start(&r->cmd);
	link_start(&r->sub);
	if (n > 0)
		link_start(&r->watch);
	return r;
fail:
	rds_destroy(&r);
	return NULL;
}

bool rds_up(const struct rds *r)
{
	return r != NULL && r->cmd.state == LINK_UP;
}

const char *rds_prefix(const struct rds *r)
{
	return r->prefix;
}

static void deadline_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct rds_req *req = t->data;
	rds_reply_cb *cb = req->cb;

	(void)loop;
	(void)revents;
	req->cb = NULL;
	if (cb != NULL) {
		log_warn("redis %s: command timed out after %.1fs", req->r->label, req->r->timeout);
		cb(req->arg, NULL);
	}
}

/* -READONLY (a replica now) or -LOADING (a restarted master reading its
 * data): in sentinel mode the master is elsewhere, or soon will be. */
static bool wrong_master(const redisReply *rep)
{
	return rep != NULL && rep->type == REDIS_REPLY_ERROR &&
	       (strncmp(rep->str, "READONLY", 8) == 0 || strncmp(rep->str, "LOADING", 7) == 0);
}

static void cmd_reply_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
	struct rds_req *req = privdata;
	struct rds *r = req->r;
	struct link *l = &r->cmd;
	rds_reply_cb *cb = req->cb;

	ev_timer_stop(r->loop, &req->deadline);
	req->cb = NULL;
	if (r->nsentinels > 0 && l->ac == ac && l->state == LINK_UP && wrong_master(reply)) {
		log_warn("redis %s: %s answered '%.60s': asking the sentinels again", r->label,
		         l->master.text, ((const redisReply *)reply)->str);
		l->have_master = false;
		link_leave(l, 0.);
	}
	if (cb != NULL)
		cb(req->arg, reply);
	free(req);
}

struct rds_req *rds_command(struct rds *r, rds_reply_cb *cb, void *arg, int argc, const char **argv,
                            const size_t *argvlen)
{
	struct rds_req *req;

	if (!rds_up(r))
		return NULL;
	req = calloc(1, sizeof(*req));
	if (req == NULL)
		return NULL;
	req->r = r;
	req->cb = cb;
	req->arg = arg;
	if (redisAsyncCommandArgv(r->cmd.ac, cmd_reply_cb, req, argc, argv, argvlen) != REDIS_OK) {
		free(req);
		return NULL;
	}
	ev_timer_init(&req->deadline, deadline_cb, r->timeout, 0.);
	req->deadline.data = req;
	ev_timer_start(r->loop, &req->deadline);
	return req;
}

int rds_send(struct rds *r, int argc, const char **argv, const size_t *argvlen)
{
	if (!rds_up(r))
		return -1;
	return redisAsyncCommandArgv(r->cmd.ac, NULL, NULL, argc, argv, argvlen) == REDIS_OK ? 0
	                                                                                     : -1;
}

void rds_cancel(struct rds_req *req)
{
	if (req == NULL)
		return;
	req->cb = NULL;
	ev_timer_stop(req->r->loop, &req->deadline);
}

static void free_secret(char *s)
{
	if (s != NULL) {
		explicit_bzero(s, strlen(s));
		free(s);
	}
}

void rds_count_in(struct rds *r, atomic_long *up, atomic_ulong *reconnects)
{
	r->up_gauge = up;
	r->reconnects = reconnects;
	atomic_store_explicit(up, r->cmd.state == LINK_UP, memory_order_relaxed);
}

void rds_destroy(struct rds **rp)
{
	struct rds *r = *rp;
	struct link *links[3];

	if (r == NULL)
		return;
	*rp = NULL;
	r->closing = true;
	if (r->up_gauge != NULL)
		atomic_store_explicit(r->up_gauge, 0, memory_order_relaxed);
	links[0] = &r->cmd;
	links[1] = &r->sub;
	links[2] = &r->watch;
	/* redisAsyncFree answers every pending request with NULL; their
	 * owners have cancelled them by now, so this only frees them. */
	for (size_t i = 0; i < 3; i++) {
		ev_timer_stop(r->loop, &links[i]->step);
		link_drop(links[i]);
	}
	free(r->prefix);
	free_secret(r->username);
	free_secret(r->password);
	free(r->channel);
	free(r->sentinels);
	free(r->master_name);
	free(r);
}
