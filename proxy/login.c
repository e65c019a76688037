/*
 * login — the login pipeline: from a user name and credentials to a
 * logged-in backend. Each step may wait for Redis, the crypt pool or a
 * backend connection; the caller (preauth.c for a client's LOGIN, later a
 * parked session waking up) learns the outcome through its callback:
 *
 *   CHECK: brute-force budgets of address group and user (Redis EVAL)
 *   VERIFY (auth = redis): hash from Redis (HGET), crypt(3) off the loop
 *   ROUTE: cache, else GET <prefix>route:USER, else fallback
 *   BACKEND: a kept session (reuse.c), else a pooled connection, log in
 *            (user's credentials, or master login)
 *   done(LOGIN_OK, backend) | done(failure) after auth_fail_delay
 *
 * A verified request (the caller proved the user already) starts at ROUTE.
 * While a login runs, s->bk is the backend it logs in on (closed with the
 * session); s->login holds the rest, wiped and freed when it ends.
 */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "cryptpool.h"
#include "pool.h"
#include "proxyproto.h"
#include "redis.h"
#include "route.h"
#include "sess.h"
#include "ttlmap.h"

static void login_backend_done(void *owner, struct backend *b, enum bk_result r, const char *why);
static void login_pool_got(void *arg, struct backend *b);
static void login_send(struct session *s, struct backend *b);
static void login_release(struct session *s);
static void login_check(struct session *s);
static void login_route(struct session *s);
static void login_backend(struct session *s, const struct cfg_backend *bc);

struct login {
	uint8_t user[USER_MAX + 1]; /* as imapmux identifies the user (username_case) */
	size_t ulen;
	uint8_t typed[USER_MAX + 1]; /* as the client typed it */
	uint8_t sent[USER_MAX + 1];  /* as the chosen backend is given it (its username_case) */
	bool reserved;               /* holds one attempt of both brute-force budgets */
	ev_timer retry;              /* the budgets are full of attempts in flight: again */
	double retry_wait;
	uint8_t *pass; /* wiped and freed by login_free */
	size_t plen;
	struct rds_req *req;
	struct crypt_job *job;
	struct pool_wait *wait; /* waiting for a backend connection (pool_max) */
	ev_timer delay;
	enum login_result result;
	bool keep_key;    /* see login_req */
	const char *mech; /* see login_req */
	login_done_cb *done;
	/* /metrics: a client's LOGIN or AUTHENTICATE (not a wake's login) is
	 * timed from login_start to its answer, and counted by result under
	 * the backend it was routed to (slot; STATS_NO_SLOT before that) */
	bool client;
	double started;
	unsigned slot;
};

static void login_free(struct session *s)
{
	struct login *l = s->login;

	if (l == NULL)
		return;
	/* Abandoned before its answer was decided: the client learns nothing
	 * of the password, so the attempt frees its place. */
	if (l->reserved)
		login_release(s);
	s->login = NULL;
	rds_cancel(l->req);
	if (l->job != NULL)
		crypt_cancel(l->job);
	pool_wait_cancel(l->wait);
	ev_timer_stop(s->w->loop, &l->delay);
	ev_timer_stop(s->w->loop, &l->retry);
	if (l->pass != NULL) {
		explicit_bzero(l->pass, l->plen);
		free(l->pass);
	}
	explicit_bzero(l, sizeof(*l));
	free(l);
}

void login_abort(struct session *s)
{
	login_free(s);
}

/* A client's login is answered now: time it under its backend. */
static void login_observe(struct session *s, const struct login *l)
{
	struct stats *st = &s->w->stats;

	if (!l->client)
		return;
	stats_hist_observe(l->slot == STATS_NO_SLOT ? &st->login_noslot
	                                            : &st->bk[l->slot].login_seconds,
	                   ev_time() - l->started);
}

/* The login failed: free it, then tell the caller. */
static void login_answer(struct session *s)
{
	struct login *l = s->login;
	enum login_result r = l->result;
	login_done_cb *done = l->done;

	login_observe(s, l);
	login_free(s);
	done(s, r, NULL, false);
}

/* Logged in on b: the attempt frees its place, the caller takes b. */
static void login_succeed(struct session *s, struct backend *b, bool reused)
{
	struct login *l = s->login;
	login_done_cb *done = l->done;

	if (l->client)
		STAT_INC(&s->w->stats.bk[l->slot], logins_ok);
	login_observe(s, l);
	login_release(s);
	login_free(s);
	s->bk = NULL;
	done(s, LOGIN_OK, b, reused);
}

