/*
 * proxyproto — see proxyproto.h. The PROXY protocol header, v1 and v2.
 *
 *   p[0] 'P'  ─► v1: "PROXY" SP proto SP src SP dst SP sport SP dport CRLF
 *   p[0] '\r' ─► v2: sig[12] | ver<<4|cmd | fam<<4|proto | len[2] | block[len]
 *   else      ─► -1
 *
 * Invariants:
 *   - Stateless: every call looks at p[0..len) afresh, in stream order,
 *     and stops at the first check that fails (-1) or that needs a byte
 *     not yet there (-2). Since the checks and their order depend only on
 *     the bytes before the one that decides, a longer prefix of the same
 *     stream gives the same -1 (same reason) or 0 (same header), and -2
 *     means every byte so far is a valid beginning. Rescanning costs at
 *     most PROXYPROTO_V1_MAX bytes for v1 and one TLV walk for v2.
 *   - v1 is judged byte by byte: a byte that cannot appear where it is
 *     (a second space, a letter in a port, a sixth port digit...) is -1
 *     on arrival, and a field's value (inet_pton, port range) is checked
 *     as soon as the space or CR after it arrives.
 *   - v2 is judged as soon as each fixed byte arrives; the length field
 *     is bounded before any of the block is waited for, and each TLV
 *     header is checked against the block end as soon as it arrives.
 *   - *r, *consumed_r and *err_r are written only for 0, 0 and -1.
 */
#include "proxyproto.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

static const uint8_t v2_sig[12] = {0x0d, 0x0a, 0x0d, 0x0a, 0x00, 0x0d,
                                   0x0a, 0x51, 0x55, 0x49, 0x54, 0x0a};

#define V2_FIXED 16 /* signature, ver/cmd, fam/proto, length */

/* Longest address texts: a dotted quad; IPv6 up to the IPv4-mapped forms. */
#define V1_ADDR4_MAX 15
#define V1_ADDR6_MAX 45
#define V1_PORT_MAX  5

/* The v1 field being read. */
enum v1_field {
	V1_PROTO,   /* TCP4 | TCP6 | UNKNOWN */
	V1_SRC,     /* source address */
	V1_DST,     /* destination address */
	V1_SPORT,   /* source port */
	V1_DPORT,   /* destination port, then CRLF */
	V1_UNKNOWN, /* after "UNKNOWN ": anything but CR and LF */
};

static int fail(const char **err_r, const char *why)
{
	*err_r = why;
	return -1;
}

static bool is_digit(uint8_t c)
{
	return c >= '0' && c <= '9';
}

