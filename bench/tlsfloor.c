/*
 * tlsfloor — what OpenSSL itself costs a TLS server on this machine, with no
 * proxy around it: the floor under any OpenSSL-based IMAP proxy's numbers
 * (BENCHMARKS.md, "Where the time goes").
 *
 *   tlsfloor handshake [-n N] [--resume] [--tickets N] [--keylog] [--suites LIST]
 *       N TLS 1.3 handshakes between a server and a client SSL in this one
 *       thread, over a pair of memory BIOs (no sockets, no kernel): the
 *       server's calls alone are timed (CLOCK_THREAD_CPUTIME_ID around each
 *       SSL_new, SSL_do_handshake and SSL_free of the server side). The server
 *       is set up as imapmux sets up its listeners: ECDSA P-256 certificate,
 *       X25519, server cipher preference, no session cache; --tickets N
 *       issues N TLS 1.3 tickets a handshake (OpenSSL's own keys), --resume
 *       offers the last ticket each time, --keylog installs an (empty) key log
 *       callback as imapmux does to hand a parked session's TLS over.
 *
 *   tlsfloor relay [-m MB]
 *       MB megabytes through the smallest TLS relay there is, on loopback:
 *       a feeder thread writes plain bytes to the relay's plain socket, the
 *       relay thread recv()s 64 KB at a time and SSL_write()s them to a TLS
 *       1.3 connection (16 KB records), a drain thread SSL_read()s them. The
 *       relay thread's CPU time (user and system: its thread clock) per MB
 *       is the floor of a TLS proxy's bulk path here: the copies in and out
 *       of the kernel, loopback TCP, AES-GCM.
 *
 * Output: one JSON object on stdout. Exit 0, or 1 when anything failed.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define RELAY_CHUNK (64 * 1024)

static double thread_cpu(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double wall(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int die(const char *what)
{
	fprintf(stderr, "tlsfloor: %s\n", what);
	ERR_print_errors_fp(stderr);
	return 1;
}

/* A self-signed ECDSA P-256 certificate, as the benchmarks' world uses. */
static int server_ctx(SSL_CTX **out, const char *suites)
{
	EVP_PKEY *pk = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
	X509 *x = X509_new();
	SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());

	if (pk == NULL || x == NULL || ctx == NULL)
		return -1;
	X509_set_version(x, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
	X509_gmtime_adj(X509_getm_notBefore(x), 0);
	X509_gmtime_adj(X509_getm_notAfter(x), 86400);
	X509_set_pubkey(x, pk);
	X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
	                           (const unsigned char *)"localhost", -1, -1, 0);
	X509_set_issuer_name(x, X509_get_subject_name(x));
	if (X509_sign(x, pk, EVP_sha256()) == 0 || SSL_CTX_use_certificate(ctx, x) != 1 ||
	    SSL_CTX_use_PrivateKey(ctx, pk) != 1)
		return -1;
	X509_free(x);
	EVP_PKEY_free(pk);
	SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
	SSL_CTX_set_options(ctx, SSL_OP_CIPHER_SERVER_PREFERENCE | SSL_OP_NO_RENEGOTIATION |
	                             SSL_OP_NO_COMPRESSION);
	SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
	if (SSL_CTX_set1_groups_list(ctx, "X25519:P-256:P-384") != 1)
		return -1;
	if (suites != NULL && SSL_CTX_set_ciphersuites(ctx, suites) != 1)
		return -1;
	*out = ctx;
	return 0;
}

static void keylog_cb(const SSL *ssl, const char *line)
{
	(void)ssl;
	(void)line;
}

static SSL_SESSION *last_session;

static int new_session_cb(SSL *ssl, SSL_SESSION *sess)
{
	(void)ssl;
	if (last_session != NULL)
		SSL_SESSION_free(last_session);
	last_session = sess;
	return 1;
}

