/*
 * cfg — see cfg.h. One pass over the file, one line at a time:
 *
 *   line ─► blank or comment ─► skip
 *        ─► [kind name]      ─► close the open section (its own checks),
 *                               open the next one with its defaults
 *        ─► key = value      ─► look the key up in the open kind's table,
 *                               parse the value straight into its field
 *   EOF  ─► close the last section ─► whole-file checks (counts, fallback,
 *                                     [redis] needed, master credentials),
 *                                     then [imapmux]'s TLS policy copied
 *                                     into the sections that set none
 *
 * Invariants:
 *   - The first problem ends the load; err holds exactly that one message.
 *   - The struct being built is valid for cfg_destroy at every moment (each
 *     pointer NULL or owned), so every failure takes the same exit.
 *   - The open section is an index into listens/backends, never a pointer:
 *     the arrays move when they grow.
 *   - Keys are described by tables (name, type, field offset, limits), so a
 *     new key is one table row plus, at most, one cross-check.
 */
#include "cfg.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/un.h>
#include <unistd.h>

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

/* Longest line accepted, without its line terminator. */
#define CFG_LINE_MAX 4096

/*
 * No timer needs more than a year; the bound also keeps huge numbers from
 * reaching ev_timer as values it cannot represent.
 */
#define CFG_DURATION_MAX (365.0 * 24 * 3600)

/* More digits than this could not be held exactly by a double. */
#define CFG_DURATION_DIGITS 15

#define POOL_MAX_LIMIT      1000000u
#define WORKERS_MAX         64u
#define AUTH_FAIL_LIMIT_MAX 1000000u
#define AUTH_THREADS_MAX    64u
#define AUTH_FAIL_DELAY_MAX 60u
#define CHECK_RISE_FALL_MAX 100u
#define MAX_CONNECTIONS_MAX 10000000u
#define MAX_LINE_MIN        1024u
#define MAX_LINE_MAX        (16u * 1024 * 1024)
#define KEYS_MAX            48
/* RFC 8446 4.6.1: a ticket lives at most 7 days. */
#define TLS_TICKET_LIFETIME_MAX (7u * 24 * 3600)

enum val_type {
	V_DURATION,  /* double, seconds */
	V_BOOL,      /* bool */
	V_UINT,      /* unsigned within [min, max] */
	V_UINT_AUTO, /* unsigned within [min, max], or "auto" stored as 0 */
	V_LOG_LEVEL, /* enum log_level */
	V_LOG_FMT,   /* enum log_format */
	V_LOG_TO,    /* enum log_target */
	V_ADDR,      /* struct cfg_addr, host:port or [v6]:port */
	V_ADDR_UNIX, /* struct cfg_addr, which may also be unix:/path */
	V_ADDR_LIST, /* struct cfg_addr_list: host:port, host:port, ... (max = most entries) */
	V_STRING,    /* char *, owned */
	V_TLS,       /* enum cfg_tls */
	V_AUTH,      /* enum cfg_auth */
	V_LOOKUP,    /* enum cfg_lookup */
	V_FALLBACK,  /* enum cfg_fallback, plus cfg->fallback_backend */
	V_SEPARATOR, /* char[CFG_SEPARATOR_MAX], printable ASCII without space */
	V_UCASE,     /* enum cfg_ucase: fold | keep */
	V_WATCH,     /* enum cfg_watch: auto | notify | idle | events */
	V_SENDPROXY, /* enum cfg_send_proxy: no | v1 | v2 */
};

#define KF_REQUIRED 0x1u  /* the section is incomplete without it */
#define KF_POSITIVE 0x2u  /* duration where zero makes no sense */
#define KF_FILE     0x4u  /* string naming a file that must be readable now */
#define KF_EMPTY_OK 0x8u  /* "" is a meaningful value */
#define KF_SECOND   0x10u /* duration of at least one second */

struct key_def {
	const char *name;
	enum val_type type;
	size_t off; /* of the field within the section's struct */
	unsigned flags;
	/*
	 * V_UINT: the range. V_DURATION: max, when not 0, is the longest
	 * value in whole seconds (min unused: KF_POSITIVE says "more than 0").
	 * V_STRING: max, when not 0, is the longest value in bytes.
	 * V_ADDR_LIST: max is the most addresses.
	 */
	unsigned min, max;
};

#define CF(f) offsetof(struct cfg, f)
#define LF(f) offsetof(struct cfg_listen, f)
#define BF(f) offsetof(struct cfg_backend, f)

static const struct key_def imapmux_keys[] = {
    {"workers", V_UINT_AUTO, CF(workers), 0, 1, WORKERS_MAX},
    {"log_level", V_LOG_LEVEL, CF(log_level), 0, 0, 0},
    {"log_format", V_LOG_FMT, CF(log_format), 0, 0, 0},
    {"log", V_LOG_TO, CF(log_to), 0, 0, 0},
    {"log_socket", V_STRING, CF(log_socket), 0, 0, 0},
    {"stats_listen", V_ADDR, CF(stats_listen), 0, 0, 0},
    {"auth", V_AUTH, CF(auth), 0, 0, 0},
    {"park_idle_after", V_DURATION, CF(park_idle_after), 0, 0, 0},
    {"park_keepalive", V_DURATION, CF(park_keepalive), KF_POSITIVE, 0, 0},
    {"reuseport", V_BOOL, CF(reuseport), 0, 0, 0},
    {"compress", V_BOOL, CF(compress), 0, 0, 0},
    {"oauth", V_BOOL, CF(oauth), 0, 0, 0},
    {"tls_tickets", V_BOOL, CF(tls_tickets), 0, 0, 0},
    {"tls_ticket_lifetime", V_DURATION, CF(tls_ticket_lifetime), KF_SECOND, 0,
     TLS_TICKET_LIFETIME_MAX},
    {"user", V_STRING, CF(user), 0, 0, 64},
    {"group", V_STRING, CF(group), 0, 0, 64},
    {"preauth_timeout", V_DURATION, CF(preauth_timeout), KF_POSITIVE, 0, 0},
    {"idle_timeout", V_DURATION, CF(idle_timeout), KF_POSITIVE, 0, 0},
    {"shutdown_timeout", V_DURATION, CF(shutdown_timeout), 0, 0, 0},
    {"auth_fail_limit", V_UINT, CF(auth_fail_limit), 0, 0, AUTH_FAIL_LIMIT_MAX},
    {"auth_fail_window", V_DURATION, CF(auth_fail_window), KF_POSITIVE, 0, 0},
    {"auth_fail_delay", V_DURATION, CF(auth_fail_delay), 0, 0, AUTH_FAIL_DELAY_MAX},
    {"auth_threads", V_UINT, CF(auth_threads), 0, 1, AUTH_THREADS_MAX},
    {"max_connections", V_UINT_AUTO, CF(max_connections), 0, 1, MAX_CONNECTIONS_MAX},
    {"max_connections_per_ip", V_UINT, CF(max_connections_per_ip), 0, 0, MAX_CONNECTIONS_MAX},
    {"max_line_length", V_UINT, CF(max_line_length), 0, MAX_LINE_MIN, MAX_LINE_MAX},
    {"username_case", V_UCASE, CF(username_case), 0, 0, 0},
    {"ipv6_prefix", V_UINT, CF(ipv6_prefix), 0, 1, 128},
    {"ciphers", V_STRING, CF(tls_policy.ciphers), 0, 0, 0},
    {"ciphersuites", V_STRING, CF(tls_policy.ciphersuites), 0, 0, 0},
    {"curves", V_STRING, CF(tls_policy.curves), 0, 0, 0},
};

