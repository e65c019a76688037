/*
 * test_compress — COMPRESS=DEFLATE in the conn layer (proxy/conn.c), over
 * a real socketpair, with zlib's own raw deflate/inflate as the peer:
 *
 *   peer deflate --socket--> conn: zin --inflate--> in
 *   peer inflate <--socket-- conn: zout <--deflate-- out
 *
 * Checked: what the peer pipelined before conn_compress_start is inflated
 * and the OK buffered before it goes out plain; each conn_flush ends on a
 * sync flush (the peer inflates everything written, with nothing held);
 * tiny `in`/`out` buffers (64 bytes) against 200 KB each way (text, a
 * byte repeated, random bytes), so inflate and deflate stop for room and
 * resume (inf_more, flush_owed); the
 * deflater freed while idle (conn_compress_idle) and a fresh one
 * continuing the same stream for the peer's one inflater, several times;
 * corrupt input fails the conn with its message.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <ev.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zlib.h>

#include "conn.h"

struct peer {
	int fd;
	z_stream d, i;
};

static void nop_cb(struct conn *c, void *owner)
{
	(void)c;
	(void)owner;
}

static void setup(struct conn *c, struct peer *p, size_t cap)
{
	int sv[2];

	assert_int_equal(socketpair(AF_UNIX, SOCK_STREAM, 0, sv), 0);
	assert_int_equal(fcntl(sv[0], F_SETFL, O_NONBLOCK), 0);
	conn_init(c, EV_DEFAULT, sv[0], cap, cap, nop_cb, NULL);
	c->want_input = true;
	p->fd = sv[1];
	memset(&p->d, 0, sizeof(p->d));
	memset(&p->i, 0, sizeof(p->i));
	assert_int_equal(deflateInit2(&p->d, 6, Z_DEFLATED, -15, 8, Z_DEFAULT_STRATEGY), Z_OK);
	assert_int_equal(inflateInit2(&p->i, -15), Z_OK);
}

static void teardown(struct conn *c, struct peer *p)
{
	conn_close(c);
	close(p->fd);
	deflateEnd(&p->d);
	inflateEnd(&p->i);
}

/* The peer's compressed form of data[0..n), sync-flushed, into out. */
static size_t peer_deflate(struct peer *p, const void *data, size_t n, uint8_t *out, size_t cap)
{
	p->d.next_in = (Bytef *)data;
	p->d.avail_in = (uInt)n;
	p->d.next_out = out;
	p->d.avail_out = (uInt)cap;
	assert_int_equal(deflate(&p->d, Z_SYNC_FLUSH), Z_OK);
	assert_int_equal(p->d.avail_in, 0);
	assert_true(p->d.avail_out > 0);
	return cap - p->d.avail_out;
}

/* Read what is on the socket now and inflate it; appends to got. */
static void peer_take(struct peer *p, uint8_t *got, size_t *glen, size_t gcap)
{
	uint8_t raw[65536];
	ssize_t n;

	while ((n = recv(p->fd, raw, sizeof(raw), MSG_DONTWAIT)) > 0) {
		p->i.next_in = raw;
		p->i.avail_in = (uInt)n;
		while (p->i.avail_in > 0) {
			p->i.next_out = got + *glen;
			p->i.avail_out = (uInt)(gcap - *glen);
			int r = inflate(&p->i, Z_SYNC_FLUSH);
			assert_true(r == Z_OK || r == Z_BUF_ERROR);
			*glen = gcap - p->i.avail_out;
			assert_true(*glen < gcap);
		}
	}
}

/* Test data: kind 0 text-like, 1 one byte repeated (the last matches
 * inflate past any small buffer), 2 pseudo-random (deflate's output is
 * larger than its input, so a sync flush runs out of room). */
static void fill(uint8_t *b, size_t n, int kind)
{
	uint32_t x = 2463534242u;

	for (size_t k = 0; k < n; k++) {
		x ^= x << 13, x ^= x >> 17, x ^= x << 5;
		b[k] = kind == 1 ? 'a'
		       : kind == 2
		           ? (uint8_t)x
		           : (uint8_t)("IMAP text repeats itself "[k % 25] ^ ((k / 997) & 3));
	}
}

static void test_pipelined_and_ok_plain(void **state)
{
	struct conn c;
	struct peer p;
	uint8_t z[256], got[256];
	size_t zl, gl = 0;
	static const char ok[] = "z OK DEFLATE active\r\n";

	(void)state;
	setup(&c, &p, 4096);
	/* the OK in out, the peer's compressed NOOP already in in */
	assert_int_equal(buf_append(&c.out, ok, strlen(ok)), 0);
	zl = peer_deflate(&p, "n NOOP\r\n", 8, z, sizeof(z));
	assert_int_equal(buf_append(&c.in, z, zl), 0);
	assert_int_equal(conn_compress_start(&c), 0);
	assert_true(buf_is_empty(&c.in));
	assert_int_equal(conn_read(&c), 0);
	assert_int_equal(buf_len(&c.in), 8);
	assert_memory_equal(buf_head(&c.in), "n NOOP\r\n", 8);
	assert_int_equal(conn_flush(&c), 0);
	/* the OK came plain */
	ssize_t n = recv(p.fd, got, sizeof(got), MSG_DONTWAIT);
	assert_int_equal(n, (ssize_t)strlen(ok));
	assert_memory_equal(got, ok, strlen(ok));
	/* then a compressed answer, whole at once for the peer */
	assert_int_equal(buf_append(&c.out, "n OK\r\n", 6), 0);
	assert_int_equal(conn_flush(&c), 0);
	assert_true(conn_out_idle(&c));
	peer_take(&p, got, &gl, sizeof(got));
	assert_int_equal(gl, 6);
	assert_memory_equal(got, "n OK\r\n", 6);
	teardown(&c, &p);
}

