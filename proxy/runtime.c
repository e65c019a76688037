/*
 * runtime — TLS contexts and the other things built once per configuration.
 *
 * TLS policy, for every context in both directions:
 *   - TLS 1.2 or newer. The floor is raised to 1.2, never lowered, so that a
 *     stricter system-wide MinProtocol (openssl.cnf) stays in force.
 *   - No renegotiation (SSL_OP_NO_RENEGOTIATION: OpenSSL answers a TLS 1.2
 *     peer's renegotiation ClientHello with a no_renegotiation alert and
 *     ignores it, and never starts one). OpenSSL 3 servers refuse
 *     client-initiated renegotiation by default already, but openssl.cnf can
 *     turn it back on (Options = ClientRenegotiation); this option wins.
 *   - No compression. No session tickets, except TLS 1.3 tickets from the
 *     listeners with tls_tickets = yes (tktkeys.h: keys by epoch, shared
 *     through Redis by tickets.c); no session cache either way (a ticket
 *     carries its session).
 *   - Listeners: the server's cipher order.
 *   - ciphers, ciphersuites and curves from the section (or [imapmux]),
 *     else the defaults below.
 * OpenSSL releases idle connection buffers (SSL_MODE_RELEASE_BUFFERS) so
 * that idle sessions cost little memory.
 *
 * Checking the lists: OpenSSL is lenient where a typo should stop the
 * start-up. SSL_CTX_set_cipher_list and SSL_CTX_set_ciphersuites skip names
 * they do not know as long as one known name is left, so "NOPE:ECDHE+AESGCM"
 * would load as "ECDHE+AESGCM". Every name that adds ciphers is therefore
 * tried on its own first, and one that matches nothing is an error naming
 * the file, line, section and key (which is what `imapmux -t` prints and a
 * failed SIGHUP reload logs).
 */
#include "runtime.h"

#include <openssl/err.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tktkeys.h"
#include "tls13.h"

/*
 * Built-in defaults (README.md, "TLS policy", says why):
 *   ciphers      TLS 1.2 with ECDHE key exchange (forward secrecy) and AEAD
 *                only: AES-GCM and ChaCha20-Poly1305, RSA or ECDSA keys;
 *   ciphersuites not set: OpenSSL's TLS 1.3 default, all AEAD
 *                (TLS_AES_256_GCM_SHA384, TLS_CHACHA20_POLY1305_SHA256,
 *                TLS_AES_128_GCM_SHA256), or openssl.cnf's Ciphersuites;
 *   curves       X25519, P-256, P-384: what current clients and servers
 *                offer, without the finite-field groups (a client choosing
 *                ffdhe8192 costs the proxy far more than ECDHE), X448 or
 *                P-521.
 */
#define DEFAULT_CIPHERS "ECDHE+AESGCM:ECDHE+CHACHA20"
#define DEFAULT_CURVES  "X25519:P-256:P-384"

/* What SSL_CTX_set_cipher_list takes between names (OpenSSL's ITEM_SEP). */
#define CIPHER_SEPS ": ;,"

/* A single name in a list; longer ones are errors. */
#define LIST_NAME_MAX 128

static void ssl_err(char *err, size_t errlen, const char *what, const char *file)
{
	unsigned long e = ERR_get_error();
	char reason[256];

	ERR_error_string_n(e, reason, sizeof(reason));
	snprintf(err, errlen, "%s %s: %s", what, file ? file : "", e ? reason : "failed");
	ERR_clear_error();
}

/* OpenSSL's reason for the failure just seen, else fallback; clears the queue. */
static void ssl_why(char *why, size_t whylen, const char *name, const char *fallback)
{
	unsigned long e = ERR_peek_last_error();
	const char *r = e != 0 ? ERR_reason_error_string(e) : NULL;

	if (name != NULL)
		snprintf(why, whylen, "'%s': %s", name, r != NULL ? r : fallback);
	else
		snprintf(why, whylen, "%s", r != NULL ? r : fallback);
	ERR_clear_error();
}

