/*
 * fuzz_tls13 — a conn carried on by imapmux's own TLS 1.3 record layer
 * (proxy/conn.c after conn_shed_tls, common/tls13.c) against a client that
 * holds the keys: the client may seal anything, so every authenticated
 * record is hostile too.
 *
 * The input is a script. Its first byte picks the suite; then each step is
 * an op byte and its operands:
 *   op % 5 == 0: an application-data record of n bytes (n from the next
 *                two bytes, mod 700; the bytes follow), sealed by the peer
 *   op % 5 == 1: a handshake record of n bytes (KeyUpdate, or whatever the
 *                bytes say), sealed; a well-formed KeyUpdate the peer made
 *                updates the peer's write keys after it
 *   op % 5 == 2: an alert record of n bytes, sealed
 *   op % 5 == 3: a record of content type (the byte after the bytes; 0,
 *                which would read as padding, is 0x80), sealed
 *   op % 5 == 4: n raw bytes, not sealed (bad headers, bad MACs)
 * The stream goes over a socketpair in chunks whose sizes come from the
 * op bytes, the conn reading as it arrives (its `in` small, so that
 * plaintext waits inside the layer). Checked: no crash or sanitizer report;
 * the plaintext the conn hands over is, byte for byte, a prefix of the
 * application data sealed, and all of it when nothing but application data
 * and well-formed KeyUpdates was sent. Then the conn writes, and the peer
 * opens what it sent (a KeyUpdate it owed first, when one was asked for).
 */
#include <errno.h>
#include <ev.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "conn.h"
#include "fuzz.h"
#include "tls13.h"

static const uint16_t suites[] = {0x1301, 0x1302, 0x1303};

static void cb(struct conn *c, void *owner)
{
	(void)c, (void)owner;
}

struct script {
	const uint8_t *p;
	size_t n;
};

static bool take(struct script *s, size_t k, const uint8_t **out)
{
	if (s->n < k)
		return false;
	*out = s->p;
	s->p += k;
	s->n -= k;
	return true;
}

