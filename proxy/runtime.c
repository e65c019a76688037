/*
 * runtime — TLS contexts and the other things built once per configuration.
 *
 * TLS policy (both directions): TLS 1.2 or newer, no renegotiation, no
 * compression, forward-secret AEAD ciphers for TLS 1.2, the server's cipher
 * order. OpenSSL releases idle connection buffers (SSL_MODE_RELEASE_BUFFERS)
 * so that idle sessions cost little memory.
 */
#include "runtime.h"

#include <openssl/err.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define TLS12_CIPHERS "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20"

static void ssl_err(char *err, size_t errlen, const char *what, const char *file)
{
	unsigned long e = ERR_get_error();
	char reason[256];

	ERR_error_string_n(e, reason, sizeof(reason));
	snprintf(err, errlen, "%s %s: %s", what, file ? file : "", e ? reason : "failed");
	ERR_clear_error();
}

static SSL_CTX *ctx_common(const SSL_METHOD *m)
{
	SSL_CTX *ctx = SSL_CTX_new(m);

	if (ctx == NULL)
		return NULL;
	SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_NO_COMPRESSION |
	                             SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_TICKET |
	                             SSL_OP_IGNORE_UNEXPECTED_EOF);
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
	                          SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	if (SSL_CTX_set_cipher_list(ctx, TLS12_CIPHERS) != 1) {
		SSL_CTX_free(ctx);
		return NULL;
	}
	return ctx;
}

static SSL_CTX *server_ctx(const struct cfg_listen *l, char *err, size_t errlen)
{
	SSL_CTX *ctx = ctx_common(TLS_server_method());

	if (ctx == NULL) {
		ssl_err(err, errlen, "TLS context for listener", l->name);
		return NULL;
	}
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
	return ctx;
fail:
	SSL_CTX_free(ctx);
	return NULL;
}

static SSL_CTX *client_ctx(const struct cfg_backend *b, char *err, size_t errlen)
{
	SSL_CTX *ctx = ctx_common(TLS_client_method());

	if (ctx == NULL) {
		ssl_err(err, errlen, "TLS context for backend", b->name);
		return NULL;
	}
	if (b->ca != NULL) {
		if (SSL_CTX_load_verify_locations(ctx, b->ca, NULL) != 1) {
			ssl_err(err, errlen, "cannot load CA", b->ca);
			SSL_CTX_free(ctx);
			return NULL;
		}
		SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
	} else {
		SSL_CTX_set_verify(ctx, SSL_VERIFY_NONE, NULL);
	}
	return ctx;
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
	if (rt->listen_ctx == NULL || rt->backend_ctx == NULL || rt->backend_up == NULL) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	/* Optimistic: a fresh start must not refuse everyone before the first check. */
	for (size_t i = 0; i < cfg->nbackends; i++)
		atomic_init(&rt->backend_up[i], true);
	for (size_t i = 0; i < cfg->nlistens; i++) {
		if (cfg->listens[i].tls == CFG_TLS_NONE)
			continue;
		rt->listen_ctx[i] = server_ctx(&cfg->listens[i], err, errlen);
		if (rt->listen_ctx[i] == NULL)
			goto fail;
	}
	for (size_t i = 0; i < cfg->nbackends; i++) {
		if (cfg->backends[i].tls == CFG_TLS_NONE)
			continue;
		rt->backend_ctx[i] = client_ctx(&cfg->backends[i], err, errlen);
		if (rt->backend_ctx[i] == NULL)
			goto fail;
	}
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
	cfg_destroy(&rt->cfg);
	free(rt);
}

size_t runtime_backend_index(const struct runtime *rt, const struct cfg_backend *b)
{
	return (size_t)(b - rt->cfg->backends);
}

#define CAPS_BASE "IMAP4rev1 LITERAL+ ID ENABLE IDLE"

const char *runtime_preauth_caps(const struct cfg_listen *l, int tls_active)
{
	if (tls_active || l->allow_plaintext_auth) {
		if (l->tls == CFG_TLS_STARTTLS && !tls_active)
			return CAPS_BASE " STARTTLS SASL-IR AUTH=PLAIN";
		return CAPS_BASE " SASL-IR AUTH=PLAIN";
	}
	if (l->tls == CFG_TLS_STARTTLS)
		return CAPS_BASE " STARTTLS LOGINDISABLED";
	return CAPS_BASE " LOGINDISABLED";
}