/* Copy s[0..n) into name (LIST_NAME_MAX). 0, or -1 with why when too long. */
static int copy_name(char *name, const char *s, size_t n, char *why, size_t whylen)
{
	if (n >= LIST_NAME_MAX) {
		snprintf(why, whylen, "name '%.40s...' is too long", s);
		return -1;
	}
	memcpy(name, s, n);
	name[n] = '\0';
	return 0;
}

/*
 * ciphers: the TLS 1.2 list, OpenSSL cipher-string syntax. Elements that
 * add ciphers (no leading '!', '-' or '+') must each match at least one
 * cipher on their own; removals may match nothing ("!aNULL" in a list
 * written for an older OpenSSL is harmless). "@STRENGTH" and
 * "@SECLEVEL=n" are left to OpenSSL, which refuses unknown commands.
 * 0, or -1 with the reason in why.
 */
static int set_ciphers(SSL_CTX *ctx, const char *list, char *why, size_t whylen)
{
	char name[LIST_NAME_MAX];
	const char *s = list + strspn(list, CIPHER_SEPS);

	while (*s != '\0') {
		size_t n = strcspn(s, CIPHER_SEPS);
		size_t sel = strcspn(s, "@" CIPHER_SEPS); /* "DEFAULT@SECLEVEL=1" */

		if (sel > 0 && strchr("!-+", s[0]) == NULL) {
			if (copy_name(name, s, sel, why, whylen) < 0)
				return -1;
			ERR_clear_error();
			if (SSL_CTX_set_cipher_list(ctx, name) != 1) {
				if (ERR_GET_REASON(ERR_peek_last_error()) == SSL_R_NO_CIPHER_MATCH)
					snprintf(why, whylen, "'%s' matches no TLS 1.2 cipher%s",
					         name,
					         strncmp(name, "TLS_", 4) == 0
					             ? " (TLS 1.3 suites belong in ciphersuites)"
					             : "");
				else
					ssl_why(why, whylen, name, "not accepted");
				ERR_clear_error();
				return -1;
			}
		}
		s += n;
		s += strspn(s, CIPHER_SEPS);
	}
	ERR_clear_error();
	if (SSL_CTX_set_cipher_list(ctx, list) != 1) {
		ssl_why(why, whylen, NULL, "no usable cipher");
		return -1;
	}
	return 0;
}

/* Whether ctx's cipher list holds the TLS 1.3 suite called name. */
static bool has_tls13_suite(SSL_CTX *ctx, const char *name)
{
	STACK_OF(SSL_CIPHER) *sk = SSL_CTX_get_ciphers(ctx);

	for (int i = 0; i < sk_SSL_CIPHER_num(sk); i++) {
		const SSL_CIPHER *c = sk_SSL_CIPHER_value(sk, i);

		if (strcmp(SSL_CIPHER_get_version(c), "TLSv1.3") == 0 &&
		    strcmp(SSL_CIPHER_get_name(c), name) == 0)
			return true;
	}
	return false;
}

/*
 * ciphersuites: TLS 1.3 suite names separated by ':' (spaces around them
 * allowed, as OpenSSL allows). Each name is tried alone first and must be
 * a suite this OpenSSL knows. 0, or -1 with the reason in why.
 */
static int set_ciphersuites(SSL_CTX *ctx, const char *list, char *why, size_t whylen)
{
	char name[LIST_NAME_MAX];
	const char *s = list;

	for (;;) {
		size_t n;

		s += strspn(s, " \t");
		n = strcspn(s, ":");
		while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
			n--;
		if (n > 0) {
			if (copy_name(name, s, n, why, whylen) < 0)
				return -1;
			ERR_clear_error();
			if (SSL_CTX_set_ciphersuites(ctx, name) != 1 ||
			    !has_tls13_suite(ctx, name)) {
				ERR_clear_error();
				snprintf(why, whylen, "'%s' is not a TLS 1.3 ciphersuite%s", name,
				         strncmp(name, "TLS_", 4) != 0
				             ? " (TLS 1.2 ciphers belong in ciphers)"
				             : "");
				return -1;
			}
		}
		s = strchr(s, ':');
		if (s == NULL)
			break;
		s++;
	}
	ERR_clear_error();
	if (SSL_CTX_set_ciphersuites(ctx, list) != 1) {
		ssl_why(why, whylen, NULL, "no TLS 1.3 ciphersuite in the list");
		return -1;
	}
	return 0;
}

