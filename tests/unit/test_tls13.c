/*
 * test_tls13 — TLS 1.3 record protection carried on without OpenSSL
 * (common/tls13.c), checked against OpenSSL itself: a real handshake over a
 * socketpair between an OpenSSL client and an OpenSSL server with the
 * capture installed, data both ways, then the server taken over: records
 * sealed here must read in the client's SSL_read, records the client's
 * SSL_write makes must open here, in each of the three suites; KeyUpdate
 * both ways and requested (before the takeover, while OpenSSL still runs
 * the server, and after it); a record changed in one byte refused; no
 * takeover for TLS 1.2, with bytes still buffered in the SSL, or with a
 * KeyUpdate still owed. And HKDF-Expand-Label against RFC 8448's values.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "tls13.h"

static EVP_PKEY *pkey;
static X509 *cert;
static uint8_t client_mfl; /* a max_fragment_length the next client asks for */

static int group_setup(void **state)
{
	X509_NAME *name;

	(void)state;
	pkey = EVP_EC_gen("P-256");
	cert = X509_new();
	if (pkey == NULL || cert == NULL)
		return -1;
	ASN1_INTEGER_set(X509_get_serialNumber(cert), 1);
	X509_gmtime_adj(X509_getm_notBefore(cert), 0);
	X509_gmtime_adj(X509_getm_notAfter(cert), 3600);
	X509_set_pubkey(cert, pkey);
	name = X509_get_subject_name(cert);
	X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"test", -1, -1,
	                           0);
	X509_set_issuer_name(cert, name);
	return X509_sign(cert, pkey, EVP_sha256()) > 0 ? 0 : -1;
}

static int group_teardown(void **state)
{
	(void)state;
	X509_free(cert);
	EVP_PKEY_free(pkey);
	return 0;
}

struct pair {
	SSL_CTX *sctx, *cctx;
	SSL *s, *c;
	int sfd, cfd;
};

static void nonblock(int fd)
{
	assert_int_equal(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK), 0);
}

/* A connected client and server (suite: a TLS 1.3 suite name, or NULL with
 * tls12 for a TLS 1.2 connection), handshake done. */
static void pair_open(struct pair *p, const char *suite, bool tls12)
{
	int sv[2], rs = 0, rc = 0;

	memset(p, 0, sizeof(*p));
	p->sctx = SSL_CTX_new(TLS_server_method());
	p->cctx = SSL_CTX_new(TLS_client_method());
	assert_non_null(p->sctx);
	assert_non_null(p->cctx);
	assert_int_equal(SSL_CTX_use_certificate(p->sctx, cert), 1);
	assert_int_equal(SSL_CTX_use_PrivateKey(p->sctx, pkey), 1);
	SSL_CTX_set_mode(p->sctx, SSL_MODE_RELEASE_BUFFERS);
	if (tls12) {
		assert_int_equal(SSL_CTX_set_max_proto_version(p->cctx, TLS1_2_VERSION), 1);
	} else {
		assert_int_equal(SSL_CTX_set_min_proto_version(p->cctx, TLS1_3_VERSION), 1);
		assert_int_equal(SSL_CTX_set_ciphersuites(p->cctx, suite), 1);
	}
	if (client_mfl != 0)
		assert_int_equal(SSL_CTX_set_tlsext_max_fragment_length(p->cctx, client_mfl), 1);
	tls13_capture_install(p->sctx);
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	p->sfd = sv[0];
	p->cfd = sv[1];
	nonblock(p->sfd);
	nonblock(p->cfd);
	p->s = SSL_new(p->sctx);
	p->c = SSL_new(p->cctx);
	assert_int_equal(tls13_capture_attach(p->s), 0);
	SSL_set_fd(p->s, p->sfd);
	SSL_set_fd(p->c, p->cfd);
	SSL_set_accept_state(p->s);
	SSL_set_connect_state(p->c);
	for (int i = 0; i < 100 && (rs != 1 || rc != 1); i++) {
		if (rc != 1)
			rc = SSL_do_handshake(p->c);
		if (rs != 1)
			rs = SSL_do_handshake(p->s);
	}
	assert_int_equal(rs, 1);
	assert_int_equal(rc, 1);
	assert_int_equal(SSL_version(p->s), tls12 ? TLS1_2_VERSION : TLS1_3_VERSION);
}

static void pair_close(struct pair *p)
{
	SSL_free(p->s);
	SSL_free(p->c);
	SSL_CTX_free(p->sctx);
	SSL_CTX_free(p->cctx);
	close(p->sfd);
	close(p->cfd);
}

