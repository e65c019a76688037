/*
 * imapmuxctl — the operator's control tool (issue #12): talks to imapmux's
 * Redis (keys and the events channel, README "Redis").
 *
 *   imapmuxctl [-c CONFIG] [--redis HOST:PORT] COMMAND ...
 *     route get|set|del USER [BACKEND]  -> GET/SET/DEL PREFIXroute:USER,
 *                                          then PUBLISH "route USER"
 *     move USER BACKEND                 -> route set, then PUBLISH "kick USER"
 *     kick USER                         -> PUBLISH "kick USER" (prints receivers)
 *     user add|passwd USER              -> HSET PREFIXuser:USER password $y$...
 *                                          (password from the terminal without
 *                                          echo, twice, or one line of stdin)
 *     backend NAME drain|undrain        -> SADD/SREM PREFIXdrained NAME, then
 *                                          PUBLISH "drain NAME" / "undrain NAME"
 *     backend list                      -> configured backends, drained or not
 *   imapmuxctl [-c CONFIG] [--stats HOST:PORT]... who [USER]
 *                                       -> GET /sessions[?user=USER] of each
 *                                          instance's stats port, one table
 *
 * Exit: 0 ok, 1 failure (message on stderr), 2 usage. Reads [redis] address
 * (or sentinels and master_name: the master is asked of the sentinels, in
 * turn, and checked with ROLE), prefix, username, password and db from the
 * imapmux configuration (common/cfg.c); the password never appears in argv
 * or output.
 */
#include <arpa/inet.h>
#include <crypt.h>
#include <errno.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "cfg.h"
#include "ident.h"

#define DEFAULT_CONFIG "/etc/imapmux/imapmux.conf"

static void usage(FILE *f)
{
	fprintf(f, "usage: imapmuxctl [-c CONFIG] [--redis HOST:PORT] [--stats HOST:PORT]... "
	           "COMMAND\n"
	           "  route get USER | route set USER BACKEND | route del USER\n"
	           "  move USER BACKEND\n"
	           "  kick USER\n"
	           "  user add USER | user passwd USER   (password from the terminal or stdin)\n"
	           "  backend list | backend NAME drain | backend NAME undrain\n"
	           "  who [USER]   sessions of each --stats instance (default: stats_listen)\n"
	           "CONFIG defaults to " DEFAULT_CONFIG ".\n");
}

/* A blocking connection to a (bounded by tv); NULL with a message. */
static redisContext *ctl_open(const struct cfg_addr *a, struct timeval tv)
{
	const struct sockaddr *sa = (const struct sockaddr *)&a->ss;
	char host[INET6_ADDRSTRLEN];
	redisContext *rc;

	if (sa->sa_family == AF_UNIX) {
		rc = redisConnectUnixWithTimeout(((const struct sockaddr_un *)sa)->sun_path, tv);
	} else if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
		inet_ntop(AF_INET, &in->sin_addr, host, sizeof(host));
		rc = redisConnectWithTimeout(host, ntohs(in->sin_port), tv);
	} else {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
		inet_ntop(AF_INET6, &in6->sin6_addr, host, sizeof(host));
		rc = redisConnectWithTimeout(host, ntohs(in6->sin6_port), tv);
	}
	if (rc == NULL || rc->err) {
		fprintf(stderr, "imapmuxctl: redis %s: %s\n", a->text,
		        rc ? rc->errstr : "out of memory");
		redisFree(rc);
		return NULL;
	}
	/* Every reply within tv too, not only the connect. */
	if (redisSetTimeout(rc, tv) != REDIS_OK) {
		fprintf(stderr, "imapmuxctl: redis %s: cannot set a timeout\n", a->text);
		redisFree(rc);
		return NULL;
	}
	return rc;
}

/* One setup command (AUTH, SELECT, ROLE): the reply, or NULL with a
 * message saying what and where (never the arguments: AUTH's hold the
 * password). */
static redisReply *ctl_setup(redisContext *rc, const char *where, const char *what, int argc,
                             const char **argv)
{
	size_t len[3];
	redisReply *r;

	for (int i = 0; i < argc; i++)
		len[i] = strlen(argv[i]);
	r = redisCommandArgv(rc, argc, argv, len);
	if (r == NULL) {
		fprintf(stderr, "imapmuxctl: redis %s: %s: %s\n", where, what, rc->errstr);
		return NULL;
	}
	if (r->type == REDIS_REPLY_ERROR) {
		fprintf(stderr, "imapmuxctl: redis %s: %s failed: %s\n", where, what, r->str);
		freeReplyObject(r);
		return NULL;
	}
	return r;
}

/*
 * Connect to a, then AUTH ([redis] username and password), SELECT db, and
 * with must_be_master, check with ROLE that a is the master. NULL with a
 * message on stderr.
 */
static redisContext *ctl_connect_at(const struct cfg *cfg, const struct cfg_addr *a,
                                    struct timeval tv, bool must_be_master)
{
	redisContext *rc = ctl_open(a, tv);
	redisReply *r;
	char auth_what[200], db[16];

