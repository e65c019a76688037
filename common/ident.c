/*
 * ident — user names, address groups and Redis keys (see ident.h).
 *
 * The address group parses the text form back with inet_pton, which
 * touches nothing but its arguments; the text was made by inet_ntop from a
 * socket address or a PROXY header, so anything it cannot parse is not an
 * IPv6 address and is used as it is.
 */
#include "ident.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <string.h>

void ident_user_norm(const uint8_t *in, size_t len, bool fold, uint8_t *out)
{
	for (size_t i = 0; i < len; i++) {
		uint8_t c = in[i];
		out[i] = fold && c >= 'A' && c <= 'Z' ? (uint8_t)(c - 'A' + 'a') : c;
	}
}

static int copy_text(const char *s, char *out, size_t cap)
{
	size_t n = strlen(s);

	if (n >= cap) {
		if (cap > 0)
			out[0] = '\0';
		return -1;
	}
	memcpy(out, s, n + 1);
	return 0;
}

int ident_ip_group(const char *ip, unsigned v6_prefix, char *out, size_t cap)
{
	static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
	uint8_t a[16];
	char text[INET6_ADDRSTRLEN];

	if (v6_prefix < 1 || v6_prefix > 128) {
		if (cap > 0)
			out[0] = '\0';
		return -1;
	}
	if (inet_pton(AF_INET6, ip, a) != 1)
		return copy_text(ip, out, cap);
	if (memcmp(a, mapped, sizeof(mapped)) == 0) {
		if (inet_ntop(AF_INET, a + 12, text, sizeof(text)) == NULL)
			return copy_text(ip, out, cap);
		return copy_text(text, out, cap);
	}
	if (v6_prefix == 128) {
		if (inet_ntop(AF_INET6, a, text, sizeof(text)) == NULL)
			return copy_text(ip, out, cap);
		return copy_text(text, out, cap);
	}
	for (unsigned bit = v6_prefix; bit < 128; bit++)
		a[bit / 8] &= (uint8_t) ~(0x80u >> (bit % 8));
	if (inet_ntop(AF_INET6, a, text, sizeof(text)) == NULL)
		return copy_text(ip, out, cap);
	int n = snprintf(out, cap, "%s/%u", text, v6_prefix);
	if (n < 0 || (size_t)n >= cap) {
		if (cap > 0)
			out[0] = '\0';
		return -1;
	}
	return 0;
}

int ident_key(char *out, size_t cap, const char *prefix, const char *kind, const uint8_t *id,
              size_t idlen, size_t *len_r)
{
	size_t pl = strlen(prefix), kl = strlen(kind);

	/*
	 * pl + kl + idlen < cap, asked one term at a time against what is
	 * left of the room: no sum is ever formed, so none can wrap, whatever
	 * idlen and cap are (terms each below cap can still sum past SIZE_MAX).
	 */
	if (pl >= cap || kl >= cap - pl || idlen >= cap - pl - kl) {
		if (cap > 0)
			out[0] = '\0';
		return -1;
	}
	memcpy(out, prefix, pl);
	memcpy(out + pl, kind, kl);
	if (idlen > 0)
		memcpy(out + pl + kl, id, idlen);
	out[pl + kl + idlen] = '\0';
	*len_r = pl + kl + idlen;
	return 0;
}
