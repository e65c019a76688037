/*
 * test_proxyproto — the PROXY protocol header parser (common/proxyproto.c).
 *
 * Every case goes through one of two checkers that present every prefix
 * of the input, from 0 bytes to all of it, each in a heap block of exactly
 * that size (ASan catches a read past len). Since the parser is called
 * again with the same bytes plus more, the prefixes are exactly what a
 * caller sees when the header arrives one byte at a time, or split at any
 * offset.
 *   - check_valid: -2 for every prefix shorter than the header, then 0
 *     with the same result and consumed count for every longer one
 *     (bytes after the header are the client's and never consumed);
 *   - check_invalid: -2 for every prefix shorter than the byte that
 *     proves the header invalid, then -1 with the same reason: the test
 *     tables name that byte, so each case also pins early rejection.
 * Outputs must be untouched for the other return values.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include "proxyproto.h"

#define SIG "\r\n\r\n\0\r\nQUIT\n"

/* What a valid header must give. src/dst NULL: AF_UNSPEC, all zero. */
struct expect {
	int version;
	enum proxyproto_cmd command;
	int family;
	const char *src;
	unsigned sport;
	const char *dst;
	unsigned dport;
};

/* ---- helpers ---------------------------------------------------------- */

static int parse_copy(const uint8_t *data, size_t k, struct proxyproto_result *r,
                      size_t *consumed_r, const char **err_r)
{
	uint8_t *copy = malloc(k > 0 ? k : 1);
	int rc;

	assert_non_null(copy);
	memcpy(copy, data, k);
	rc = proxyproto_parse(copy, k, r, consumed_r, err_r);
	free(copy);
	return rc;
}

static void assert_addr(const struct sockaddr_storage *ss, int family, const char *text,
                        unsigned port)
{
	char buf[INET6_ADDRSTRLEN];

	assert_int_equal(ss->ss_family, family);
	if (family == AF_INET) {
		const struct sockaddr_in *sin = (const struct sockaddr_in *)ss;

		assert_non_null(inet_ntop(AF_INET, &sin->sin_addr, buf, sizeof(buf)));
		assert_int_equal(ntohs(sin->sin_port), port);
	} else {
		const struct sockaddr_in6 *sin6 = (const struct sockaddr_in6 *)ss;

		assert_non_null(inet_ntop(AF_INET6, &sin6->sin6_addr, buf, sizeof(buf)));
		assert_int_equal(ntohs(sin6->sin6_port), port);
	}
	assert_string_equal(buf, text);
}

static void assert_expect(const struct proxyproto_result *r, const struct expect *e)
{
	static const struct sockaddr_storage zero;

	assert_int_equal(r->version, e->version);
	assert_int_equal(r->command, e->command);
	assert_int_equal(r->family, e->family);
	if (e->family == AF_UNSPEC) {
		assert_memory_equal(&r->src, &zero, sizeof(zero));
		assert_memory_equal(&r->dst, &zero, sizeof(zero));
		return;
	}
	assert_addr(&r->src, e->family, e->src, e->sport);
	assert_addr(&r->dst, e->family, e->dst, e->dport);
}

/* data[0..len) starts with a valid header of hdr_len bytes. */
static void check_valid(const void *data, size_t len, size_t hdr_len, const struct expect *e)
{
	struct proxyproto_result first;
	bool have_first = false;

	assert_true(hdr_len <= len);
	assert_true(hdr_len <= PROXYPROTO_MAX_HEADER);
	for (size_t k = 0; k <= len; k++) {
		struct proxyproto_result r;
		size_t consumed = 12345;
		const char *err = "untouched";
		int rc;

		memset(&r, 0xa5, sizeof(r));
		rc = parse_copy(data, k, &r, &consumed, &err);
		assert_string_equal(err, "untouched");
		if (k < hdr_len) {
			assert_int_equal(rc, -2);
			assert_int_equal(consumed, 12345);
			continue;
		}
		assert_int_equal(rc, 0);
		assert_int_equal(consumed, hdr_len);
		assert_expect(&r, e);
		if (have_first)
			assert_memory_equal(&r, &first, sizeof(r));
		first = r;
		have_first = true;
	}
}

