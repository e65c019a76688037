/*
 * test_ident — user-name folding (every byte value, in place), address
 * groups (IPv6 prefixes from /1 to /128, IPv4-mapped, IPv4, "local",
 * garbage, every too-small room) and Redis keys (exact bytes, binary ids,
 * every room from 0 up with a canary past it, lengths near SIZE_MAX).
 *
 * Outputs are written into buffers filled with CANARY first, so that a
 * byte written past the room given shows up as a changed canary.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "cfg.h"
#include "ident.h"

#define CANARY 0xa5

/* Every byte of p[from..to) is still CANARY. */
static void assert_canary(const void *p, size_t from, size_t to)
{
	const uint8_t *b = p;

	for (size_t i = from; i < to; i++) {
		if (b[i] != CANARY)
			fail_msg("byte %zu written (0x%02x), outside the room given", i, b[i]);
	}
}

/* ---- ident_user_norm -------------------------------------------------- */

struct norm_case {
	const char *in;
	size_t len; /* bytes of in (NULs allowed) */
	const char *fold;
};

#define NC(in, fold)                                                                               \
	{                                                                                          \
		(in), sizeof(in) - 1, (fold)                                                       \
	}

static const struct norm_case norm_cases[] = {
    NC("", ""),
    NC("bob", "bob"),
    NC("Bob@Example.ORG", "bob@example.org"),
    NC("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz"),
    /* The neighbours of A-Z and a-z stay: @ [ ` { and the digits. */
    NC("@[`{09_-.+", "@[`{09_-.+"),
    /* UTF-8 is kept byte for byte, upper case or not (no Unicode folding). */
    NC("\xc3\x84rger\xc3\x9f", "\xc3\x84rger\xc3\x9f"),
    NC("J\xc3\x9cRGEN", "j\xc3\x9crgen"),
    NC("\xc4\xb0STANBUL", "\xc4\xb0stanbul"),
    /* Binary: NUL and high bytes pass, the length is what counts. */
    NC("A\0B\xff\x80Z", "a\0b\xff\x80z"),
};

static void test_user_norm_table(void **state)
{
	uint8_t out[64], inplace[64];

	(void)state;
	for (size_t i = 0; i < sizeof(norm_cases) / sizeof(norm_cases[0]); i++) {
		const struct norm_case *t = &norm_cases[i];

		assert_true(t->len + 8 <= sizeof(out));
		memset(out, CANARY, sizeof(out));
		ident_user_norm((const uint8_t *)t->in, t->len, true, out);
		assert_memory_equal(out, t->fold, t->len);
		assert_canary(out, t->len, sizeof(out));

		memset(out, CANARY, sizeof(out));
		ident_user_norm((const uint8_t *)t->in, t->len, false, out);
		assert_memory_equal(out, t->in, t->len);
		assert_canary(out, t->len, sizeof(out));

		/* in == out: the proxy folds the name where it lies. */
		memset(inplace, CANARY, sizeof(inplace));
		memcpy(inplace, t->in, t->len);
		ident_user_norm(inplace, t->len, true, inplace);
		assert_memory_equal(inplace, t->fold, t->len);
		assert_canary(inplace, t->len, sizeof(inplace));
		memcpy(inplace, t->in, t->len);
		ident_user_norm(inplace, t->len, false, inplace);
		assert_memory_equal(inplace, t->in, t->len);
	}
}

/* Every byte value: only A-Z change, each to its a-z, and folding twice
 * changes nothing more. */
static void test_user_norm_every_byte(void **state)
{
	uint8_t in[256], out[256], again[256];

	(void)state;
	for (size_t i = 0; i < 256; i++)
		in[i] = (uint8_t)i;
	ident_user_norm(in, sizeof(in), true, out);
	for (size_t i = 0; i < 256; i++) {
		uint8_t want = i >= 'A' && i <= 'Z' ? (uint8_t)(i + ('a' - 'A')) : (uint8_t)i;

		if (out[i] != want)
			fail_msg("byte 0x%02zx folded to 0x%02x, want 0x%02x", i, out[i], want);
	}
	ident_user_norm(out, sizeof(out), true, again);
	assert_memory_equal(again, out, sizeof(out));
	ident_user_norm(in, sizeof(in), false, out);
	assert_memory_equal(out, in, sizeof(in));
}

