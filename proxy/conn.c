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
 *   - an error is sticky: every later call returns -1.
 */
#include "conn.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

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
	while (c->want_input && !c->eof) {
		size_t room;
		uint8_t *p = buf_tail(&c->in, &room);
		ssize_t n;

		if (p == NULL) {
			conn_fail(c, "out of memory");
			return -1;
		}
		if (room == 0)
			break;
		if (c->ssl != NULL) {
			n = conn_read_tls(c, p, room);
			if (n == -1)
				return -1;
			if (n == -2)
				break;
		} else {
			n = read(c->fd, p, room);
			if (n < 0) {
				if (errno == EINTR)
					continue;
				if (errno == EAGAIN || errno == EWOULDBLOCK)
					break;
				if (errno == ECONNRESET) {
					n = 0;
				} else {
					conn_fail(c, "read error");
					return -1;
				}
			}
		}
		if (n == 0) {
			c->eof = true;
			progress = true;
			break;
		}
		buf_produced(&c->in, (size_t)n);
		c->bytes_in += (unsigned long long)n;
		progress = true;
	}
	return progress ? 0 : -2;
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
	while (!buf_is_empty(&c->out)) {
		size_t len = buf_len(&c->out);
		ssize_t n;

		if (c->ssl != NULL) {
			int e;

			ERR_clear_error();
			n = SSL_write(c->ssl, buf_head(&c->out),
			              len > INT32_MAX ? INT32_MAX : (int)len);
			if (n <= 0) {
				e = SSL_get_error(c->ssl, (int)n);
				if (e == SSL_ERROR_WANT_WRITE) {
					c->wr_wants_read = false;
					break;
				}
				if (e == SSL_ERROR_WANT_READ) {
					c->wr_wants_read = true;
					break;
				}
				conn_fail(c, e == SSL_ERROR_SYSCALL ? "write error" : ssl_reason());
				return -1;
			}
			c->wr_wants_read = false;
		} else {
			n = send(c->fd, buf_head(&c->out), len, MSG_NOSIGNAL);
			if (n < 0) {
				if (errno == EINTR)
					continue;
				if (errno == EAGAIN || errno == EWOULDBLOCK)
					break;
				conn_fail(c, "write error");
				return -1;
			}
		}
		buf_consume(&c->out, (size_t)n);
		c->bytes_out += (unsigned long long)n;
		progress = true;
	}
	return progress ? 0 : -2;
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
		wr = !buf_is_empty(&c->out) || c->rd_wants_write;
		if (input && c->ssl != NULL && SSL_has_pending(c->ssl))
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