/* data[0..len) is invalid, and its first decide_at bytes prove it. */
static void check_invalid(const void *data, size_t len, size_t decide_at, const char *why)
{
	assert_true(decide_at >= 1 && decide_at <= len);
	for (size_t k = 0; k <= len; k++) {
		struct proxyproto_result r, untouched;
		size_t consumed = 12345;
		const char *err = NULL;
		int rc;

		memset(&r, 0xa5, sizeof(r));
		untouched = r;
		rc = parse_copy(data, k, &r, &consumed, &err);
		assert_int_equal(consumed, 12345);
		assert_memory_equal(&r, &untouched, sizeof(r));
		if (k < decide_at) {
			if (rc != -2)
				fail_msg("prefix %zu of %zu: %d (%s), want -2", k, len, rc,
				         err ? err : "-");
			assert_null(err);
			continue;
		}
		if (rc != -1)
			fail_msg("prefix %zu of %zu: %d, want -1 (%s)", k, len, rc, why);
		assert_non_null(err);
		assert_string_equal(err, why);
	}
}

static void check_valid_str(const char *s, size_t hdr_len, const struct expect *e)
{
	check_valid(s, strlen(s), hdr_len, e);
}

/* The text s is invalid; the byte that proves it is the first of at. */
static void check_invalid_at(const char *s, const char *at, const char *why)
{
	const char *pos = strstr(s, at);

	assert_non_null(pos);
	check_invalid(s, strlen(s), (size_t)(pos - s) + 1, why);
}

/* A v2 header: signature, ver_cmd, fam, the length of block, block. */
static size_t v2(uint8_t *out, uint8_t ver_cmd, uint8_t fam, const void *block, size_t blen)
{
	memcpy(out, SIG, 12);
	out[12] = ver_cmd;
	out[13] = fam;
	out[14] = (uint8_t)(blen >> 8);
	out[15] = (uint8_t)blen;
	if (blen > 0)
		memcpy(out + 16, block, blen);
	return 16 + blen;
}

/* Append a TLV to block[*n..). */
static void tlv(uint8_t *block, size_t *n, uint8_t type, const void *val, size_t vlen)
{
	block[(*n)++] = type;
	block[(*n)++] = (uint8_t)(vlen >> 8);
	block[(*n)++] = (uint8_t)vlen;
	if (vlen > 0)
		memcpy(block + *n, val, vlen);
	*n += vlen;
}

/* 192.0.2.1:56324 -> 198.51.100.2:993 */
static const uint8_t v4_block[12] = {192, 0, 2, 1, 198, 51, 100, 2, 0xdc, 0x04, 0x03, 0xe1};

static const struct expect v4_expect = {2,     PROXYPROTO_CMD_PROXY, AF_INET, "192.0.2.1",
                                        56324, "198.51.100.2",       993};

/* ---- v1 ---------------------------------------------------------------- */

static void test_v1_tcp4(void **state)
{
	static const struct expect e1 = {1,     PROXYPROTO_CMD_PROXY, AF_INET, "192.168.0.1",
	                                 56324, "192.168.0.11",       443};
	static const struct expect e2 = {1,     PROXYPROTO_CMD_PROXY, AF_INET, "255.255.255.255",
	                                 65535, "255.255.255.255",    65535};
	static const struct expect e3 = {1, PROXYPROTO_CMD_PROXY, AF_INET, "0.0.0.0",
	                                 0, "10.0.0.1",           0};
	const char *h1 = "PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n";
	const char *h2 = "PROXY TCP4 255.255.255.255 255.255.255.255 65535 65535\r\n";
	char buf[256];

	(void)state;
	/* The client's first command follows: not part of the header. */
	snprintf(buf, sizeof(buf), "%sa1 CAPABILITY\r\n", h1);
	check_valid_str(buf, strlen(h1), &e1);
	assert_int_equal(strlen(h2), 56); /* the spec's longest TCP4 line */
	check_valid_str(h2, 56, &e2);
	check_valid_str("PROXY TCP4 0.0.0.0 10.0.0.1 0 0\r\n\x16\x03\x01", 33, &e3);
}

