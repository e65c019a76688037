/*
 * conn — see conn.h. Plain and TLS sockets behind one interface.
 *
 * Invariants:
 *   - watchers are active only for a need recomputed in conn_update();
 *   - OpenSSL's wants (handshake, read-wants-write, write-wants-read) are
 *     kept apart from the owner's want_input, and cleared as soon as the
 *     operation that raised them makes progress;
 *   - bytes OpenSSL has already decrypted (SSL_has_pending) make
 *     conn_update() feed a read event, because no socket event will come
 *     for them;
 *   - an error is sticky: every later call returns -1;
 *   - with COMPRESS on (c->z), the wire bytes go through z->zin and
 *     z->zout, and `in`/`out` hold plaintext as before: the owner sees no
 *     difference. Bytes inflate holds back for want of room in `in`
 *     (zin not empty, or inf_more) make conn_update feed a read event,
 *     like SSL_has_pending.
 */
#include "conn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <unistd.h>
#include <zlib.h>

#include "tls13.h"
#include "zone.h"

/*
 * After conn_shed_tls: the keys, the records read but not yet opened (r,
 * allocated only while it holds bytes), the plaintext of the record opened
 * at r's front not yet handed to `in`, and the sealed record being sent
 * (w, likewise only while there is one).
 */
struct conn_t13 {
	struct tls13 t;
	uint8_t *r;
	size_t rlen;       /* bytes in r */
	size_t rec;        /* length of the opened record at r's front (0: none) */
	size_t poff, plen; /* its plaintext not yet handed over: r[poff, poff + plen) */
	uint8_t *w;
	size_t woff, wlen;
	bool ku_owed; /* the client asked for a KeyUpdate: ours goes before our next record */
};

/*
 * COMPRESS=DEFLATE (conn_compress_start): the compressed bytes read and
 * not yet inflated (zin), those deflated and not yet sent (zout), both
 * buffers of the conn's own sizes, allocated only while they hold bytes.
 */
struct conn_z {
	z_stream inf;
	z_stream def;
	bool def_on;     /* def is set up (it is freed while idle, see conn.h) */
	bool inf_more;   /* inflate filled `in`: it may hold more output */
	bool flush_owed; /* the last Z_SYNC_FLUSH ran out of room in zout */
	bool idle;       /* conn_compress_idle */
	uint8_t *arena;  /* the deflater's memory (z_arena_alloc), NULL while none */
	size_t arena_used;
	struct buf zin;
	struct buf zout;
};

/* imapmux's deflater: see conn.h for why these. */
#define Z_OUT_LEVEL    1
#define Z_OUT_WBITS    12
#define Z_OUT_MEMLEVEL 5

/*
 * The deflater's allocations (five, about 38 KB with the values above) all
 * come from one mapping of its own, unmapped when it is freed: from the
 * heap, blocks freed while the sessions around them stay (a parked
 * session's deflater) leave holes of which malloc_trim returns only the
 * whole pages inside, ~16 KB a session kept (measured, BENCHMARKS.md).
 * Untouched pages of the mapping cost nothing. A zlib asking for more
 * than the mapping holds gets the rest from malloc.
 */
#define Z_ARENA_SIZE (64 * 1024)

static void conn_io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	struct conn *c = w->data;

	(void)loop;
	(void)revents;
	c->cb(c, c->owner);
}

void conn_init(struct conn *c, struct ev_loop *loop, int fd, size_t in_cap, size_t out_cap,
               conn_cb *cb, void *owner)
{
	memset(c, 0, sizeof(*c));
	c->fd = fd;
	c->loop = loop;
	c->cb = cb;
	c->owner = owner;
	buf_init(&c->in, in_cap);
	buf_init(&c->out, out_cap);
	ev_io_init(&c->rio, conn_io_cb, fd, EV_READ);
	ev_io_init(&c->wio, conn_io_cb, fd, EV_WRITE);
	c->rio.data = c;
	c->wio.data = c;
}

static void conn_fail(struct conn *c, const char *why)
{
	if (!c->error) {
		c->error = true;
		c->errmsg = why;
	}
}