static void login_delay_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct session *s = t->data;

	(void)loop;
	(void)revents;
	login_answer(s);
}

/* The Redis key of kind for id (bounded: see ident_key). -1 when it cannot
 * be built, which a bounded prefix and user name never cause. */
static int sess_key(struct session *s, const char *kind, const void *id, size_t idlen,
                    char key[KEY_ROOM], size_t *len_r)
{
	if (ident_key(key, KEY_ROOM, rds_prefix(s->w->rds), kind, id, idlen, len_r) < 0) {
		sess_log(s, LOG_LVL_ERROR, "internal: Redis key too long");
		return -1;
	}
	return 0;
}

/* The brute-force keys of this login: failures (counters) and attempts in
 * flight (sorted sets), for the client's address group and for the user. */
struct fail_keys {
	char k[4][KEY_ROOM];
	size_t len[4];
};

static int login_fail_keys(struct session *s, struct fail_keys *fk)
{
	const struct login *l = s->login;

	if (sess_key(s, "authfail:ip:", s->ipkey, strlen(s->ipkey), fk->k[0], &fk->len[0]) < 0 ||
	    sess_key(s, "authfail:user:", l->user, l->ulen, fk->k[1], &fk->len[1]) < 0 ||
	    sess_key(s, "authtry:ip:", s->ipkey, strlen(s->ipkey), fk->k[2], &fk->len[2]) < 0 ||
	    sess_key(s, "authtry:user:", l->user, l->ulen, fk->k[3], &fk->len[3]) < 0)
		return -1;
	return 0;
}

/*
 * The brute-force budgets hold failures *and* attempts in flight: before
 * a password is checked (by imapmux or the backend) the attempt takes a
 * place under both address group and user, atomically and only while
 * failures + attempts in flight stay below the limit, so no more than
 * auth_fail_limit passwords can fail in a window, however many arrive at
 * once and on however many instances share the Redis. A login finding the
 * budget full of failures is refused; one finding it full of attempts
 * still in flight waits and tries again (a busy webmail host is not a
 * brute force). A failure turns its place into a failure; a success, or an
 * answer that says nothing of the password (backend unavailable), frees
 * it. Attempts are entries of a sorted set scored by their deadline (Redis
 * TIME), so those of an instance that died go by themselves.
 *
 *   KEYS: authfail:ip, authfail:user, authtry:ip, authtry:user
 *   reserve ARGV: limit, attempt id, attempt ttl  -> 0 ok, 1|2 locked, 3|4 busy
 *   finish ARGV: attempt id, failed (0|1), window  -> 0
 */
static const char reserve_lua[] =
    "local now = tonumber(redis.call('TIME')[1])\n"
    "local lim = tonumber(ARGV[1])\n"
    "local f = {}\n"
    "for i = 1, 2 do\n"
    "  f[i] = tonumber(redis.call('GET', KEYS[i])) or 0\n"
    "  if f[i] >= lim then return i end\n"
    "end\n"
    "for i = 1, 2 do\n"
    "  redis.call('ZREMRANGEBYSCORE', KEYS[i + 2], '-inf', now)\n"
    "  if f[i] + redis.call('ZCARD', KEYS[i + 2]) >= lim then return i + 2 end\n"
    "end\n"
    "local ttl = tonumber(ARGV[3])\n"
    "for i = 3, 4 do\n"
    "  redis.call('ZADD', KEYS[i], now + ttl, ARGV[2])\n"
    "  redis.call('EXPIRE', KEYS[i], ttl)\n"
    "end\n"
    "return 0\n";

static const char finish_lua[] = "redis.call('ZREM', KEYS[3], ARGV[1])\n"
                                 "redis.call('ZREM', KEYS[4], ARGV[1])\n"
                                 "if ARGV[2] == '1' then\n"
                                 "  for i = 1, 2 do\n"
                                 "    local n = redis.call('INCR', KEYS[i])\n"
                                 "    if n == 1 or redis.call('TTL', KEYS[i]) < 0 then\n"
                                 "      redis.call('EXPIRE', KEYS[i], ARGV[3])\n"
                                 "    end\n"
                                 "  end\n"
                                 "end\n"
                                 "return 0\n";