static void test_v1_tcp6(void **state)
{
	static const struct expect e1 = {1,    PROXYPROTO_CMD_PROXY, AF_INET6, "2001:db8::1",
	                                 1234, "2001:db8::2",        993};
	static const struct expect e2 = {1,        PROXYPROTO_CMD_PROXY,
	                                 AF_INET6, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
	                                 65535,    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
	                                 65535};
	static const struct expect e3 = {
	    1, PROXYPROTO_CMD_PROXY, AF_INET6, "::ffff:192.0.2.1", 1, "::1", 2};
	const char *h2 = "PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
	                 "FFFF:FFFF:FFFF:FFFF:FFFF:FFFF:FFFF:FFFF 65535 65535\r\n";

	(void)state;
	check_valid_str("PROXY TCP6 2001:db8::1 2001:db8::2 1234 993\r\na", 45, &e1);
	assert_int_equal(strlen(h2), 104); /* the spec's longest TCP6 line */
	check_valid_str(h2, 104, &e2);
	check_valid_str("PROXY TCP6 ::ffff:192.0.2.1 ::1 1 2\r\n", 37, &e3);
}

static void test_v1_unknown(void **state)
{
	static const struct expect e = {1, PROXYPROTO_CMD_PROXY, AF_UNSPEC, NULL, 0, NULL, 0};
	const char *worst = "PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff "
	                    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
	char buf[256];

	(void)state;
	check_valid_str("PROXY UNKNOWN\r\n* OK", 15, &e);
	assert_int_equal(strlen(worst), PROXYPROTO_V1_MAX);
	check_valid_str(worst, PROXYPROTO_V1_MAX, &e);
	/* Anything but CR and LF, spaces and 8-bit bytes included. */
	check_valid_str("PROXY UNKNOWN  a\t\x01\xff  \"x\"  \r\n", 28, &e);
	/* Exactly 107 bytes of anything. */
	memset(buf, 'x', sizeof(buf));
	memcpy(buf, "PROXY UNKNOWN ", 14);
	memcpy(buf + 105, "\r\n", 3);
	check_valid_str(buf, 107, &e);
}

