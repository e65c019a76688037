/*
 * tls13 — see tls13.h.
 *
 * Nonce (RFC 8446 5.3): the 64-bit sequence number, big-endian, left-padded
 * to the IV's 12 bytes and XORed with the IV. Additional data (5.2): the
 * record header, whose length counts the ciphertext and the tag.
 */
#include "tls13.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <string.h>

static const EVP_MD *suite_md(uint16_t suite)
{
	return suite == 0x1302 ? EVP_sha384() : EVP_sha256();
}

static const EVP_CIPHER *suite_cipher(uint16_t suite)
{
	switch (suite) {
	case 0x1301:
		return EVP_aes_128_gcm();
	case 0x1302:
		return EVP_aes_256_gcm();
	case 0x1303:
		return EVP_chacha20_poly1305();
	default:
		return NULL;
	}
}

int tls13_expand_label(const struct tls13 *t, const uint8_t *secret, const char *label,
                       uint8_t *out, size_t out_len)
{
	uint8_t info[2 + 1 + 6 + 255 + 1 + 1], md[EVP_MAX_MD_SIZE];
	size_t ll = strlen(label), n = 0;
	unsigned mdlen = 0;

	if (out_len > t->hlen || ll > 255 - 6)
		return -1;
	/* struct HkdfLabel { uint16 length; opaque label<7..255>;
	 * opaque context<0..255>; } and HKDF-Expand's counter byte: one
	 * block is enough, every output here is at most Hash.length. */
	info[n++] = (uint8_t)(out_len >> 8);
	info[n++] = (uint8_t)out_len;
	info[n++] = (uint8_t)(6 + ll);
	memcpy(info + n, "tls13 ", 6);
	n += 6;
	memcpy(info + n, label, ll);
	n += ll;
	info[n++] = 0; /* empty context */
	info[n++] = 1; /* T(1) */
	if (HMAC(suite_md(t->suite), secret, t->hlen, info, n, md, &mdlen) == NULL ||
	    mdlen < out_len) {
		OPENSSL_cleanse(md, sizeof(md));
		return -1;
	}
	memcpy(out, md, out_len);
	OPENSSL_cleanse(md, sizeof(md));
	return 0;
}

/* Key and IV of d from its secret. */
static int dir_keys(const struct tls13 *t, struct tls13_dir *d)
{
	if (tls13_expand_label(t, d->secret, "key", d->key, t->klen) < 0 ||
	    tls13_expand_label(t, d->secret, "iv", d->iv, sizeof(d->iv)) < 0)
		return -1;
	return 0;
}

int tls13_init(struct tls13 *t, uint16_t suite, const uint8_t *rsecret, const uint8_t *wsecret,
               size_t hlen, uint64_t rseq, uint64_t wseq)
{
	const EVP_CIPHER *c = suite_cipher(suite);

	memset(t, 0, sizeof(*t));
	if (c == NULL || hlen != (size_t)EVP_MD_get_size(suite_md(suite)) ||
	    hlen > TLS13_SECRET_MAX || EVP_CIPHER_get_key_length(c) > (int)sizeof(t->rd.key))
		return -1;
	t->suite = suite;
	t->max_plain = TLS13_MAX_PLAIN;
	t->hlen = (uint8_t)hlen;
	t->klen = (uint8_t)EVP_CIPHER_get_key_length(c);
	memcpy(t->rd.secret, rsecret, hlen);
	memcpy(t->wr.secret, wsecret, hlen);
	t->rd.seq = rseq;
	t->wr.seq = wseq;
	if (dir_keys(t, &t->rd) < 0 || dir_keys(t, &t->wr) < 0) {
		tls13_wipe(t);
		return -1;
	}
	return 0;
}

static void nonce(const struct tls13_dir *d, uint8_t out[12])
{
	memcpy(out, d->iv, 12);
	for (int i = 0; i < 8; i++)
		out[11 - i] ^= (uint8_t)(d->seq >> (8 * i));
}

/* One AEAD operation on n bytes at p in place; enc: seal (tag written to
 * tag), else open (tag checked). 0 or -1. */
static int aead(const struct tls13 *t, const struct tls13_dir *d, bool enc, const uint8_t *aad,
                uint8_t *p, size_t n, uint8_t *tag)
{
	EVP_CIPHER_CTX *ctx = EVP_CIPHER_CTX_new();
	uint8_t iv[12];
	int len = 0, ok = 0;

	if (ctx == NULL || n > TLS13_MAX_CIPHER)
		goto out;
	nonce(d, iv);
	if (EVP_CipherInit_ex(ctx, suite_cipher(t->suite), NULL, NULL, NULL, enc) != 1 ||
	    EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_IVLEN, 12, NULL) != 1 ||
	    EVP_CipherInit_ex(ctx, NULL, NULL, d->key, iv, enc) != 1)
		goto out;
	if (!enc && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_SET_TAG, TLS13_TAG, tag) != 1)
		goto out;
	if (EVP_CipherUpdate(ctx, NULL, &len, aad, TLS13_HDR) != 1 ||
	    EVP_CipherUpdate(ctx, p, &len, p, (int)n) != 1 || (size_t)len != n ||
	    EVP_CipherFinal_ex(ctx, p + len, &len) != 1 || len != 0)
		goto out;
	if (enc && EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_AEAD_GET_TAG, TLS13_TAG, tag) != 1)
		goto out;
	ok = 1;
