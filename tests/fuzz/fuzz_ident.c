/*
 * fuzz_ident — common/ident.c: Redis keys, address groups and user-name
 * folding on arbitrary inputs.
 *
 * The input is split at its first two NUL bytes:
 *
 *   byte 0      the IPv6 prefix length for ident_ip_group (0..255: out of
 *               range 1..128 too)
 *   field 1     the key prefix, cut at CFG_REDIS_PREFIX_MAX bytes as the
 *               configuration bounds it; also the address text
 *   NUL field 2 the key kind, cut at IDENT_KIND_MAX bytes
 *   NUL rest    the id (binary: NULs allowed), also the user name
 *
 * Every output buffer ends exactly at the end of a heap block (the room
 * under test is the block's last cap bytes), so ASan reports any byte
 * written past the room; inputs sit in blocks of exactly their size.
 * Checked:
 *   - ident_key, in rooms of IDENT_KEY_ROOM(CFG_REDIS_PREFIX_MAX), 0, 1,
 *     need - 1, need, need + 1 and one chosen by the input: 0 exactly when
 *     prefix + kind + id and the NUL fit, then the output is their
 *     concatenation, NUL-terminated, with its length; -1 otherwise, with
 *     "" when the room is not empty; any id up to IDENT_USER_MAX fits the
 *     proxy's room;
 *   - ident_ip_group, at every room from 0 to one past the group's size:
 *     -1 and "" exactly while it does not fit (and always for prefixes out
 *     of 1..128), else the same text, NUL-terminated within the room. For
 *     text inet_pton takes as IPv6: an IPv4-mapped address gives its IPv4
 *     address; /128 gives the address back; any other prefix gives
 *     "ADDR/len" whose ADDR parses back to the input's first len bits
 *     followed by zeros, within IDENT_IP_MAX. Other text comes back as is;
 *   - ident_user_norm: keep copies, fold lowers A-Z and nothing else, is
 *     idempotent, and gives the same in place.
 */
#include <arpa/inet.h>
#include <stdbool.h>
#include <string.h>

#include "cfg.h"
#include "fuzz.h"
#include "ident.h"

#define KEY_ROOM IDENT_KEY_ROOM(CFG_REDIS_PREFIX_MAX)

/* A copy of p[0..n) in a block of exactly n bytes (n + 1 when nul, with a
 * NUL after them; 1 for an empty copy, since malloc(0) may return NULL). */
static uint8_t *dup_exact(const uint8_t *p, size_t n, bool nul)
{
	uint8_t *d = malloc(n + (nul || n == 0 ? 1 : 0));

	FUZZ_CHECK(d != NULL, "out of memory");
	if (n > 0)
		memcpy(d, p, n);
	if (nul)
		d[n] = '\0';
	return d;
}

/* Length of the field at p (at most n bytes), up to a NUL or the end. */
static size_t field_len(const uint8_t *p, size_t n)
{
	const uint8_t *z = memchr(p, 0, n);

	return z != NULL ? (size_t)(z - p) : n;
}

/* ---- ident_key -------------------------------------------------------- */

static void check_key_room(uint8_t *block, size_t cap, const char *prefix, const char *kind,
                           const uint8_t *id, size_t idlen)
{
	size_t pl = strlen(prefix), kl = strlen(kind), need = pl + kl + idlen + 1;
	char *out = (char *)block + KEY_ROOM - cap;
	size_t len = (size_t)-1;
	int rc;

	FUZZ_CHECK(cap <= KEY_ROOM, "room within the block");
	rc = ident_key(out, cap, prefix, kind, id, idlen, &len);
	if (cap >= need) {
		FUZZ_CHECK(rc == 0, "a key that fits is built");
		FUZZ_CHECK(len == need - 1, "the key's length");
		FUZZ_CHECK(memcmp(out, prefix, pl) == 0 && memcmp(out + pl, kind, kl) == 0 &&
		               (idlen == 0 || memcmp(out + pl + kl, id, idlen) == 0),
		           "the key is prefix + kind + id");
		FUZZ_CHECK(out[len] == '\0', "the key is NUL-terminated");
	} else {
		FUZZ_CHECK(rc == -1, "a key that does not fit is refused");
		FUZZ_CHECK(cap == 0 || out[0] == '\0', "a refused key leaves \"\"");
	}
}

