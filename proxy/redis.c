/*
 * rds — Redis for one worker (see redis.h).
 *
 *   rds_new --> connect (cmd) --connected--> up: AUTH, SELECT queued first
 *           \-> connect (sub) --connected--> SUBSCRIBE <prefix>events
 *   disconnect/failure --> retry timer (0.2 s doubling to 5 s) --> connect
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
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
#pragma GCC diagnostic ignored "-Wshadow"
#pragma GCC diagnostic ignored "-Wstrict-prototypes"
#include <hiredis/adapters/libev.h>
#pragma GCC diagnostic pop

#include "log.h"

#define RETRY_MIN 0.2
#define RETRY_MAX 5.0

struct rds_req {
	struct rds *r;
	rds_reply_cb *cb; /* NULL once answered by the deadline, or cancelled */
	void *arg;
	ev_timer deadline;
};

enum link_state {
	LINK_DOWN,       /* no context; retry timer may be running */
	LINK_CONNECTING, /* context exists, connect callback pending */
	LINK_UP,
};

struct link {
	struct rds *r;
	redisAsyncContext *ac;
	enum link_state state;
	ev_timer retry;
	double backoff;
	bool is_sub;
	bool was_up; /* for logging transitions only once */
};

struct rds {
	struct ev_loop *loop;
	/* /metrics (rds_count_in): 1 while the command link is up, and its
	 * reconnections; NULL: not counted */
	atomic_long *up_gauge;
	atomic_ulong *reconnects;
	char host[INET6_ADDRSTRLEN];
	int port;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	bool is_unix;
	char addr_text[300];
	char *password;
	unsigned db;
	char *prefix;
	char *channel;
	double timeout;
	bool closing;
	struct link cmd;
	struct link sub;
	rds_event_cb *on_event;
	void *event_arg;
};

static void link_connect(struct link *l);

static void link_schedule_retry(struct link *l)
{
	struct rds *r = l->r;

	l->state = LINK_DOWN;
	l->ac = NULL;
	if (!l->is_sub && r->up_gauge != NULL)
		atomic_store_explicit(r->up_gauge, 0, memory_order_relaxed);
	if (r->closing)
		return;
	ev_timer_stop(r->loop, &l->retry);
	ev_timer_set(&l->retry, l->backoff, 0.);
	ev_timer_start(r->loop, &l->retry);
	l->backoff = l->backoff * 2 > RETRY_MAX ? RETRY_MAX : l->backoff * 2;
}

static void retry_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
	(void)loop;
	(void)revents;
	link_connect(t->data);
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

static void sub_reply_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
	struct rds *r = privdata;
	const redisReply *rep = reply;

	(void)ac;
	if (rep == NULL || r->closing)
		return;
	if (rep->type == REDIS_REPLY_ERROR) {
		log_error("redis: SUBSCRIBE failed: %s", rep->str);
		return;
	}
	if (rep->type != REDIS_REPLY_ARRAY || rep->elements != 3 ||
	    rep->element[0]->type != REDIS_REPLY_STRING ||
	    rep->element[2]->type != REDIS_REPLY_STRING)
		return;
	if (strcmp(rep->element[0]->str, "message") == 0)
		parse_event(r, rep->element[2]->str, rep->element[2]->len);
}

static void setup_reply_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
	const redisReply *rep = reply;
	const char *what = privdata;

	if (rep != NULL && rep->type == REDIS_REPLY_ERROR) {
		log_error("redis: %s failed: %s", what, rep->str);
		redisAsyncDisconnect(ac);
	}
}

static void connected_cb(const redisAsyncContext *ac, int status)
{
	struct link *l = ac->data;
	struct rds *r = l->r;

	if (status != REDIS_OK) {
		if (!l->was_up || l->backoff <= RETRY_MIN)
			log_warn("redis %s: %s connection failed: %s", r->addr_text,
			         l->is_sub ? "subscriber" : "command", ac->errstr);
		/* hiredis frees the context after this callback. */
		link_schedule_retry(l);
		return;
	}
	l->state = LINK_UP;
	l->backoff = RETRY_MIN;
	if (!l->is_sub && r->up_gauge != NULL) {
		atomic_store_explicit(r->up_gauge, 1, memory_order_relaxed);
		if (l->was_up)
			atomic_fetch_add_explicit(r->reconnects, 1, memory_order_relaxed);
	}
	log_info("redis %s: %s connection up", r->addr_text, l->is_sub ? "subscriber" : "command");
	l->was_up = true;
	if (l->is_sub)
		r->on_event(r->event_arg, "resync", "", 0, NULL, 0);
}

static void disconnected_cb(const redisAsyncContext *ac, int status)
{
	struct link *l = ac->data;
	struct rds *r = l->r;

	if (!r->closing)
		log_warn("redis %s: %s connection lost%s%s", r->addr_text,
		         l->is_sub ? "subscriber" : "command", status == REDIS_OK ? "" : ": ",
		         status == REDIS_OK ? "" : ac->errstr);
	link_schedule_retry(l);
}

