"""Backends: down, silent, killed mid-session, and reached over TLS."""

import re
import socket
import threading
import time

import pytest

import imapc
import lab
from conftest import backend_section, password


def _closed_port():
    p = lab.free_port()
    return p


class SilentServer:
    """Accepts TCP connections and never says a word."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.accepted = 0
        self.conns = []
        self.stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        self.sock.settimeout(0.2)
        while not self.stop:
            try:
                c, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            self.accepted += 1
            self.conns.append(c)

    def close(self):
        self.stop = True
        self.thread.join(2)
        for c in self.conns:
            c.close()
        self.sock.close()


@pytest.fixture
def silent():
    s = SilentServer()
    yield s
    s.close()


def _login(c, user, tag="l"):
    return c.cmd(tag, "LOGIN %s %s" % (user, password(user)), timeout=15)[1]


def test_greeting_needs_no_backend(make_mux, ca_ctx):
    m = make_mux(backends=[("a", {"address": "127.0.0.1:%d" % _closed_port()})])
    t0 = time.monotonic()
    with imapc.Client(m.imaps_port, tls=ca_ctx) as c:
        g = c.greeting()
        assert g.startswith(b"* OK [CAPABILITY "), g
        _, tagged = c.cmd("n", "NOOP")
        assert tagged.startswith(b"n OK")
    assert time.monotonic() - t0 < 3


def test_backend_down_login_unavailable(make_mux, ca_ctx):
    m = make_mux(backends=[("a", {"address": "127.0.0.1:%d" % _closed_port(),
                                  "connect_timeout": "5s"})])
    with imapc.Client(m.imaps_port, tls=ca_ctx) as c:
        c.greeting()
        t0 = time.monotonic()
        tagged = _login(c, "alice")
        assert tagged.startswith(b"l NO [UNAVAILABLE]"), tagged
        assert time.monotonic() - t0 < 3, "refused connect should fail fast, not at connect_timeout"
        tagged = c.cmd("a", "AUTHENTICATE PLAIN " + imapc.plain_ir("alice", password("alice")),
                       timeout=15)[1]
        assert tagged.startswith(b"a NO [UNAVAILABLE]"), tagged
        _, tagged = c.cmd("n", "NOOP")
        assert tagged.startswith(b"n OK"), tagged


def test_backend_silent_login_unavailable_after_connect_timeout(make_mux, ca_ctx, silent):
    m = make_mux(backends=[("a", {"address": "127.0.0.1:%d" % silent.port,
                                  "connect_timeout": "1s", "command_timeout": "1s"})])
    with imapc.Client(m.imaps_port, tls=ca_ctx, timeout=15) as c:
        c.greeting()
        t0 = time.monotonic()
        tagged = _login(c, "alice")
        elapsed = time.monotonic() - t0
        assert tagged.startswith(b"l NO [UNAVAILABLE]"), tagged
        assert elapsed < 6, elapsed
    assert silent.accepted >= 1


def test_backend_comes_back(make_mux, ca_ctx, cert, key):
    """After a refused login the proxy tries again when the backend is up."""
    port = _closed_port()
    m = make_mux(backends=[("a", {"address": "127.0.0.1:%d" % port, "connect_timeout": "2s"})])
    with imapc.Client(m.imaps_port, tls=ca_ctx) as c:
        c.greeting()
        assert _login(c, "alice").startswith(b"l NO [UNAVAILABLE]")
    from conftest import USERS
    d = lab.Dovecot(USERS, port=port, name="dovecot-late").start()
    try:
        deadline = time.monotonic() + 10
        while True:
            with imapc.Client(m.imaps_port, tls=ca_ctx) as c:
                c.greeting()
                tagged = _login(c, "alice")
            if tagged.startswith(b"l OK") or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert tagged.startswith(b"l OK"), tagged
    finally:
        d.cleanup()


@pytest.mark.parametrize("state", ["selected", "idle", "in_command"])
def test_backend_killed_mid_session(make_mux, fresh_dovecot, ca_ctx, state):
    m = make_mux(backends=[("a", backend_section(fresh_dovecot))])
    with imapc.Client(m.imaps_port, tls=ca_ctx) as c:
        c.greeting()
        assert _login(c, "killed").startswith(b"l OK")
        _, tagged = c.cmd("s", "SELECT INBOX")
        assert tagged.startswith(b"s OK"), tagged
        if state == "idle":
            c.cmd_send("t", "IDLE")
            assert c.readline().startswith(b"+")
        elif state == "in_command":
            # an APPEND whose literal is still to come: the backend has
            # answered `+`, the client stream is mid-command
            c.send(b"a APPEND INBOX {40}\r\n")
            assert c.readline().startswith(b"+")
            c.send(b"Subject: half\r\n")
        fresh_dovecot.kill_hard()
        t0 = time.monotonic()
        rest = c.expect_closed(10)
        lines = rest.split(b"\r\n")
        assert [x for x in lines if x.startswith(b"* BYE [UNAVAILABLE]")], rest
        assert time.monotonic() - t0 < 10


def test_backend_killed_others_unaffected(make_mux, fresh_dovecot, dovecot, ca_ctx):
    """Losing backend b ends only b's sessions."""
    m = make_mux(backends=[("a", backend_section(dovecot)),
                           ("b", backend_section(fresh_dovecot, pool_min_idle=2))],
                 routing={"lookup": "static", "fallback": "a"})
    with imapc.Client(m.imaps_port, tls=ca_ctx) as c:
        c.greeting()
        assert _login(c, "alice").startswith(b"l OK")
        c.cmd("s", "SELECT INBOX")
        fresh_dovecot.kill_hard()
        time.sleep(0.5)
        _, tagged = c.cmd("n", "NOOP")
        assert tagged.startswith(b"n OK"), tagged