/* The longest user name, in place, and length 0 writing nothing. */
static void test_user_norm_bounds(void **state)
{
	uint8_t name[IDENT_USER_MAX + 8];

	(void)state;
	memset(name, CANARY, sizeof(name));
	memset(name, 'Q', IDENT_USER_MAX);
	ident_user_norm(name, IDENT_USER_MAX, true, name);
	for (size_t i = 0; i < IDENT_USER_MAX; i++)
		assert_int_equal(name[i], 'q');
	assert_canary(name, IDENT_USER_MAX, sizeof(name));

	memset(name, CANARY, sizeof(name));
	ident_user_norm((const uint8_t *)"ABC", 0, true, name);
	assert_canary(name, 0, sizeof(name));
}

/* ---- ident_ip_group --------------------------------------------------- */

struct group_case {
	const char *ip;
	unsigned prefix;
	const char *want; /* NULL: -1 */
};

static const struct group_case group_cases[] = {
    /* IPv6: the first prefix bits, in inet_ntop's spelling, then /len. */
    {"2001:db8:1:2:3:4:5:6", 64, "2001:db8:1:2::/64"},
    {"2001:db8::1:2", 64, "2001:db8::/64"},
    {"2001:DB8:0000:0000:0:0:0:1", 64, "2001:db8::/64"},
    {"2001:db8:abcd:12ff::1", 56, "2001:db8:abcd:1200::/56"},
    {"2001:db8:abcd:12ff::1", 48, "2001:db8:abcd::/48"},
    {"2001:db8:abcd:12ff::1", 63, "2001:db8:abcd:12fe::/63"},
    {"2001:db8:abcd:12ff::1", 65, "2001:db8:abcd:12ff::/65"},
    {"2001:db8:abcd:12ff:8000::1", 65, "2001:db8:abcd:12ff:8000::/65"},
    {"64:ff9b::192.0.2.1", 96, "64:ff9b::/96"},
    {"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1, "8000::/1"},
    {"7fff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 1, "::/1"},
    {"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 127, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffe/127"},
    {"1:2:3:4:5:6:7:9", 127, "1:2:3:4:5:6:7:8/127"},
    {"1:2:3:4:5:6:7:8", 127, "1:2:3:4:5:6:7:8/127"},
    /* /128 is the address itself, canonical, with no /len. */
    {"2001:db8::1", 128, "2001:db8::1"},
    {"2001:0DB8:0:0::0001", 128, "2001:db8::1"},
    {"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 128, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"},
    {"::1", 128, "::1"},
    {"::1", 127, "::/127"},
    {"::1", 64, "::/64"},
    {"::1", 1, "::/1"},
    {"::", 64, "::/64"},
    {"fe80::1", 10, "fe80::/10"},
    {"feff::1", 10, "fec0::/10"},
    /* IPv4-mapped: the IPv4 address, whatever the prefix. */
    {"::ffff:192.0.2.1", 64, "192.0.2.1"},
    {"::ffff:192.0.2.1", 1, "192.0.2.1"},
    {"::ffff:192.0.2.1", 128, "192.0.2.1"},
    {"::FFFF:c000:0201", 64, "192.0.2.1"},
    {"0:0:0:0:0:ffff:255.255.255.255", 64, "255.255.255.255"},
    /* Not mapped: ::fffe:..., ::1:ffff:... and IPv4-compatible ::a.b.c.d. */
    {"::fffe:192.0.2.1", 64, "::/64"},
    {"::1:ffff:192.0.2.1", 64, "::/64"},
    {"::192.0.2.1", 64, "::/64"},
    /* IPv4 and anything else: as it is. */
    {"192.0.2.1", 64, "192.0.2.1"},
    {"192.0.2.1", 1, "192.0.2.1"},
    {"192.0.2.1", 128, "192.0.2.1"},
    {"local", 64, "local"},
    {"", 64, ""},
    {"not an address", 64, "not an address"},
    {"2001:db8::1::2", 64, "2001:db8::1::2"},
    {"2001:db8::1/64", 64, "2001:db8::1/64"},
    {"[2001:db8::1]", 64, "[2001:db8::1]"},
    {"fe80::1%eth0", 64, "fe80::1%eth0"},
    {"1:2:3:4:5:6:7:8:9", 64, "1:2:3:4:5:6:7:8:9"},
    {" ::1", 64, " ::1"},
    {"::1 ", 64, "::1 "},
    {"1.2.3", 64, "1.2.3"},
    {"\xff\xfe", 64, "\xff\xfe"},
    /* The prefix is checked first, for every kind of input. */
    {"2001:db8::1", 0, NULL},
    {"2001:db8::1", 129, NULL},
    {"::ffff:192.0.2.1", 0, NULL},
    {"192.0.2.1", 0, NULL},
    {"192.0.2.1", 129, NULL},
    {"local", 129, NULL},
    {"local", 4096, NULL},
    {"", 0, NULL},
};

/* One case with a room of cap bytes in a canary-filled buffer. */
static void check_group(const struct group_case *t, size_t cap)
{
	char out[128];
	size_t need = t->want != NULL ? strlen(t->want) + 1 : 0;
	int rc;

	assert_true(cap + 8 <= sizeof(out));
	memset(out, CANARY, sizeof(out));
	rc = ident_ip_group(t->ip, t->prefix, out, cap);
	if (t->want != NULL && cap >= need) {
		if (rc != 0 || strcmp(out, t->want) != 0)
			fail_msg("%s /%u, room %zu: %d \"%s\", want \"%s\"", t->ip, t->prefix, cap,
			         rc, rc == 0 ? out : "", t->want);
	} else {
		if (rc != -1)
			fail_msg("%s /%u, room %zu: %d, want -1", t->ip, t->prefix, cap, rc);
		if (cap > 0)
			assert_int_equal(out[0], '\0');
	}
	assert_canary(out, cap, sizeof(out));
}

static void test_ip_group_table(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(group_cases) / sizeof(group_cases[0]); i++)
		check_group(&group_cases[i], IDENT_IP_MAX);
}

/* Every room from 0 to one more than needed: -1 and "" while the text and
 * its NUL do not fit, then the group; never a byte past the room. */
static void test_ip_group_every_room(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(group_cases) / sizeof(group_cases[0]); i++) {
		const struct group_case *t = &group_cases[i];
		size_t need = t->want != NULL ? strlen(t->want) + 1 : 4;

		for (size_t cap = 0; cap <= need + 1; cap++)
			check_group(t, cap);
	}
}

