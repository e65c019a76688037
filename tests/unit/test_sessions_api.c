/*
 * test_sessions_api — GET /sessions' requests and JSON (proxy/sessions_api.c)
 * without a worker thread: the "workers" are this test, answering slots by
 * hand. Covered: the row cap (truncated, the rows kept), the byte cap of the
 * rendered array (truncated, the document still whole), a worker that never
 * answers (named in "unanswered"), a release before the workers answer (the
 * last one frees; valgrind and ASan see leaks), notify once and never after
 * release, rows sorted by id, JSON string escaping (quotes, backslashes,
 * control bytes, UTF-8 kept, invalid sequences as U+FFFD) and the query
 * (user= only, percent-decoding, what is refused).
 * Links sessions_api.o and metrics.o (struct text).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"
#include "sessions_api.h"

#define NW 3

static struct sessions_slot *posted[NW];
static unsigned nposted;
static int notified;

static void fake_post(void *arg, unsigned i, struct sessions_slot *slot)
{
	(void)arg;
	assert_true(i < NW && posted[i] == NULL);
	posted[i] = slot;
	nposted++;
}

static void count_notify(void *arg)
{
	(void)arg;
	notified++;
}

static void workers(unsigned n)
{
	memset(posted, 0, sizeof(posted));
	nposted = 0;
	notified = 0;
	sessions_api_set_workers(fake_post, NULL, n);
}

static struct sessions_row row(unsigned long id, const char *user)
{
	struct sessions_row r;

	memset(&r, 0, sizeof(r));
	r.id = id;
	snprintf(r.client, sizeof(r.client), "127.0.0.1:%lu", 1000 + id);
	snprintf(r.listener, sizeof(r.listener), "imaps");
	snprintf(r.tls, sizeof(r.tls), "TLSv1.3");
	r.state = user != NULL ? "logged_in" : "preauth";
	if (user != NULL) {
		r.user_len = strlen(user);
		memcpy(r.user, user, r.user_len);
		snprintf(r.backend, sizeof(r.backend), "a");
	}
	r.since = 1700000000;
	r.idle = 3;
	return r;
}

static char *render(struct sessions_req *rq)
{
	struct text t;

	text_init(&t, 64);
	sessions_render(&t, rq, 1700000000);
	assert_false(t.failed);
	text_append(&t, "", 1);
	return t.p;
}

static size_t count(const char *hay, const char *needle)
{
	size_t n = 0;

	for (const char *p = hay; (p = strstr(p, needle)) != NULL; p += strlen(needle))
		n++;
	return n;
}

static void test_row_cap_truncates_and_keeps_the_first(void **state)
{
	struct sessions_req *rq;
	char *doc;

	(void)state;
	workers(1);
	rq = sessions_req_new(3, NULL, 0, false, count_notify, NULL);
	assert_non_null(rq);
	sessions_req_post(rq);
	assert_int_equal(nposted, 1);
	assert_false(sessions_req_complete(rq));
	for (unsigned long id = 1; id <= 5; id++) {
		struct sessions_row r = row(id, "u");

		assert_int_equal(sessions_req_add(posted[0]->rq, &r), id <= 3 ? 0 : -1);
	}
	sessions_slot_done(posted[0]);
	assert_true(sessions_req_complete(rq));
	assert_int_equal(notified, 1);
	doc = render(rq);
	assert_int_equal(count(doc, "\"id\":"), 3);
	assert_non_null(strstr(doc, "\"id\":\"S-3\""));
	assert_null(strstr(doc, "\"id\":\"S-4\""));
	assert_non_null(strstr(doc, "],\"truncated\":true}\n"));
	assert_non_null(strstr(doc, "\"workers\":1,\"answered\":1,\"unanswered\":[]"));
	free(doc);
	sessions_req_release(&rq);
	assert_null(rq);
}

/* Every row at its largest: a user of IDENT_USER_MAX control bytes (six
 * bytes each in JSON). The byte cap cuts the array at a row boundary. */
static void test_byte_cap_truncates_at_a_row_boundary(void **state)
{
	char user[IDENT_USER_MAX + 1];
	struct sessions_req *rq;
	struct sessions_row r;
	char *doc, *arr, *end;
	size_t rows;

	(void)state;
	workers(1);
	memset(user, 0x01, IDENT_USER_MAX);
	user[IDENT_USER_MAX] = '\0';
	rq = sessions_req_new(SESSIONS_MAX, NULL, 0, false, NULL, NULL);
	assert_non_null(rq);
	sessions_req_post(rq);
	for (unsigned long id = 1; id <= SESSIONS_MAX; id++) {
		r = row(id, user);
		assert_int_equal(sessions_req_add(rq, &r), 0);
	}
	r = row(SESSIONS_MAX + 1, user);
	assert_int_equal(sessions_req_add(rq, &r), -1); /* the row cap */
	sessions_slot_done(posted[0]);
	doc = render(rq);
	arr = strstr(doc, "\"sessions\":[");
	end = strstr(doc, "],\"truncated\":true}\n");
	assert_non_null(arr);
	assert_non_null(end);
	assert_true((size_t)(end - arr) <= SESSIONS_MAX_BYTES + 16);
	rows = count(doc, "\"id\":\"S-");
	assert_true(rows > 1000 && rows < SESSIONS_MAX);
	/* the last row kept is whole, and no comma dangles */
	assert_memory_equal(end - 9, "\"idle\":3}", 9);
	free(doc);
	sessions_req_release(&rq);
}