/* This attempt's member in the sets: unique across instances (a random
 * number of the process, then the session id). */
static uint64_t login_instance;

static void login_instance_init(void)
{
	if (getentropy(&login_instance, sizeof(login_instance)) < 0)
		login_instance = (uint64_t)getpid() ^ ((uint64_t)time(NULL) << 20);
}

static void login_attempt_id(const struct session *s, char id[48])
{
	static pthread_once_t once = PTHREAD_ONCE_INIT;

	(void)pthread_once(&once, login_instance_init);
	snprintf(id, 48, "%016llx:%lu", (unsigned long long)login_instance, s->id);
}

/* How long an attempt may stay in flight before it counts no more: longer
 * than any login can take (waiting for a pooled connection, connecting,
 * the login's own answer, Redis). */
static unsigned login_attempt_ttl(const struct cfg *cfg)
{
	double most = 0;

	for (size_t i = 0; i < cfg->nbackends; i++) {
		const struct cfg_backend *b = &cfg->backends[i];
		double t = b->pool_wait + b->connect_timeout + 2 * b->command_timeout;
		if (t > most)
			most = t;
	}
	return (unsigned)(most + 4 * cfg->redis_timeout + 30);
}

/* Turn this login's attempt into a failure (failed), or free it. A failure
 * with no attempt reserved (Redis was down when the login began) is
 * counted all the same, as well as Redis lets us. */
static void login_finish_attempt(struct session *s, bool failed)
{
	const struct cfg *cfg = s->rt->cfg;
	struct login *l = s->login;
	struct rds *r = s->w->rds;
	struct fail_keys fk;
	char id[48], window[32];

	if (l == NULL || (!l->reserved && !failed) || cfg->auth_fail_limit == 0 || r == NULL)
		return;
	l->reserved = false;
	if (login_fail_keys(s, &fk) < 0)
		return;
	login_attempt_id(s, id);
	snprintf(window, sizeof(window), "%.0f",
	         cfg->auth_fail_window < 1 ? 1.0 : cfg->auth_fail_window);
	const char *argv[10] = {
	    "EVAL", finish_lua,         "4",   fk.k[0], fk.k[1], fk.k[2], fk.k[3],
	    id,     failed ? "1" : "0", window};
	size_t argvlen[10] = {
	    4, sizeof(finish_lua) - 1, 1, fk.len[0], fk.len[1], fk.len[2], fk.len[3], strlen(id),
	    1, strlen(window)};
	(void)rds_send(r, 10, argv, argvlen);
}

static void login_release(struct session *s)
{
	login_finish_attempt(s, false);
}

static void login_count_failure(struct session *s)
{
	login_finish_attempt(s, true);
}

static void login_fail(struct session *s, enum login_result r, bool count, const char *why)
{
	struct login *l = s->login;

	sess_log_login_failed(s, r == LOGIN_UNAVAILABLE ? "unavailable" : "auth_failed", why);
	if (r == LOGIN_UNAVAILABLE)
		STAT_INC(&s->w->stats, logins_unavailable);
	else
		STAT_INC(&s->w->stats, logins_auth_failed);
	if (l->client && r == LOGIN_UNAVAILABLE)
		STAT_INC(&s->w->stats.bk[l->slot], logins_unavailable);
	else if (l->client)
		STAT_INC(&s->w->stats.bk[l->slot], logins_failed);
	l->result = r;
	l->req = NULL;
	l->job = NULL;
	if (count)
		login_count_failure(s);
	else
		login_release(s);
	if (r != LOGIN_UNAVAILABLE && s->rt->cfg->auth_fail_delay > 0) {
		ev_timer_set(&l->delay, s->rt->cfg->auth_fail_delay, 0.);
		ev_timer_start(s->w->loop, &l->delay);
		return;
	}
	login_answer(s);
}

static bool backend_usable(size_t i, void *arg)
{
	const struct session *s = arg;

	return runtime_backend_up(s->rt, i) && !worker_drained(s->w, s->rt->cfg->backends[i].name);
}

static const struct cfg_backend *login_fallback(struct session *s)
{
	const struct cfg *cfg = s->rt->cfg;
	struct login *l = s->login;

	switch (cfg->fallback) {
	case CFG_FALLBACK_BACKEND:
		return cfg_backend_find(cfg, cfg->fallback_backend);
	case CFG_FALLBACK_HASH:
		return route_rendezvous_among(cfg, l->user, l->ulen, backend_usable, s);
	case CFG_FALLBACK_DENY:
		break;
	}
	return NULL;
}