/* IDENT_IP_MAX holds the group of any address, at any prefix. */
static void test_ip_group_max_room(void **state)
{
	static const char *const ips[] = {
	    "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
	    "1111:2222:3333:4444:5555:6666:7777:8888",
	    "::ffff:255.255.255.255",
	    "255.255.255.255",
	};
	char out[IDENT_IP_MAX];

	(void)state;
	for (size_t i = 0; i < sizeof(ips) / sizeof(ips[0]); i++) {
		for (unsigned p = 1; p <= 128; p++) {
			if (ident_ip_group(ips[i], p, out, sizeof(out)) != 0)
				fail_msg("%s /%u does not fit in IDENT_IP_MAX", ips[i], p);
			assert_true(strlen(out) < sizeof(out));
		}
	}
}

/* ---- ident_key -------------------------------------------------------- */

struct key_case {
	const char *prefix;
	const char *kind;
	const char *id;
	size_t idlen;
	const char *want; /* want_len bytes, then the NUL */
	size_t want_len;
};

#define KC(p, k, id, want)                                                                         \
	{                                                                                          \
		(p), (k), (id), sizeof(id) - 1, (want), sizeof(want) - 1                           \
	}

static const struct key_case key_cases[] = {
    KC("imapmux:", "authfail:user:", "bob@example.org", "imapmux:authfail:user:bob@example.org"),
    KC("imapmux:", "authfail:ip:", "2001:db8::/64", "imapmux:authfail:ip:2001:db8::/64"),
    KC("", "authfail:user:", "bob", "authfail:user:bob"),
    KC("mux:", "", "bob", "mux:bob"),
    KC("mux:", "user:", "", "mux:user:"),
    KC("", "", "", ""),
    /* The id is bytes: NUL, 0xff, CR LF and spaces are copied as they are. */
    KC("p:", "k:", "a\0b\xff", "p:k:a\0b\xff"),
    KC("p:", "k:", "\0", "p:k:\0"),
    KC("p:", "k:", "\xff\xff\0\0\r\n *", "p:k:\xff\xff\0\0\r\n *"),
};

