/*
 * test_conn_direct — conn_write_direct (proxy/conn.c): bulk bytes written
 * from the caller's buffer, not through `out`, over real TLS 1.3 on a
 * socketpair with small socket buffers, OpenSSL's own client reading:
 *
 *   caller's buffer --conn_write_direct--> SSL_write --socket--> client SSL_read
 *
 * Checked: a write the socket cannot take whole returns part, then 0
 * (direct_owed set, conn_out_idle false); offering the same bytes again,
 * also from another address (a backend buffer compacted in between), goes
 * on where OpenSSL stopped; 1 MB arrives exact; the same over plaintext;
 * conn_can_write_direct is false while `out` holds bytes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <ev.h>
#include <fcntl.h>
#include <openssl/ssl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn.h"
#include "selfsigned.h"

#define TOTAL (1024 * 1024)

static void nop_cb(struct conn *c, void *owner)
{
	(void)c;
	(void)owner;
}

static SSL_CTX *server_ctx(void)
{
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

	assert_non_null(ctx);
	assert_int_equal(selfsigned_use(ctx), 0);
	/* As runtime.c sets every context. */
	SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS | SSL_MODE_ENABLE_PARTIAL_WRITE |
	                          SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	return ctx;
}

static void small_buffers(int fd)
{
	int sz = 16 * 1024;

	assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz)), 0);
	assert_int_equal(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &sz, sizeof(sz)), 0);
}

/* Read what the peer can now (plaintext fd or client SSL) into got. */
static void peer_read(SSL *ssl, int fd, uint8_t *got, size_t *glen)
{
	for (;;) {
		int n = ssl != NULL ? SSL_read(ssl, got + *glen, (int)(TOTAL - *glen))
		                    : (int)read(fd, got + *glen, TOTAL - *glen);
		if (n <= 0)
			return;
		*glen += (size_t)n;
	}
}

/* Write data through c directly, the peer reading between blocked tries;
 * every other retry offers the bytes from a copy (a moved buffer). */
static void pump_all(struct conn *c, SSL *ssl, int fd, const uint8_t *data, uint8_t *got)
{
	size_t off = 0, glen = 0;
	uint8_t *moved = malloc(TOTAL);
	int blocked = 0, rounds = 0;

	assert_non_null(moved);
	while (off < TOTAL && rounds++ < 100000) {
		const uint8_t *from = data + off;
		ssize_t w;

		if (blocked % 2 == 1) {
			memcpy(moved, data + off, TOTAL - off);
			from = moved;
		}
		assert_true(conn_can_write_direct(c));
		w = conn_write_direct(c, from, TOTAL - off);
		assert_true(w >= 0);
		if (w == 0) {
			assert_true(c->direct_owed);
			assert_false(conn_out_idle(c));
			blocked++;
			peer_read(ssl, fd, got, &glen);
			continue;
		}
		assert_false(c->direct_owed);
		off += (size_t)w;
	}
	assert_int_equal(off, TOTAL);
	assert_true(blocked > 2); /* the small socket buffers did block */
	assert_true(conn_out_idle(c));
	while (glen < TOTAL && rounds++ < 200000)
		peer_read(ssl, fd, got, &glen);
	assert_int_equal(glen, TOTAL);
	assert_memory_equal(got, data, TOTAL);
	free(moved);
}

static uint8_t *pattern(void)
{
	uint8_t *d = malloc(TOTAL);

	assert_non_null(d);
	for (size_t i = 0; i < TOTAL; i++)
		d[i] = (uint8_t)(i * 7 + (i >> 13));
	return d;
}

static void test_tls(void **state)
{
	SSL_CTX *sctx = server_ctx(), *cctx = SSL_CTX_new(TLS_client_method());
	uint8_t *data = pattern(), *got = malloc(TOTAL);
	struct conn c;
	SSL *cl;
	int sv[2];

	(void)state;
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	small_buffers(sv[0]);
	small_buffers(sv[1]);
	assert_int_equal(fcntl(sv[0], F_SETFL, O_NONBLOCK), 0);
	assert_int_equal(fcntl(sv[1], F_SETFL, O_NONBLOCK), 0);
	conn_init(&c, EV_DEFAULT, sv[0], 4096, 4096, nop_cb, NULL);
	c.want_input = true;
	assert_int_equal(conn_start_tls(&c, sctx, true, NULL), 0);
	cl = SSL_new(cctx);
	SSL_set_fd(cl, sv[1]);
	SSL_set_connect_state(cl);
	for (int i = 0; i < 1000 && (c.handshaking || !SSL_is_init_finished(cl)); i++) {
		(void)SSL_do_handshake(cl);
		(void)!conn_read(&c);
	}
	assert_false(c.handshaking);
	/* Not while out holds bytes: they go first. */
	assert_int_equal(buf_append(&c.out, "x", 1), 0);
	assert_false(conn_can_write_direct(&c));
	buf_consume(&c.out, 1);
	pump_all(&c, cl, -1, data, got);
	SSL_free(cl);
	conn_close(&c);
	close(sv[1]);
	SSL_CTX_free(sctx);
	SSL_CTX_free(cctx);
	free(data);
	free(got);
}

static void test_plain(void **state)
{
	uint8_t *data = pattern(), *got = malloc(TOTAL);
	struct conn c;
	int sv[2];

	(void)state;
	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	small_buffers(sv[0]);
	assert_int_equal(fcntl(sv[0], F_SETFL, O_NONBLOCK), 0);
	assert_int_equal(fcntl(sv[1], F_SETFL, O_NONBLOCK), 0);
	conn_init(&c, EV_DEFAULT, sv[0], 4096, 4096, nop_cb, NULL);
	pump_all(&c, NULL, sv[1], data, got);
	conn_close(&c);
	close(sv[1]);
	free(data);
	free(got);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_tls),
	    cmocka_unit_test(test_plain),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
