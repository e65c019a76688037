/*
 * main — command line, configuration, listening sockets, worker threads,
 * and signals.
 *
 *   main thread: load cfg -> runtime -> sockets -> N workers -> sigwait loop
 *     SIGHUP  reload cfg and certificates; sessions keep their old runtime
 *     SIGTERM drain: workers stop accepting, BYE the quiet sessions, exit
 *             when all are gone or after shutdown_timeout
 *     SIGINT  stop at once
 *
 * Listening sockets are made here, one per worker and listener, with
 * SO_REUSEPORT, so that a bind error stops the start-up with a clear
 * message and the kernel spreads connections over the workers; before
 * them, the stats socket, and (unless reuseport = yes) a probe without
 * SO_REUSEPORT that finds another process on the address.
 */
#include <errno.h>
#include <grp.h>
#include <netinet/in.h>
#include <openssl/ssl.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "admit.h"
#include "cfg.h"
#include "cryptpool.h"
#include "health.h"
#include "log.h"
#include "runtime.h"
#include "sdnotify.h"
#include "sessions_api.h"
#include "stats.h"
#include "worker.h"
#include "zone.h"

#ifndef IMAPMUX_VERSION
#define IMAPMUX_VERSION "0.1.0"
#endif

static void usage(void)
{
	fprintf(stderr, "usage: imapmux -c FILE [-t]\n"
	                "       imapmux -V\n"
	                "  -c FILE  configuration (proxy.conf)\n"
	                "  -t       check the configuration and exit (0 ok, 1 error)\n"
	                "  -V       print the version\n");
}

/* Each client session may hold two descriptors (client and backend), plus
 * pools and listeners: warn when max_connections cannot be reached. */
static void check_nofile(const struct cfg *cfg)
{
	struct rlimit rl;
	rlim_t want = (rlim_t)cfg->max_connections * 2 + 256;

	if (cfg->max_connections == 0) {
		log_info("max_connections = auto: %u (from the open-files limit)",
		         admit_max_connections(0));
		return;
	}
	if (getrlimit(RLIMIT_NOFILE, &rl) < 0)
		return;
	if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want)
		log_warn(
		    "open-files limit %llu is below what max_connections = %u needs "
		    "(about %llu): raise it (ulimit -n, LimitNOFILE=) or lower max_connections",
		    (unsigned long long)rl.rlim_cur, cfg->max_connections,
		    (unsigned long long)want);
}

/* The open-files soft limit up to the hard one: every client socket is a
 * file (max_connections = auto follows the limit). Before anything reads
 * the limit. */
static void raise_nofile(void)
{
	struct rlimit rl;
	rlim_t was;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur >= rl.rlim_max)
		return;
	was = rl.rlim_cur;
	/* "unlimited" is not a number of files: the kernel's usual nr_open */
	rl.rlim_cur = rl.rlim_max == RLIM_INFINITY ? 1048576 : rl.rlim_max;
	if (setrlimit(RLIMIT_NOFILE, &rl) < 0) {
		log_warn("cannot raise the open-files limit from %llu to %llu: %s",
		         (unsigned long long)was, (unsigned long long)rl.rlim_max, strerror(errno));
		return;
	}
	log_info("open-files limit raised from %llu to %llu (the hard limit)",
	         (unsigned long long)was, (unsigned long long)rl.rlim_cur);
}

/* The uid and gid of [imapmux] user and group: 0, or -1 with the reason
 * in err. */
static int who_to_be(const struct cfg *cfg, uid_t *uid, gid_t *gid, char *err, size_t errlen)
{
	const struct passwd *pw = getpwnam(cfg->user);

	if (pw == NULL) {
		snprintf(err, errlen, "user '%s': no such user", cfg->user);
		return -1;
	}
	*uid = pw->pw_uid;
	*gid = pw->pw_gid;
	if (cfg->group != NULL) {
		const struct group *gr = getgrnam(cfg->group);
		if (gr == NULL) {
			snprintf(err, errlen, "group '%s': no such group", cfg->group);
			return -1;
		}
		*gid = gr->gr_gid;
	}
	return 0;
}

/* Become [imapmux] user (and group), once the sockets are bound and the
 * keys read, before any thread starts; for good: no way back to root. */