# ---------------------------------------------------------------------------
# TLS to the backend

def _dovecot_login_line(dovecot, user):
    pat = re.compile(r"imap-login: Info: Login: user=<%s>.*" % re.escape(user))
    return [m.group(0) for m in pat.finditer(dovecot.log_text())]


@pytest.mark.parametrize("tls,user", [("starttls", "tlsstart"), ("implicit", "tlsimpl")])
def test_backend_tls(make_mux, dovecot, ca_ctx, cert, tls, user):
    m = make_mux(backends=[("a", backend_section(dovecot, tls=tls, ca=cert))])
    with imapc.Client(m.imaps_port, tls=ca_ctx) as c:
        c.greeting()
        tagged = _login(c, user)
        assert tagged.startswith(b"l OK [CAPABILITY "), tagged
        _, tagged = c.cmd("s", "SELECT INBOX")
        assert tagged.startswith(b"s OK"), tagged
    time.sleep(0.2)  # Dovecot's log process writes asynchronously
    logins = _dovecot_login_line(dovecot, user)
    assert logins and all(", TLS," in x for x in logins), logins


@pytest.mark.parametrize("tls", ["starttls", "implicit"])
def test_backend_tls_untrusted_cert_refused(make_mux, dovecot, ca_ctx, other_cert, tls):
    m = make_mux(backends=[("a", backend_section(dovecot, tls=tls, ca=other_cert))])
    with imapc.Client(m.imaps_port, tls=ca_ctx) as c:
        c.greeting()
        tagged = _login(c, "grace")
        assert tagged.startswith(b"l NO [UNAVAILABLE]"), tagged


def test_backend_tls_name_mismatch_refused(make_mux, dovecot, ca_ctx, cert):
    m = make_mux(backends=[("a", backend_section(dovecot, tls="implicit", ca=cert,
                                                 tls_name="mail.example.org"))])
    with imapc.Client(m.imaps_port, tls=ca_ctx) as c:
        c.greeting()
        tagged = _login(c, "grace")
        assert tagged.startswith(b"l NO [UNAVAILABLE]"), tagged


def test_backend_tls_name_localhost(make_mux, dovecot, ca_ctx, cert):
    m = make_mux(backends=[("a", backend_section(dovecot, tls="implicit", ca=cert,
                                                 tls_name="localhost"))])
    with imapc.Client(m.imaps_port, tls=ca_ctx) as c:
        c.greeting()
        assert _login(c, "grace").startswith(b"l OK"), c.transcript
