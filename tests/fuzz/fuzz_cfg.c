/*
 * fuzz_cfg — common/cfg.c's reader on arbitrary proxy.conf texts.
 *
 * cfg_load() takes a path, so the input is written to a memfd and loaded
 * through /proc/self/fd/N: no file on disk, nothing left behind. The fuzz
 * build of cfg.c (FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION) resolves only
 * numeric addresses and takes every cert/key/ca path as readable, so no
 * input causes a DNS query or touches a file it names.
 *
 * Checked: a failure leaves *cfg_r NULL and one "path:line: reason" or
 * "path: reason" message that fits the buffer; a success satisfies what
 * cfg.h promises (a listener and a backend at least, unique names, cert
 * and key for TLS listeners, tls_name set, the fallback backend exists,
 * pool_min_idle <= pool_max, master credentials paired, addresses of a
 * known family). Leaks and bad accesses are the sanitizers' business.
 */
#include <stdbool.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "cfg.h"
#include "fuzz.h"

#define DURATION_MAX (365.0 * 24 * 3600)

static int memfd = -1;
static char path[64];

static void check_addr(const struct cfg_addr *a)
{
	FUZZ_CHECK(a->len > 0 && a->len <= sizeof(a->ss), "address length");
	FUZZ_CHECK(a->ss.ss_family == AF_INET || a->ss.ss_family == AF_INET6 ||
	               a->ss.ss_family == AF_UNIX,
	           "address family");
	FUZZ_CHECK(memchr(a->text, '\0', sizeof(a->text)) != NULL, "address text terminated");
}

static void check_duration(double d)
{
	FUZZ_CHECK(d >= 0 && d <= DURATION_MAX, "duration within a year");
}

static void check_cfg(const struct cfg *c)
{
	FUZZ_CHECK(c->nlistens > 0 && c->nbackends > 0, "a listener and a backend");
	for (size_t i = 0; i < c->nlistens; i++) {
		const struct cfg_listen *l = &c->listens[i];

		check_addr(&l->addr);
		FUZZ_CHECK(memchr(l->name, '\0', sizeof(l->name)) != NULL, "name terminated");
		FUZZ_CHECK(l->tls == CFG_TLS_NONE || (l->cert != NULL && l->key != NULL),
		           "a TLS listener has cert and key");
		for (size_t j = 0; j < i; j++)
			FUZZ_CHECK(strcmp(c->listens[j].name, l->name) != 0,
			           "unique listener names");
	}
	for (size_t i = 0; i < c->nbackends; i++) {
		const struct cfg_backend *b = &c->backends[i];

		check_addr(&b->addr);
		FUZZ_CHECK(memchr(b->name, '\0', sizeof(b->name)) != NULL, "name terminated");
		FUZZ_CHECK(cfg_backend_find(c, b->name) == b, "backends found by name");
		FUZZ_CHECK(b->tls_name != NULL, "tls_name is set once loaded");
		FUZZ_CHECK((b->master_user == NULL) == (b->master_password == NULL),
		           "master credentials come together");
		FUZZ_CHECK(c->auth != CFG_AUTH_REDIS || b->master_user != NULL,
		           "auth = redis needs master credentials");
		FUZZ_CHECK(b->pool_min_idle <= b->pool_max, "pool_min_idle <= pool_max");
		FUZZ_CHECK(b->weight >= 1 && b->weight <= 1000, "weight 1..1000");
		FUZZ_CHECK(b->check_rise >= 1 && b->check_fall >= 1, "check_rise/fall");
		FUZZ_CHECK(b->master_separator[0] != '\0' &&
		               memchr(b->master_separator, '\0', CFG_SEPARATOR_MAX) != NULL,
		           "master_separator 1..7 bytes");
		check_duration(b->reuse_ttl);
		check_duration(b->pool_wait);
		check_duration(b->pool_idle_ttl);
		check_duration(b->connect_timeout);
		check_duration(b->command_timeout);
		check_duration(b->check_interval);
		check_duration(b->check_timeout);
	}
	FUZZ_CHECK(c->fallback != CFG_FALLBACK_BACKEND ||
	               cfg_backend_find(c, c->fallback_backend) != NULL,
	           "the fallback backend exists");
	FUZZ_CHECK(!(c->lookup == CFG_LOOKUP_STATIC && c->fallback == CFG_FALLBACK_DENY),
	           "no static deny");
	FUZZ_CHECK(c->has_redis || (c->lookup != CFG_LOOKUP_REDIS && c->auth != CFG_AUTH_REDIS),
	           "redis lookup or auth needs [redis]");
	if (c->has_redis)
		check_addr(&c->redis_addr);
	if (c->has_stats)
		check_addr(&c->stats_listen);
	check_duration(c->park_idle_after);
	check_duration(c->preauth_timeout);
	check_duration(c->idle_timeout);
	check_duration(c->shutdown_timeout);
	check_duration(c->auth_fail_window);
	check_duration(c->cache_ttl);
	check_duration(c->redis_timeout);
	FUZZ_CHECK(c->auth_fail_delay >= 0 && c->auth_fail_delay <= 60, "auth_fail_delay");
	FUZZ_CHECK(c->workers <= 64, "workers");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct cfg *c = (struct cfg *)1;
	char err[256];
	size_t plen;

	if (memfd < 0) {
		memfd = memfd_create("fuzz_cfg", MFD_CLOEXEC);
		FUZZ_CHECK(memfd >= 0, "memfd_create");
		snprintf(path, sizeof(path), "/proc/self/fd/%d", memfd);
	}
	FUZZ_CHECK(ftruncate(memfd, 0) == 0, "ftruncate");
	FUZZ_CHECK(size == 0 || pwrite(memfd, data, size, 0) == (ssize_t)size, "pwrite");

	memset(err, 'x', sizeof(err));
	if (cfg_load(path, &c, err, sizeof(err)) == 0) {
		FUZZ_CHECK(c != NULL, "0 gives a cfg");
		FUZZ_CHECK(err[0] == '\0', "no message on success");
		check_cfg(c);
		cfg_destroy(&c);
		FUZZ_CHECK(c == NULL, "cfg_destroy clears the pointer");
		return 0;
	}
	FUZZ_CHECK(c == NULL, "-1 gives no cfg");
	FUZZ_CHECK(memchr(err, '\0', sizeof(err)) != NULL, "the message fits its buffer");
	plen = strlen(path);
	FUZZ_CHECK(strncmp(err, path, plen) == 0 && err[plen] == ':', "path:line: reason");
	FUZZ_CHECK(strlen(err) > plen + 2, "a reason is given");
	return 0;
}