	if (rc == NULL)
		return NULL;
	if (cfg->redis_password != NULL) {
		const char *argv[3] = {"AUTH", cfg->redis_password, NULL};
		int argc = 2;
		snprintf(auth_what, sizeof(auth_what), "AUTH");
		if (cfg->redis_username != NULL) {
			argv[1] = cfg->redis_username;
			argv[2] = cfg->redis_password;
			argc = 3;
			snprintf(auth_what, sizeof(auth_what), "AUTH as user '%s'",
			         cfg->redis_username);
		}
		r = ctl_setup(rc, a->text, auth_what, argc, argv);
		if (r == NULL)
			goto fail;
		freeReplyObject(r);
	}
	if (cfg->redis_db != 0) {
		snprintf(db, sizeof(db), "%u", cfg->redis_db);
		const char *argv[2] = {"SELECT", db};
		r = ctl_setup(rc, a->text, "SELECT", 2, argv);
		if (r == NULL)
			goto fail;
		freeReplyObject(r);
	}
	if (must_be_master) {
		const char *argv[1] = {"ROLE"};
		bool master;
		r = ctl_setup(rc, a->text, "ROLE", 1, argv);
		if (r == NULL)
			goto fail;
		master = r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
		         r->element[0]->type == REDIS_REPLY_STRING &&
		         strcmp(r->element[0]->str, "master") == 0;
		freeReplyObject(r);
		if (!master) {
			fprintf(stderr, "imapmuxctl: redis %s is not the master\n", a->text);
			goto fail;
		}
	}
	return rc;
fail:
	redisFree(rc);
	return NULL;
}

/*
 * Sentinel: ask each sentinel in turn for master_name's address and connect
 * there, until one such master says it is the master. NULL with a message
 * for each sentinel that did not lead to it.
 */
static redisContext *ctl_connect_sentinels(const struct cfg *cfg, struct timeval tv)
{
	const struct cfg_addr_list *sl = &cfg->redis_sentinels;

	for (size_t i = 0; i < sl->n; i++) {
		const char *argv[3] = {"SENTINEL", "get-master-addr-by-name",
		                       cfg->redis_master_name};
		redisContext *sc = ctl_open(&sl->addrs[i], tv), *rc;
		redisReply *r;
		struct cfg_addr master;
		char text[300];

		if (sc == NULL)
			continue;
		r = ctl_setup(sc, sl->addrs[i].text, "SENTINEL get-master-addr-by-name", 3, argv);
		redisFree(sc);
		if (r == NULL)
			continue;
		if (r->type != REDIS_REPLY_ARRAY || r->elements != 2 ||
		    r->element[0]->type != REDIS_REPLY_STRING ||
		    r->element[1]->type != REDIS_REPLY_STRING) {
			fprintf(stderr, "imapmuxctl: sentinel %s does not know master %s\n",
			        sl->addrs[i].text, cfg->redis_master_name);
			freeReplyObject(r);
			continue;
		}
		snprintf(text, sizeof(text), strchr(r->element[0]->str, ':') ? "[%s]:%s" : "%s:%s",
		         r->element[0]->str, r->element[1]->str);
		freeReplyObject(r);
		if (cfg_parse_addr(text, false, &master) < 0) {
			fprintf(stderr, "imapmuxctl: sentinel %s names a bad master address '%s'\n",
			        sl->addrs[i].text, text);
			continue;
		}
		rc = ctl_connect_at(cfg, &master, tv, true);
		if (rc != NULL)
			return rc;
	}
	fprintf(stderr, "imapmuxctl: no sentinel led to master %s\n", cfg->redis_master_name);
	return NULL;
}

/* Connect to cfg's Redis: the override HOST:PORT, the address, or the
 * master the sentinels name; AUTH and SELECT. NULL with a message on
 * stderr. */
static redisContext *ctl_connect(const struct cfg *cfg, const char *override)
{
	struct timeval tv = {5, 0};
	struct cfg_addr a;

	if (override != NULL) {
		if (cfg_parse_addr(override, false, &a) < 0) {
			fprintf(stderr, "imapmuxctl: bad --redis address '%s'\n", override);
			return NULL;
		}
		return ctl_connect_at(cfg, &a, tv, false);
	}
	if (cfg->redis_sentinels.n > 0) {
		/* Each connection and reply within [redis] timeout. */
		tv.tv_sec = (time_t)cfg->redis_timeout;
		tv.tv_usec = (suseconds_t)((cfg->redis_timeout - (double)tv.tv_sec) * 1e6);
		return ctl_connect_sentinels(cfg, tv);
	}
	return ctl_connect_at(cfg, &cfg->redis_addr, tv, false);
}

/* One binary-safe command: cmd, then PREFIX+kind+user as a key (kind NULL:
 * no key), then extra (NULL: none). The reply, or NULL with a message. */
static redisReply *ctl_cmd(redisContext *rc, const char *cmd, const char *prefix, const char *kind,
                           const char *user, const char *extra)
{
	char key[512];
	const char *argv[3];
	size_t len[3];
	int argc = 0;
	redisReply *r;

	argv[argc] = cmd;
	len[argc++] = strlen(cmd);
	if (kind != NULL) {
		int n = snprintf(key, sizeof(key), "%s%s%s", prefix, kind, user);
		if (n < 0 || (size_t)n >= sizeof(key)) {
			fprintf(stderr, "imapmuxctl: user name too long\n");
			return NULL;
		}
		argv[argc] = key;
		len[argc++] = (size_t)n;
	}
	if (extra != NULL) {
		argv[argc] = extra;
		len[argc++] = strlen(extra);
	}
	r = redisCommandArgv(rc, argc, argv, len);
	if (r == NULL) {
		fprintf(stderr, "imapmuxctl: redis: %s\n", rc->errstr);
		return NULL;
	}
	if (r->type == REDIS_REPLY_ERROR) {
		fprintf(stderr, "imapmuxctl: redis %s: %s\n", cmd, r->str);
		freeReplyObject(r);
		return NULL;
	}
	return r;
}

