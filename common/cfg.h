/*
 * cfg — proxy.conf: an INI file read into a typed, validated struct cfg.
 *
 *   [section] or [section name], key = value, '#' or ';' comments (whole
 *   lines, or after whitespace at the end of a value), blank lines.
 *   Unknown sections and keys, duplicate keys and bad values are errors,
 *   reported as "file:line: reason". Durations are seconds unless suffixed
 *   ms, s, m or h. Booleans: yes/no, true/false, on/off, 1/0.
 *   Addresses (host:port, [v6]:port, unix:/path) are resolved here, at load
 *   time, so that nothing resolves names on the event loops.
 *
 * The struct is immutable once loaded; a reload builds a new one.
 */
#ifndef IMAPMUX_CFG_H
#define IMAPMUX_CFG_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "cidr.h"
#include "log.h"

#define CFG_NAME_MAX 64

/* master_separator: 1..CFG_SEPARATOR_MAX-1 bytes, plus the NUL. */
#define CFG_SEPARATOR_MAX 8

enum cfg_tls {
	CFG_TLS_NONE,
	CFG_TLS_STARTTLS,
	CFG_TLS_IMPLICIT,
};

enum cfg_auth {
	CFG_AUTH_BACKEND, /* the backend verifies the client's credentials */
	CFG_AUTH_REDIS,   /* crypt(3) hash from Redis, then master login */
};

/* How a user name is compared: ASCII case folded (Dovecot's
 * auth_username_format = %Lu) or byte for byte. */
enum cfg_ucase {
	CFG_UCASE_INHERIT, /* [backend]: not set, [imapmux]'s applies (resolved at load) */
	CFG_UCASE_FOLD,
	CFG_UCASE_KEEP,
};

/* [redis] prefix: at most this many bytes (every key is built from it). */
#define CFG_REDIS_PREFIX_MAX 64

/* [redis] sentinels: at most this many addresses. */
#define CFG_SENTINELS_MAX 16

/* [redis] master_name and username: at most this many bytes. */
#define CFG_REDIS_NAME_MAX 128

enum cfg_lookup {
	CFG_LOOKUP_STATIC,
	CFG_LOOKUP_REDIS,
};

enum cfg_fallback {
	CFG_FALLBACK_HASH,
	CFG_FALLBACK_DENY,
	CFG_FALLBACK_BACKEND, /* fallback_backend names it */
};

/* [backend] watch: how parked sessions learn that their mailbox changed. */
enum cfg_watch {
	CFG_WATCH_AUTO,   /* notify where the backend offers NOTIFY, else idle */
	CFG_WATCH_NOTIFY, /* one NOTIFY connection per user (RFC 5465) */
	CFG_WATCH_IDLE,   /* one IDLE connection per user and mailbox */
	CFG_WATCH_EVENTS, /* no watcher: `mbox USER MAILBOX` from the Redis events channel */
};

enum cfg_send_proxy {
	CFG_SEND_PROXY_NO,
	CFG_SEND_PROXY_V1, /* PROXY protocol header, text */
	CFG_SEND_PROXY_V2, /* ... binary */
};

struct cfg_addr {
	struct sockaddr_storage ss; /* AF_INET, AF_INET6 or AF_UNIX */
	socklen_t len;
	char text[300]; /* as written in the file, for logs */
};

/* A comma-separated list of host:port addresses (owned array). */
struct cfg_addr_list {
	struct cfg_addr *addrs;
	size_t n;
};

/*
 * The TLS policy knobs of one side of a connection. Each string is NULL when
 * not set: a [listen] or [backend] section then inherits the value of
 * [imapmux] (copied in at load time, with its line), and when that is unset
 * too the TLS code applies its built-in default (proxy/runtime.c). The
 * values are OpenSSL list syntax and are checked by the TLS code, not here:
 * cfg only records where each came from, for "file:line: reason" messages.
 */
struct cfg_tls_policy {
	char *ciphers;      /* ciphers = TLS 1.2 cipher list (SSL_CTX_set_cipher_list) */
	char *ciphersuites; /* ciphersuites = TLS 1.3 suites (SSL_CTX_set_ciphersuites) */
	char *curves;       /* curves = key-exchange groups (SSL_CTX_set1_groups_list) */
	int ciphers_line;   /* line each value was set on; 0 = not set anywhere */
	int ciphersuites_line;
	int curves_line;
};

struct cfg_listen {
	char name[CFG_NAME_MAX];
	struct cfg_addr addr; /* address = (required) */
	enum cfg_tls tls;     /* tls = implicit | starttls | none (default none) */
	char *cert;           /* cert = PEM chain; required unless tls = none */
	char *key;            /* key = PEM key; required unless tls = none */
	bool proxy_protocol;  /* proxy_protocol = no */
	char *proxy_trusted;  /* proxy_trusted = CIDR, ...: PROXY headers only from
	                                   * there (NULL: from anywhere) */
	struct cidr *trusted; /* ... parsed */
	size_t ntrusted;
	bool allow_plaintext_auth;        /* allow_plaintext_auth = no */
	struct cfg_tls_policy tls_policy; /* ciphers, ciphersuites, curves toward clients */
	int line;                         /* line of the section header */
};

