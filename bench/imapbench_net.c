/*
 * imapbench_net.c: one client connection, non-blocking, on the run's loop.
 *
 *   CLOSED -> CONNECTING -> [HANDSHAKE] -> GREETING -> [STARTTLS -> HANDSHAKE
 *   -> (greeted)] -> OPEN ... -> CLOSED
 *
 * Reading: bytes go into c->rbuf (IB_RBUF_BULK, so a bulk read takes 64 KB+
 * at once on a plain socket; OpenSSL hands out one 16 KB record per
 * SSL_read). The buffer is cut into lines at LF; a line that ends in "{n}"
 * announces a literal of n bytes: those are counted (c->lit_got) and
 * dropped where they lie, never searched for line ends, and the text after
 * the literal is the rest of the same response (c->midline), not a new
 * response. Only the first piece of each response reaches the mode.
 *
 * Writing: c->wbuf (command lines) then c->big (a large literal, not
 * copied). The watcher wants EV_WRITE only while bytes are pending or
 * OpenSSL asked for it.
 *
 * Handlers may close the connection (or open a new one for the loop's next
 * operation); c->gen changes on every close, so the reader stops at once.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "imapbench.h"

static void io_cb(struct ev_loop *loop, ev_io *w, int revents);

static void update_io(struct ib_conn *c)
{
	struct bench *b = c->b;
	int ev = 0;
	if (c->net == IB_NET_CONNECTING)
		ev = EV_WRITE;
	else if (c->net != IB_NET_CLOSED) {
		ev = EV_READ;
		if (c->tls_want_write || c->woff < c->wlen || c->big_off < c->big_len)
			ev |= EV_WRITE;
	}
	if (ev == 0) {
		ev_io_stop(b->loop, &c->io);
		return;
	}
	if (ev_is_active(&c->io) && (c->io.events & (EV_READ | EV_WRITE)) == ev)
		return;
	ev_io_stop(b->loop, &c->io);
	ev_io_set(&c->io, c->fd, ev);
	ev_io_start(b->loop, &c->io);
}

void conn_close(struct ib_conn *c)
{
	struct bench *b = c->b;
	if (c->net == IB_NET_CLOSED)
		return;
	ev_io_stop(b->loop, &c->io);
	if (c->ssl != NULL) {
		/* One close_notify, not waited for. It also keeps the session
		 * resumable: OpenSSL drops an SSL's session from use when it is
		 * freed without a shutdown sent. */
		if (c->net == IB_NET_OPEN || c->net == IB_NET_STARTTLS || c->net == IB_NET_GREETING)
			(void)SSL_shutdown(c->ssl);
		SSL_free(c->ssl);
		c->ssl = NULL;
	}
	ERR_clear_error();
	close(c->fd);
	c->fd = -1;
	c->net = IB_NET_CLOSED;
	c->rlen = c->wlen = c->woff = 0;
	c->big = NULL;
	c->big_len = c->big_off = 0;
	c->lit_left = 0;
	c->midline = 0;
	c->tls_want_write = 0;
	c->gen++;
}

void conn_fail(struct ib_conn *c, const char *fmt, ...)
{
	char msg[IB_ERR_SIZE];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	bench_error(c->b, "%s (loop %u, user %s)", msg, c->idx, c->user);
	conn_close(c);
	c->in_op = 0;
	if (c->b->mode->reconnects && c->b->phase != IB_PH_END) {
		conn_kick(c); /* the loop's next operation, from the event loop */
		return;
	}
	bench_loop_set(c, IB_LOOP_DEAD);
}

static void kick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	(void)loop;
	(void)revents;
	struct ib_conn *c = w->data;
	c->b->mode->start(c);
}

void conn_kick(struct ib_conn *c)
{
	ev_timer_stop(c->b->loop, &c->kick);
	ev_timer_set(&c->kick, 0., 0.);
	ev_timer_start(c->b->loop, &c->kick);
}

void conn_init(struct ib_conn *c, struct bench *b, unsigned idx)
{
	memset(c, 0, sizeof(*c));
	c->b = b;
	c->idx = idx;
	c->fd = -1;
	c->rcap = b->mode_id == IB_BULK ? IB_RBUF_BULK : IB_RBUF_SMALL;
	c->rbuf = malloc(c->rcap);
	ev_init(&c->io, io_cb);
	c->io.data = c;
	ev_timer_init(&c->kick, kick_cb, 0., 0.);
	c->kick.data = c;
}