/* PUBLISH "what USER" on PREFIXevents; receivers in *n_r. */
static int ctl_publish(redisContext *rc, const char *prefix, const char *what, const char *user,
                       long long *n_r)
{
	char chan[128], msg[512];
	int n = snprintf(msg, sizeof(msg), "%s %s", what, user);
	redisReply *r;

	snprintf(chan, sizeof(chan), "%sevents", prefix);
	if (n < 0 || (size_t)n >= sizeof(msg)) {
		fprintf(stderr, "imapmuxctl: user name too long\n");
		return -1;
	}
	const char *argv[3] = {"PUBLISH", chan, msg};
	size_t len[3] = {7, strlen(chan), (size_t)n};
	r = redisCommandArgv(rc, 3, argv, len);
	if (r == NULL || r->type != REDIS_REPLY_INTEGER) {
		fprintf(stderr, "imapmuxctl: redis PUBLISH failed\n");
		freeReplyObject(r);
		return -1;
	}
	*n_r = r->integer;
	freeReplyObject(r);
	return 0;
}

#define PW_MAX 1024

/* One line of at most PW_MAX-1 bytes from stdin, without its newline, into
 * buf. -1 at EOF or when too long. */
static int read_line(char *buf)
{
	size_t n;

	if (fgets(buf, PW_MAX, stdin) == NULL)
		return -1;
	n = strlen(buf);
	if (n > 0 && buf[n - 1] == '\n')
		buf[--n] = '\0';
	else if (!feof(stdin))
		return -1;
	if (n > 0 && buf[n - 1] == '\r')
		buf[--n] = '\0';
	return 0;
}

/* The new password: from the terminal without echo, twice (must match), or
 * one line of stdin when it is not a terminal. Never from argv. */
static int read_password(char *pw)
{
	char again[PW_MAX];
	struct termios old, quiet;
	int r = -1;

	if (!isatty(STDIN_FILENO)) {
		r = read_line(pw);
		goto done;
	}
	if (tcgetattr(STDIN_FILENO, &old) < 0)
		return -1;
	quiet = old;
	quiet.c_lflag &= ~(tcflag_t)ECHO;
	if (tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet) < 0)
		return -1;
	fprintf(stderr, "New password: ");
	if (read_line(pw) == 0) {
		fprintf(stderr, "\nAgain: ");
		if (read_line(again) == 0)
			r = strcmp(pw, again) == 0 ? 0 : -2;
	}
	fprintf(stderr, "\n");
	(void)tcsetattr(STDIN_FILENO, TCSAFLUSH, &old);
	explicit_bzero(again, sizeof(again));
done:
	if (r == 0 && pw[0] == '\0')
		r = -3;
	return r;
}

static int user_set(redisContext *rc, const struct cfg *cfg, const char *user, bool add)
{
	char pw[PW_MAX];
	char *setting = NULL, *hash;
	void *data = NULL;
	int size = 0, rv = 1, r;
	redisReply *rep;

	rep = ctl_cmd(rc, "EXISTS", cfg->redis_prefix, "user:", user, NULL);
	if (rep == NULL)
		return 1;
	r = rep->type == REDIS_REPLY_INTEGER && rep->integer > 0;
	freeReplyObject(rep);
	if (add && r) {
		fprintf(stderr, "imapmuxctl: user %s exists (user passwd changes it)\n", user);
		return 1;
	}
	if (!add && !r) {
		fprintf(stderr, "imapmuxctl: no user %s (user add makes one)\n", user);
		return 1;
	}
	r = read_password(pw);
	if (r < 0) {
		fprintf(stderr, "imapmuxctl: %s\n",
		        r == -2   ? "the passwords differ"
		        : r == -3 ? "empty password"
		                  : "cannot read the password");
		goto fail;
	}
	setting = crypt_gensalt_ra("$y$", 0, NULL, 0);
	hash = setting ? crypt_ra(pw, setting, &data, &size) : NULL;
	if (hash == NULL || hash[0] != '$') {
		fprintf(stderr, "imapmuxctl: yescrypt hashing failed\n");
		goto fail;
	}
	{
		char key[512];
		int n = snprintf(key, sizeof(key), "%suser:%s", cfg->redis_prefix, user);
		if (n < 0 || (size_t)n >= sizeof(key))
			goto fail;
		const char *argv[4] = {"HSET", key, "password", hash};
		size_t len[4] = {4, (size_t)n, 8, strlen(hash)};
		rep = redisCommandArgv(rc, 4, argv, len);
		if (rep == NULL || rep->type == REDIS_REPLY_ERROR) {
			fprintf(stderr, "imapmuxctl: redis HSET failed\n");
			freeReplyObject(rep);
			goto fail;
		}
		freeReplyObject(rep);
	}
	printf("user %s: password %s\n", user, add ? "set" : "changed");
	rv = 0;
fail:
	explicit_bzero(pw, sizeof(pw));
	if (data != NULL) {
		explicit_bzero(data, (size_t)size);
		free(data);
	}
	free(setting);
	return rv;
}

static int route_set(redisContext *rc, const struct cfg *cfg, const char *user, const char *bk)
{
	long long n;
	redisReply *r;

	if (cfg_backend_find(cfg, bk) == NULL) {
		fprintf(stderr, "imapmuxctl: no [backend %s] in %s\n", bk, cfg->path);
		return 1;
	}
	r = ctl_cmd(rc, "SET", cfg->redis_prefix, "route:", user, bk);
	if (r == NULL)
		return 1;
	freeReplyObject(r);
	return ctl_publish(rc, cfg->redis_prefix, "route", user, &n) < 0 ? 1 : 0;
}

/* backend list | backend NAME drain | backend NAME undrain: the set
 * PREFIXdrained, and a "drain NAME" / "undrain NAME" event for the
 * instances to act on now (they read the set again when they resubscribe). */
