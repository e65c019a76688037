"""COMPRESS=DEFLATE (RFC 4978) toward clients, terminated in imapmux.

The client side is Python's zlib (raw deflate, windowBits -15 both ways,
the default level), over real TLS, against real Dovecot; the backend
stream stays plain (imapmux parses it). Checked: the capability lists
after login offer COMPRESS=DEFLATE once (none before login); `COMPRESS
DEFLATE` is answered by imapmux with an uncompressed OK and both ways are
compressed from the next byte: SELECT, a 300 KB APPEND literal and its
FETCH, IDLE; bytes pipelined after the COMPRESS line are inflated, not
parsed (also behind a command still in flight, whose answer comes first,
plain); COMPRESS again gets NO [COMPRESSIONACTIVE], a wrong argument BAD,
UNAUTHENTICATE BAD with the stream still compressed;
a parked session frees its deflater and, woken, goes on with a fresh one
that the client's one decompressor keeps reading; a kept backend reused
by a later compressed session; LOGOUT's words compressed; corrupt input
closes the session with a log line; compress = no offers nothing and
refuses the command (NO [CANNOT]).
"""

import re
import subprocess
import zlib

import pytest

import imapc
import lab
import parklib
from conftest import password, wait_until

pytest_plugins = ["conftest_redis"]

TIMEOUT = 10.0


class ZSock:
    """A socket seen through RFC 4978 compression: what is sent is deflated
    and sync-flushed, what is received inflated. One decompressor for the
    whole connection: imapmux's deflaters (a new one after each park)
    must all read as one stream."""

    def __init__(self, sock, level=6):
        self.sock = sock
        self.comp = zlib.compressobj(level, zlib.DEFLATED, -15)
        self.decomp = zlib.decompressobj(-15)
        self.raw_in = 0

    def sendall(self, data):
        self.sock.sendall(self.comp.compress(data) + self.comp.flush(zlib.Z_SYNC_FLUSH))

    def recv(self, n):
        # a sync flush alone inflates to nothing: read on (bounded by the
        # socket timeout the caller set)
        for _ in range(10000):
            raw = self.sock.recv(n)
            if not raw:
                return b""
            self.raw_in += len(raw)
            out = self.decomp.decompress(raw)
            if out:
                return out
        raise AssertionError("endless empty deflate blocks")

    def settimeout(self, t):
        self.sock.settimeout(t)

    def close(self):
        self.sock.close()


def _client(m, ca_ctx, user):
    c = imapc.Client(m.imaps_port, tls=ca_ctx, timeout=TIMEOUT)
    c.greeting()
    caps = _ok(c, "c", "CAPABILITY")
    assert b"COMPRESS" not in b"".join(caps), "COMPRESS offered before login"
    _, t = c.cmd("l", "LOGIN %s %s" % (imapc.quote(user), imapc.quote(password(user))))
    assert t.startswith(b"l OK"), t
    return c, t


def _ok(c, tag, text, timeout=TIMEOUT):
    untagged, t = c.cmd(tag, text, timeout)
    assert t.startswith(tag.encode() + b" OK"), (text, t)
    return untagged


def _compress(c, tag="z"):
    c.cmd_send(tag, "COMPRESS DEFLATE")
    line = c.readline()
    assert line == tag.encode() + b" OK DEFLATE active\r\n", line
    assert not c.buf, "bytes after the OK before any command: %r" % bytes(c.buf)
    c.sock = ZSock(c.sock)
    return c.sock


def _append(c, tag, mailbox, msg):
    c.send(b"%s APPEND %s {%d}\r\n" % (tag.encode(), mailbox.encode(), len(msg)))
    assert c.readline().startswith(b"+"), "no continuation for APPEND"
    c.send(msg + b"\r\n")
    _, t = c.read_until_tagged(tag, timeout=30)
    assert t.startswith(tag.encode() + b" OK"), t


def _count_compress(caps_line):
    return len(re.findall(rb"(?i)\bCOMPRESS=", caps_line))


@pytest.fixture
def mux(make_mux, dovecot, redis, prefix):
    return parklib.mux(make_mux, dovecot, redis, prefix, "events")


