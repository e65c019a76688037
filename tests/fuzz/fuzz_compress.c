/*
 * fuzz_compress — a conn with COMPRESS=DEFLATE on (proxy/conn.c) reading
 * what a client sends, over a socketpair, its `in` and `out` small (64
 * bytes) so that inflate and deflate stop for room and resume.
 *
 * The first byte picks the mode and the chunk size the bytes go over in:
 *   even: the rest is raw input, as hostile as it comes (corrupt streams,
 *         a final block, garbage after a sync flush): no crash, no
 *         sanitizer report, and whatever the conn inflated before it
 *         failed is what zlib itself inflates from the same bytes;
 *   odd:  the rest is plaintext, deflated here (raw, windowBits -15, the
 *         level from the first byte) and sync-flushed: the conn inflates
 *         all of it, byte for byte.
 * Then the conn writes back what it inflated, and the peer inflates that
 * whole (each conn_flush ends on a sync flush).
 */
#include <errno.h>
#include <ev.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zlib.h>

#include "conn.h"
#include "fuzz.h"

static void cb(struct conn *c, void *owner)
{
	(void)c, (void)owner;
}

static void pump(struct conn *c, uint8_t *got, size_t *ngot, size_t cap)
{
	/* stops with room for one more `in` left: an inflate bomb ends here */
	for (int i = 0; i < 100000 && !c->error && !c->eof && cap - *ngot >= 64; i++) {
		int r = conn_read(c);
		size_t n = buf_len(&c->in);
		FUZZ_CHECK(*ngot + n <= cap, "more output than fits");
		if (n > 0) {
			memcpy(got + *ngot, buf_head(&c->in), n);
			*ngot += n;
			buf_consume(&c->in, n);
		}
		if (r != 0)
			break;
	}
}

/* zlib's own inflate of p[0..n) as far as it goes. */
static size_t ref_inflate(const uint8_t *p, size_t n, uint8_t *out, size_t cap, bool *ok_r)
{
	z_stream z;
	int r;

	memset(&z, 0, sizeof(z));
	FUZZ_CHECK(inflateInit2(&z, -15) == Z_OK, "inflateInit2");
	z.next_in = (Bytef *)p;
	z.avail_in = (uInt)n;
	z.next_out = out;
	z.avail_out = (uInt)cap;
	r = inflate(&z, Z_SYNC_FLUSH);
	*ok_r = r == Z_OK || r == Z_BUF_ERROR;
	size_t made = cap - z.avail_out;
	inflateEnd(&z);
	return made;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint8_t stream[1 << 17], want[1 << 18], got[1 << 18], back[1 << 18];
	struct conn c;
	size_t nstream, nwant = 0, ngot = 0, sent = 0, nback = 0;
	bool ref_ok = true;
	int sv[2];

	if (size < 1 || size > 60000)
		return 0;
	bool plain = data[0] & 1;
	size_t chunk = 1 + (data[0] >> 1) * 37;
	data++, size--;
	if (plain) {
		z_stream d;
		memset(&d, 0, sizeof(d));
		FUZZ_CHECK(deflateInit2(&d, (data[-1] >> 1) % 10, Z_DEFLATED, -15, 8,
		                        Z_DEFAULT_STRATEGY) == Z_OK,
		           "deflateInit2");
		d.next_in = (Bytef *)data;
		d.avail_in = (uInt)size;
		d.next_out = stream;
		d.avail_out = sizeof(stream);
		FUZZ_CHECK(deflate(&d, Z_SYNC_FLUSH) == Z_OK && d.avail_in == 0, "deflate");
		nstream = sizeof(stream) - d.avail_out;
		deflateEnd(&d);
		memcpy(want, data, size);
		nwant = size;
	} else {
		memcpy(stream, data, size);
		nstream = size;
		nwant = ref_inflate(stream, nstream, want, sizeof(want), &ref_ok);
	}

	FUZZ_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) == 0, "socketpair");
	conn_init(&c, EV_DEFAULT, sv[0], 64, 64, cb, NULL);
	c.want_input = true;
	FUZZ_CHECK(conn_compress_start(&c) == 0, "start");
	for (int round = 0;
	     round < 1000000 && sent < nstream && !c.error && sizeof(got) - ngot >= 64; round++) {
		size_t k = nstream - sent < chunk ? nstream - sent : chunk;
		ssize_t n = send(sv[1], stream + sent, k, 0);
		if (n > 0)
			sent += (size_t)n;
		pump(&c, got, &ngot, sizeof(got));
	}
	pump(&c, got, &ngot, sizeof(got));
	if (plain) {
		FUZZ_CHECK(!c.error, "a good stream failed");
		FUZZ_CHECK(ngot == nwant && memcmp(got, want, ngot) == 0,
		           "the conn inflated otherwise than zlib");
	} else {
		size_t same = ngot < nwant ? ngot : nwant;
		FUZZ_CHECK(memcmp(got, want, same) == 0, "the conn inflated otherwise than zlib");
		/* all that zlib got out of a stream it took, unless the conn stopped for room */
		if (ref_ok && nwant < sizeof(want) && sizeof(got) - ngot >= 64)
			FUZZ_CHECK(ngot == nwant, "the conn inflated less than zlib");
	}

	/* Back: what was inflated goes out deflated; the peer reads it all. */
	if (!c.error) {
		z_stream i;
		size_t off = 0;
		memset(&i, 0, sizeof(i));
		FUZZ_CHECK(inflateInit2(&i, -15) == Z_OK, "peer inflate");
		for (int round = 0; round < 100000 && (off < ngot || !conn_out_idle(&c)); round++) {
			size_t k = buf_room(&c.out);
			if (k > ngot - off)
				k = ngot - off;
			FUZZ_CHECK(buf_append(&c.out, got + off, k) == 0, "append");
			off += k;
			FUZZ_CHECK(conn_flush(&c) != -1, "flush");
			uint8_t raw[4096];
			ssize_t n;
			while ((n = recv(sv[1], raw, sizeof(raw), 0)) > 0) {
				i.next_in = raw;
				i.avail_in = (uInt)n;
				while (i.avail_in > 0) {
					i.next_out = back + nback;
					i.avail_out = (uInt)(sizeof(back) - nback);
					int r = inflate(&i, Z_SYNC_FLUSH);
					FUZZ_CHECK(r == Z_OK || r == Z_BUF_ERROR,
					           "the peer cannot inflate");
					nback = sizeof(back) - i.avail_out;
				}
			}
		}
		inflateEnd(&i);
		FUZZ_CHECK(nback == ngot && memcmp(back, got, ngot) == 0, "echo differs");
	}
	conn_close(&c);
	close(sv[1]);
	return 0;
}
