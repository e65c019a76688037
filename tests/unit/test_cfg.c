/*
 * test_cfg — the proxy.conf reader: each value parser alone, every key of
 * a full file, the defaults, comments and quoting, every error with its
 * exact "file:line: reason", the cross-checks, and the shipped proxy.conf.
 *
 * Files live in a private directory made by the group setup. The cert,
 * key and CA files there are empty: cfg only checks that they can be read,
 * parsing PEM is the TLS code's business. Config texts may say @D@ for
 * that directory; it is substituted before writing, in expected messages
 * too.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "cfg.h"

static char dir[64];

/* Two listeners' worth of minimum, appended to texts that need a valid rest. */
#define TAIL                                                                                       \
	"[listen imap]\n"                                                                          \
	"address = 127.0.0.1:9143\n"                                                               \
	"[backend a]\n"                                                                            \
	"address = 127.0.0.1:11143\n"

#define N63 "012345678901234567890123456789012345678901234567890123456789012"
#define N64 N63 "3"

/* ---- helpers ---------------------------------------------------------- */

/* text with every @D@ replaced by the test directory; caller frees. */
static char *subst(const char *text)
{
	size_t n = 0, dl = strlen(dir);
	const char *s;
	char *out, *w;

	for (s = text; *s != '\0'; s++)
		n += strncmp(s, "@D@", 3) == 0 ? dl : 1;
	out = malloc(n + 1);
	assert_non_null(out);
	for (s = text, w = out; *s != '\0';) {
		if (strncmp(s, "@D@", 3) == 0) {
			memcpy(w, dir, dl);
			w += dl;
			s += 3;
		} else {
			*w++ = *s++;
		}
	}
	*w = '\0';
	return out;
}

static void write_file(const char *path, const char *data, size_t n)
{
	FILE *f = fopen(path, "w");

	assert_non_null(f);
	assert_int_equal(fwrite(data, 1, n, f), n);
	assert_int_equal(fclose(f), 0);
}

/* Write n bytes to a fresh file in dir; its name goes to path (256 bytes). */
static void write_conf(const char *data, size_t n, char *path)
{
	int fd;

	snprintf(path, 256, "%s/conf.XXXXXX", dir);
	fd = mkstemp(path);
	assert_true(fd >= 0);
	assert_int_equal(write(fd, data, n), (ssize_t)n);
	assert_int_equal(close(fd), 0);
}

/* Load text (after @D@ substitution), which must be valid. */
static struct cfg *load_ok(const char *text)
{
	char path[256], err[512];
	struct cfg *c = NULL;
	char *t = subst(text);
	int r;

	write_conf(t, strlen(t), path);
	r = cfg_load(path, &c, err, sizeof(err));
	unlink(path);
	free(t);
	if (r != 0)
		fail_msg("unexpected error: %s", err);
	assert_non_null(c);
	return c;
}

/* Load n bytes, which must fail with "FILE:line: reason" ("FILE: reason" for line 0). */
static void expect_err_n(const char *text, size_t n, int line, const char *reason)
{
	char path[256], err[512], want[1024];
	struct cfg *c = (struct cfg *)&c; /* must come back NULL */
	char *r = subst(reason);

	write_conf(text, n, path);
	assert_int_equal(cfg_load(path, &c, err, sizeof(err)), -1);
	assert_null(c);
	if (line > 0)
		snprintf(want, sizeof(want), "%s:%d: %s", path, line, r);
	else
		snprintf(want, sizeof(want), "%s: %s", path, r);
	assert_string_equal(err, want);
	unlink(path);
	free(r);
}

static void expect_err(const char *text, int line, const char *reason)
{
	char *t = subst(text);

	expect_err_n(t, strlen(t), line, reason);
	free(t);
}

static unsigned port_of(const struct cfg_addr *a)
{
	if (a->ss.ss_family == AF_INET)
		return ntohs(((const struct sockaddr_in *)&a->ss)->sin_port);
	if (a->ss.ss_family == AF_INET6)
		return ntohs(((const struct sockaddr_in6 *)&a->ss)->sin6_port);
	return 0;
}

/* Numeric host of an inet address, into a static buffer. */
static const char *host_of(const struct cfg_addr *a)
{
	static char buf[INET6_ADDRSTRLEN];
	const void *p;

	if (a->ss.ss_family == AF_INET)
		p = &((const struct sockaddr_in *)&a->ss)->sin_addr;
	else
		p = &((const struct sockaddr_in6 *)&a->ss)->sin6_addr;
	assert_non_null(inet_ntop(a->ss.ss_family, p, buf, sizeof(buf)));
	return buf;
}

static void assert_inet(const struct cfg_addr *a, int family, const char *host, unsigned port)
{
	assert_int_equal(a->ss.ss_family, family);
	assert_int_equal(a->len, family == AF_INET ? sizeof(struct sockaddr_in)
	                                           : sizeof(struct sockaddr_in6));
	assert_string_equal(host_of(a), host);
	assert_int_equal(port_of(a), port);
}

/* ---- fixtures --------------------------------------------------------- */

static int group_setup(void **state)
{
	char path[128];
	static const char *const files[] = {"cert.pem", "key.pem", "ca.pem"};

	(void)state;
	snprintf(dir, sizeof(dir), "/tmp/test_cfg.XXXXXX");
	if (mkdtemp(dir) == NULL)
		return -1;
	for (size_t i = 0; i < 3; i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
		FILE *f = fopen(path, "w");
		if (f == NULL)
			return -1;
		fputs("not a real PEM: cfg only checks that it is readable\n", f);
		fclose(f);
	}
	return 0;
}

static int group_teardown(void **state)
{
	char path[128];
	static const char *const files[] = {"cert.pem", "key.pem", "ca.pem", "proxy.conf"};

	(void)state;
	for (size_t i = 0; i < 4; i++) {
		snprintf(path, sizeof(path), "%s/%s", dir, files[i]);
		unlink(path);
	}
	return rmdir(dir);
}

/* ---- value parsers ---------------------------------------------------- */

static void test_duration(void **state)
{
	static const struct {
		const char *s;
		double v;
	} good[] = {
	    {"0", 0},       {"30", 30},     {"1.5", 1.5},        {"0.1", 0.1},  {"1.5s", 1.5},
	    {"500ms", 0.5}, {"1ms", 0.001}, {"2m", 120},         {"2.5m", 150}, {"1h", 3600},
	    {"0.25h", 900}, {"0s", 0},      {"8760h", 31536000}, {"007", 7},
	};
	static const char *const bad[] = {
	    "",     " ",   "x",    "-1",    "+1",   "1.",    ".5",       "1e3",
	    "1 s",  " 1",  "1 ",   "1d",    "1sec", "1S",    "s",        "ms",
	    "inf",  "nan", "0x10", "1.5.2", "1,5",  "8761h", "31536001", "1234567890123456",
	    "1h1m",
	};
	double d;

	(void)state;
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		d = -1;
		if (cfg_parse_duration(good[i].s, &d) != 0)
			fail_msg("'%s' refused", good[i].s);
		if (d != good[i].v)
			fail_msg("'%s' gave %g, not %g", good[i].s, d, good[i].v);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		d = -1;
		if (cfg_parse_duration(bad[i], &d) != -1)
			fail_msg("'%s' accepted", bad[i]);
		assert_true(d == -1); /* untouched on failure */
	}
}

static void test_bool(void **state)
{
	static const char *const yes[] = {"yes", "true", "on", "1", "YES", "True", "On"};
	static const char *const no[] = {"no", "false", "off", "0", "NO", "False", "OFF"};
	static const char *const bad[] = {"", "y", "n", "2", "yes ", "enable", "01", "nope"};
	bool b;

	(void)state;
	for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
		b = false;
		assert_int_equal(cfg_parse_bool(yes[i], &b), 0);
		assert_true(b);
	}
	for (size_t i = 0; i < sizeof(no) / sizeof(no[0]); i++) {
		b = true;
		assert_int_equal(cfg_parse_bool(no[i], &b), 0);
		assert_false(b);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (cfg_parse_bool(bad[i], &b) != -1)
			fail_msg("'%s' accepted", bad[i]);
	}
}

static void test_addr_ipv4(void **state)
{
	struct cfg_addr a;

	(void)state;
	assert_int_equal(cfg_parse_addr("127.0.0.1:993", false, &a), 0);
	assert_inet(&a, AF_INET, "127.0.0.1", 993);
	assert_string_equal(a.text, "127.0.0.1:993");
	assert_int_equal(cfg_parse_addr("0.0.0.0:1", false, &a), 0);
	assert_inet(&a, AF_INET, "0.0.0.0", 1);
	assert_int_equal(cfg_parse_addr("10.1.2.3:65535", true, &a), 0);
	assert_inet(&a, AF_INET, "10.1.2.3", 65535);
}

static void test_addr_ipv6(void **state)
{
	struct cfg_addr a;

	(void)state;
	assert_int_equal(cfg_parse_addr("[::1]:143", false, &a), 0);
	assert_inet(&a, AF_INET6, "::1", 143);
	assert_string_equal(a.text, "[::1]:143");
	assert_int_equal(cfg_parse_addr("[::]:993", false, &a), 0);
	assert_inet(&a, AF_INET6, "::", 993);
	assert_int_equal(cfg_parse_addr("[2001:db8::7]:1", false, &a), 0);
	assert_inet(&a, AF_INET6, "2001:db8::7", 1);
}