/* Read exactly n bytes with SSL_read, driving nothing else. */
static void ssl_read_all(SSL *ssl, uint8_t *out, size_t n)
{
	size_t got = 0;

	for (int i = 0; i < 1000 && got < n; i++) {
		int r = SSL_read(ssl, out + got, (int)(n - got));
		if (r > 0)
			got += (size_t)r;
		else
			assert_int_equal(SSL_get_error(ssl, r), SSL_ERROR_WANT_READ);
	}
	assert_int_equal(got, n);
}

static void ssl_write_all(SSL *ssl, const void *p, size_t n)
{
	assert_int_equal(SSL_write(ssl, p, (int)n), (int)n);
}

/* Application data through both SSLs (the capture counts these). */
static void exchange(struct pair *p, const char *cmsg, const char *smsg)
{
	uint8_t b[64];

	ssl_write_all(p->c, cmsg, strlen(cmsg));
	ssl_read_all(p->s, b, strlen(cmsg));
	assert_memory_equal(b, cmsg, strlen(cmsg));
	ssl_write_all(p->s, smsg, strlen(smsg));
	ssl_read_all(p->c, b, strlen(smsg));
	assert_memory_equal(b, smsg, strlen(smsg));
}

/* Seal one record of type and send it raw to the client. */
static void seal_send(struct tls13 *t, int fd, uint8_t type, const void *p, size_t n)
{
	static uint8_t rec[TLS13_MAX_RECORD + 1];
	ssize_t len = tls13_seal(t, type, p, n, rec);

	assert_true(len == (ssize_t)(n + TLS13_OVERHEAD));
	assert_int_equal(write(fd, rec, (size_t)len), len);
}

/* Read one whole record from the raw socket into rec; its length. */
static size_t recv_record(int fd, uint8_t *rec)
{
	size_t got = 0;
	ssize_t want = 0;

	for (int i = 0; i < 100000; i++) {
		size_t need = want > 0 ? (size_t)want : TLS13_HDR;
		ssize_t r;

		if (got == need && want > 0)
			return got;
		r = read(fd, rec + got, need - got);
		if (r < 0) {
			assert_true(errno == EAGAIN);
			continue;
		}
		assert_true(r > 0);
		got += (size_t)r;
		if (want == 0 && got >= TLS13_HDR) {
			want = tls13_record_len(rec, got);
			assert_true(want > 0);
		}
	}
	fail_msg("no whole record");
	return 0;
}

/* Open the next record from the client, expecting type and content. */
static void recv_expect(struct tls13 *t, int fd, uint8_t type, const void *p, size_t n)
{
	static uint8_t rec[TLS13_MAX_RECORD];
	size_t len = recv_record(fd, rec), plen = 0;
	uint8_t ty = 0;

	assert_int_equal(tls13_open(t, rec, len, &ty, &plen), 0);
	assert_int_equal(ty, type);
	assert_int_equal(plen, n);
	assert_memory_equal(rec + TLS13_HDR, p, n);
}

static const uint8_t KU_REQUESTED[] = {24, 0, 0, 1, 1};
static const uint8_t KU_NOT_REQUESTED[] = {24, 0, 0, 1, 0};

