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
 *
 * Exit: 0 ok, 1 failure (message on stderr), 2 usage. Reads [redis] address,
 * prefix and password from the imapmux configuration (common/cfg.c); the
 * password never appears in argv or output.
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
	           "  backend list | backend NAME drain | backend NAME undrain\n"
	           "CONFIG defaults to " DEFAULT_CONFIG ".\n");
}

/* Connect to cfg's Redis (or override HOST:PORT), AUTH and SELECT. NULL with
 * a message on stderr. */
static redisContext *ctl_connect(const struct cfg *cfg, const char *override)
{
	struct cfg_addr a;
	const struct sockaddr *sa;
	redisContext *rc;
	char host[INET6_ADDRSTRLEN];
	struct timeval tv = {5, 0};

	if (override != NULL) {
		if (cfg_parse_addr(override, false, &a) < 0) {
			fprintf(stderr, "imapmuxctl: bad --redis address '%s'\n", override);
			return NULL;
		}
	} else {
		a = cfg->redis_addr;
	}
	sa = (const struct sockaddr *)&a.ss;
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
		fprintf(stderr, "imapmuxctl: redis %s: %s\n", a.text,
		        rc ? rc->errstr : "out of memory");
		redisFree(rc);
		return NULL;
	}
	if (cfg->redis_password != NULL) {
		const char *argv[2] = {"AUTH", cfg->redis_password};
		size_t len[2] = {4, strlen(cfg->redis_password)};
		redisReply *r = redisCommandArgv(rc, 2, argv, len);
		int bad = r == NULL || r->type == REDIS_REPLY_ERROR;
		if (bad)
			fprintf(stderr, "imapmuxctl: redis AUTH failed\n");
		freeReplyObject(r);
		if (bad) {
			redisFree(rc);
			return NULL;
		}
	}
	if (cfg->redis_db != 0) {
		redisReply *r = redisCommand(rc, "SELECT %u", cfg->redis_db);
		int bad = r == NULL || r->type == REDIS_REPLY_ERROR;
		if (bad)
			fprintf(stderr, "imapmuxctl: redis SELECT failed\n");
		freeReplyObject(r);
		if (bad) {
			redisFree(rc);
			return NULL;
		}
	}
	return rc;
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
