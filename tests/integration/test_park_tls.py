"""A parked session's client TLS handed over from OpenSSL to imapmux's own
TLS 1.3 record layer (common/tls13.c, conn_shed_tls): OpenSSL's state for
the connection is freed, the connection goes on with only its keys.

Checked with real clients against real Dovecot (watch = events, the Redis
events channel): the handover happens (imapmux_tls_handovers_total) for
implicit TLS and for STARTTLS, in each TLS 1.3 suite (openssl s_client);
after it, the wake's untagged data, a command's answer, a 200 KB APPEND and
its FETCH (many records each way) are exact; the client's KeyUpdate (asking
for ours) is followed and answered; LOGOUT ends with a close_notify; a
TLS 1.2 client is not handed over and still parks and wakes.
"""

import os
import re
import socket
import ssl
import subprocess
import time

import pytest

import imapc
import lab
from conftest import backend_section, password, scrape_metrics, wait_until

pytest.register_assert_rewrite("conftest_redis")
from conftest_redis import publish, redis_section, wait_subscribed  # noqa: E402

pytest_plugins = ["conftest_redis"]

TIMEOUT = 10.0


def _mux(make_mux, dovecot, redis, prefix, **extra):
    port = lab.free_port()
    base = {"workers": 1, "park_idle_after": "1s", "log_level": "debug",
            "stats_listen": "127.0.0.1:%d" % port}
    base.update(extra)
    m = make_mux(backends=[("a", backend_section(dovecot, watch="events"))],
                 redis=redis_section(redis, prefix), imapmux=base)
    m.stats_port = port
    wait_subscribed(redis, prefix, 1)
    return m


def _metric(m, name):
    return scrape_metrics(m.stats_port).get(name, 0)


def _wait_metric(m, name, n, what):
    wait_until(lambda: _metric(m, name) >= n, 8.0,
               lambda: "%s: %s >= %d (have %s)" % (what, name, n, _metric(m, name)))


def _ok(c, tag, text):
    untagged, t = c.cmd(tag, text)
    assert t.startswith(tag.encode() + b" OK"), (text, t)
    return untagged


def _direct(dovecot, user):
    c = imapc.Client(dovecot.port, timeout=TIMEOUT)
    c.greeting()
    _ok(c, "l", "LOGIN %s %s" % (imapc.quote(user), imapc.quote(password(user))))
    return c


def _append(c, tag, msg, mailbox="INBOX"):
    c.send(b"%s APPEND %s {%d}\r\n" % (tag.encode(), mailbox.encode(), len(msg)))
    assert c.readline().startswith(b"+"), "no continuation for APPEND"
    c.send(msg + b"\r\n")
    _, t = c.read_until_tagged(tag, timeout=30)
    assert t.startswith(tag.encode() + b" OK"), t


def _select_idle(c):
    sel = b"".join(_ok(c, "s", "SELECT INBOX"))
    n = int(re.search(rb"\* (\d+) EXISTS", sel).group(1))
    if n:
        _ok(c, "f", "UID FETCH 1:* (FLAGS)")
    c.send(b"i IDLE\r\n")
    assert c.readline().startswith(b"+")
    return n


def _next_data(c, timeout=TIMEOUT):
    while True:
        line = c.readline(timeout=timeout)
        if line != b"* OK Still here\r\n":
            return line


def _change_and_see_exists(m, dovecot, redis, prefix, c, user, n):
    d = _direct(dovecot, user)
    _append(d, "a", b"Subject: new\r\n\r\nbody\r\n")
    d.close()
    assert publish(redis, prefix, "mbox %s INBOX" % user) >= 1
    assert _next_data(c) == b"* %d EXISTS\r\n" % (n + 1)
    return n + 1


def _handed_over_and_woken(m, dovecot, redis, prefix, c, user):
    """c (logged in as user) goes into IDLE, parks and has its TLS handed
    over; a change wakes it, and DONE ends the IDLE. The message count."""
    n = _select_idle(c)
    _wait_metric(m, "imapmux_tls_handovers_total", 1, "TLS handed over")
    n = _change_and_see_exists(m, dovecot, redis, prefix, c, user, n)
    c.send(b"DONE\r\n")
    _, t = c.read_until_tagged("i")
    assert t.startswith(b"i OK"), t
    return n