/* Name the OpenSSL error in a static string for the logs. */
static const char *ssl_reason(void)
{
	unsigned long e = ERR_peek_last_error();
	const char *r = e ? ERR_reason_error_string(e) : NULL;

	ERR_clear_error();
	return r ? r : "TLS error";
}

int conn_start_tls(struct conn *c, SSL_CTX *ctx, bool server, const char *sni)
{
	c->ssl = SSL_new(ctx);
	if (c->ssl == NULL)
		return -1;
	if (SSL_set_fd(c->ssl, c->fd) != 1)
		goto fail;
	if (server) {
		SSL_set_accept_state(c->ssl);
		/* No memory for the capture: the conn just keeps its SSL. */
		(void)!tls13_capture_attach(c->ssl);
	} else {
		SSL_set_connect_state(c->ssl);
		if (sni != NULL && sni[0] != '\0') {
			struct in6_addr a6;
			struct in_addr a4;
			bool is_ip =
			    inet_pton(AF_INET, sni, &a4) == 1 || inet_pton(AF_INET6, sni, &a6) == 1;

			/* RFC 6066: no IP literals in SNI; verify the address instead.
			 * Verification (when the context verifies) checks this. */
			if (is_ip) {
				if (X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), sni) != 1)
					goto fail;
			} else if (SSL_set_tlsext_host_name(c->ssl, sni) != 1 ||
			           SSL_set1_host(c->ssl, sni) != 1) {
				goto fail;
			}
		}
	}
	c->tls_server = server;
	c->handshaking = true;
	c->hs_wants_read = server;
	c->hs_wants_write = !server;
	return 0;
fail:
	SSL_free(c->ssl);
	c->ssl = NULL;
	return -1;
}

/* Advance the handshake: 0 done, -2 blocked (wants read or write), -1
 * failed. */
static int conn_handshake(struct conn *c)
{
	int r, e;

	ERR_clear_error();
	r = SSL_do_handshake(c->ssl);
	if (r == 1) {
		c->handshaking = false;
		c->hs_wants_read = c->hs_wants_write = false;
		return 0;
	}
	e = SSL_get_error(c->ssl, r);
	c->hs_wants_read = e == SSL_ERROR_WANT_READ;
	c->hs_wants_write = e == SSL_ERROR_WANT_WRITE;
	if (c->hs_wants_read || c->hs_wants_write)
		return -2;
	/*
	 * With SSL_OP_IGNORE_UNEXPECTED_EOF, a peer that hangs up in the middle
	 * of the handshake reads as a clean close, with nothing in the error
	 * queue: Dovecot does that when it shares no cipher with us.
	 */
	if (e == SSL_ERROR_ZERO_RETURN)
		conn_fail(c, "TLS handshake: closed by the peer");
	else
		conn_fail(c,
		          e == SSL_ERROR_SYSCALL ? "TLS handshake: connection lost" : ssl_reason());
	return -1;
}

static int conn_read_tls(struct conn *c, uint8_t *p, size_t room)
{
	int n, e;

	ERR_clear_error();
	n = SSL_read(c->ssl, p, room > INT32_MAX ? INT32_MAX : (int)room);
	if (n > 0) {
		c->rd_wants_write = false;
		return n;
	}
	e = SSL_get_error(c->ssl, n);
	switch (e) {
	case SSL_ERROR_WANT_READ:
		c->rd_wants_write = false;
		return -2;
	case SSL_ERROR_WANT_WRITE:
		c->rd_wants_write = true;
		return -2;
	case SSL_ERROR_ZERO_RETURN:
		return 0;
	case SSL_ERROR_SYSCALL:
		/* A peer that closes without close_notify: treat as EOF. */
		if (errno == 0 || errno == ECONNRESET || errno == EPIPE) {
			ERR_clear_error();
			return 0;
		}
		conn_fail(c, "read error");
		return -1;
	default:
		conn_fail(c, ssl_reason());
		return -1;
	}
}

/* send() without SIGPIPE: the bytes sent, -2 when the socket is full, -1
 * failed (c failed). */