out:
	OPENSSL_cleanse(iv, sizeof(iv));
	EVP_CIPHER_CTX_free(ctx);
	return ok ? 0 : -1;
}

ssize_t tls13_seal(struct tls13 *t, uint8_t type, const uint8_t *in, size_t len, uint8_t *out)
{
	size_t clen = len + 1 + TLS13_TAG;

	if (len > t->max_plain || t->wr.seq == UINT64_MAX)
		return -1;
	out[0] = TLS13_APPDATA;
	out[1] = 0x03;
	out[2] = 0x03;
	out[3] = (uint8_t)(clen >> 8);
	out[4] = (uint8_t)clen;
	if (len > 0)
		memmove(out + TLS13_HDR, in, len);
	out[TLS13_HDR + len] = type;
	if (aead(t, &t->wr, true, out, out + TLS13_HDR, len + 1, out + TLS13_HDR + len + 1) < 0)
		return -1;
	t->wr.seq++;
	return (ssize_t)(TLS13_HDR + clen);
}

ssize_t tls13_record_len(const uint8_t *p, size_t n)
{
	size_t clen;

	if (n >= 1 && p[0] != TLS13_APPDATA)
		return -1;
	if (n < TLS13_HDR)
		return 0;
	/* legacy_record_version is not checked (RFC 8446 5.1: ignored). */
	clen = (size_t)p[3] << 8 | p[4];
	if (clen < 1 + TLS13_TAG || clen > TLS13_MAX_CIPHER)
		return -1;
	return (ssize_t)(TLS13_HDR + clen);
}

int tls13_open(struct tls13 *t, uint8_t *rec, size_t n, uint8_t *type, size_t *len)
{
	size_t clen;

	if (tls13_record_len(rec, n) != (ssize_t)n || t->rd.seq == UINT64_MAX)
		return -1;
	clen = n - TLS13_HDR - TLS13_TAG;
	if (aead(t, &t->rd, false, rec, rec + TLS13_HDR, clen, rec + n - TLS13_TAG) < 0)
		return -1;
	t->rd.seq++;
	/* TLSInnerPlaintext: content, type (never 0), zeros. */
	while (clen > 0 && rec[TLS13_HDR + clen - 1] == 0)
		clen--;
	if (clen == 0 || clen - 1 > TLS13_MAX_PLAIN)
		return -1;
	*type = rec[TLS13_HDR + clen - 1];
	*len = clen - 1;
	return 0;
}

int tls13_update(struct tls13 *t, bool write)
{
	struct tls13_dir *d = write ? &t->wr : &t->rd;
	uint8_t next[TLS13_SECRET_MAX];

	if (tls13_expand_label(t, d->secret, "traffic upd", next, t->hlen) < 0)
		return -1;
	memcpy(d->secret, next, t->hlen);
	OPENSSL_cleanse(next, sizeof(next));
	d->seq = 0;
	return dir_keys(t, d);
}

void tls13_wipe(struct tls13 *t)
{
	OPENSSL_cleanse(t, sizeof(*t));
}

/* ---- capture from OpenSSL ------------------------------------------------- */

struct capture {
	uint8_t csec[TLS13_SECRET_MAX]; /* client application traffic secret */
	uint8_t ssec[TLS13_SECRET_MAX]; /* server application traffic secret */
	uint8_t clen, slen;
	bool rd_on, wr_on; /* counting since the keys came into use */
	bool broken;       /* something the capture cannot follow happened */
	uint64_t rseq, wseq;
};

static int cap_idx = -1;
static pthread_once_t cap_once = PTHREAD_ONCE_INIT;

static void cap_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
	(void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
	if (ptr != NULL) {
		OPENSSL_cleanse(ptr, sizeof(struct capture));
		OPENSSL_free(ptr);
	}
}

static void cap_index(void)
{
	cap_idx = SSL_get_ex_new_index(0, NULL, NULL, NULL, cap_free);
}

static struct capture *cap_of(const SSL *ssl)
{
	return cap_idx < 0 ? NULL : SSL_get_ex_data(ssl, cap_idx);
}

static int hexval(char ch)
{
	if (ch >= '0' && ch <= '9')
		return ch - '0';
	if (ch >= 'a' && ch <= 'f')
		return ch - 'a' + 10;
	if (ch >= 'A' && ch <= 'F')
		return ch - 'A' + 10;
	return -1;
}