static const struct key_def listen_keys[] = {
    {"address", V_ADDR, LF(addr), KF_REQUIRED, 0, 0},
    {"tls", V_TLS, LF(tls), 0, 0, 0},
    {"cert", V_STRING, LF(cert), KF_FILE, 0, 0},
    {"key", V_STRING, LF(key), KF_FILE, 0, 0},
    {"proxy_protocol", V_BOOL, LF(proxy_protocol), 0, 0, 0},
    {"proxy_trusted", V_STRING, LF(proxy_trusted), 0, 0, 0},
    {"allow_plaintext_auth", V_BOOL, LF(allow_plaintext_auth), 0, 0, 0},
    {"ciphers", V_STRING, LF(tls_policy.ciphers), 0, 0, 0},
    {"ciphersuites", V_STRING, LF(tls_policy.ciphersuites), 0, 0, 0},
    {"curves", V_STRING, LF(tls_policy.curves), 0, 0, 0},
};

static const struct key_def redis_keys[] = {
    {"address", V_ADDR_UNIX, CF(redis_addr), 0, 0, 0},
    {"sentinels", V_ADDR_LIST, CF(redis_sentinels), 0, 0, CFG_SENTINELS_MAX},
    {"master_name", V_STRING, CF(redis_master_name), 0, 0, CFG_REDIS_NAME_MAX},
    {"prefix", V_STRING, CF(redis_prefix), KF_EMPTY_OK, 0, CFG_REDIS_PREFIX_MAX},
    {"username", V_STRING, CF(redis_username), 0, 0, CFG_REDIS_NAME_MAX},
    {"password", V_STRING, CF(redis_password), 0, 0, 0},
    /* Redis parses SELECT's index as a signed 32-bit number. */
    {"db", V_UINT, CF(redis_db), 0, 0, 2147483647u},
    {"timeout", V_DURATION, CF(redis_timeout), KF_POSITIVE, 0, 0},
};

static const struct key_def routing_keys[] = {
    {"lookup", V_LOOKUP, CF(lookup), 0, 0, 0},
    {"fallback", V_FALLBACK, CF(fallback), 0, 0, 0},
    {"cache_ttl", V_DURATION, CF(cache_ttl), 0, 0, 0},
};

static const struct key_def backend_keys[] = {
    {"address", V_ADDR, BF(addr), KF_REQUIRED, 0, 0},
    {"tls", V_TLS, BF(tls), 0, 0, 0},
    {"ca", V_STRING, BF(ca), KF_FILE, 0, 0},
    {"tls_name", V_STRING, BF(tls_name), 0, 0, 0},
    {"master_user", V_STRING, BF(master_user), 0, 0, 0},
    {"master_password", V_STRING, BF(master_password), 0, 0, 0},
    {"pool_min_idle", V_UINT, BF(pool_min_idle), 0, 0, POOL_MAX_LIMIT},
    {"pool_max", V_UINT, BF(pool_max), 0, 1, POOL_MAX_LIMIT},
    {"weight", V_UINT, BF(weight), 0, 1, 1000},
    {"reuse_ttl", V_DURATION, BF(reuse_ttl), 0, 0, 0},
    {"unauthenticate", V_BOOL, BF(unauthenticate), 0, 0, 0},
    {"pool_wait", V_DURATION, BF(pool_wait), KF_POSITIVE, 0, 0},
    {"pool_idle_ttl", V_DURATION, BF(pool_idle_ttl), KF_POSITIVE, 0, 0},
    {"connect_timeout", V_DURATION, BF(connect_timeout), KF_POSITIVE, 0, 0},
    {"command_timeout", V_DURATION, BF(command_timeout), KF_POSITIVE, 0, 0},
    {"master_separator", V_SEPARATOR, BF(master_separator), 0, 0, 0},
    {"check_interval", V_DURATION, BF(check_interval), 0, 0, 0},
    {"check_timeout", V_DURATION, BF(check_timeout), KF_POSITIVE, 0, 0},
    {"check_rise", V_UINT, BF(check_rise), 0, 1, CHECK_RISE_FALL_MAX},
    {"check_fall", V_UINT, BF(check_fall), 0, 1, CHECK_RISE_FALL_MAX},
    {"username_case", V_UCASE, BF(username_case), 0, 0, 0},
    {"watch", V_WATCH, BF(watch), 0, 0, 0},
    {"watch_refresh", V_DURATION, BF(watch_refresh), KF_POSITIVE, 0, 29 * 60},
    {"forward_id", V_BOOL, BF(forward_id), 0, 0, 0},
    {"send_proxy", V_SENDPROXY, BF(send_proxy), 0, 0, 0},
    {"ciphers", V_STRING, BF(tls_policy.ciphers), 0, 0, 0},
    {"ciphersuites", V_STRING, BF(tls_policy.ciphersuites), 0, 0, 0},
    {"curves", V_STRING, BF(tls_policy.curves), 0, 0, 0},
};

enum sec_kind {
	SEC_NONE, /* before the first header: keys are errors */
	SEC_IMAPMUX,
	SEC_LISTEN,
	SEC_REDIS,
	SEC_ROUTING,
	SEC_BACKEND,
	SEC_COUNT,
};

struct sec_def {
	const char *kind;
	bool named; /* [kind NAME] rather than [kind] */
	const struct key_def *keys;
	size_t nkeys;
};

static const struct sec_def sec_defs[SEC_COUNT] = {
    [SEC_NONE] = {"", false, NULL, 0},
    [SEC_IMAPMUX] = {"imapmux", false, imapmux_keys, ARRAY_SIZE(imapmux_keys)},
    [SEC_LISTEN] = {"listen", true, listen_keys, ARRAY_SIZE(listen_keys)},
    [SEC_REDIS] = {"redis", false, redis_keys, ARRAY_SIZE(redis_keys)},
    [SEC_ROUTING] = {"routing", false, routing_keys, ARRAY_SIZE(routing_keys)},
    [SEC_BACKEND] = {"backend", true, backend_keys, ARRAY_SIZE(backend_keys)},
};

_Static_assert(ARRAY_SIZE(imapmux_keys) <= KEYS_MAX, "raise KEYS_MAX");
_Static_assert(ARRAY_SIZE(listen_keys) <= KEYS_MAX, "raise KEYS_MAX");
_Static_assert(ARRAY_SIZE(redis_keys) <= KEYS_MAX, "raise KEYS_MAX");
_Static_assert(ARRAY_SIZE(routing_keys) <= KEYS_MAX, "raise KEYS_MAX");
_Static_assert(ARRAY_SIZE(backend_keys) <= KEYS_MAX, "raise KEYS_MAX");

/* Keyword tables, indexed by the enum value they stand for. */
static const char *const tls_names[] = {
    [CFG_TLS_NONE] = "none",
    [CFG_TLS_STARTTLS] = "starttls",
    [CFG_TLS_IMPLICIT] = "implicit",
};
static const char *const watch_names[] = {
    [CFG_WATCH_AUTO] = "auto",
    [CFG_WATCH_NOTIFY] = "notify",
    [CFG_WATCH_IDLE] = "idle",
    [CFG_WATCH_EVENTS] = "events",
};

static const char *const send_proxy_names[] = {
    [CFG_SEND_PROXY_NO] = "no",
    [CFG_SEND_PROXY_V1] = "v1",
    [CFG_SEND_PROXY_V2] = "v2",
};

static const char *const ucase_names[] = {
    [CFG_UCASE_INHERIT] = "",
    [CFG_UCASE_FOLD] = "fold",
    [CFG_UCASE_KEEP] = "keep",
};
static const char *const auth_names[] = {
    [CFG_AUTH_BACKEND] = "backend",
    [CFG_AUTH_REDIS] = "redis",
};
static const char *const lookup_names[] = {
    [CFG_LOOKUP_STATIC] = "static",
    [CFG_LOOKUP_REDIS] = "redis",
};

struct parser {
	struct cfg *cfg;
	const char *path;
	char *err;
	size_t errlen;
	int line; /* of the line being read; 0 before the first */