static ssize_t send_some(struct conn *c, const uint8_t *p, size_t n)
{
	for (;;) {
		ssize_t r = send(c->fd, p, n, MSG_NOSIGNAL);
		if (r >= 0)
			return r;
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			return -2;
		conn_fail(c, "write error");
		return -1;
	}
}

/* ---- TLS 1.3 after conn_shed_tls ------------------------------------------ */

/* The opened record at r's front is done with: the bytes after it move up. */
static void t13_drop_record(struct conn_t13 *x)
{
	memmove(x->r, x->r + x->rec, x->rlen - x->rec);
	x->rlen -= x->rec;
	x->rec = x->poff = x->plen = 0;
}

/* A handshake record after the handshake: only KeyUpdate (RFC 8446 4.6.3),
 * and a KeyUpdate changes the keys, so it must end its record (5.1: "all
 * messages immediately preceding a key change align with a record
 * boundary"); the only handshake message allowed here is a KeyUpdate, so
 * the record is exactly one. 0, or -1 with c failed. */
static int t13_handshake(struct conn *c, const uint8_t *p, size_t n)
{
	struct conn_t13 *x = c->t13;

	if (n != 5 || p[0] != SSL3_MT_KEY_UPDATE || p[1] != 0 || p[2] != 0 || p[3] != 1 ||
	    p[4] > 1) {
		conn_fail(c, "TLS: unexpected handshake message");
		return -1;
	}
	if (tls13_update(&x->t, false) < 0) {
		conn_fail(c, "TLS: key update failed");
		return -1;
	}
	if (p[4] == 1)
		x->ku_owed = true;
	return 0;
}

/* Open the whole record at r's front, if there is one: 1 (plaintext to
 * hand over, or a record consumed), 0 (need more bytes), -1 failed, 2 the
 * peer closed (close_notify). */
static int t13_open_next(struct conn *c)
{
	struct conn_t13 *x = c->t13;
	ssize_t len = tls13_record_len(x->r, x->rlen);
	uint8_t type = 0;
	size_t plen = 0;

	if (len < 0) {
		conn_fail(c, "TLS: bad record");
		return -1;
	}
	if (len == 0 || x->rlen < (size_t)len)
		return 0;
	if (tls13_open(&x->t, x->r, (size_t)len, &type, &plen) < 0) {
		conn_fail(c, "TLS: bad record MAC");
		return -1;
	}
	x->rec = (size_t)len;
	switch (type) {
	case TLS13_APPDATA:
		x->poff = TLS13_HDR;
		x->plen = plen;
		if (plen == 0)
			t13_drop_record(x);
		return 1;
	case TLS13_HANDSHAKE:
		if (t13_handshake(c, x->r + TLS13_HDR, plen) < 0)
			return -1;
		t13_drop_record(x);
		return 1;
	case TLS13_ALERT:
		/* close_notify, or user_canceled (which precedes one) */
		if (plen == 2 && (x->r[TLS13_HDR + 1] == 0 || x->r[TLS13_HDR + 1] == 90)) {
			t13_drop_record(x);
			return 2;
		}
		conn_fail(c, "TLS: alert from the peer");
		return -1;
	default:
		conn_fail(c, "TLS: unexpected record type");
		return -1;
	}
}

/* Like conn_read_tls: n > 0 bytes of plaintext, 0 EOF, -2 again, -1. */
static ssize_t t13_read(struct conn *c, uint8_t *p, size_t room)
{
	struct conn_t13 *x = c->t13;

	for (;;) {
		ssize_t n;
		int r;

		if (x->plen > 0) {
			size_t k = x->plen < room ? x->plen : room;
			memcpy(p, x->r + x->poff, k);
			x->poff += k;
			x->plen -= k;
			if (x->plen == 0)
				t13_drop_record(x);
			return (ssize_t)k;
		}
		if (x->rlen > 0) {
			r = t13_open_next(c);
			if (r == -1)
				return -1;
			if (r == 2)
				return 0;
			if (r == 1)
				continue;
		}
		if (x->r == NULL && (x->r = malloc(TLS13_MAX_RECORD)) == NULL) {
			conn_fail(c, "out of memory");
			return -1;
		}
		n = read(c->fd, x->r + x->rlen, TLS13_MAX_RECORD - x->rlen);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
			if (x->rlen == 0) {
				free(x->r);
				x->r = NULL;
			}
			return -2;
		}
		if (n < 0 && errno != ECONNRESET) {
			conn_fail(c, "read error");
			return -1;
		}
		if (n <= 0) /* EOF without close_notify: EOF (as SSL_OP_IGNORE_UNEXPECTED_EOF) */
			return 0;
		x->rlen += (size_t)n;
	}
}

