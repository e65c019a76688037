/*
 * base64 — see base64.h. Strict RFC 4648 section 4 base64 for SASL.
 *
 * Invariants:
 *   - Decoding accepts exactly the canonical encoding of some byte string:
 *     only A-Z a-z 0-9 + /, a length that is a multiple of 4, '=' only as
 *     the last one or two characters, and zero bits in the unused low bits
 *     of the last quantum (RFC 4648 section 3.5). Everything else is -1, so
 *     two different wire strings never decode to the same credentials.
 *   - Nothing is written beyond outcap; nothing is read beyond n.
 *
 * The input is usually a SASL PLAIN response, i.e. a password. Mapping a
 * character to its value is therefore done without branches or table
 * lookups indexed by the secret, so that timing does not depend on which
 * characters the password contains.
 */
#include "base64.h"

#include <limits.h>

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/*
 * All ones if lo <= c <= hi, else zero. c, lo and hi are at most 255, so
 * both differences fit in an int and are negative exactly when c is out of
 * range on that side; the sign bit is then moved down to build the mask.
 */
static unsigned int b64_range_mask(unsigned int c, unsigned int lo, unsigned int hi)
{
	unsigned int below = (c - lo) >> (sizeof(unsigned int) * CHAR_BIT - 1);
	unsigned int above = (hi - c) >> (sizeof(unsigned int) * CHAR_BIT - 1);

	return ((below | above) & 1u) - 1u;
}

/* The 6-bit value of character c, or -1 if c is not in the alphabet. */
static int b64_value(unsigned char c)
{
	unsigned int v = 0;

	/* Each term is (value + 1) where its range matches, zero elsewhere. */
	v |= b64_range_mask(c, 'A', 'Z') & (c - 'A' + 1u);
	v |= b64_range_mask(c, 'a', 'z') & (c - 'a' + 27u);
	v |= b64_range_mask(c, '0', '9') & (c - '0' + 53u);
	v |= b64_range_mask(c, '+', '+') & 63u;
	v |= b64_range_mask(c, '/', '/') & 64u;
	return (int)v - 1;
}

long b64_encode(const uint8_t *in, size_t n, char *out, size_t outcap)
{
	size_t i, o = 0;

	/* Refuse sizes whose encoded length would not fit the return type. */
	if (n > (size_t)LONG_MAX / 4 * 3 - 3)
		return -1;
	if (outcap < B64_ENCODED_LEN(n) + 1)
		return -1;

	for (i = 0; i + 3 <= n; i += 3) {
		uint32_t q = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];

		out[o++] = b64_alphabet[q >> 18 & 0x3f];
		out[o++] = b64_alphabet[q >> 12 & 0x3f];
		out[o++] = b64_alphabet[q >> 6 & 0x3f];
		out[o++] = b64_alphabet[q & 0x3f];
	}
	if (n - i == 1) {
		uint32_t q = (uint32_t)in[i] << 16;

		out[o++] = b64_alphabet[q >> 18 & 0x3f];
		out[o++] = b64_alphabet[q >> 12 & 0x3f];
		out[o++] = '=';
		out[o++] = '=';
	} else if (n - i == 2) {
		uint32_t q = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;

		out[o++] = b64_alphabet[q >> 18 & 0x3f];
		out[o++] = b64_alphabet[q >> 12 & 0x3f];
		out[o++] = b64_alphabet[q >> 6 & 0x3f];
		out[o++] = '=';
	}
	out[o] = '\0';
	return (long)o;
}

int b64_decode(const char *in, size_t n, uint8_t *out, size_t outcap, size_t *outlen_r)
{
	size_t pad = 0, need, i, o = 0;

	if (n % 4 != 0)
		return -1;
	if (n > 0 && in[n - 1] == '=') {
		pad = 1;
		if (in[n - 2] == '=')
			pad = 2;
	}
	need = n / 4 * 3 - pad;
	if (need > outcap)
		return -1;

	for (i = 0; i < n; i += 4) {
		/* Only the last quantum may hold padding; it was counted above. */
		size_t data = (i + 4 == n) ? 4 - pad : 4;
		uint32_t q = 0;
		size_t k;

		for (k = 0; k < data; k++) {
			int v = b64_value((unsigned char)in[i + k]);

			if (v < 0)
				return -1;
			q = q << 6 | (uint32_t)v;
		}
		/* One '=' leaves 2 unused bits, two leave 4: they must be 0. */
		if ((data == 3 && (q & 0x3) != 0) || (data == 2 && (q & 0xf) != 0))
			return -1;
		if (data == 4) {
			out[o++] = (uint8_t)(q >> 16);
			out[o++] = (uint8_t)(q >> 8);
			out[o++] = (uint8_t)q;
		} else if (data == 3) {
			out[o++] = (uint8_t)(q >> 10);
			out[o++] = (uint8_t)(q >> 2);
		} else {
			out[o++] = (uint8_t)(q >> 4);
		}
	}
	*outlen_r = o;
	return 0;
}