static void test_small_buffers_big_data_and_idle_deflater(void **state)
{
	enum { BIG = 200000 };
	struct conn c;
	struct peer p;
	uint8_t *src = malloc(BIG), *got = malloc(BIG + 1), *z = malloc(BIG + 4096);
	size_t gl, zl, off, sent, rounds;

	(void)state;
	assert_non_null(src);
	assert_non_null(got);
	assert_non_null(z);
	setup(&c, &p, 64);
	assert_int_equal(conn_compress_start(&c), 0);
	for (int pass = 0; pass < 3; pass++) {
		/* peer to conn: 200 KB through a 64-byte in */
		fill(src, BIG, pass == 1 ? 1 : 0);
		zl = peer_deflate(&p, src, BIG, z, BIG + 4096);
		off = sent = gl = rounds = 0;
		while (gl < BIG && rounds++ < 100000) {
			if (sent < zl) {
				ssize_t n = send(p.fd, z + sent, zl - sent, MSG_DONTWAIT);
				if (n > 0)
					sent += (size_t)n;
			}
			int r = conn_read(&c);
			assert_true(r == 0 || r == -2);
			size_t k = buf_len(&c.in);
			memcpy(got + gl, buf_head(&c.in), k);
			buf_consume(&c.in, k);
			gl += k;
		}
		assert_int_equal(gl, BIG);
		assert_memory_equal(got, src, BIG);
		(void)off;

		/* conn to peer: 200 KB through a 64-byte out, each flush whole */
		fill(src, BIG, pass == 1 ? 2 : 0);
		off = gl = rounds = 0;
		while ((off < BIG || !conn_out_idle(&c)) && rounds++ < 100000) {
			size_t k = buf_room(&c.out);
			if (k > BIG - off)
				k = BIG - off;
			assert_int_equal(buf_append(&c.out, src + off, k), 0);
			off += k;
			int r = conn_flush(&c);
			assert_true(r == 0 || r == -2);
			peer_take(&p, got, &gl, BIG + 1);
		}
		peer_take(&p, got, &gl, BIG + 1);
		assert_int_equal(gl, BIG); /* sync-flushed: nothing held back */
		assert_memory_equal(got, src, BIG);

		/* idle: the deflater goes; the next pass starts a fresh one
		 * that the peer's one inflater reads on */
		assert_true(conn_compress_idle(&c, true));
		assert_true(conn_compress_idle(&c, false));
	}
	/* while idle, each flush leaves no deflater behind */
	(void)conn_compress_idle(&c, true);
	assert_int_equal(buf_append(&c.out, "* OK Still here\r\n", 17), 0);
	assert_int_equal(conn_flush(&c), 0);
	assert_true(conn_compress_idle(&c, true));
	gl = 0;
	peer_take(&p, got, &gl, BIG + 1);
	assert_int_equal(gl, 17);
	assert_memory_equal(got, "* OK Still here\r\n", 17);
	teardown(&c, &p);
	free(src);
	free(got);
	free(z);
}

static void test_corrupt_input_fails(void **state)
{
	struct conn c;
	struct peer p;
	static const uint8_t junk[] = {0xff, 0xff, 0xff, 0xff, 'x', 'y'};

	(void)state;
	setup(&c, &p, 4096);
	assert_int_equal(conn_compress_start(&c), 0);
	assert_int_equal(send(p.fd, junk, sizeof(junk), 0), (ssize_t)sizeof(junk));
	assert_int_equal(conn_read(&c), -1);
	assert_true(c.error);
	assert_string_equal(c.errmsg, "COMPRESS: corrupt data from the client");
	assert_int_equal(conn_read(&c), -1); /* sticky */
	teardown(&c, &p);
}

static void test_not_twice_and_not_idle_when_off(void **state)
{
	struct conn c;
	struct peer p;

	(void)state;
	setup(&c, &p, 4096);
	assert_false(conn_compress_idle(&c, true)); /* not compressed */
	assert_int_equal(conn_compress_start(&c), 0);
	assert_int_equal(conn_compress_start(&c), -1);
	teardown(&c, &p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_pipelined_and_ok_plain),
	    cmocka_unit_test(test_small_buffers_big_data_and_idle_deflater),
	    cmocka_unit_test(test_corrupt_input_fails),
	    cmocka_unit_test(test_not_twice_and_not_idle_when_off),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