/* Send what is sealed, seal more from w (out, or zout): as conn_flush. */
static int t13_flush(struct conn *c, struct buf *w)
{
	struct conn_t13 *x = c->t13;
	bool progress = false;

	for (;;) {
		if (x->woff < x->wlen) {
			ssize_t n = send_some(c, x->w + x->woff, x->wlen - x->woff);
			if (n == -1)
				return -1;
			if (n == -2)
				break;
			x->woff += (size_t)n;
			progress = true;
			continue;
		}
		x->woff = x->wlen = 0;
		if (!x->ku_owed && buf_is_empty(w))
			break;
		if (x->w == NULL && (x->w = malloc(TLS13_MAX_PLAIN + TLS13_OVERHEAD)) == NULL) {
			conn_fail(c, "out of memory");
			return -1;
		}
		ssize_t len;
		if (x->ku_owed) {
			static const uint8_t ku[] = {SSL3_MT_KEY_UPDATE, 0, 0, 1, 0};
			len = tls13_seal(&x->t, TLS13_HANDSHAKE, ku, sizeof(ku), x->w);
			if (len > 0 && tls13_update(&x->t, true) < 0)
				len = -1;
			x->ku_owed = false;
		} else {
			size_t k = buf_len(w);
			if (k > x->t.max_plain)
				k = x->t.max_plain;
			len = tls13_seal(&x->t, TLS13_APPDATA, buf_head(w), k, x->w);
			if (len > 0) {
				buf_consume(w, k);
				c->bytes_out += k;
			}
		}
		if (len < 0) {
			conn_fail(c, "TLS: cannot seal a record");
			return -1;
		}
		x->wlen = (size_t)len;
		progress = true;
	}
	if (x->woff == x->wlen) {
		free(x->w);
		x->w = NULL;
	}
	return progress ? 0 : -2;
}

static bool t13_has_pending(const struct conn_t13 *x)
{
	ssize_t len;

	if (x->plen > 0)
		return true;
	len = x->rlen > 0 ? tls13_record_len(x->r, x->rlen) : 0;
	return len != 0 && (len < 0 || x->rlen >= (size_t)len);
}

bool conn_shed_tls(struct conn *c)
{
	struct tls13 t;

	if (c->ssl == NULL || !c->tls_server || c->handshaking || c->error || c->eof ||
	    c->rd_wants_write || c->wr_wants_read || !conn_out_idle(c))
		return false;
	if (tls13_capture_take(c->ssl, &t) < 0)
		return false;
	if (conn_use_tls13(c, &t) < 0) {
		tls13_wipe(&t);
		return false;
	}
	tls13_wipe(&t);
	SSL_free(c->ssl); /* no SSL_shutdown: the connection goes on */
	c->ssl = NULL;
	ERR_clear_error();
	return true;
}

int conn_use_tls13(struct conn *c, const struct tls13 *t)
{
	struct conn_t13 *x;

	if (c->t13 != NULL || (x = zalloc(sizeof(*x))) == NULL)
		return -1;
	x->t = *t;
	c->t13 = x;
	return 0;
}

bool conn_out_idle(const struct conn *c)
{
	if (c->direct_owed)
		return false;
	if (c->z != NULL && (!buf_is_empty(&c->z->zout) || c->z->flush_owed))
		return false;
	return buf_is_empty(&c->out) &&
	       (c->t13 == NULL || (c->t13->woff == c->t13->wlen && !c->t13->ku_owed));
}