void conn_destroy(struct ib_conn *c)
{
	conn_close(c);
	ev_timer_stop(c->b->loop, &c->kick);
	if (c->sess != NULL)
		SSL_SESSION_free(c->sess);
	c->sess = NULL;
	free(c->rbuf);
	c->rbuf = NULL;
}

/* --resume: OpenSSL hands us every session (a TLS 1.3 ticket, or the 1.2
 * session) as it arrives; the loop keeps the newest one. */
static int new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
	struct ib_conn *c = SSL_get_app_data(ssl);
	if (c == NULL || !c->b->resume)
		return 0;
	if (c->sess != NULL)
		SSL_SESSION_free(c->sess);
	c->sess = sess;
	return 1; /* we keep the reference */
}

int net_setup(struct bench *b)
{
	if (b->tls == IB_TLS_NONE)
		return 0;
	b->ctx = SSL_CTX_new(TLS_client_method());
	if (b->ctx == NULL)
		return -1;
	SSL_CTX_set_min_proto_version(b->ctx, TLS1_2_VERSION);
	SSL_CTX_set_mode(b->ctx,
	                 SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	if (b->mode_id == IB_BULK) {
		/* Bulk reads: OpenSSL reads up to 64 KB from the socket at once
		 * and hands out its records from that: fewer read(2)s per MB. */
		SSL_CTX_set_read_ahead(b->ctx, 1);
		SSL_CTX_set_default_read_buffer_len(b->ctx, 64 * 1024);
	}
	if (b->mode_id == IB_IDLE)
		/* Thousands of quiet sessions: OpenSSL's buffers only while in use. */
		SSL_CTX_set_mode(b->ctx, SSL_MODE_RELEASE_BUFFERS);
	if (b->ca != NULL) {
		if (SSL_CTX_load_verify_locations(b->ctx, b->ca, NULL) != 1) {
			fprintf(stderr, "imapbench: cannot load --ca %s\n", b->ca);
			return -1;
		}
		SSL_CTX_set_verify(b->ctx, SSL_VERIFY_PEER, NULL);
	} else {
		SSL_CTX_set_verify(b->ctx, SSL_VERIFY_NONE, NULL);
	}
	if (b->resume) {
		/* Client-side caching only so that new_session_cb is called;
		 * OpenSSL's internal cache is not used (we offer the loop's own). */
		SSL_CTX_set_session_cache_mode(b->ctx, SSL_SESS_CACHE_CLIENT |
		                                           SSL_SESS_CACHE_NO_INTERNAL_STORE);
		SSL_CTX_sess_set_new_cb(b->ctx, new_session_cb);
	} else {
		SSL_CTX_set_session_cache_mode(b->ctx, SSL_SESS_CACHE_OFF);
		SSL_CTX_set_options(b->ctx, SSL_OP_NO_TICKET);
	}
	return 0;
}

static const char *ssl_err_text(void)
{
	static char buf[160];
	unsigned long e = ERR_get_error();
	if (e == 0)
		return errno ? strerror(errno) : "connection closed";
	ERR_error_string_n(e, buf, sizeof(buf));
	ERR_clear_error();
	return buf;
}

void conn_connect(struct ib_conn *c)
{
	struct bench *b = c->b;
	int fd = socket(b->addr.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		conn_fail(c, "socket: %s", strerror(errno));
		return;
	}
	int one = 1;
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	c->fd = fd;
	c->net = IB_NET_CONNECTING;
	c->rlen = c->wlen = c->woff = 0;
	c->tagno = 0;
	c->bye[0] = '\0';
	c->literal_plus = 0;
	if (connect(fd, (struct sockaddr *)&b->addr, b->addrlen) < 0 && errno != EINPROGRESS) {
		conn_fail(c, "connect: %s", strerror(errno));
		return;
	}
	update_io(c);
}

static int start_tls(struct ib_conn *c)
{
	c->ssl = SSL_new(c->b->ctx);
	if (c->ssl == NULL || SSL_set_fd(c->ssl, c->fd) != 1) {
		conn_fail(c, "SSL_new: %s", ssl_err_text());
		return -1;
	}
	SSL_set_app_data(c->ssl, c);
	/* --ca: the certificate must also name the address we connect to. */
	if (c->b->ca != NULL &&
	    X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(c->ssl), c->b->host) != 1) {
		conn_fail(c, "--ca: cannot check the certificate for %s", c->b->host);
		return -1;
	}
	if (c->b->resume && c->sess != NULL)
		(void)SSL_set_session(c->ssl, c->sess);
	c->net = IB_NET_HANDSHAKE;
	return 0;
}