static void login_backend(struct session *s, const struct cfg_backend *bc)
{
	const struct cfg *cfg = s->rt->cfg;
	struct login *l = s->login;
	size_t i;

	if (bc == NULL) {
		login_fail(
		    s, cfg->fallback == CFG_FALLBACK_DENY ? LOGIN_AUTH_FAILED : LOGIN_UNAVAILABLE,
		    false,
		    cfg->fallback == CFG_FALLBACK_DENY ? "no route (fallback = deny)"
		                                       : "no backend up");
		return;
	}
	i = runtime_backend_index(s->rt, bc);
	l->slot = s->rt->backend_slot[i];
	if (!runtime_backend_up(s->rt, i)) {
		login_fail(s, LOGIN_UNAVAILABLE, false, "routed backend is down");
		return;
	}
	if (worker_drained(s->w, bc->name)) {
		login_fail(s, LOGIN_UNAVAILABLE, false, "routed backend is drained");
		return;
	}
	s->bcfg = bc;
	ident_user_norm(l->typed, l->ulen, bc->username_case == CFG_UCASE_FOLD, l->sent);
	if (bc->reuse_ttl > 0 && !l->keep_key) {
		/* With auth = redis the proxy proved the password: any later
		 * proven login of the user may have the session. */
		static const uint8_t proven[] = "\001verified-by-imapmux";
		if (cfg->auth == CFG_AUTH_REDIS)
			reuse_key(bc->name, l->sent, l->ulen, proven, sizeof(proven), s->reuse_key);
		else
			reuse_key(bc->name, l->sent, l->ulen, l->pass, l->plen, s->reuse_key);
		s->reuse_ok = true;
		struct backend *kept = reuse_take(s->w, bc, s->reuse_key);
		if (kept != NULL) {
			login_succeed(s, kept, true);
			return;
		}
	}
	struct pool *pool = pool_of(s->w, s->rt, bc);
	struct backend *b = NULL;
	int pr = pool == NULL ? -1
	                      : pool_acquire(pool, s->id, login_backend_done, s, &b, login_pool_got,
	                                     s, &l->wait);
	if (pr == -2) {
		/* At pool_max: a kept session of this backend is a connection
		 * nobody uses; its slot goes to the oldest waiting login (this
		 * one, or an earlier one) once it is freed. */
		(void)reuse_evict_one(s->w, bc->name);
		return; /* login_pool_got goes on */
	}
	if (pr == -1) {
		login_fail(s, LOGIN_UNAVAILABLE, false, "cannot connect to the backend");
		return;
	}
	login_send(s, b);
}

/* A backend connection for this login at last (NULL: pool_wait passed). */
static void login_pool_got(void *arg, struct backend *b)
{
	struct session *s = arg;

	s->login->wait = NULL;
	if (b == NULL) {
		login_fail(s, LOGIN_UNAVAILABLE, false, "no backend connection free (pool_max)");
		return;
	}
	login_send(s, b);
}

/* The client's addresses for the backend's ID (RFC 2971; the field names
 * Dovecot and others read): where the client is, as the PROXY header said
 * where there was one, where it connected, and the session's id. */
static int login_set_id(struct session *s)
{
	char args[320];
	int n;

	if (s->port != 0)
		n = snprintf(args, sizeof(args),
		             "(\"x-originating-ip\" \"%s\" \"x-originating-port\" \"%u\" "
		             "\"x-connected-ip\" \"%s\" \"x-connected-port\" \"%u\" "
		             "\"x-session-id\" \"imapmux-%lu\")",
		             s->ip, (unsigned)s->port, s->lip, (unsigned)s->lport, s->id);
	else
		n = snprintf(args, sizeof(args), "(\"x-session-id\" \"imapmux-%lu\")", s->id);
	if (n < 0 || (size_t)n >= sizeof(args))
		return 0; /* cannot be: addresses are short */
	return backend_set_id(s->bk, args);
}

/* send_proxy: the client's addresses (the PROXY header's where one was
 * read) ahead of everything on b, a connection made for this session. */