static void test_addr_unix(void **state)
{
	struct cfg_addr a;
	const struct sockaddr_un *sun = (const struct sockaddr_un *)&a.ss;
	char longpath[200];

	(void)state;
	assert_int_equal(cfg_parse_addr("unix:/run/redis/redis.sock", true, &a), 0);
	assert_int_equal(a.ss.ss_family, AF_UNIX);
	assert_string_equal(sun->sun_path, "/run/redis/redis.sock");
	assert_int_equal(a.len, offsetof(struct sockaddr_un, sun_path) +
	                            strlen("/run/redis/redis.sock") + 1);
	assert_string_equal(a.text, "unix:/run/redis/redis.sock");

	/* Not where the caller says unix sockets make no sense. */
	assert_int_equal(cfg_parse_addr("unix:/run/redis/redis.sock", false, &a), -1);
	assert_int_equal(cfg_parse_addr("unix:", true, &a), -1);
	/* sun_path is 108 bytes with its NUL. */
	memset(longpath, 'p', sizeof(longpath));
	memcpy(longpath, "unix:/", 6);
	longpath[5 + 107] = '\0';
	assert_int_equal(cfg_parse_addr(longpath, true, &a), 0);
	longpath[5 + 107] = 'p';
	longpath[5 + 108] = '\0';
	assert_int_equal(cfg_parse_addr(longpath, true, &a), -1);
}

static void test_addr_bad(void **state)
{
	static const char *const bad[] = {
	    "",
	    "127.0.0.1",
	    "127.0.0.1:",
	    "127.0.0.1:0",
	    "127.0.0.1:65536",
	    "127.0.0.1:abc",
	    "127.0.0.1:-1",
	    "127.0.0.1:+1",
	    "127.0.0.1:99999999999",
	    "127.0.0.1: 1",
	    ":143",
	    "::1:143",
	    "[::1]",
	    "[::1:143",
	    "[::1]143",
	    "[::1]:",
	    "[1.2.3.4]:1",
	    "[]:1",
	    "[nothost]:1",
	    "256.1.1.1:1",
	    "1.2.3:1",
	    "1.2.3.4.5:1",
	    "unix:/x",
	};
	struct cfg_addr a, before;
	char big[400];

	(void)state;
	memset(&a, 0xa5, sizeof(a));
	before = a;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		if (cfg_parse_addr(bad[i], false, &a) != -1)
			fail_msg("'%s' accepted", bad[i]);
		/* A failed parse must not clobber the caller's default. */
		assert_memory_equal(&a, &before, sizeof(a));
	}
	/* text[] holds 299 bytes. */
	memset(big, 'h', sizeof(big));
	big[sizeof(big) - 1] = '\0';
	assert_int_equal(cfg_parse_addr(big, true, &a), -1);
}

static void test_addr_name(void **state)
{
	struct cfg_addr a;

	(void)state;
	/* From /etc/hosts, so no network needed; either family will do. */
	assert_int_equal(cfg_parse_addr("localhost:143", false, &a), 0);
	assert_true(a.ss.ss_family == AF_INET || a.ss.ss_family == AF_INET6);
	assert_int_equal(port_of(&a), 143);
	assert_string_equal(a.text, "localhost:143");
	/* RFC 6761: .invalid never resolves. */
	assert_int_equal(cfg_parse_addr("no-such-host.invalid:143", false, &a), -1);
}

/* ---- whole files ------------------------------------------------------ */

static void test_defaults(void **state)
{
	struct cfg *c = load_ok(TAIL);
	const struct cfg_listen *l;
	const struct cfg_backend *b;

	(void)state;
	/* The path as given, kept for messages at reload. */
	assert_int_equal(strncmp(c->path, dir, strlen(dir)), 0);
	assert_int_equal(strncmp(c->path + strlen(dir), "/conf.", 6), 0);
	assert_int_equal(c->workers, 2);
	assert_int_equal(c->log_level, LOG_LVL_INFO);
	assert_false(c->has_stats);
	assert_int_equal(c->auth, CFG_AUTH_BACKEND);
	assert_true(c->park_idle_after == 30);
	assert_true(c->preauth_timeout == 60);
	assert_true(c->idle_timeout == 1800);
	assert_true(c->shutdown_timeout == 30);
	assert_int_equal(c->auth_fail_limit, 10);
	assert_true(c->auth_fail_window == 300);
	assert_true(c->auth_fail_delay == 1);
	assert_int_equal(c->auth_threads, 2);
	assert_int_equal(c->username_case, CFG_UCASE_FOLD);
	assert_int_equal(c->ipv6_prefix, 64);
	assert_false(c->has_redis);
	assert_inet(&c->redis_addr, AF_INET, "127.0.0.1", 6379);
	assert_string_equal(c->redis_prefix, "imapmux:");
	assert_null(c->redis_password);
	assert_null(c->redis_username);
	assert_int_equal(c->redis_sentinels.n, 0);
	assert_null(c->redis_master_name);
	assert_int_equal(c->redis_db, 0);
	assert_true(c->redis_timeout == 2);
	assert_int_equal(c->lookup, CFG_LOOKUP_STATIC);
	assert_int_equal(c->fallback, CFG_FALLBACK_HASH);
	assert_true(c->cache_ttl == 60);

	assert_int_equal(c->nlistens, 1);
	l = &c->listens[0];
	assert_string_equal(l->name, "imap");
	assert_inet(&l->addr, AF_INET, "127.0.0.1", 9143);
	assert_int_equal(l->tls, CFG_TLS_NONE);
	assert_null(l->cert);
	assert_null(l->key);
	assert_false(l->proxy_protocol);
	assert_false(l->allow_plaintext_auth);
	assert_int_equal(l->line, 1);

	assert_int_equal(c->nbackends, 1);
	b = &c->backends[0];
	assert_string_equal(b->name, "a");
	assert_inet(&b->addr, AF_INET, "127.0.0.1", 11143);
	assert_int_equal(b->tls, CFG_TLS_NONE);
	assert_null(b->ca);
	assert_string_equal(b->tls_name, "127.0.0.1"); /* the host of address */
	assert_null(b->master_user);
	assert_null(b->master_password);
	assert_int_equal(b->pool_min_idle, 0);
	assert_int_equal(b->pool_max, 5000);
	assert_int_equal(b->weight, 1);
	assert_true(b->connect_timeout == 10);
	assert_true(b->command_timeout == 30);
	assert_true(b->watch_refresh == 25 * 60);
	assert_true(b->forward_id);
	assert_string_equal(b->master_separator, "*");
	assert_true(b->check_interval == 5);
	assert_true(b->check_timeout == 3);
	assert_int_equal(b->check_rise, 2);
	assert_int_equal(b->check_fall, 3);
	assert_true(b->reuse_ttl == 300);
	assert_true(b->pool_wait == 10);
	assert_true(b->pool_idle_ttl == 60);
	assert_int_equal(b->username_case, CFG_UCASE_FOLD); /* [imapmux]'s default */
	assert_int_equal(b->line, 3);
	/* Unset everywhere: NULL, and the TLS code applies its defaults. */
	assert_null(c->tls_policy.ciphers);
	assert_null(c->tls_policy.ciphersuites);
	assert_null(c->tls_policy.curves);
	assert_int_equal(c->tls_policy.ciphers_line, 0);
	assert_null(l->tls_policy.ciphers);
	assert_null(l->tls_policy.ciphersuites);
	assert_null(l->tls_policy.curves);
	assert_null(b->tls_policy.ciphers);
	assert_null(b->tls_policy.ciphersuites);
	assert_null(b->tls_policy.curves);
	assert_int_equal(b->tls_policy.curves_line, 0);
	cfg_destroy(&c);
	assert_null(c);
}

/*
 * ciphers, ciphersuites and curves: a section's own value wins, an unset
 * one comes from [imapmux] even when [imapmux] is the last section, with
 * the line it was written on. cfg does not judge the lists (OpenSSL
 * syntax, checked by the TLS code); it refuses only empty and repeated keys.
 */
static void test_tls_policy_inherit(void **state)
{
	struct cfg *c = load_ok("[listen imaps]\n"
	                        "address = 127.0.0.1:9993\n"
	                        "ciphers = ECDHE-RSA-AES128-GCM-SHA256\n"
	                        "[backend a]\n"
	                        "address = 127.0.0.1:11143\n"
	                        "curves = P-256\n"
	                        "[backend b]\n"
	                        "address = 127.0.0.1:11144\n"
	                        "[imapmux]\n"
	                        "ciphers = ECDHE+AESGCM:@SECLEVEL=2\n"
	                        "curves = X25519:P-256\n");
	const struct cfg_listen *l = &c->listens[0];
	const struct cfg_backend *a = &c->backends[0], *b = &c->backends[1];

	(void)state;
	assert_string_equal(l->tls_policy.ciphers, "ECDHE-RSA-AES128-GCM-SHA256");
	assert_int_equal(l->tls_policy.ciphers_line, 3);
	assert_null(l->tls_policy.ciphersuites);
	assert_int_equal(l->tls_policy.ciphersuites_line, 0);
	assert_string_equal(l->tls_policy.curves, "X25519:P-256");
	assert_int_equal(l->tls_policy.curves_line, 11);

	assert_string_equal(a->tls_policy.ciphers, "ECDHE+AESGCM:@SECLEVEL=2");
	assert_int_equal(a->tls_policy.ciphers_line, 10);
	assert_string_equal(a->tls_policy.curves, "P-256");
	assert_int_equal(a->tls_policy.curves_line, 6);

	assert_string_equal(b->tls_policy.ciphers, "ECDHE+AESGCM:@SECLEVEL=2");
	assert_string_equal(b->tls_policy.curves, "X25519:P-256");
	assert_null(b->tls_policy.ciphersuites);
	/* Copies, not shared pointers: each is freed on its own. */
	assert_ptr_not_equal(a->tls_policy.ciphers, b->tls_policy.ciphers);
	assert_ptr_not_equal(a->tls_policy.ciphers, c->tls_policy.ciphers);
	cfg_destroy(&c);

	expect_err("[listen x]\naddress = 127.0.0.1:1\nciphers =\n" TAIL, 3,
	           "empty value for 'ciphers'");
	expect_err("[imapmux]\nciphersuites = \"\"\n" TAIL, 2, "empty value for 'ciphersuites'");
	expect_err("[backend z]\naddress = 127.0.0.1:1\ncurves = X25519\ncurves = P-256\n" TAIL, 4,
	           "duplicate key 'curves' in [backend z] (first at line 3)");
	expect_err("[routing]\nciphers = HIGH\n" TAIL, 2, "unknown key 'ciphers' in [routing]");
}