static void test_unanswered_worker_is_named_and_late_answers_free(void **state)
{
	struct sessions_req *rq;
	struct sessions_row r = row(7, "bob");
	char *doc;

	(void)state;
	workers(3);
	rq = sessions_req_new(10, NULL, 0, false, count_notify, NULL);
	sessions_req_post(rq);
	assert_int_equal(nposted, 3);
	assert_int_equal(sessions_req_add(posted[1]->rq, &r), 0);
	sessions_slot_done(posted[1]);
	sessions_slot_done(posted[0]);
	assert_false(sessions_req_complete(rq));
	assert_int_equal(notified, 0);
	doc = render(rq);
	assert_non_null(strstr(doc, "\"workers\":3,\"answered\":2,\"unanswered\":[2]"));
	assert_non_null(strstr(doc, "\"user\":\"bob\""));
	assert_non_null(strstr(doc, "\"truncated\":false"));
	free(doc);
	/* The stats thread gives up first; the late worker frees the request,
	 * and no notify reaches a released request. */
	sessions_req_release(&rq);
	sessions_slot_done(posted[2]);
	assert_int_equal(notified, 0);
}

static void test_dropped_slots_and_no_workers(void **state)
{
	struct sessions_req *rq;
	char *doc;

	(void)state;
	workers(2);
	rq = sessions_req_new(10, NULL, 0, false, count_notify, NULL);
	sessions_req_post(rq);
	sessions_slot_drop(posted[0]); /* a worker that stopped */
	sessions_slot_done(posted[1]);
	assert_false(sessions_req_complete(rq));
	assert_int_equal(notified, 0);
	doc = render(rq);
	assert_non_null(strstr(doc, "\"unanswered\":[0]"));
	assert_non_null(strstr(doc, "\"sessions\":[]"));
	free(doc);
	sessions_req_release(&rq);

	sessions_api_set_workers(NULL, NULL, 0);
	rq = sessions_req_new(10, NULL, 0, false, count_notify, NULL);
	sessions_req_post(rq);
	assert_true(sessions_req_complete(rq));
	doc = render(rq);
	assert_non_null(strstr(doc, "\"workers\":0,\"answered\":0,\"unanswered\":[]"));
	free(doc);
	sessions_req_release(&rq);
}

static void test_rows_sorted_by_id_and_filter_carried(void **state)
{
	struct sessions_req *rq;
	struct sessions_row r;
	uint8_t u[IDENT_USER_MAX];
	size_t ulen;
	char *doc;

	(void)state;
	workers(2);
	rq = sessions_req_new(10, (const uint8_t *)"Bob", 3, true, NULL, NULL);
	assert_true(sessions_req_filter(rq, u, &ulen));
	assert_int_equal(ulen, 3);
	assert_memory_equal(u, "Bob", 3);
	sessions_req_post(rq);
	r = row(12, NULL);
	assert_int_equal(sessions_req_add(rq, &r), 0);
	r = row(3, "bob");
	assert_int_equal(sessions_req_add(rq, &r), 0);
	sessions_slot_done(posted[1]);
	r = row(9, "bob");
	assert_int_equal(sessions_req_add(rq, &r), 0);
	sessions_slot_done(posted[0]);
	doc = render(rq);
	char *a = strstr(doc, "S-3\""), *b = strstr(doc, "S-9\""), *c = strstr(doc, "S-12\"");
	assert_true(a != NULL && b != NULL && c != NULL && a < b && b < c);
	assert_non_null(strstr(doc, "\"id\":\"S-12\",\"worker\":0,\"client\":\"127.0.0.1:1012\","
	                            "\"listener\":\"imaps\",\"tls\":\"TLSv1.3\",\"state\":"
	                            "\"preauth\",\"in_idle\":false,\"user\":null,\"backend\":null,"
	                            "\"since\":1700000000,\"idle\":3}"));
	free(doc);
	sessions_req_release(&rq);

	rq = sessions_req_new(10, NULL, 0, false, NULL, NULL);
	assert_false(sessions_req_filter(rq, u, &ulen));
	sessions_req_release(&rq);
}