static int login_set_proxy(struct session *s, struct backend *b)
{
	uint8_t hdr[PROXYPROTO_BUILD_MAX];
	int n = proxyproto_build(s->bcfg->send_proxy == CFG_SEND_PROXY_V1 ? 1 : 2,
	                         s->port != 0 ? s->ip : NULL, s->port, s->lip, s->lport, hdr,
	                         sizeof(hdr));

	return n < 0 ? -1 : backend_set_proxy(b, hdr, (size_t)n);
}

/* Log in on b, which this session owns now. */
static void login_send(struct session *s, struct backend *b)
{
	const struct cfg *cfg = s->rt->cfg;
	const struct cfg_backend *bc = s->bcfg;
	struct login *l = s->login;
	int r;

	s->bk = b;
	STAT_INC(&s->w->stats, backend_logins);
	if (bc->send_proxy != CFG_SEND_PROXY_NO && login_set_proxy(s, b) < 0) {
		/* Only a connection opened for this login can carry its header. */
		backend_destroy_later(&s->w->reaper, &s->bk);
		login_fail(s, LOGIN_UNAVAILABLE, false, "cannot give the backend a PROXY header");
		return;
	}
	/* First: a connection that is ready sends its login at once. */
	r = bc->forward_id ? login_set_id(s) : 0;
	if (r == 0 && l->mech != NULL)
		r = backend_login_mech(s->bk, l->mech, (const char *)l->sent, l->ulen,
		                       (const char *)l->pass, l->plen);
	else if (r == 0 && (cfg->auth == CFG_AUTH_REDIS || l->plen == 0))
		r = backend_login_as(s->bk, (const char *)l->sent, l->ulen, bc->master_user,
		                     strlen(bc->master_user), bc->master_password,
		                     strlen(bc->master_password));
	else if (r == 0)
		r = backend_login(s->bk, (const char *)l->sent, l->ulen, (const char *)l->pass,
		                  l->plen);
	if (r < 0) {
		backend_destroy_later(&s->w->reaper, &s->bk);
		login_fail(s, LOGIN_UNAVAILABLE, false, "out of memory");
		return;
	}
	/* The backend has its own copy now. */
	if (l->pass != NULL)
		explicit_bzero(l->pass, l->plen);
	if (log_enabled(LOG_LVL_DEBUG)) {
		char what[128];
		snprintf(what, sizeof(what), "login: trying backend %s", bc->name);
		sess_log(s, LOG_LVL_DEBUG, what);
	}
}

static void login_route_reply(void *arg, const redisReply *rep)
{
	struct session *s = arg;
	struct login *l = s->login;
	const struct cfg *cfg = s->rt->cfg;
	const struct cfg_backend *bc = NULL;

	l->req = NULL;
	if (rep != NULL && rep->type == REDIS_REPLY_STRING) {
		for (size_t i = 0; i < cfg->nbackends; i++) {
			if (strlen(cfg->backends[i].name) == rep->len &&
			    memcmp(cfg->backends[i].name, rep->str, rep->len) == 0)
				bc = &cfg->backends[i];
		}
		if (bc == NULL)
			sess_log(s, LOG_LVL_WARN, "route names an unknown backend: using fallback");
	}
	if (bc != NULL)
		STAT_INC(&s->w->stats, route_redis);
	else
		STAT_INC(&s->w->stats, route_fallback);
	if (rep != NULL && rep->type != REDIS_REPLY_ERROR && cfg->cache_ttl > 0) {
		double now = ev_now(s->w->loop);
		int val = bc ? (int)runtime_backend_index(s->rt, bc) : -1;
		(void)ttlmap_put(s->w->routes, l->user, l->ulen, val, now + cfg->cache_ttl, now);
	}
	login_backend(s, bc != NULL ? bc : login_fallback(s));
}

static void login_route(struct session *s)
{
	const struct cfg *cfg = s->rt->cfg;
	struct login *l = s->login;
	struct rds *r = s->w->rds;
	char key[KEY_ROOM];
	size_t klen;
	int val;

	if (cfg->lookup != CFG_LOOKUP_REDIS) {
		STAT_INC(&s->w->stats, route_static);
		login_backend(s, login_fallback(s));
		return;
	}
	if (s->w->routes != NULL &&
	    ttlmap_get(s->w->routes, l->user, l->ulen, ev_now(s->w->loop), &val) == 0) {
		STAT_INC(&s->w->stats, route_cache);
		login_backend(s, val >= 0 && (size_t)val < cfg->nbackends ? &cfg->backends[val]
		                                                          : login_fallback(s));
		return;
	}
	if (r == NULL || sess_key(s, "route:", l->user, l->ulen, key, &klen) < 0) {
		STAT_INC(&s->w->stats, route_fallback);
		login_backend(s, login_fallback(s));
		return;
	}
	const char *argv[2] = {"GET", key};
	size_t argvlen[2] = {3, klen};
	l->req = rds_command(r, login_route_reply, s, 2, argv, argvlen);
	if (l->req == NULL) { /* Redis down: the fallback still works */
		STAT_INC(&s->w->stats, route_fallback);
		login_backend(s, login_fallback(s));
	}
}