/*
 * curves: key-exchange groups separated by ':' (X25519, P-256, P-384,
 * X448, P-521, ffdhe2048, ...). OpenSSL refuses a list with an unknown or
 * repeated name but does not say which; each name is tried alone to find
 * out. 0, or -1 with the reason in why.
 */
static int set_curves(SSL_CTX *ctx, const char *list, char *why, size_t whylen)
{
	char name[LIST_NAME_MAX];
	const char *s = list;

	for (;;) {
		size_t n = strcspn(s, ":");

		if (copy_name(name, s, n, why, whylen) < 0)
			return -1;
		ERR_clear_error();
		if (name[strspn(name, " \t")] == '\0') {
			snprintf(why, whylen, "empty name in the list");
			return -1;
		}
		if (SSL_CTX_set1_groups_list(ctx, name) != 1) {
			snprintf(why, whylen, "unknown group '%s'", name);
			ERR_clear_error();
			return -1;
		}
		if (s[n] == '\0')
			break;
		s += n + 1;
	}
	ERR_clear_error();
	if (SSL_CTX_set1_groups_list(ctx, list) != 1) {
		ssl_why(
		    why, whylen, NULL,
		    "a group is listed twice (perhaps under two names, as P-256 and prime256v1)");
		return -1;
	}
	return 0;
}

/*
 * Apply one section's TLS policy to ctx: each key's value, or its built-in
 * default. path and label ("[listen imaps]") are for the message.
 * 0, or -1 with "file:line: bad KEY 'VALUE' in LABEL: reason" in err.
 */
static int apply_policy(SSL_CTX *ctx, const struct cfg_tls_policy *tp, const char *path,
                        const char *label, char *err, size_t errlen)
{
	const struct {
		const char *key;
		const char *value;
		int line;
		const char *dflt;
		int (*set)(SSL_CTX *, const char *, char *, size_t);
	} knobs[] = {
	    {"ciphers", tp->ciphers, tp->ciphers_line, DEFAULT_CIPHERS, set_ciphers},
	    {"ciphersuites", tp->ciphersuites, tp->ciphersuites_line, NULL, set_ciphersuites},
	    {"curves", tp->curves, tp->curves_line, DEFAULT_CURVES, set_curves},
	};
	char why[300];

	for (size_t i = 0; i < sizeof(knobs) / sizeof(knobs[0]); i++) {
		const char *v = knobs[i].value != NULL ? knobs[i].value : knobs[i].dflt;

		if (v == NULL || knobs[i].set(ctx, v, why, sizeof(why)) == 0)
			continue;
		if (knobs[i].value != NULL)
			snprintf(err, errlen, "%s:%d: bad %s '%s' in %s: %s", path, knobs[i].line,
			         knobs[i].key, v, label, why);
		else
			snprintf(err, errlen,
			         "%s: this OpenSSL refuses the default %s '%s' for %s: %s (set %s)",
			         path, knobs[i].key, v, label, why, knobs[i].key);
		return -1;
	}
	return 0;
}

static SSL_CTX *ctx_common(const SSL_METHOD *m)
{
	SSL_CTX *ctx = SSL_CTX_new(m);

	if (ctx == NULL)
		return NULL;
	/* 0 = no floor; anything from 1.2 up was set by openssl.cnf and stays. */
	if (SSL_CTX_get_min_proto_version(ctx) < TLS1_2_VERSION &&
	    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1) {
		SSL_CTX_free(ctx);
		return NULL;
	}
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
	                             SSL_OP_NO_TICKET | SSL_OP_IGNORE_UNEXPECTED_EOF);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
	                          SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	return ctx;
}