def _tls12_ctx(ca_ctx_cert):
    ctx = lab.client_context(ca_ctx_cert)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def test_implicit_tls_handed_over_then_bulk_both_ways_and_close_notify(make_mux, dovecot, redis,
                                                                      prefix, ca_ctx):
    m = _mux(make_mux, dovecot, redis, prefix)
    user = "park18"
    # ragged EOFs raise (SSLEOFError), so that the close_notify is seen
    c = imapc.Client(m.imaps_port, connect=False, timeout=TIMEOUT)
    c.sock = ca_ctx.wrap_socket(socket.create_connection(("127.0.0.1", m.imaps_port), TIMEOUT),
                                server_hostname="127.0.0.1", suppress_ragged_eofs=False)
    c.greeting()
    assert c.sock.version() == "TLSv1.3"
    _ok(c, "l", "LOGIN %s %s" % (imapc.quote(user), imapc.quote(password(user))))
    n = _select_idle(c)
    _wait_metric(m, "imapmux_sessions_parked", 1, "parked")
    _wait_metric(m, "imapmux_tls_handovers_total", 1, "TLS handed over")
    assert "TLS handed over from OpenSSL" in m.log_text()

    # a wake: what it says comes through the new record layer
    n = _change_and_see_exists(m, dovecot, redis, prefix, c, user, n)
    # a command that wakes, with a literal many records long each way
    c.send(b"DONE\r\n")
    _, t = c.read_until_tagged("i")
    assert t.startswith(b"i OK"), t
    body = b"".join(b"%06d the quick brown fox jumps over the lazy dog\r\n" % i
                    for i in range(4000))
    msg = b"Subject: big\r\n\r\n" + body
    assert len(msg) > 200000
    _append(c, "b", msg)
    untagged, t = c.cmd("g", "FETCH %d BODY.PEEK[]" % (n + 1), timeout=30)
    assert t.startswith(b"g OK"), t
    got = b"".join(untagged)
    assert msg in got, "the message came back changed (%d bytes read)" % len(got)

    # park again (already handed over: nothing more to hand), and wake again
    c.send(b"i2 IDLE\r\n")
    assert c.readline().startswith(b"+")
    parks = _metric(m, "imapmux_parks_total")
    wait_until(lambda: _metric(m, "imapmux_parks_total") > parks, 8.0, "parked again")
    _change_and_see_exists(m, dovecot, redis, prefix, c, user, n + 1)
    assert _metric(m, "imapmux_tls_handovers_total") == 1

    # LOGOUT: BYE, OK, and the connection ends with close_notify
    c.send(b"DONE\r\n")
    c.read_until_tagged("i2")
    c.cmd_send("o", "LOGOUT")
    _, t = c.read_until_tagged("o")
    assert t.startswith(b"o OK"), t
    c.sock.settimeout(TIMEOUT)
    assert c.sock.recv(100) == b"", "a close_notify (a ragged EOF raises SSLEOFError)"
    c.close()


def test_resumed_session_handed_over(make_mux, dovecot, redis, prefix, cert):
    # A TLS 1.3 handshake resumed from a session ticket (tls_tickets) has
    # traffic secrets of its own: its capture must hand over the same way.
    m = _mux(make_mux, dovecot, redis, prefix)
    user = "resume1"
    ctx = lab.client_context(cert)
    first = ctx.wrap_socket(socket.create_connection(("127.0.0.1", m.imaps_port), TIMEOUT),
                            server_hostname="127.0.0.1")
    first.recv(1000)  # the greeting, and the ticket after the handshake
    session = first.session
    first.close()
    c = imapc.Client(m.imaps_port, connect=False, timeout=TIMEOUT)
    c.sock = ctx.wrap_socket(socket.create_connection(("127.0.0.1", m.imaps_port), TIMEOUT),
                             server_hostname="127.0.0.1", session=session)
    c.greeting()
    assert c.sock.session_reused and c.sock.version() == "TLSv1.3"
    _ok(c, "l", "LOGIN %s %s" % (imapc.quote(user), imapc.quote(password(user))))
    n = _handed_over_and_woken(m, dovecot, redis, prefix, c, user)
    untagged, t = c.cmd("g", "FETCH %d BODY.PEEK[]" % n)
    assert t.startswith(b"g OK") and b"Subject: new" in b"".join(untagged), (untagged, t)
    c.close()


def test_starttls_handed_over(make_mux, dovecot, redis, prefix, ca_ctx):
    m = _mux(make_mux, dovecot, redis, prefix)
    user = "park19"
    c = imapc.Client(m.imap_port, timeout=TIMEOUT)
    c.greeting()
    _ok(c, "t", "STARTTLS")
    c.starttls(ca_ctx)
    _ok(c, "l", "LOGIN %s %s" % (imapc.quote(user), imapc.quote(password(user))))
    n = _handed_over_and_woken(m, dovecot, redis, prefix, c, user)
    _ok(c, "n", "NOOP")
    c.close()


