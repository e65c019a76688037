/*
 * test_caps — capability filtering on a real Dovecot 2.3 capability line,
 * the hidden set one by one, near misses that must survive, output sizes
 * down to the byte, and whole-atom lookups.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "caps.h"

static const char dovecot_caps[] =
    "IMAP4rev1 SASL-IR LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY "
    "THREAD=REFERENCES THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND URL-PARTIAL "
    "CATENATE UNSELECT CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 "
    "CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES WITHIN CONTEXT=SEARCH LIST-STATUS "
    "BINARY MOVE SNIPPET=FUZZY PREVIEW=FUZZY PREVIEW STATUS=SIZE SAVEDATE LITERAL+ "
    "NOTIFY SPECIAL-USE COMPRESS=DEFLATE STARTTLS AUTH=PLAIN AUTH=LOGIN "
    "LOGINDISABLED UNAUTHENTICATE";

/* The same less SASL-IR, COMPRESS=DEFLATE, STARTTLS, AUTH=*, LOGINDISABLED
 * and UNAUTHENTICATE. */
static const char dovecot_filtered[] =
    "IMAP4rev1 LOGIN-REFERRALS ID ENABLE IDLE SORT SORT=DISPLAY "
    "THREAD=REFERENCES THREAD=REFS THREAD=ORDEREDSUBJECT MULTIAPPEND URL-PARTIAL "
    "CATENATE UNSELECT CHILDREN NAMESPACE UIDPLUS LIST-EXTENDED I18NLEVEL=1 "
    "CONDSTORE QRESYNC ESEARCH ESORT SEARCHRES WITHIN CONTEXT=SEARCH LIST-STATUS "
    "BINARY MOVE SNIPPET=FUZZY PREVIEW=FUZZY PREVIEW STATUS=SIZE SAVEDATE LITERAL+ "
    "NOTIFY SPECIAL-USE";

static void test_dovecot_line(void **state)
{
	char out[sizeof(dovecot_caps)];
	long n;

	(void)state;
	n = caps_filter(dovecot_caps, strlen(dovecot_caps), out, sizeof(out));
	assert_int_equal(n, (long)strlen(dovecot_filtered));
	assert_string_equal(out, dovecot_filtered);
}

static void test_dovecot_line_exact_room(void **state)
{
	size_t need = strlen(dovecot_filtered) + 1;
	char *out = malloc(need);

	(void)state;
	assert_non_null(out);
	/* One byte short (no room for the NUL) fails, exact room succeeds. */
	assert_int_equal(caps_filter(dovecot_caps, strlen(dovecot_caps), out, need - 1), -1);
	assert_int_equal(out[0], '\0');
	assert_int_equal(caps_filter(dovecot_caps, strlen(dovecot_caps), out, need),
	                 (long)need - 1);
	assert_string_equal(out, dovecot_filtered);
	free(out);
}

static void test_outcap_small(void **state)
{
	char out[8];

	(void)state;
	assert_int_equal(caps_filter("IDLE", 4, out, 0), -1);
	assert_int_equal(caps_filter("IDLE", 4, out, 4), -1);
	assert_int_equal(caps_filter("IDLE", 4, out, 5), 4);
	assert_string_equal(out, "IDLE");
	/* The separator counts too. */
	assert_int_equal(caps_filter("ID IDLE", 7, out, 7), -1);
	assert_int_equal(caps_filter("ID IDLE", 7, out, 8), 7);
	/* A hidden atom needs no room. */
	assert_int_equal(caps_filter("STARTTLS ID", 11, out, 3), 2);
	assert_string_equal(out, "ID");
}