static void t13_free(struct conn *c)
{
	struct conn_t13 *x = c->t13;

	if (x == NULL)
		return;
	if (!c->error && c->fd >= 0 && x->woff == x->wlen) {
		/* best effort close_notify */
		static const uint8_t alert[] = {1, 0};
		uint8_t rec[sizeof(alert) + TLS13_OVERHEAD];
		ssize_t len = tls13_seal(&x->t, TLS13_ALERT, alert, sizeof(alert), rec);
		if (len > 0)
			(void)!send(c->fd, rec, (size_t)len, MSG_NOSIGNAL | MSG_DONTWAIT);
	}
	tls13_wipe(&x->t);
	free(x->r);
	free(x->w);
	zfree(x, sizeof(*x));
	c->t13 = NULL;
}

/* One read from the socket (plain, OpenSSL or conn_shed_tls's layer):
 * n > 0 bytes, 0 EOF, -2 again, -1 failed (c failed). */
static ssize_t wire_read(struct conn *c, uint8_t *p, size_t room)
{
	if (c->t13 != NULL)
		return t13_read(c, p, room);
	if (c->ssl != NULL)
		return conn_read_tls(c, p, room);
	for (;;) {
		ssize_t n = read(c->fd, p, room);
		if (n >= 0)
			return n;
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			return -2;
		if (errno == ECONNRESET)
			return 0;
		conn_fail(c, "read error");
		return -1;
	}
}

/* Read the socket into b (in, or zin) as far as there is room: 1 bytes
 * came, 0 none now, -1 failed. Sets c->eof. */
static int wire_fill(struct conn *c, struct buf *b)
{
	int got = 0;

	while (!c->eof) {
		size_t room;
		uint8_t *p = buf_tail(b, &room);
		ssize_t n;

		if (p == NULL) {
			conn_fail(c, "out of memory");
			return -1;
		}
		if (room == 0)
			break;
		n = wire_read(c, p, room);
		if (n == -1)
			return -1;
		if (n == -2)
			break;
		if (n == 0) {
			c->eof = true;
			return 1;
		}
		buf_produced(b, (size_t)n);
		c->bytes_in += (unsigned long long)n;
		got = 1;
		if (b != &c->in)
			break; /* inflate it before reading more */
	}
	return got;
}

/* Inflate zin into in as far as in has room: 1 progress, 0 none, -1
 * failed (corrupt or ended stream: c failed). */
/* Point zs at have bytes of input and room bytes of output (our buffers are
 * far below 4 GiB; an empty buffer may have no storage: zlib takes NULL). */
static void z_window(z_stream *zs, const uint8_t *in, size_t have, uint8_t *out, size_t room)
{
	zs->next_in = have > 0 ? (Bytef *)in : Z_NULL;
	zs->avail_in = (uInt)have;
	zs->next_out = out;
	zs->avail_out = (uInt)room;
}

static int z_inflate(struct conn *c)
{
	struct conn_z *z = c->z;
	int got = 0;

	while (!buf_is_empty(&z->zin) || z->inf_more) {
		size_t room, have = buf_len(&z->zin);
		uint8_t *p = buf_tail(&c->in, &room);
		int r;

		if (p == NULL) {
			conn_fail(c, "out of memory");
			return -1;
		}
		if (room == 0)
			break;
		z_window(&z->inf, have > 0 ? buf_head(&z->zin) : NULL, have, p, room);
		r = inflate(&z->inf, Z_SYNC_FLUSH);
		size_t used = have - z->inf.avail_in, made = room - z->inf.avail_out;
		if (r == Z_STREAM_END) {
			conn_fail(c, "COMPRESS: the client ended its deflate stream");
			return -1;
		}
		if (r != Z_OK && r != Z_BUF_ERROR) {
			conn_fail(c, r == Z_MEM_ERROR ? "out of memory"
			                              : "COMPRESS: corrupt data from the client");
			return -1;
		}
		buf_consume(&z->zin, used);
		buf_produced(&c->in, made);
		z->inf_more = z->inf.avail_out == 0;
		if (used == 0 && made == 0)
			break;
		got = 1;
	}
	if (buf_is_empty(&z->zin))
		buf_release(&z->zin);
	return got;
}