static void test_json_strings(void **state)
{
	static const struct {
		const char *in;
		size_t len;
		const char *out;
	} cases[] = {
	    {"", 0, "\"\""},
	    {"alice", 5, "\"alice\""},
	    {"a\"b\\c", 5, "\"a\\\"b\\\\c\""},
	    {"\"", 1, "\"\\\"\""},
	    {"\\", 1, "\"\\\\\""},
	    {"x\ny\r\t", 5, "\"x\\u000ay\\u000d\\u0009\""},
	    {"\x01\x1f\x7f", 3, "\"\\u0001\\u001f\\u007f\""},
	    {"a\0b", 3, "\"a\\u0000b\""},
	    {"j\xc3\xbcrgen", 7, "\"j\xc3\xbcrgen\""}, /* UTF-8 kept */
	    {"\xe2\x82\xac\xf0\x9f\x98\x80", 7, "\"\xe2\x82\xac\xf0\x9f\x98\x80\""},
	    {"\xff", 1, "\"\\ufffd\""},                                  /* never UTF-8 */
	    {"\xc3", 1, "\"\\ufffd\""},                                  /* cut short */
	    {"\xc3x", 2, "\"\\ufffdx\""},                                /* bad continuation */
	    {"\xc0\xaf", 2, "\"\\ufffd\\ufffd\""},                       /* overlong '/' */
	    {"\xed\xa0\x80", 3, "\"\\ufffd\\ufffd\\ufffd\""},            /* a surrogate */
	    {"\xf4\x90\x80\x80", 4, "\"\\ufffd\\ufffd\\ufffd\\ufffd\""}, /* > U+10FFFF */
	};

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct text t;

		text_init(&t, 8);
		sessions_json_str(&t, (const uint8_t *)cases[i].in, cases[i].len);
		text_append(&t, "", 1);
		if (strcmp(t.p, cases[i].out) != 0)
			fail_msg("case %zu: got %s, want %s", i, t.p, cases[i].out);
		free(t.p);
	}
}

static void test_query(void **state)
{
	static const struct {
		const char *q;
		int rc;
		const char *user; /* NULL: no filter */
		const char *why;  /* in the error */
	} cases[] = {
	    {"", 0, NULL, NULL},
	    {"user=bob", 0, "bob", NULL},
	    {"user=Bob%40Example.org", 0, "Bob@Example.org", NULL},
	    {"user=a+b%2Bc", 0, "a b+c", NULL},
	    {"user=%22q%5c", 0, "\"q\\", NULL},
	    {"&user=bob&", 0, "bob", NULL},
	    {"foo=1", -1, NULL, "unknown query parameter 'foo'"},
	    {"user", -1, NULL, "unknown query parameter 'user'"},
	    {"users=x", -1, NULL, "unknown query parameter 'users'"},
	    {"user=a&x", -1, NULL, "unknown query parameter 'x'"},
	    {"us%01r=x", -1, NULL, "unknown query parameter 'us%01r'"},
	    {"user=", -1, NULL, "needs a name"},
	    {"user=a&user=a", -1, NULL, "more than once"},
	    {"user=%", -1, NULL, "percent-encoded"},
	    {"user=%4", -1, NULL, "percent-encoded"},
	    {"user=%g0", -1, NULL, "percent-encoded"},
	    {"user=a%00", -1, NULL, "without NUL"},
	};
	uint8_t u[IDENT_USER_MAX];
	char q[IDENT_USER_MAX + 16];
	size_t ulen;
	bool has;
	char err[160];

	(void)state;
	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int rc = sessions_query_parse(cases[i].q, strlen(cases[i].q), u, &ulen, &has, err,
		                              sizeof(err));

		if (rc != cases[i].rc)
			fail_msg("case %zu (%s): rc %d", i, cases[i].q, rc);
		if (rc < 0) {
			if (strstr(err, cases[i].why) == NULL)
				fail_msg("case %zu (%s): error %s", i, cases[i].q, err);
			continue;
		}
		assert_int_equal(has, cases[i].user != NULL);
		if (has) {
			assert_int_equal(ulen, strlen(cases[i].user));
			assert_memory_equal(u, cases[i].user, ulen);
		}
	}
	/* a name of IDENT_USER_MAX bytes passes, one more does not */
	memcpy(q, "user=", 5);
	memset(q + 5, 'x', IDENT_USER_MAX + 1);
	assert_int_equal(
	    sessions_query_parse(q, 5 + IDENT_USER_MAX, u, &ulen, &has, err, sizeof(err)), 0);
	assert_int_equal(ulen, IDENT_USER_MAX);
	assert_int_equal(
	    sessions_query_parse(q, 5 + IDENT_USER_MAX + 1, u, &ulen, &has, err, sizeof(err)), -1);
	/* control bytes of an unknown name never reach the answer's body */
	assert_int_equal(sessions_query_parse("a\x01\x7f=1", 5, u, &ulen, &has, err, sizeof(err)),
	                 -1);
	assert_non_null(strstr(err, "'a?"
	                            "?'"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_row_cap_truncates_and_keeps_the_first),
	    cmocka_unit_test(test_byte_cap_truncates_at_a_row_boundary),
	    cmocka_unit_test(test_unanswered_worker_is_named_and_late_answers_free),
	    cmocka_unit_test(test_dropped_slots_and_no_workers),
	    cmocka_unit_test(test_rows_sorted_by_id_and_filter_carried),
	    cmocka_unit_test(test_json_strings),
	    cmocka_unit_test(test_query),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
