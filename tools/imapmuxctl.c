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
 *
 * Exit: 0 ok, 1 failure (message on stderr), 2 usage. Reads [redis] address
 * (or sentinels and master_name: the master is asked of the sentinels, in
 * turn, and checked with ROLE), prefix, username, password and db from the
 * imapmux configuration (common/cfg.c); the password never appears in argv
 * or output.
 */
#include <arpa/inet.h>
#include <crypt.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>
#include <termios.h>
#include <unistd.h>

#include "cfg.h"

#define DEFAULT_CONFIG "/etc/imapmux/imapmux.conf"

static void usage(FILE *f)
{
	fprintf(f, "usage: imapmuxctl [-c CONFIG] [--redis HOST:PORT] COMMAND\n"
	           "  route get USER | route set USER BACKEND | route del USER\n"
	           "  move USER BACKEND\n"
	           "  kick USER\n"
	           "  user add USER | user passwd USER   (password from the terminal or stdin)\n"
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
	if (argc == 3 && strcmp(argv[0], "user") == 0 &&
	    (strcmp(argv[1], "add") == 0 || strcmp(argv[1], "passwd") == 0))
		return user_set(rc, cfg, argv[2], strcmp(argv[1], "add") == 0);
	usage(stderr);
	return 2;
}

int main(int argc, char **argv)
{
	const char *conf = DEFAULT_CONFIG, *redis = NULL;
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
		} else {
			usage(stderr);
			return 2;
		}
	}
	if (i >= argc) {
		usage(stderr);
		return 2;
	}
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