static bool is_hex(uint8_t c)
{
	return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* t[0..n) is the beginning of word. */
static bool is_prefix(const uint8_t *t, size_t n, const char *word)
{
	return n <= strlen(word) && memcmp(t, word, n) == 0;
}

static bool is_word(const uint8_t *t, size_t n, const char *word)
{
	return n == strlen(word) && memcmp(t, word, n) == 0;
}

/* Digits t[0..n), n <= V1_PORT_MAX: the port, or -1 if out of range. */
static long port_value(const uint8_t *t, size_t n)
{
	long v = 0;

	for (size_t i = 0; i < n; i++)
		v = v * 10 + (t[i] - '0');
	return v > 65535 ? -1 : v;
}

/*
 * Can byte c (not SP, CR or LF) at p[i] extend the field that started at
 * p[start]? Only what the bytes so far already rule out is refused; the
 * value as a whole is checked by v1_end_field().
 */
static bool v1_byte_ok(enum v1_field f, int family, const uint8_t *p, size_t start, size_t i)
{
	size_t n = i - start + 1; /* field length with c */
	uint8_t c = p[i];

	switch (f) {
	case V1_PROTO:
		return is_prefix(p + start, n, "TCP4") || is_prefix(p + start, n, "TCP6") ||
		       is_prefix(p + start, n, "UNKNOWN");
	case V1_SRC:
	case V1_DST:
		if (family == AF_INET6)
			return n <= V1_ADDR6_MAX && (is_hex(c) || c == ':' || c == '.');
		if (n > V1_ADDR4_MAX || !(is_digit(c) || c == '.'))
			return false;
		/* No leading zero in an octet: "0" then a digit. */
		return !(is_digit(c) && i > start && p[i - 1] == '0' &&
		         (i - 1 == start || p[i - 2] == '.'));
	case V1_SPORT:
	case V1_DPORT:
		if (!is_digit(c) || n > V1_PORT_MAX || (n > 1 && p[start] == '0'))
			return false;
		return port_value(p + start, n) >= 0;
	case V1_UNKNOWN:
		return true;
	}
	return false;
}

/* Address text t[0..n) of family into ss, with the port left 0. */
static int v1_addr(int family, const uint8_t *t, size_t n, struct sockaddr_storage *ss)
{
	char text[V1_ADDR6_MAX + 1];

	if (n == 0 || n > V1_ADDR6_MAX)
		return -1;
	memcpy(text, t, n);
	text[n] = '\0';
	memset(ss, 0, sizeof(*ss));
	if (family == AF_INET) {
		struct sockaddr_in *sin = (struct sockaddr_in *)ss;

		sin->sin_family = AF_INET;
		return inet_pton(AF_INET, text, &sin->sin_addr) == 1 ? 0 : -1;
	}
	struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;

	sin6->sin6_family = AF_INET6;
	return inet_pton(AF_INET6, text, &sin6->sin6_addr) == 1 ? 0 : -1;
}

static void set_port(struct sockaddr_storage *ss, long port)
{
	if (ss->ss_family == AF_INET)
		((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
	else
		((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
}

/*
 * The field p[start..end) is complete (SP or CR at p[end]). Check its
 * value and store it in res; *family is set by the protocol field.
 */
static int v1_end_field(enum v1_field f, const uint8_t *p, size_t start, size_t end, int *family,
                        struct proxyproto_result *res, const char **err_r)
{
	const uint8_t *t = p + start;
	size_t n = end - start;

	switch (f) {
	case V1_PROTO:
		if (is_word(t, n, "TCP4"))
			*family = AF_INET;
		else if (is_word(t, n, "TCP6"))
			*family = AF_INET6;
		else if (is_word(t, n, "UNKNOWN"))
			*family = AF_UNSPEC;
		else
			return fail(err_r, "v1: unknown protocol");
		return 0;
	case V1_SRC:
	case V1_DST:
		if (v1_addr(*family, t, n, f == V1_SRC ? &res->src : &res->dst) < 0)
			return fail(err_r, "v1: bad address");
		return 0;
	case V1_SPORT:
	case V1_DPORT:
		/* Each byte was checked on arrival; only emptiness is left. */
		if (n == 0)
			return fail(err_r, "v1: bad port");
		set_port(f == V1_SPORT ? &res->src : &res->dst, port_value(t, n));
		return 0;
	case V1_UNKNOWN:
		return 0;
	}
	return fail(err_r, "v1: bad field");
}

static int parse_v1(const uint8_t *p, size_t len, struct proxyproto_result *r, size_t *consumed_r,
                    const char **err_r)
{
	static const char magic[] = "PROXY ";
	struct proxyproto_result res;
	enum v1_field f = V1_PROTO;
	int family = AF_UNSPEC;
	size_t i, start;

	i = len < sizeof(magic) - 1 ? len : sizeof(magic) - 1;
	if (memcmp(p, magic, i) != 0)
		return fail(err_r, "v1: not a PROXY line");
	memset(&res, 0, sizeof(res));
	res.version = 1;
	res.command = PROXYPROTO_CMD_PROXY;
	start = i;
	for (; i < len; i++) {
		uint8_t c = p[i];

		/* The CR must come by index 105 for the LF to fit in 107 bytes
		 * (so a CR is never seen later and needs no check of its own). */
		if (c != '\r' && i >= PROXYPROTO_V1_MAX - 2)
			return fail(err_r, "v1: line too long");
		if (c == '\n')
			return fail(err_r, "v1: LF without CR");
		if (c == ' ' && f != V1_UNKNOWN) {
			if (i == start)
				return fail(err_r, "v1: empty field");
			if (f == V1_DPORT)
				return fail(err_r, "v1: too many fields");
			if (v1_end_field(f, p, start, i, &family, &res, err_r) < 0)
				return -1;
			f = f == V1_PROTO && family == AF_UNSPEC ? V1_UNKNOWN
			                                         : (enum v1_field)(f + 1);
			start = i + 1;
			continue;
		}
		if (c == '\r') {
			if (f != V1_UNKNOWN && i == start)
				return fail(err_r, "v1: empty field");
			if (v1_end_field(f, p, start, i, &family, &res, err_r) < 0)
				return -1;
			if (f != V1_DPORT && family != AF_UNSPEC)
				return fail(err_r, "v1: missing fields");
			if (i + 1 == len)
				return -2;
			if (p[i + 1] != '\n')
				return fail(err_r, "v1: CR without LF");
			res.family = family;
			*r = res;
			*consumed_r = i + 2;
			return 0;
		}
		if (!v1_byte_ok(f, family, p, start, i)) {
			if (f == V1_PROTO)
				return fail(err_r, "v1: unknown protocol");
			return fail(err_r, f == V1_SRC || f == V1_DST ? "v1: bad address"
			                                              : "v1: bad port");
		}
	}
	return -2;
}

/*
 * The address block of a v2 header with PROXY over TCP: source and
 * destination addresses, then the ports, all in network order.
 */
static void v2_addrs(const uint8_t *b, int family, struct proxyproto_result *res)
{
	if (family == AF_INET) {
		struct sockaddr_in *s = (struct sockaddr_in *)&res->src;
		struct sockaddr_in *d = (struct sockaddr_in *)&res->dst;

		s->sin_family = d->sin_family = AF_INET;
		memcpy(&s->sin_addr, b, 4);
		memcpy(&d->sin_addr, b + 4, 4);
		memcpy(&s->sin_port, b + 8, 2);
		memcpy(&d->sin_port, b + 10, 2);
	} else {
		struct sockaddr_in6 *s = (struct sockaddr_in6 *)&res->src;
		struct sockaddr_in6 *d = (struct sockaddr_in6 *)&res->dst;

		s->sin6_family = d->sin6_family = AF_INET6;
		memcpy(&s->sin6_addr, b, 16);
		memcpy(&d->sin6_addr, b + 16, 16);
		memcpy(&s->sin6_port, b + 32, 2);
		memcpy(&d->sin6_port, b + 34, 2);
	}
}

static int parse_v2(const uint8_t *p, size_t len, struct proxyproto_result *r, size_t *consumed_r,
                    const char **err_r)
{
	struct proxyproto_result res;
	size_t n, need, blen, end, off;
	bool local, opaque = false;
	int family;

	n = len < sizeof(v2_sig) ? len : sizeof(v2_sig);
	if (memcmp(p, v2_sig, n) != 0)
		return fail(err_r, "v2: bad signature");
	if (len < 13)
		return -2;
	if (p[12] >> 4 != 2)
		return fail(err_r, "v2: unsupported version");
	if ((p[12] & 0x0f) > 1)
		return fail(err_r, "v2: unknown command");
	local = (p[12] & 0x0f) == 0;
	if (len < 14)
		return -2;
	switch (p[13]) {
	case 0x00: /* UNSPEC: no address we could use */
		family = AF_UNSPEC;
		need = 0;
		opaque = true;
		break;
	case 0x11: /* TCP over IPv4 */
		family = AF_INET;
		need = 12;
		break;
	case 0x21: /* TCP over IPv6 */
		family = AF_INET6;
		need = 36;
		break;
	case 0x31: /* UNIX stream: fall back to the real endpoints */
		family = AF_UNSPEC;
		need = 216;
		break;
	case 0x12:
	case 0x22:
	case 0x32:
		if (!local)
			return fail(err_r, "v2: datagram transport");
		family = AF_UNSPEC;
		need = 0;
		break;
	default:
		return fail(err_r, "v2: bad address family");
	}
	if (local) {
		/* The spec: LOCAL discards the block, family included. */
		family = AF_UNSPEC;
		need = 0;
		opaque = true;
	}
	if (len < V2_FIXED)
		return -2;
	blen = (size_t)p[14] << 8 | p[15];
	if (blen > PROXYPROTO_V2_MAX_LEN)
		return fail(err_r, "v2: header too long");
	if (blen < need)
		return fail(err_r, "v2: address block too short");
	end = V2_FIXED + blen;

	/* TLVs: type, length (2 bytes), value; each must fit in the block. */
	for (off = V2_FIXED + need; !opaque && off < end;) {
		if (end - off < 3)
			return fail(err_r, "v2: truncated TLV");
		if (len < off + 3)
			return -2;
		n = (size_t)p[off + 1] << 8 | p[off + 2];
		if (n > end - off - 3)
			return fail(err_r, "v2: TLV longer than the header");
		off += 3 + n;
	}
	if (len < end)
		return -2;

	memset(&res, 0, sizeof(res));
	res.version = 2;
	res.command = local ? PROXYPROTO_CMD_LOCAL : PROXYPROTO_CMD_PROXY;
	res.family = family;
	if (family != AF_UNSPEC)
		v2_addrs(p + V2_FIXED, family, &res);
	*r = res;
	*consumed_r = end;
	return 0;
}

int proxyproto_parse(const uint8_t *p, size_t len, struct proxyproto_result *r, size_t *consumed_r,
                     const char **err_r)
{
	if (len == 0)
		return -2;
	if (p[0] == 'P')
		return parse_v1(p, len, r, consumed_r, err_r);
	if (p[0] == '\r')
		return parse_v2(p, len, r, consumed_r, err_r);
	return fail(err_r, "not a PROXY protocol header");
}

/* ---- building ------------------------------------------------------------ */

/* ip as 16 bytes of IPv6 (IPv4 mapped), and whether it was IPv4. */
static int addr16(const char *ip, uint8_t out[16], bool *v4_r)
{
	struct in_addr a4;

	if (inet_pton(AF_INET, ip, &a4) == 1) {
		memset(out, 0, 10);
		out[10] = out[11] = 0xff;
		memcpy(out + 12, &a4, 4);
		*v4_r = true;
		return 0;
	}
	*v4_r = false;
	return inet_pton(AF_INET6, ip, out) == 1 ? 0 : -1;
}

int proxyproto_build(int version, const char *src_ip, unsigned sport, const char *dst_ip,
                     unsigned dport, uint8_t *out, size_t outlen)
{
	static const uint8_t sig[12] = {'\r', '\n', '\r', '\n', 0,   '\r',
	                                '\n', 'Q',  'U',  'I',  'T', '\n'};
	uint8_t s16[16], d16[16];
	bool s4 = false, d4 = false, v4;
	size_t n;

	if (src_ip != NULL && (addr16(src_ip, s16, &s4) < 0 || addr16(dst_ip, d16, &d4) < 0 ||
	                       sport > 65535 || dport > 65535))
		return -1;
	v4 = s4 && d4;
	if (version == 1) {
		char st[INET6_ADDRSTRLEN], dt[INET6_ADDRSTRLEN];
		int w;
		if (src_ip == NULL) {
			w = snprintf((char *)out, outlen, "PROXY UNKNOWN\r\n");
		} else {
			if (inet_ntop(v4 ? AF_INET : AF_INET6, v4 ? s16 + 12 : s16, st,
			              sizeof(st)) == NULL ||
			    inet_ntop(v4 ? AF_INET : AF_INET6, v4 ? d16 + 12 : d16, dt,
			              sizeof(dt)) == NULL)
				return -1;
			w = snprintf((char *)out, outlen, "PROXY %s %s %s %u %u\r\n",
			             v4 ? "TCP4" : "TCP6", st, dt, sport, dport);
		}
		return w < 0 || (size_t)w >= outlen ? -1 : w;
	}
	if (version != 2)
		return -1;
	n = src_ip == NULL ? 16 : v4 ? 16 + 12 : 16 + 36;
	if (outlen < n)
		return -1;
	memcpy(out, sig, sizeof(sig));
	if (src_ip == NULL) {
		out[12] = 0x20; /* version 2, LOCAL */
		out[13] = 0x00; /* UNSPEC */
		out[14] = out[15] = 0;
		return (int)n;
	}
	out[12] = 0x21;             /* version 2, PROXY */
	out[13] = v4 ? 0x11 : 0x21; /* TCP over IPv4 / IPv6 */
	out[14] = (uint8_t)((n - 16) >> 8);
	out[15] = (uint8_t)(n - 16);
	size_t alen = v4 ? 4 : 16;
	memcpy(out + 16, v4 ? s16 + 12 : s16, alen);
	memcpy(out + 16 + alen, v4 ? d16 + 12 : d16, alen);
	uint8_t *pp = out + 16 + 2 * alen;
	pp[0] = (uint8_t)(sport >> 8);
	pp[1] = (uint8_t)sport;
	pp[2] = (uint8_t)(dport >> 8);
	pp[3] = (uint8_t)dport;
	return (int)n;
}