/* Every key, each set away from its default. */
static void test_every_key(void **state)
{
	struct cfg *c = load_ok("# every key\n"
	                        "[imapmux]\n"
	                        "workers = auto\n"
	                        "log_level = debug\n"
	                        "stats_listen = 127.0.0.1:9100\n"
	                        "auth = redis\n"
	                        "park_idle_after = 0\n"
	                        "preauth_timeout = 1.5s\n"
	                        "idle_timeout = 2m\n"
	                        "shutdown_timeout = 500ms\n"
	                        "auth_fail_limit = 0\n"
	                        "auth_fail_window = 1h\n"
	                        "auth_fail_delay = 250ms\n"
	                        "auth_threads = 64\n"
	                        "ciphers = ECDHE+AESGCM\n"
	                        "ciphersuites = TLS_AES_128_GCM_SHA256\n"
	                        "curves = X25519\n"
	                        "username_case = keep\n"
	                        "ipv6_prefix = 48\n"
	                        "\n"
	                        "[listen imaps]\n"
	                        "address = [::1]:9993\n"
	                        "tls = implicit\n"
	                        "cert = @D@/cert.pem\n"
	                        "key = @D@/key.pem\n"
	                        "proxy_protocol = yes\n"
	                        "allow_plaintext_auth = true\n"
	                        "ciphers = \"ECDHE+AESGCM, ECDHE+CHACHA20\"\n"
	                        "ciphersuites = TLS_CHACHA20_POLY1305_SHA256\n"
	                        "curves = P-384\n"
	                        "[listen imap]\n"
	                        "address = 127.0.0.1:9143\n"
	                        "tls = starttls\n"
	                        "cert = @D@/cert.pem\n"
	                        "key = @D@/key.pem\n"
	                        "[redis]\n"
	                        "address = unix:/run/redis/redis.sock\n"
	                        "prefix = mux:\n"
	                        "password = \"p\\\"w\\\\d # ;\"\n"
	                        "db = 3\n"
	                        "timeout = 750ms\n"
	                        "[routing]\n"
	                        "lookup = redis\n"
	                        "fallback = deny\n"
	                        "cache_ttl = 1h\n"
	                        "[backend b2]\n"
	                        "address = [::1]:11144\n"
	                        "tls = implicit\n"
	                        "ca = @D@/ca.pem\n"
	                        "tls_name = imap.example.com\n"
	                        "master_user = proxymaster\n"
	                        "master_password = se#cret;x\n"
	                        "pool_min_idle = 4\n"
	                        "pool_max = 4\n"
	                        "weight = 1000\n"
	                        "connect_timeout = 250ms\n"
	                        "command_timeout = 1m\n"
	                        "master_separator = %$!~\n"
	                        "check_interval = 0\n"
	                        "check_timeout = 10s\n"
	                        "check_rise = 100\n"
	                        "check_fall = 1\n"
	                        "reuse_ttl = 0\n"
	                        "pool_wait = 2.5s\n"
	                        "pool_idle_ttl = 2m\n"
	                        "ciphers = ECDHE-RSA-AES256-GCM-SHA384\n"
	                        "ciphersuites = TLS_AES_256_GCM_SHA384\n"
	                        "curves = P-256:P-384\n"
	                        "username_case = fold\n"
	                        "[backend a]\n"
	                        "address = 127.0.0.1:11143\n"
	                        "tls = starttls\n"
	                        "master_user = m\n"
	                        "master_password = \"two words\"\n"
	                        "master_separator = \"#\"\n"
	                        "check_interval = 500ms\n"
	                        "check_timeout = 0.25\n"
	                        "check_rise = 1\n"
	                        "check_fall = 100\n");
	const struct cfg_listen *l;
	const struct cfg_backend *b;
	char cert[128], key[128], ca[128];

	(void)state;
	snprintf(cert, sizeof(cert), "%s/cert.pem", dir);
	snprintf(key, sizeof(key), "%s/key.pem", dir);
	snprintf(ca, sizeof(ca), "%s/ca.pem", dir);

	assert_int_equal(c->workers, 0);
	assert_int_equal(c->log_level, LOG_LVL_DEBUG);
	assert_true(c->has_stats);
	assert_inet(&c->stats_listen, AF_INET, "127.0.0.1", 9100);
	assert_int_equal(c->auth, CFG_AUTH_REDIS);
	assert_true(c->park_idle_after == 0);
	assert_true(c->preauth_timeout == 1.5);
	assert_true(c->idle_timeout == 120);
	assert_true(c->shutdown_timeout == 0.5);
	assert_int_equal(c->auth_fail_limit, 0);
	assert_true(c->auth_fail_window == 3600);
	assert_true(c->auth_fail_delay == 0.25);
	assert_int_equal(c->auth_threads, 64);
	assert_string_equal(c->tls_policy.ciphers, "ECDHE+AESGCM");
	assert_string_equal(c->tls_policy.ciphersuites, "TLS_AES_128_GCM_SHA256");
	assert_string_equal(c->tls_policy.curves, "X25519");
	assert_int_equal(c->tls_policy.ciphers_line, 15);
	assert_int_equal(c->tls_policy.ciphersuites_line, 16);
	assert_int_equal(c->tls_policy.curves_line, 17);
	assert_int_equal(c->username_case, CFG_UCASE_KEEP);
	assert_int_equal(c->ipv6_prefix, 48);

	assert_int_equal(c->nlistens, 2);
	l = &c->listens[0];
	assert_string_equal(l->name, "imaps");
	assert_inet(&l->addr, AF_INET6, "::1", 9993);
	assert_int_equal(l->tls, CFG_TLS_IMPLICIT);
	assert_string_equal(l->cert, cert);
	assert_string_equal(l->key, key);
	assert_true(l->proxy_protocol);
	assert_true(l->allow_plaintext_auth);
	assert_int_equal(l->line, 21);
	assert_string_equal(l->tls_policy.ciphers, "ECDHE+AESGCM, ECDHE+CHACHA20");
	assert_string_equal(l->tls_policy.ciphersuites, "TLS_CHACHA20_POLY1305_SHA256");
	assert_string_equal(l->tls_policy.curves, "P-384");
	assert_int_equal(l->tls_policy.ciphers_line, 28);
	assert_int_equal(l->tls_policy.ciphersuites_line, 29);
	assert_int_equal(l->tls_policy.curves_line, 30);
	l = &c->listens[1];
	/* Sets none of its own: [imapmux]'s, with [imapmux]'s lines. */
	assert_string_equal(l->tls_policy.ciphers, "ECDHE+AESGCM");
	assert_int_equal(l->tls_policy.ciphers_line, 15);
	assert_string_equal(l->tls_policy.curves, "X25519");
	assert_int_equal(l->tls_policy.curves_line, 17);
	assert_string_equal(l->name, "imap");
	assert_int_equal(l->tls, CFG_TLS_STARTTLS);
	assert_false(l->proxy_protocol);
	assert_false(l->allow_plaintext_auth);

	assert_true(c->has_redis);
	assert_int_equal(c->redis_addr.ss.ss_family, AF_UNIX);
	assert_string_equal(((struct sockaddr_un *)&c->redis_addr.ss)->sun_path,
	                    "/run/redis/redis.sock");
	assert_string_equal(c->redis_prefix, "mux:");
	assert_string_equal(c->redis_password, "p\"w\\d # ;");
	assert_int_equal(c->redis_db, 3);
	assert_true(c->redis_timeout == 0.75);

	assert_int_equal(c->lookup, CFG_LOOKUP_REDIS);
	assert_int_equal(c->fallback, CFG_FALLBACK_DENY);
	assert_true(c->cache_ttl == 3600);

	assert_int_equal(c->nbackends, 2);
	b = &c->backends[0];
	assert_string_equal(b->name, "b2");
	assert_inet(&b->addr, AF_INET6, "::1", 11144);
	assert_int_equal(b->tls, CFG_TLS_IMPLICIT);
	assert_string_equal(b->ca, ca);
	assert_string_equal(b->tls_name, "imap.example.com");
	assert_string_equal(b->master_user, "proxymaster");
	assert_string_equal(b->master_password, "se#cret;x");
	assert_int_equal(b->pool_min_idle, 4);
	assert_int_equal(b->pool_max, 4);
	assert_int_equal(b->weight, 1000);
	assert_true(b->connect_timeout == 0.25);
	assert_true(b->command_timeout == 60);
	assert_string_equal(b->master_separator, "%$!~");
	assert_true(b->check_interval == 0);
	assert_true(b->check_timeout == 10);
	assert_int_equal(b->check_rise, 100);
	assert_int_equal(b->check_fall, 1);
	assert_true(b->reuse_ttl == 0);
	assert_true(b->pool_wait == 2.5);
	assert_true(b->pool_idle_ttl == 120);
	assert_string_equal(b->tls_policy.ciphers, "ECDHE-RSA-AES256-GCM-SHA384");
	assert_string_equal(b->tls_policy.ciphersuites, "TLS_AES_256_GCM_SHA384");
	assert_string_equal(b->tls_policy.curves, "P-256:P-384");
	assert_int_equal(b->username_case, CFG_UCASE_FOLD);
	b = &c->backends[1];
	assert_string_equal(b->tls_policy.ciphersuites, "TLS_AES_128_GCM_SHA256");
	assert_int_equal(b->tls_policy.ciphersuites_line, 16);
	assert_string_equal(b->name, "a");
	assert_int_equal(b->tls, CFG_TLS_STARTTLS);
	assert_null(b->ca);
	assert_string_equal(b->tls_name, "127.0.0.1");
	assert_string_equal(b->master_password, "two words");
	/* Quoted, so that '#' is the value and not a comment. */
	assert_string_equal(b->master_separator, "#");
	assert_true(b->check_interval == 0.5);
	assert_true(b->check_timeout == 0.25);
	assert_int_equal(b->check_rise, 1);
	assert_int_equal(b->check_fall, 100);
	assert_int_equal(b->username_case, CFG_UCASE_KEEP); /* [imapmux]'s */
	cfg_destroy(&c);
}