static int backend_cmd(redisContext *rc, const struct cfg *cfg, int argc, char **argv)
{
	const char *p = cfg->redis_prefix;
	redisReply *r;
	long long n;

	if (argc == 2 && strcmp(argv[1], "list") == 0) {
		r = ctl_cmd(rc, "SMEMBERS", p, "drained", "", NULL);
		if (r == NULL)
			return 1;
		for (size_t i = 0; i < cfg->nbackends; i++) {
			const struct cfg_backend *b = &cfg->backends[i];
			bool drained = false;
			for (size_t j = 0; j < r->elements && !drained; j++)
				drained = r->element[j]->type == REDIS_REPLY_STRING &&
				          strcmp(r->element[j]->str, b->name) == 0;
			printf("%-20s %-40s %s\n", b->name, b->addr.text,
			       drained ? "drained" : "in service");
		}
		for (size_t j = 0; j < r->elements; j++)
			if (r->element[j]->type == REDIS_REPLY_STRING &&
			    cfg_backend_find(cfg, r->element[j]->str) == NULL)
				printf("%-20.64s %-40s drained\n", r->element[j]->str,
				       "(not in this configuration)");
		freeReplyObject(r);
		return 0;
	}
	if (argc != 3 || (strcmp(argv[2], "drain") != 0 && strcmp(argv[2], "undrain") != 0)) {
		usage(stderr);
		return 2;
	}
	bool on = strcmp(argv[2], "drain") == 0;
	/* Undraining a name no longer configured is how one cleans it up. */
	if (on && cfg_backend_find(cfg, argv[1]) == NULL) {
		fprintf(stderr, "imapmuxctl: no [backend %s] in %s\n", argv[1], cfg->path);
		return 1;
	}
	r = ctl_cmd(rc, on ? "SADD" : "SREM", p, "drained", "", argv[1]);
	if (r == NULL)
		return 1;
	freeReplyObject(r);
	if (ctl_publish(rc, p, on ? "drain" : "undrain", argv[1], &n) < 0)
		return 1;
	printf("backend %s %s; event received by %lld subscriber(s)\n", argv[1],
	       on ? "drained" : "undrained", n);
	return 0;
}

static int run(redisContext *rc, const struct cfg *cfg, int argc, char **argv)
{
	const char *p = cfg->redis_prefix;
	long long n;
	redisReply *r;

	if (argc == 3 && strcmp(argv[0], "route") == 0 && strcmp(argv[1], "get") == 0) {
		r = ctl_cmd(rc, "GET", p, "route:", argv[2], NULL);
		if (r == NULL)
			return 1;
		if (r->type == REDIS_REPLY_STRING)
			printf("%.*s\n", (int)r->len, r->str);
		else
			printf("(none: fallback)\n");
		freeReplyObject(r);
		return 0;
	}
	if (argc == 4 && strcmp(argv[0], "route") == 0 && strcmp(argv[1], "set") == 0)
		return route_set(rc, cfg, argv[2], argv[3]);
	if (argc == 3 && strcmp(argv[0], "route") == 0 && strcmp(argv[1], "del") == 0) {
		r = ctl_cmd(rc, "DEL", p, "route:", argv[2], NULL);
		if (r == NULL)
			return 1;
		freeReplyObject(r);
		return ctl_publish(rc, p, "route", argv[2], &n) < 0 ? 1 : 0;
	}
	if (argc == 3 && strcmp(argv[0], "move") == 0) {
		if (route_set(rc, cfg, argv[1], argv[2]) != 0)
			return 1;
		if (ctl_publish(rc, p, "kick", argv[1], &n) < 0)
			return 1;
		printf("moved %s to %s; kick received by %lld subscriber(s)\n", argv[1], argv[2],
		       n);
		return 0;
	}
	if (argc == 2 && strcmp(argv[0], "kick") == 0) {
		if (ctl_publish(rc, p, "kick", argv[1], &n) < 0)
			return 1;
		printf("kick %s: received by %lld subscriber(s)\n", argv[1], n);
		return 0;
	}
	if (argc >= 2 && strcmp(argv[0], "backend") == 0)
		return backend_cmd(rc, cfg, argc, argv);
	if (argc == 3 && strcmp(argv[0], "user") == 0 &&
	    (strcmp(argv[1], "add") == 0 || strcmp(argv[1], "passwd") == 0))
		return user_set(rc, cfg, argv[2], strcmp(argv[1], "add") == 0);
	usage(stderr);
	return 2;
}

/* ---- who: sessions per instance, from each one's stats port ------------- */

#define WHO_MAX_INSTANCES 64
#define WHO_MAX_ANSWER    (32 * 1024 * 1024) /* the server caps its own at ~8 MiB */
#define WHO_TIMEOUT       10                 /* seconds to connect, and per read or write */
#define WHO_MAX_DEPTH     8

struct who_row {
	const char *inst; /* the HOST:PORT asked */
	char id[32];
	char *user; /* NULL before login */
	char client[80];
	char backend[80];
	char state[40];
	bool in_idle;
	double since, idle;
};

struct who_rows {
	struct who_row *v;
	size_t n, cap;
};

/* A JSON reader for what GET /sessions sends: bounded by end and by
 * WHO_MAX_DEPTH, every length checked against what is left. */
struct jr {
	const char *p, *end;
	int depth;
};

static void jr_ws(struct jr *j)
{
	while (j->p < j->end && (*j->p == ' ' || *j->p == '\t' || *j->p == '\n' || *j->p == '\r'))
		j->p++;
}

/* Consume ch (after white space): 0, or -1 when something else is next. */
static int jr_eat(struct jr *j, char ch)
{
	jr_ws(j);
	if (j->p >= j->end || *j->p != ch)
		return -1;
	j->p++;
	return 0;
}