/* Drain what the conn can read now into got. */
static void pump(struct conn *c, uint8_t *got, size_t *ngot, size_t cap)
{
	for (int i = 0; i < 64 && !c->error && !c->eof; i++) {
		int r = conn_read(c);
		size_t n = buf_len(&c->in);
		FUZZ_CHECK(*ngot + n <= cap, "more plaintext than was sealed");
		memcpy(got + *ngot, buf_head(&c->in), n);
		*ngot += n;
		buf_consume(&c->in, n);
		if (r != 0)
			break;
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static uint8_t stream[1 << 18], want[1 << 17], got[1 << 17], rec[TLS13_MAX_RECORD + 1];
	uint8_t sec_c[48], sec_s[48];
	struct tls13 mine, peer;
	struct script s = {data, size};
	struct ev_loop *loop = EV_DEFAULT;
	size_t nstream = 0, nwant = 0, ngot = 0, sent = 0;
	bool clean = true, ku_asked = false;
	const uint8_t *b;
	struct conn c;
	int sv[2];

	if (!take(&s, 1, &b))
		return 0;
	uint16_t suite = suites[b[0] % 3];
	size_t hlen = suite == 0x1302 ? 48 : 32;
	memset(sec_c, 0xc1, sizeof(sec_c));
	memset(sec_s, 0x5e, sizeof(sec_s));
	FUZZ_CHECK(tls13_init(&mine, suite, sec_c, sec_s, hlen, 0, 0) == 0, "init");
	FUZZ_CHECK(tls13_init(&peer, suite, sec_s, sec_c, hlen, 0, 0) == 0, "init peer");

	/* The script, sealed by the peer. */
	while (s.n > 0 && nstream + TLS13_MAX_RECORD < sizeof(stream)) {
		const uint8_t *op, *ln, *body, *ty;
		size_t n;

		if (!take(&s, 1, &op) || !take(&s, 2, &ln))
			break;
		n = ((size_t)ln[0] << 8 | ln[1]) % 700;
		if (s.n < n)
			n = s.n;
		(void)take(&s, n, &body);
		uint8_t type = TLS13_APPDATA;
		switch (op[0] % 5) {
		case 0:
			FUZZ_CHECK(nwant + n <= sizeof(want), "want");
			memcpy(want + nwant, body, n);
			nwant += n;
			break;
		case 1:
			type = TLS13_HANDSHAKE;
			break;
		case 2:
			type = TLS13_ALERT;
			clean = false;
			break;
		case 3:
			if (!take(&s, 1, &ty))
				goto sealed;
			/* 0 would read as padding: the type is the last byte
			 * before it that is not 0 (RFC 8446 5.4), a case of its own */
			type = ty[0] ? ty[0] : 0x80;
			if (type != TLS13_APPDATA) {
				clean = false;
			} else {
				FUZZ_CHECK(nwant + n <= sizeof(want), "want");
				memcpy(want + nwant, body, n);
				nwant += n;
			}
			break;
		default:
			memcpy(stream + nstream, body, n);
			nstream += n;
			clean = false;
			continue;
		}
		ssize_t len = tls13_seal(&peer, type, body, n, stream + nstream);
		FUZZ_CHECK(len > 0, "seal");
		nstream += (size_t)len;
		if (type == TLS13_HANDSHAKE) {
			bool ku = n == 5 && body[0] == 24 && body[1] == 0 && body[2] == 0 &&
			          body[3] == 1 && body[4] <= 1;
			if (!ku) {
				clean = false;
			} else {
				FUZZ_CHECK(tls13_update(&peer, true) == 0, "peer update");
				ku_asked |= body[4] == 1;
			}
		}
	}
sealed:
	FUZZ_CHECK(socketpair(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0, sv) == 0, "socketpair");
	conn_init(&c, loop, sv[0], 1000, 4096, cb, NULL);
	c.want_input = true;
	FUZZ_CHECK(conn_use_tls13(&c, &mine) == 0, "use");

	/* Over the wire in chunks, read as it comes. */
	for (size_t step = 0; sent < nstream && step < 100000; step++) {
		size_t k = 1 + (data[step % size] * 131u + step) % 9000;
		if (k > nstream - sent)
			k = nstream - sent;
		ssize_t w = write(sv[1], stream + sent, k);
		if (w > 0)
			sent += (size_t)w;
		pump(&c, got, &ngot, sizeof(got));
		if (c.error || c.eof)
			break;
	}
	pump(&c, got, &ngot, sizeof(got));
	FUZZ_CHECK(ngot <= nwant && memcmp(got, want, ngot) == 0,
	           "plaintext handed over is not what was sealed");
	if (clean)
		FUZZ_CHECK(!c.error && ngot == nwant, "a clean stream read whole");

	/* And the other way: what the conn writes, the peer opens. */
	if (!c.error) {
		static const char msg[] = "* 1 EXISTS\r\n";
		size_t nrec = 0;
		bool text = false;

		FUZZ_CHECK(buf_append(&c.out, msg, sizeof(msg) - 1) == 0, "put");
		FUZZ_CHECK(conn_flush(&c) == 0 && conn_out_idle(&c), "flush");
		for (int i = 0; i < 4 && !text; i++) {
			ssize_t r = read(sv[1], rec + nrec, sizeof(rec) - nrec);
			if (r <= 0)
				break;
			nrec += (size_t)r;
			for (;;) {
				ssize_t len = tls13_record_len(rec, nrec);
				uint8_t type;
				size_t plen;
				FUZZ_CHECK(len >= 0, "the conn wrote a bad header");
				if (len == 0 || (size_t)len > nrec)
					break;
				FUZZ_CHECK(tls13_open(&peer, rec, (size_t)len, &type, &plen) == 0,
				           "the peer cannot open the conn's record");
				if (type == TLS13_HANDSHAKE) {
					FUZZ_CHECK(ku_asked && plen == 5 && rec[TLS13_HDR] == 24,
					           "only an asked-for KeyUpdate");
					FUZZ_CHECK(tls13_update(&peer, false) == 0,
					           "peer read update");
				} else {
					FUZZ_CHECK(type == TLS13_APPDATA &&
					               plen == sizeof(msg) - 1 &&
					               memcmp(rec + TLS13_HDR, msg, plen) == 0,
					           "the conn's text");
					text = true;
				}
				memmove(rec, rec + len, nrec - (size_t)len);
				nrec -= (size_t)len;
			}
		}
		FUZZ_CHECK(text, "the conn's text arrived");
	}
	conn_close(&c);
	close(sv[1]);
	tls13_wipe(&mine);
	tls13_wipe(&peer);
	return 0;
}