static void test_v1_invalid(void **state)
{
	static const struct {
		const char *s;
		const char *at; /* the first byte that proves it (first match) */
		const char *why;
	} cases[] = {
	    {"GET / HTTP/1.0\r\n", "G", "not a PROXY protocol header"},
	    {"a1 LOGIN u p\r\n", "a", "not a PROXY protocol header"},
	    {"\x16\x03\x01\x02", "\x16", "not a PROXY protocol header"},
	    {"PROXZ TCP4", "Z", "v1: not a PROXY line"},
	    {"PROXY\tTCP4", "\t", "v1: not a PROXY line"},
	    {"proxy TCP4", "p", "not a PROXY protocol header"},
	    {"PROXY  TCP4 1.2.3.4", " T", "v1: empty field"},
	    {"PROXY tcp4 1.2.3.4", "t", "v1: unknown protocol"},
	    {"PROXY TCP5 1.2.3.4", "5", "v1: unknown protocol"},
	    {"PROXY TCP 1.2.3.4", " 1", "v1: unknown protocol"},
	    {"PROXY UDP4 1.2.3.4", "D", "v1: unknown protocol"},
	    {"PROXY UNKNOWNX\r\n", "X\r", "v1: unknown protocol"},
	    {"PROXY TCP4\r\n", "\r", "v1: missing fields"},
	    {"PROXY TCP4 1.2.3.4 5.6.7.8 1\r\n", "\r", "v1: missing fields"},
	    {"PROXY TCP4 1.2.3.4\r\n", "\r", "v1: missing fields"},
	    {"PROXY TCP4  1.2.3.4 5.6.7.8 1 2\r\n", " 1.2", "v1: empty field"},
	    {"PROXY TCP4 1.2.3.4  5.6.7.8 1 2\r\n", " 5", "v1: empty field"},
	    {"PROXY TCP4 1.2.3.4 5.6.7.8 1 \r\n", "\r", "v1: empty field"},
	    {"PROXY TCP4 1.2.3.4 5.6.7.8 1 2 \r\n", " \r", "v1: too many fields"},
	    {"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n", "\n", "v1: LF without CR"},
	    {"PROXY TCP4 1.2.3.4\n", "\n", "v1: LF without CR"},
	    {"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\r\r\n", "\r\n", "v1: CR without LF"},
	    {"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\rZ", "Z", "v1: CR without LF"},
	    {"PROXY UNKNOWN x\ry\r\n", "y", "v1: CR without LF"},
	    {"PROXY UNKNOWN x\ny\r\n", "\n", "v1: LF without CR"},
	    /* addresses: what the characters rule out at once, the rest at the space */
	    {"PROXY TCP4 1.2.3.256 5.6.7.8 1 2\r\n", " 5", "v1: bad address"},
	    {"PROXY TCP4 1.2.3 5.6.7.8 1 2\r\n", " 5", "v1: bad address"},
	    {"PROXY TCP4 1.2.3.4.5 5.6.7.8 1 2\r\n", " 5", "v1: bad address"},
	    {"PROXY TCP4 1..3.4 5.6.7.8 1 2\r\n", " 5", "v1: bad address"},
	    {"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n", "1.2", "v1: bad address"},
	    {"PROXY TCP4 1.2.3.4 5.6.7.08 1 2\r\n", "8 ", "v1: bad address"},
	    {"PROXY TCP4 1.2.3.4 5.6.7.00 1 2\r\n", "0 1", "v1: bad address"},
	    {"PROXY TCP4 ::1 ::1 1 2\r\n", ":", "v1: bad address"},
	    {"PROXY TCP4 1.2.3.4 5.6.7.8x 1 2\r\n", "x", "v1: bad address"},
	    {"PROXY TCP4 1111111111111111 5.6.7.8 1 2\r\n", "1 5", "v1: bad address"},
	    {"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", " ::", "v1: bad address"},
	    {"PROXY TCP6 ::1 1.2.3.4 1 2\r\n", " 1 2", "v1: bad address"},
	    {"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "%", "v1: bad address"},
	    {"PROXY TCP6 [::1] ::1 1 2\r\n", "[", "v1: bad address"},
	    {"PROXY TCP6 1:2:3:4:5:6:7:8:9 ::1 1 2\r\n", " ::", "v1: bad address"},
	    {"PROXY TCP6 ::g ::1 1 2\r\n", "g", "v1: bad address"},
	    /* ports: every wrong byte is wrong on arrival */
	    {"PROXY TCP4 1.2.3.4 5.6.7.8 65536 2\r\n", "6 2", "v1: bad port"},
	    {"PROXY TCP4 1.2.3.4 5.6.7.8 99999 2\r\n", "9 2", "v1: bad port"},
	    {"PROXY TCP4 1.2.3.4 5.6.7.8 100000 2\r\n", "0 2", "v1: bad port"},
	    {"PROXY TCP4 1.2.3.4 5.6.7.8 +1 2\r\n", "+", "v1: bad port"},
	    {"PROXY TCP4 1.2.3.4 5.6.7.8 -1 2\r\n", "-", "v1: bad port"},
	    {"PROXY TCP4 1.2.3.4 5.6.7.8 01 2\r\n", "1 2", "v1: bad port"},
	    {"PROXY TCP4 1.2.3.4 5.6.7.8 1 00\r\n", "0\r", "v1: bad port"},
	    {"PROXY TCP4 1.2.3.4 5.6.7.8 1 0x1\r\n", "x", "v1: bad port"},
	    {"PROXY TCP4 1.2.3.4 5.6.7.8 1 2a\r\n", "a", "v1: bad port"},
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		check_invalid_at(cases[i].s, cases[i].at, cases[i].why);
}

/* The 107-byte bound: refused at the first byte that makes a CRLF within
 * 107 bytes impossible, however long the line goes on. */
static void test_v1_limits(void **state)
{
	char buf[300];

	(void)state;
	/* UNKNOWN with its CR at index 106: index 105 is already wrong. */
	memset(buf, 'x', sizeof(buf));
	memcpy(buf, "PROXY UNKNOWN ", 14);
	memcpy(buf + 106, "\r\n", 2);
	check_invalid(buf, 108, 106, "v1: line too long");
	/* An endless line is refused at the same byte, not after a while. */
	check_invalid(buf, sizeof(buf), 106, "v1: line too long");
	/* The same with a short valid line after 107 bytes of spaces. */
	memset(buf, ' ', sizeof(buf));
	memcpy(buf, "PROXY UNKNOWN ", 14);
	check_invalid(buf, 200, 106, "v1: line too long");
}

/* ---- v2 ---------------------------------------------------------------- */

static void test_v2_tcp4(void **state)
{
	uint8_t buf[64];
	size_t n;

	(void)state;
	n = v2(buf, 0x21, 0x11, v4_block, sizeof(v4_block));
	assert_int_equal(n, 28);
	memcpy(buf + n, "a1 NOOP\r\n", 9);
	check_valid(buf, n + 9, n, &v4_expect);
}

static void test_v2_tcp6(void **state)
{
	static const struct expect e = {2, PROXYPROTO_CMD_PROXY, AF_INET6, "2001:db8::1",
	                                1, "2001:db8::ffff",     65535};
	uint8_t block[36] = {0x20, 0x01, 0x0d, 0xb8, 0,    0,    0,    0,    0,    0,   0, 0, 0,
	                     0,    0,    1,    0x20, 0x01, 0x0d, 0xb8, 0,    0,    0,   0, 0, 0,
	                     0,    0,    0,    0,    0xff, 0xff, 0x00, 0x01, 0xff, 0xff};
	uint8_t buf[64];
	size_t n;

	(void)state;
	n = v2(buf, 0x21, 0x21, block, sizeof(block));
	assert_int_equal(n, 52);
	check_valid(buf, n, n, &e);
}

static void test_v2_local(void **state)
{
	static const struct expect e = {2, PROXYPROTO_CMD_LOCAL, AF_UNSPEC, NULL, 0, NULL, 0};
	uint8_t junk[PROXYPROTO_V2_MAX_LEN];
	uint8_t buf[PROXYPROTO_MAX_HEADER + 8];
	size_t n;

	(void)state;
	/* What HAProxy sends for health checks. */
	n = v2(buf, 0x20, 0x00, NULL, 0);
	memcpy(buf + n, "\x16\x03", 2);
	check_valid(buf, n + 2, n, &e);
	/* LOCAL ignores the family and the block, whatever they hold:
	 * addresses, short blocks, datagram families, non-TLV bytes. */
	n = v2(buf, 0x20, 0x11, v4_block, sizeof(v4_block));
	check_valid(buf, n, n, &e);
	n = v2(buf, 0x20, 0x21, "\x01\x02", 2);
	check_valid(buf, n, n, &e);
	n = v2(buf, 0x20, 0x12, v4_block, sizeof(v4_block));
	check_valid(buf, n, n, &e);
	memset(junk, 0xff, sizeof(junk));
	n = v2(buf, 0x20, 0x32, junk, sizeof(junk));
	assert_int_equal(n, PROXYPROTO_MAX_HEADER);
	check_valid(buf, n, n, &e);
}

static void test_v2_tlvs(void **state)
{
	static const uint8_t ssl[] = {0x01, 0,   0,   0,   0,   0x21, 0,  7,
	                              'T',  'L', 'S', 'v', '1', '.',  '3'};
	uint8_t block[PROXYPROTO_V2_MAX_LEN], big[PROXYPROTO_V2_MAX_LEN];
	uint8_t buf[PROXYPROTO_MAX_HEADER + 16];
	size_t n, bn = 0;

	(void)state;
	memset(buf, 0, sizeof(buf));
	memcpy(block, v4_block, sizeof(v4_block));
	bn = sizeof(v4_block);
	tlv(block, &bn, 0x01, "imap", 4);              /* ALPN */
	tlv(block, &bn, 0x02, "mail.example.org", 16); /* AUTHORITY */
	tlv(block, &bn, 0x04, NULL, 0);                /* NOOP, empty */
	tlv(block, &bn, 0x05, "\x00\x01\x02\x03", 4);  /* UNIQUE_ID */
	tlv(block, &bn, 0x20, ssl, sizeof(ssl));       /* SSL with a sub-TLV */
	tlv(block, &bn, 0x03, "\xde\xad\xbe\xef", 4);  /* CRC32C: not checked */
	tlv(block, &bn, 0xe0, "custom", 6);            /* application range */
	n = v2(buf, 0x21, 0x11, block, bn);
	memcpy(buf + n, "a1 LOGIN", 8);
	check_valid(buf, n + 8, n, &v4_expect);

	/* The largest block: addresses and one TLV filling it to the byte. */
	memcpy(block, v4_block, sizeof(v4_block));
	bn = sizeof(v4_block);
	memset(big, 'z', sizeof(big));
	tlv(block, &bn, 0x04, big, PROXYPROTO_V2_MAX_LEN - sizeof(v4_block) - 3);
	assert_int_equal(bn, PROXYPROTO_V2_MAX_LEN);
	n = v2(buf, 0x21, 0x11, block, bn);
	assert_int_equal(n, PROXYPROTO_MAX_HEADER);
	check_valid(buf, n + 16, n, &v4_expect);
}

static void test_v2_unspec(void **state)
{
	static const struct expect e = {2, PROXYPROTO_CMD_PROXY, AF_UNSPEC, NULL, 0, NULL, 0};
	uint8_t block[300];
	uint8_t buf[400];
	size_t n, bn;

	(void)state;
	/* UNSPEC: accepted, the block (not TLVs) ignored. */
	n = v2(buf, 0x21, 0x00, NULL, 0);
	check_valid(buf, n, n, &e);
	n = v2(buf, 0x21, 0x00, "\xff\xff", 2);
	check_valid(buf, n, n, &e);

	/* AF_UNIX stream: 2 x 108 bytes of paths, then TLVs; AF_UNSPEC. */
	memset(block, 0, sizeof(block));
	memcpy(block, "/run/haproxy.sock", 17);
	memcpy(block + 108, "/run/imapmux.sock", 17);
	bn = 216;
	n = v2(buf, 0x21, 0x31, block, bn);
	check_valid(buf, n, n, &e);
	tlv(block, &bn, 0x01, "imap", 4);
	n = v2(buf, 0x21, 0x31, block, bn);
	check_valid(buf, n, n, &e);
}

static void test_v2_invalid(void **state)
{
	uint8_t block[64], buf[PROXYPROTO_MAX_HEADER + 64];
	size_t n, bn;

	(void)state;
	/* The signature, byte by byte. */
	for (size_t i = 1; i < 12; i++) {
		v2(buf, 0x21, 0x11, v4_block, sizeof(v4_block));
		buf[i] ^= 0x20;
		check_invalid(buf, 28, i + 1, "v2: bad signature");
	}
	/* Version and command: the 13th byte. */
	n = v2(buf, 0x11, 0x11, v4_block, sizeof(v4_block));
	check_invalid(buf, n, 13, "v2: unsupported version");
	n = v2(buf, 0x31, 0x11, v4_block, sizeof(v4_block));
	check_invalid(buf, n, 13, "v2: unsupported version");
	n = v2(buf, 0x22, 0x11, v4_block, sizeof(v4_block));
	check_invalid(buf, n, 13, "v2: unknown command");
	n = v2(buf, 0x2f, 0x11, v4_block, sizeof(v4_block));
	check_invalid(buf, n, 13, "v2: unknown command");
	/* Family and protocol: the 14th byte, for PROXY and LOCAL alike. */
	static const uint8_t bad_fam[] = {0x01, 0x02, 0x10, 0x13, 0x20, 0x30, 0x33, 0x41, 0xff};
	for (size_t i = 0; i < sizeof(bad_fam); i++) {
		n = v2(buf, 0x21, bad_fam[i], v4_block, sizeof(v4_block));
		check_invalid(buf, n, 14, "v2: bad address family");
		n = v2(buf, 0x20, bad_fam[i], NULL, 0);
		check_invalid(buf, n, 14, "v2: bad address family");
	}
	static const uint8_t dgram[] = {0x12, 0x22, 0x32};
	for (size_t i = 0; i < sizeof(dgram); i++) {
		memset(block, 0, sizeof(block));
		n = v2(buf, 0x21, dgram[i], block, 36);
		check_invalid(buf, n, 14, "v2: datagram transport");
	}
	/* The length, judged as soon as its two bytes are in. */
	n = v2(buf, 0x21, 0x11, v4_block, sizeof(v4_block));
	buf[14] = 0x04;
	buf[15] = 0x01; /* 1025 */
	check_invalid(buf, n, 16, "v2: header too long");
	buf[14] = buf[15] = 0xff;
	check_invalid(buf, n, 16, "v2: header too long");
	n = v2(buf, 0x20, 0x00, NULL, 0);
	buf[14] = 0x04;
	buf[15] = 0x01;
	check_invalid(buf, n, 16, "v2: header too long");
	n = v2(buf, 0x21, 0x11, v4_block, 11);
	check_invalid(buf, n, 16, "v2: address block too short");
	n = v2(buf, 0x21, 0x11, NULL, 0);
	check_invalid(buf, n, 16, "v2: address block too short");
	memset(block, 0, sizeof(block));
	n = v2(buf, 0x21, 0x21, block, 35);
	check_invalid(buf, n, 16, "v2: address block too short");
	n = v2(buf, 0x21, 0x31, block, 64);
	check_invalid(buf, n, 16, "v2: address block too short");

	/* TLVs: 1 or 2 bytes after the addresses are not a TLV (the length
	 * field says so at once). */
	memcpy(block, v4_block, 12);
	block[12] = 0x04;
	block[13] = 0x00;
	n = v2(buf, 0x21, 0x11, block, 13);
	check_invalid(buf, n, 16, "v2: truncated TLV");
	n = v2(buf, 0x21, 0x11, block, 14);
	check_invalid(buf, n, 16, "v2: truncated TLV");
	/* A TLV longer than the block: known when its length arrives. */
	bn = 12;
	tlv(block, &bn, 0x01, "imap", 4);
	block[14] = 5;
	n = v2(buf, 0x21, 0x11, block, bn);
	check_invalid(buf, n, 16 + 15, "v2: TLV longer than the header");
	block[13] = 0xff;
	block[14] = 0xff;
	n = v2(buf, 0x21, 0x11, block, bn);
	check_invalid(buf, n, 16 + 15, "v2: TLV longer than the header");
	/* A good TLV then one stray byte: known with the first TLV's length. */
	bn = 12;
	tlv(block, &bn, 0x01, "imap", 4);
	block[bn++] = 0x04;
	n = v2(buf, 0x21, 0x11, block, bn);
	check_invalid(buf, n, 16 + 15, "v2: truncated TLV");
	/* The same after a UNIX block. */
	memset(buf, 0, sizeof(buf));
	memcpy(buf, SIG, 12);
	buf[12] = 0x21;
	buf[13] = 0x31;
	buf[15] = 218; /* 216 + 2 */
	check_invalid(buf, 16 + 218, 16, "v2: truncated TLV");
}

/*
 * A block of the largest length whose TLV chain leaves one stray byte:
 * 337 empty TLVs (type 0, length 0) after the addresses, 1012 = 3 * 337 + 1.
 * Refused when the last TLV's length is in, one byte before the end.
 */
static void test_bounded(void **state)
{
	uint8_t buf[PROXYPROTO_MAX_HEADER + 1];

	(void)state;
	memset(buf, 0, sizeof(buf));
	v2(buf, 0x21, 0x11, NULL, 0);
	buf[14] = PROXYPROTO_V2_MAX_LEN >> 8;
	buf[15] = PROXYPROTO_V2_MAX_LEN & 0xff;
	check_invalid(buf, sizeof(buf), 16 + 12 + 337 * 3, "v2: truncated TLV");
}

/* What proxyproto_build writes, read back by the parser. */
static void roundtrip(int version, const char *src, unsigned sport, const char *dst, unsigned dport,
                      int family, const char *want_src, const char *want_dst)
{
	uint8_t out[PROXYPROTO_BUILD_MAX];
	struct proxyproto_result r;
	size_t used = 0;
	const char *err = NULL;
	char text[INET6_ADDRSTRLEN];
	int n = proxyproto_build(version, src, sport, dst, dport, out, sizeof(out));

	assert_true(n > 0 && (size_t)n <= sizeof(out));
	assert_int_equal(proxyproto_parse(out, (size_t)n, &r, &used, &err), 0);
	assert_int_equal((int)used, n);
	assert_int_equal(r.version, version);
	assert_int_equal(r.family, family);
	assert_int_equal(r.command,
	                 src == NULL && version == 2 ? PROXYPROTO_CMD_LOCAL : PROXYPROTO_CMD_PROXY);
	if (family == AF_INET) {
		const struct sockaddr_in *a = (const struct sockaddr_in *)&r.src;
		const struct sockaddr_in *b = (const struct sockaddr_in *)&r.dst;
		assert_string_equal(inet_ntop(AF_INET, &a->sin_addr, text, sizeof(text)), want_src);
		assert_string_equal(inet_ntop(AF_INET, &b->sin_addr, text, sizeof(text)), want_dst);
		assert_int_equal(ntohs(a->sin_port), sport);
		assert_int_equal(ntohs(b->sin_port), dport);
	} else if (family == AF_INET6) {
		const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)&r.src;
		const struct sockaddr_in6 *b = (const struct sockaddr_in6 *)&r.dst;
		assert_string_equal(inet_ntop(AF_INET6, &a->sin6_addr, text, sizeof(text)),
		                    want_src);
		assert_string_equal(inet_ntop(AF_INET6, &b->sin6_addr, text, sizeof(text)),
		                    want_dst);
		assert_int_equal(ntohs(a->sin6_port), sport);
		assert_int_equal(ntohs(b->sin6_port), dport);
	}
}

static void test_build(void **state)
{
	uint8_t out[PROXYPROTO_BUILD_MAX];

	(void)state;
	for (int v = 1; v <= 2; v++) {
		roundtrip(v, "192.0.2.1", 56324, "198.51.100.2", 993, AF_INET, "192.0.2.1",
		          "198.51.100.2");
		roundtrip(v, "2001:db8::1", 1, "2001:db8::2", 65535, AF_INET6, "2001:db8::1",
		          "2001:db8::2");
		/* Mixed families: both as IPv6, the IPv4 one mapped. */
		roundtrip(v, "192.0.2.1", 5, "2001:db8::2", 143, AF_INET6, "::ffff:192.0.2.1",
		          "2001:db8::2");
		roundtrip(v, NULL, 0, NULL, 0, AF_UNSPEC, NULL, NULL);
	}
	assert_int_equal(
	    proxyproto_build(1, "192.0.2.1", 56324, "198.51.100.2", 993, out, sizeof(out)), 45);
	assert_memory_equal(out, "PROXY TCP4 192.0.2.1 198.51.100.2 56324 993\r\n", 45);
	/* The longest v1 line fits the bound. */
	assert_true(proxyproto_build(1, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535,
	                             "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535, out,
	                             sizeof(out)) > 0);
	assert_int_equal(proxyproto_build(2, "10.0.0.1", 1, "10.0.0.2", 2, out, 27), -1);
	assert_int_equal(proxyproto_build(1, "10.0.0.1", 1, "10.0.0.2", 2, out, 20), -1);
	assert_int_equal(proxyproto_build(1, "10.0.0.256", 1, "10.0.0.2", 2, out, sizeof(out)), -1);
	assert_int_equal(proxyproto_build(2, "host.example", 1, "10.0.0.2", 2, out, sizeof(out)),
	                 -1);
	assert_int_equal(proxyproto_build(2, "10.0.0.1", 65536, "10.0.0.2", 2, out, sizeof(out)),
	                 -1);
	assert_int_equal(proxyproto_build(3, NULL, 0, NULL, 0, out, sizeof(out)), -1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_v1_tcp4),    cmocka_unit_test(test_v1_tcp6),
	    cmocka_unit_test(test_v1_unknown), cmocka_unit_test(test_v1_invalid),
	    cmocka_unit_test(test_v1_limits),  cmocka_unit_test(test_v2_tcp4),
	    cmocka_unit_test(test_v2_tcp6),    cmocka_unit_test(test_v2_local),
	    cmocka_unit_test(test_v2_tlvs),    cmocka_unit_test(test_v2_unspec),
	    cmocka_unit_test(test_v2_invalid), cmocka_unit_test(test_bounded),
	    cmocka_unit_test(test_build),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