static void test_comments_and_quotes(void **state)
{
	struct cfg *c = load_ok("; semicolon comment\n"
	                        "   # indented comment\n"
	                        "\t\n"
	                        "[redis]   # comment after a header\n"
	                        "  prefix   =   imapmux:   \n"
	                        "password = a;b#c  ; trailing comment\n"
	                        "[routing]# right after ']'\n"
	                        "fallback = b\t# tab before the comment\n"
	                        "[listen imap]\r\n"
	                        "address = 127.0.0.1:9143\r\n"
	                        "[backend a]\n"
	                        "address=127.0.0.1:11143\n"
	                        "master_user = \"  spaced  \"   # kept inside quotes\n"
	                        "master_password = \"#not a comment;\"\n"
	                        "tls_name = \"\\\\server\\\\\"\n"
	                        "[backend b]\n"
	                        "address = 127.0.0.1:11144\n"
	                        "master_user = \"\\\"\\\"\"\n"
	                        "master_password = x\"y\n"
	                        "tls_name = a=b\n"
	                        "[ backend  v6 ]\n"
	                        "address = [::1]:11145\n");

	(void)state;
	assert_string_equal(c->redis_prefix, "imapmux:");
	assert_string_equal(c->redis_password, "a;b#c");
	assert_int_equal(c->fallback, CFG_FALLBACK_BACKEND);
	assert_string_equal(c->fallback_backend, "b");
	assert_inet(&c->listens[0].addr, AF_INET, "127.0.0.1", 9143);
	assert_inet(&c->backends[0].addr, AF_INET, "127.0.0.1", 11143);
	assert_string_equal(c->backends[0].master_user, "  spaced  ");
	assert_string_equal(c->backends[0].master_password, "#not a comment;");
	assert_string_equal(c->backends[0].tls_name, "\\server\\");
	assert_string_equal(c->backends[1].master_user, "\"\"");
	/* A quote inside an unquoted value is just a character. */
	assert_string_equal(c->backends[1].master_password, "x\"y");
	/* The first '=' splits key from value. */
	assert_string_equal(c->backends[1].tls_name, "a=b");
	/* Spaces inside the brackets are only separators. */
	assert_string_equal(c->backends[2].name, "v6");
	assert_string_equal(c->backends[2].tls_name, "::1");
	cfg_destroy(&c);

	/* An explicitly empty prefix is allowed: it means no prefix. */
	c = load_ok("[redis]\nprefix = \"\"\n" TAIL);
	assert_string_equal(c->redis_prefix, "");
	cfg_destroy(&c);
}

static void test_order_and_find(void **state)
{
	struct cfg *c = load_ok("[backend zeta]\naddress = 127.0.0.1:1\n"
	                        "[listen z]\naddress = 127.0.0.1:2\n"
	                        "[backend " N63 "]\naddress = 127.0.0.1:3\n"
	                        "[listen a.b-c_D]\naddress = 127.0.0.1:4\n"
	                        "[backend alpha]\naddress = localhost:5\n"
	                        "[listen m]\naddress = 127.0.0.1:6\n");

	(void)state;
	assert_int_equal(c->nbackends, 3);
	assert_string_equal(c->backends[0].name, "zeta");
	assert_string_equal(c->backends[1].name, N63);
	assert_string_equal(c->backends[2].name, "alpha");
	assert_string_equal(c->backends[2].tls_name, "localhost");
	assert_int_equal(c->nlistens, 3);
	assert_string_equal(c->listens[0].name, "z");
	assert_string_equal(c->listens[1].name, "a.b-c_D");
	assert_string_equal(c->listens[2].name, "m");
	assert_int_equal(port_of(&c->listens[2].addr), 6);

	assert_ptr_equal(cfg_backend_find(c, "zeta"), &c->backends[0]);
	assert_ptr_equal(cfg_backend_find(c, "alpha"), &c->backends[2]);
	assert_null(cfg_backend_find(c, "Alpha"));
	assert_null(cfg_backend_find(c, ""));
	cfg_destroy(&c);
}

/* Combinations the cross-checks must let through. */
static void test_cross_ok(void **state)
{
	struct cfg *c;

	(void)state;
	c = load_ok("[imapmux]\nauth = redis\n[redis]\n"
	            "[listen imap]\naddress = 127.0.0.1:9143\n"
	            "[backend a]\naddress = 127.0.0.1:1\nmaster_user = m\nmaster_password = p\n"
	            "[backend b]\naddress = 127.0.0.1:2\nmaster_user = m\nmaster_password = p\n");
	assert_int_equal(c->auth, CFG_AUTH_REDIS);
	assert_true(c->has_redis);
	cfg_destroy(&c);

	c = load_ok("[routing]\nlookup = redis\nfallback = deny\n[redis]\n" TAIL);
	assert_int_equal(c->fallback, CFG_FALLBACK_DENY);
	cfg_destroy(&c);

	/* The fallback may name a backend defined further down. */
	c = load_ok("[routing]\nlookup = static\nfallback = a\n" TAIL);
	assert_int_equal(c->fallback, CFG_FALLBACK_BACKEND);
	assert_string_equal(c->fallback_backend, "a");
	cfg_destroy(&c);

	c = load_ok("[routing]\nlookup = static\nfallback = HASH\n" TAIL);
	assert_int_equal(c->fallback, CFG_FALLBACK_HASH);
	cfg_destroy(&c);

	/* tls = none needs no cert; a cert given anyway must still be readable. */
	c = load_ok("[listen p]\naddress = 127.0.0.1:1\ntls = none\ncert = @D@/cert.pem\n" TAIL);
	assert_non_null(c->listens[0].cert);
	cfg_destroy(&c);

	c = load_ok("[backend z]\naddress = 127.0.0.1:1\npool_min_idle = 7\npool_max = 7\n" TAIL);
	assert_int_equal(c->backends[0].pool_min_idle, 7);
	cfg_destroy(&c);

	c = load_ok("[imapmux]\nworkers = 64\n" TAIL);
	assert_int_equal(c->workers, 64);
	cfg_destroy(&c);

	/* The new keys at the ends of their ranges. */
	c = load_ok("[imapmux]\nauth_fail_limit = 1000000\nauth_fail_window = 1ms\n"
	            "auth_fail_delay = 60s\nauth_threads = 1\n" TAIL);
	assert_int_equal(c->auth_fail_limit, 1000000);
	assert_true(c->auth_fail_window == 0.001);
	assert_true(c->auth_fail_delay == 60);
	assert_int_equal(c->auth_threads, 1);
	cfg_destroy(&c);

	c = load_ok("[imapmux]\nauth_fail_delay = 1m\n" TAIL);
	assert_true(c->auth_fail_delay == 60);
	cfg_destroy(&c);

	c = load_ok("[imapmux]\nauth_fail_delay = 0\n" TAIL);
	assert_true(c->auth_fail_delay == 0);
	cfg_destroy(&c);

	c = load_ok("[backend z]\naddress = 127.0.0.1:1\nmaster_separator = 1234567\n"
	            "check_interval = 1h\n" TAIL);
	assert_string_equal(c->backends[0].master_separator, "1234567");
	assert_true(c->backends[0].check_interval == 3600);
	/* Defaults hold per section: the next backend has its own. */
	assert_string_equal(c->backends[1].master_separator, "*");
	assert_true(c->backends[1].check_interval == 5);
	cfg_destroy(&c);
}

/* A backend's username_case after loading: never CFG_UCASE_INHERIT. */
static enum cfg_ucase ucase_of(const char *text, size_t backend)
{
	struct cfg *c = load_ok(text);
	enum cfg_ucase u;

	assert_true(backend < c->nbackends);
	u = c->backends[backend].username_case;
	cfg_destroy(&c);
	return u;
}