	enum sec_kind kind;     /* of the open section */
	size_t idx;             /* its index in listens/backends */
	int sec_line;           /* line of its header */
	char label[96];         /* "[listen imaps]", for messages */
	int key_line[KEYS_MAX]; /* where each key of its table was set; 0 = not */

	int single_line[SEC_COUNT];                /* header line of each unnamed kind seen */
	int auth_line, lookup_line, fallback_line; /* for whole-file checks */
};

/*
 * Write "path:line: reason" (or "path: reason" for line 0) into the
 * caller's buffer, truncating as needed.
 */
__attribute__((format(printf, 3, 4))) static void set_err(struct parser *p, int line,
                                                          const char *fmt, ...)
{
	va_list ap;
	int n;

	if (p->err == NULL || p->errlen == 0)
		return;
	if (line > 0)
		n = snprintf(p->err, p->errlen, "%s:%d: ", p->path, line);
	else
		n = snprintf(p->err, p->errlen, "%s: ", p->path);
	if (n < 0 || (size_t)n >= p->errlen)
		return;
	va_start(ap, fmt);
	vsnprintf(p->err + n, p->errlen - (size_t)n, fmt, ap);
	va_end(ap);
}

static bool is_space(char c)
{
	return c == ' ' || c == '\t' || c == '\r' || c == '\n' || c == '\v' || c == '\f';
}

static bool is_digit(char c)
{
	return c >= '0' && c <= '9';
}

static char *skip_space(char *s)
{
	while (is_space(*s))
		s++;
	return s;
}

static void trim_end(char *s)
{
	size_t n = strlen(s);

	while (n > 0 && is_space(s[n - 1]))
		s[--n] = '\0';
}

/* Section and backend names: 1..CFG_NAME_MAX-1 of [A-Za-z0-9_.-]. */
static bool valid_name(const char *s)
{
	size_t n = strlen(s);

	if (n == 0 || n >= CFG_NAME_MAX)
		return false;
	return strspn(s, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
	                 "0123456789_.-") == n;
}

/* Only printable ASCII other than space (0x21..0x7e). */
static bool printable_word(const char *s)
{
	for (; *s != '\0'; s++) {
		if (*s < '!' || *s > '~')
			return false;
	}
	return true;
}

/* Index of s in names (case-insensitive), or -1. */
static int parse_keyword(const char *s, const char *const *names, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		if (strcasecmp(s, names[i]) == 0)
			return (int)i;
	}
	return -1;
}

/* Decimal digits only, no sign, within [min, max]. */
static int parse_uint(const char *s, unsigned min, unsigned max, unsigned *v_r)
{
	unsigned long long v = 0;

	if (*s == '\0')
		return -1;
	for (; *s != '\0'; s++) {
		if (!is_digit(*s))
			return -1;
		/* v <= max <= UINT_MAX here, so v * 10 + 9 cannot overflow. */
		v = v * 10 + (unsigned)(*s - '0');
		if (v > max)
			return -1;
	}
	if (v < min)
		return -1;
	*v_r = (unsigned)v;
	return 0;
}

/*
 * Parsed by hand rather than with strtod: strtod follows the locale's
 * decimal point and accepts "inf", "1e3", "0x10" and leading signs.
 * Digits are gathered into an integer mantissa and divided once at the
 * end, so "1.5" and "500ms" come out exact.
 */
int cfg_parse_duration(const char *s, double *secs_r)
{
	double mant = 0, scale = 1, v;
	int digits = 0;

	if (!is_digit(*s))
		return -1;
	while (is_digit(*s)) {
		mant = mant * 10 + (*s++ - '0');
		digits++;
	}
	if (*s == '.') {
		s++;
		if (!is_digit(*s))
			return -1;
		while (is_digit(*s)) {
			mant = mant * 10 + (*s++ - '0');
			scale *= 10;
			digits++;
		}
	}
	if (digits > CFG_DURATION_DIGITS)
		return -1;
	v = mant / scale;
	if (strcmp(s, "ms") == 0)
		v /= 1000;
	else if (strcmp(s, "m") == 0)
		v *= 60;
	else if (strcmp(s, "h") == 0)
		v *= 3600;
	else if (strcmp(s, "s") != 0 && strcmp(s, "") != 0)
		return -1;
	if (v > CFG_DURATION_MAX)
		return -1;
	*secs_r = v;
	return 0;
}

int cfg_parse_bool(const char *s, bool *b_r)
{
	static const char *const yes[] = {"yes", "true", "on", "1"};
	static const char *const no[] = {"no", "false", "off", "0"};

	if (parse_keyword(s, yes, ARRAY_SIZE(yes)) >= 0) {
		*b_r = true;
		return 0;
	}
	if (parse_keyword(s, no, ARRAY_SIZE(no)) >= 0) {
		*b_r = false;
		return 0;
	}
	return -1;
}

/* "1".."65535", digits only. */
static int parse_port(const char *s)
{
	unsigned port;

	if (strlen(s) > 5 || parse_uint(s, 1, 65535, &port) < 0)
		return -1;
	return (int)port;
}

static int parse_unix_addr(const char *path, bool allow_unix, struct cfg_addr *a, char *why,
                           size_t whylen)
{
	struct sockaddr_un *sun = (struct sockaddr_un *)&a->ss;
	size_t n = strlen(path);

	if (!allow_unix) {
		snprintf(why, whylen, "unix sockets are not allowed here");
		return -1;
	}
	if (n == 0) {
		snprintf(why, whylen, "empty unix socket path");
		return -1;
	}
	if (n >= sizeof(sun->sun_path)) {
		snprintf(why, whylen, "unix socket path longer than %zu bytes",
		         sizeof(sun->sun_path) - 1);
		return -1;
	}
	sun->sun_family = AF_UNIX;
	memcpy(sun->sun_path, path, n + 1);
	a->len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + n + 1);
	return 0;
}

/*
 * host:port or [v6]:port into a. Literals are checked strictly (a host of
 * digits and dots must be a dotted quad, so "10.0.0.256" is an error and
 * not a DNS query); anything else is a name, resolved now because nothing
 * may resolve on the event loops. The first result wins.
 */
static int parse_inet_addr(const char *s, struct cfg_addr *a, char *why, size_t whylen)
{
	struct addrinfo hints, *res = NULL;
	char host[sizeof(a->text)];
	const char *port, *end;
	size_t hostlen;
	struct in_addr in4;
	int r;

	memset(&hints, 0, sizeof(hints));
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_NUMERICSERV;
	if (s[0] == '[') {
		end = strchr(s, ']');
		if (end == NULL) {
			snprintf(why, whylen, "missing ']'");
			goto fail;
		}
		hostlen = (size_t)(end - (s + 1));
		memcpy(host, s + 1, hostlen);
		if (end[1] == '\0') {
			snprintf(why, whylen, "missing port");
			goto fail;
		}
		if (end[1] != ':') {
			snprintf(why, whylen, "expected ':PORT' after ']'");
			goto fail;
		}
		port = end + 2;
		hints.ai_family = AF_INET6;
		hints.ai_flags |= AI_NUMERICHOST;
	} else {
		end = strrchr(s, ':');
		if (end == NULL) {
			snprintf(why, whylen, "missing port");
			goto fail;
		}
		hostlen = (size_t)(end - s);
		if (memchr(s, ':', hostlen) != NULL) {
			snprintf(why, whylen, "IPv6 addresses need brackets: [ADDR]:PORT");
			goto fail;
		}
		memcpy(host, s, hostlen);
		port = end + 1;
		hints.ai_family = AF_UNSPEC;
	}
	host[hostlen] = '\0';
	if (hostlen == 0) {
		snprintf(why, whylen, "missing host");
		goto fail;
	}
	if (parse_port(port) < 0) {
		snprintf(why, whylen, "bad port (1..65535)");
		goto fail;
	}
	if (hints.ai_family == AF_UNSPEC && strspn(host, "0123456789.") == hostlen) {
		if (inet_pton(AF_INET, host, &in4) != 1) {
			snprintf(why, whylen, "bad IPv4 address");
			goto fail;
		}
		hints.ai_family = AF_INET;
		hints.ai_flags |= AI_NUMERICHOST;
	}
#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
	/* Fuzz builds only (tests/fuzz): a name from the input must never
	 * become a DNS query or an /etc/hosts lookup; names fail to resolve. */
	hints.ai_flags |= AI_NUMERICHOST;
#endif
	r = getaddrinfo(host, port, &hints, &res);
	if (r != 0) {
		if (hints.ai_family == AF_INET6)
			snprintf(why, whylen, "bad IPv6 address");
		else
			snprintf(why, whylen, "cannot resolve: %s", gai_strerror(r));
		goto fail;
	}
	if (res->ai_addrlen > sizeof(a->ss)) {
		snprintf(why, whylen, "address too large");
		goto fail;
	}
	memcpy(&a->ss, res->ai_addr, res->ai_addrlen);
	a->len = res->ai_addrlen;
	freeaddrinfo(res);
	return 0;
fail:
	if (res != NULL)
		freeaddrinfo(res);
	return -1;
}