/*
 * Check a policy that builds no context of its own on a scratch one:
 * [imapmux]'s values, so that a bad one is reported at its own line and
 * section rather than at the first section inheriting it, and those of
 * tls = none sections, so that a typo waits for nobody to turn TLS on.
 * Nothing set: nothing to check. 0, or -1 with the message in err.
 */
static int check_policy_alone(const struct cfg *cfg, const struct cfg_tls_policy *tp,
                              const char *label, char *err, size_t errlen)
{
	SSL_CTX *ctx;
	int r;

	if (tp->ciphers == NULL && tp->ciphersuites == NULL && tp->curves == NULL)
		return 0;
	ctx = SSL_CTX_new(TLS_method());
	if (ctx == NULL) {
		ssl_err(err, errlen, "TLS context for", label);
		return -1;
	}
	r = apply_policy(ctx, tp, cfg->path, label, err, errlen);
	SSL_CTX_free(ctx);
	return r;
}

/* label: "[listen NAME]", for messages. */
static SSL_CTX *server_ctx(const struct cfg *cfg, const struct cfg_listen *l, const char *label,
                           char *err, size_t errlen)
{
	SSL_CTX *ctx = ctx_common(TLS_server_method());

	if (ctx == NULL) {
		ssl_err(err, errlen, "TLS context for listener", l->name);
		return NULL;
	}
	if (apply_policy(ctx, &l->tls_policy, cfg->path, label, err, errlen) < 0)
		goto fail;
	SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE);
	/* Secrets and record counts, so that a parked session can go on
	 * without its SSL object (conn_shed_tls); nothing is logged. */
	tls13_capture_install(ctx);
	if (SSL_CTX_use_certificate_chain_file(ctx, l->cert) != 1) {
		ssl_err(err, errlen, "cannot load certificate", l->cert);
		goto fail;
	}
	if (SSL_CTX_use_PrivateKey_file(ctx, l->key, SSL_FILETYPE_PEM) != 1) {
		ssl_err(err, errlen, "cannot load key", l->key);
		goto fail;
	}
	if (SSL_CTX_check_private_key(ctx) != 1) {
		ssl_err(err, errlen, "key does not match certificate", l->key);
		goto fail;
	}
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	if (cfg->tls_tickets) {
		struct tktkeys *k = runtime_tickets();

		if (k == NULL ||
		    tktkeys_install(ctx, k, l->name, (uint64_t)cfg->tls_ticket_lifetime) < 0) {
			ssl_err(err, errlen, "cannot set up session tickets for listener", l->name);
			goto fail;
		}
	} else {
		/* Else OpenSSL would still send TLS 1.3 clients two tickets
		 * (stateful ones, under SSL_OP_NO_TICKET) that no cache here
		 * could ever open. */
		SSL_CTX_set_num_tickets(ctx, 0);
	}
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