/*
 * The identity keys: username_case in [imapmux] and per backend, an unset
 * backend taking [imapmux]'s whether [imapmux] comes before or after it;
 * ipv6_prefix at the ends of 1..128; the [redis] prefix up to
 * CFG_REDIS_PREFIX_MAX bytes (quotes not counted) or empty. Refusals are
 * in err_cases.
 */
static void test_ident_keys(void **state)
{
	static const char backends[] = "[listen imap]\naddress = 127.0.0.1:9143\n"
	                               "[backend a]\naddress = 127.0.0.1:1\n"
	                               "[backend b]\naddress = 127.0.0.1:2\nusername_case = fold\n"
	                               "[backend c]\naddress = 127.0.0.1:3\nusername_case = keep\n";
	static const char *const imapmux[] = {
	    "",
	    "[imapmux]\nusername_case = fold\n",
	    "[imapmux]\nusername_case = keep\n",
	    "[imapmux]\nusername_case = KEEP\n",
	};
	static const enum cfg_ucase want_a[] = {CFG_UCASE_FOLD, CFG_UCASE_FOLD, CFG_UCASE_KEEP,
	                                        CFG_UCASE_KEEP};
	char text[1024];
	struct cfg *c;

	(void)state;
	for (size_t i = 0; i < sizeof(imapmux) / sizeof(imapmux[0]); i++) {
		for (int after = 0; after <= 1; after++) {
			snprintf(text, sizeof(text), "%s%s", after ? backends : imapmux[i],
			         after ? imapmux[i] : backends);
			c = load_ok(text);
			assert_int_equal(c->username_case, want_a[i]);
			/* a inherits; b and c keep their own against either [imapmux]. */
			assert_int_equal(c->backends[0].username_case, want_a[i]);
			assert_int_equal(c->backends[1].username_case, CFG_UCASE_FOLD);
			assert_int_equal(c->backends[2].username_case, CFG_UCASE_KEEP);
			cfg_destroy(&c);
		}
	}
	/* Several inheriting backends on both sides of [imapmux]. */
	assert_int_equal(ucase_of("[backend x]\naddress = 127.0.0.1:1\n"
	                          "[imapmux]\nusername_case = keep\n"
	                          "[backend y]\naddress = 127.0.0.1:2\n" TAIL,
	                          0),
	                 CFG_UCASE_KEEP);
	assert_int_equal(ucase_of("[backend x]\naddress = 127.0.0.1:1\n"
	                          "[imapmux]\nusername_case = keep\n"
	                          "[backend y]\naddress = 127.0.0.1:2\n" TAIL,
	                          2),
	                 CFG_UCASE_KEEP);
	assert_int_equal(ucase_of("[backend x]\naddress = 127.0.0.1:1\nusername_case = Fold\n"
	                          "[imapmux]\nusername_case = keep\n" TAIL,
	                          0),
	                 CFG_UCASE_FOLD);

	c = load_ok("[imapmux]\nipv6_prefix = 1\n" TAIL);
	assert_int_equal(c->ipv6_prefix, 1);
	cfg_destroy(&c);
	c = load_ok("[imapmux]\nipv6_prefix = 128\n" TAIL);
	assert_int_equal(c->ipv6_prefix, 128);
	cfg_destroy(&c);
	c = load_ok("[imapmux]\nipv6_prefix = 056\n" TAIL);
	assert_int_equal(c->ipv6_prefix, 56);
	cfg_destroy(&c);

	c = load_ok("[redis]\nprefix = " N64 "\n" TAIL);
	assert_int_equal(strlen(c->redis_prefix), CFG_REDIS_PREFIX_MAX);
	assert_string_equal(c->redis_prefix, N64);
	cfg_destroy(&c);
	/* The bound is on the value, not on its spelling in the file. */
	c = load_ok("[redis]\nprefix = \"" N63 "#\"\n" TAIL);
	assert_string_equal(c->redis_prefix, N63 "#");
	cfg_destroy(&c);
	c = load_ok("[redis]\nprefix = \"" N63 "\\\"\"\n" TAIL);
	assert_string_equal(c->redis_prefix, N63 "\"");
	cfg_destroy(&c);
	c = load_ok("[redis]\nprefix = \"\"\n" TAIL);
	assert_string_equal(c->redis_prefix, "");
	cfg_destroy(&c);
	c = load_ok("[redis]\nprefix =\n" TAIL);
	assert_string_equal(c->redis_prefix, "");
	cfg_destroy(&c);
}

/* [redis] with Sentinel: the list in order, each entry resolved; the ACL user. */
static void test_redis_sentinels(void **state)
{
	struct cfg *c;

	(void)state;
	c = load_ok("[redis]\n"
	            "sentinels = 127.0.0.1:26379,[::1]:26380 ,  127.0.0.2:26381\n"
	            "master_name = mymaster\n"
	            "username = imapmux\n"
	            "password = pw\n" TAIL);
	assert_int_equal(c->redis_sentinels.n, 3);
	assert_inet(&c->redis_sentinels.addrs[0], AF_INET, "127.0.0.1", 26379);
	assert_inet(&c->redis_sentinels.addrs[1], AF_INET6, "::1", 26380);
	assert_inet(&c->redis_sentinels.addrs[2], AF_INET, "127.0.0.2", 26381);
	assert_string_equal(c->redis_sentinels.addrs[1].text, "[::1]:26380");
	assert_string_equal(c->redis_master_name, "mymaster");
	assert_string_equal(c->redis_username, "imapmux");
	cfg_destroy(&c);
	/* One sentinel is a list too; username with a plain address. */
	c = load_ok("[redis]\nsentinels = 127.0.0.1:1\nmaster_name = m\n" TAIL);
	assert_int_equal(c->redis_sentinels.n, 1);
	cfg_destroy(&c);
	c = load_ok("[redis]\naddress = 127.0.0.1:1\nusername = u\npassword = p\n" TAIL);
	assert_string_equal(c->redis_username, "u");
	assert_int_equal(c->redis_sentinels.n, 0);
	cfg_destroy(&c);
}

struct err_case {
	const char *text;
	bool tail; /* append TAIL, so that only the error under test remains */
	int line;
	const char *reason;
};

