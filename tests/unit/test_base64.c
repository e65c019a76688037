/*
 * test_base64 — RFC 4648 section 10 vectors, round trips of every length
 * and byte value, and the strict rejections SASL needs (a lenient decoder
 * would let two different wire strings carry the same credentials).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "base64.h"

struct vector {
	const char *plain;
	size_t plain_len;
	const char *enc;
};

/* RFC 4648 section 10, plus SASL PLAIN messages ("\0user\0pass"). */
static const struct vector vectors[] = {
    {"", 0, ""},
    {"f", 1, "Zg=="},
    {"fo", 2, "Zm8="},
    {"foo", 3, "Zm9v"},
    {"foob", 4, "Zm9vYg=="},
    {"fooba", 5, "Zm9vYmE="},
    {"foobar", 6, "Zm9vYmFy"},
    {"\0alice\0secret", 13, "AGFsaWNlAHNlY3JldA=="},
    {"\0j\xc3\xb6rg\0p\xc3\xa4ss", 12, "AGrDtnJnAHDDpHNz"},
    {"\xff\xfe\xfd", 3, "//79"},
    {"\xfb\xef\xbe", 3, "++++"},
};

#define NVEC (sizeof(vectors) / sizeof(vectors[0]))

static void test_vectors_encode(void **state)
{
	(void)state;
	for (size_t i = 0; i < NVEC; i++) {
		char out[64];
		long n = b64_encode((const uint8_t *)vectors[i].plain, vectors[i].plain_len, out,
		                    sizeof(out));

		assert_int_equal(n, (long)strlen(vectors[i].enc));
		assert_string_equal(out, vectors[i].enc);
		assert_int_equal(B64_ENCODED_LEN(vectors[i].plain_len), strlen(vectors[i].enc));
	}
}

static void test_vectors_decode(void **state)
{
	(void)state;
	for (size_t i = 0; i < NVEC; i++) {
		uint8_t out[64];
		size_t outlen = 99;

		assert_int_equal(
		    b64_decode(vectors[i].enc, strlen(vectors[i].enc), out, sizeof(out), &outlen),
		    0);
		assert_int_equal(outlen, vectors[i].plain_len);
		if (outlen > 0)
			assert_memory_equal(out, vectors[i].plain, outlen);
	}
}

static void test_empty(void **state)
{
	char enc[1];
	size_t outlen = 99;

	(void)state;
	/* Empty input needs no output room at all. */
	assert_int_equal(b64_decode("", 0, NULL, 0, &outlen), 0);
	assert_int_equal(outlen, 0);
	assert_int_equal(b64_encode(NULL, 0, enc, sizeof(enc)), 0);
	assert_string_equal(enc, "");
	assert_int_equal(b64_encode(NULL, 0, enc, 0), -1);
}

/* Deterministic pseudo-random bytes (xorshift32), so failures reproduce. */
static uint32_t rng_state = 0x12345678u;

static uint32_t rng(void)
{
	rng_state ^= rng_state << 13;
	rng_state ^= rng_state >> 17;
	rng_state ^= rng_state << 5;
	return rng_state;
}

static void test_roundtrip_lengths(void **state)
{
	uint8_t in[300] = {0}, back[300];
	char enc[B64_ENCODED_LEN(300) + 1];

	(void)state;
	for (size_t n = 0; n <= sizeof(in); n++) {
		size_t outlen = 0;
		long elen;

		for (size_t i = 0; i < n; i++)
			in[i] = (uint8_t)rng();
		elen = b64_encode(in, n, enc, sizeof(enc));
		assert_int_equal(elen, (long)B64_ENCODED_LEN(n));
		assert_int_equal(strlen(enc), (size_t)elen);
		/* Exactly the decoded size must be enough. */
		assert_int_equal(b64_decode(enc, (size_t)elen, back, n, &outlen), 0);
		assert_int_equal(outlen, n);
		if (n > 0)
			assert_memory_equal(in, back, n);
	}
}

static void test_roundtrip_all_bytes(void **state)
{
	uint8_t in[256], back[256];
	char enc[B64_ENCODED_LEN(256) + 1];
	size_t outlen = 0;

	(void)state;
	for (size_t i = 0; i < 256; i++)
		in[i] = (uint8_t)i;
	/* Every offset mod 3 puts every byte in every position of a quantum. */
	for (size_t off = 0; off < 3; off++) {
		long elen = b64_encode(in + off, 256 - off, enc, sizeof(enc));

		assert_true(elen > 0);
		assert_int_equal(b64_decode(enc, (size_t)elen, back, sizeof(back), &outlen), 0);
		assert_int_equal(outlen, 256 - off);
		assert_memory_equal(in + off, back, outlen);
	}
}

/* Each alphabet character decodes to its index; every other byte fails. */
static void test_alphabet_exhaustive(void **state)
{
	static const char alpha[] =
	    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

	(void)state;
	for (int c = 0; c < 256; c++) {
		/* "cAAA": c supplies the top 6 bits of the first byte. */
		char in[4] = {(char)c, 'A', 'A', 'A'};
		uint8_t out[3];
		size_t outlen = 0;
		const char *hit = (c != 0) ? strchr(alpha, c) : NULL;
		int rc = b64_decode(in, 4, out, sizeof(out), &outlen);

		if (hit != NULL) {
			assert_int_equal(rc, 0);
			assert_int_equal(out[0] >> 2, hit - alpha);
			assert_int_equal(out[1], 0);
			assert_int_equal(out[2], 0);
		} else {
			assert_int_equal(rc, -1);
		}
	}
}