int conn_read(struct conn *c)
{
	bool progress = false;

	if (c->error)
		return -1;
	if (c->ssl != NULL && c->handshaking) {
		int r = conn_handshake(c);
		if (r == -1 || c->handshaking)
			return r;
		progress = true;
	}
	if (c->z == NULL) {
		int r = c->want_input ? wire_fill(c, &c->in) : 0;
		if (r == -1)
			return -1;
		return progress || r == 1 ? 0 : -2;
	}
	/* Compressed: inflate what is there, read more while in has room. */
	while (c->want_input) {
		int r = z_inflate(c);
		if (r == -1)
			return -1;
		progress |= r == 1;
		if (buf_room(&c->in) == 0 || !buf_is_empty(&c->z->zin) || c->eof)
			break;
		r = wire_fill(c, &c->z->zin);
		if (r == -1)
			return -1;
		if (r == 0)
			break;
		progress = true;
	}
	/* buf_tail allocated it for a read that found nothing */
	if (buf_is_empty(&c->z->zin))
		buf_release(&c->z->zin);
	return progress ? 0 : -2;
}

static voidpf z_arena_alloc(voidpf opaque, uInt items, uInt size)
{
	struct conn_z *z = opaque;
	size_t n = ((size_t)items * size + 15) & ~(size_t)15;

	if (z->arena == NULL) {
		void *m = mmap(NULL, Z_ARENA_SIZE, PROT_READ | PROT_WRITE,
		               MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (m == MAP_FAILED)
			return Z_NULL;
		z->arena = m;
		z->arena_used = 0;
	}
	if (n <= Z_ARENA_SIZE - z->arena_used) {
		void *r = z->arena + z->arena_used;
		z->arena_used += n;
		return r;
	}
	return malloc(n);
}

static void z_arena_free(voidpf opaque, voidpf p)
{
	struct conn_z *z = opaque;
	uint8_t *b = p;

	if (z->arena == NULL || b < z->arena || b >= z->arena + Z_ARENA_SIZE)
		free(p);
}

/* deflateEnd, and the deflater's mapping goes. */
static void z_deflate_end(struct conn_z *z)
{
	deflateEnd(&z->def);
	z->def_on = false;
	if (z->arena != NULL)
		munmap(z->arena, Z_ARENA_SIZE);
	z->arena = NULL;
	z->arena_used = 0;
}

/* Deflate out into zout as far as zout has room, ending with a
 * Z_SYNC_FLUSH: 1 progress, 0 none, -1 failed. */
static int z_deflate(struct conn *c)
{
	struct conn_z *z = c->z;
	int got = 0;

	while (!buf_is_empty(&c->out) || z->flush_owed) {
		size_t room, have = buf_len(&c->out);
		uint8_t *p;
		int r;

		if (!z->def_on) {
			memset(&z->def, 0, sizeof(z->def));
			z->def.zalloc = z_arena_alloc;
			z->def.zfree = z_arena_free;
			z->def.opaque = z;
			z->def_on = true;
			if (deflateInit2(&z->def, Z_OUT_LEVEL, Z_DEFLATED, -Z_OUT_WBITS,
			                 Z_OUT_MEMLEVEL, Z_DEFAULT_STRATEGY) != Z_OK) {
				z_deflate_end(z);
				conn_fail(c, "out of memory");
				return -1;
			}
		}
		if ((p = buf_tail(&z->zout, &room)) == NULL) {
			conn_fail(c, "out of memory");
			return -1;
		}
		if (room == 0)
			break;
		z_window(&z->def, have > 0 ? buf_head(&c->out) : NULL, have, p, room);
		r = deflate(&z->def, Z_SYNC_FLUSH);
		if (r != Z_OK && r != Z_BUF_ERROR) {
			conn_fail(c, "COMPRESS: deflate failed");
			return -1;
		}
		size_t used = have - z->def.avail_in, made = room - z->def.avail_out;
		buf_consume(&c->out, used);
		buf_produced(&z->zout, made);
		/* No room left: the flush may not be complete yet. */
		z->flush_owed = z->def.avail_out == 0;
		if (used == 0 && made == 0)
			break;
		got = 1;
	}
	return got;
}

/* One write of p[0..n) to the socket, through OpenSSL when TLS is on: the
 * bytes taken (counted in bytes_out), -2 when the socket is full, -1 (c
 * failed). */
static ssize_t wire_write(struct conn *c, const uint8_t *p, size_t n)
{
	ssize_t w;

	if (c->ssl == NULL) {
		w = send_some(c, p, n);
	} else {
		int e;

		ERR_clear_error();
		w = SSL_write(c->ssl, p, n > INT32_MAX ? INT32_MAX : (int)n);
		if (w <= 0) {
			e = SSL_get_error(c->ssl, (int)w);
			if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
				c->wr_wants_read = e == SSL_ERROR_WANT_READ;
				return -2;
			}
			conn_fail(c, e == SSL_ERROR_SYSCALL ? "write error" : ssl_reason());
			return -1;
		}
		c->wr_wants_read = false;
	}
	if (w > 0)
		c->bytes_out += (unsigned long long)w;
	return w;
}

