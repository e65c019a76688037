/*
 * conn — one non-blocking socket, plain or TLS, with an input and an output
 * buffer, on a libev loop.
 *
 *   socket --read--> [in]  --(owner parses)-->  other conn's [out] --write--> socket
 *
 * The owner (a client session or a backend connection) gets one callback
 * whenever the socket is ready in a direction the conn asked for, calls
 * conn_read()/conn_flush() and its own pump, and then conn_update() to
 * re-arm exactly the watchers needed now:
 *   - read while the owner wants input and `in` has room, or while OpenSSL
 *     needs to read to finish a write or a handshake;
 *   - write while `out` holds bytes, or while OpenSSL needs to write to
 *     finish a read or a handshake.
 * What OpenSSL wants is tracked apart from what the owner wants.
 */
#ifndef IMAPMUX_CONN_H
#define IMAPMUX_CONN_H

#include <ev.h>
#include <openssl/ssl.h>
#include <stdbool.h>
#include <sys/socket.h>

#include "buf.h"

struct conn;
struct conn_t13;
struct conn_z;
typedef void conn_cb(struct conn *c, void *owner);

struct conn {
	int fd;
	SSL *ssl;             /* NULL while plaintext, and after conn_shed_tls */
	struct conn_t13 *t13; /* TLS 1.3 carried on without OpenSSL (conn_shed_tls) */
	struct conn_z *z;     /* COMPRESS=DEFLATE (RFC 4978) on, NULL while off */
	struct ev_loop *loop;
	ev_io rio;
	ev_io wio;
	conn_cb *cb;
	void *owner;

	struct buf in;
	struct buf out;

	bool want_input;     /* the owner wants to read */
	bool handshaking;    /* TLS handshake in progress */
	bool tls_server;     /* handshake side */
	bool hs_wants_read;  /* the handshake waits for readability */
	bool hs_wants_write; /* the handshake waits for writability */
	bool rd_wants_write; /* SSL_read needs the socket writable */
	bool wr_wants_read;  /* SSL_write needs the socket readable */
	bool eof;            /* the peer closed its side (or TLS close_notify) */
	bool error;          /* I/O or TLS error: the conn is dead */
	bool connecting;     /* non-blocking connect() in progress */
	bool direct_owed;    /* a conn_write_direct blocked: the next write is its bytes */
	const char *errmsg;  /* static text for logs when error */
	unsigned long long bytes_in;
	unsigned long long bytes_out;
};

/* Set up c around a connected (or connecting) non-blocking fd. */
void conn_init(struct conn *c, struct ev_loop *loop, int fd, size_t in_cap, size_t out_cap,
               conn_cb *cb, void *owner);

/* Start TLS on the conn: server side (accept) or client side (connect) with
 * optional SNI/verification name. Returns 0 or -1. The handshake then runs
 * inside conn_read/conn_flush; conn_handshake_done() tells when it is over. */
__attribute__((warn_unused_result)) int conn_start_tls(struct conn *c, SSL_CTX *ctx, bool server,
                                                       const char *sni);

/*
 * Drive I/O. conn_read fills `in` as far as there is room (and the TLS
 * handshake, if one runs); conn_flush writes `out`. Both return 0 when they
 * moved bytes (or finished the handshake), -2 when nothing could be done
 * now (again later), -1 when the conn is dead (c->error set). Eof alone is
 * not an error: conn_read returns 0 once and sets c->eof.
 */
__attribute__((warn_unused_result)) int conn_read(struct conn *c);
__attribute__((warn_unused_result)) int conn_flush(struct conn *c);

/*
 * Bulk data without a copy into `out`: a literal passed on from another
 * conn's `in` goes from there to SSL_write (or send) at once. Possible
 * (conn_can_write_direct) when `out` is empty, nothing else is owed and the
 * conn is OpenSSL's or plaintext (not compressed, not after conn_shed_tls).
 * Returns the bytes taken, 0 when the socket is full, or -1 (c failed).
 * After a 0 the caller must offer the same bytes again first (OpenSSL may
 * hold a record of them; direct_owed keeps the write watcher armed).
 */