static void test_is_hidden(void **state)
{
	static const char *const hidden[] = {
	    "STARTTLS",     "starttls",       "LOGINDISABLED",    "LoginDisabled",    "SASL-IR",
	    "sasl-ir",      "UNAUTHENTICATE", "AUTH=PLAIN",       "auth=plain",       "AUTH=LOGIN",
	    "AUTH=XOAUTH2", "AUTH=",          "COMPRESS=DEFLATE", "compress=deflate", "COMPRESS=",
	};
	static const char *const shown[] = {
	    "",
	    "STARTTLSX",
	    "STARTTL",
	    "LOGIN-REFERRALS",
	    "LOGIN",
	    "LOGINDISABLE",
	    "SASL",
	    "SASL-IR2",
	    "UNAUTHENTICATED",
	    "AUTH",
	    "AUTHENTICATE",
	    "XAUTH=PLAIN",
	    "COMPRESS",
	    "X-COMPRESS=DEFLATE",
	    "IMAP4rev1",
	    "IDLE",
	    "LITERAL+",
	    "AUTH~PLAIN",
	    "STARTTLS\xff",
	};

	(void)state;
	for (size_t i = 0; i < sizeof(hidden) / sizeof(hidden[0]); i++) {
		if (!caps_is_hidden(hidden[i], strlen(hidden[i])))
			fail_msg("\"%s\" not hidden", hidden[i]);
	}
	for (size_t i = 0; i < sizeof(shown) / sizeof(shown[0]); i++) {
		if (caps_is_hidden(shown[i], strlen(shown[i])))
			fail_msg("\"%s\" hidden", shown[i]);
	}
	/* Only len bytes count: "STARTTLS" cut short is not STARTTLS. */
	assert_false(caps_is_hidden("STARTTLS", 7));
	assert_true(caps_is_hidden("STARTTLS IDLE", 8));
}

struct filter_case {
	const char *in;
	const char *out;
};

static void test_filter_table(void **state)
{
	static const struct filter_case cases[] = {
	    {"", ""},
	    {"   ", ""},
	    {"STARTTLS", ""},
	    {"STARTTLS AUTH=PLAIN LOGINDISABLED", ""},
	    {"IMAP4rev1", "IMAP4rev1"},
	    {"  IMAP4rev1   IDLE  ", "IMAP4rev1 IDLE"},
	    {"IMAP4rev1 STARTTLS IDLE", "IMAP4rev1 IDLE"},
	    {"STARTTLS IMAP4rev1", "IMAP4rev1"},
	    {"IMAP4rev1 STARTTLS", "IMAP4rev1"},
	    {"imap4rev1 auth=plain Idle compress=deflate", "imap4rev1 Idle"},
	    {"IMAP4rev2 IMAP4rev1 AUTH=SCRAM-SHA-256 ENABLE", "IMAP4rev2 IMAP4rev1 ENABLE"},
	    /* Line breaks and other controls separate and never get through. */
	    {"IMAP4rev1 IDLE\r\n", "IMAP4rev1 IDLE"},
	    {"IMAP4rev1\r\nSTARTTLS\tIDLE", "IMAP4rev1 IDLE"},
	    {"A\x01"
	     "B\x7f"
	     "C",
	     "A B C"},
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		char out[128];
		long n = caps_filter(cases[i].in, strlen(cases[i].in), out, sizeof(out));

		assert_int_equal(n, (long)strlen(cases[i].out));
		assert_string_equal(out, cases[i].out);
	}
}

static void test_filter_embedded_nul(void **state)
{
	static const char in[] = "IDLE\0STARTTLS\0MOVE";
	char out[32];

	(void)state;
	assert_int_equal(caps_filter(in, sizeof(in) - 1, out, sizeof(out)), 9);
	assert_string_equal(out, "IDLE MOVE");
}

/* The filter must not read past inlen: exact-size heap copies of prefixes. */
static void test_filter_prefixes(void **state)
{
	size_t n = strlen(dovecot_caps);

	(void)state;
	for (size_t k = 0; k <= n; k++) {
		char *in = malloc(k == 0 ? 1 : k);
		char out[sizeof(dovecot_caps)];
		long r;

		assert_non_null(in);
		memcpy(in, dovecot_caps, k);
		r = caps_filter(in, k, out, sizeof(out));
		assert_true(r >= 0 && (size_t)r <= k);
		assert_int_equal(strlen(out), (size_t)r);
		free(in);
	}
}