static int run_handshakes(int argc, char **argv)
{
	long n = 1000, tickets = 0;
	int resume = 0, keylog = 0;
	const char *suites = NULL;
	SSL_CTX *sctx, *cctx;
	double cpu = 0, t0;
	long reused = 0;

	for (int i = 0; i < argc; i++) {
		if (strcmp(argv[i], "-n") == 0 && i + 1 < argc)
			n = atol(argv[++i]);
		else if (strcmp(argv[i], "--tickets") == 0 && i + 1 < argc)
			tickets = atol(argv[++i]);
		else if (strcmp(argv[i], "--suites") == 0 && i + 1 < argc)
			suites = argv[++i];
		else if (strcmp(argv[i], "--resume") == 0)
			resume = 1;
		else if (strcmp(argv[i], "--keylog") == 0)
			keylog = 1;
		else
			return die("usage: tlsfloor handshake [-n N] [--resume] [--tickets N] "
			           "[--keylog] [--suites LIST]");
	}
	if (n < 1 || n > 1000000 || tickets < 0 || tickets > 4 || (resume && tickets == 0))
		return die("bad -n or --tickets (--resume needs --tickets 1 or more)");
	if (server_ctx(&sctx, suites) < 0)
		return die("server context");
	SSL_CTX_set_num_tickets(sctx, (size_t)tickets);
	if (keylog)
		SSL_CTX_set_keylog_callback(sctx, keylog_cb);
	cctx = SSL_CTX_new(TLS_client_method());
	if (cctx == NULL)
		return die("client context");
	SSL_CTX_set_min_proto_version(cctx, TLS1_3_VERSION);
	SSL_CTX_set_session_cache_mode(cctx,
	                               SSL_SESS_CACHE_CLIENT | SSL_SESS_CACHE_NO_INTERNAL_STORE);
	SSL_CTX_sess_set_new_cb(cctx, new_session_cb);
	t0 = wall();
	for (long i = 0; i < n; i++) {
		SSL *c = SSL_new(cctx), *s;
		BIO *a, *b;
		double c0 = thread_cpu();
		char byte;

		s = SSL_new(sctx);
		cpu += thread_cpu() - c0;
		if (c == NULL || s == NULL || BIO_new_bio_pair(&a, 0, &b, 0) != 1)
			return die("SSL_new");
		SSL_set_bio(c, a, a);
		SSL_set_bio(s, b, b);
		SSL_set_connect_state(c);
		SSL_set_accept_state(s);
		if (resume && last_session != NULL)
			SSL_set_session(c, last_session);
		for (int k = 0; k < 20 && !(SSL_is_init_finished(c) && SSL_is_init_finished(s));
		     k++) {
			(void)SSL_do_handshake(c);
			c0 = thread_cpu();
			(void)SSL_do_handshake(s);
			cpu += thread_cpu() - c0;
		}
		if (!SSL_is_init_finished(c) || !SSL_is_init_finished(s))
			return die("handshake did not finish");
		/* The client takes in the tickets sent after the handshake. */
		(void)SSL_read(c, &byte, 1);
		ERR_clear_error();
		reused += SSL_session_reused(s);
		SSL_set_shutdown(c, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
		SSL_free(c);
		c0 = thread_cpu();
		SSL_set_shutdown(s, SSL_SENT_SHUTDOWN | SSL_RECEIVED_SHUTDOWN);
		SSL_free(s);
		cpu += thread_cpu() - c0;
	}
	printf("{\"mode\":\"handshake\",\"n\":%ld,\"tickets\":%ld,\"resume\":%s,\"keylog\":%s,"
	       "\"suites\":\"%s\",\"resumed\":%ld,\"server_cpu_us_per_handshake\":%.1f,"
	       "\"wall_s\":%.3f,\"openssl\":\"%s\"}\n",
	       n, tickets, resume ? "true" : "false", keylog ? "true" : "false",
	       suites ? suites : "default", reused, cpu / (double)n * 1e6, wall() - t0,
	       OpenSSL_version(OPENSSL_VERSION));
	if (last_session != NULL)
		SSL_SESSION_free(last_session);
	SSL_CTX_free(sctx);
	SSL_CTX_free(cctx);
	return resume && reused < n - 1 ? die("sessions did not resume") : 0;
}

/* ---- relay ------------------------------------------------------------------ */

struct relay {
	long long bytes;
	int plain_port, tls_port;
	SSL_CTX *cctx;
	long long drained;
	int failed;
};

static int listen_any(int *port)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t len = sizeof(a);
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	if (fd < 0 || bind(fd, (struct sockaddr *)&a, sizeof(a)) < 0 || listen(fd, 4) < 0 ||
	    getsockname(fd, (struct sockaddr *)&a, &len) < 0)
		return -1;
	*port = ntohs(a.sin_port);
	return fd;
}