static int drop_privileges(const struct cfg *cfg)
{
	char err[160];
	uid_t uid;
	gid_t gid;

	if (cfg->user == NULL)
		return 0;
	if (who_to_be(cfg, &uid, &gid, err, sizeof(err)) < 0) {
		log_error("%s", err);
		return -1;
	}
	if (setgroups(1, &gid) < 0 || setgid(gid) < 0 || setuid(uid) < 0) {
		log_error("cannot become user %s (uid %u, gid %u): %s", cfg->user, (unsigned)uid,
		          (unsigned)gid, strerror(errno));
		return -1;
	}
	if (uid != 0 && (setuid(0) == 0 || seteuid(0) == 0)) {
		log_error("user %s: root could be taken back; refusing to run", cfg->user);
		return -1;
	}
	log_info("running as user %s (uid %u, gid %u)", cfg->user, (unsigned)uid, (unsigned)gid);
	return 0;
}

static struct runtime *load(const char *path, char *err, size_t errlen)
{
	struct cfg *cfg = NULL;

	if (cfg_load(path, &cfg, err, errlen) < 0)
		return NULL;
	return runtime_new(cfg, err, errlen);
}

static int listen_socket(const struct cfg_listen *l)
{
	int one = 1;
	int fd = socket(l->addr.ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);

	if (fd < 0)
		goto fail;
	(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) < 0)
		goto fail;
	if (l->addr.ss.ss_family == AF_INET6)
		(void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, (const struct sockaddr *)&l->addr.ss, l->addr.len) < 0)
		goto fail;
	if (listen(fd, 1024) < 0)
		goto fail;
	return fd;
fail:
	log_error("cannot listen on %s ([listen %s]): %s", l->addr.text, l->name, strerror(errno));
	if (fd >= 0)
		close(fd);
	return -1;
}

/*
 * Without reuseport = yes, a listener's address must be free: the worker
 * sockets share it with SO_REUSEPORT among themselves, which would let a
 * second imapmux (or anything else with SO_REUSEPORT) share it silently. A
 * socket without the option binds only where nobody listens. 0 or -1.
 */
static int listen_probe(const struct cfg_listen *l)
{
	int one = 1;
	int fd = socket(l->addr.ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
	int r = -1;

	if (fd < 0) {
		log_error("cannot listen on %s ([listen %s]): %s", l->addr.text, l->name,
		          strerror(errno));
		return -1;
	}
	(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (l->addr.ss.ss_family == AF_INET6)
		(void)setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, (const struct sockaddr *)&l->addr.ss, l->addr.len) == 0)
		r = 0;
	else if (errno == EADDRINUSE)
		log_error("cannot listen on %s ([listen %s]): address in use, by another process "
		          "(another imapmux? set reuseport = yes in [imapmux] on every instance "
		          "meant to share it)",
		          l->addr.text, l->name);
	else
		log_error("cannot listen on %s ([listen %s]): %s", l->addr.text, l->name,
		          strerror(errno));
	close(fd);
	return r;
}

/* A reload may change anything but the listening addresses. */
static bool same_listeners(const struct cfg *a, const struct cfg *b)
{
	if (a->nlistens != b->nlistens)
		return false;
	for (size_t i = 0; i < a->nlistens; i++) {
		if (strcmp(a->listens[i].name, b->listens[i].name) != 0 ||
		    a->listens[i].addr.len != b->listens[i].addr.len ||
		    memcmp(&a->listens[i].addr.ss, &b->listens[i].addr.ss,
		           a->listens[i].addr.len) != 0)
			return false;
	}
	return true;
}

static unsigned worker_count(const struct cfg *cfg)
{
	long n = cfg->workers;

	if (n == 0)
		n = sysconf(_SC_NPROCESSORS_ONLN);
	if (n < 1)
		n = 1;
	if (n > 64)
		n = 64;
	return (unsigned)n;
}

/* -t: say once per backend why its sessions will not park (they stay
 * attached and work as before; parking needs a way to wake them). */
static void park_warnings(const struct cfg *cfg, const char *path)
{
	if (cfg->park_idle_after <= 0)
		return;
	for (size_t i = 0; i < cfg->nbackends; i++) {
		const struct cfg_backend *b = &cfg->backends[i];

		if (b->master_user == NULL)
			fprintf(stderr,
			        "%s:%d: warning: sessions on backend %s will not park: no "
			        "master_user/master_password to log in again on wake-up\n",
			        path, b->line, b->name);
	}
}