static void login_verified(void *arg, int result)
{
	struct session *s = arg;
	struct login *l = s->login;

	l->job = NULL;
	if (result == 1) {
		login_route(s);
		return;
	}
	login_fail(s, LOGIN_AUTH_FAILED, true,
	           result == 0 ? "wrong password" : "unusable password hash in Redis");
}

/* crypt_verify_dummy's answer: only its time mattered (as long as a wrong password's). */
static void login_unknown(void *arg, int result)
{
	struct session *s = arg;

	(void)result;
	s->login->job = NULL;
	login_fail(s, LOGIN_AUTH_FAILED, true, "unknown user");
}

static void login_hash_reply(void *arg, const redisReply *rep)
{
	struct session *s = arg;
	struct login *l = s->login;
	char hash[512];

	l->req = NULL;
	if (rep == NULL || rep->type == REDIS_REPLY_ERROR) {
		login_fail(s, LOGIN_UNAVAILABLE, false, "Redis unavailable");
		return;
	}
	if (rep->type != REDIS_REPLY_STRING || rep->len == 0 || rep->len >= sizeof(hash)) {
		/* No hash: pay for one all the same, or the answer time tells who exists. */
		l->job = crypt_verify_dummy(s->w->crypt, (const char *)l->pass, l->plen,
		                            login_unknown, s);
		if (l->job == NULL)
			login_fail(s, LOGIN_UNAVAILABLE, false, "password check queue full");
		return;
	}
	memcpy(hash, rep->str, rep->len);
	hash[rep->len] = '\0';
	l->job = crypt_verify(s->w->crypt, (const char *)l->pass, l->plen, hash, login_verified, s);
	explicit_bzero(hash, sizeof(hash));
	if (l->job == NULL)
		login_fail(s, LOGIN_UNAVAILABLE, false, "password check queue full");
}

static void login_verify(struct session *s)
{
	struct login *l = s->login;
	struct rds *r = s->w->rds;
	char key[KEY_ROOM];
	size_t klen;

	if (s->rt->cfg->auth != CFG_AUTH_REDIS) {
		login_route(s);
		return;
	}
	if (r == NULL) {
		login_fail(s, LOGIN_UNAVAILABLE, false, "Redis not set up");
		return;
	}
	if (sess_key(s, "user:", l->user, l->ulen, key, &klen) < 0) {
		login_fail(s, LOGIN_UNAVAILABLE, false, "Redis key too long");
		return;
	}
	const char *argv[3] = {"HGET", key, "password"};
	size_t argvlen[3] = {4, klen, 8};
	l->req = rds_command(r, login_hash_reply, s, 3, argv, argvlen);
	if (l->req == NULL)
		login_fail(s, LOGIN_UNAVAILABLE, false, "Redis unavailable");
}

static void login_retry_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct session *s = t->data;

	(void)loop;
	(void)revents;
	login_check(s);
}

static void login_check_reply(void *arg, const redisReply *rep)
{
	struct session *s = arg;
	struct login *l = s->login;

	l->req = NULL;
	if (rep != NULL && rep->type == REDIS_REPLY_INTEGER) {
		switch (rep->integer) {
		case 0:
			l->reserved = true;
			break;
		case 1:
		case 2:
			if (rep->integer == 1)
				STAT_INC(&s->w->stats, lockouts_ip);
			else
				STAT_INC(&s->w->stats, lockouts_user);
			login_fail(s, LOGIN_AUTH_FAILED, false,
			           rep->integer == 1 ? "too many failures from this address"
			                             : "too many failures for this user");
			return;
		default:
			/* The budget is full of attempts still being checked: try
			 * again shortly (25 ms doubling to 400 ms). preauth_timeout
			 * bounds the wait. */
			l->retry_wait = l->retry_wait == 0 ? 0.025 : l->retry_wait * 2;
			if (l->retry_wait > 0.4)
				l->retry_wait = 0.4;
			ev_timer_set(&l->retry, l->retry_wait, 0.);
			ev_timer_start(s->w->loop, &l->retry);
			return;
		}
	} else if (rep != NULL) {
		/* An error (a Redis without Lua, an ACL without EVAL): said once
		 * per login, the limit is not enforced. */
		sess_log(s, LOG_LVL_WARN,
		         rep->type == REDIS_REPLY_ERROR ? "brute-force check failed in Redis (EVAL)"
		                                        : "brute-force check: unexpected reply");
	}
	/* Redis down: the limit cannot be checked; auth = redis fails next. */
	login_verify(s);
}

