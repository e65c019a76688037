/*
 * fuzz_preauth — the pre-login command handler, driven through the real
 * session code: one worker (its event loop run by hand here), a session on
 * one end of a socketpair, the fuzz input written to the other end as a
 * client would send it, then the client's half-close.
 *
 *   input[0] & 1   listener: 0 = plaintext with plaintext auth allowed,
 *                  1 = STARTTLS (a real certificate; what follows a
 *                  STARTTLS is fed to the TLS handshake as it comes)
 *   input[1..]     the client's bytes
 *
 * Logins go to a backend on 127.0.0.1:1, where nothing listens: they end
 * in NO [UNAVAILABLE] at once, so every input finishes in a few loop
 * rounds. A session still open after the rounds (waiting on a timer) is
 * closed with a forced drain. Nothing leaves loopback; nothing waits.
 */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "cfg.h"
#include "log.h"
#include "runtime.h"
#include "session.h"
#include "worker.h"

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define ROUNDS           200
#define HALF_CLOSE_AFTER 20

static struct worker w;
static struct runtime *rt;

static void die(const char *what)
{
	fprintf(stderr, "fuzz_preauth: %s\n", what);
	abort();
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	char dir[] = "/tmp/imapmux-fuzz-XXXXXX", path[256], cmd[1024], err[512];
	struct cfg *cfg = NULL;
	FILE *f;

	(void)argc;
	(void)argv;
	if (mkdtemp(dir) == NULL)
		die("mkdtemp");
	snprintf(cmd, sizeof(cmd),
	         "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 "
	         "-subj /CN=localhost -keyout %s/key.pem -out %s/cert.pem >/dev/null 2>&1",
	         dir, dir);
	if (system(cmd) != 0)
		die("openssl req failed");
	snprintf(path, sizeof(path), "%s/fuzz.conf", dir);
	f = fopen(path, "w");
	if (f == NULL)
		die("fopen");
	fprintf(f,
	        "[imapmux]\nworkers = 1\nlog_level = error\nauth_fail_delay = 0\n"
	        "auth_fail_limit = 0\noauth = yes\n"
	        "[listen plain]\naddress = 127.0.0.1:1\ntls = none\nallow_plaintext_auth = yes\n"
	        "[listen starttls]\naddress = 127.0.0.1:2\ntls = starttls\n"
	        "cert = %s/cert.pem\nkey = %s/key.pem\n"
	        "[routing]\nlookup = static\nfallback = a\n"
	        "[backend a]\naddress = 127.0.0.1:1\ncheck_interval = 0\nreuse_ttl = 0\n"
	        "connect_timeout = 1s\ncommand_timeout = 1s\n",
	        dir, dir);
	fclose(f);
	/* FUZZ_PREAUTH_DEBUG=1: see what a given input does. */
	log_set_level(getenv("FUZZ_PREAUTH_DEBUG") ? LOG_LVL_DEBUG : LOG_LVL_ERROR);
	if (cfg_load(path, &cfg, err, sizeof(err)) < 0)
		die(err);
	rt = runtime_new(cfg, err, sizeof(err));
	if (rt == NULL)
		die(err);
	/* No listening sockets: sessions are handed over directly. */
	if (worker_init(&w, 0, rt, NULL, 0) < 0)
		die("worker_init");
	w.nworkers = 1;
	return 0;
}

/* Read and drop what the proxy wrote to the client. */
static void drain_client(int fd)
{
	char buf[65536];

	while (read(fd, buf, sizeof(buf)) > 0)
		;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct sockaddr_in peer = {.sin_family = AF_INET, .sin_port = htons(40000)};
	int sv[2];
	size_t off = 1, lidx;

	if (size < 1)
		return 0;
	lidx = data[0] & 1;
	if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0, sv) < 0)
		die("socketpair");
	peer.sin_addr.s_addr = htonl(0x7f000001);
	session_accept(&w, lidx, sv[0], (const struct sockaddr *)&peer, sizeof(peer));

	/* Feed the input as fast as the session takes it; half-close some
	 * rounds after the last byte, so that a login in flight (a refused
	 * backend connect takes a round or two) finishes first. */
	int quiet = 0;
	for (int round = 0; round < ROUNDS; round++) {
		if (off < size) {
			ssize_t n = write(sv[1], data + off, size - off);
			if (n > 0)
				off += (size_t)n;
			else if (n < 0 && errno != EAGAIN)
				off = size; /* the session closed its end */
		} else if (++quiet == HALF_CLOSE_AFTER) {
			shutdown(sv[1], SHUT_WR);
		}
		ev_run(w.loop, EVRUN_NOWAIT);
		drain_client(sv[1]);
		if (w.nsessions == 0)
			break;
	}
	if (w.nsessions > 0) {
		session_drain_all(&w, true);
		for (int round = 0; round < ROUNDS && w.nsessions > 0; round++) {
			ev_run(w.loop, EVRUN_NOWAIT);
			drain_client(sv[1]);
		}
		if (w.nsessions > 0) {
			/* Still there after a forced drain and its close: a stuck
			 * session is a bug too. */
			session_stop_all(&w);
			die("session did not end after a forced drain");
		}
	}
	ev_run(w.loop, EVRUN_NOWAIT); /* the reaper frees what closed last */
	close(sv[1]);
	return 0;
}