static int connect_to(int port)
{
	struct sockaddr_in a = {.sin_family = AF_INET,
	                        .sin_port = htons((uint16_t)port),
	                        .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	int fd = socket(AF_INET, SOCK_STREAM, 0);

	if (fd < 0 || connect(fd, (struct sockaddr *)&a, sizeof(a)) < 0)
		return -1;
	return fd;
}

static void *feeder(void *arg)
{
	struct relay *r = arg;
	static char chunk[RELAY_CHUNK];
	int fd = connect_to(r->plain_port);

	memset(chunk, 'x', sizeof(chunk));
	for (long long left = r->bytes; fd >= 0 && left > 0;) {
		ssize_t n = write(fd, chunk, left < RELAY_CHUNK ? (size_t)left : sizeof(chunk));
		if (n <= 0) {
			r->failed = 1;
			break;
		}
		left -= n;
	}
	if (fd >= 0)
		close(fd);
	return NULL;
}

static void *drain(void *arg)
{
	struct relay *r = arg;
	static char buf[RELAY_CHUNK];
	int fd = connect_to(r->tls_port);
	SSL *c = fd < 0 ? NULL : SSL_new(r->cctx);

	if (c == NULL || SSL_set_fd(c, fd) != 1 || SSL_connect(c) != 1) {
		r->failed = 1;
		return NULL;
	}
	for (;;) {
		int n = SSL_read(c, buf, sizeof(buf));
		if (n <= 0)
			break;
		r->drained += n;
	}
	SSL_free(c);
	close(fd);
	return NULL;
}

static int run_relay(int argc, char **argv)
{
	struct relay r = {.bytes = 1000LL * 1000 * 1000};
	static char buf[RELAY_CHUNK];
	pthread_t ft, dt;
	SSL_CTX *sctx;
	int pl, tl, pfd, tfd;
	SSL *s;
	double c0, w0, cpu, secs;

	for (int i = 0; i < argc; i++) {
		if (strcmp(argv[i], "-m") == 0 && i + 1 < argc)
			r.bytes = atoll(argv[++i]) * 1000LL * 1000;
		else
			return die("usage: tlsfloor relay [-m MB]");
	}
	if (r.bytes <= 0 || r.bytes > 100LL * 1000 * 1000 * 1000)
		return die("bad -m");
	if (server_ctx(&sctx, NULL) < 0 || (r.cctx = SSL_CTX_new(TLS_client_method())) == NULL)
		return die("contexts");
	if ((pl = listen_any(&r.plain_port)) < 0 || (tl = listen_any(&r.tls_port)) < 0)
		return die("listen");
	if (pthread_create(&dt, NULL, drain, &r) != 0)
		return die("thread");
	tfd = accept(tl, NULL, NULL);
	s = SSL_new(sctx);
	if (tfd < 0 || s == NULL || SSL_set_fd(s, tfd) != 1 || SSL_accept(s) != 1)
		return die("TLS accept");
	if (pthread_create(&ft, NULL, feeder, &r) != 0)
		return die("thread");
	pfd = accept(pl, NULL, NULL);
	if (pfd < 0)
		return die("accept");
	c0 = thread_cpu();
	w0 = wall();
	for (;;) {
		ssize_t n = read(pfd, buf, sizeof(buf));
		if (n <= 0)
			break;
		if (SSL_write(s, buf, (int)n) != (int)n)
			return die("SSL_write");
	}
	cpu = thread_cpu() - c0;
	secs = wall() - w0;
	SSL_shutdown(s);
	SSL_free(s);
	close(tfd);
	pthread_join(ft, NULL);
	pthread_join(dt, NULL);
	close(pfd);
	close(pl);
	close(tl);
	printf("{\"mode\":\"relay\",\"mb\":%.0f,\"relay_cpu_ms_per_mb\":%.4f,\"mb_per_s\":%.1f,"
	       "\"drained_ok\":%s,\"openssl\":\"%s\"}\n",
	       (double)r.bytes / 1e6, cpu * 1e3 / ((double)r.bytes / 1e6),
	       (double)r.bytes / 1e6 / secs, r.drained == r.bytes ? "true" : "false",
	       OpenSSL_version(OPENSSL_VERSION));
	SSL_CTX_free(sctx);
	SSL_CTX_free(r.cctx);
	return r.failed || r.drained != r.bytes ? die("relay lost bytes") : 0;
}

int main(int argc, char **argv)
{
	if (argc >= 2 && strcmp(argv[1], "handshake") == 0)
		return run_handshakes(argc - 2, argv + 2);
	if (argc >= 2 && strcmp(argv[1], "relay") == 0)
		return run_relay(argc - 2, argv + 2);
	fprintf(stderr, "usage: tlsfloor handshake|relay [options] (see the source's head)\n");
	return 2;
}
