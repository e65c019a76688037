/* Unit tests for tktkeys: TLS ticket keys by epoch (which key seals, which
 * open, shared keys over made ones), and a real TLS 1.3 resumption through
 * the callback against OpenSSL's own client. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "selfsigned.h"
#include "tktkeys.h"
#include <cmocka.h>

#define LIFE 100

static void key_of(unsigned char key[TKT_KEY_LEN], unsigned char fill)
{
	memset(key, fill, TKT_KEY_LEN);
}

static void test_epochs(void **state)
{
	struct tktkeys k;

	(void)state;
	assert_int_equal(tktkeys_init(&k, LIFE), 0);
	assert_int_equal(tktkeys_epoch(&k, 0), 0);
	assert_int_equal(tktkeys_epoch(&k, 99), 0);
	assert_int_equal(tktkeys_epoch(&k, 100), 1);
	assert_int_equal(tktkeys_epoch(&k, 12345), 123);
	tktkeys_fini(&k);
	/* 0 counts as 1. */
	assert_int_equal(tktkeys_init(&k, 0), 0);
	assert_int_equal(tktkeys_lifetime(&k), 1);
	tktkeys_fini(&k);
}

static void test_made_key_seals_one_epoch_opens_three(void **state)
{
	struct tktkeys k;
	unsigned char a[TKT_KEY_LEN], b[TKT_KEY_LEN], got[TKT_KEY_LEN];
	time_t t = 50 * LIFE + 10; /* epoch 50 */

	(void)state;
	assert_int_equal(tktkeys_init(&k, LIFE), 0);
	assert_int_equal(tktkeys_seal_key(&k, t, a), 0);
	assert_false(tktkeys_shared(&k, 50));
	/* The same key all through the epoch. */
	assert_int_equal(tktkeys_seal_key(&k, t + 80, b), 0);
	assert_memory_equal(a, b, TKT_KEY_LEN);
	/* It opens in its epoch (1), the next (2: renew) and not later (0). */
	assert_int_equal(tktkeys_open_key(&k, t, a, got), 1);
	assert_memory_equal(got, a, TKT_KEY_LEN);
	assert_int_equal(tktkeys_open_key(&k, t + LIFE, a, got), 2);
	assert_int_equal(tktkeys_open_key(&k, t + 2 * LIFE, a, got), 0);
	/* The next epoch seals with another key. */
	assert_int_equal(tktkeys_seal_key(&k, t + LIFE, b), 0);
	assert_memory_not_equal(a, b, TKT_NAME_LEN);
	/* An unknown name opens nothing. */
	memset(b, 0x5a, sizeof(b));
	assert_int_equal(tktkeys_open_key(&k, t, b, got), 0);
	tktkeys_fini(&k);
}

static void test_shared_keys(void **state)
{
	struct tktkeys k;
	unsigned char prev[TKT_KEY_LEN], cur[TKT_KEY_LEN], next[TKT_KEY_LEN], made[TKT_KEY_LEN];
	unsigned char got[TKT_KEY_LEN];
	time_t t = 7 * LIFE; /* epoch 7 */

	(void)state;
	assert_int_equal(tktkeys_init(&k, LIFE), 0);
	/* A key made before Redis answered is replaced by the shared one. */
	assert_int_equal(tktkeys_seal_key(&k, t, made), 0);
	key_of(prev, 1);
	key_of(cur, 2);
	key_of(next, 3);
	tktkeys_put(&k, 6, prev, t);
	tktkeys_put(&k, 7, cur, t);
	tktkeys_put(&k, 8, next, t);
	assert_true(tktkeys_shared(&k, 7));
	assert_int_equal(tktkeys_seal_key(&k, t, got), 0);
	assert_memory_equal(got, cur, TKT_KEY_LEN);
	assert_int_equal(tktkeys_open_key(&k, t, made, got), 0);
	/* E-1 and E+1 (a clock ahead) open, and want a new ticket. */
	assert_int_equal(tktkeys_open_key(&k, t, prev, got), 2);
	assert_memory_equal(got, prev, TKT_KEY_LEN);
	assert_int_equal(tktkeys_open_key(&k, t, next, got), 2);
	assert_int_equal(tktkeys_open_key(&k, t, cur, got), 1);
	/* The next epoch seals with the key put for it. */
	assert_int_equal(tktkeys_seal_key(&k, t + LIFE, got), 0);
	assert_memory_equal(got, next, TKT_KEY_LEN);
	/* Keys far from now are not taken. */
	key_of(made, 9);
	tktkeys_put(&k, 3, made, t);
	tktkeys_put(&k, 11, made, t);
	assert_false(tktkeys_shared(&k, 3));
	assert_false(tktkeys_shared(&k, 11));
	/* A new lifetime forgets every key; the same one keeps them. */
	tktkeys_set_lifetime(&k, LIFE);
	assert_true(tktkeys_shared(&k, 7));
	tktkeys_set_lifetime(&k, 2 * LIFE);
	assert_false(tktkeys_shared(&k, 7));
	assert_int_equal(tktkeys_open_key(&k, t, cur, got), 0);
	tktkeys_fini(&k);
}

