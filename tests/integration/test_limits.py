"""Bounds before authentication, pre-auth timeout, TLS protocol versions."""

import select
import socket
import ssl
import threading
import time
import warnings

import pytest

import imapc
from conftest import password


def _abuse(c, payload, chunk=16384):
    """Send payload in chunks, stopping early once the server has answered
    or closed (as a real client would notice). Returns True if it all went."""
    sock = c.sock
    for i in range(0, len(payload), chunk):
        r, _, _ = select.select([sock], [], [], 0)
        if r or (isinstance(sock, ssl.SSLSocket) and sock.pending()):
            return False
        try:
            c.send(payload[i:i + chunk])
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            return False
    return True


def _assert_rejected_and_closed(c, timeout=5):
    """The server answers BAD or BYE (tagged or untagged) and closes."""
    try:
        rest = c.expect_closed(timeout)
    except imapc.Timeout:
        pytest.fail("connection still open after %ss; read: %r" % (timeout, c.transcript[-3:]))
    lines = [x for x in rest.split(b"\r\n") if x]
    assert lines, "closed without an answer (expected BAD or BYE)"
    assert not [x for x in lines if x.startswith(b"+")], lines
    assert [x for x in lines if x.startswith(b"* BYE") or b" BAD" in x[:40]], lines


@pytest.mark.parametrize("listener", ["plain", "tls"])
def test_overlong_preauth_line(mux, ca_ctx, listener):
    if listener == "plain":
        c = imapc.Client(mux.imap_port)
    else:
        c = imapc.Client(mux.imaps_port, tls=ca_ctx)
    with c:
        c.greeting()
        line = b"a LOGIN " + b"x" * (100 * 1024)   # no CRLF, ever
        _abuse(c, line[:50 * 1024])
        # Meanwhile another client is served normally.
        with imapc.Client(mux.imaps_port, tls=ca_ctx) as other:
            other.greeting()
            other.login("alice", password("alice"))
            _, tagged = other.cmd("n", "NOOP")
            assert tagged.startswith(b"n OK"), tagged
        _abuse(c, line[50 * 1024:])
        _assert_rejected_and_closed(c)


@pytest.mark.parametrize("announce", [b"{100000}", b"{4294967296}", b"{99999999999999999999}"])
def test_preauth_sync_literal_over_bound(mux, ca_ctx, announce):
    """No `+` for a literal over the pre-auth bound: BAD (or BYE). Either the
    connection closes, or it stays in step (the literal was never sent)."""
    with imapc.Client(mux.imaps_port, tls=ca_ctx) as c:
        c.greeting()
        c.send(b"a LOGIN " + announce + b"\r\n")
        try:
            r = c.read_response()
        except imapc.Closed:
            pytest.fail("closed without an answer (expected BAD or BYE)")
        assert not r.startswith(b"+"), "continuation for a %r literal before login" % announce
        assert r.startswith(b"* BYE") or r.startswith(b"a BAD") or r.startswith(b"a NO") \
            or r.startswith(b"* BAD"), r
        try:
            _, tagged = c.cmd("n", "NOOP", timeout=5)
            assert tagged.startswith(b"n OK"), tagged
        except imapc.Closed:
            pass


@pytest.mark.parametrize("announce", [b"{100000+}", b"{99999999999999999999+}"])
def test_preauth_nonsync_literal_over_bound(mux, ca_ctx, announce):
    with imapc.Client(mux.imaps_port, tls=ca_ctx) as c:
        c.greeting()
        c.send(b"a LOGIN " + announce + b"\r\n")
        _abuse(c, b"y" * 20000)
        _assert_rejected_and_closed(c)


def test_too_many_invalid_commands_close(client_tls):
    """README: ten invalid commands before login end the session."""
    c = client_tls()
    c.greeting()
    for i in range(1, 13):
        try:
            c.send(b"x%d BOGUS\r\n" % i)
            r = c.read_response()
        except (imapc.Closed, OSError):
            break
        if r.startswith(b"* BYE"):
            break
        assert r.startswith(b"x%d BAD" % i), r
    else:
        pytest.fail("still open after 12 invalid commands")
    assert i >= 5, "closed after only %d invalid commands" % i
    c.expect_closed(5)


def test_many_parallel_preauth_clients(mux, ca_ctx):
    """Twenty clients logging in at once all succeed."""
    errors = []

    def one(i):
        try:
            with imapc.Client(mux.imaps_port, tls=ca_ctx) as c:
                c.greeting()
                c.login("alice", password("alice"), tag="l%d" % i)
                _, tagged = c.cmd("s", "SELECT INBOX")
                assert tagged.startswith(b"s OK"), tagged
                c.cmd("o", "LOGOUT")
        except Exception as e:  # noqa: BLE001 -- reported below
            errors.append(repr(e))
    threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors, errors