/* label: "[backend NAME]", for messages. */
static SSL_CTX *client_ctx(const struct cfg *cfg, const struct cfg_backend *b, const char *label,
                           char *err, size_t errlen)
{
	SSL_CTX *ctx = ctx_common(TLS_client_method());

	if (ctx == NULL) {
		ssl_err(err, errlen, "TLS context for backend", b->name);
		return NULL;
	}
	if (apply_policy(ctx, &b->tls_policy, cfg->path, label, err, errlen) < 0)
		goto fail;
	if (b->ca != NULL) {
		if (SSL_CTX_load_verify_locations(ctx, b->ca, NULL) != 1) {
			ssl_err(err, errlen, "cannot load CA", b->ca);
			goto fail;
		}
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	} else {
		SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	}
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

/* ---- backend slots ------------------------------------------------------- */

/* Written under slot_lock by runtime_new (the main thread), read by any
 * thread: a slot's name is complete before nslots counts it (release). */
static pthread_mutex_t slot_lock = PTHREAD_MUTEX_INITIALIZER;
static char slot_names[STATS_BACKENDS][CFG_NAME_MAX];
static atomic_bool slot_up[STATS_BACKENDS];
static atomic_uint nslots;

static unsigned slot_of(const char *name)
{
	unsigned n, slot = STATS_NO_SLOT;

	pthread_mutex_lock(&slot_lock);
	n = atomic_load_explicit(&nslots, memory_order_relaxed);
	for (unsigned i = 0; i < n && slot == STATS_NO_SLOT; i++) {
		if (strcmp(slot_names[i], name) == 0)
			slot = i;
	}
	if (slot == STATS_NO_SLOT && n < STATS_BACKENDS) {
		snprintf(slot_names[n], sizeof(slot_names[n]), "%s", name);
		atomic_store_explicit(&slot_up[n], true, memory_order_relaxed);
		atomic_store_explicit(&nslots, n + 1, memory_order_release);
		slot = n;
	}
	pthread_mutex_unlock(&slot_lock);
	return slot;
}

unsigned runtime_slots(void)
{
	return atomic_load_explicit(&nslots, memory_order_acquire);
}

const char *runtime_slot_name(unsigned slot)
{
	return slot < runtime_slots() ? slot_names[slot] : "";
}

bool runtime_slot_up(unsigned slot)
{
	return slot < STATS_BACKENDS && atomic_load_explicit(&slot_up[slot], memory_order_relaxed);
}

void runtime_set_backend_up(struct runtime *rt, size_t i, bool up)
{
	atomic_store_explicit(&rt->backend_up[i], up, memory_order_relaxed);
	if (rt->backend_slot[i] < STATS_BACKENDS)
		atomic_store_explicit(&slot_up[rt->backend_slot[i]], up, memory_order_relaxed);
}

/* ---- TLS ticket keys ----------------------------------------------------- */

/* One ring for the process, kept across reloads: a reload with the same
 * tls_ticket_lifetime keeps the keys, and tickets issued before it open. */
static pthread_once_t tickets_once = PTHREAD_ONCE_INIT;
static struct tktkeys tickets;
static bool tickets_ok;

static void tickets_make(void)
{
	tickets_ok = tktkeys_init(&tickets, 3600) == 0;
}

struct tktkeys *runtime_tickets(void)
{
	pthread_once(&tickets_once, tickets_make);
	return tickets_ok ? &tickets : NULL;
}

/* ---- the runtime in force ------------------------------------------------ */

/* One reference, swapped under cur_lock; readers take their own reference
 * under it, so a reload cannot free what a reader is rendering. */
static pthread_mutex_t cur_lock = PTHREAD_MUTEX_INITIALIZER;
static struct runtime *cur_rt;

void runtime_publish(struct runtime *rt)
{
	struct runtime *old;

	pthread_mutex_lock(&cur_lock);
	old = cur_rt;
	cur_rt = rt != NULL ? runtime_ref(rt) : NULL;
	pthread_mutex_unlock(&cur_lock);
	runtime_unref(&old);
}

struct runtime *runtime_current(void)
{
	struct runtime *rt;

	pthread_mutex_lock(&cur_lock);
	rt = cur_rt != NULL ? runtime_ref(cur_rt) : NULL;
	pthread_mutex_unlock(&cur_lock);
	return rt;
}

struct runtime *runtime_new(struct cfg *cfg, char *err, size_t errlen)
{
	struct runtime *rt = calloc(1, sizeof(*rt));

	if (rt == NULL) {
		snprintf(err, errlen, "out of memory");
		cfg_destroy(&cfg);
		return NULL;
	}
	atomic_init(&rt->refs, 1);
	rt->cfg = cfg;
	rt->listen_ctx = calloc(cfg->nlistens + 1, sizeof(SSL_CTX *));
	rt->backend_ctx = calloc(cfg->nbackends + 1, sizeof(SSL_CTX *));
	rt->backend_up = calloc(cfg->nbackends + 1, sizeof(atomic_bool));
	rt->backend_slot = calloc(cfg->nbackends + 1, sizeof(unsigned));
	if (rt->listen_ctx == NULL || rt->backend_ctx == NULL || rt->backend_up == NULL ||
	    rt->backend_slot == NULL) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	/* Optimistic: a fresh start must not refuse everyone before the first check. */
	for (size_t i = 0; i < cfg->nbackends; i++) {
		atomic_init(&rt->backend_up[i], true);
		rt->backend_slot[i] = slot_of(cfg->backends[i].name);
	}
	if (check_policy_alone(cfg, &cfg->tls_policy, "[imapmux]", err, errlen) < 0)
		goto fail;
	for (size_t i = 0; i < cfg->nlistens; i++) {
		const struct cfg_listen *l = &cfg->listens[i];
		char label[CFG_NAME_MAX + 16];

		snprintf(label, sizeof(label), "[listen %s]", l->name);
		if (l->tls != CFG_TLS_NONE) {
			rt->listen_ctx[i] = server_ctx(cfg, l, label, err, errlen);
			if (rt->listen_ctx[i] == NULL)
				goto fail;
		} else if (check_policy_alone(cfg, &l->tls_policy, label, err, errlen) < 0) {
			goto fail;
		}
	}
	for (size_t i = 0; i < cfg->nbackends; i++) {
		const struct cfg_backend *b = &cfg->backends[i];
		char label[CFG_NAME_MAX + 16];

		snprintf(label, sizeof(label), "[backend %s]", b->name);
		if (b->tls != CFG_TLS_NONE) {
			rt->backend_ctx[i] = client_ctx(cfg, b, label, err, errlen);
			if (rt->backend_ctx[i] == NULL)
				goto fail;
		} else if (check_policy_alone(cfg, &b->tls_policy, label, err, errlen) < 0) {
			goto fail;
		}
	}
	if (cfg->tls_tickets && runtime_tickets() != NULL)
		tktkeys_set_lifetime(runtime_tickets(), (uint64_t)cfg->tls_ticket_lifetime);
	return rt;
fail:
	runtime_unref(&rt);
	return NULL;
}

struct runtime *runtime_ref(struct runtime *rt)
{
	atomic_fetch_add(&rt->refs, 1);
	return rt;
}

void runtime_unref(struct runtime **rtp)
{
	struct runtime *rt = *rtp;

	*rtp = NULL;
	if (rt == NULL || atomic_fetch_sub(&rt->refs, 1) != 1)
		return;
	if (rt->listen_ctx != NULL) {
		for (size_t i = 0; i < rt->cfg->nlistens; i++)
			SSL_CTX_free(rt->listen_ctx[i]);
	}
	if (rt->backend_ctx != NULL) {
		for (size_t i = 0; i < rt->cfg->nbackends; i++)
			SSL_CTX_free(rt->backend_ctx[i]);
	}
	free(rt->listen_ctx);
	free(rt->backend_ctx);
	free(rt->backend_up);
	free(rt->backend_slot);
	cfg_destroy(&rt->cfg);
	free(rt);
}

size_t runtime_backend_index(const struct runtime *rt, const struct cfg_backend *b)
{
	return (size_t)(b - rt->cfg->backends);
}

#define CAPS_BASE "IMAP4rev1 LITERAL+ ID ENABLE IDLE"

#define CAPS_AUTH  "SASL-IR AUTH=PLAIN AUTH=LOGIN"
#define CAPS_OAUTH " AUTH=XOAUTH2 AUTH=OAUTHBEARER"

const char *runtime_preauth_caps(const struct cfg_listen *l, int tls_active, bool oauth)
{
	static const char *const offer[2][2] = {
	    {CAPS_BASE " " CAPS_AUTH, CAPS_BASE " " CAPS_AUTH CAPS_OAUTH},
	    {CAPS_BASE " STARTTLS " CAPS_AUTH, CAPS_BASE " STARTTLS " CAPS_AUTH CAPS_OAUTH},
	};

	if (tls_active || l->allow_plaintext_auth)
		return offer[l->tls == CFG_TLS_STARTTLS && !tls_active][oauth];
	if (l->tls == CFG_TLS_STARTTLS)
		return CAPS_BASE " STARTTLS LOGINDISABLED";
	return CAPS_BASE " LOGINDISABLED";
}