int main(int argc, char **argv)
{
	const char *path = NULL;
	bool test_only = false;
	char err[1024];
	struct runtime *rt;
	struct worker *workers = NULL;
	unsigned nworkers, started = 0;
	sigset_t set;
	int opt, status = 1;

	zone_enable(); /* before anything is allocated (zone.h) */
	while ((opt = getopt(argc, argv, "c:tVh")) != -1) {
		switch (opt) {
		case 'c':
			path = optarg;
			break;
		case 't':
			test_only = true;
			break;
		case 'V':
			printf("imapmux %s (%s)\n", IMAPMUX_VERSION,
			       OpenSSL_version(OPENSSL_VERSION));
			return 0;
		case 'h':
			usage();
			return 0;
		default:
			usage();
			return 1;
		}
	}
	if (path == NULL || optind != argc) {
		usage();
		return 1;
	}

	rt = load(path, err, sizeof(err));
	if (rt == NULL) {
		fprintf(stderr, "%s\n", err);
		return 1;
	}
	if (test_only) {
		uid_t uid;
		gid_t gid;
		if (rt->cfg->user != NULL && who_to_be(rt->cfg, &uid, &gid, err, sizeof(err)) < 0) {
			fprintf(stderr, "%s: %s\n", path, err);
			runtime_unref(&rt);
			return 1;
		}
		park_warnings(rt->cfg, path);
		fprintf(stderr, "%s: configuration ok\n", path);
		runtime_unref(&rt);
		return 0;
	}
	log_set_level(rt->cfg->log_level);
	log_configure(rt->cfg->log_format, rt->cfg->log_to, rt->cfg->log_socket);
	sdnotify_init();
	raise_nofile();
	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&set);
	sigaddset(&set, SIGHUP);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	/* Workers inherit the mask: only this thread takes the signals. */
	pthread_sigmask(SIG_BLOCK, &set, NULL);

	nworkers = worker_count(rt->cfg);
	workers = calloc(nworkers, sizeof(*workers));
	if (workers == NULL)
		goto out;
	/* Every socket bound before any client can be taken: a port in use
	 * (the stats port included) stops the start-up with nobody dropped. */
	if (rt->cfg->has_stats && stats_bind(&rt->cfg->stats_listen) < 0)
		goto out;
	for (size_t j = 0; j < rt->cfg->nlistens && !rt->cfg->reuseport; j++)
		if (listen_probe(&rt->cfg->listens[j]) < 0)
			goto out;
	for (unsigned i = 0; i < nworkers; i++) {
		int fds[64];
		size_t n = rt->cfg->nlistens;

		if (n > 64) {
			log_error("too many listeners (at most 64)");
			goto out;
		}
		for (size_t j = 0; j < n; j++) {
			fds[j] = listen_socket(&rt->cfg->listens[j]);
			if (fds[j] < 0) {
				while (j-- > 0)
					close(fds[j]);
				goto out;
			}
		}
		if (worker_init(&workers[i], (int)i, rt, fds, n) < 0) {
			log_error("cannot set up worker %u", i);
			goto out;
		}
		workers[i].nworkers = nworkers;
		workers[i].all = workers;
	}
	if (drop_privileges(rt->cfg) < 0)
		goto out;
	if (cryptpool_start(rt->cfg->auth_threads) < 0) {
		log_error("cannot start the password-check threads");
		goto out;
	}
	for (unsigned i = 0; i < nworkers; i++) {
		if (worker_start(&workers[i]) < 0) {
			log_error("cannot start worker %u", i);
			goto stop;
		}
		started++;
	}
	if (health_start(rt) < 0)
		goto stop;
	if (rt->cfg->has_stats) {
		/* stats knows counters, not workers; it copies these pointers. */
		const struct stats **counters = calloc(started, sizeof(*counters));
		int rc = -1;

		if (counters == NULL) {
			log_error("cannot start the stats server: out of memory");
		} else {
			for (unsigned i = 0; i < started; i++)
				counters[i] = &workers[i].stats;
			/* GET /sessions asks the workers themselves (by message). */
			sessions_api_set_workers(worker_sessions_post, workers, started);
			rc = stats_start(&rt->cfg->stats_listen, counters, started);
		}
		free(counters);
		if (rc < 0)
			goto stop;
	}
	for (size_t j = 0; j < rt->cfg->nlistens; j++)
		log_info("listening on %s ([listen %s], tls = %s)", rt->cfg->listens[j].addr.text,
		         rt->cfg->listens[j].name,
		         rt->cfg->listens[j].tls == CFG_TLS_IMPLICIT   ? "implicit"
		         : rt->cfg->listens[j].tls == CFG_TLS_STARTTLS ? "starttls"
		                                                       : "none");
	log_info("imapmux %s started with %u workers", IMAPMUX_VERSION, nworkers);
	check_nofile(rt->cfg);
	sdnotify("READY=1\nSTATUS=serving with %u workers\nMAINPID=%ld", nworkers, (long)getpid());

	for (;;) {
		int sig = sigwaitinfo(&set, NULL);

		if (sig < 0) {
			if (errno == EINTR)
				continue;
			break;
		}
		if (sig == SIGHUP) {
			struct timespec mono;
			clock_gettime(CLOCK_MONOTONIC, &mono);
			sdnotify("RELOADING=1\nMONOTONIC_USEC=%llu\nSTATUS=reloading",
			         (unsigned long long)mono.tv_sec * 1000000ull +
			             (unsigned long long)mono.tv_nsec / 1000);
			struct runtime *nrt = load(path, err, sizeof(err));
			if (nrt == NULL) {
				log_error("reload failed, keeping the running configuration: %s",
				          err);
				sdnotify("READY=1\nSTATUS=reload failed, running the previous "
				         "configuration: %s",
				         err);
				continue;
			}
			if (!same_listeners(rt->cfg, nrt->cfg)) {
				log_error("reload refused: listener changes need a restart");
				sdnotify("READY=1\nSTATUS=reload refused: listener changes need a "
				         "restart");
				runtime_unref(&nrt);
				continue;
			}
			health_reload(nrt);
			log_set_level(nrt->cfg->log_level);
			log_configure(nrt->cfg->log_format, nrt->cfg->log_to, nrt->cfg->log_socket);
			for (unsigned i = 0; i < started; i++)
				worker_post_reload(&workers[i], nrt);
			runtime_unref(&rt);
			rt = nrt;
			log_info("configuration reloaded from %s", path);
			sdnotify("READY=1\nSTATUS=serving with %u workers (reloaded)", nworkers);
			continue;
		}
		if (sig == SIGTERM) {
			log_info("SIGTERM: draining (at most %.0fs)", rt->cfg->shutdown_timeout);
			stats_set_draining();
			sdnotify("STOPPING=1\nSTATUS=draining");
			for (unsigned i = 0; i < started; i++)
				worker_post_drain(&workers[i]);
			/* Wait for the workers, but still obey SIGINT. */
			struct timespec ts = {.tv_sec = 0, .tv_nsec = 100 * 1000 * 1000};
			double waited = 0;
			for (;;) {
				bool alive = false;
				for (unsigned i = 0; i < started; i++) {
					if (workers[i].thread == 0)
						continue;
					if (pthread_tryjoin_np(workers[i].thread, NULL) == EBUSY)
						alive = true;
					else
						workers[i].thread = 0;
				}
				if (!alive)
					break;
				sig = sigtimedwait(&set, NULL, &ts);
				waited += 0.1;
				if (sig == SIGINT || waited > rt->cfg->shutdown_timeout + 10)
					break;
			}
			break;
		}
		if (sig == SIGINT) {
			sdnotify("STOPPING=1\nSTATUS=stopping");
			break;
		}
	}
	status = 0;
stop:
	health_stop();
	stats_stop();
	for (unsigned i = 0; i < started; i++)
		worker_post_stop(&workers[i]);
	for (unsigned i = 0; i < started; i++) {
		if (workers[i].thread != 0)
			worker_join(&workers[i]);
	}
	for (unsigned i = 0; i < nworkers; i++)
		worker_destroy(&workers[i]);
	cryptpool_stop();
	admit_shutdown();
	log_info("imapmux stopped");
out:
	free(workers);
	runtime_unref(&rt);
	return status;
}