static void takeover(const char *suite, uint16_t id)
{
	static uint8_t big[20000], back[20000];
	struct pair p;
	struct tls13 t;
	uint8_t b[64];

	pair_open(&p, suite, false);
	exchange(&p, "a1 NOOP\r\n", "a1 OK\r\n");
	exchange(&p, "a2 IDLE\r\n", "+ idling\r\n");
	/* as a conn leaves it: its last SSL_read found nothing more */
	assert_int_equal(SSL_read(p.s, b, sizeof(b)), -1);
	assert_int_equal(SSL_get_error(p.s, -1), SSL_ERROR_WANT_READ);
	assert_int_equal(tls13_capture_take(p.s, &t), 0);
	assert_int_equal(t.suite, id);
	SSL_free(p.s);
	p.s = NULL;

	/* server -> client, several records */
	seal_send(&t, p.sfd, TLS13_APPDATA, "* 3 EXISTS\r\n", 12);
	seal_send(&t, p.sfd, TLS13_APPDATA, "* OK Still here\r\n", 17);
	ssl_read_all(p.c, b, 29);
	assert_memory_equal(b, "* 3 EXISTS\r\n* OK Still here\r\n", 29);

	/* client -> server: a write over one record's size */
	for (size_t i = 0; i < sizeof(big); i++)
		big[i] = (uint8_t)('a' + i % 26);
	ssl_write_all(p.c, big, sizeof(big));
	{
		static uint8_t rec[TLS13_MAX_RECORD];
		size_t got = 0;
		for (int i = 0; i < 10 && got < sizeof(big); i++) {
			size_t len = recv_record(p.sfd, rec), plen = 0;
			uint8_t ty = 0;
			assert_int_equal(tls13_open(&t, rec, len, &ty, &plen), 0);
			assert_int_equal(ty, TLS13_APPDATA);
			memcpy(back + got, rec + TLS13_HDR, plen);
			got += plen;
		}
		assert_int_equal(got, sizeof(big));
		assert_memory_equal(back, big, sizeof(big));
	}

	/* the client updates its keys and asks for ours */
	assert_int_equal(SSL_key_update(p.c, SSL_KEY_UPDATE_REQUESTED), 1);
	ssl_write_all(p.c, "a3 DONE\r\n", 9);
	recv_expect(&t, p.sfd, TLS13_HANDSHAKE, KU_REQUESTED, sizeof(KU_REQUESTED));
	assert_int_equal(tls13_update(&t, false), 0);
	assert_int_equal(t.rd.seq, 0);
	recv_expect(&t, p.sfd, TLS13_APPDATA, "a3 DONE\r\n", 9);
	seal_send(&t, p.sfd, TLS13_HANDSHAKE, KU_NOT_REQUESTED, sizeof(KU_NOT_REQUESTED));
	assert_int_equal(tls13_update(&t, true), 0);
	seal_send(&t, p.sfd, TLS13_APPDATA, "a3 OK\r\n", 7);
	ssl_read_all(p.c, b, 7);
	assert_memory_equal(b, "a3 OK\r\n", 7);

	/* a record changed in one byte is refused */
	ssl_write_all(p.c, "a4 NOOP\r\n", 9);
	{
		static uint8_t rec[TLS13_MAX_RECORD];
		size_t len = recv_record(p.sfd, rec), plen = 0;
		uint8_t ty = 0;
		rec[TLS13_HDR + 2] ^= 0x01;
		assert_int_equal(tls13_open(&t, rec, len, &ty, &plen), -1);
	}
	tls13_wipe(&t);
	pair_close(&p);
}

static void test_takeover_aes128(void **state)
{
	(void)state;
	takeover("TLS_AES_128_GCM_SHA256", 0x1301);
}

static void test_takeover_aes256(void **state)
{
	(void)state;
	takeover("TLS_AES_256_GCM_SHA384", 0x1302);
}

static void test_takeover_chacha(void **state)
{
	(void)state;
	takeover("TLS_CHACHA20_POLY1305_SHA256", 0x1303);
}

/* KeyUpdates OpenSSL handled before the takeover are followed. */
static void test_key_updates_before_takeover(void **state)
{
	struct pair p;
	struct tls13 t;
	uint8_t b[16];

	(void)state;
	pair_open(&p, "TLS_AES_256_GCM_SHA384", false);
	exchange(&p, "a1 NOOP\r\n", "a1 OK\r\n");
	/* client asks: the server answers with its own at its next write */
	assert_int_equal(SSL_key_update(p.c, SSL_KEY_UPDATE_REQUESTED), 1);
	ssl_write_all(p.c, "x", 1);
	ssl_read_all(p.s, b, 1);
	assert_int_equal(tls13_capture_take(p.s, &t), -1); /* its KeyUpdate is owed */
	ssl_write_all(p.s, "y", 1);
	ssl_read_all(p.c, b, 1);
	/* and the server updates on its own */
	assert_int_equal(SSL_key_update(p.s, SSL_KEY_UPDATE_NOT_REQUESTED), 1);
	ssl_write_all(p.s, "z", 1);
	ssl_read_all(p.c, b, 1);
	exchange(&p, "a2 NOOP\r\n", "a2 OK\r\n");
	assert_int_equal(tls13_capture_take(p.s, &t), 0);
	SSL_free(p.s);
	p.s = NULL;
	seal_send(&t, p.sfd, TLS13_APPDATA, "after\r\n", 7);
	ssl_read_all(p.c, b, 7);
	assert_memory_equal(b, "after\r\n", 7);
	ssl_write_all(p.c, "a3 NOOP\r\n", 9);
	recv_expect(&t, p.sfd, TLS13_APPDATA, "a3 NOOP\r\n", 9);
	tls13_wipe(&t);
	pair_close(&p);
}

static void test_no_takeover_when_buffered_or_tls12(void **state)
{
	struct pair p;
	struct tls13 t;
	uint8_t b[8];

	(void)state;
	pair_open(&p, "TLS_AES_128_GCM_SHA256", false);
	ssl_write_all(p.c, "a1 NOOP\r\n", 9);
	ssl_read_all(p.s, b, 4); /* 5 bytes left inside the SSL */
	assert_int_equal(tls13_capture_take(p.s, &t), -1);
	ssl_read_all(p.s, b, 5);
	assert_int_equal(tls13_capture_take(p.s, &t), 0);
	pair_close(&p);

	pair_open(&p, NULL, true);
	exchange(&p, "a1 NOOP\r\n", "a1 OK\r\n");
	assert_int_equal(tls13_capture_take(p.s, &t), -1);
	pair_close(&p);
}