struct cfg_backend {
	char name[CFG_NAME_MAX];
	struct cfg_addr addr; /* address = (required) */
	enum cfg_tls tls;     /* tls = none | starttls | implicit (default none) */
	char *ca; /* ca = PEM bundle: verify the backend's certificate; NULL = no verification */
	char *
	    tls_name; /* tls_name = name for SNI and certificate check (default: the host of address) */
	char *master_user;      /* master_user = (optional) */
	char *master_password;  /* master_password = (optional) */
	unsigned pool_min_idle; /* pool_min_idle = 0 */
	unsigned pool_max;      /* pool_max = 5000 */
	double reuse_ttl;       /* reuse_ttl = 300s: keep a logged-out session for the same
	                         * user and credentials this long; 0 = never reuse */
	bool unauthenticate;    /* unauthenticate = yes: where the backend offers UNAUTHENTICATE
	                         * (RFC 8437), a logged-out session goes back to the shared
	                         * pool through it instead of the per-user reuse cache */
	double pool_wait;       /* pool_wait = 10s: a login waits this long for a connection
	                         * when pool_max are in use, then NO [UNAVAILABLE] */
	double pool_idle_ttl;   /* pool_idle_ttl = 60s: an idle pooled connection (greeted, not
	                         * logged in) is replaced after this long */
	unsigned weight;        /* weight = 1 (1..1000), for hashing */
	double connect_timeout; /* connect_timeout = 10s: TCP connect, TLS, greeting */
	double
	    command_timeout; /* command_timeout = 30s: the proxy's own commands (login, CAPABILITY) */
	/* master_separator = "*": joins user and master_user in a master login
	 * (Dovecot's auth_master_user_separator); 1..7 of printable ASCII, no space */
	char master_separator[CFG_SEPARATOR_MAX];
	double check_interval; /* check_interval = 5s: between probes; 0 = none, always up */
	double check_timeout;  /* check_timeout = 3s: one whole probe, connect to LOGOUT */
	unsigned check_rise;   /* check_rise = 2 (1..100): successes in a row to be up again */
	unsigned check_fall;   /* check_fall = 3 (1..100): failures in a row to be down */
	struct cfg_tls_policy tls_policy; /* ciphers, ciphersuites, curves toward the backend */
	enum cfg_ucase username_case;     /* username_case = [imapmux]'s: fold sends the user name
	                                   * ASCII-lowercased and keys kept sessions by it; keep
	                                   * sends it as typed (never CFG_UCASE_INHERIT once loaded) */
	enum cfg_watch watch;             /* watch = auto | notify | idle | events */
	bool forward_id;                  /* forward_id = yes: ID (x-originating-ip ...) before
	                                   * each login made for a client */
	enum cfg_send_proxy send_proxy;   /* send_proxy = no | v1 | v2: a PROXY header first on
	                                   * every connection (needs a connection per client) */
	double watch_refresh;             /* watch_refresh = 25m (at most 29m): a watcher's IDLE
	                                   * is ended and begun again this often */
	int line;
};

struct cfg {
	char *path;

	/* [imapmux] */
	unsigned workers;           /* workers = 2; "auto" = 0 here, meaning one per core */
	enum log_level log_level;   /* log_level = info */
	enum log_format log_format; /* log_format = text */
	enum log_target log_to;     /* log = stderr */
	char *log_socket;           /* log_socket = /dev/log (NULL: that) */
	bool has_stats;             /* stats_listen set */
	struct cfg_addr stats_listen;
	enum cfg_auth auth;     /* auth = backend */
	double park_idle_after; /* park_idle_after = 30; 0 = never */
	double park_keepalive;  /* park_keepalive = 2m: "* OK Still here" to parked IDLE */
	bool reuseport;   /* reuseport = no: share the listeners' ports with other processes */
	bool oauth;       /* oauth = yes: AUTHENTICATE XOAUTH2 / OAUTHBEARER passed to backends */
	bool compress;    /* compress = yes: COMPRESS=DEFLATE (RFC 4978) offered to logged-in
	                 * clients, terminated in imapmux (backends stay uncompressed) */
	bool tls_tickets; /* tls_tickets = yes: TLS 1.3 session tickets (resumption) on every
	                   * TLS listener, keys rotating every tls_ticket_lifetime, shared
	                   * through [redis] when there is one */
	double tls_ticket_lifetime; /* tls_ticket_lifetime = 1h (at most 7d) */
	char *user;  /* user = NAME: run as NAME once the sockets are bound (NULL: stay) */
	char *group; /* group = NAME: ... with this group (default: user's own) */
	double preauth_timeout;   /* preauth_timeout = 60 */
	double idle_timeout;      /* idle_timeout = 1800 */
	double shutdown_timeout;  /* shutdown_timeout = 30 */
	unsigned auth_fail_limit; /* auth_fail_limit = 10 (0..1000000): brute-force limit on
	                           * failed logins per auth_fail_window; 0 = no limit */
	double auth_fail_window;  /* auth_fail_window = 5m: the window those are counted in */
	double auth_fail_delay;   /* auth_fail_delay = 1s (0..60s): before answering a failure */
	unsigned auth_threads;    /* auth_threads = 2 (1..64): threads verifying password hashes */
	unsigned max_connections; /* max_connections = auto (stored as 0: half the open-files
	                           * limit less 256): client connections of the instance */
	unsigned max_connections_per_ip;  /* max_connections_per_ip = 0: per client address
	                                  * (after PROXY); 0 = no limit */
	unsigned max_line_length;         /* max_line_length = 65536 (1024..16M): one command line
	                                  * after login (literals not counted) */
	enum cfg_ucase username_case;     /* username_case = fold | keep: how imapmux identifies a
	                                   * user (brute-force counts, Redis keys, kick, logs) */
	unsigned ipv6_prefix;             /* ipv6_prefix = 64 (1..128): IPv6 clients are counted
	                                   * per prefix of this length (per-address connection
	                                   * limit, brute-force counts) */
	struct cfg_tls_policy tls_policy; /* ciphers, ciphersuites, curves: defaults for
	                                   * every [listen] and [backend] section */