/* Write b (out, or zout) to the socket: 1 progress, 0 none now, -1. */
static int wire_flush(struct conn *c, struct buf *b)
{
	bool progress = false;

	if (c->t13 != NULL) {
		int r = t13_flush(c, b);
		return r == -1 ? -1 : r == 0;
	}
	while (!buf_is_empty(b)) {
		ssize_t n = wire_write(c, buf_head(b), buf_len(b));

		if (n == -1)
			return -1;
		if (n == -2)
			break;
		buf_consume(b, (size_t)n);
		progress = true;
	}
	return progress;
}

bool conn_can_write_direct(const struct conn *c)
{
	return c->fd >= 0 && !c->error && !c->handshaking && !c->connecting && c->z == NULL &&
	       c->t13 == NULL && buf_is_empty(&c->out);
}

ssize_t conn_write_direct(struct conn *c, const uint8_t *p, size_t n)
{
	ssize_t w = wire_write(c, p, n);

	c->direct_owed = w == -2;
	return w == -2 ? 0 : w;
}

/* The deflater goes while idle (conn_compress_idle) and all is sent. */
static void z_maybe_shed(struct conn *c)
{
	struct conn_z *z = c->z;

	if (z->idle && z->def_on && conn_out_idle(c))
		z_deflate_end(z);
}

int conn_flush(struct conn *c)
{
	bool progress = false;

	if (c->error)
		return -1;
	if (c->ssl != NULL && c->handshaking) {
		int r = conn_handshake(c);
		if (r == -1 || c->handshaking)
			return r;
		progress = true;
	}
	if (c->connecting)
		return progress ? 0 : -2;
	if (c->z == NULL) {
		int r = wire_flush(c, &c->out);
		if (r == -1)
			return -1;
		return progress || r == 1 ? 0 : -2;
	}
	for (;;) {
		int d = z_deflate(c);
		if (d == -1)
			return -1;
		int w = wire_flush(c, &c->z->zout);
		if (w == -1)
			return -1;
		progress |= d == 1 || w == 1;
		if (w == 0 || (buf_is_empty(&c->out) && !c->z->flush_owed))
			break;
	}
	if (buf_is_empty(&c->z->zout))
		buf_release(&c->z->zout);
	z_maybe_shed(c);
	return progress ? 0 : -2;
}

int conn_compress_start(struct conn *c)
{
	struct conn_z *z;
	struct buf t;

	if (c->z != NULL || (z = zalloc(sizeof(*z))) == NULL)
		return -1;
	memset(&z->inf, 0, sizeof(z->inf));
	if (inflateInit2(&z->inf, -MAX_WBITS) != Z_OK) {
		zfree(z, sizeof(*z));
		return -1;
	}
	buf_init(&z->zin, c->in.cap);
	buf_init(&z->zout, c->out.cap);
	/* What is buffered now is already on the wire's terms: the client's
	 * pipelined bytes are compressed, our OK is not. */
	t = c->in, c->in = z->zin, z->zin = t;
	t = c->out, c->out = z->zout, z->zout = t;
	c->z = z;
	return 0;
}