static int jr_lit(struct jr *j, const char *lit)
{
	size_t n = strlen(lit);

	jr_ws(j);
	if ((size_t)(j->end - j->p) < n || memcmp(j->p, lit, n) != 0)
		return -1;
	j->p += n;
	return 0;
}

static int hex4(const char *p, unsigned *v_r)
{
	unsigned v = 0;

	for (int i = 0; i < 4; i++) {
		char c = p[i];

		v <<= 4;
		if (c >= '0' && c <= '9')
			v |= (unsigned)(c - '0');
		else if (c >= 'a' && c <= 'f')
			v |= (unsigned)(c - 'a' + 10);
		else if (c >= 'A' && c <= 'F')
			v |= (unsigned)(c - 'A' + 10);
		else
			return -1;
	}
	*v_r = v;
	return 0;
}

/* Append code point cp as UTF-8 to out[*n..cap-1) when it fits whole. */
static void put_utf8(char *out, size_t cap, size_t *n, unsigned cp)
{
	char b[4];
	size_t k;

	if (cp < 0x80) {
		b[0] = (char)cp;
		k = 1;
	} else if (cp < 0x800) {
		b[0] = (char)(0xc0 | cp >> 6);
		b[1] = (char)(0x80 | (cp & 0x3f));
		k = 2;
	} else if (cp < 0x10000) {
		b[0] = (char)(0xe0 | cp >> 12);
		b[1] = (char)(0x80 | (cp >> 6 & 0x3f));
		b[2] = (char)(0x80 | (cp & 0x3f));
		k = 3;
	} else {
		b[0] = (char)(0xf0 | cp >> 18);
		b[1] = (char)(0x80 | (cp >> 12 & 0x3f));
		b[2] = (char)(0x80 | (cp >> 6 & 0x3f));
		b[3] = (char)(0x80 | (cp & 0x3f));
		k = 4;
	}
	if (out != NULL && *n + k < cap) {
		memcpy(out + *n, b, k);
		*n += k;
	}
}

/* A string into out (NUL-terminated, cut to cap-1 bytes at a character
 * boundary; out NULL: skipped). 0, or -1 when it is not a JSON string. */
static int jr_string(struct jr *j, char *out, size_t cap)
{
	size_t n = 0;

	if (jr_eat(j, '"') < 0)
		return -1;
	while (j->p < j->end && *j->p != '"') {
		unsigned char c = (unsigned char)*j->p++;
		unsigned cp;

		if (c < 0x20)
			return -1;
		if (c != '\\') {
			if (out != NULL && n + 1 < cap)
				out[n++] = (char)c;
			continue;
		}
		if (j->p >= j->end)
			return -1;
		c = (unsigned char)*j->p++;
		switch (c) {
		case '"':
		case '\\':
		case '/':
			cp = c;
			break;
		case 'b':
			cp = '\b';
			break;
		case 'f':
			cp = '\f';
			break;
		case 'n':
			cp = '\n';
			break;
		case 'r':
			cp = '\r';
			break;
		case 't':
			cp = '\t';
			break;
		case 'u':
			if (j->end - j->p < 4 || hex4(j->p, &cp) < 0)
				return -1;
			j->p += 4;
			if (cp >= 0xd800 && cp <= 0xdbff) { /* a surrogate pair */
				unsigned lo;

				if (j->end - j->p < 6 || j->p[0] != '\\' || j->p[1] != 'u' ||
				    hex4(j->p + 2, &lo) < 0 || lo < 0xdc00 || lo > 0xdfff)
					return -1;
				j->p += 6;
				cp = 0x10000 + ((cp - 0xd800) << 10) + (lo - 0xdc00);
			} else if (cp >= 0xdc00 && cp <= 0xdfff) {
				return -1;
			}
			break;
		default:
			return -1;
		}
		put_utf8(out, cap, &n, cp);
	}
	if (j->p >= j->end)
		return -1;
	j->p++;
	if (out != NULL && cap > 0) {
		/* Cut at a character boundary (only our own copies were cut). */
		while (n > 0 && n + 1 >= cap && ((unsigned char)out[n - 1] & 0xc0) == 0x80)
			n--;
		out[n] = '\0';
	}
	return 0;
}

static int jr_number(struct jr *j, double *v_r)
{
	char buf[64], *e;
	size_t n = 0;

	jr_ws(j);
	while (j->p + n < j->end && n < sizeof(buf) - 1 && strchr("+-0123456789.eE", j->p[n]))
		n++;
	if (n == 0 || n == sizeof(buf) - 1)
		return -1;
	memcpy(buf, j->p, n);
	buf[n] = '\0';
	*v_r = strtod(buf, &e);
	if (e != buf + n)
		return -1;
	j->p += n;
	return 0;
}

/* Skip any value. */
static int jr_skip(struct jr *j)
{
	double d;
	char open;
	int rc = -1;

	jr_ws(j);
	if (j->p >= j->end)
		return -1;
	open = *j->p;
	if (open == '"')
		return jr_string(j, NULL, 0);
	if (open != '{' && open != '[') {
		if (jr_lit(j, "true") == 0 || jr_lit(j, "false") == 0 || jr_lit(j, "null") == 0)
			return 0;
		return jr_number(j, &d);
	}
	if (++j->depth > WHO_MAX_DEPTH)
		return -1;
	j->p++;
	if (jr_eat(j, open == '{' ? '}' : ']') == 0) {
		rc = 0;
		goto out;
	}
	do {
		if (open == '{' && (jr_string(j, NULL, 0) < 0 || jr_eat(j, ':') < 0))
			goto out;
		if (jr_skip(j) < 0)
			goto out;
	} while (jr_eat(j, ',') == 0);
	rc = jr_eat(j, open == '{' ? '}' : ']');
out:
	j->depth--;
	return rc;
}