/* ---- a real resumption through the callback -------------------------------- */

/* Drive a client and a server over memory BIOs until both are done. */
static void handshake(SSL *c, SSL *s)
{
	for (int i = 0; i < 100; i++) {
		int rc = SSL_do_handshake(c), rs = SSL_do_handshake(s);

		if (rc == 1 && rs == 1)
			break;
	}
	assert_int_equal(SSL_is_init_finished(c), 1);
	assert_int_equal(SSL_is_init_finished(s), 1);
	/* The client reads the server's post-handshake ticket. */
	{
		char b;
		(void)SSL_read(c, &b, 1);
	}
}

static SSL_SESSION *connect_once(SSL_CTX *cctx, SSL_CTX *sctx, SSL_SESSION *offer, int *reused)
{
	SSL *c = SSL_new(cctx), *s = SSL_new(sctx);
	BIO *a, *b;
	SSL_SESSION *got;

	assert_int_equal(BIO_new_bio_pair(&a, 0, &b, 0), 1);
	SSL_set_bio(c, a, a);
	SSL_set_bio(s, b, b);
	SSL_set_connect_state(c);
	SSL_set_accept_state(s);
	if (offer != NULL)
		assert_int_equal(SSL_set_session(c, offer), 1);
	handshake(c, s);
	*reused = SSL_session_reused(s);
	got = SSL_get1_session(c);
	/* Freed without a shutdown, OpenSSL would mark the session not
	 * resumable (a connection that may have been cut). */
	SSL_set_shutdown(c, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
	SSL_free(c);
	SSL_free(s);
	return got;
}

static void test_resumption(void **state)
{
	struct tktkeys k;
	SSL_CTX *sctx = SSL_CTX_new(TLS_server_method()), *cctx = SSL_CTX_new(TLS_client_method());
	SSL_CTX *other = SSL_CTX_new(TLS_server_method());
	SSL_SESSION *s1, *s2, *s3, *s4;
	unsigned long sealed;
	int reused;

	(void)state;
	assert_int_equal(tktkeys_init(&k, 3600), 0);
	for (SSL_CTX *ctx = sctx; ctx != NULL; ctx = ctx == sctx ? other : NULL) {
		assert_int_equal(selfsigned_use(ctx), 0);
		SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
		SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
		assert_int_equal(tktkeys_install(ctx, &k, ctx == sctx ? "imaps" : "other", 3600),
		                 0);
	}
	SSL_CTX_set_min_proto_version(cctx, TLS1_3_VERSION);
	SSL_CTX_set_session_cache_mode(cctx, SSL_SESS_CACHE_CLIENT);

	s1 = connect_once(cctx, sctx, NULL, &reused);
	assert_false(reused);
	assert_non_null(s1);
	assert_true(SSL_SESSION_has_ticket(s1));
	assert_int_equal(SSL_SESSION_get_ticket_lifetime_hint(s1), 3600);
	sealed = k.sealed;
	s2 = connect_once(cctx, sctx, s1, &reused);
	assert_true(reused);
	/* The resumed connection got a ticket of its own. */
	assert_int_equal(k.sealed, sealed + 1);
	assert_true(SSL_SESSION_has_ticket(s2));
	assert_ptr_not_equal(s2, s1);
	/* Another session id context (listener): a full handshake. */
	s3 = connect_once(cctx, other, s2, &reused);
	assert_false(reused);
	SSL_SESSION_free(s3);
	/* The ticket opened (same keys), and OpenSSL refused its session for
	 * this listener. */
	assert_int_equal(k.opened, 2);
	assert_int_equal(k.unknown, 0);
	/* Keys forgotten (a new lifetime): the ticket names an unknown key, a
	 * full handshake. */
	s4 = connect_once(cctx, sctx, NULL, &reused);
	tktkeys_set_lifetime(&k, 7200);
	s3 = connect_once(cctx, sctx, s4, &reused);
	assert_false(reused);
	assert_int_equal(k.opened, 2);
	assert_int_equal(k.unknown, 1);
	SSL_SESSION_free(s4);

	SSL_SESSION_free(s1);
	SSL_SESSION_free(s2);
	SSL_SESSION_free(s3);
	SSL_CTX_free(sctx);
	SSL_CTX_free(other);
	SSL_CTX_free(cctx);
	tktkeys_fini(&k);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_epochs),
	    cmocka_unit_test(test_made_key_seals_one_epoch_opens_three),
	    cmocka_unit_test(test_shared_keys),
	    cmocka_unit_test(test_resumption),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