static void fuzz_key(const char *prefix, const char *kind, const uint8_t *id, size_t idlen,
                     uint8_t pick)
{
	uint8_t *block = malloc(KEY_ROOM);
	size_t need = strlen(prefix) + strlen(kind) + idlen + 1;
	size_t rooms[7] = {KEY_ROOM, 0, 1, need - 1, need, need + 1, (size_t)pick * KEY_ROOM / 255};
	size_t len = 0;

	FUZZ_CHECK(block != NULL, "out of memory");
	for (size_t i = 0; i < sizeof(rooms) / sizeof(rooms[0]); i++) {
		if (rooms[i] <= KEY_ROOM)
			check_key_room(block, rooms[i], prefix, kind, id, idlen);
	}
	/* The room the proxy uses holds any user name with any prefix the
	 * configuration accepts and any kind within IDENT_KIND_MAX. */
	if (idlen <= IDENT_USER_MAX)
		FUZZ_CHECK(ident_key((char *)block, KEY_ROOM, prefix, kind, id, idlen, &len) == 0,
		           "IDENT_KEY_ROOM holds every bounded key");
	free(block);
}

/* ---- ident_ip_group --------------------------------------------------- */

/* The checks for text inet_pton takes as IPv6, on a successful group. */
static void check_v6_group(const char *ip, unsigned prefix, const char *g)
{
	static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
	uint8_t a[16], b[16];
	char addr[IDENT_IP_MAX], len_text[8];
	const char *slash;
	size_t al;

	FUZZ_CHECK(inet_pton(AF_INET6, ip, a) == 1, "IPv6 input");
	FUZZ_CHECK(strlen(g) < IDENT_IP_MAX, "an address group fits IDENT_IP_MAX");
	if (memcmp(a, mapped, sizeof(mapped)) == 0) {
		FUZZ_CHECK(inet_pton(AF_INET, g, b) == 1 && memcmp(b, a + 12, 4) == 0,
		           "IPv4-mapped gives its IPv4 address");
		return;
	}
	slash = strchr(g, '/');
	if (prefix == 128) {
		FUZZ_CHECK(slash == NULL, "/128 has no /len");
		FUZZ_CHECK(inet_pton(AF_INET6, g, b) == 1 && memcmp(a, b, 16) == 0,
		           "/128 is the address itself");
		return;
	}
	FUZZ_CHECK(slash != NULL, "a group is ADDR/len");
	al = (size_t)(slash - g);
	FUZZ_CHECK(al < sizeof(addr), "ADDR fits");
	memcpy(addr, g, al);
	addr[al] = '\0';
	snprintf(len_text, sizeof(len_text), "/%u", prefix);
	FUZZ_CHECK(strcmp(slash, len_text) == 0, "/len is the prefix length");
	FUZZ_CHECK(inet_pton(AF_INET6, addr, b) == 1, "ADDR parses as IPv6");
	for (unsigned bit = 0; bit < 128; bit++) {
		unsigned m = 0x80u >> (bit % 8);

		if (bit < prefix)
			FUZZ_CHECK((a[bit / 8] & m) == (b[bit / 8] & m), "the first bits are kept");
		else
			FUZZ_CHECK((b[bit / 8] & m) == 0, "the bits past the prefix are zero");
	}
}

