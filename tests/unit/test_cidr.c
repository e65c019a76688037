/*
 * test_cidr — address ranges (common/cidr.c): IPv4 and IPv6 ranges and
 * bare hosts parse, the bits past the prefix are cleared, bad ones are
 * refused (prefix too long, junk, empty); matching at prefix boundaries
 * (/0, /1, odd prefixes, /32, /128), IPv4-mapped IPv6 peers as IPv4, other
 * families never; lists with spaces, and the bad entry named.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/un.h>

#include "cidr.h"

static struct sockaddr_storage addr(const char *ip)
{
	struct sockaddr_storage ss;

	memset(&ss, 0, sizeof(ss));
	if (strchr(ip, ':') != NULL) {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
		s6->sin6_family = AF_INET6;
		assert_int_equal(inet_pton(AF_INET6, ip, &s6->sin6_addr), 1);
	} else {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
		s4->sin_family = AF_INET;
		assert_int_equal(inet_pton(AF_INET, ip, &s4->sin_addr), 1);
	}
	return ss;
}

static bool in(const char *range, const char *ip)
{
	struct cidr c;
	struct sockaddr_storage ss = addr(ip);

	assert_int_equal(cidr_parse(range, strlen(range), &c), 0);
	return cidr_match(&c, (struct sockaddr *)&ss);
}

static void test_parse(void **state)
{
	struct cidr c;
	static const char *bad[] = {"",           "10.0.0.0/33", "::/129",       "10.0.0.0/",
	                            "10.0.0.0/a", "10.0.0/8",    "host",         "10.0.0.0/8/8",
	                            "1.2.3.4 ",   "/8",          "10.0.0.0/0008"};

	(void)state;
	assert_int_equal(cidr_parse("10.1.2.3/8", 10, &c), 0);
	assert_int_equal(c.family, AF_INET);
	assert_int_equal(c.bits, 8);
	assert_int_equal(c.addr[0], 10);
	assert_int_equal(c.addr[1], 0); /* cleared past the prefix */
	assert_int_equal(cidr_parse("192.0.2.7", 9, &c), 0);
	assert_int_equal(c.bits, 32);
	assert_int_equal(cidr_parse("2001:db8::ff/33", 15, &c), 0);
	assert_int_equal(c.family, AF_INET6);
	assert_int_equal(c.bits, 33);
	assert_int_equal(c.addr[15], 0);
	assert_int_equal(cidr_parse("::1", 3, &c), 0);
	assert_int_equal(c.bits, 128);
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(cidr_parse(bad[i], strlen(bad[i]), &c), -1);
}

static void test_match(void **state)
{
	(void)state;
	assert_true(in("10.0.0.0/8", "10.255.1.2"));
	assert_false(in("10.0.0.0/8", "11.0.0.1"));
	assert_true(in("0.0.0.0/0", "203.0.113.9"));
	assert_true(in("128.0.0.0/1", "200.1.1.1"));
	assert_false(in("128.0.0.0/1", "127.255.255.255"));
	assert_true(in("192.0.2.64/26", "192.0.2.127"));
	assert_false(in("192.0.2.64/26", "192.0.2.128"));
	assert_false(in("192.0.2.64/26", "192.0.2.63"));
	assert_true(in("127.0.0.1", "127.0.0.1"));
	assert_false(in("127.0.0.1", "127.0.0.2"));
	assert_true(in("2001:db8::/32", "2001:db8:ffff::1"));
	assert_false(in("2001:db8::/32", "2001:db9::1"));
	assert_true(in("::1", "::1"));
	assert_true(in("fe80::/10", "febf::1"));
	assert_false(in("fe80::/10", "fec0::1"));
	/* IPv4-mapped IPv6 peers are their IPv4 address */
	assert_true(in("127.0.0.0/8", "::ffff:127.0.0.1"));
	assert_false(in("::/0", "::ffff:127.0.0.1"));
	assert_false(in("10.0.0.0/8", "::1"));
	assert_false(in("::/0", "10.0.0.1"));

	struct cidr c;
	struct sockaddr_un un = {.sun_family = AF_UNIX};
	assert_int_equal(cidr_parse("0.0.0.0/0", 9, &c), 0);
	assert_false(cidr_match(&c, (struct sockaddr *)&un));
}

static void test_list(void **state)
{
	struct cidr *v;
	size_t n, blen;
	const char *bad;
	struct sockaddr_storage a = addr("192.168.1.5"), b = addr("::1"), o = addr("8.8.8.8");

	(void)state;
	assert_int_equal(cidr_list_parse("10.0.0.0/8, 192.168.0.0/16 ,::1", &v, &n, &bad, &blen),
	                 0);
	assert_int_equal(n, 3);
	assert_true(cidr_list_match(v, n, (struct sockaddr *)&a));
	assert_true(cidr_list_match(v, n, (struct sockaddr *)&b));
	assert_false(cidr_list_match(v, n, (struct sockaddr *)&o));
	free(v);
	assert_int_equal(cidr_list_parse("10.0.0.0/8, 300.0.0.0/8 ,::1", &v, &n, &bad, &blen), -1);
	assert_int_equal(blen, 11);
	assert_memory_equal(bad, "300.0.0.0/8", 11);
	assert_null(v);
	assert_int_equal(cidr_list_parse("10.0.0.0/8 10.1.0.0/16", &v, &n, &bad, &blen), -1);
	assert_int_equal(cidr_list_parse("", &v, &n, &bad, &blen), -1);
	assert_int_equal(cidr_list_parse("10.0.0.0/8,", &v, &n, &bad, &blen), -1);
	assert_int_equal(cidr_list_parse(",", &v, &n, &bad, &blen), -1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_parse),
	    cmocka_unit_test(test_match),
	    cmocka_unit_test(test_list),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