/* One case with a room of cap bytes in a canary-filled buffer. */
static void check_key(const struct key_case *t, size_t cap)
{
	char out[128];
	size_t len = 12345;
	int rc;

	assert_true(cap + 8 <= sizeof(out));
	memset(out, CANARY, sizeof(out));
	rc = ident_key(out, cap, t->prefix, t->kind, (const uint8_t *)t->id, t->idlen, &len);
	if (cap > t->want_len) {
		if (rc != 0)
			fail_msg("\"%s%s\", room %zu: -1 (needs %zu)", t->prefix, t->kind, cap,
			         t->want_len + 1);
		assert_int_equal(len, t->want_len);
		assert_memory_equal(out, t->want, t->want_len);
		assert_int_equal(out[t->want_len], '\0');
	} else {
		if (rc != -1)
			fail_msg("\"%s%s\", room %zu: %d (needs %zu)", t->prefix, t->kind, cap, rc,
			         t->want_len + 1);
		if (cap > 0)
			assert_int_equal(out[0], '\0');
	}
	assert_canary(out, cap, sizeof(out));
}

static void test_key_every_room(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof(key_cases) / sizeof(key_cases[0]); i++) {
		const struct key_case *t = &key_cases[i];

		for (size_t cap = 0; cap <= t->want_len + 2; cap++)
			check_key(t, cap);
	}
}

/* A NULL id of length 0 is an empty id (nothing is read from it). */
static void test_key_null_id(void **state)
{
	char out[16];
	size_t len = 0;

	(void)state;
	assert_int_equal(ident_key(out, sizeof(out), "p:", "k:", NULL, 0, &len), 0);
	assert_string_equal(out, "p:k:");
	assert_int_equal(len, 4);
}

/*
 * The room the proxy will use, IDENT_KEY_ROOM(CFG_REDIS_PREFIX_MAX), holds
 * the longest prefix the configuration accepts, the longest kind and the
 * longest user name, to the byte; one more byte anywhere does not fit.
 */
