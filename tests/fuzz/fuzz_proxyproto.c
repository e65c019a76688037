/*
 * fuzz_proxyproto — common/proxyproto.c on arbitrary connection openings.
 *
 * The input is what a client sends first. Every prefix of it is presented
 * (from 0 bytes up: the bytes arriving one at a time, which also covers
 * every way of splitting them into reads) in a buffer where ASan poisons
 * everything past the prefix. Checked:
 *   - the answers form -2...-2 then a final 0 or -1 that never changes:
 *     the same header length and result, or the same reason;
 *   - no -2 once PROXYPROTO_MAX_HEADER bytes are in;
 *   - a header is well formed: v1 starts "PROXY ", ends in CRLF within 107
 *     bytes, and a TCP4 line is exactly what its result prints back as
 *     (strictness: one spelling per header); v2 is 16 + its length field,
 *     and its address block holds the addresses and ports returned;
 *   - AF_UNSPEC results carry zeroed addresses; -1 has a reason.
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <string.h>

#include "fuzz.h"
#include "proxyproto.h"

static const uint8_t v2_sig[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
                                   0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};

static bool same_result(const struct proxyproto_result *a, const struct proxyproto_result *b)
{
	return a->version == b->version && a->command == b->command && a->family == b->family &&
	       memcmp(&a->src, &b->src, sizeof(a->src)) == 0 &&
	       memcmp(&a->dst, &b->dst, sizeof(a->dst)) == 0;
}

static void check_v1(const uint8_t *h, size_t n, const struct proxyproto_result *r)
{
	const struct sockaddr_in *s = (const struct sockaddr_in *)&r->src;
	const struct sockaddr_in *d = (const struct sockaddr_in *)&r->dst;
	char line[PROXYPROTO_V1_MAX + 1], sa[INET_ADDRSTRLEN], da[INET_ADDRSTRLEN];
	int len;

	FUZZ_CHECK(n >= 15 && n <= PROXYPROTO_V1_MAX, "v1 length 15..107");
	FUZZ_CHECK(memcmp(h, "PROXY ", 6) == 0, "v1 starts with PROXY SP");
	FUZZ_CHECK(h[n - 2] == '\r' && h[n - 1] == '\n', "v1 ends in CRLF");
	FUZZ_CHECK(memchr(h, '\n', n - 1) == NULL, "v1 has one line end");
	FUZZ_CHECK(r->command == PROXYPROTO_CMD_PROXY, "v1 is always PROXY");
	if (r->family == AF_UNSPEC) {
		FUZZ_CHECK(memcmp(h + 6, "UNKNOWN", 7) == 0, "v1 AF_UNSPEC is UNKNOWN");
		return;
	}
	if (r->family == AF_INET6) {
		FUZZ_CHECK(memcmp(h + 6, "TCP6 ", 5) == 0, "v1 AF_INET6 is TCP6");
		return;
	}
	FUZZ_CHECK(r->family == AF_INET && memcmp(h + 6, "TCP4 ", 5) == 0, "v1 AF_INET is TCP4");
	FUZZ_CHECK(inet_ntop(AF_INET, &s->sin_addr, sa, sizeof(sa)) != NULL, "inet_ntop");
	FUZZ_CHECK(inet_ntop(AF_INET, &d->sin_addr, da, sizeof(da)) != NULL, "inet_ntop");
	len = snprintf(line, sizeof(line), "PROXY TCP4 %s %s %u %u\r\n", sa, da, ntohs(s->sin_port),
	               ntohs(d->sin_port));
	FUZZ_CHECK(len > 0 && (size_t)len == n && memcmp(line, h, n) == 0,
	           "a TCP4 line is the one spelling of its result");
}

static void check_v2(const uint8_t *h, size_t n, const struct proxyproto_result *r)
{
	const uint8_t *b = h + 16;

	FUZZ_CHECK(n >= 16 && n <= PROXYPROTO_MAX_HEADER, "v2 length 16..MAX");
	FUZZ_CHECK(memcmp(h, v2_sig, 12) == 0, "v2 signature");
	FUZZ_CHECK(n == 16 + ((size_t)h[14] << 8 | h[15]), "v2 is 16 + its length field");
	FUZZ_CHECK(h[12] >> 4 == 2, "v2 version 2");
	FUZZ_CHECK(r->command == ((h[12] & 0x0f) ? PROXYPROTO_CMD_PROXY : PROXYPROTO_CMD_LOCAL),
	           "v2 command");
	if (r->family == AF_INET) {
		const struct sockaddr_in *s = (const struct sockaddr_in *)&r->src;
		const struct sockaddr_in *d = (const struct sockaddr_in *)&r->dst;

		FUZZ_CHECK(h[13] == 0x11 && n >= 16 + 12, "v2 AF_INET is 0x11 with 12 bytes");
		FUZZ_CHECK(memcmp(&s->sin_addr, b, 4) == 0 && memcmp(&d->sin_addr, b + 4, 4) == 0 &&
		               memcmp(&s->sin_port, b + 8, 2) == 0 &&
		               memcmp(&d->sin_port, b + 10, 2) == 0,
		           "v2 IPv4 addresses and ports");
	} else if (r->family == AF_INET6) {
		const struct sockaddr_in6 *s = (const struct sockaddr_in6 *)&r->src;
		const struct sockaddr_in6 *d = (const struct sockaddr_in6 *)&r->dst;

		FUZZ_CHECK(h[13] == 0x21 && n >= 16 + 36, "v2 AF_INET6 is 0x21 with 36 bytes");
		FUZZ_CHECK(memcmp(&s->sin6_addr, b, 16) == 0 &&
		               memcmp(&d->sin6_addr, b + 16, 16) == 0 &&
		               memcmp(&s->sin6_port, b + 32, 2) == 0 &&
		               memcmp(&d->sin6_port, b + 34, 2) == 0,
		           "v2 IPv6 addresses and ports");
	} else {
		FUZZ_CHECK(r->command == PROXYPROTO_CMD_LOCAL || h[13] == 0x00 || h[13] == 0x31,
		           "v2 AF_UNSPEC: LOCAL, UNSPEC or UNIX stream");
	}
}

static void check_header(const uint8_t *h, size_t n, const struct proxyproto_result *r)
{
	static const struct sockaddr_storage zero;

	FUZZ_CHECK(r->family == AF_INET || r->family == AF_INET6 || r->family == AF_UNSPEC,
	           "family");
	if (r->family == AF_UNSPEC) {
		FUZZ_CHECK(memcmp(&r->src, &zero, sizeof(zero)) == 0 &&
		               memcmp(&r->dst, &zero, sizeof(zero)) == 0,
		           "AF_UNSPEC: zeroed addresses");
	} else {
		FUZZ_CHECK(r->src.ss_family == r->family && r->dst.ss_family == r->family,
		           "addresses of the family");
	}
	FUZZ_CHECK(r->version == 1 || r->version == 2, "version 1 or 2");
	if (r->version == 1)
		check_v1(h, n, r);
	else
		check_v2(h, n, r);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct proxyproto_result final;
	const char *final_err = NULL;
	size_t final_consumed = 0, n = size;
	int final_rc = -2;
	uint8_t *buf;

	/* Nothing past the longest header can change the answer. */
	if (n > PROXYPROTO_MAX_HEADER + 64)
		n = PROXYPROTO_MAX_HEADER + 64;
	buf = malloc(n + 1);
	FUZZ_CHECK(buf != NULL, "out of memory");
	memcpy(buf, data, n);
	FUZZ_POISON(buf, n + 1);
	memset(&final, 0, sizeof(final));

	for (size_t k = 0; k <= n; k++) {
		struct proxyproto_result r;
		size_t consumed = 0;
		const char *err = NULL;
		int rc = proxyproto_parse(buf, k, &r, &consumed, &err);

		if (final_rc == -2) {
			FUZZ_CHECK(rc == 0 || rc == -1 || rc == -2, "0, -1 or -2");
			FUZZ_CHECK(rc != -2 || k < PROXYPROTO_MAX_HEADER,
			           "-2 only while a header fits");
			if (rc == 0) {
				FUZZ_CHECK(consumed > 0 && consumed <= k,
				           "a header within the bytes");
				check_header(data, consumed, &r);
				final = r;
				final_consumed = consumed;
			} else if (rc == -1) {
				FUZZ_CHECK(err != NULL && err[0] != '\0', "-1 has a reason");
				final_err = err;
			}
			final_rc = rc;
		} else if (final_rc == 0) {
			FUZZ_CHECK(rc == 0 && consumed == final_consumed && same_result(&r, &final),
			           "more bytes never change a header");
		} else {
			FUZZ_CHECK(rc == -1 && strcmp(err, final_err) == 0,
			           "more bytes never change a refusal");
		}
		if (k < n)
			FUZZ_UNPOISON(buf + k, 1);
	}
	FUZZ_UNPOISON(buf, n + 1);
	free(buf);
	return 0;
}