/* 0 done, -2 again, -1 failed (c closed). */
static int do_handshake(struct ib_conn *c)
{
	ERR_clear_error();
	int r = SSL_connect(c->ssl);
	if (r == 1) {
		c->tls_want_write = 0;
		if (c->b->phase == IB_PH_MEASURE && c->in_op && SSL_session_reused(c->ssl))
			c->b->resumed++;
		return 0;
	}
	int e = SSL_get_error(c->ssl, r);
	if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE) {
		c->tls_want_write = e == SSL_ERROR_WANT_WRITE;
		update_io(c);
		return -2;
	}
	conn_fail(c, "TLS handshake: %s", ssl_err_text());
	return -1;
}

static void queue_fmt(struct ib_conn *c, const char *prefix, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));
static void queue_fmt(struct ib_conn *c, const char *prefix, const char *fmt, va_list ap)
{
	if (c->woff == c->wlen)
		c->woff = c->wlen = 0;
	size_t room = sizeof(c->wbuf) - c->wlen;
	int k = snprintf(c->wbuf + c->wlen, room, "%s", prefix);
	int m =
	    k >= 0 && (size_t)k < room ? vsnprintf(c->wbuf + c->wlen + k, room - k, fmt, ap) : -1;
	if (m < 0 || (size_t)(k + m + 2) >= room) {
		conn_fail(c, "command too long");
		return;
	}
	memcpy(c->wbuf + c->wlen + k + m, "\r\n", 2);
	c->wlen += (size_t)(k + m + 2);
}

static void flush(struct ib_conn *c);

void conn_cmd(struct ib_conn *c, const char *fmt, ...)
{
	char prefix[24];
	c->tagno++;
	snprintf(c->tag, sizeof(c->tag), "b%u", c->tagno);
	snprintf(prefix, sizeof(prefix), "%s ", c->tag);
	c->lit_got = 0;
	c->lit_count = 0;
	c->lit_size = 0;
	va_list ap;
	va_start(ap, fmt);
	queue_fmt(c, prefix, fmt, ap);
	va_end(ap);
	c->t_cmd = ib_now();
	if (c->net != IB_NET_CLOSED)
		flush(c);
}

void conn_raw(struct ib_conn *c, const char *p, size_t len)
{
	if (c->woff == c->wlen)
		c->woff = c->wlen = 0;
	if (len > sizeof(c->wbuf) - c->wlen) {
		conn_fail(c, "write queue full");
		return;
	}
	memcpy(c->wbuf + c->wlen, p, len);
	c->wlen += len;
	flush(c);
}

void conn_big(struct ib_conn *c, const char *p, size_t len)
{
	c->big = p;
	c->big_len = len;
	c->big_off = 0;
	flush(c);
}

/* Write what is queued, as far as the socket takes it. */
static void flush(struct ib_conn *c)
{
	if (c->net == IB_NET_CLOSED || c->net == IB_NET_CONNECTING || c->net == IB_NET_HANDSHAKE)
		return;
	for (;;) {
		const char *p;
		size_t len;
		int big = 0;
		if (c->woff < c->wlen) {
			p = c->wbuf + c->woff;
			len = c->wlen - c->woff;
		} else if (c->big_off < c->big_len) {
			/* The queued line goes first: a literal follows its "{n}". */
			p = c->big + c->big_off;
			len = c->big_len - c->big_off;
			if (len > (1u << 20))
				len = 1u << 20;
			big = 1;
		} else {
			break;
		}
		ssize_t w;
		if (c->ssl != NULL) {
			ERR_clear_error();
			int r = SSL_write(c->ssl, p, (int)len);
			if (r <= 0) {
				int e = SSL_get_error(c->ssl, r);
				if (e == SSL_ERROR_WANT_WRITE || e == SSL_ERROR_WANT_READ) {
					c->tls_want_write = e == SSL_ERROR_WANT_WRITE;
					break;
				}
				conn_fail(c, "write: %s", ssl_err_text());
				return;
			}
			w = r;
			c->tls_want_write = 0;
		} else {
			w = write(c->fd, p, len);
			if (w < 0) {
				if (errno == EAGAIN || errno == EINTR)
					break;
				conn_fail(c, "write: %s", strerror(errno));
				return;
			}
		}
		if (big)
			c->big_off += (size_t)w;
		else
			c->woff += (size_t)w;
		if (c->big_off == c->big_len && c->big != NULL) {
			c->big = NULL;
			c->big_len = c->big_off = 0;
		}
	}
	update_io(c);
}