static void test_encode_outcap(void **state)
{
	char out[16];

	(void)state;
	/* "foo" needs 4 characters and the NUL. */
	assert_int_equal(b64_encode((const uint8_t *)"foo", 3, out, 4), -1);
	assert_int_equal(b64_encode((const uint8_t *)"foo", 3, out, 5), 4);
	assert_string_equal(out, "Zm9v");
	assert_int_equal(b64_encode((const uint8_t *)"f", 1, out, 4), -1);
	assert_int_equal(b64_encode((const uint8_t *)"f", 1, out, 5), 4);
	/* A size whose encoding cannot be represented is refused up front. */
	assert_int_equal(b64_encode((const uint8_t *)"f", SIZE_MAX, out, sizeof(out)), -1);
}

static void test_decode_outcap(void **state)
{
	uint8_t out[8];
	size_t outlen = 0;

	(void)state;
	assert_int_equal(b64_decode("Zm9v", 4, out, 2, &outlen), -1);
	assert_int_equal(b64_decode("Zm9v", 4, out, 3, &outlen), 0);
	assert_int_equal(outlen, 3);
	/* Padding shrinks the need: "Zg==" is one byte. */
	assert_int_equal(b64_decode("Zg==", 4, out, 0, &outlen), -1);
	assert_int_equal(b64_decode("Zg==", 4, out, 1, &outlen), 0);
	assert_int_equal(outlen, 1);
	assert_int_equal(b64_decode("Zm8=", 4, out, 1, &outlen), -1);
	assert_int_equal(b64_decode("Zm8=", 4, out, 2, &outlen), 0);
}

static void test_decode_rejects(void **state)
{
	static const char *const bad[] = {
	    "Zg",             /* unpadded */
	    "Zg=",            /* length not a multiple of 4 */
	    "Zm9vY",          /* length not a multiple of 4 */
	    "=",              /* lone padding */
	    "====",           /* only padding */
	    "Z===",           /* three pad characters */
	    "=Zg=",           /* padding first */
	    "Z=g=",           /* padding inside the quantum */
	    "Zg=a",           /* data after padding */
	    "Zg==Zg==",       /* padding before the last quantum */
	    "Zm8=Zm9v",       /* same */
	    "Zh==",           /* non-zero unused bits (4) */
	    "Zm9=",           /* non-zero unused bits (2) */
	    "Zm8/Zm/=",       /* non-zero unused bits in the last quantum only */
	    "Zm9vYmFy\r\n",   /* line break after the data */
	    "Zm\r\n",         /* CRLF making up a quantum */
	    "Zm9\n",          /* LF making up a quantum */
	    "Zm 9v",          /* space */
	    " Zm9v",          /* leading space */
	    "Zm9v ",          /* trailing space */
	    "Zm\t9",          /* tab */
	    "Zm-v",           /* base64url alphabet */
	    "Zm_v",           /* base64url alphabet */
	    "Zm9.",           /* punctuation */
	    "Zm9v\xc3\xa4==", /* 8-bit */
	    "*",              /* IMAP client cancelling an exchange */
	};

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		uint8_t out[16];
		size_t outlen = 0;

		if (b64_decode(bad[i], strlen(bad[i]), out, sizeof(out), &outlen) != -1)
			fail_msg("accepted bad input #%zu \"%s\"", i, bad[i]);
	}
}

static void test_decode_embedded_nul(void **state)
{
	uint8_t out[8];
	size_t outlen = 0;

	(void)state;
	assert_int_equal(b64_decode("Zm\0v", 4, out, sizeof(out), &outlen), -1);
	assert_int_equal(b64_decode("Zm9v\0\0\0\0", 8, out, sizeof(out), &outlen), -1);
}

/* The decoder must not read past n: hand it exact-size heap copies. */
static void test_decode_prefixes(void **state)
{
	static const char enc[] = "AGFsaWNlAHNlY3JldA==";
	size_t n = sizeof(enc) - 1;

	(void)state;
	for (size_t k = 0; k <= n; k++) {
		char *copy = malloc(k == 0 ? 1 : k);
		uint8_t out[32];
		size_t outlen = 0;
		int rc;

		assert_non_null(copy);
		memcpy(copy, enc, k);
		rc = b64_decode(copy, k, out, sizeof(out), &outlen);
		/* Every whole-quantum prefix of this one is itself valid. */
		assert_int_equal(rc, k % 4 == 0 ? 0 : -1);
		free(copy);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_vectors_encode),
	    cmocka_unit_test(test_vectors_decode),
	    cmocka_unit_test(test_empty),
	    cmocka_unit_test(test_roundtrip_lengths),
	    cmocka_unit_test(test_roundtrip_all_bytes),
	    cmocka_unit_test(test_alphabet_exhaustive),
	    cmocka_unit_test(test_encode_outcap),
	    cmocka_unit_test(test_decode_outcap),
	    cmocka_unit_test(test_decode_rejects),
	    cmocka_unit_test(test_decode_embedded_nul),
	    cmocka_unit_test(test_decode_prefixes),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
