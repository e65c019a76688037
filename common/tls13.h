/*
 * tls13 — TLS 1.3 record protection for application traffic (RFC 8446
 * 5.2-5.5, 7.1-7.3, 4.6.3), for a connection whose handshake OpenSSL did.
 *
 * A parked session keeps its client socket and nothing else; OpenSSL's SSL
 * object of a finished TLS 1.3 connection still costs about 14 KB (record
 * layer arrays, cipher contexts, the copied certificate and cipher lists),
 * more than the rest of the parked session together. What the connection
 * needs from then on is this: per direction the traffic secret, the AEAD
 * key and IV derived from it and the record sequence number (about 220
 * bytes in all). conn.c captures the secrets and counts the records while
 * OpenSSL runs the connection, and hands over to this once the session
 * parks (conn_shed_tls).
 *
 *   seal: plaintext + inner type --AEAD(key, iv ^ seq, header)--> record
 *   open: record --AEAD open--> plaintext, inner type (zero padding off)
 *   KeyUpdate: secret' = HKDF-Expand-Label(secret, "traffic upd", "", Hash.length)
 *
 * Suites: TLS_AES_128_GCM_SHA256, TLS_AES_256_GCM_SHA384,
 * TLS_CHACHA20_POLY1305_SHA256 (the CCM suites are refused: tls13_init
 * fails and the connection stays with OpenSSL). A cipher context is made
 * for each record: nothing but keys stays allocated between records.
 */
#ifndef IMAPMUX_TLS13_H
#define IMAPMUX_TLS13_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define TLS13_HDR        5                       /* type, legacy version, length */
#define TLS13_TAG        16                      /* AEAD tag of every suite here */
#define TLS13_MAX_PLAIN  16384                   /* 2^14 (RFC 8446 5.1) */
#define TLS13_MAX_CIPHER (TLS13_MAX_PLAIN + 256) /* 2^14 + 256 (5.2) */
#define TLS13_MAX_RECORD (TLS13_HDR + TLS13_MAX_CIPHER)
#define TLS13_OVERHEAD   (TLS13_HDR + 1 + TLS13_TAG) /* header, inner type, tag */
#define TLS13_SECRET_MAX 48

/* Content types (RFC 8446 B.1). */
#define TLS13_ALERT     21
#define TLS13_HANDSHAKE 22
#define TLS13_APPDATA   23

struct tls13_dir {
	uint8_t secret[TLS13_SECRET_MAX];
	uint8_t key[32];
	uint8_t iv[12];
	uint64_t seq;
};

struct tls13 {
	uint16_t suite;     /* 0x1301, 0x1302 or 0x1303 */
	uint8_t hlen;       /* hash (and secret) length */
	uint8_t klen;       /* AEAD key length */
	uint16_t max_plain; /* what one record may carry: TLS13_MAX_PLAIN, or less when the
	                     * client asked for a max_fragment_length (RFC 6066) */
	struct tls13_dir rd, wr;
};

/* Set t up from both traffic secrets (hlen bytes each, the suite's hash
 * length) and the sequence numbers already used. 0, or -1 for a suite not
 * handled here or a wrong length. */
__attribute__((warn_unused_result)) int tls13_init(struct tls13 *t, uint16_t suite,
                                                   const uint8_t *rsecret, const uint8_t *wsecret,
                                                   size_t hlen, uint64_t rseq, uint64_t wseq);

/* HKDF-Expand-Label(secret, label, "", out_len) with the suite's hash;
 * out_len at most the hash length. 0 or -1. */
__attribute__((warn_unused_result)) int tls13_expand_label(const struct tls13 *t,
                                                           const uint8_t *secret, const char *label,
                                                           uint8_t *out, size_t out_len);

/* Seal len bytes (at most TLS13_MAX_PLAIN) of content type `type` into out,
 * which has room for len + TLS13_OVERHEAD. The record's length, or -1. */
ssize_t tls13_seal(struct tls13 *t, uint8_t type, const uint8_t *in, size_t len, uint8_t *out);

/* The whole length of the record starting at p (n bytes there): 0 while
 * the header is incomplete, -1 when it is not a TLS 1.3 protected record
 * (type not application_data, or a length out of bounds). */
ssize_t tls13_record_len(const uint8_t *p, size_t n);

/* Open the record rec (header included, n bytes as tls13_record_len said)
 * in place: the plaintext is at rec + TLS13_HDR, *len bytes, of content
 * type *type. 0, or -1 (bad tag, no content type, plaintext too long): the
 * connection must end (RFC 8446 5.2: bad_record_mac). */
__attribute__((warn_unused_result)) int tls13_open(struct tls13 *t, uint8_t *rec, size_t n,
                                                   uint8_t *type, size_t *len);

/* KeyUpdate for one direction: the next traffic secret, key and IV, and
 * the sequence number back to 0. 0 or -1. */
__attribute__((warn_unused_result)) int tls13_update(struct tls13 *t, bool write);

/* Erase the keys. */
void tls13_wipe(struct tls13 *t);

/*
 * Capture, while OpenSSL runs a server connection: the application traffic
 * secrets (from the key log callback) and the records each way since the
 * keys came into use (from the message callback: a record header each, the
 * count back to 0 after each Finished and KeyUpdate message in that
 * direction; a KeyUpdate also rolls the captured secret on). Installing
 * sets both callbacks on the context (nothing is logged anywhere);
 * attaching gives one SSL of it the ~110 bytes the capture fills in (freed
 * with the SSL). An SSL without it (no memory) is simply never taken over.
 */
void tls13_capture_install(SSL_CTX *ctx);
__attribute__((warn_unused_result)) int tls13_capture_attach(SSL *ssl);

/* Take the connection over from ssl: 0 with t set up when ssl runs TLS 1.3
 * with a suite handled here, its handshake done, the secrets and counts
 * known, nothing buffered either way and no KeyUpdate owed; else -1 (ssl
 * goes on as it is). On 0 the caller frees ssl without a shutdown (a
 * close_notify now would end the connection) and carries on with t. */
__attribute__((warn_unused_result)) int tls13_capture_take(SSL *ssl, struct tls13 *t);

#endif