/* A string or null (*out = ""; *is_null_r). */
static int jr_string_or_null(struct jr *j, char *out, size_t cap, bool *is_null_r)
{
	*is_null_r = jr_lit(j, "null") == 0;
	if (*is_null_r) {
		out[0] = '\0';
		return 0;
	}
	return jr_string(j, out, cap);
}

static int jr_bool(struct jr *j, bool *v_r)
{
	if (jr_lit(j, "true") == 0) {
		*v_r = true;
		return 0;
	}
	*v_r = false;
	return jr_lit(j, "false");
}

/* One element of "sessions" into r. */
static int who_parse_row(struct jr *j, struct who_row *r)
{
	char key[32], user[1024];
	bool is_null, has_user = false;

	memset(r, 0, sizeof(*r));
	if (jr_eat(j, '{') < 0)
		return -1;
	if (jr_eat(j, '}') == 0)
		return 0;
	do {
		int rc;

		if (jr_string(j, key, sizeof(key)) < 0 || jr_eat(j, ':') < 0)
			return -1;
		if (strcmp(key, "id") == 0)
			rc = jr_string(j, r->id, sizeof(r->id));
		else if (strcmp(key, "client") == 0)
			rc = jr_string(j, r->client, sizeof(r->client));
		else if (strcmp(key, "state") == 0)
			rc = jr_string(j, r->state, sizeof(r->state));
		else if (strcmp(key, "backend") == 0)
			rc = jr_string_or_null(j, r->backend, sizeof(r->backend), &is_null);
		else if (strcmp(key, "user") == 0) {
			rc = jr_string_or_null(j, user, sizeof(user), &is_null);
			has_user = rc == 0 && !is_null;
		} else if (strcmp(key, "in_idle") == 0)
			rc = jr_bool(j, &r->in_idle);
		else if (strcmp(key, "since") == 0)
			rc = jr_number(j, &r->since);
		else if (strcmp(key, "idle") == 0)
			rc = jr_number(j, &r->idle);
		else
			rc = jr_skip(j);
		if (rc < 0)
			return -1;
	} while (jr_eat(j, ',') == 0);
	if (jr_eat(j, '}') < 0)
		return -1;
	if (has_user && (r->user = strdup(user)) == NULL)
		return -1;
	return 0;
}

static int rows_push(struct who_rows *rows, const struct who_row *r)
{
	if (rows->n == rows->cap) {
		size_t ncap = rows->cap ? rows->cap * 2 : 64;
		struct who_row *v = realloc(rows->v, ncap * sizeof(*v));

		if (v == NULL)
			return -1;
		rows->v = v;
		rows->cap = ncap;
	}
	rows->v[rows->n++] = *r;
	return 0;
}

/*
 * The /sessions document body[0..len) of instance inst: its rows onto
 * rows, the workers that did not answer into unanswered (a printable list,
 * "" when all did), truncated. 0, or -1 when it is not such a document.
 */
static int who_parse(const char *inst, const char *body, size_t len, struct who_rows *rows,
                     char *unanswered, size_t ucap, bool *truncated_r)
{
	struct jr j = {body, body + len, 0};
	char key[32];

	unanswered[0] = '\0';
	*truncated_r = false;
	if (jr_eat(&j, '{') < 0)
		return -1;
	do {
		if (jr_string(&j, key, sizeof(key)) < 0 || jr_eat(&j, ':') < 0)
			return -1;
		if (strcmp(key, "sessions") == 0) {
			if (jr_eat(&j, '[') < 0)
				return -1;
			if (jr_eat(&j, ']') == 0)
				continue;
			do {
				struct who_row r;

				if (who_parse_row(&j, &r) < 0)
					return -1;
				r.inst = inst;
				if (rows_push(rows, &r) < 0) {
					free(r.user);
					return -1;
				}
			} while (jr_eat(&j, ',') == 0);
			if (jr_eat(&j, ']') < 0)
				return -1;
		} else if (strcmp(key, "truncated") == 0) {
			if (jr_bool(&j, truncated_r) < 0)
				return -1;
		} else if (strcmp(key, "instance") == 0) {
			char ikey[32];

			if (jr_eat(&j, '{') < 0)
				return -1;
			if (jr_eat(&j, '}') == 0)
				continue;
			do {
				if (jr_string(&j, ikey, sizeof(ikey)) < 0 || jr_eat(&j, ':') < 0)
					return -1;
				if (strcmp(ikey, "unanswered") != 0) {
					if (jr_skip(&j) < 0)
						return -1;
					continue;
				}
				if (jr_eat(&j, '[') < 0)
					return -1;
				if (jr_eat(&j, ']') == 0)
					continue;
				do {
					double w;
					size_t n = strlen(unanswered);

					if (jr_number(&j, &w) < 0)
						return -1;
					snprintf(unanswered + n, ucap - n, "%s%.0f", n ? "," : "",
					         w);
				} while (jr_eat(&j, ',') == 0);
				if (jr_eat(&j, ']') < 0)
					return -1;
			} while (jr_eat(&j, ',') == 0);
			if (jr_eat(&j, '}') < 0)
				return -1;
		} else if (jr_skip(&j) < 0) {
			return -1;
		}
	} while (jr_eat(&j, ',') == 0);
	if (jr_eat(&j, '}') < 0)
		return -1;
	jr_ws(&j);
	return j.p == j.end ? 0 : -1;
}