/*
 * Parse into a scratch struct and copy on success only, so that a failed
 * parse leaves *a_r as it was (callers keep their default). why receives
 * the reason for a failure.
 */
static int parse_addr(const char *s, bool allow_unix, struct cfg_addr *a_r, char *why,
                      size_t whylen)
{
	struct cfg_addr a;
	size_t n = strlen(s);
	int r;

	memset(&a, 0, sizeof(a));
	if (n >= sizeof(a.text)) {
		snprintf(why, whylen, "longer than %zu bytes", sizeof(a.text) - 1);
		return -1;
	}
	memcpy(a.text, s, n + 1);
	if (strncmp(s, "unix:", 5) == 0)
		r = parse_unix_addr(s + 5, allow_unix, &a, why, whylen);
	else
		r = parse_inet_addr(s, &a, why, whylen);
	if (r < 0)
		return -1;
	*a_r = a;
	return 0;
}

int cfg_parse_addr(const char *s, bool allow_unix, struct cfg_addr *a_r)
{
	char why[256];

	return parse_addr(s, allow_unix, a_r, why, sizeof(why));
}

const struct cfg_backend *cfg_backend_find(const struct cfg *cfg, const char *name)
{
	for (size_t i = 0; i < cfg->nbackends; i++) {
		if (strcmp(cfg->backends[i].name, name) == 0)
			return &cfg->backends[i];
	}
	return NULL;
}

/* Credentials should not outlive the struct in freed heap memory. */
static void free_secret(char *s)
{
	if (s != NULL) {
		explicit_bzero(s, strlen(s));
		free(s);
	}
}

static void free_policy(struct cfg_tls_policy *tp)
{
	free(tp->ciphers);
	free(tp->ciphersuites);
	free(tp->curves);
}

void cfg_destroy(struct cfg **cfgp)
{
	struct cfg *c;

	if (cfgp == NULL || *cfgp == NULL)
		return;
	c = *cfgp;
	for (size_t i = 0; i < c->nlistens; i++) {
		free(c->listens[i].cert);
		free(c->listens[i].key);
		free(c->listens[i].proxy_trusted);
		free(c->listens[i].trusted);
		free_policy(&c->listens[i].tls_policy);
	}
	for (size_t i = 0; i < c->nbackends; i++) {
		free(c->backends[i].ca);
		free(c->backends[i].tls_name);
		free(c->backends[i].master_user);
		free_secret(c->backends[i].master_password);
		free_policy(&c->backends[i].tls_policy);
	}
	free(c->listens);
	free(c->backends);
	free(c->path);
	free(c->redis_prefix);
	free(c->redis_sentinels.addrs);
	free(c->redis_master_name);
	free(c->redis_username);
	free(c->user);
	free(c->group);
	free(c->log_socket);
	free_secret(c->redis_password);
	free_policy(&c->tls_policy);
	free(c);
	*cfgp = NULL;
}

/* A struct cfg holding every default of cfg.h. */
static int cfg_new(struct parser *p)
{
	struct cfg *c;

	c = calloc(1, sizeof(*c));
	if (c == NULL)
		goto nomem;
	p->cfg = c;
	c->path = strdup(p->path);
	c->redis_prefix = strdup("imapmux:");
	if (c->path == NULL || c->redis_prefix == NULL)
		goto nomem;
	c->workers = 2;
	c->log_level = LOG_LVL_INFO;
	c->auth = CFG_AUTH_BACKEND;
	c->park_idle_after = 30;
	c->park_keepalive = 120;
	c->preauth_timeout = 60;
	c->idle_timeout = 1800;
	c->shutdown_timeout = 30;
	c->auth_fail_limit = 10;
	c->auth_fail_window = 5 * 60;
	c->auth_fail_delay = 1;
	c->max_connections = 0; /* auto */
	c->max_connections_per_ip = 0;
	c->max_line_length = 65536;
	c->compress = true;
	c->tls_tickets = true;
	c->tls_ticket_lifetime = 3600;
	c->username_case = CFG_UCASE_FOLD;
	c->ipv6_prefix = 64;
	c->auth_threads = 2;
	c->redis_timeout = 2;
	if (cfg_parse_addr("127.0.0.1:6379", false, &c->redis_addr) < 0) {
		set_err(p, 0, "cannot set the default Redis address");
		return -1;
	}
	c->lookup = CFG_LOOKUP_STATIC;
	c->fallback = CFG_FALLBACK_HASH;
	c->cache_ttl = 60;
	return 0;
nomem:
	set_err(p, 0, "out of memory");
	return -1;
}

static void *section_base(struct parser *p)
{
	switch (p->kind) {
	case SEC_LISTEN:
		return &p->cfg->listens[p->idx];
	case SEC_BACKEND:
		return &p->cfg->backends[p->idx];
	case SEC_NONE:
	case SEC_IMAPMUX:
	case SEC_REDIS:
	case SEC_ROUTING:
	case SEC_COUNT:
		break;
	}
	return p->cfg;
}

/* Line at which key name was set in the open section; 0 if it was not. */
static int key_line(const struct parser *p, const char *name)
{
	const struct sec_def *sd = &sec_defs[p->kind];

	for (size_t i = 0; i < sd->nkeys; i++) {
		if (strcmp(sd->keys[i].name, name) == 0)
			return p->key_line[i];
	}
	return 0;
}

/* A file named in the configuration: a relative name is relative to the
 * configuration file's directory, not to wherever imapmux was started
 * from (a new allocation; NULL on no memory). */
static char *file_path(const struct parser *p, const char *v)
{
	const char *slash = strrchr(p->path, '/');
	size_t dlen = slash != NULL ? (size_t)(slash - p->path) + 1 : 0;
	size_t vlen = strlen(v);
	char *s;

	if (v[0] == '/' || dlen == 0)
		return strdup(v);
	s = malloc(dlen + vlen + 1);
	if (s != NULL) {
		memcpy(s, p->path, dlen);
		memcpy(s + dlen, v, vlen + 1);
	}
	return s;
}

/*
 * KF_FILE strings: fail at load, on the line that names the file, rather
 * than at the first TLS handshake or the next reload. access() answers
 * for the real uid, the one that will open the file.
 */