def test_tls12_client_stays_with_openssl_and_still_parks(make_mux, dovecot, redis, prefix, cert):
    m = _mux(make_mux, dovecot, redis, prefix)
    user = "park20"
    c = imapc.Client(m.imaps_port, tls=_tls12_ctx(cert), timeout=TIMEOUT)
    c.greeting()
    assert c.sock.version() == "TLSv1.2"
    _ok(c, "l", "LOGIN %s %s" % (imapc.quote(user), imapc.quote(password(user))))
    n = _select_idle(c)
    _wait_metric(m, "imapmux_sessions_parked", 1, "parked")
    time.sleep(0.5)
    assert _metric(m, "imapmux_tls_handovers_total") == 0
    _change_and_see_exists(m, dovecot, redis, prefix, c, user, n)
    c.close()


class SClient:
    """openssl s_client as the client: it can send KeyUpdate ("K" on a
    line of its own asks for the peer's too) and -msg shows the handshake
    messages it gets."""

    def __init__(self, port, cert, suite):
        self.p = subprocess.Popen(
            ["openssl", "s_client", "-connect", "127.0.0.1:%d" % port, "-CAfile", cert,
             "-tls1_3", "-ciphersuites", suite, "-crlf", "-msg"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0)
        os.set_blocking(self.p.stdout.fileno(), False)
        self.out = b""

    def send(self, line):
        self.p.stdin.write(line + b"\n")

    def wait_for(self, pattern, timeout=TIMEOUT):
        deadline = time.monotonic() + timeout
        rx = re.compile(pattern)
        while not rx.search(self.out):
            assert time.monotonic() < deadline, "waited for %r; got %r" % (pattern, self.out[-3000:])
            try:
                data = self.p.stdout.read(65536)
            except BlockingIOError:
                data = None
            if data:
                self.out += data
            else:
                assert self.p.poll() is None, "s_client ended: %r" % self.out[-3000:]
                time.sleep(0.02)
        return rx.search(self.out)

    def close(self):
        self.p.kill()
        self.p.wait()


@pytest.mark.parametrize("suite", ["TLS_AES_128_GCM_SHA256", "TLS_AES_256_GCM_SHA384",
                                   "TLS_CHACHA20_POLY1305_SHA256"])
def test_each_suite_and_key_update_after_handover(make_mux, dovecot, redis, prefix, cert, suite):
    m = _mux(make_mux, dovecot, redis, prefix)
    user = "park17"
    s = SClient(m.imaps_port, cert, suite)
    try:
        s.wait_for(rb"\* OK")
        s.wait_for(rb"Cipher is " + suite.encode() + rb"|Ciphersuite: " + suite.encode())
        s.send(b"l LOGIN %s %s" % (user.encode(), password(user).encode()))
        s.wait_for(rb"l OK")
        s.send(b"s SELECT INBOX")
        n = int(s.wait_for(rb"\* (\d+) EXISTS").group(1))
        s.wait_for(rb"s OK")
        s.send(b"i IDLE")
        s.wait_for(rb"\+ idling")
        _wait_metric(m, "imapmux_tls_handovers_total", 1, "TLS handed over")
        assert b"KeyUpdate" not in s.out
        # the client updates its keys and asks for ours ("K"): ours comes
        # before imapmux's next record, the tagged OK of DONE
        s.send(b"K")
        s.wait_for(rb">>> TLS 1.3, Handshake \[length 0005\], KeyUpdate")
        s.send(b"DONE")
        s.wait_for(rb"<<< TLS 1.3, Handshake \[length 0005\], KeyUpdate")
        s.wait_for(rb"i OK")
        s.send(b"n NOOP")
        s.wait_for(rb"n OK")
        # all of it answered while parked; then a wake after it
        assert _metric(m, "imapmux_sessions_parked") == 1
        s.send(b"i2 IDLE")
        s.wait_for(rb"(?s)n OK.*\+ idling")
        d = _direct(dovecot, user)
        _append(d, "a", b"Subject: ku\r\n\r\nbody\r\n")
        d.close()
        assert publish(redis, prefix, "mbox %s INBOX" % user) >= 1
        s.wait_for(rb"\* %d EXISTS" % (n + 1))
    finally:
        s.close()