/* "LABEL <client random, hex> <secret, hex>" (NSS key log format). */
static void cap_keylog(const SSL *ssl, const char *line)
{
	struct capture *c = cap_of(ssl);
	static const char cl[] = "CLIENT_TRAFFIC_SECRET_0 ", sl[] = "SERVER_TRAFFIC_SECRET_0 ";
	uint8_t *dst, *lenp;
	const char *p, *sp;
	size_t n = 0;

	if (c == NULL)
		return;
	if (strncmp(line, cl, sizeof(cl) - 1) == 0)
		dst = c->csec, lenp = &c->clen;
	else if (strncmp(line, sl, sizeof(sl) - 1) == 0)
		dst = c->ssec, lenp = &c->slen;
	else
		return;
	sp = strchr(line + sizeof(cl) - 1, ' ');
	if (sp == NULL) {
		c->broken = true;
		return;
	}
	for (p = sp + 1; p[0] != '\0' && p[0] != '\n'; p += 2) {
		int hi = hexval(p[0]), lo = p[1] ? hexval(p[1]) : -1;
		if (hi < 0 || lo < 0 || n == TLS13_SECRET_MAX) {
			c->broken = true;
			return;
		}
		dst[n++] = (uint8_t)(hi << 4 | lo);
	}
	*lenp = (uint8_t)n;
}

/* The next secret after a KeyUpdate, in place. */
static void cap_roll(struct capture *c, const SSL *ssl, bool write)
{
	const SSL_CIPHER *ci = SSL_get_current_cipher(ssl);
	struct tls13 t = {.suite = ci ? SSL_CIPHER_get_protocol_id(ci) : 0};
	uint8_t *sec = write ? c->ssec : c->csec;
	uint8_t len = write ? c->slen : c->clen;

	t.hlen = len;
	if (suite_cipher(t.suite) == NULL ||
	    tls13_expand_label(&t, sec, "traffic upd", sec, len) < 0)
		c->broken = true;
}

static void cap_msg(int write_p, int version, int content_type, const void *buf, size_t len,
                    SSL *ssl, void *arg)
{
	struct capture *c = cap_of(ssl);
	const uint8_t *p = buf;

	(void)version, (void)arg;
	if (c == NULL)
		return;
	if (content_type == SSL3_RT_HEADER) {
		if (write_p && c->wr_on)
			c->wseq++;
		else if (!write_p && c->rd_on)
			c->rseq++;
		return;
	}
	if (content_type != SSL3_RT_HANDSHAKE || len < 1)
		return;
	/* The callback for a handshake message comes after the header of
	 * the record that carried it, read or written: the records after
	 * it are the first under the new keys. */
	if (p[0] == SSL3_MT_FINISHED || p[0] == SSL3_MT_KEY_UPDATE) {
		if (p[0] == SSL3_MT_KEY_UPDATE)
			cap_roll(c, ssl, write_p != 0);
		if (write_p)
			c->wr_on = true, c->wseq = 0;
		else
			c->rd_on = true, c->rseq = 0;
	}
}

void tls13_capture_install(SSL_CTX *ctx)
{
	pthread_once(&cap_once, cap_index);
	SSL_CTX_set_keylog_callback(ctx, cap_keylog);
	SSL_CTX_set_msg_callback(ctx, cap_msg);
}

int tls13_capture_attach(SSL *ssl)
{
	struct capture *c;

	pthread_once(&cap_once, cap_index);
	if (cap_idx < 0 || (c = OPENSSL_zalloc(sizeof(*c))) == NULL)
		return -1;
	if (SSL_set_ex_data(ssl, cap_idx, c) != 1) {
		OPENSSL_free(c);
		return -1;
	}
	return 0;
}

int tls13_capture_take(SSL *ssl, struct tls13 *t)
{
	struct capture *c = cap_of(ssl);
	const SSL_CIPHER *ci = SSL_get_current_cipher(ssl);

	if (c == NULL || c->broken || !c->rd_on || !c->wr_on || c->clen == 0 ||
	    c->clen != c->slen || ci == NULL || SSL_version(ssl) != TLS1_3_VERSION ||
	    !SSL_is_server(ssl) || !SSL_is_init_finished(ssl) || SSL_has_pending(ssl) ||
	    (SSL_want(ssl) != SSL_NOTHING && SSL_want(ssl) != SSL_READING) ||
	    SSL_get_key_update_type(ssl) != SSL_KEY_UPDATE_NONE ||
	    (SSL_get_wbio(ssl) != NULL && BIO_wpending(SSL_get_wbio(ssl)) != 0))
		return -1;
	/* The server reads what the client writes. */
	if (tls13_init(t, SSL_CIPHER_get_protocol_id(ci), c->csec, c->ssec, c->clen, c->rseq,
	               c->wseq) < 0)
		return -1;
	uint8_t mfl = SSL_get0_session(ssl) != NULL
	                  ? SSL_SESSION_get_max_fragment_length(SSL_get0_session(ssl))
	                  : TLSEXT_max_fragment_length_DISABLED;
	if (mfl >= TLSEXT_max_fragment_length_512 && mfl <= TLSEXT_max_fragment_length_4096)
		t->max_plain = (uint16_t)(512u << (mfl - TLSEXT_max_fragment_length_512));
	return 0;
}