	/* [redis] */
	bool has_redis; /* the section is present */
	/* address = 127.0.0.1:6379 | unix:/path (not with sentinels) */
	struct cfg_addr redis_addr;
	/* sentinels = host:port, ...: the Redis Sentinels asked for the master
	 * (n = 0: not set, address is the server) */
	struct cfg_addr_list redis_sentinels;
	/* master_name = the master's name at the sentinels (needed with, and
	 * only with, sentinels) */
	char *redis_master_name;
	char *redis_prefix; /* prefix = imapmux: (at most CFG_REDIS_PREFIX_MAX bytes) */
	/* username = (optional) Redis 6 ACL user, AUTH USER PASSWORD; needs password */
	char *redis_username;
	char *redis_password; /* password = (optional) */
	unsigned redis_db;    /* db = 0 */
	double redis_timeout; /* timeout = 2s: deadline of every Redis command, connection
	                       * attempt and question to a sentinel */

	/* [routing] */
	enum cfg_lookup lookup;     /* lookup = static */
	enum cfg_fallback fallback; /* fallback = hash | deny | NAME */
	char fallback_backend[CFG_NAME_MAX];
	double cache_ttl; /* cache_ttl = 60 */

	struct cfg_listen *listens;
	size_t nlistens;
	struct cfg_backend *backends;
	size_t nbackends;
};

/*
 * Read and validate the file at path. Returns 0 with *cfg_r set (free with
 * cfg_destroy), or -1 with "file:line: reason" in err (line 0 when the
 * problem is not on one line, e.g. "file: no [listen] section").
 * Cross-checks: at least one listener and one backend; section names unique
 * per kind; fallback NAME names a backend; lookup = static needs fallback =
 * NAME or hash; lookup = redis or auth = redis need [redis]; [redis]
 * sentinels and master_name come together and exclude address; username
 * needs password; auth = redis
 * needs master_user and master_password on every backend; a TLS listener
 * needs cert and key; the files named must be readable; master_user and
 * master_password come together; pool_min_idle <= pool_max.
 * A [listen] or [backend] section that leaves ciphers, ciphersuites or
 * curves unset gets [imapmux]'s value (a copy, with [imapmux]'s line).
 * A backend's tls_name is never NULL once loaded: when the file sets none,
 * it is the host part of address (a name or an IP literal).
 */
__attribute__((warn_unused_result)) int cfg_load(const char *path, struct cfg **cfg_r, char *err,
                                                 size_t errlen);

/*
 * Parse pieces, exposed for unit tests and reuse. Each returns 0 or -1 and
 * writes its output only on success.
 * Duration: digits with an optional fraction ("1.5"), then "", s, ms, m or
 * h; no sign, no space; at most 365 days.
 * Bool: yes/no, true/false, on/off, 1/0, in any case.
 * Address: host:port, [v6]:port or (if allow_unix) unix:/path; a host
 * that is not a literal is resolved with getaddrinfo, which blocks.
 */
__attribute__((warn_unused_result)) int cfg_parse_duration(const char *s, double *secs_r);
__attribute__((warn_unused_result)) int cfg_parse_bool(const char *s, bool *b_r);
__attribute__((warn_unused_result)) int cfg_parse_addr(const char *s, bool allow_unix,
                                                       struct cfg_addr *a_r);

/* Find a backend by name; NULL if none. */
const struct cfg_backend *cfg_backend_find(const struct cfg *cfg, const char *name);

void cfg_destroy(struct cfg **cfgp);

#endif
