/*
 * selfsigned — a throwaway ECDSA P-256 key and self-signed certificate
 * (CN=localhost, valid an hour) loaded into a server context, for unit
 * tests that run real TLS handshakes against OpenSSL's own client.
 */
#ifndef IMAPMUX_TEST_SELFSIGNED_H
#define IMAPMUX_TEST_SELFSIGNED_H

#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>

/* 0, or -1 (OpenSSL failed). */
static inline int selfsigned_use(SSL_CTX *ctx)
{
	EVP_PKEY *pk = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	X509 *x = X509_new();
	int ok = pk != NULL && x != NULL;

	if (ok) {
		X509_set_version(x, 2);
		ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
		X509_gmtime_adj(X509_getm_notBefore(x), 0);
		X509_gmtime_adj(X509_getm_notAfter(x), 3600);
		X509_set_pubkey(x, pk);
		X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
		                           (const unsigned char *)"localhost", -1, -1, 0);
		X509_set_issuer_name(x, X509_get_subject_name(x));
		ok = X509_sign(x, pk, EVP_sha256()) > 0 && SSL_CTX_use_certificate(ctx, x) == 1 &&
		     SSL_CTX_use_PrivateKey(ctx, pk) == 1;
	}
	X509_free(x);
	EVP_PKEY_free(pk);
	return ok ? 0 : -1;
}

#endif