static const struct err_case err_cases[] = {
    /* structure */
    {"workers = 2\n", true, 1, "key 'workers' outside any section"},
    {"[imapmux]\njunk\n", true, 2, "expected '[section]' or 'key = value'"},
    {"[imapmux]\n  = 2\n", true, 2, "missing key before '='"},
    {"[imapmux\n", true, 1, "missing ']' in section header"},
    {"[imapmux] x\n", true, 1, "unexpected text after ']'"},
    {"[imapmux] # fine\n[ ]\n", true, 2, "empty section header"},
    {"[foo]\n", true, 1, "unknown section kind 'foo'"},
    {"[Listen x]\n", true, 1, "unknown section kind 'Listen'"},
    {"[listen]\n", true, 1, "[listen] needs a name"},
    {"[backend]\n", true, 1, "[backend] needs a name"},
    {"[imapmux main]\n", true, 1, "[imapmux] takes no name"},
    {"[redis x]\n", true, 1, "[redis] takes no name"},
    {"[routing x]\n", true, 1, "[routing] takes no name"},
    {"[listen a b]\n", true, 1, "expected [kind] or [kind name] in section header"},
    {"[listen bad/name]\n", true, 1,
     "bad section name 'bad/name' (1..63 characters of A-Z a-z 0-9 _ . -)"},
    {"[backend " N64 "]\n", true, 1,
     "bad section name '" N64 "' (1..63 characters of A-Z a-z 0-9 _ . -)"},
    {"[imapmux]\n[imapmux]\n", true, 2, "duplicate section [imapmux] (first at line 1)"},
    {"[redis]\n[routing]\n[redis]\n", true, 3, "duplicate section [redis] (first at line 1)"},
    {"[routing]\n\n[routing]\n", true, 3, "duplicate section [routing] (first at line 1)"},
    {"[listen imap]\naddress = 127.0.0.1:1\n", true, 3,
     "duplicate section [listen imap] (first at line 1)"},
    {"[backend a]\naddress = 127.0.0.1:1\n", true, 5,
     "duplicate section [backend a] (first at line 1)"},
    {"[imapmux]\nfoo = 1\n", true, 2, "unknown key 'foo' in [imapmux]"},
    {"[listen imaps]\naddress = 127.0.0.1:1\nfoo = 1\n", true, 3,
     "unknown key 'foo' in [listen imaps]"},
    {"[backend b]\nAddress = 127.0.0.1:1\n", true, 2, "unknown key 'Address' in [backend b]"},
    {"[redis]\nworkers = 2\n", true, 2, "unknown key 'workers' in [redis]"},
    {"[routing]\nlookup = redis\nlookup = static\n", true, 3,
     "duplicate key 'lookup' in [routing] (first at line 2)"},
    {"[imapmux]\nworkers = 2\n# c\nworkers = 2\n", true, 4,
     "duplicate key 'workers' in [imapmux] (first at line 2)"},
    {"[imapmux]\nlog_level =\n", true, 2, "empty value for 'log_level'"},
    {"[imapmux]\nlog_level = # none\n", true, 2, "empty value for 'log_level'"},
    {"[redis]\npassword = \"\"\n", true, 2, "empty value for 'password'"},
    {"[redis]\npassword = \"abc\n", true, 2, "unterminated quoted value"},
    {"[redis]\npassword = \"abc\\\"\n", true, 2, "unterminated quoted value"},
    {"[redis]\npassword = \"abc\\\n", true, 2, "unterminated quoted value"},
    {"[redis]\npassword = \"a\\xb\"\n", true, 2,
     "bad escape '\\x' in quoted value (only \\\" and \\\\)"},
    {"[redis]\npassword = \"a\" b\n", true, 2, "unexpected text after closing quote"},
    {"[redis]\npassword = \"\"\"\"\n", true, 2, "unexpected text after closing quote"},

    /* values, [imapmux] */
    {"[imapmux]\nworkers = 0\n", true, 2, "bad value '0' for workers (1..64 or auto)"},
    {"[imapmux]\nworkers = 65\n", true, 2, "bad value '65' for workers (1..64 or auto)"},
    {"[imapmux]\nworkers = two\n", true, 2, "bad value 'two' for workers (1..64 or auto)"},
    {"[imapmux]\nworkers = -1\n", true, 2, "bad value '-1' for workers (1..64 or auto)"},
    {"[imapmux]\nlog_level = loud\n", true, 2,
     "bad value 'loud' for log_level (error, warn, info, debug)"},
    {"[imapmux]\nstats_listen = 127.0.0.1\n", true, 2,
     "bad address '127.0.0.1' for stats_listen: missing port"},
    {"[imapmux]\nstats_listen = unix:/tmp/s\n", true, 2,
     "bad address 'unix:/tmp/s' for stats_listen: unix sockets are not allowed here"},
    {"[imapmux]\nauth = ldap\n", true, 2, "bad value 'ldap' for auth (backend, redis)"},
    {"[imapmux]\npark_idle_after = x\n", true, 2, "bad duration 'x' for park_idle_after"},
    {"[imapmux]\npreauth_timeout = x\n", true, 2, "bad duration 'x' for preauth_timeout"},
    {"[imapmux]\npreauth_timeout = 0\n", true, 2,
     "bad duration '0' for preauth_timeout (must be more than 0)"},
    {"[imapmux]\nidle_timeout = 0s\n", true, 2,
     "bad duration '0s' for idle_timeout (must be more than 0)"},
    {"[imapmux]\nshutdown_timeout = -1\n", true, 2, "bad duration '-1' for shutdown_timeout"},
    {"[imapmux]\nauth_fail_limit = 1000001\n", true, 2,
     "bad number '1000001' for auth_fail_limit (0..1000000)"},
    {"[imapmux]\nauth_fail_limit = -1\n", true, 2,
     "bad number '-1' for auth_fail_limit (0..1000000)"},
    {"[imapmux]\nauth_fail_limit = ten\n", true, 2,
     "bad number 'ten' for auth_fail_limit (0..1000000)"},
    {"[imapmux]\nauth_fail_window = 0\n", true, 2,
     "bad duration '0' for auth_fail_window (must be more than 0)"},
    {"[imapmux]\nauth_fail_window = 5 m\n", true, 2, "bad duration '5 m' for auth_fail_window"},
    {"[imapmux]\nauth_fail_delay = 61\n", true, 2,
     "bad duration '61' for auth_fail_delay (at most 60s)"},
    {"[imapmux]\nauth_fail_delay = 60001ms\n", true, 2,
     "bad duration '60001ms' for auth_fail_delay (at most 60s)"},
    {"[imapmux]\nauth_fail_delay = 2m\n", true, 2,
     "bad duration '2m' for auth_fail_delay (at most 60s)"},
    {"[imapmux]\nauth_fail_delay = -1\n", true, 2, "bad duration '-1' for auth_fail_delay"},
    {"[imapmux]\nauth_threads = 0\n", true, 2, "bad number '0' for auth_threads (1..64)"},
    {"[imapmux]\nauth_threads = 65\n", true, 2, "bad number '65' for auth_threads (1..64)"},
    {"[imapmux]\nauth_threads = auto\n", true, 2, "bad number 'auto' for auth_threads (1..64)"},
    {"[imapmux]\nusername_case = lower\n", true, 2,
     "bad value 'lower' for username_case (fold, keep)"},
    {"[imapmux]\n# c\n\nusername_case = inherit\n", true, 4,
     "bad value 'inherit' for username_case (fold, keep)"},
    {"[imapmux]\nusername_case = \"fold \"\n", true, 2,
     "bad value 'fold ' for username_case (fold, keep)"},
    {"[imapmux]\nusername_case =\n", true, 2, "empty value for 'username_case'"},
    {"[imapmux]\nusername_case = fold\nusername_case = keep\n", true, 3,
     "duplicate key 'username_case' in [imapmux] (first at line 2)"},
    {"[imapmux]\nipv6_prefix = 0\n", true, 2, "bad number '0' for ipv6_prefix (1..128)"},
    {"[imapmux]\nipv6_prefix = 129\n", true, 2, "bad number '129' for ipv6_prefix (1..128)"},
    {"[imapmux]\nipv6_prefix = -64\n", true, 2, "bad number '-64' for ipv6_prefix (1..128)"},
    {"[imapmux]\nipv6_prefix = /64\n", true, 2, "bad number '/64' for ipv6_prefix (1..128)"},
    {"[imapmux]\nipv6_prefix = 4294967360\n", true, 2,
     "bad number '4294967360' for ipv6_prefix (1..128)"},

    /* values, [listen] */
    {"[listen s]\ntls = ssl\n", true, 2, "bad value 'ssl' for tls (none, starttls, implicit)"},
    {"[listen s]\nproxy_protocol = maybe\n", true, 2, "bad boolean 'maybe' for proxy_protocol"},
    {"[listen s]\nallow_plaintext_auth = 2\n", true, 2, "bad boolean '2' for allow_plaintext_auth"},
    {"[listen s]\ncert = @D@/nope.pem\n", true, 2,
     "cannot read cert '@D@/nope.pem': No such file or directory"},
    {"[listen s]\ncert = @D@/cert.pem\nkey = @D@\n", true, 3,
     "cannot read key '@D@': Is a directory"},
    {"[listen s]\naddress = 127.0.0.1:65536\n", true, 2,
     "bad address '127.0.0.1:65536' for address: bad port (1..65535)"},
    {"[listen s]\naddress = 1.2.3:4\n", true, 2,
     "bad address '1.2.3:4' for address: bad IPv4 address"},
    {"[listen s]\naddress = [::1\n", true, 2, "bad address '[::1' for address: missing ']'"},
    {"[listen s]\naddress = [::1]\n", true, 2, "bad address '[::1]' for address: missing port"},
    {"[listen s]\naddress = [::x]:1\n", true, 2,
     "bad address '[::x]:1' for address: bad IPv6 address"},
    {"[listen s]\naddress = :1\n", true, 2, "bad address ':1' for address: missing host"},

    /* values, [redis] and [routing] */
    {"[redis]\naddress = unix:\n", true, 2,
     "bad address 'unix:' for address: empty unix socket path"},
    {"[redis]\naddress = 127.0.0.1:0\n", true, 2,
     "bad address '127.0.0.1:0' for address: bad port (1..65535)"},
    {"[redis]\ndb = x\n", true, 2, "bad number 'x' for db (0..2147483647)"},
    {"[redis]\ndb = 2147483648\n", true, 2, "bad number '2147483648' for db (0..2147483647)"},
    {"[redis]\ntimeout = 0ms\n", true, 2, "bad duration '0ms' for timeout (must be more than 0)"},
    {"[redis]\ntimeout = soon\n", true, 2, "bad duration 'soon' for timeout"},
    {"[redis]\nprefix = " N64 "x\n", true, 2, "bad value for prefix: 65 bytes (at most 64)"},
    {"[redis]\n\nprefix = \"" N64 " \"\n", true, 3, "bad value for prefix: 65 bytes (at most 64)"},
    {"[redis]\nprefix = " N64 N64 "\n", true, 2, "bad value for prefix: 128 bytes (at most 64)"},
    {"[redis]\nsentinels = 127.0.0.1:26379\n", true, 2, "sentinels needs master_name in [redis]"},
    {"[redis]\nmaster_name = m\n", true, 2, "master_name needs sentinels in [redis]"},
    {"[redis]\naddress = 127.0.0.1:1\nsentinels = 127.0.0.1:2\nmaster_name = m\n", true, 3,
     "address and sentinels exclude each other in [redis] (with sentinels, Sentinel names the "
     "master)"},
    {"[redis]\nsentinels = 127.0.0.1:2\nmaster_name = m\naddress = 127.0.0.1:1\n", true, 4,
     "address and sentinels exclude each other in [redis] (with sentinels, Sentinel names the "
     "master)"},
    {"[redis]\nsentinels = 127.0.0.1:1,, 127.0.0.1:2\n", true, 2, "empty entry in sentinels"},
    {"[redis]\nsentinels = 127.0.0.1:1,\n", true, 2, "empty entry in sentinels"},
    {"[redis]\nsentinels = 127.0.0.1:1, unix:/x\n", true, 2,
     "bad address 'unix:/x' in sentinels: unix sockets are not allowed here"},
    {"[redis]\nsentinels = 127.0.0.1\n", true, 2,
     "bad address '127.0.0.1' in sentinels: missing port"},
    {"[redis]\nsentinels = 127.0.0.1:1 , 127.0.0.1:1\n", true, 2,
     "'127.0.0.1:1' is listed twice in sentinels"},
    {"[redis]\nsentinels = 127.0.0.1:1,127.0.0.1:2,127.0.0.1:3,127.0.0.1:4,127.0.0.1:5,"
     "127.0.0.1:6,127.0.0.1:7,127.0.0.1:8,127.0.0.1:9,127.0.0.1:10,127.0.0.1:11,127.0.0.1:12,"
     "127.0.0.1:13,127.0.0.1:14,127.0.0.1:15,127.0.0.1:16,127.0.0.1:17\n",
     true, 2, "more than 16 addresses in sentinels"},
    {"[redis]\nsentinels = 127.0.0.1:1\nmaster_name = \"my master\"\n", true, 3,
     "bad master_name 'my master' (printable ASCII without spaces)"},
    {"[redis]\nusername = imapmux\n", true, 2, "username needs password in [redis]"},
    {"[redis]\nusername = \"a b\"\npassword = x\n", true, 2,
     "bad username 'a b' (printable ASCII without spaces)"},
    {"[routing]\nlookup = ldap\n", true, 2, "bad value 'ldap' for lookup (static, redis)"},
    {"[routing]\nfallback = \"b a\"\n", true, 2,
     "bad value 'b a' for fallback (hash, deny or a backend name)"},
    {"[routing]\ncache_ttl = 1d\n", true, 2, "bad duration '1d' for cache_ttl"},

    /* values, [backend] */
    {"[backend z]\naddress = unix:/run/imap.sock\n", true, 2,
     "bad address 'unix:/run/imap.sock' for address: unix sockets are not allowed here"},
    {"[backend z]\naddress = ::1:143\n", true, 2,
     "bad address '::1:143' for address: IPv6 addresses need brackets: [ADDR]:PORT"},
    {"[backend z]\naddress = 127.0.0.1:abc\n", true, 2,
     "bad address '127.0.0.1:abc' for address: bad port (1..65535)"},
    {"[backend z]\ntls = IMPLICITLY\n", true, 2,
     "bad value 'IMPLICITLY' for tls (none, starttls, implicit)"},
    {"[backend z]\nca = @D@/nope.pem\n", true, 2,
     "cannot read ca '@D@/nope.pem': No such file or directory"},
    {"[backend z]\npool_max = 0\n", true, 2, "bad number '0' for pool_max (1..1000000)"},
    {"[backend z]\npool_max = 1000001\n", true, 2,
     "bad number '1000001' for pool_max (1..1000000)"},
    {"[backend z]\npool_min_idle = -1\n", true, 2,
     "bad number '-1' for pool_min_idle (0..1000000)"},
    {"[backend z]\nweight = 0\n", true, 2, "bad number '0' for weight (1..1000)"},
    {"[backend z]\nweight = 1001\n", true, 2, "bad number '1001' for weight (1..1000)"},
    {"[backend z]\nconnect_timeout = 0ms\n", true, 2,
     "bad duration '0ms' for connect_timeout (must be more than 0)"},
    {"[backend z]\ncommand_timeout = 0\n", true, 2,
     "bad duration '0' for command_timeout (must be more than 0)"},
    {"[listen p]\naddress = 127.0.0.1:1\nproxy_trusted = 127.0.0.0/8\n", true, 1,
     "[listen p]: proxy_trusted needs proxy_protocol = yes"},
    {"[listen p]\naddress = 127.0.0.1:1\nproxy_protocol = yes\nproxy_trusted = ::1, 10/8\n", true,
     1, "[listen p]: bad address or range '10/8' in proxy_trusted"},
    {"[backend z]\nwatch_refresh = 0\n", true, 2,
     "bad duration '0' for watch_refresh (must be more than 0)"},
    {"[backend z]\nwatch_refresh = 30m\n", true, 2,
     "bad duration '30m' for watch_refresh (at most 1740s)"},
    {"[backend z]\ncommand_timeout = 1 s\n", true, 2, "bad duration '1 s' for command_timeout"},
    {"[backend z]\nmaster_separator = 12345678\n", true, 2,
     "bad value '12345678' for master_separator (1..7 printable ASCII characters, no space)"},
    {"[backend z]\nmaster_separator = \"a b\"\n", true, 2,
     "bad value 'a b' for master_separator (1..7 printable ASCII characters, no space)"},
    {"[backend z]\nmaster_separator = \"\t\"\n", true, 2,
     "bad value '\t' for master_separator (1..7 printable ASCII characters, no space)"},
    {"[backend z]\nmaster_separator = \xc3\xa9\n", true, 2,
     "bad value '\xc3\xa9' for master_separator (1..7 printable ASCII characters, no space)"},
    {"[backend z]\nmaster_separator = \"\"\n", true, 2, "empty value for 'master_separator'"},
    {"[backend z]\nmaster_separator = # nothing\n", true, 2, "empty value for 'master_separator'"},
    {"[backend z]\ncheck_interval = -1\n", true, 2, "bad duration '-1' for check_interval"},
    {"[backend z]\ncheck_interval = 5d\n", true, 2, "bad duration '5d' for check_interval"},
    {"[backend z]\ncheck_timeout = 0\n", true, 2,
     "bad duration '0' for check_timeout (must be more than 0)"},
    {"[backend z]\ncheck_timeout = x\n", true, 2, "bad duration 'x' for check_timeout"},
    {"[backend z]\ncheck_rise = 0\n", true, 2, "bad number '0' for check_rise (1..100)"},
    {"[backend z]\ncheck_rise = 101\n", true, 2, "bad number '101' for check_rise (1..100)"},
    {"[backend z]\ncheck_fall = 0\n", true, 2, "bad number '0' for check_fall (1..100)"},
    {"[backend z]\ncheck_fall = 101\n", true, 2, "bad number '101' for check_fall (1..100)"},
    {"[backend z]\ncheck_fall = 2.5\n", true, 2, "bad number '2.5' for check_fall (1..100)"},
    {"[backend z]\naddress = 127.0.0.1:1\nusername_case = lowercase\n", true, 3,
     "bad value 'lowercase' for username_case (fold, keep)"},
    {"[backend z]\nusername_case = \"\"\n", true, 2, "empty value for 'username_case'"},
    {"[backend z]\nipv6_prefix = 64\n", true, 2, "unknown key 'ipv6_prefix' in [backend z]"},
    {"[listen z]\nusername_case = keep\n", true, 2, "unknown key 'username_case' in [listen z]"},

    /* whole sections */
    {"[listen x]\ntls = none\n", true, 1, "missing address in [listen x]"},
    {"[backend z]\nweight = 2\n", true, 1, "missing address in [backend z]"},
    {"[listen z]\naddress = 127.0.0.1:1\n[backend z]\nweight = 2\n", false, 3,
     "missing address in [backend z]"},
    {"[listen x]\n[foo]\n", true, 1, "missing address in [listen x]"},
    {"[listen s]\naddress = 127.0.0.1:1\ntls = implicit\n", true, 1,
     "missing cert in [listen s] (tls = implicit needs cert and key)"},
    {"[listen s]\naddress = 127.0.0.1:1\ntls = starttls\ncert = @D@/cert.pem\n", true, 1,
     "missing key in [listen s] (tls = starttls needs cert and key)"},
    {"[backend z]\naddress = 127.0.0.1:1\npool_max = 5\npool_min_idle = 10\n", true, 4,
     "pool_min_idle 10 is more than pool_max 5 in [backend z]"},
    {"[backend z]\naddress = 127.0.0.1:1\nmaster_user = m\n", true, 1,
     "missing master_password in [backend z] (master_user is set)"},
    {"[backend z]\naddress = 127.0.0.1:1\nmaster_password = p\n", true, 1,
     "missing master_user in [backend z] (master_password is set)"},

    /* whole file */
    {"", false, 0, "no [listen] section"},
    {"# only a comment\n", false, 0, "no [listen] section"},
    {"[backend a]\naddress = 127.0.0.1:1\n", false, 0, "no [listen] section"},
    {"[listen a]\naddress = 127.0.0.1:1\n", false, 0, "no [backend] section"},
    {"[routing]\nfallback = nosuch\n", true, 2, "unknown backend 'nosuch' for fallback"},
    {"[routing]\nfallback = A\n", true, 2, "unknown backend 'A' for fallback"},
    {"[routing]\nlookup = static\nfallback = deny\n", true, 3,
     "fallback = deny with lookup = static would refuse every login"},
    {"[routing]\nfallback = deny\n", true, 2,
     "fallback = deny with lookup = static would refuse every login"},
    {"[routing]\nlookup = redis\n", true, 2, "lookup = redis needs a [redis] section"},
    {"[imapmux]\nauth = redis\n", true, 2, "auth = redis needs a [redis] section"},
    {"[imapmux]\nauth = redis\n[redis]\n", true, 6,
     "auth = redis needs master_user and master_password in [backend a]"},
};