static int check_readable(struct parser *p, const struct key_def *k, const char *path)
{
	struct stat st;

#ifdef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
	/* Fuzz builds only (tests/fuzz): never touch a path named by the
	 * input; every file counts as readable. */
	return 0;
#endif
	if (access(path, R_OK) < 0) {
		set_err(p, p->line, "cannot read %s '%s': %s", k->name, path, strerror(errno));
		return -1;
	}
	if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
		set_err(p, p->line, "cannot read %s '%s': %s", k->name, path, strerror(EISDIR));
		return -1;
	}
	return 0;
}

/*
 * "host:port, host:port, ..." into *l: each entry as parse_addr takes it
 * (no unix sockets), at most k->max of them, none twice. *l is empty on
 * entry (a repeated key is refused before this) and set only on success.
 */
static int parse_addr_list(struct parser *p, const struct key_def *k, const char *v,
                           struct cfg_addr_list *l)
{
	struct cfg_addr *a = calloc(k->max, sizeof(*a));
	char item[CFG_LINE_MAX + 1], why[256];
	const char *s = v, *end;
	size_t n = 0, len;

	if (a == NULL) {
		set_err(p, p->line, "out of memory");
		return -1;
	}
	for (;; s = end + 1) {
		end = strchr(s, ',');
		len = end != NULL ? (size_t)(end - s) : strlen(s);
		while (len > 0 && is_space(*s)) {
			s++;
			len--;
		}
		while (len > 0 && is_space(s[len - 1]))
			len--;
		if (len == 0) {
			set_err(p, p->line, "empty entry in %s", k->name);
			goto fail;
		}
		if (n == k->max) {
			set_err(p, p->line, "more than %u addresses in %s", k->max, k->name);
			goto fail;
		}
		memcpy(item, s, len);
		item[len] = '\0';
		if (parse_addr(item, false, &a[n], why, sizeof(why)) < 0) {
			set_err(p, p->line, "bad address '%s' in %s: %s", item, k->name, why);
			goto fail;
		}
		for (size_t i = 0; i < n; i++) {
			if (a[i].len == a[n].len && memcmp(&a[i].ss, &a[n].ss, a[n].len) == 0) {
				set_err(p, p->line, "'%s' is listed twice in %s", item, k->name);
				goto fail;
			}
		}
		n++;
		if (end == NULL)
			break;
	}
	l->addrs = a;
	l->n = n;
	return 0;
fail:
	free(a);
	return -1;
}

/* Parse value v for key k into its field of the open section. */
static int set_value(struct parser *p, const struct key_def *k, const char *v)
{
	void *f = (char *)section_base(p) + k->off;
	char why[256];
	double d;
	bool b;
	unsigned u;
	int i;
	char *s;

	switch (k->type) {
	case V_DURATION:
		if (cfg_parse_duration(v, &d) < 0) {
			set_err(p, p->line, "bad duration '%s' for %s", v, k->name);
			return -1;
		}
		if ((k->flags & KF_POSITIVE) && d <= 0) {
			set_err(p, p->line, "bad duration '%s' for %s (must be more than 0)", v,
			        k->name);
			return -1;
		}
		if ((k->flags & KF_SECOND) && d < 1) {
			set_err(p, p->line, "bad duration '%s' for %s (must be at least 1s)", v,
			        k->name);
			return -1;
		}
		if (k->max != 0 && d > k->max) {
			set_err(p, p->line, "bad duration '%s' for %s (at most %us)", v, k->name,
			        k->max);
			return -1;
		}
		*(double *)f = d;
		break;
	case V_BOOL:
		if (cfg_parse_bool(v, &b) < 0) {
			set_err(p, p->line, "bad boolean '%s' for %s", v, k->name);
			return -1;
		}
		*(bool *)f = b;
		break;
	case V_UINT:
		if (parse_uint(v, k->min, k->max, &u) < 0) {
			set_err(p, p->line, "bad number '%s' for %s (%u..%u)", v, k->name, k->min,
			        k->max);
			return -1;
		}
		*(unsigned *)f = u;
		break;
	case V_UINT_AUTO:
		if (strcasecmp(v, "auto") == 0) {
			u = 0;
		} else if (parse_uint(v, k->min, k->max, &u) < 0) {
			set_err(p, p->line, "bad value '%s' for %s (%u..%u or auto)", v, k->name,
			        k->min, k->max);
			return -1;
		}
		*(unsigned *)f = u;
		break;
	case V_LOG_LEVEL:
		if (log_level_parse(v, (enum log_level *)f) < 0) {
			set_err(p, p->line, "bad value '%s' for %s (error, warn, info, debug)", v,
			        k->name);
			return -1;
		}
		break;
	case V_LOG_FMT:
		if (log_format_parse(v, (enum log_format *)f) < 0) {
			set_err(p, p->line, "bad value '%s' for %s (text, json)", v, k->name);
			return -1;
		}
		break;
	case V_LOG_TO:
		if (log_target_parse(v, (enum log_target *)f) < 0) {
			set_err(p, p->line, "bad value '%s' for %s (stderr, syslog)", v, k->name);
			return -1;
		}
		break;
	case V_ADDR:
	case V_ADDR_UNIX:
		if (parse_addr(v, k->type == V_ADDR_UNIX, (struct cfg_addr *)f, why, sizeof(why)) <
		    0) {
			set_err(p, p->line, "bad address '%s' for %s: %s", v, k->name, why);
			return -1;
		}
		break;
	case V_ADDR_LIST:
		if (parse_addr_list(p, k, v, (struct cfg_addr_list *)f) < 0)
			return -1;
		break;
	case V_STRING:
		if (k->max != 0 && strlen(v) > k->max) {
			set_err(p, p->line, "bad value for %s: %zu bytes (at most %u)", k->name,
			        strlen(v), k->max);
			return -1;
		}
		s = (k->flags & KF_FILE) ? file_path(p, v) : strdup(v);
		if (s == NULL) {
			set_err(p, p->line, "out of memory");
			return -1;
		}
		if ((k->flags & KF_FILE) && check_readable(p, k, s) < 0) {
			free(s);
			return -1;
		}
		/* Duplicate keys are refused earlier; free anyway, never leak. */
		free_secret(*(char **)f);
		*(char **)f = s;
		break;
	case V_TLS:
		i = parse_keyword(v, tls_names, ARRAY_SIZE(tls_names));
		if (i < 0) {
			set_err(p, p->line, "bad value '%s' for %s (none, starttls, implicit)", v,
			        k->name);
			return -1;
		}
		*(enum cfg_tls *)f = (enum cfg_tls)i;
		break;
	case V_AUTH:
		i = parse_keyword(v, auth_names, ARRAY_SIZE(auth_names));
		if (i < 0) {
			set_err(p, p->line, "bad value '%s' for %s (backend, redis)", v, k->name);
			return -1;
		}
		*(enum cfg_auth *)f = (enum cfg_auth)i;
		p->auth_line = p->line;
		break;
	case V_LOOKUP:
		i = parse_keyword(v, lookup_names, ARRAY_SIZE(lookup_names));
		if (i < 0) {
			set_err(p, p->line, "bad value '%s' for %s (static, redis)", v, k->name);
			return -1;
		}
		*(enum cfg_lookup *)f = (enum cfg_lookup)i;
		p->lookup_line = p->line;
		break;
	case V_FALLBACK:
		/* Whether NAME exists is only known at the end of the file. */
		if (strcasecmp(v, "hash") == 0) {
			p->cfg->fallback = CFG_FALLBACK_HASH;
		} else if (strcasecmp(v, "deny") == 0) {
			p->cfg->fallback = CFG_FALLBACK_DENY;
		} else if (valid_name(v)) {
			p->cfg->fallback = CFG_FALLBACK_BACKEND;
			snprintf(p->cfg->fallback_backend, sizeof(p->cfg->fallback_backend), "%s",
			         v);
		} else {
			set_err(p, p->line, "bad value '%s' for %s (hash, deny or a backend name)",
			        v, k->name);
			return -1;
		}
		p->fallback_line = p->line;
		break;
	case V_SEPARATOR:
		/* It becomes part of a user name: no space, control or 8-bit bytes. */
		if (strlen(v) >= CFG_SEPARATOR_MAX || !printable_word(v)) {
			set_err(
			    p, p->line,
			    "bad value '%s' for %s (1..%d printable ASCII characters, no space)", v,
			    k->name, CFG_SEPARATOR_MAX - 1);
			return -1;
		}
		memcpy(f, v, strlen(v) + 1);
		break;
	case V_UCASE:
		i = parse_keyword(v, ucase_names, ARRAY_SIZE(ucase_names));
		if (i <= 0) {
			set_err(p, p->line, "bad value '%s' for %s (fold, keep)", v, k->name);
			return -1;
		}
		*(enum cfg_ucase *)f = (enum cfg_ucase)i;
		break;
	case V_WATCH:
		i = parse_keyword(v, watch_names, ARRAY_SIZE(watch_names));
		if (i < 0) {
			set_err(p, p->line, "bad value '%s' for %s (auto, notify, idle, events)", v,
			        k->name);
			return -1;
		}
		*(enum cfg_watch *)f = (enum cfg_watch)i;
		break;
	case V_SENDPROXY:
		i = parse_keyword(v, send_proxy_names, ARRAY_SIZE(send_proxy_names));
		if (i < 0) {
			set_err(p, p->line, "bad value '%s' for %s (no, v1, v2)", v, k->name);
			return -1;
		}
		*(enum cfg_send_proxy *)f = (enum cfg_send_proxy)i;
		break;
	}
	return 0;
}