def test_offered_once_after_login_then_bulk_both_ways(mux, ca_ctx):
    c, login_ok = _client(mux, ca_ctx, "alice")
    assert _count_compress(login_ok) == 1 and b"COMPRESS=DEFLATE" in login_ok, login_ok
    caps = b"".join(_ok(c, "c2", "CAPABILITY"))
    assert _count_compress(caps) == 1 and b"COMPRESS=DEFLATE" in caps, caps

    z = _compress(c)
    # after COMPRESS the lists still say it, once
    caps = b"".join(_ok(c, "c3", "CAPABILITY"))
    assert _count_compress(caps) == 1, caps
    _ok(c, "cr", "CREATE zbulk")
    body = b"".join(b"%06d the quick brown fox jumps over the lazy dog\r\n" % i
                    for i in range(6000))
    msg = b"Subject: big\r\n\r\n" + body
    assert len(msg) > 300000
    _append(c, "a", "zbulk", msg)
    sel = b"".join(_ok(c, "s", "SELECT zbulk"))
    assert b"* 1 EXISTS" in sel, sel
    got = b"".join(_ok(c, "f", "FETCH 1 BODY.PEEK[]", timeout=30))
    assert msg in got, "the message came back changed (%d bytes)" % len(got)
    # it was compressed on the wire (the text is very repetitive)
    assert z.raw_in < len(msg) // 4, (z.raw_in, len(msg))

    _, t = c.cmd("z2", "COMPRESS DEFLATE")
    assert t.startswith(b"z2 NO [COMPRESSIONACTIVE]"), t
    # counted once, the refused second COMPRESS not
    assert parklib.metric(mux, "imapmux_compress_started_total") == 1
    assert parklib.metric(mux, "imapmux_sessions_compressed") == 1
    # UNAUTHENTICATE is imapmux's to refuse; the connection stays compressed
    _, t = c.cmd("u", "UNAUTHENTICATE")
    assert t.startswith(b"u BAD"), t
    _ok(c, "n", "NOOP")
    # LOGOUT's BYE and OK are compressed too: compression lasts the connection
    c.cmd_send("o", "LOGOUT")
    untagged, t = c.read_until_tagged("o")
    assert t.startswith(b"o OK"), t
    assert any(u.startswith(b"* BYE") for u in untagged), untagged
    c.close()
    wait_until(lambda: parklib.metric(mux, "imapmux_sessions_compressed") == 0, 5,
               "the compressed-sessions gauge back to 0")


def test_wrong_arguments_and_before_login(mux, ca_ctx):
    c = imapc.Client(mux.imaps_port, tls=ca_ctx, timeout=TIMEOUT)
    c.greeting()
    _, t = c.cmd("p", "COMPRESS DEFLATE")
    assert t.startswith(b"p BAD"), t
    _, t = c.cmd("l", "LOGIN bob %s" % imapc.quote(password("bob")))
    assert t.startswith(b"l OK"), t
    for tag, text in (("b1", "COMPRESS"), ("b2", "COMPRESS GZIP"),
                      ("b3", "COMPRESS DEFLATE EXTRA"), ("b4", "COMPRESS DEFLATEX")):
        _, t = c.cmd(tag, text)
        assert t.startswith(tag.encode() + b" BAD"), (text, t)
    _ok(c, "n", "NOOP")  # still plain
    _compress(c, "Z")  # algorithm names are case-insensitive: lower case too
    _ok(c, "n2", "NOOP")
    c.close()


def test_pipelined_after_compress_is_inflated(mux, ca_ctx):
    c, _ = _client(mux, ca_ctx, "carol")
    comp = zlib.compressobj(6, zlib.DEFLATED, -15)
    tail = comp.compress(b"n1 NOOP\r\nn2 SELECT INBOX\r\n") + comp.flush(zlib.Z_SYNC_FLUSH)
    # behind a command still in flight: its answer first, plain, then the OK
    c.send(b"n0 NOOP\r\nz compress deflate\r\n" + tail)
    line = c.readline()
    assert line.startswith(b"n0 OK"), line
    line = c.readline()
    assert line == b"z OK DEFLATE active\r\n", line
    z = ZSock(c.sock)
    z.comp = comp  # the stream the pipelined bytes began
    raw = bytes(c.buf)
    c.buf = bytearray(z.decomp.decompress(raw))
    c.sock = z
    _, t = c.read_until_tagged("n1")
    assert t.startswith(b"n1 OK"), t
    _, t = c.read_until_tagged("n2")
    assert t.startswith(b"n2 OK"), t
    _ok(c, "n3", "NOOP")
    c.close()