/* "{123}" (or "~{123}", binary) at the end of a line piece: its size. */
static int literal_at_end(const char *s, size_t len, uint64_t *n_r)
{
	if (len < 3 || s[len - 1] != '}')
		return 0;
	size_t i = len - 1;
	uint64_t n = 0, mul = 1;
	while (i > 0 && s[i - 1] >= '0' && s[i - 1] <= '9') {
		i--;
		if (mul > 1000000000000ull)
			return 0;
		n += (uint64_t)(s[i] - '0') * mul;
		mul *= 10;
	}
	if (i == 0 || i == len - 1 || s[i - 1] != '{')
		return 0;
	*n_r = n;
	return 1;
}

static enum ib_status status_of(const char *s, size_t len)
{
	if (len >= 3 && memcmp(s, "OK ", 3) == 0)
		return IB_OK;
	if (len >= 2 && memcmp(s, "OK", 2) == 0 && len == 2)
		return IB_OK;
	if (len >= 2 && memcmp(s, "NO", 2) == 0)
		return IB_NO;
	if (len >= 3 && memcmp(s, "BAD", 3) == 0)
		return IB_BAD;
	return IB_OTHER;
}

static int contains(const char *s, size_t len, const char *word)
{
	size_t k = strlen(word);
	for (size_t i = 0; i + k <= len; i++)
		if (strncasecmp(s + i, word, k) == 0)
			return 1;
	return 0;
}

/* A capability list (greeting, "* CAPABILITY", a tagged OK's
 * "[CAPABILITY ...]"): the newest one says whether LITERAL+ is offered
 * (after LOGIN the list may differ from the greeting's). */
static void note_caps(struct ib_conn *c, const char *s, size_t len)
{
	if (contains(s, len, "CAPABILITY "))
		c->literal_plus = contains(s, len, " LITERAL+");
}

/* One complete line piece (without CRLF), the first of its response. */
static void on_line(struct ib_conn *c, const char *s, size_t len)
{
	const struct ib_mode *m = c->b->mode;
	if (c->net == IB_NET_GREETING) {
		if ((len >= 4 && memcmp(s, "* OK", 4) == 0) ||
		    (len >= 9 && memcmp(s, "* PREAUTH", 9) == 0)) {
			note_caps(c, s, len);
			if (c->b->tls == IB_TLS_STARTTLS && c->ssl == NULL) {
				c->net = IB_NET_STARTTLS;
				conn_cmd(c, "STARTTLS");
				return;
			}
			c->net = IB_NET_OPEN;
			m->ready(c);
			return;
		}
		conn_fail(c, "greeting: %.*s", (int)(len > 120 ? 120 : len), s);
		return;
	}
	if (len >= 1 && s[0] == '+') {
		if (c->net == IB_NET_OPEN && m->cont != NULL) {
			m->cont(c, s, len);
			return;
		}
		conn_fail(c, "unexpected continuation: %.*s", (int)(len > 120 ? 120 : len), s);
		return;
	}
	if (len >= 2 && s[0] == '*' && s[1] == ' ') {
		note_caps(c, s, len);
		if (len >= 5 && memcmp(s, "* BYE", 5) == 0) {
			/* The tagged reply (LOGOUT) or the close tells; a close
			 * reports this text. */
			size_t k = len < sizeof(c->bye) - 1 ? len : sizeof(c->bye) - 1;
			memcpy(c->bye, s, k);
			c->bye[k] = '\0';
			return;
		}
		if (c->net == IB_NET_OPEN && m->untagged != NULL)
			m->untagged(c, s, len);
		return;
	}
	size_t tl = strlen(c->tag);
	if (len > tl && memcmp(s, c->tag, tl) == 0 && s[tl] == ' ') {
		enum ib_status st = status_of(s + tl + 1, len - tl - 1);
		if (c->net == IB_NET_STARTTLS) {
			if (st != IB_OK) {
				conn_fail(c, "STARTTLS: %.*s", (int)(len > 120 ? 120 : len), s);
				return;
			}
			if (start_tls(c) < 0)
				return;
			if (do_handshake(c) == 0) {
				c->net = IB_NET_OPEN;
				m->ready(c);
			}
			return;
		}
		note_caps(c, s, len);
		m->tagged(c, st, s, len);
		return;
	}
	conn_fail(c, "unexpected line: %.*s", (int)(len > 120 ? 120 : len), s);
}