/*
 * Cut the value out of the text after '=', in place: trim it, drop a
 * trailing comment, unquote it. A comment starts at '#' or ';' at the
 * start of the value or after whitespace, so "imapmux:" and "se#cret" stay
 * whole. A quoted value keeps everything up to the closing quote; inside
 * it only \" and \\ are escapes, so that no other backslash changes
 * meaning silently. After the closing quote only whitespace or a comment
 * may follow (a comment may touch the quote: nothing is ambiguous there).
 */
static int cut_value(struct parser *p, char *s, char **v_r)
{
	char *r, *w;

	s = skip_space(s);
	if (*s != '"') {
		for (r = s; *r != '\0'; r++) {
			if ((*r == '#' || *r == ';') && (r == s || is_space(r[-1]))) {
				*r = '\0';
				break;
			}
		}
		trim_end(s);
		*v_r = s;
		return 0;
	}
	for (r = s + 1, w = s; *r != '"';) {
		if (*r == '\0') {
			set_err(p, p->line, "unterminated quoted value");
			return -1;
		}
		if (*r == '\\') {
			if (r[1] == '\0') {
				set_err(p, p->line, "unterminated quoted value");
				return -1;
			}
			if (r[1] != '"' && r[1] != '\\') {
				set_err(p, p->line,
				        "bad escape '\\%c' in quoted value (only \\\" and \\\\)",
				        r[1]);
				return -1;
			}
			r++;
		}
		*w++ = *r++;
	}
	*w = '\0';
	r = skip_space(r + 1);
	if (*r != '\0' && *r != '#' && *r != ';') {
		set_err(p, p->line, "unexpected text after closing quote");
		return -1;
	}
	*v_r = s;
	return 0;
}

/* key = value, within the open section. */
static int parse_key(struct parser *p, char *s)
{
	const struct sec_def *sd = &sec_defs[p->kind];
	const struct key_def *k = NULL;
	char *eq, *v;
	size_t i;

	eq = strchr(s, '=');
	if (eq == NULL) {
		set_err(p, p->line, "expected '[section]' or 'key = value'");
		return -1;
	}
	*eq = '\0';
	trim_end(s);
	if (*s == '\0') {
		set_err(p, p->line, "missing key before '='");
		return -1;
	}
	if (p->kind == SEC_NONE) {
		set_err(p, p->line, "key '%s' outside any section", s);
		return -1;
	}
	for (i = 0; i < sd->nkeys; i++) {
		if (strcmp(sd->keys[i].name, s) == 0) {
			k = &sd->keys[i];
			break;
		}
	}
	if (k == NULL) {
		set_err(p, p->line, "unknown key '%s' in %s", s, p->label);
		return -1;
	}
	if (p->key_line[i] != 0) {
		set_err(p, p->line, "duplicate key '%s' in %s (first at line %d)", s, p->label,
		        p->key_line[i]);
		return -1;
	}
	p->key_line[i] = p->line;
	if (cut_value(p, eq + 1, &v) < 0)
		return -1;
	if (*v == '\0' && !(k->flags & KF_EMPTY_OK)) {
		set_err(p, p->line, "empty value for '%s'", k->name);
		return -1;
	}
	return set_value(p, k, v);
}

/* Where the open section set its TLS policy keys (0 where it did not). */
static void note_policy_lines(const struct parser *p, struct cfg_tls_policy *tp)
{
	tp->ciphers_line = key_line(p, "ciphers");
	tp->ciphersuites_line = key_line(p, "ciphersuites");
	tp->curves_line = key_line(p, "curves");
}

/*
 * [redis]: with sentinels the master's address comes from Sentinel, so an
 * address as well could only be a leftover (which one would win?);
 * sentinels and master_name make sense only together; an ACL user always
 * has a password (AUTH USER PASSWORD). Names go into commands as single
 * arguments, but Sentinel and ACL names never hold spaces or control bytes.
 */
static int check_redis(struct parser *p)
{
	const struct cfg *c = p->cfg;
	int sl = key_line(p, "sentinels"), ml = key_line(p, "master_name");
	int al = key_line(p, "address"), ul = key_line(p, "username");

	if (sl != 0 && al != 0) {
		set_err(p, al > sl ? al : sl,
		        "address and sentinels exclude each other in [redis] (with sentinels, "
		        "Sentinel names the master)");
		return -1;
	}
	if (sl != 0 && ml == 0) {
		set_err(p, sl, "sentinels needs master_name in [redis]");
		return -1;
	}
	if (ml != 0 && sl == 0) {
		set_err(p, ml, "master_name needs sentinels in [redis]");
		return -1;
	}
	if (ml != 0 && !printable_word(c->redis_master_name)) {
		set_err(p, ml, "bad master_name '%s' (printable ASCII without spaces)",
		        c->redis_master_name);
		return -1;
	}
	if (ul != 0 && !printable_word(c->redis_username)) {
		set_err(p, ul, "bad username '%s' (printable ASCII without spaces)",
		        c->redis_username);
		return -1;
	}
	if (ul != 0 && c->redis_password == NULL) {
		set_err(p, ul, "username needs password in [redis]");
		return -1;
	}
	return 0;
}

/*
 * send_proxy: the header names one client, so every connection must be
 * made for one client and closed with it. Connections kept for other
 * clients are refused when asked for (pool_min_idle, reuse_ttl,
 * unauthenticate = yes written out), and the defaults that keep them
 * (reuse_ttl = 300, unauthenticate = yes) do not apply.
 */
static int send_proxy_check(struct parser *p, struct cfg_backend *b)
{
	static const char *const why = "each connection carries one client's address";
	int line;

	if (b->pool_min_idle > 0) {
		set_err(
		    p, key_line(p, "pool_min_idle"),
		    "pool_min_idle %u cannot go with send_proxy in %s (%s: no idle connections)",
		    b->pool_min_idle, p->label, why);
		return -1;
	}
	line = key_line(p, "reuse_ttl");
	if (line != 0 && b->reuse_ttl > 0) {
		set_err(p, line,
		        "reuse_ttl cannot go with send_proxy in %s (%s: no kept sessions; set 0)",
		        p->label, why);
		return -1;
	}
	line = key_line(p, "unauthenticate");
	if (line != 0 && b->unauthenticate) {
		set_err(
		    p, line,
		    "unauthenticate = yes cannot go with send_proxy in %s (%s: no return to the "
		    "pool)",
		    p->label, why);
		return -1;
	}
	b->reuse_ttl = 0;
	b->unauthenticate = false;
	return 0;
}