/* A client that asked for max_fragment_length 1024 (RFC 6066) gets no
 * longer record from the layer. */
static void test_max_fragment_length_kept(void **state)
{
	static uint8_t big[1025], b[1024], rec[TLS13_MAX_RECORD];
	struct pair p;
	struct tls13 t;

	(void)state;
	client_mfl = TLSEXT_max_fragment_length_1024;
	pair_open(&p, "TLS_AES_128_GCM_SHA256", false);
	client_mfl = 0;
	exchange(&p, "a1 NOOP\r\n", "a1 OK\r\n");
	assert_int_equal(tls13_capture_take(p.s, &t), 0);
	assert_int_equal(t.max_plain, 1024);
	assert_int_equal(tls13_seal(&t, TLS13_APPDATA, big, sizeof(big), rec), -1);
	memset(big, 'q', sizeof(big));
	seal_send(&t, p.sfd, TLS13_APPDATA, big, 1024);
	ssl_read_all(p.c, b, 1024);
	assert_memory_equal(b, big, 1024);
	tls13_wipe(&t);
	pair_close(&p);
}

/* RFC 8448, section 3: the server's handshake traffic secret, and the
 * key and IV derived from it (TLS_AES_128_GCM_SHA256). */
static void test_expand_label_rfc8448(void **state)
{
	static const uint8_t secret[32] = {0xb6, 0x7b, 0x7d, 0x69, 0x0c, 0xc1, 0x6c, 0x4e,
	                                   0x75, 0xe5, 0x42, 0x13, 0xcb, 0x2d, 0x37, 0xb4,
	                                   0xe9, 0xc9, 0x12, 0xbc, 0xde, 0xd9, 0x10, 0x5d,
	                                   0x42, 0xbe, 0xfd, 0x59, 0xd3, 0x91, 0xad, 0x38};
	static const uint8_t key[16] = {0x3f, 0xce, 0x51, 0x60, 0x09, 0xc2, 0x17, 0x27,
	                                0xd0, 0xf2, 0xe4, 0xe8, 0x6e, 0xe4, 0x03, 0xbc};
	static const uint8_t iv[12] = {0x5d, 0x31, 0x3e, 0xb2, 0x67, 0x12,
	                               0x76, 0xee, 0x13, 0x00, 0x0b, 0x30};
	struct tls13 t = {.suite = 0x1301, .hlen = 32};
	uint8_t out[32];

	(void)state;
	assert_int_equal(tls13_expand_label(&t, secret, "key", out, 16), 0);
	assert_memory_equal(out, key, 16);
	assert_int_equal(tls13_expand_label(&t, secret, "iv", out, 12), 0);
	assert_memory_equal(out, iv, 12);
	assert_int_equal(tls13_expand_label(&t, secret, "key", out, 33), -1);
	assert_int_equal(tls13_init(&t, 0x1304, secret, secret, 32, 0, 0), -1); /* CCM */
	assert_int_equal(tls13_init(&t, 0x1301, secret, secret, 48, 0, 0), -1);
}

static void test_record_len_bounds(void **state)
{
	uint8_t h[5] = {23, 3, 3, 0, 0};

	(void)state;
	assert_int_equal(tls13_record_len(h, 0), 0);
	assert_int_equal(tls13_record_len(h, 4), 0);
	assert_int_equal(tls13_record_len(h, 5), -1); /* shorter than a tag */
	h[4] = 17;
	assert_int_equal(tls13_record_len(h, 5), 22);
	h[3] = (TLS13_MAX_CIPHER + 1) >> 8;
	h[4] = (TLS13_MAX_CIPHER + 1) & 0xff;
	assert_int_equal(tls13_record_len(h, 5), -1);
	h[0] = 21; /* a plaintext alert after the handshake */
	assert_int_equal(tls13_record_len(h, 1), -1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_expand_label_rfc8448),
	    cmocka_unit_test(test_record_len_bounds),
	    cmocka_unit_test(test_takeover_aes128),
	    cmocka_unit_test(test_takeover_aes256),
	    cmocka_unit_test(test_takeover_chacha),
	    cmocka_unit_test(test_key_updates_before_takeover),
	    cmocka_unit_test(test_no_takeover_when_buffered_or_tls12),
	    cmocka_unit_test(test_max_fragment_length_kept),
	};

	return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