bool conn_can_write_direct(const struct conn *c);
__attribute__((warn_unused_result)) ssize_t conn_write_direct(struct conn *c, const uint8_t *p,
                                                              size_t n);

/* Finish a non-blocking connect(): 0 done, -2 still in progress, -1 failed. */
int conn_connect_check(struct conn *c);

static inline bool conn_handshake_done(const struct conn *c)
{
	return !c->handshaking;
}

/*
 * A TLS 1.3 server conn hands its connection over from OpenSSL to imapmux's
 * own record layer (common/tls13.h) and frees the SSL object: about 14 KB
 * less, for a conn that will carry little (a parked session). Possible once
 * the handshake is done and nothing is buffered either way (out empty, no
 * bytes inside the SSL); otherwise, or for TLS 1.2, false and nothing
 * changed (try again later). From then on conn_read/conn_flush seal and
 * open the records themselves, for the rest of the connection.
 */
bool conn_shed_tls(struct conn *c);

/* conn_shed_tls's second half, also for the fuzz target: the conn's
 * records are sealed and opened with t's keys from now on (t is copied;
 * c->ssl is the caller's to free). 0, or -1 (no memory, or already). */
struct tls13;
__attribute__((warn_unused_result)) int conn_use_tls13(struct conn *c, const struct tls13 *t);

/* Everything written is on the wire (out empty, and no sealed record of
 * conn_shed_tls's layer half sent). */
bool conn_out_idle(const struct conn *c);

/*
 * COMPRESS=DEFLATE (RFC 4978) on this conn from now on, both ways, for
 * the rest of the connection: raw deflate (no zlib header).
 *
 *   socket --> [zin] --inflate--> [in]        [out] --deflate--> [zout] --> socket
 *
 * What is in `out` now is sent as it is (the OK that starts compression);
 * what is in `in` now (the client pipelined it after its COMPRESS line) is
 * compressed already and is inflated. Every conn_flush ends with a
 * Z_SYNC_FLUSH: a peer never waits for bytes held in the compressor.
 * 0, or -1 (no memory; nothing changed).
 *
 * Costs per conn (zlib 1.2.13, measured in BENCHMARKS.md): the inflater
 * takes any window the peer uses, so up to 32 KB of window plus its ~7 KB
 * state, kept for the whole connection; the deflater is ours to choose:
 * a 4 KB window (windowBits -12), memLevel 5 (8 KB hash, 8 KB symbol
 * buffer), level 1 (IMAP text compresses nearly as well as at 6), about
 * 38 KB, and only while it is needed (conn_compress_idle).
 */
__attribute__((warn_unused_result)) int conn_compress_start(struct conn *c);

/*
 * While `idle` is set, the deflater is freed whenever everything written
 * has been sent (a parked session: ~38 KB back). After a Z_SYNC_FLUSH the
 * output ends on a byte boundary and a new raw deflater starts with no
 * history, so its blocks continue the peer's inflate stream as they are:
 * the deflater is set up again, empty, for the next bytes to send.
 * The inflater cannot be freed: the peer's next bytes may refer back to
 * anything it sent in the last 32 KB. True when c is compressed and holds
 * no deflater now.
 */
bool conn_compress_idle(struct conn *c, bool idle);

/* Re-arm the watchers for what the owner and OpenSSL need now. */
void conn_update(struct conn *c);

/* Stop watchers without closing: the conn goes quiet until conn_update. */
void conn_stop(struct conn *c);

/* Free buffers that are empty (idle connections keep no buffer memory). */
void conn_release_buffers(struct conn *c);

/* Stop watchers, free SSL, close fd, free buffers. Safe to call twice. */
void conn_close(struct conn *c);

/* Create a non-blocking TCP/UNIX socket and start connecting to addr.
 * Returns the fd (connect in progress or done) or -1 with errno set. */
int conn_socket_connect(const struct sockaddr *sa, socklen_t len);

#endif