/* Cut c->rbuf into lines and literals. Returns -1 when c closed meanwhile. */
static int process(struct ib_conn *c)
{
	size_t pos = 0;
	unsigned gen = c->gen;
	while (pos < c->rlen) {
		if (c->lit_left > 0) {
			size_t k = c->rlen - pos;
			if (k > c->lit_left)
				k = (size_t)c->lit_left;
			c->lit_left -= k;
			c->lit_got += k;
			pos += k;
			continue;
		}
		char *nl = memchr(c->rbuf + pos, '\n', c->rlen - pos);
		if (nl == NULL)
			break;
		const char *s = c->rbuf + pos;
		size_t len = (size_t)(nl - s);
		pos += len + 1;
		if (len > 0 && s[len - 1] == '\r')
			len--;
		uint64_t lit;
		int has_lit = literal_at_end(s, len, &lit);
		int first = !c->midline;
		if (has_lit) {
			c->lit_left = lit;
			c->lit_size = lit;
			c->lit_count++;
			c->midline = 1;
		} else {
			c->midline = 0;
		}
		if (first) {
			on_line(c, s, len);
			if (c->gen != gen)
				return -1;
			if (c->net == IB_NET_HANDSHAKE) {
				/* STARTTLS: whatever came after its OK in plain text
				 * is not the server's (RFC 3501 6.2.1): dropped. */
				c->rlen = 0;
				return -1;
			}
		}
	}
	if (pos > 0) {
		memmove(c->rbuf, c->rbuf + pos, c->rlen - pos);
		c->rlen -= pos;
	}
	if (c->rlen == c->rcap) {
		conn_fail(c, "response line longer than %zu bytes", c->rcap);
		return -1;
	}
	return 0;
}

/* Read until the socket (and OpenSSL) has nothing more, or 64 reads; then
 * come back from the loop so that other connections get their turn. */
static void do_read(struct ib_conn *c)
{
	unsigned gen = c->gen;
	for (int i = 0; i < 64; i++) {
		size_t room = c->rcap - c->rlen;
		ssize_t n;
		if (c->ssl != NULL) {
			ERR_clear_error();
			int r = SSL_read(c->ssl, c->rbuf + c->rlen, (int)room);
			if (r <= 0) {
				int e = SSL_get_error(c->ssl, r);
				if (e == SSL_ERROR_WANT_READ)
					return;
				if (e == SSL_ERROR_WANT_WRITE) {
					c->tls_want_write = 1;
					update_io(c);
					return;
				}
				if (e == SSL_ERROR_ZERO_RETURN) {
					conn_fail(c, "server closed the connection%s%s",
					          c->bye[0] ? " after " : "", c->bye);
					return;
				}
				conn_fail(c, "read: %s", ssl_err_text());
				return;
			}
			n = r;
		} else {
			n = read(c->fd, c->rbuf + c->rlen, room);
			if (n < 0) {
				if (errno == EAGAIN || errno == EINTR)
					return;
				conn_fail(c, "read: %s", strerror(errno));
				return;
			}
			if (n == 0) {
				conn_fail(c, "server closed the connection%s%s",
				          c->bye[0] ? " after " : "", c->bye);
				return;
			}
		}
		c->rlen += (size_t)n;
		if (process(c) < 0 || c->gen != gen)
			return;
	}
	ev_feed_event(c->b->loop, &c->io, EV_READ);
}

static void io_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	(void)loop;
	struct ib_conn *c = w->data;
	unsigned gen = c->gen;
	if (c->net == IB_NET_CONNECTING) {
		int err = 0;
		socklen_t el = sizeof(err);
		if (getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &el) < 0)
			err = errno;
		if (err != 0) {
			conn_fail(c, "connect: %s", strerror(err));
			return;
		}
		c->net = IB_NET_GREETING;
		if (c->b->tls == IB_TLS_IMPLICIT) {
			if (start_tls(c) < 0)
				return;
		} else {
			update_io(c);
			return;
		}
	}
	if (c->net == IB_NET_HANDSHAKE) {
		int r = do_handshake(c);
		if (r != 0)
			return;
		/* STARTTLS: greeted before; implicit: the greeting comes now. */
		if (c->b->tls == IB_TLS_STARTTLS) {
			c->net = IB_NET_OPEN;
			update_io(c);
			c->b->mode->ready(c);
			return;
		}
		c->net = IB_NET_GREETING;
		update_io(c);
	}
	if (revents & EV_WRITE)
		flush(c);
	if (c->gen != gen || c->net == IB_NET_CLOSED)
		return;
	do_read(c);
	if (c->gen == gen && c->net != IB_NET_CLOSED)
		update_io(c);
}