/* user, percent-encoded but for RFC 3986's unreserved characters. */
static void pct_encode(const char *user, char *out, size_t cap)
{
	size_t n = 0;

	for (const unsigned char *p = (const unsigned char *)user; *p != '\0' && n + 4 < cap; p++) {
		if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
		    (*p >= '0' && *p <= '9') || strchr("-._~", *p) != NULL)
			out[n++] = (char)*p;
		else
			n += (size_t)snprintf(out + n, cap - n, "%%%02X", *p);
	}
	out[n] = '\0';
}

/*
 * GET path from the stats port at a (blocking, WHO_TIMEOUT per step) into
 * *body_r (malloc'd, NUL-terminated) and *len_r. 0, or -1 with why in err.
 */
static int who_fetch(const struct cfg_addr *a, const char *path, char **body_r, size_t *len_r,
                     char *err, size_t errlen)
{
	struct timeval tv = {WHO_TIMEOUT, 0};
	char req[1024];
	char *buf = NULL, *hdr_end;
	size_t len = 0, cap = 0;
	int fd, n, rc = -1, status;

	fd = socket(a->ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0 ||
	    connect(fd, (const struct sockaddr *)&a->ss, a->len) < 0) {
		snprintf(err, errlen, "cannot connect: %s", strerror(errno));
		goto out;
	}
	n = snprintf(req, sizeof(req),
	             "GET %s HTTP/1.0\r\nHost: imapmux\r\nConnection: close\r\n\r\n", path);
	if (n < 0 || (size_t)n >= sizeof(req) || send(fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
		snprintf(err, errlen, "cannot send the request: %s", strerror(errno));
		goto out;
	}
	for (;;) {
		ssize_t got;

		if (cap - len < 4096) {
			char *p;

			if (cap >= WHO_MAX_ANSWER) {
				snprintf(err, errlen, "answer longer than %d bytes",
				         WHO_MAX_ANSWER);
				goto out;
			}
			p = realloc(buf, cap ? cap * 2 : 65536);
			if (p == NULL) {
				snprintf(err, errlen, "out of memory");
				goto out;
			}
			buf = p;
			cap = cap ? cap * 2 : 65536;
		}
		got = recv(fd, buf + len, cap - len - 1, 0);
		if (got < 0 && errno == EINTR)
			continue;
		if (got < 0) {
			snprintf(err, errlen, "%s",
			         errno == EAGAIN ? "no answer in time" : strerror(errno));
			goto out;
		}
		if (got == 0)
			break;
		len += (size_t)got;
	}
	buf[len] = '\0';
	if (len < 12 || memcmp(buf, "HTTP/1.", 7) != 0 ||
	    (hdr_end = strstr(buf, "\r\n\r\n")) == NULL) {
		snprintf(err, errlen, "not an HTTP answer");
		goto out;
	}
	status = atoi(buf + 9);
	if (status != 200) {
		const char *b = hdr_end + 4;
		int bl = (int)strcspn(b, "\r\n");

		snprintf(err, errlen, "HTTP %d: %.*s", status, bl > 200 ? 200 : bl, b);
		goto out;
	}
	*len_r = len - (size_t)(hdr_end + 4 - buf);
	memmove(buf, hdr_end + 4, *len_r + 1);
	*body_r = buf;
	buf = NULL;
	rc = 0;
out:
	free(buf);
	if (fd >= 0)
		close(fd);
	return rc;
}

/* Width of s on a terminal, counting UTF-8 characters. */
static size_t disp_width(const char *s)
{
	size_t w = 0;

	for (; *s != '\0'; s++)
		w += ((unsigned char)*s & 0xc0) != 0x80;
	return w;
}

/* s with control bytes shown as '?', padded to width w (0: no padding). */
static void put_cell(const char *s, size_t w, bool last)
{
	for (const char *p = s; *p != '\0'; p++)
		putchar((unsigned char)*p < 0x20 || *p == 0x7f ? '?' : *p);
	if (last) {
		putchar('\n');
		return;
	}
	for (size_t i = disp_width(s); i < w + 2; i++)
		putchar(' ');
}

#define WHO_COLS 8

static void who_print(const struct who_rows *rows)
{
	static const char *const head[WHO_COLS] = {"INSTANCE", "SESSION", "USER",  "CLIENT",
	                                           "BACKEND",  "STATE",   "SINCE", "IDLE"};
	size_t w[WHO_COLS];
	char cells[WHO_COLS][64];

	for (int k = 0; k < WHO_COLS; k++)
		w[k] = strlen(head[k]);
	for (int pass = 0; pass < 2; pass++) {
		if (pass == 1) {
			for (int k = 0; k < WHO_COLS; k++)
				put_cell(head[k], w[k], k == WHO_COLS - 1);
		}
		for (size_t i = 0; i < rows->n; i++) {
			const struct who_row *r = &rows->v[i];
			const char *cell[WHO_COLS];
			time_t since = (time_t)r->since;
			struct tm tm;

			snprintf(cells[5], sizeof(cells[5]), "%s%s", r->state,
			         r->in_idle ? "+idle" : "");
			if (localtime_r(&since, &tm) == NULL ||
			    strftime(cells[6], sizeof(cells[6]), "%Y-%m-%dT%H:%M:%S", &tm) == 0)
				snprintf(cells[6], sizeof(cells[6]), "-");
			snprintf(cells[7], sizeof(cells[7]), "%.0fs", r->idle);
			cell[0] = r->inst;
			cell[1] = r->id;
			cell[2] = r->user != NULL ? r->user : "-";
			cell[3] = r->client;
			cell[4] = r->backend[0] ? r->backend : "-";
			cell[5] = cells[5];
			cell[6] = cells[6];
			cell[7] = cells[7];
			for (int k = 0; k < WHO_COLS; k++) {
				if (pass == 0 && disp_width(cell[k]) > w[k])
					w[k] = disp_width(cell[k]);
				if (pass == 1)
					put_cell(cell[k], w[k], k == WHO_COLS - 1);
			}
		}
	}
}

/*
 * who [USER]: ask each instance (stats[0..nstats), else the stats_listen of
 * the configuration conf) for its sessions and print them in one table.
 * Exit 0; 1 when an instance could not be asked or not all its workers
 * answered (the others still printed, each failure on stderr); 2 usage.
 */
static int ctl_who(const char *conf, const char *const *stats, int nstats, int argc, char **argv)
{
	struct cfg_addr addrs[WHO_MAX_INSTANCES];
	const char *names[WHO_MAX_INSTANCES];
	struct who_rows rows = {NULL, 0, 0};
	struct cfg *cfg = NULL;
	char path[1024] = "/sessions", err[512];
	int n = 0, failed = 0, rv = 0;

	if (argc > 1) {
		usage(stderr);
		return 2;
	}
	if (argc == 1) {
		char enc[IDENT_USER_MAX * 3 + 1];

		if (argv[0][0] == '\0' || strlen(argv[0]) > IDENT_USER_MAX) {
			fprintf(stderr, "imapmuxctl: a user name has 1 to %d bytes\n",
			        IDENT_USER_MAX);
			return 2;
		}
		pct_encode(argv[0], enc, sizeof(enc));
		snprintf(path, sizeof(path), "/sessions?user=%s", enc);
	}
	if (nstats == 0) {
		if (cfg_load(conf, &cfg, err, sizeof(err)) < 0) {
			fprintf(stderr, "imapmuxctl: %s\n", err);
			return 1;
		}
		if (!cfg->has_stats) {
			fprintf(stderr,
			        "imapmuxctl: %s sets no stats_listen (or give --stats HOST:PORT)\n",
			        conf);
			cfg_destroy(&cfg);
			return 1;
		}
		addrs[0] = cfg->stats_listen;
		names[0] = addrs[0].text;
		n = 1;
	}
	for (int i = 0; i < nstats; i++) {
		if (cfg_parse_addr(stats[i], false, &addrs[n]) < 0) {
			fprintf(stderr, "imapmuxctl: bad --stats address '%s'\n", stats[i]);
			return 2;
		}
		names[n++] = stats[i];
	}
	for (int i = 0; i < n; i++) {
		char *body = NULL, unanswered[256];
		size_t len = 0, before = rows.n;
		bool truncated;

		if (who_fetch(&addrs[i], path, &body, &len, err, sizeof(err)) < 0) {
			fprintf(stderr, "imapmuxctl: %s: %s\n", names[i], err);
			failed++;
			continue;
		}
		if (who_parse(names[i], body, len, &rows, unanswered, sizeof(unanswered),
		              &truncated) < 0) {
			fprintf(stderr, "imapmuxctl: %s: the answer is not a /sessions document\n",
			        names[i]);
			for (size_t k = before; k < rows.n; k++)
				free(rows.v[k].user);
			rows.n = before;
			failed++;
		} else {
			if (unanswered[0] != '\0') {
				fprintf(
				    stderr,
				    "imapmuxctl: %s: worker(s) %s did not answer in time: their "
				    "sessions are missing\n",
				    names[i], unanswered);
				rv = 1;
			}
			if (truncated)
				fprintf(
				    stderr,
				    "imapmuxctl: %s: more sessions than one answer holds: the list "
				    "is cut\n",
				    names[i]);
		}
		free(body);
	}
	who_print(&rows);
	printf("%zu session(s) on %d instance(s)", rows.n, n - failed);
	if (failed > 0)
		printf("; %d instance(s) could not be asked", failed);
	printf("\n");
	for (size_t k = 0; k < rows.n; k++)
		free(rows.v[k].user);
	free(rows.v);
	cfg_destroy(&cfg);
	return failed > 0 ? 1 : rv;
}

int main(int argc, char **argv)
{
	const char *conf = DEFAULT_CONFIG, *redis = NULL;
	const char *stats[WHO_MAX_INSTANCES];
	int nstats = 0;
	struct cfg *cfg = NULL;
	redisContext *rc;
	char err[512];
	int i = 1, rv;

	for (; i < argc && argv[i][0] == '-'; i++) {
		if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
			usage(stdout);
			return 0;
		} else if (strcmp(argv[i], "-c") == 0 && i + 1 < argc) {
			conf = argv[++i];
		} else if (strcmp(argv[i], "--redis") == 0 && i + 1 < argc) {
			redis = argv[++i];
		} else if (strcmp(argv[i], "--stats") == 0 && i + 1 < argc &&
		           nstats < WHO_MAX_INSTANCES) {
			stats[nstats++] = argv[++i];
		} else {
			usage(stderr);
			return 2;
		}
	}
	if (i >= argc) {
		usage(stderr);
		return 2;
	}
	if (strcmp(argv[i], "who") == 0) /* the stats ports, not Redis */
		return ctl_who(conf, stats, nstats, argc - i - 1, argv + i + 1);
	if (cfg_load(conf, &cfg, err, sizeof(err)) < 0) {
		fprintf(stderr, "imapmuxctl: %s\n", err);
		return 1;
	}
	if (!cfg->has_redis && redis == NULL) {
		fprintf(stderr, "imapmuxctl: %s has no [redis] section\n", conf);
		cfg_destroy(&cfg);
		return 1;
	}
	rc = ctl_connect(cfg, redis);
	if (rc == NULL) {
		cfg_destroy(&cfg);
		return 1;
	}
	rv = run(rc, cfg, argc - i, argv + i);
	redisFree(rc);
	cfg_destroy(&cfg);
	return rv;
}