/* The checks that need a whole section: required keys and pairs. */
static int close_section(struct parser *p)
{
	const struct sec_def *sd = &sec_defs[p->kind];
	struct cfg_listen *l;
	struct cfg_backend *b;
	int line;

	for (size_t i = 0; i < sd->nkeys; i++) {
		if ((sd->keys[i].flags & KF_REQUIRED) && p->key_line[i] == 0) {
			set_err(p, p->sec_line, "missing %s in %s", sd->keys[i].name, p->label);
			return -1;
		}
	}
	switch (p->kind) {
	case SEC_IMAPMUX:
		p->cfg->has_stats = key_line(p, "stats_listen") != 0;
		note_policy_lines(p, &p->cfg->tls_policy);
		break;
	case SEC_LISTEN:
		l = &p->cfg->listens[p->idx];
		note_policy_lines(p, &l->tls_policy);
		if (l->tls != CFG_TLS_NONE && (l->cert == NULL || l->key == NULL)) {
			set_err(p, p->sec_line, "missing %s in %s (tls = %s needs cert and key)",
			        l->cert == NULL ? "cert" : "key", p->label, tls_names[l->tls]);
			return -1;
		}
		break;
	case SEC_BACKEND:
		b = &p->cfg->backends[p->idx];
		note_policy_lines(p, &b->tls_policy);
		if (b->pool_min_idle > b->pool_max) {
			line = key_line(p, "pool_min_idle");
			set_err(p, line != 0 ? line : key_line(p, "pool_max"),
			        "pool_min_idle %u is more than pool_max %u in %s", b->pool_min_idle,
			        b->pool_max, p->label);
			return -1;
		}
		if (b->send_proxy != CFG_SEND_PROXY_NO && send_proxy_check(p, b) < 0)
			return -1;
		/* One without the other can only be a mistake. */
		if ((b->master_user == NULL) != (b->master_password == NULL)) {
			set_err(p, p->sec_line, "missing %s in %s (%s is set)",
			        b->master_user == NULL ? "master_user" : "master_password",
			        p->label,
			        b->master_user == NULL ? "master_password" : "master_user");
			return -1;
		}
		break;
	case SEC_REDIS:
		if (check_redis(p) < 0)
			return -1;
		break;
	case SEC_NONE:
	case SEC_ROUTING:
	case SEC_COUNT:
		break;
	}
	p->kind = SEC_NONE;
	return 0;
}

static int add_listen(struct parser *p, const char *name)
{
	struct cfg *c = p->cfg;
	struct cfg_listen *l;

	for (size_t i = 0; i < c->nlistens; i++) {
		if (strcmp(c->listens[i].name, name) == 0) {
			set_err(p, p->line, "duplicate section [listen %s] (first at line %d)",
			        name, c->listens[i].line);
			return -1;
		}
	}
	l = realloc(c->listens, (c->nlistens + 1) * sizeof(*l));
	if (l == NULL) {
		set_err(p, p->line, "out of memory");
		return -1;
	}
	c->listens = l;
	l = &c->listens[c->nlistens];
	memset(l, 0, sizeof(*l));
	snprintf(l->name, sizeof(l->name), "%s", name);
	l->tls = CFG_TLS_NONE;
	l->line = p->line;
	p->idx = c->nlistens++;
	return 0;
}

static int add_backend(struct parser *p, const char *name)
{
	struct cfg *c = p->cfg;
	struct cfg_backend *b;

	for (size_t i = 0; i < c->nbackends; i++) {
		if (strcmp(c->backends[i].name, name) == 0) {
			set_err(p, p->line, "duplicate section [backend %s] (first at line %d)",
			        name, c->backends[i].line);
			return -1;
		}
	}
	b = realloc(c->backends, (c->nbackends + 1) * sizeof(*b));
	if (b == NULL) {
		set_err(p, p->line, "out of memory");
		return -1;
	}
	c->backends = b;
	b = &c->backends[c->nbackends];
	memset(b, 0, sizeof(*b));
	snprintf(b->name, sizeof(b->name), "%s", name);
	b->tls = CFG_TLS_NONE;
	b->pool_min_idle = 0;
	b->pool_max = 5000;
	b->weight = 1;
	b->reuse_ttl = 300;
	b->pool_wait = 10;
	b->pool_idle_ttl = 60;
	b->unauthenticate = true;
	b->connect_timeout = 10;
	b->command_timeout = 30;
	b->watch_refresh = 25 * 60;
	b->forward_id = true;
	memcpy(b->master_separator, "*", 2);
	b->check_interval = 5;
	b->check_timeout = 3;
	b->check_rise = 2;
	b->check_fall = 3;
	b->line = p->line;
	p->idx = c->nbackends++;
	return 0;
}

/* [kind] or [kind name]: close the open section, then open this one. */
static int parse_header(struct parser *p, char *s)
{
	enum sec_kind kind = SEC_NONE;
	char *end, *name, *rest;

	/*
	 * Whatever this header turns out to be, the previous section ends
	 * here, and its problems come first: they are on earlier lines.
	 */
	if (close_section(p) < 0)
		return -1;
	end = strchr(s, ']');
	if (end == NULL) {
		set_err(p, p->line, "missing ']' in section header");
		return -1;
	}
	*end = '\0';
	trim_end(s);
	rest = skip_space(end + 1);
	if (*rest != '\0' && *rest != '#' && *rest != ';') {
		set_err(p, p->line, "unexpected text after ']'");
		return -1;
	}
	/* Split "kind name" in place; s + 1 skips the '['. */
	s = skip_space(s + 1);
	name = s + strcspn(s, " \t");
	if (*name != '\0') {
		*name++ = '\0';
		name = skip_space(name);
		rest = name + strcspn(name, " \t");
		if (*rest != '\0') {
			set_err(p, p->line, "expected [kind] or [kind name] in section header");
			return -1;
		}
	}
	if (*s == '\0') {
		set_err(p, p->line, "empty section header");
		return -1;
	}
	for (int i = SEC_NONE + 1; i < SEC_COUNT; i++) {
		if (strcmp(s, sec_defs[i].kind) == 0)
			kind = (enum sec_kind)i;
	}
	if (kind == SEC_NONE) {
		set_err(p, p->line, "unknown section kind '%s'", s);
		return -1;
	}
	if (sec_defs[kind].named && *name == '\0') {
		set_err(p, p->line, "[%s] needs a name", s);
		return -1;
	}
	if (!sec_defs[kind].named && *name != '\0') {
		set_err(p, p->line, "[%s] takes no name", s);
		return -1;
	}
	if (sec_defs[kind].named && !valid_name(name)) {
		set_err(p, p->line, "bad section name '%s' (1..%d characters of A-Z a-z 0-9 _ . -)",
		        name, CFG_NAME_MAX - 1);
		return -1;
	}
	if (kind == SEC_LISTEN) {
		if (add_listen(p, name) < 0)
			return -1;
	} else if (kind == SEC_BACKEND) {
		if (add_backend(p, name) < 0)
			return -1;
	} else {
		if (p->single_line[kind] != 0) {
			set_err(p, p->line, "duplicate section [%s] (first at line %d)", s,
			        p->single_line[kind]);
			return -1;
		}
		p->single_line[kind] = p->line;
		if (kind == SEC_REDIS)
			p->cfg->has_redis = true;
	}
	p->kind = kind;
	p->sec_line = p->line;
	memset(p->key_line, 0, sizeof(p->key_line));
	if (*name != '\0')
		snprintf(p->label, sizeof(p->label), "[%s %s]", s, name);
	else
		snprintf(p->label, sizeof(p->label), "[%s]", s);
	return 0;
}