static void link_connect(struct link *l)
{
	struct rds *r = l->r;
	redisAsyncContext *ac;

	ac = r->is_unix ? redisAsyncConnectUnix(r->path) : redisAsyncConnect(r->host, r->port);
	if (ac == NULL || ac->err) {
		log_warn("redis %s: cannot connect: %s", r->addr_text,
		         ac ? ac->errstr : "out of memory");
		if (ac != NULL)
			redisAsyncFree(ac);
		link_schedule_retry(l);
		return;
	}
	ac->data = l;
	if (redisLibevAttach(r->loop, ac) != REDIS_OK) {
		redisAsyncFree(ac);
		link_schedule_retry(l);
		return;
	}
	redisAsyncSetConnectCallback(ac, connected_cb);
	redisAsyncSetDisconnectCallback(ac, disconnected_cb);
	l->ac = ac;
	l->state = LINK_CONNECTING;

	/* Queued now, sent first once connected: nothing overtakes them. */
	if (r->password != NULL) {
		const char *argv[2] = {"AUTH", r->password};
		size_t argvlen[2] = {4, strlen(r->password)};
		redisAsyncCommandArgv(ac, setup_reply_cb, "AUTH", 2, argv, argvlen);
	}
	if (l->is_sub) {
		const char *argv[2] = {"SUBSCRIBE", r->channel};
		size_t argvlen[2] = {9, strlen(r->channel)};
		redisAsyncCommandArgv(ac, sub_reply_cb, r, 2, argv, argvlen);
	} else if (r->db != 0) {
		char db[16];
		snprintf(db, sizeof(db), "%u", r->db);
		const char *argv[2] = {"SELECT", db};
		size_t argvlen[2] = {6, strlen(db)};
		redisAsyncCommandArgv(ac, setup_reply_cb, "SELECT", 2, argv, argvlen);
	}
}

static void link_init(struct rds *r, struct link *l, bool is_sub)
{
	l->r = r;
	l->is_sub = is_sub;
	l->backoff = RETRY_MIN;
	l->state = LINK_DOWN;
	ev_init(&l->retry, retry_cb);
	l->retry.data = l;
}

struct rds *rds_new(struct ev_loop *loop, const struct cfg *cfg, rds_event_cb *on_event,
                    void *event_arg)
{
	struct rds *r = calloc(1, sizeof(*r));
	const struct sockaddr *sa = (const struct sockaddr *)&cfg->redis_addr.ss;

	if (r == NULL)
		return NULL;
	r->loop = loop;
	r->on_event = on_event;
	r->event_arg = event_arg;
	r->timeout = cfg->redis_timeout > 0 ? cfg->redis_timeout : 2.0;
	r->db = cfg->redis_db;
	snprintf(r->addr_text, sizeof(r->addr_text), "%s", cfg->redis_addr.text);
	if (sa->sa_family == AF_UNIX) {
		r->is_unix = true;
		snprintf(r->path, sizeof(r->path), "%s",
		         ((const struct sockaddr_un *)sa)->sun_path);
	} else if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
		inet_ntop(AF_INET, &in->sin_addr, r->host, sizeof(r->host));
		r->port = ntohs(in->sin_port);
	} else {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
		inet_ntop(AF_INET6, &in6->sin6_addr, r->host, sizeof(r->host));
		r->port = ntohs(in6->sin6_port);
	}
	r->prefix = strdup(cfg->redis_prefix ? cfg->redis_prefix : "");
	r->password = cfg->redis_password ? strdup(cfg->redis_password) : NULL;
	if (r->prefix == NULL || (cfg->redis_password && r->password == NULL) ||
	    asprintf(&r->channel, "%sevents", r->prefix) < 0) {
		r->channel = NULL;
		rds_destroy(&r);
		return NULL;
	}
	link_init(r, &r->cmd, false);
	link_init(r, &r->sub, true);
	link_connect(&r->cmd);
	link_connect(&r->sub);
	return r;
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
		log_warn("redis %s: command timed out after %.1fs", req->r->addr_text,
		         req->r->timeout);
		cb(req->arg, NULL);
	}
}

static void cmd_reply_cb(redisAsyncContext *ac, void *reply, void *privdata)
{
	struct rds_req *req = privdata;
	rds_reply_cb *cb = req->cb;

	(void)ac;
	ev_timer_stop(req->r->loop, &req->deadline);
	req->cb = NULL;
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

void rds_count_in(struct rds *r, atomic_long *up, atomic_ulong *reconnects)
{
	r->up_gauge = up;
	r->reconnects = reconnects;
	atomic_store_explicit(up, r->cmd.state == LINK_UP, memory_order_relaxed);
}

void rds_destroy(struct rds **rp)
{
	struct rds *r = *rp;

	if (r == NULL)
		return;
	*rp = NULL;
	r->closing = true;
	if (r->up_gauge != NULL)
		atomic_store_explicit(r->up_gauge, 0, memory_order_relaxed);
	ev_timer_stop(r->loop, &r->cmd.retry);
	ev_timer_stop(r->loop, &r->sub.retry);
	/* redisAsyncFree answers every pending request with NULL; their
	 * owners have cancelled them by now, so this only frees them. */
	if (r->cmd.ac != NULL)
		redisAsyncFree(r->cmd.ac);
	if (r->sub.ac != NULL)
		redisAsyncFree(r->sub.ac);
	free(r->prefix);
	if (r->password != NULL) {
		explicit_bzero(r->password, strlen(r->password));
		free(r->password);
	}
	free(r->channel);
	free(r);
}