static void test_key_proxy_room(void **state)
{
	enum { ROOM = IDENT_KEY_ROOM(CFG_REDIS_PREFIX_MAX) };
	char prefix[CFG_REDIS_PREFIX_MAX + 2], kind[IDENT_KIND_MAX + 2];
	uint8_t id[IDENT_USER_MAX + 1];
	char out[ROOM + 16];
	size_t len = 0;

	(void)state;
	assert_true(strlen("authfail:user:") <= IDENT_KIND_MAX);
	memset(prefix, 'p', sizeof(prefix));
	prefix[CFG_REDIS_PREFIX_MAX] = '\0';
	memset(kind, 'k', sizeof(kind));
	kind[IDENT_KIND_MAX] = '\0';
	memset(id, 0xff, sizeof(id));

	memset(out, CANARY, sizeof(out));
	assert_int_equal(ident_key(out, ROOM, prefix, kind, id, IDENT_USER_MAX, &len), 0);
	assert_int_equal(len, ROOM - 1);
	assert_memory_equal(out, prefix, CFG_REDIS_PREFIX_MAX);
	assert_memory_equal(out + CFG_REDIS_PREFIX_MAX, kind, IDENT_KIND_MAX);
	assert_memory_equal(out + CFG_REDIS_PREFIX_MAX + IDENT_KIND_MAX, id, IDENT_USER_MAX);
	assert_int_equal(out[ROOM - 1], '\0');
	assert_canary(out, ROOM, sizeof(out));

	/* One byte more in each part in turn. */
	memset(out, CANARY, sizeof(out));
	assert_int_equal(ident_key(out, ROOM, prefix, kind, id, IDENT_USER_MAX + 1, &len), -1);
	assert_int_equal(out[0], '\0');
	assert_canary(out, ROOM, sizeof(out));
	kind[IDENT_KIND_MAX] = 'k';
	kind[IDENT_KIND_MAX + 1] = '\0';
	assert_int_equal(ident_key(out, ROOM, prefix, kind, id, IDENT_USER_MAX, &len), -1);
	assert_int_equal(out[0], '\0');
	assert_canary(out, ROOM, sizeof(out));
	kind[IDENT_KIND_MAX] = '\0';
	prefix[CFG_REDIS_PREFIX_MAX] = 'p';
	prefix[CFG_REDIS_PREFIX_MAX + 1] = '\0';
	assert_int_equal(ident_key(out, ROOM, prefix, kind, id, IDENT_USER_MAX, &len), -1);
	assert_int_equal(out[0], '\0');
	assert_canary(out, ROOM, sizeof(out));
}

/*
 * Lengths near SIZE_MAX: no sum of lengths may wrap round to something
 * that seems to fit. Even with a room claimed as SIZE_MAX (the function
 * cannot know better), a prefix + kind + id longer than that is refused;
 * were it taken, the copy of the id would run off the end of memory.
 */
static void test_key_huge_idlen(void **state)
{
	static const uint8_t id[8] = {'i', 'd', 'i', 'd', 'i', 'd', 'i', 'd'};
	const size_t pl = 8, kl = 14; /* "imapmux:", "authfail:user:" */
	char out[64];
	size_t len = 0;

	(void)state;
	for (size_t d = 0; d <= pl + kl + 2; d++) {
		size_t idlen = SIZE_MAX - d;

		memset(out, CANARY, sizeof(out));
		assert_int_equal(
		    ident_key(out, sizeof(out), "imapmux:", "authfail:user:", id, idlen, &len), -1);
		assert_int_equal(out[0], '\0');

		/* pl + kl + idlen + 1 > SIZE_MAX: it cannot fit in any room. */
		if (d > pl + kl)
			continue;
		memset(out, CANARY, sizeof(out));
		if (ident_key(out, SIZE_MAX, "imapmux:", "authfail:user:", id, idlen, &len) != -1)
			fail_msg("idlen SIZE_MAX - %zu accepted in a room of SIZE_MAX", d);
		assert_int_equal(out[0], '\0');
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_user_norm_table),     cmocka_unit_test(test_user_norm_every_byte),
	    cmocka_unit_test(test_user_norm_bounds),    cmocka_unit_test(test_ip_group_table),
	    cmocka_unit_test(test_ip_group_every_room), cmocka_unit_test(test_ip_group_max_room),
	    cmocka_unit_test(test_key_every_room),      cmocka_unit_test(test_key_null_id),
	    cmocka_unit_test(test_key_proxy_room),      cmocka_unit_test(test_key_huge_idlen),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