bool conn_compress_idle(struct conn *c, bool idle)
{
	if (c->z == NULL)
		return false;
	c->z->idle = idle;
	if (idle)
		z_maybe_shed(c);
	return !c->z->def_on;
}

static void z_free(struct conn *c)
{
	struct conn_z *z = c->z;

	if (z == NULL)
		return;
	inflateEnd(&z->inf);
	if (z->def_on)
		z_deflate_end(z);
	buf_free(&z->zin);
	buf_free(&z->zout);
	zfree(z, sizeof(*z));
	c->z = NULL;
}

int conn_connect_check(struct conn *c)
{
	int err = 0;
	socklen_t len = sizeof(err);

	if (!c->connecting)
		return 0;
	if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &len) < 0)
		err = errno;
	if (err == EINPROGRESS || err == EALREADY)
		return -2;
	if (err != 0) {
		conn_fail(c, err == ECONNREFUSED ? "connection refused" : "connect failed");
		return -1;
	}
	/* SO_ERROR is 0 both when connected and while still connecting. */
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	if (getpeername(c->fd, (struct sockaddr *)&ss, &sl) < 0) {
		if (errno == ENOTCONN)
			return -2;
		conn_fail(c, "connect failed");
		return -1;
	}
	c->connecting = false;
	return 0;
}

static void watcher_set(struct conn *c, ev_io *w, bool on)
{
	if (on && !ev_is_active(w))
		ev_io_start(c->loop, w);
	else if (!on && ev_is_active(w))
		ev_io_stop(c->loop, w);
}

void conn_update(struct conn *c)
{
	bool rd, wr;

	if (c->fd < 0 || c->error) {
		conn_stop(c);
		return;
	}
	if (c->connecting) {
		watcher_set(c, &c->rio, false);
		watcher_set(c, &c->wio, true);
		return;
	}
	if (c->handshaking) {
		rd = c->hs_wants_read;
		wr = c->hs_wants_write;
	} else {
		bool input = c->want_input && !c->eof && buf_room(&c->in) > 0;
		rd = input || c->wr_wants_read;
		wr = !conn_out_idle(c) || c->rd_wants_write;
		if (input && ((c->ssl != NULL && SSL_has_pending(c->ssl)) ||
		              (c->t13 != NULL && t13_has_pending(c->t13)) ||
		              (c->z != NULL && (!buf_is_empty(&c->z->zin) || c->z->inf_more))))
			ev_feed_event(c->loop, &c->rio, EV_READ);
	}
	watcher_set(c, &c->rio, rd);
	watcher_set(c, &c->wio, wr);
}

void conn_stop(struct conn *c)
{
	watcher_set(c, &c->rio, false);
	watcher_set(c, &c->wio, false);
}

void conn_release_buffers(struct conn *c)
{
	buf_release(&c->in);
	buf_release(&c->out);
	if (c->z != NULL) {
		buf_release(&c->z->zin);
		buf_release(&c->z->zout);
	}
}

void conn_close(struct conn *c)
{
	if (c->loop != NULL) {
		conn_stop(c);
		ev_clear_pending(c->loop, &c->rio);
		ev_clear_pending(c->loop, &c->wio);
	}
	if (c->ssl != NULL) {
		if (!c->handshaking && !c->error) {
			ERR_clear_error();
			(void)SSL_shutdown(c->ssl); /* best effort close_notify */
		}
		SSL_free(c->ssl);
		c->ssl = NULL;
		ERR_clear_error();
	}
	t13_free(c);
	z_free(c);
	if (c->fd >= 0) {
		close(c->fd);
		c->fd = -1;
	}
	buf_free(&c->in);
	buf_free(&c->out);
}

int conn_socket_connect(const struct sockaddr *sa, socklen_t len)
{
	int fd, one = 1;

	fd = socket(sa->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -1;
	if (sa->sa_family != AF_UNIX)
		(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, sa, len) < 0 && errno != EINPROGRESS) {
		int e = errno;
		close(fd);
		errno = e;
		return -1;
	}
	return fd;
}
