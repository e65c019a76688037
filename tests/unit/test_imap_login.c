/*
 * test_imap_login — unit tests for common/imap_login.c: the AUTHENTICATE
 * PLAIN response, the LOGIN text (quoting, LITERAL+ literals, master
 * logins) and the reading of a refused login's response code. Table
 * cases; every result is compared byte for byte.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "imap_login.h"

static struct imap_creds creds(const char *authz, const char *user, const char *pass)
{
	struct imap_creds c = {authz,       authz ? strlen(authz) : 0, user, strlen(user), pass,
	                       strlen(pass)};
	return c;
}

static void test_plain(void **state)
{
	(void)state;
	static const struct {
		const char *authz, *user, *pass, *b64;
	} t[] = {
	    {NULL, "alice", "secret", "AGFsaWNlAHNlY3JldA=="}, /* RFC 4616: "" NUL user NUL pass */
	    {"alice", "master", "mpw", "YWxpY2UAbWFzdGVyAG1wdw=="},
	    {NULL, "", "", "AAA="},
	    {NULL, "b\xc3\xb6", "p w\"\\", "AGLDtgBwIHciXA=="}, /* any bytes */
	};

	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		struct imap_creds c = creds(t[i].authz, t[i].user, t[i].pass);
		char *s = imap_login_plain(&c);
		assert_non_null(s);
		assert_string_equal(s, t[i].b64);
		free(s);
	}
}

static void test_login_cmd(void **state)
{
	(void)state;
	static const struct {
		const char *authz, *user, *pass;
		bool lp;
		const char *want; /* NULL: cannot be sent */
	} t[] = {
	    {NULL, "alice", "secret", false, "LOGIN \"alice\" \"secret\""},
	    {NULL, "alice", "p a\"ss\\ w0rd", false, "LOGIN \"alice\" \"p a\\\"ss\\\\ w0rd\""},
	    {NULL, "", "", false, "LOGIN \"\" \"\""},
	    {NULL, "alice", "caf\xc3\xa9", true, "LOGIN \"alice\" {5+}\r\ncaf\xc3\xa9"},
	    {NULL, "alice", "caf\xc3\xa9", false, NULL},
	    {NULL, "al\r\nice", "pw", true, "LOGIN {7+}\r\nal\r\nice \"pw\""},
	    {NULL, "al\r\nice", "pw", false, NULL},
	    {"alice", "master", "mpw", false, "LOGIN \"alice*master\" \"mpw\""},
	    {"b\x01", "master", "mpw", true, "LOGIN {9+}\r\nb\x01*master \"mpw\""},
	};

	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		struct imap_creds c = creds(t[i].authz, t[i].user, t[i].pass);
		const char *err = NULL;
		size_t len = 0;
		char *s = imap_login_cmd(&c, "*", t[i].lp, &len, &err);

		if (t[i].want == NULL) {
			assert_null(s);
			assert_string_equal(
			    err, "credentials cannot be sent with LOGIN to this backend");
			continue;
		}
		assert_non_null(s);
		assert_int_equal(len, strlen(t[i].want));
		assert_memory_equal(s, t[i].want, len);
		free(s);
	}
}

/* A separator of several bytes, and the longest output a string can need. */
static void test_login_cmd_sizes(void **state)
{
	(void)state;
	char pass[300];
	const char *err;
	size_t len;

	memset(pass, '"', sizeof(pass) - 1);
	pass[sizeof(pass) - 1] = '\0';
	struct imap_creds c = creds("u", "m", pass);
	char *s = imap_login_cmd(&c, "%%sep", false, &len, &err);
	assert_non_null(s);
	assert_int_equal(len, 6 + strlen("\"u%%sepm\"") + 1 + 2 + 2 * 299);
	assert_memory_equal(s, "LOGIN \"u%%sepm\" \"\\\"", 19);
	free(s);
}

static void test_no_unavailable(void **state)
{
	(void)state;
	static const struct {
		const char *rest;
		bool unavail;
	} t[] = {
	    {"[UNAVAILABLE] try later", true},
	    {"[unavailable]", true},
	    {"[LIMIT] too many", true},
	    {"[AUTHENTICATIONFAILED] no", false},
	    {"Authentication failed.", false},
	    {"[UNAVAIL", false},
	    {"", false},
	};

	for (size_t i = 0; i < sizeof(t) / sizeof(t[0]); i++)
		assert_int_equal(
		    imap_login_no_unavailable((const uint8_t *)t[i].rest, strlen(t[i].rest)),
		    t[i].unavail);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_plain),
	    cmocka_unit_test(test_login_cmd),
	    cmocka_unit_test(test_login_cmd_sizes),
	    cmocka_unit_test(test_no_unavailable),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