def test_idle_park_frees_deflater_and_wake_goes_on(mux, dovecot, redis, prefix, ca_ctx):
    user = "dave"
    c, _ = _client(mux, ca_ctx, user)
    _compress(c)
    _ok(c, "cr", "CREATE zpark")
    _append(c, "a", "zpark", b"Subject: one\r\n\r\nfirst\r\n")
    sel = b"".join(_ok(c, "s", "SELECT zpark"))
    assert b"* 1 EXISTS" in sel, sel
    for rnd in range(2):
        parks = parklib.metric(mux, "imapmux_parks_total")
        c.send(b"i%d IDLE\r\n" % rnd)
        assert c.readline().startswith(b"+"), "IDLE refused"
        wait_until(lambda: parklib.metric(mux, "imapmux_parks_total") > parks, 8.0, "parked")
        wait_until(lambda: mux.log_text().count("parked: COMPRESS deflate state freed") > rnd,
                   5.0, "deflater freed while parked")
        # a change: the wake's EXISTS comes from a fresh deflater
        d = imapc.Client(dovecot.port, timeout=TIMEOUT)
        d.greeting()
        _ok(d, "l", "LOGIN %s %s" % (user, imapc.quote(password(user))))
        _append(d, "a", "zpark", b"Subject: more\r\n\r\nmore %d\r\n" % rnd)
        d.close()
        parklib.announce(redis, prefix, "events", user, "zpark")
        want = b"* %d EXISTS\r\n" % (rnd + 2)
        for _ in range(5):
            line = c.readline(timeout=TIMEOUT)
            if line != parklib.KEEPALIVE:
                break
        assert line == want, line
        c.send(b"DONE\r\n")
        _, t = c.read_until_tagged("i%d" % rnd)
        assert t.startswith(b"i%d OK" % rnd), t
        got = b"".join(_ok(c, "f%d" % rnd, "FETCH %d BODY[TEXT]" % (rnd + 2)))
        assert b"more %d" % rnd in got, got
    c.close()


def test_kept_backend_reused_by_a_compressed_session(mux, ca_ctx):
    for rnd in range(2):
        c, _ = _client(mux, ca_ctx, "erin")
        _compress(c)
        sel = b"".join(_ok(c, "s", "SELECT INBOX"))
        assert b"EXISTS" in sel, sel
        c.cmd_send("o", "LOGOUT")
        _, t = c.read_until_tagged("o")
        assert t.startswith(b"o OK"), t
        assert c.expect_closed(5.0) == b""
        c.close()
    wait_until(lambda: "(kept session reused)" in mux.log_text(), 5.0,
               "the second session on the first one's kept backend")


def test_corrupt_input_closes_with_a_log_line(mux, ca_ctx):
    c, _ = _client(mux, ca_ctx, "frank")
    z = _compress(c)
    z.sock.sendall(b"\xff\xff\xff\xff garbage")  # BTYPE 11: reserved, invalid
    c.sock = z.sock
    assert c.wait_closed_or_timeout(5.0), "still open after corrupt input"
    wait_until(lambda: "COMPRESS: corrupt data from the client" in mux.log_text(), 5.0,
               "the close logged")
    # imapmux is fine
    c2, _ = _client(mux, ca_ctx, "frank")
    _ok(c2, "n", "NOOP")
    c2.close()


def test_compress_no(make_mux, dovecot, redis, prefix, ca_ctx):
    m = parklib.mux(make_mux, dovecot, redis, prefix, "events", imapmux={"compress": "no"})
    c, login_ok = _client(m, ca_ctx, "grace")
    assert _count_compress(login_ok) == 0, login_ok
    caps = b"".join(_ok(c, "c2", "CAPABILITY"))
    assert _count_compress(caps) == 0, caps
    _, t = c.cmd("z", "COMPRESS DEFLATE")
    assert t.startswith(b"z NO [CANNOT]"), t
    _ok(c, "n", "NOOP")  # still plain
    c.close()


def test_bad_config_value(tmp_path):
    conf = tmp_path / "bad.conf"
    conf.write_text("[imapmux]\ncompress = maybe\n")
    r = subprocess.run([lab.IMAPMUX, "-t", "-c", str(conf)], capture_output=True, text=True,
                       timeout=10)
    assert r.returncode != 0
    err = r.stdout + r.stderr
    assert "bad.conf:2" in err and "compress" in err, err