def test_preauth_timeout(make_mux, ca_ctx):
    m = make_mux(imapmux={"preauth_timeout": "1s"})
    with imapc.Client(m.imaps_port, tls=ca_ctx) as c, imapc.Client(m.imap_port) as p:
        c.greeting()
        p.greeting()
        t0 = time.monotonic()
        rest = c.expect_closed(5)
        elapsed = time.monotonic() - t0
        assert elapsed > 0.5, "closed too early (%.2fs)" % elapsed
        if rest:
            assert rest.startswith(b"* BYE"), rest
        p.expect_closed(3)


def test_preauth_timeout_not_reset_by_partial_line(make_mux, ca_ctx):
    """Trickling bytes of an unfinished line does not keep a pre-auth
    connection alive past preauth_timeout."""
    m = make_mux(imapmux={"preauth_timeout": "1s"})
    with imapc.Client(m.imaps_port, tls=ca_ctx) as c:
        c.greeting()
        t0 = time.monotonic()
        closed = False
        while time.monotonic() - t0 < 6:
            try:
                c.send(b"x")
            except (OSError, ssl.SSLError):
                closed = True
                break
            if c.wait_closed_or_timeout(0.3):
                closed = True
                break
        assert closed, "still open after 6s of trickling"


def test_authenticated_session_outlives_preauth_timeout(make_mux, ca_ctx):
    m = make_mux(imapmux={"preauth_timeout": "1s"})
    with imapc.Client(m.imaps_port, tls=ca_ctx) as c:
        c.greeting()
        c.login("bob", password("bob"))
        time.sleep(2.0)
        _, tagged = c.cmd("n", "NOOP")
        assert tagged.startswith(b"n OK"), tagged


def test_idle_timeout(make_mux, ca_ctx):
    """idle_timeout ends a quiet logged-in session; a session in IDLE is kept
    (README: never less than 30 minutes in IDLE, RFC 3501 5.4)."""
    m = make_mux(imapmux={"idle_timeout": "1s", "park_idle_after": 0})
    with imapc.Client(m.imaps_port, tls=ca_ctx) as quiet, \
            imapc.Client(m.imaps_port, tls=ca_ctx) as idling:
        for c in (quiet, idling):
            c.greeting()
            c.login("bob", password("bob"))
            c.cmd("s", "SELECT INBOX")
        idling.cmd_send("t", "IDLE")
        assert idling.readline().startswith(b"+")
        t0 = time.monotonic()
        rest = quiet.expect_closed(6)
        assert time.monotonic() - t0 > 0.5
        if rest:
            assert b"* BYE" in rest, rest
        time.sleep(1.0)
        idling.send(b"DONE\r\n")
        _, tagged = idling.read_until_tagged("t")
        assert tagged.startswith(b"t OK"), tagged


# ---------------------------------------------------------------------------
# TLS versions

def old_tls_context(maximum, minimum=ssl.TLSVersion.TLSv1):
    """A client context that offers only TLS versions minimum..maximum,
    with the old ciphers those need (@SECLEVEL=0), no verification."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = minimum
        ctx.maximum_version = maximum
    ctx.set_ciphers("ALL:@SECLEVEL=0")
    return ctx


def tls_handshake_version(port, ctx):
    """Handshake with 127.0.0.1:port and read one line; the TLS version."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        t = ctx.wrap_socket(s, server_hostname="localhost")
        t.settimeout(5)
        data = t.recv(1024)
        assert data.startswith(b"* OK"), data
        return t.version()
    finally:
        s.close()


with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    OLD_VERSIONS = [ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1]


@pytest.mark.parametrize("version", OLD_VERSIONS, ids=["TLSv1.0", "TLSv1.1"])
def test_old_tls_refused(mux, version):
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        tls_handshake_version(mux.imaps_port, old_tls_context(version))


@pytest.mark.parametrize("version,name", [(ssl.TLSVersion.TLSv1_2, "TLSv1.2"),
                                          (ssl.TLSVersion.TLSv1_3, "TLSv1.3")])
def test_modern_tls_accepted(mux, version, name):
    ctx = old_tls_context(version, minimum=version)
    assert tls_handshake_version(mux.imaps_port, ctx) == name


def test_old_tls_refused_after_starttls(mux):
    with imapc.Client(mux.imap_port) as c:
        c.greeting()
        _, tagged = c.cmd("s", "STARTTLS")
        assert tagged.startswith(b"s OK"), tagged
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
            c.starttls(old_tls_context(OLD_VERSIONS[1]), server_hostname="localhost")