/* Reserve this attempt under both budgets (reserve_lua), then verify. */
static void login_check(struct session *s)
{
	const struct cfg *cfg = s->rt->cfg;
	struct login *l = s->login;
	struct rds *r = s->w->rds;
	struct fail_keys fk;
	char limit[16], id[48], ttl[16];

	if (cfg->auth_fail_limit == 0 || r == NULL || !rds_up(r) || login_fail_keys(s, &fk) < 0) {
		login_verify(s);
		return;
	}
	snprintf(limit, sizeof(limit), "%u", cfg->auth_fail_limit);
	snprintf(ttl, sizeof(ttl), "%u", login_attempt_ttl(cfg));
	login_attempt_id(s, id);
	const char *argv[10] = {"EVAL",  reserve_lua, "4",   fk.k[0], fk.k[1],
	                        fk.k[2], fk.k[3],     limit, id,      ttl};
	size_t argvlen[10] = {
	    4,         sizeof(reserve_lua) - 1, 1,          fk.len[0],  fk.len[1], fk.len[2],
	    fk.len[3], strlen(limit),           strlen(id), strlen(ttl)};
	l->req = rds_command(r, login_check_reply, s, 10, argv, argvlen);
	if (l->req == NULL)
		login_verify(s);
}

static void login_backend_done(void *owner, struct backend *b, enum bk_result r, const char *why)
{
	struct session *s = owner;
	char what[160];

	if (s->login == NULL)
		return;
	if (r != BK_RES_OK) {
		bool master = s->rt->cfg->auth == CFG_AUTH_REDIS;
		snprintf(what, sizeof(what), "backend %s: %s%s", s->bcfg->name, why,
		         master && r == BK_RES_AUTH_FAILED ? " (master login refused: check "
		                                             "master_user/master_password)"
		                                           : "");
		backend_destroy_later(&s->w->reaper, &s->bk);
		/* With auth = redis the password was already right: a refused
		 * master login is the operator's problem, not the user's. */
		if (r == BK_RES_AUTH_FAILED && !master)
			login_fail(s, LOGIN_AUTH_FAILED, true, what);
		else
			login_fail(s, LOGIN_UNAVAILABLE, false, what);
		return;
	}
	login_succeed(s, b, false);
}

int login_start(struct session *s, const struct login_req *rq)
{
	struct login *l = calloc(1, sizeof(*l));

	if (l == NULL || (rq->plen > 0 && (l->pass = malloc(rq->plen)) == NULL)) {
		free(l);
		return -1;
	}
	/* Normalised once: every count, key, match and log line below sees
	 * one name for one user. */
	memcpy(l->typed, rq->user, rq->ulen);
	ident_user_norm(rq->user, rq->ulen, s->rt->cfg->username_case == CFG_UCASE_FOLD, l->user);
	l->ulen = rq->ulen;
	memcpy(s->uname, l->user, rq->ulen);
	s->uname_len = rq->ulen;
	sess_set_user(s, l->user, rq->ulen);
	if (rq->plen > 0)
		memcpy(l->pass, rq->pass, rq->plen);
	l->plen = rq->plen;
	l->mech = rq->mech;
	l->done = rq->done;
	l->keep_key = rq->keep_key;
	l->client = !rq->verified;
	l->started = ev_time();
	l->slot = STATS_NO_SLOT;
	ev_init(&l->delay, login_delay_cb);
	l->delay.data = s;
	ev_init(&l->retry, login_retry_cb);
	l->retry.data = s;
	s->login = l;
	if (rq->verified && rq->backend != NULL)
		login_backend(s, rq->backend);
	else if (rq->verified)
		login_route(s);
	else
		login_check(s);
	return 0;
}