static void test_errors(void **state)
{
	char text[1024];

	(void)state;
	for (size_t i = 0; i < sizeof(err_cases) / sizeof(err_cases[0]); i++) {
		const struct err_case *e = &err_cases[i];

		snprintf(text, sizeof(text), "%s%s", e->text, e->tail ? TAIL : "");
		expect_err(text, e->line, e->reason);
	}
}

static void test_line_limits(void **state)
{
	char *text = malloc(8192);
	struct cfg *c;
	size_t n;

	(void)state;
	assert_non_null(text);
	/* A 4096-byte comment line is fine, CRLF or not. */
	n = (size_t)sprintf(text, "%s", TAIL);
	text[n] = '#';
	memset(text + n + 1, 'x', 4095);
	n += 4096;
	memcpy(text + n, "\r\n", 3);
	c = load_ok(text);
	cfg_destroy(&c);
	/* One more byte is not. */
	n = (size_t)sprintf(text, "%s", TAIL);
	text[n] = '#';
	memset(text + n + 1, 'x', 4096);
	n += 4097;
	memcpy(text + n, "\n", 2);
	expect_err(text, 5, "line too long (more than 4096 bytes)");
	/* The same, as a last line with no newline. */
	text[n] = '\0';
	expect_err(text, 5, "line too long (more than 4096 bytes)");
	free(text);

	expect_err_n("[imapmux]\nworkers = 2\0junk\n" TAIL,
	             sizeof("[imapmux]\nworkers = 2\0junk\n" TAIL) - 1, 2, "NUL byte in line");
}