static int parse_line(struct parser *p, char *s)
{
	s = skip_space(s);
	trim_end(s);
	if (*s == '\0' || *s == '#' || *s == ';')
		return 0;
	if (*s == '[')
		return parse_header(p, s);
	return parse_key(p, s);
}

/* "host" of a backend's "host:port" or "[v6]:port", for tls_name. */
static char *host_of(const struct cfg_addr *a)
{
	const char *t = a->text;
	const char *end;

	if (t[0] == '[') {
		end = strchr(t, ']');
		t++;
	} else {
		end = strrchr(t, ':');
	}
	if (end == NULL)
		return strdup(t);
	return strndup(t, (size_t)(end - t));
}

/* *dst = a copy of src unless dst was set; *line likewise. 0, or -1 out of memory. */
static int inherit_one(char **dst, int *line, const char *src, int src_line)
{
	if (*dst != NULL || src == NULL)
		return 0;
	*dst = strdup(src);
	if (*dst == NULL)
		return -1;
	*line = src_line;
	return 0;
}

/* A section's unset TLS policy keys take [imapmux]'s values. */
static int inherit_policy(struct cfg_tls_policy *tp, const struct cfg_tls_policy *from)
{
	if (inherit_one(&tp->ciphers, &tp->ciphers_line, from->ciphers, from->ciphers_line) < 0 ||
	    inherit_one(&tp->ciphersuites, &tp->ciphersuites_line, from->ciphersuites,
	                from->ciphersuites_line) < 0 ||
	    inherit_one(&tp->curves, &tp->curves_line, from->curves, from->curves_line) < 0)
		return -1;
	return 0;
}

/* The checks that need the whole file. */
static int check_whole(struct parser *p)
{
	struct cfg *c = p->cfg;

	if (c->nlistens == 0) {
		set_err(p, 0, "no [listen] section");
		return -1;
	}
	if (c->nbackends == 0) {
		set_err(p, 0, "no [backend] section");
		return -1;
	}
	if (c->group != NULL && c->user == NULL) {
		set_err(p, 0, "group = %s needs a user = in [imapmux]", c->group);
		return -1;
	}
	for (size_t i = 0; i < c->nlistens; i++) {
		struct cfg_listen *l = &c->listens[i];
		const char *bad;
		size_t blen;

		if (l->proxy_trusted == NULL)
			continue;
		if (!l->proxy_protocol) {
			set_err(p, l->line, "[listen %s]: proxy_trusted needs proxy_protocol = yes",
			        l->name);
			return -1;
		}
		if (cidr_list_parse(l->proxy_trusted, &l->trusted, &l->ntrusted, &bad, &blen) < 0) {
			if (bad == NULL)
				set_err(p, l->line, "out of memory");
			else
				set_err(p, l->line,
				        "[listen %s]: bad address or range '%.*s' in proxy_trusted",
				        l->name, (int)blen, bad);
			return -1;
		}
	}
	if (c->fallback == CFG_FALLBACK_BACKEND &&
	    cfg_backend_find(c, c->fallback_backend) == NULL) {
		set_err(p, p->fallback_line, "unknown backend '%s' for fallback",
		        c->fallback_backend);
		return -1;
	}
	if (c->lookup == CFG_LOOKUP_STATIC && c->fallback == CFG_FALLBACK_DENY) {
		set_err(p, p->fallback_line,
		        "fallback = deny with lookup = static would refuse every login");
		return -1;
	}
	if (c->lookup == CFG_LOOKUP_REDIS && !c->has_redis) {
		set_err(p, p->lookup_line, "lookup = redis needs a [redis] section");
		return -1;
	}
	if (c->auth == CFG_AUTH_REDIS && c->oauth) {
		set_err(p, p->auth_line,
		        "oauth = yes needs auth = backend: imapmux cannot check a bearer token");
		return -1;
	}
	if (c->auth == CFG_AUTH_REDIS && !c->has_redis) {
		set_err(p, p->auth_line, "auth = redis needs a [redis] section");
		return -1;
	}
	/* [imapmux] may come after the sections: inherit only now. */
	for (size_t i = 0; i < c->nlistens; i++) {
		if (inherit_policy(&c->listens[i].tls_policy, &c->tls_policy) < 0) {
			set_err(p, 0, "out of memory");
			return -1;
		}
	}
	for (size_t i = 0; i < c->nbackends; i++) {
		if (inherit_policy(&c->backends[i].tls_policy, &c->tls_policy) < 0) {
			set_err(p, 0, "out of memory");
			return -1;
		}
	}
	for (size_t i = 0; i < c->nbackends; i++) {
		struct cfg_backend *b = &c->backends[i];

		/* The proxy logs in as the user with these; it never sees a user password. */
		if (c->auth == CFG_AUTH_REDIS && b->master_user == NULL) {
			set_err(
			    p, b->line,
			    "auth = redis needs master_user and master_password in [backend %s]",
			    b->name);
			return -1;
		}
		/* The events come through Redis: without it nothing would wake. */
		if (b->watch == CFG_WATCH_EVENTS && !c->has_redis) {
			set_err(p, b->line, "watch = events needs a [redis] section ([backend %s])",
			        b->name);
			return -1;
		}
		if (b->username_case == CFG_UCASE_INHERIT)
			b->username_case = c->username_case;
		if (b->tls_name == NULL) {
			b->tls_name = host_of(&b->addr);
			if (b->tls_name == NULL) {
				set_err(p, 0, "out of memory");
				return -1;
			}
		}
	}
	return 0;
}

int cfg_load(const char *path, struct cfg **cfg_r, char *err, size_t errlen)
{
	struct parser p;
	FILE *f = NULL;
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	struct stat st;

	*cfg_r = NULL;
	memset(&p, 0, sizeof(p));
	p.path = path;
	p.err = err;
	p.errlen = errlen;
	if (err != NULL && errlen > 0)
		err[0] = '\0';

	f = fopen(path, "r");
	if (f == NULL) {
		set_err(&p, 0, "cannot open: %s", strerror(errno));
		goto fail;
	}
	/* fopen() opens a directory happily; reading it fails less clearly. */
	if (fstat(fileno(f), &st) == 0 && S_ISDIR(st.st_mode)) {
		set_err(&p, 0, "cannot open: %s", strerror(EISDIR));
		goto fail;
	}
	if (cfg_new(&p) < 0)
		goto fail;
	errno = 0;
	while ((n = getline(&line, &cap, f)) >= 0) {
		p.line++;
		if (n > 0 && line[n - 1] == '\n')
			n--;
		if (n > 0 && line[n - 1] == '\r')
			n--;
		line[n] = '\0';
		if (n > CFG_LINE_MAX) {
			set_err(&p, p.line, "line too long (more than %d bytes)", CFG_LINE_MAX);
			goto fail;
		}
		if (memchr(line, '\0', (size_t)n) != NULL) {
			set_err(&p, p.line, "NUL byte in line");
			goto fail;
		}
		if (parse_line(&p, line) < 0)
			goto fail;
	}
	if (ferror(f)) {
		set_err(&p, 0, "read error: %s", strerror(errno));
		goto fail;
	}
	if (close_section(&p) < 0 || check_whole(&p) < 0)
		goto fail;
	fclose(f);
	/* The line buffer held passwords too. */
	explicit_bzero(line, cap);
	free(line);
	*cfg_r = p.cfg;
	return 0;
fail:
	if (f != NULL)
		fclose(f);
	if (line != NULL)
		explicit_bzero(line, cap);
	free(line);
	cfg_destroy(&p.cfg);
	return -1;
}