static void test_has(void **state)
{
	size_t n = strlen(dovecot_caps);

	(void)state;
	assert_true(caps_has(dovecot_caps, n, "IMAP4rev1"));
	assert_true(caps_has(dovecot_caps, n, "imap4REV1"));
	assert_true(caps_has(dovecot_caps, n, "IDLE"));
	assert_true(caps_has(dovecot_caps, n, "SORT"));
	assert_true(caps_has(dovecot_caps, n, "SORT=DISPLAY"));
	assert_true(caps_has(dovecot_caps, n, "LITERAL+"));
	assert_true(caps_has(dovecot_caps, n, "UNAUTHENTICATE")); /* last atom */
	assert_true(caps_has(dovecot_caps, n, "auth=plain"));
	assert_false(caps_has(dovecot_caps, n, "IDL"));
	assert_false(caps_has(dovecot_caps, n, "IDLEX"));
	assert_false(caps_has(dovecot_caps, n, "SORT="));
	assert_false(caps_has(dovecot_caps, n, "LITERAL-"));
	assert_false(caps_has(dovecot_caps, n, "IMAP4rev2"));
	assert_false(caps_has(dovecot_caps, n, "THREAD"));
	assert_false(caps_has(dovecot_caps, n, "ID ENABLE"));
	assert_false(caps_has(dovecot_caps, n, ""));
	assert_false(caps_has("", 0, "IDLE"));
	assert_true(caps_has("  IDLE  ", 8, "IDLE"));
	assert_true(caps_has("A\r\nIDLE\r\n", 9, "IDLE"));
	/* Only len bytes count. */
	assert_false(caps_has("IDLE MOVE", 7, "MOVE"));
	assert_false(caps_has("IDLEX", 4 + 1, "IDLE"));
	assert_true(caps_has("IDLEX", 4, "IDLE"));
}

/* RFC 7888: LITERAL+ any size, LITERAL- (and IMAP4rev2) up to 4096, else none. */
static void test_nonsync_ok(void **state)
{
	static const struct {
		const char *caps;
		uint64_t size;
		bool ok;
	} cases[] = {
	    {"IMAP4rev1 LITERAL+ IDLE", 0, true},
	    {"IMAP4rev1 LITERAL+ IDLE", 1u << 30, true},
	    {"IMAP4rev1 literal+", 5000, true},
	    {"IMAP4rev1 LITERAL- IDLE", 4096, true},
	    {"IMAP4rev1 LITERAL- IDLE", 4097, false},
	    {"IMAP4rev1 LITERAL- LITERAL+", 4097, true},
	    {"IMAP4rev2 IDLE", 4096, true},
	    {"IMAP4rev2 IDLE", 4097, false},
	    {"IMAP4rev1 IDLE", 0, false},
	    {"IMAP4rev1 IDLE", 1, false},
	    {"IMAP4rev1 LITERAL++ XLITERAL-", 1, false},
	    {"", 1, false},
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		bool ok = caps_nonsync_ok(cases[i].caps, strlen(cases[i].caps), cases[i].size);
		if (ok != cases[i].ok)
			fail_msg("case %zu (%s, %llu): %d", i, cases[i].caps,
			         (unsigned long long)cases[i].size, ok);
		const char *why =
		    caps_nonsync_refusal(cases[i].caps, strlen(cases[i].caps), cases[i].size);
		assert_true((why == NULL) == cases[i].ok);
	}
	assert_string_equal(
	    caps_nonsync_refusal("IMAP4rev1 LITERAL-", sizeof("IMAP4rev1 LITERAL-") - 1, 4097),
	    "BAD [TOOBIG] Non-synchronizing literal too large.");
	assert_string_equal(caps_nonsync_refusal("IMAP4rev2", sizeof("IMAP4rev2") - 1, 4097),
	                    "BAD [TOOBIG] Non-synchronizing literal too large.");
	assert_string_equal(caps_nonsync_refusal("IMAP4rev1 IDLE", sizeof("IMAP4rev1 IDLE") - 1, 1),
	                    "BAD Non-synchronizing literals are not supported by this server.");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_dovecot_line),    cmocka_unit_test(test_dovecot_line_exact_room),
	    cmocka_unit_test(test_outcap_small),    cmocka_unit_test(test_is_hidden),
	    cmocka_unit_test(test_filter_table),    cmocka_unit_test(test_filter_embedded_nul),
	    cmocka_unit_test(test_filter_prefixes), cmocka_unit_test(test_has),
	    cmocka_unit_test(test_nonsync_ok),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