static void test_open_errors(void **state)
{
	char path[256], err[512], want[512];
	struct cfg *c = NULL;

	(void)state;
	snprintf(path, sizeof(path), "%s/does-not-exist.conf", dir);
	assert_int_equal(cfg_load(path, &c, err, sizeof(err)), -1);
	assert_null(c);
	snprintf(want, sizeof(want), "%s: cannot open: No such file or directory", path);
	assert_string_equal(err, want);

	assert_int_equal(cfg_load(dir, &c, err, sizeof(err)), -1);
	assert_null(c);
	snprintf(want, sizeof(want), "%s: cannot open: Is a directory", dir);
	assert_string_equal(err, want);
}

/* Messages are cut to the buffer, and a NULL buffer is allowed. */
static void test_err_buffer(void **state)
{
	char path[256], err[8];
	struct cfg *c = NULL;

	(void)state;
	write_conf("[foo]\n", 6, path);
	memset(err, 'z', sizeof(err));
	assert_int_equal(cfg_load(path, &c, err, sizeof(err)), -1);
	assert_int_equal(strlen(err), sizeof(err) - 1);
	assert_memory_equal(err, path, sizeof(err) - 1);
	assert_int_equal(cfg_load(path, &c, NULL, 0), -1);
	assert_int_equal(cfg_load(path, &c, err, 0), -1);
	assert_null(c);
	unlink(path);
}

/* Relative file names are relative to the configuration's directory
 * (here the test directory, where the files are), not the working one. */
static void test_relative_paths(void **state)
{
	char want[300], cwd[1024];
	struct cfg *c;

	(void)state;
	assert_non_null(getcwd(cwd, sizeof(cwd)));
	assert_int_equal(chdir("/"), 0);
	c = load_ok("[listen imaps]\naddress = 127.0.0.1:993\ntls = implicit\n"
	            "cert = cert.pem\nkey = @D@/key.pem\n"
	            "[backend a]\naddress = 127.0.0.1:143\ntls = starttls\nca = ./ca.pem\n");
	snprintf(want, sizeof(want), "%s/cert.pem", dir);
	assert_string_equal(c->listens[0].cert, want);
	snprintf(want, sizeof(want), "%s/key.pem", dir);
	assert_string_equal(c->listens[0].key, want);
	snprintf(want, sizeof(want), "%s/./ca.pem", dir);
	assert_string_equal(c->backends[0].ca, want);
	cfg_destroy(&c);
	assert_int_equal(chdir(cwd), 0);
}

static void test_destroy_null(void **state)
{
	struct cfg *c = NULL;

	(void)state;
	cfg_destroy(&c);
	cfg_destroy(NULL);
	assert_null(c);
}

/* ---- the shipped proxy.conf ------------------------------------------- */

/* The whole of a file, NUL-terminated; caller frees. */
static char *read_all(const char *path)
{
	FILE *f = fopen(path, "r");
	char *buf;
	long n;

	if (f == NULL)
		fail_msg("cannot open %s (tests run from the repository root)", path);
	assert_int_equal(fseek(f, 0, SEEK_END), 0);
	n = ftell(f);
	assert_true(n > 0);
	rewind(f);
	buf = malloc((size_t)n + 1);
	assert_non_null(buf);
	assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
	buf[n] = '\0';
	fclose(f);
	return buf;
}

static void test_shipped_conf(void **state)
{
	char path[256], err[512], want[600], line[4200], k[16], v[256];
	char *text, *rewritten, *s;
	const struct cfg_backend *b;
	struct cfg *c = NULL;
	size_t n = 0;
	int lineno = 0, bad_line = 0, bad_errno = 0;
	FILE *f;

	(void)state;
	/* demo-run/ does not exist until `make demo`: point at our files instead. */
	text = read_all("proxy.conf");
	rewritten = malloc(strlen(text) * 2 + 1);
	assert_non_null(rewritten);
	for (s = text; *s != '\0';) {
		if (strncmp(s, "demo-run/", 9) == 0) {
			n += (size_t)sprintf(rewritten + n, "%s/", dir);
			s += 9;
		} else {
			rewritten[n++] = *s++;
		}
	}
	rewritten[n] = '\0';
	snprintf(path, sizeof(path), "%s/proxy.conf", dir);
	write_file(path, rewritten, n);
	free(rewritten);
	free(text);
	if (cfg_load(path, &c, err, sizeof(err)) != 0)
		fail_msg("shipped proxy.conf: %s", err);

	assert_int_equal(c->workers, 2);
	assert_int_equal(c->auth, CFG_AUTH_BACKEND);
	assert_true(c->has_stats);
	assert_inet(&c->stats_listen, AF_INET, "127.0.0.1", 9100);
	assert_int_equal(c->nlistens, 2);
	assert_string_equal(c->listens[0].name, "imaps");
	assert_inet(&c->listens[0].addr, AF_INET, "127.0.0.1", 9993);
	assert_int_equal(c->listens[0].tls, CFG_TLS_IMPLICIT);
	assert_string_equal(c->listens[1].name, "imap");
	assert_inet(&c->listens[1].addr, AF_INET, "127.0.0.1", 9143);
	assert_int_equal(c->listens[1].tls, CFG_TLS_STARTTLS);
	for (size_t i = 0; i < 2; i++) {
		snprintf(want, sizeof(want), "%s/cert.pem", dir);
		assert_string_equal(c->listens[i].cert, want);
		snprintf(want, sizeof(want), "%s/key.pem", dir);
		assert_string_equal(c->listens[i].key, want);
	}
	assert_true(c->has_redis);
	assert_inet(&c->redis_addr, AF_INET, "127.0.0.1", 16379);
	assert_string_equal(c->redis_prefix, "imapmux:");
	assert_int_equal(c->lookup, CFG_LOOKUP_REDIS);
	assert_int_equal(c->fallback, CFG_FALLBACK_HASH);
	assert_int_equal(c->nbackends, 2);
	for (size_t i = 0; i < 2; i++) {
		b = &c->backends[i];
		assert_string_equal(b->name, i == 0 ? "a" : "b");
		assert_inet(&b->addr, AF_INET, "127.0.0.1", i == 0 ? 11143 : 11144);
		assert_int_equal(b->tls, CFG_TLS_NONE);
		assert_string_equal(b->master_user, "proxymaster");
		assert_string_equal(b->master_password, "demo-master-secret");
		assert_int_equal(b->pool_min_idle, 2);
		assert_int_equal(b->pool_max, 100);
	}
	cfg_destroy(&c);
	unlink(path);

	/*
	 * The file as shipped: fine once the demo has made its certificate,
	 * and otherwise wrong only about the first cert or key it cannot read.
	 */
	f = fopen("proxy.conf", "r");
	assert_non_null(f);
	while (fgets(line, sizeof(line), f) != NULL) {
		lineno++;
		if (bad_line == 0 && sscanf(line, " %15[a-z_] = %255s", k, v) == 2 &&
		    (strcmp(k, "cert") == 0 || strcmp(k, "key") == 0) && access(v, R_OK) != 0) {
			bad_line = lineno;
			bad_errno = errno;
			snprintf(want, sizeof(want), "proxy.conf:%d: cannot read %s '%s': %s",
			         bad_line, k, v, strerror(bad_errno));
		}
	}
	fclose(f);
	if (bad_line == 0) {
		if (cfg_load("proxy.conf", &c, err, sizeof(err)) != 0)
			fail_msg("proxy.conf: %s", err);
		cfg_destroy(&c);
	} else {
		assert_int_equal(cfg_load("proxy.conf", &c, err, sizeof(err)), -1);
		assert_string_equal(err, want);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_duration),
	    cmocka_unit_test(test_bool),
	    cmocka_unit_test(test_addr_ipv4),
	    cmocka_unit_test(test_addr_ipv6),
	    cmocka_unit_test(test_addr_unix),
	    cmocka_unit_test(test_addr_bad),
	    cmocka_unit_test(test_addr_name),
	    cmocka_unit_test(test_defaults),
	    cmocka_unit_test(test_every_key),
	    cmocka_unit_test(test_comments_and_quotes),
	    cmocka_unit_test(test_order_and_find),
	    cmocka_unit_test(test_cross_ok),
	    cmocka_unit_test(test_errors),
	    cmocka_unit_test(test_redis_sentinels),
	    cmocka_unit_test(test_line_limits),
	    cmocka_unit_test(test_open_errors),
	    cmocka_unit_test(test_err_buffer),
	    cmocka_unit_test(test_relative_paths),
	    cmocka_unit_test(test_destroy_null),
	    cmocka_unit_test(test_shipped_conf),
	    cmocka_unit_test(test_tls_policy_inherit),
	    cmocka_unit_test(test_ident_keys),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