static void fuzz_ip_group(const char *ip, unsigned prefix)
{
	size_t room = strlen(ip) + IDENT_IP_MAX, glen;
	char *block = malloc(room), *ref = block, *out, *want;
	uint8_t a[16];
	int rc;

	FUZZ_CHECK(block != NULL, "out of memory");
	rc = ident_ip_group(ip, prefix, ref, room);
	if (prefix < 1 || prefix > 128) {
		FUZZ_CHECK(rc == -1 && ref[0] == '\0', "a prefix out of 1..128 is refused");
		FUZZ_CHECK(ident_ip_group(ip, prefix, block + room, 0) == -1,
		           "refused in no room too");
		free(block);
		return;
	}
	FUZZ_CHECK(rc == 0, "a room of the text + IDENT_IP_MAX holds any group");
	FUZZ_CHECK(memchr(ref, '\0', room) != NULL, "NUL-terminated");
	if (inet_pton(AF_INET6, ip, a) == 1)
		check_v6_group(ip, prefix, ref);
	else
		FUZZ_CHECK(strcmp(ref, ip) == 0, "what is not IPv6 comes back as it is");

	glen = strlen(ref);
	want = (char *)dup_exact((const uint8_t *)ref, glen, true);
	for (size_t cap = 0; cap <= glen + 1 && cap <= room; cap++) {
		out = block + room - cap;
		rc = ident_ip_group(ip, prefix, out, cap);
		if (cap > glen) {
			FUZZ_CHECK(rc == 0 && strcmp(out, want) == 0, "the same group in any room");
			FUZZ_CHECK(memchr(out, '\0', cap) != NULL,
			           "NUL-terminated within the room");
		} else {
			FUZZ_CHECK(rc == -1, "a group that does not fit is refused");
			FUZZ_CHECK(cap == 0 || out[0] == '\0', "a refused group leaves \"\"");
		}
	}
	free(want);
	free(block);
}

/* ---- ident_user_norm -------------------------------------------------- */

static void fuzz_user_norm(const uint8_t *in, size_t len)
{
	uint8_t *fold = dup_exact(in, len, false), *again = dup_exact(in, len, false);
	uint8_t *keep = dup_exact(in, len, false), *inplace = dup_exact(in, len, false);

	ident_user_norm(in, len, true, fold);
	ident_user_norm(in, len, false, keep);
	for (size_t i = 0; i < len; i++) {
		uint8_t c = in[i];

		FUZZ_CHECK(fold[i] == (c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c),
		           "fold lowers A-Z and nothing else");
	}
	FUZZ_CHECK(memcmp(keep, in, len) == 0, "keep copies");
	ident_user_norm(fold, len, true, again);
	FUZZ_CHECK(memcmp(again, fold, len) == 0, "folding is idempotent");
	ident_user_norm(inplace, len, true, inplace);
	FUZZ_CHECK(memcmp(inplace, fold, len) == 0, "in place is the same");
	free(fold);
	free(again);
	free(keep);
	free(inplace);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *p = data + 1, *end = data + size;
	size_t f1, f2, pl, kl;
	char *prefix, *kind, *ip;
	uint8_t *id;
	size_t idlen;

	if (size == 0)
		return 0;
	f1 = field_len(p, (size_t)(end - p));
	ip = (char *)dup_exact(p, f1, true);
	pl = f1 < CFG_REDIS_PREFIX_MAX ? f1 : CFG_REDIS_PREFIX_MAX;
	prefix = (char *)dup_exact(p, pl, true);
	p += f1 < (size_t)(end - p) ? f1 + 1 : f1;
	f2 = field_len(p, (size_t)(end - p));
	kl = f2 < IDENT_KIND_MAX ? f2 : IDENT_KIND_MAX;
	kind = (char *)dup_exact(p, kl, true);
	p += f2 < (size_t)(end - p) ? f2 + 1 : f2;
	idlen = (size_t)(end - p);
	id = dup_exact(p, idlen, false);

	fuzz_key(prefix, kind, id, idlen, data[0]);
	fuzz_ip_group(ip, data[0]);
	fuzz_user_norm(id, idlen);

	free(id);
	free(kind);
	free(prefix);
	free(ip);
	return 0;
}
