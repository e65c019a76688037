"""Faults, with real servers: backends killed or stalling mid-stream, Redis
killed under login load, floods of idle pre-login connections, clients that
vanish in the middle of a literal, half-closed sockets (the hardening issue).

Real parts everywhere: Dovecot (lab.Dovecot; kill_hard() SIGKILLs its whole
process group), Redis (lab.Redis), TLS with the test certificate. The one
exception is FakeBackend below: a deliberately minimal IMAP responder, used
only where a real Dovecot cannot be made to show the fault on demand (a
stall in the middle of a line or of a literal, a half-close of its socket).

"No leak" is judged from outside imapmux: its open descriptors
(/proc/PID/fd, against a baseline taken once it is warmed up), the sockets
it holds to a backend port (/proc/net/tcp matched with its fds), the
/metrics gauges imapmux_sessions and imapmux_sessions_proxying, and the
peer's view (the fake backend sees its connection closed; Dovecot logs the
disconnect).

Every wait is bounded; every load loop is bounded in count and in time.
"""

import os
import re
import select
import socket
import ssl
import threading
import time

import pytest

import imapc
import lab
from conftest import backend_section, password, raise_nofile, scrape_metrics, socks_to, wait_until

pytest.register_assert_rewrite("conftest_redis")
from conftest_redis import (  # noqa: E402
    USERS_R, backend, connect, crypt_hash, dv_password, login_cmd, rd_password, redis_section,
    restart_redis, set_password, set_route)
from test_bigmsg import make_message  # noqa: E402

# The fixtures prefix, fresh_redis, rdv_a.
pytest_plugins = ["conftest_redis"]

TIMEOUT = 10.0
BIG = 20 * 1024 * 1024
MIB = 1024 * 1024


# ---------------------------------------------------------------------------
# imapmux with the listeners these tests need

def start(make_mux, backends, routing=None, imapmux=None, redis=None):
    """imapmux with an implicit-TLS listener (m.imaps_port), a plaintext one
    (tls = none, plaintext logins allowed: m.plain_port) and stats_listen
    (m.stats_port). Routing defaults to the first backend for everyone."""
    imaps_port, plain_port, stats_port = lab.free_port(), lab.free_port(), lab.free_port()
    listens = [
        ("imaps", {"address": "127.0.0.1:%d" % imaps_port, "tls": "implicit",
                   "cert": make_mux.cert, "key": make_mux.key}),
        ("plain", {"address": "127.0.0.1:%d" % plain_port, "tls": "none",
                   "allow_plaintext_auth": True}),
    ]
    im = {"workers": 2, "stats_listen": "127.0.0.1:%d" % stats_port, "auth_fail_delay": 0}
    im.update(imapmux or {})
    m = make_mux(backends=backends, listens=listens, imapmux=im, redis=redis,
                 routing=routing or {"lookup": "static", "fallback": backends[0][0]})
    m.imaps_port, m.plain_port, m.stats_port = imaps_port, plain_port, stats_port
    lab.wait_listening(stats_port, timeout=10, proc=m.proc)
    return m


def quiet_backend(dv, **extra):
    """backend_section(dv) with no health checks, no kept sessions and no
    pool: imapmux holds a connection to dv only while a session uses it."""
    kv = {"check_interval": 0, "reuse_ttl": 0, "pool_min_idle": 0}
    kv.update(extra)
    return backend_section(dv, **kv)


def redis_routes(redis, prefix, **routes):
    """Routing through Redis (fallback = deny, so that only the routes set
    here serve anyone); routes: user=backend name."""
    for user, name in routes.items():
        set_route(redis, prefix, user, name)
    return {"lookup": "redis", "fallback": "deny"}, redis_section(redis, prefix)


# ---------------------------------------------------------------------------
# evidence from outside the process

def fds(m):
    return len(os.listdir("/proc/%d/fd" % m.pid))


def settled_fds(m, timeout=5.0):
    """imapmux's fd count once it stops moving (two samples 0.3 s apart)."""
    deadline = time.monotonic() + timeout
    prev = fds(m)
    while True:
        time.sleep(0.3)
        cur = fds(m)
        if cur == prev or time.monotonic() > deadline:
            return max(cur, prev)
        prev = cur


def wait_fds(m, base, timeout=10.0):
    wait_until(lambda: fds(m) <= base, timeout,
               lambda: "imapmux holds %d fds, baseline %d" % (fds(m), base))


def metric(m, name):
    return scrape_metrics(m.stats_port).get(name)


def wait_no_sessions(m, timeout=10.0):
    """imapmux_sessions and imapmux_sessions_proxying back to 0."""
    wait_until(lambda: metric(m, "imapmux_sessions") == 0
               and metric(m, "imapmux_sessions_proxying") == 0, timeout,
               lambda: "sessions %s, proxying %s" % (metric(m, "imapmux_sessions"),
                                                     metric(m, "imapmux_sessions_proxying")))


@pytest.fixture(scope="module", autouse=True)
def _nofile():
    """The flood test holds 5,000 sockets here and as many in imapmux."""
    yield from raise_nofile()


def mux_conns_to(m, port):
    """Number of sockets imapmux holds to 127.0.0.1:port (any state but
    LISTEN)."""
    return sum(1 for _, st in socks_to(m.pid, port) if st != "0A")


def inbox(dv, user):
    """[(uid, RFC822.SIZE)] of user's INBOX, asked of Dovecot directly."""
    c = dv.imap(user)
    try:
        typ, data = c.select("INBOX", readonly=True)
        assert typ == "OK", data
        if int(data[0]) == 0:
            return []
        typ, data = c.fetch("1:*", "(UID RFC822.SIZE)")
        assert typ == "OK", data
        out = []
        for d in data:
            d = d if isinstance(d, bytes) else d[0]
            mu = re.search(rb"UID (\d+)", d)
            ms = re.search(rb"RFC822\.SIZE (\d+)", d)
            out.append((int(mu.group(1)), int(ms.group(1))))
        return out
    finally:
        c.logout()


def fetch_direct(dv, user, uid):
    c = dv.imap(user, timeout=60)
    try:
        c.select("INBOX", readonly=True)
        typ, data = c.uid("FETCH", str(uid), "(BODY.PEEK[])")
        assert typ == "OK", data
        return [d for d in data if isinstance(d, tuple)][0][1]
    finally:
        c.logout()


# ---------------------------------------------------------------------------
# clients

def client(m, ca_ctx, tls=True, timeout=TIMEOUT):
    c = imapc.Client(m.imaps_port if tls else m.plain_port, tls=ca_ctx if tls else None,
                     timeout=timeout)
    c.greeting()
    return c


def login(m, ca_ctx, user, pw=None, tls=True, timeout=TIMEOUT):
    c = client(m, ca_ctx, tls=tls, timeout=timeout)
    c.login(user, pw or password(user))
    return c


def round_trip(m, ca_ctx, user, pw=None):
    """LOGIN, NOOP, LOGOUT through m; the time it took."""
    t0 = time.monotonic()
    with login(m, ca_ctx, user, pw) as c:
        _, tagged = c.cmd("n", "NOOP")
        assert tagged.startswith(b"n OK"), tagged
        _, tagged = c.cmd("o", "LOGOUT")
        assert tagged.startswith(b"o OK"), tagged
    return time.monotonic() - t0


def half_close(sock):
    """shutdown(SHUT_WR) of the TCP socket under sock. For a TLS socket the
    TLS layer stays usable for reading (ssl.SSLSocket.shutdown would drop
    it), so the answer can still be read and decrypted."""
    if isinstance(sock, ssl.SSLSocket):
        super(ssl.SSLSocket, sock).shutdown(socket.SHUT_WR)
    else:
        sock.shutdown(socket.SHUT_WR)


def reset_close(sock):
    """Close with an RST (SO_LINGER 0), as a crashed client's kernel does."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    sock.close()


def send_until_error(c, data, chunk=256 * 1024):
    """Send data in chunks until all went or the connection broke (the
    server closed it); returns the number of bytes sent."""
    sent = 0
    for i in range(0, len(data), chunk):
        try:
            c.send(data[i:i + chunk])
        except (BrokenPipeError, ConnectionResetError, ssl.SSLError, OSError):
            return sent
        sent += len(data[i:i + chunk])
    return sent


# ---------------------------------------------------------------------------
# the fake backend

class FakeConn:
    def __init__(self, sock):
        self.sock = sock
        self.lines = []          # command lines received
        self.peer_closed = None  # monotonic time imapmux closed its side
        self.stalled = False     # went silent on purpose


class FakeBackend:
    """A deliberately minimal IMAP responder -- NOT an IMAP server. It knows
    exactly what these tests need: a greeting, CAPABILITY, imapmux's login
    (AUTHENTICATE PLAIN with SASL-IR or LOGIN, under imapmux's internal tags;
    any credentials are accepted), LOGOUT, and `tag OK` for every other command line (no
    command literals). The fault is chosen by mode:

      stall_caps   the greeting carries no capabilities, and CAPABILITY gets
                   half a line; then silence, the socket open
      stall_fetch  a FETCH gets `* 1 FETCH (BODY[] {literal}` and half the
                   literal's bytes; then silence, the socket open
      halfclose    XHALFCLOSE is answered `tag OK`, then the fake shuts its
                   side down for writing (no BYE) and keeps reading

    Each connection records its command lines and when imapmux closed it."""

    CAPS = b"IMAP4rev1 SASL-IR AUTH=PLAIN LITERAL+ IDLE"

    def __init__(self, mode, literal=100000, lifetime=120.0):
        self.mode = mode
        self.literal = literal
        self.lifetime = lifetime
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.conns = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def section(self, **extra):
        kv = {"address": "127.0.0.1:%d" % self.port, "tls": "none", "check_interval": 0,
              "reuse_ttl": 0, "connect_timeout": "2s", "command_timeout": "3s"}
        kv.update(extra)
        return kv

    def _accept(self):
        self.sock.settimeout(0.2)
        while not self.stopping.is_set():
            try:
                s, _ = self.sock.accept()
            except OSError:
                continue
            fc = FakeConn(s)
            self.conns.append(fc)
            t = threading.Thread(target=self._serve, args=(fc,), daemon=True)
            self.threads.append(t)
            t.start()

    def _serve(self, fc):
        s = fc.sock
        s.settimeout(0.2)
        deadline = time.monotonic() + self.lifetime
        buf = b""
        try:
            if self.mode == "stall_caps":
                s.sendall(b"* OK fake backend ready\r\n")
            else:
                s.sendall(b"* OK [CAPABILITY " + self.CAPS + b"] fake backend ready\r\n")
            while not self.stopping.is_set() and time.monotonic() < deadline:
                try:
                    data = s.recv(65536)
                except socket.timeout:
                    continue
                except OSError:
                    data = b""
                if not data:
                    fc.peer_closed = time.monotonic()
                    return
                if fc.stalled:
                    continue
                buf += data
                while b"\r\n" in buf and not fc.stalled:
                    line, buf = buf.split(b"\r\n", 1)
                    fc.lines.append(line)
                    if self._answer(fc, line) == "close":
                        fc.peer_closed = fc.peer_closed or time.monotonic()
                        return
        except OSError:
            pass
        finally:
            s.close()

    def _answer(self, fc, line):
        parts = line.split(b" ", 2)
        tag = parts[0]
        cmd = parts[1].upper() if len(parts) > 1 else b""
        s = fc.sock
        try:
            if cmd == b"CAPABILITY":
                if self.mode == "stall_caps":
                    s.sendall(b"* CAPABILITY IMAP4rev1 AUTH=PL")
                    fc.stalled = True
                    return None
                s.sendall(b"* CAPABILITY " + self.CAPS + b"\r\n" + tag + b" OK done\r\n")
            elif cmd in (b"AUTHENTICATE", b"LOGIN"):
                s.sendall(tag + b" OK [CAPABILITY IMAP4rev1 LITERAL+ IDLE] logged in\r\n")
            elif cmd == b"LOGOUT":
                s.sendall(b"* BYE fake backend logging out\r\n" + tag + b" OK done\r\n")
                return "close"
            elif cmd == b"FETCH" and self.mode == "stall_fetch":
                s.sendall(b"* 1 FETCH (BODY[] {%d}\r\n" % self.literal
                          + b"x" * (self.literal // 2))
                fc.stalled = True
            elif cmd == b"XHALFCLOSE" and self.mode == "halfclose":
                s.sendall(tag + b" OK half-closing now\r\n")
                s.shutdown(socket.SHUT_WR)
                fc.stalled = True
            else:
                s.sendall(tag + b" OK done\r\n")
        except OSError:
            return "close"
        return None

    def close(self):
        self.stopping.set()
        for t in self.threads:
            t.join(2)
        for fc in self.conns:
            try:
                fc.sock.close()
            except OSError:
                pass
        self.sock.close()


@pytest.fixture
def fakes():
    made = []

    def make(mode, **kw):
        f = FakeBackend(mode, **kw)
        made.append(f)
        return f
    yield make
    for f in made:
        f.close()


# ---------------------------------------------------------------------------
# 1. the backend dies in the middle of a 20 MB FETCH

def _check_killed_fetch_stream(body, msg):
    """body: everything after the FETCH's `{n}` line up to the close. The
    literal's bytes must be a prefix of the message (nothing injected into
    or altered in the literal); once the stream is at a response boundary,
    imapmux must end it with `* BYE [UNAVAILABLE]`. Returns where the
    stream was cut: "mid-literal", "mid-line" or "at a boundary"."""
    n = len(msg)
    lit = body[:n]
    if lit != msg[:len(lit)]:
        i = next(k for k in range(len(lit)) if lit[k] != msg[k])
        pytest.fail("the literal differs from the message at byte %d of %d: %r"
                    % (i, len(lit), lit[i:i + 60]))
    if len(body) < n:
        return "mid-literal"
    after = body[n:]
    if not after.startswith(b")\r\n"):
        assert b")\r\n".startswith(after), after[:200]
        return "mid-literal"
    complete, _, partial = after[3:].rpartition(b"\r\n")
    if partial:
        return "mid-line"   # the tagged line was cut: no BYE fits
    lines = complete.split(b"\r\n") if complete else []
    assert lines and lines[-1].startswith(b"* BYE [UNAVAILABLE]"), \
        "stream at a response boundary but no BYE [UNAVAILABLE] at its end: %r" % after[:300]
    return "at a boundary"


def test_backend_killed_during_20mb_fetch(make_mux, fresh_dovecot, dovecot, redis, prefix,
                                          ca_ctx):
    """Dovecot SIGKILLed (whole process group) while a 20 MB literal streams
    through imapmux to a client: the client gets an intact prefix of the
    message and then the close (with BYE [UNAVAILABLE] if the stream got to a
    response boundary), within seconds. A session on another Dovecot stays
    usable throughout, new logins to the dead backend get NO [UNAVAILABLE]
    at once, and after a restart the message is fetched whole again."""
    user, other = "killed", "alice"
    msg = make_message(BIG, seed=11)
    uid = fresh_dovecot.append(user, msg)
    routing, rsec = redis_routes(redis, prefix, **{user: "a", other: "b"})
    m = start(make_mux, [("a", quiet_backend(fresh_dovecot)), ("b", quiet_backend(dovecot))],
              routing=routing, redis=rsec)
    with login(m, ca_ctx, other) as bystander, login(m, ca_ctx, user, timeout=30) as c:
        _, tagged = bystander.cmd("s", "SELECT INBOX")
        assert tagged.startswith(b"s OK"), tagged
        _, tagged = c.cmd("s", "SELECT INBOX")
        assert tagged.startswith(b"s OK"), tagged
        c.cmd_send("f", "UID FETCH %d (BODY.PEEK[])" % uid)
        head = c.readline()
        assert head.startswith(b"* ") and head.endswith(b"{%d}\r\n" % len(msg)), head
        first = c.read_exact(MIB)
        fresh_dovecot.kill_hard()
        t0 = time.monotonic()
        try:
            rest = c.expect_closed(15)
        except imapc.Timeout:
            pytest.fail("client connection still open 15s after the backend was killed")
        closed_after = time.monotonic() - t0
        where = _check_killed_fetch_stream(first + rest, msg)
        print("killed at %.1f MiB into the literal; client got %.1f MiB; cut %s; closed "
              "after %.2fs" % (len(first) / MIB, (len(first) + len(rest)) / MIB, where,
                               closed_after))

        # The other session never noticed.
        _, tagged = bystander.cmd("n", "NOOP")
        assert tagged.startswith(b"n OK"), tagged
        wait_until(lambda: metric(m, "imapmux_backend_lost_total") == 1, 5,
                   lambda: "backend_lost_total %s" % metric(m, "imapmux_backend_lost_total"))
        assert metric(m, "imapmux_sessions_proxying") == 1

        # The dead backend: refused at once, not after a hang.
        with client(m, ca_ctx) as d:
            t0 = time.monotonic()
            _, tagged = d.cmd("l", "LOGIN %s %s" % (user, password(user)))
            assert tagged.startswith(b"l NO [UNAVAILABLE]"), tagged
            assert time.monotonic() - t0 < 3

        lab.wait_closed(fresh_dovecot.port, timeout=10)
        fresh_dovecot.start()
        with login(m, ca_ctx, user, timeout=60) as again:
            _, tagged = again.cmd("s", "SELECT INBOX")
            assert tagged.startswith(b"s OK"), tagged
            untagged, tagged = again.cmd("f", "UID FETCH %d (BODY.PEEK[])" % uid, timeout=60)
            assert tagged.startswith(b"f OK"), tagged
            got = [r for r in untagged if b" FETCH " in r[:30]]
            assert len(got) == 1 and got[0].split(b"}\r\n", 1)[1][:len(msg)] == msg
        _, tagged = bystander.cmd("n", "NOOP")
        assert tagged.startswith(b"n OK"), tagged
    wait_no_sessions(m)
    assert m.alive()


# ---------------------------------------------------------------------------
# 2. the backend dies in the middle of a 20 MB APPEND

@pytest.mark.parametrize("literal", ["sync", "nonsync"])
def test_backend_killed_during_20mb_append(make_mux, fresh_dovecot, ca_ctx, literal):
    """Dovecot SIGKILLed after 6 MB of a 20 MB APPEND literal: the client
    gets `* BYE [UNAVAILABLE]` (the server side of the stream is at a
    response boundary) and the close, never an OK; after a restart the
    mailbox holds the whole message or none of it."""
    user = "killed2"
    msg = make_message(BIG, seed=12 if literal == "sync" else 13)
    before = inbox(fresh_dovecot, user)
    m = start(make_mux, [("a", quiet_backend(fresh_dovecot))])
    base = settled_fds(m)
    with login(m, ca_ctx, user, timeout=15) as c:
        if literal == "sync":
            c.send(b"a APPEND INBOX {%d}\r\n" % len(msg))
            cont = c.readline()
            assert cont.startswith(b"+"), cont
        else:
            c.send(b"a APPEND INBOX {%d+}\r\n" % len(msg))
        first = 6 * MIB
        assert send_until_error(c, msg[:first]) == first
        fresh_dovecot.kill_hard()
        t0 = time.monotonic()
        sent = first + send_until_error(c, msg[first:])
        try:
            got = c.expect_closed(15)
        except imapc.Timeout:
            pytest.fail("client connection still open 15s after the backend was killed "
                        "(%d of %d bytes sent)" % (sent, len(msg)))
        closed_after = time.monotonic() - t0
    lines = got.split(b"\r\n")
    assert not [x for x in lines if x.startswith(b"a OK")], got
    assert [x for x in lines if x.startswith(b"* BYE [UNAVAILABLE]")
            or x.startswith(b"a NO")], "no BYE [UNAVAILABLE] or NO before the close: %r" % got
    print("client sent %.1f MiB of %.1f; closed %.2fs after the kill"
          % (sent / MIB, len(msg) / MIB, closed_after))
    wait_no_sessions(m)
    wait_fds(m, base)

    lab.wait_closed(fresh_dovecot.port, timeout=10)
    fresh_dovecot.start()
    after = inbox(fresh_dovecot, user)
    new = [x for x in after if x not in before]
    assert len(new) <= 1 and len(after) == len(before) + len(new), (before, after)
    if new:
        assert new[0][1] == len(msg), "a partial message was stored: %r" % (new,)
        assert fetch_direct(fresh_dovecot, user, new[0][0]) == msg
    assert m.alive()


# ---------------------------------------------------------------------------
# 3. a backend that stalls before the login is answered

def _stuck_login(m, ca_ctx, user, out):
    """Thread body: one login through m; stores (tagged line or exception,
    seconds, monotonic time of the answer) in out."""
    try:
        with client(m, ca_ctx, timeout=30) as c:
            t0 = time.monotonic()
            _, tagged = c.cmd("l", "LOGIN %s %s" % (user, password(user)), timeout=30)
            out["tagged"], out["elapsed"], out["at"] = tagged, time.monotonic() - t0, \
                time.monotonic()
            _, tagged = c.cmd("n", "NOOP")
            out["noop"] = tagged
    except Exception as e:  # noqa: BLE001 -- reported by the test
        out["error"] = repr(e)


def _logins_meanwhile(m, ca_ctx, user, stuck, n=3):
    """n LOGIN/NOOP/LOGOUT round trips of user while the thread stuck is
    still waiting for its answer; their latencies."""
    lat = []
    for _ in range(n):
        lat.append(round_trip(m, ca_ctx, user))
    assert stuck.is_alive(), "the stalled login was answered before the other logins ended"
    return lat


def _dovecot_auth_pid(dv):
    """The pid of Dovecot's auth process (comm "auth", not auth-worker)."""
    for pid in dv.proc.group_pids():
        try:
            with open("/proc/%d/comm" % pid) as f:
                comm = f.read().strip()
        except OSError:
            continue
        if comm == "auth":
            return pid
    return None


def test_backend_stalls_mid_capability(make_mux, dovecot, redis, prefix, ca_ctx, fakes):
    """A backend that greets without capabilities and then sends half of
    its CAPABILITY answer, the socket staying open (test_backend.py covers
    one that never greets): connect_timeout (3 s, which covers the greeting
    and the capabilities) ends the wait with NO [UNAVAILABLE] -- not
    earlier, not much later -- and imapmux drops that connection. Logins to
    a good backend on the same (single) worker go on meanwhile."""
    fake = fakes("stall_caps")
    routing, rsec = redis_routes(redis, prefix, frank="stall", grace="good")
    m = start(make_mux, [("good", quiet_backend(dovecot)),
                         ("stall", fake.section(connect_timeout="3s", command_timeout="6s"))],
              routing=routing, redis=rsec, imapmux={"workers": 1})
    round_trip(m, ca_ctx, "grace")
    base = settled_fds(m)
    out = {}
    t = threading.Thread(target=_stuck_login, args=(m, ca_ctx, "frank", out), daemon=True)
    t.start()
    wait_until(lambda: fake.conns and fake.conns[0].stalled, 5, "imapmux asked CAPABILITY")
    lat = _logins_meanwhile(m, ca_ctx, "grace", t)
    t.join(20)
    assert "error" not in out, out
    assert out["tagged"].startswith(b"l NO [UNAVAILABLE]"), out
    assert 2.8 <= out["elapsed"] <= 7.0, "answered after %.2fs, connect_timeout = 3s" % (
        out["elapsed"])
    assert out["noop"].startswith(b"n OK"), out
    assert max(lat) < 2.0, "logins to the good backend took %s s" % lat
    # One CAPABILITY, under one of imapmux's internal tags (backend.h).
    lines = fake.conns[0].lines
    assert len(lines) == 1 and re.fullmatch(rb"imapmux\.[0-9]+ CAPABILITY", lines[0]), lines
    wait_until(lambda: fake.conns[0].peer_closed, 5, "imapmux closed the stalled connection")
    wait_no_sessions(m)
    wait_fds(m, base)


def test_backend_login_answer_stalls(make_mux, fresh_dovecot, dovecot, redis, prefix, ca_ctx):
    """A real Dovecot whose auth process is stopped (SIGSTOP): it greets, and
    then the answer to the login never comes. command_timeout (4 s) ends the
    wait with NO [UNAVAILABLE] -- after connect_timeout (2 s) has passed, so
    the right timer fired -- imapmux drops that backend connection, logins
    to another Dovecot go on meanwhile, and after SIGCONT logins to this one
    work again."""
    routing, rsec = redis_routes(redis, prefix, heidi="slow", ivan="good")
    m = start(make_mux, [("good", quiet_backend(dovecot)),
                         ("slow", quiet_backend(fresh_dovecot, connect_timeout="2s",
                                                command_timeout="4s"))],
              routing=routing, redis=rsec, imapmux={"workers": 1})
    round_trip(m, ca_ctx, "heidi")
    round_trip(m, ca_ctx, "ivan")
    base = settled_fds(m)
    auth = _dovecot_auth_pid(fresh_dovecot)
    assert auth, "no dovecot/auth process in %s" % fresh_dovecot.proc.group_pids()
    os.kill(auth, 19)   # SIGSTOP
    try:
        out = {}
        t = threading.Thread(target=_stuck_login, args=(m, ca_ctx, "heidi", out), daemon=True)
        t.start()
        wait_until(lambda: mux_conns_to(m, fresh_dovecot.port) == 1, 5,
                   "imapmux connected to the stalled Dovecot")
        lat = _logins_meanwhile(m, ca_ctx, "ivan", t)
        t.join(20)
        assert "error" not in out, out
        assert out["tagged"].startswith(b"l NO [UNAVAILABLE]"), out
        assert 3.8 <= out["elapsed"] <= 8.0, "answered after %.2fs, command_timeout = 4s" % (
            out["elapsed"])
        assert out["noop"].startswith(b"n OK"), out
        assert max(lat) < 2.0, "logins to the good backend took %s s" % lat
        wait_until(lambda: mux_conns_to(m, fresh_dovecot.port) == 0, 5,
                   "imapmux dropped its connection to the stalled Dovecot")
    finally:
        os.kill(auth, 18)   # SIGCONT
    deadline = time.monotonic() + 10
    while True:
        try:
            round_trip(m, ca_ctx, "heidi")
            break
        except AssertionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
    wait_no_sessions(m)
    wait_fds(m, base)


# ---------------------------------------------------------------------------
# 4. a backend that stalls in the middle of a literal

@pytest.mark.parametrize("end", ["idle_timeout", "client_logout_and_close"])
def test_backend_stalls_mid_literal(make_mux, dovecot, redis, prefix, ca_ctx, fakes, end):
    """The fake backend sends half of a FETCH literal and goes silent, its
    socket open. The client's session ends by idle_timeout (3 s after the
    client last sent anything, with nothing injected into the literal), or,
    when the client sends LOGOUT and closes, once the backend's
    command_timeout (3 s) passes with no answer coming (a closed socket
    looks like a half-closed one, which is still owed its answers) -- well
    before idle_timeout (60 s). Either way imapmux closes the backend
    connection and frees everything. Other sessions on the same worker keep
    working during the stall."""
    fake = fakes("stall_fetch", literal=100000)
    idle = 3 if end == "idle_timeout" else 60
    routing, rsec = redis_routes(redis, prefix, judy="fake", erin="good")
    m = start(make_mux, [("good", quiet_backend(dovecot)), ("fake", fake.section())],
              routing=routing, redis=rsec, imapmux={"workers": 1, "idle_timeout": idle})
    round_trip(m, ca_ctx, "erin")
    base = settled_fds(m)
    c = login(m, ca_ctx, "judy", timeout=20)
    try:
        t_sent = time.monotonic()
        c.cmd_send("f", "FETCH 1 BODY[]")
        head = c.readline()
        assert head == b"* 1 FETCH (BODY[] {100000}\r\n", head
        c.read_exact(50000)
        with pytest.raises(imapc.Timeout):
            c.read_exact(1, timeout=0.5)
        lat = [round_trip(m, ca_ctx, "erin") for _ in range(3)]
        assert max(lat) < 2.0, "other sessions took %s s during the stall" % lat
        assert fake.conns[0].peer_closed is None
        if end == "idle_timeout":
            try:
                rest = c.expect_closed(idle + 5)
            except imapc.Timeout:
                pytest.fail("session still open %ds after the stall (idle_timeout = %ds)"
                            % (idle + 5, idle))
            elapsed = time.monotonic() - t_sent
            assert elapsed >= idle - 0.5, "closed after %.2fs, idle_timeout = %ds" % (elapsed,
                                                                                     idle)
            assert rest == b"", "bytes after the stall (inside the literal): %r" % rest[:200]
        else:
            c.send(b"o LOGOUT\r\n")
            time.sleep(0.2)
            c.close()
            t_sent = time.monotonic()
        wait_until(lambda: fake.conns[0].peer_closed, 8,
                   "imapmux closed its connection to the stalled backend")
        if end != "idle_timeout":
            waited = fake.conns[0].peer_closed - t_sent
            assert waited < 6, "backend closed %.2fs after the client left " \
                "(command_timeout = 3s)" % waited
        wait_no_sessions(m)
        wait_fds(m, base)
    finally:
        c.close()
    assert m.alive()


# ---------------------------------------------------------------------------
# 5. Redis killed and restarted under login load

LOAD_USERS = USERS_R[:3]


def _load_worker(m, ca_ctx, user, pw, stop, results, until):
    """Thread body: LOGIN (literals), NOOP and LOGOUT on OK, again and again
    until stop is set or the hard deadline until; appends (start, end,
    answer) to results, answer being "OK", "UNAVAILABLE", the tagged line,
    or the exception."""
    while not stop.is_set() and time.monotonic() < until:
        t0 = time.monotonic()
        try:
            with connect(m.imaps_port, ca_ctx, timeout=8) as c:
                _, tagged = c.cmd("l", login_cmd(user, pw), timeout=8)
                if tagged.startswith(b"l OK [CAPABILITY "):
                    answer = "OK"
                    _, t = c.cmd("n", "NOOP")
                    if not t.startswith(b"n OK"):
                        answer = "NOOP: %r" % t
                    c.cmd("o", "LOGOUT")
                elif tagged.startswith(b"l NO [UNAVAILABLE]"):
                    answer = "UNAVAILABLE"
                else:
                    answer = repr(tagged)
        except Exception as e:  # noqa: BLE001 -- every failure is a result
            answer = "exception: %r" % e
        results.append((t0, time.monotonic(), answer))
        time.sleep(0.1)


@pytest.mark.slow
@pytest.mark.parametrize("auth", ["redis", "backend"])
def test_redis_killed_and_restarted_under_login_load(make_mux, fresh_redis, prefix, rdv_a,
                                                     ca_ctx, auth):
    """Three clients log in over and over while Redis is SIGKILLed and, 3 s
    later, started again (empty, then re-seeded). auth = redis: logins during
    the outage get NO [UNAVAILABLE] (README "Redis down"); auth = backend with
    lookup = redis and cache_ttl = 0 (every login asks Redis): they go on
    through the fallback. Never a wrong answer, never a wait past the Redis
    timeout (500 ms) plus slack, never a crash; after the restart every
    login succeeds again once the reconnect backoff (at most 5 s) is over."""
    r = fresh_redis
    pws = {u: (rd_password(u) if auth == "redis" else dv_password(u)) for u in LOAD_USERS}
    hashes = {u: crypt_hash(rd_password(u)) for u in LOAD_USERS} if auth == "redis" else {}

    def seed():
        for u in LOAD_USERS:
            set_route(r, prefix, u, "a")
            if auth == "redis":
                set_password(r, prefix, u, hashes[u])
    seed()
    m = make_mux(backends=[("a", backend(rdv_a, check_interval=0))],
                 routing={"lookup": "redis", "fallback": "a", "cache_ttl": 0},
                 redis=redis_section(r, prefix, timeout="500ms"),
                 imapmux={"workers": 2, "auth": auth, "auth_fail_delay": 0})
    stop = threading.Event()
    results = []
    until = time.monotonic() + 40
    threads = [threading.Thread(target=_load_worker,
                                args=(m, ca_ctx, u, pws[u], stop, results, until), daemon=True)
               for u in LOAD_USERS]
    for t in threads:
        t.start()
    try:
        time.sleep(2.0)
        t_kill = time.monotonic()
        r.proc.kill_hard()
        time.sleep(3.0)
        t_restart = time.monotonic()
        restart_redis(r)
        seed()
        t_up = time.monotonic()
        # Run on until every login has succeeded for 2 s past the backoff bound.
        wait_until(lambda: any(s > t_up + 6 for s, _, _ in results), 15,
                   "logins go on after the restart")
        time.sleep(2.0)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
    assert not [t for t in threads if t.is_alive()], "a load thread hangs"
    assert m.alive()

    def window(lo, hi):
        return [(s, e, a) for s, e, a in results if s >= lo and e <= hi]
    before = window(0, t_kill)
    outage = window(t_kill + 1.0, t_restart)
    after = window(t_up + 6.0, float("inf"))
    summary = "%d before, %d during, %d after; answers: %s" % (
        len(before), len(outage), len(after),
        sorted({a for _, _, a in results}))
    print(summary)
    assert len(before) >= 3 and len(outage) >= 3 and len(after) >= 3, summary
    odd = [a for _, _, a in results if a not in ("OK", "UNAVAILABLE")]
    assert not odd, "wrong answers or errors: %r" % odd[:5]
    slow = [(round(e - s, 2), a) for s, e, a in results if e - s > 4.0]
    assert not slow, "logins that took longer than the Redis timeout plus slack: %r" % slow
    assert all(a == "OK" for _, _, a in before), before
    if auth == "redis":
        assert all(a == "UNAVAILABLE" for _, _, a in outage), outage
    else:
        assert all(a == "OK" for _, _, a in outage), outage
    assert all(a == "OK" for _, _, a in after), after
    first_ok = min((s for s, _, a in results if s > t_up and a == "OK"), default=None)
    assert first_ok is not None and first_ok - t_up < 6, "no login succeeded soon after Redis " \
        "came back (%s)" % (first_ok and first_ok - t_up)


# ---------------------------------------------------------------------------
# 6. thousands of idle pre-login connections (slowloris)

def _client_hello():
    """The bytes of a real TLS ClientHello (made with a memory BIO)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    outgoing = ssl.MemoryBIO()
    obj = ctx.wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname="localhost")
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def _flood(m, port, n, batch, payload, logins, ca_ctx, user):
    """Open n connections to port in batches, each sending payload(i) (or
    nothing); after each batch one timed login through m's TLS listener.
    Returns ([(sock, opened_at)], [login seconds])."""
    flood, lat = [], []
    try:
        for start_i in range(0, n, batch):
            for i in range(start_i, min(n, start_i + batch)):
                s = socket.create_connection(("127.0.0.1", port), timeout=5)
                data = payload(i)
                if data:
                    s.sendall(data)
                flood.append((s, time.monotonic()))
            if logins:
                lat.append(round_trip(m, ca_ctx, user))
    except BaseException:
        for s, _ in flood:
            s.close()
        raise
    return flood, lat


def _wait_flood_closed(flood, preauth, slack):
    """Poll the flood's sockets until imapmux has closed each (FIN or RST);
    returns {index: seconds from open to close}. Fails if one is still open
    preauth + slack after it was opened."""
    p = select.poll()
    by_fd = {}
    for i, (s, _) in enumerate(flood):
        p.register(s.fileno(), select.POLLRDHUP)
        by_fd[s.fileno()] = i
    closed = {}
    deadline = max(t for _, t in flood) + preauth + slack
    while len(closed) < len(flood) and time.monotonic() < deadline:
        for fd, ev in p.poll(100):
            if ev & (select.POLLRDHUP | select.POLLHUP | select.POLLERR):
                i = by_fd[fd]
                closed[i] = time.monotonic() - flood[i][1]
                p.unregister(fd)
    assert len(closed) == len(flood), "%d of %d idle connections still open %.0fs after " \
        "preauth_timeout" % (len(flood) - len(closed), len(flood), slack)
    return closed


@pytest.mark.slow
def test_5000_idle_preauth_connections(make_mux, dovecot, ca_ctx):
    """5,000 plaintext connections that stay silent (half of them after half
    a LOGIN line), opened in batches of 500: during the flood every one of
    20 logins through the TLS listener succeeds with a bounded latency (no
    starvation); preauth_timeout (6 s) closes each idle connection, not
    before its time; imapmux's descriptors and session gauge come back to
    their baseline."""
    n, preauth = 5000, 6
    m = start(make_mux, [("a", quiet_backend(dovecot))], imapmux={"preauth_timeout": preauth})
    quiet = round_trip(m, ca_ctx, "dave")
    base = settled_fds(m)
    flood = []
    try:
        flood, lat = _flood(m, m.plain_port, n, 500,
                            lambda i: b"a1 LOGIN da" if i % 2 else None, True, ca_ctx, "dave")
        opened = time.monotonic() - flood[0][1]
        wait_until(lambda: fds(m) >= base + n, 5,
                   lambda: "imapmux holds %d fds for %d connections (baseline %d)"
                   % (fds(m), n, base))
        peak = fds(m)
        lat += [round_trip(m, ca_ctx, "dave") for _ in range(10)]
        still = fds(m)
        print("opened %d in %.1fs; quiet login %.3fs; logins during the flood: max %.3fs, "
              "mean %.3fs; fds %d -> %d" % (n, opened, quiet, max(lat), sum(lat) / len(lat),
                                            base, peak))
        assert opened < preauth - 1, "opening the flood took %.1fs: not all at once" % opened
        assert still >= base + n - 50, "the flood was gone before the logins ended"
        assert max(lat) < 3.0, "a login took %.2fs during the flood: %r" % (max(lat), lat)
        closed = _wait_flood_closed(flood, preauth, 10)
        early = sorted(t for t in closed.values() if t < preauth - 0.5)
        assert not early, "%d closed before preauth_timeout: %r" % (len(early), early[:5])
    finally:
        for s, _ in flood:
            s.close()
    wait_fds(m, base, timeout=15)
    wait_no_sessions(m)
    assert m.alive()


@pytest.mark.slow
def test_300_unfinished_tls_handshakes(make_mux, dovecot, ca_ctx):
    """300 connections to the implicit-TLS listener that never finish the
    handshake (nothing sent, half a ClientHello, a whole ClientHello and
    then silence): logins go on meanwhile, preauth_timeout (4 s) closes
    every one of them, and imapmux's descriptors come back to baseline."""
    n, preauth = 300, 4
    hello = _client_hello()
    assert hello and hello[0] == 0x16, hello
    m = start(make_mux, [("a", quiet_backend(dovecot))], imapmux={"preauth_timeout": preauth})
    round_trip(m, ca_ctx, "dave")
    base = settled_fds(m)
    flood = []
    try:
        payloads = (None, hello[:len(hello) // 2], hello)
        flood, lat = _flood(m, m.imaps_port, n, 50, lambda i: payloads[i % 3], True, ca_ctx,
                            "dave")
        wait_until(lambda: fds(m) >= base + n, 5,
                   lambda: "imapmux holds %d fds for %d connections (baseline %d)"
                   % (fds(m), n, base))
        lat += [round_trip(m, ca_ctx, "dave") for _ in range(5)]
        assert max(lat) < 3.0, "a login took %.2fs during the flood: %r" % (max(lat), lat)
        closed = _wait_flood_closed(flood, preauth, 10)
        early = sorted(t for t in closed.values() if t < preauth - 0.5)
        assert not early, "%d closed before preauth_timeout: %r" % (len(early), early[:5])
    finally:
        for s, _ in flood:
            s.close()
    wait_fds(m, base, timeout=15)
    wait_no_sessions(m)
    assert m.alive()


# ---------------------------------------------------------------------------
# 7. clients that vanish in the middle of a literal

def test_clients_vanish_mid_literal_before_login(make_mux, dovecot, ca_ctx):
    """40 clients announce a LOGIN literal ({n} answered by `+`, or {n+}),
    send part of it and vanish (close, or RST), on the plaintext and the TLS
    listener: imapmux frees every session and descriptor, and no backend is
    ever contacted for half a command."""
    m = start(make_mux, [("a", quiet_backend(dovecot))])
    round_trip(m, ca_ctx, "dave")
    base = settled_fds(m)
    before = scrape_metrics(m.stats_port)
    for i in range(40):
        tls, reset, sync = i % 2 == 0, (i // 2) % 2 == 0, (i // 4) % 2 == 0
        c = client(m, ca_ctx, tls=tls)
        try:
            if sync:
                c.send(b"a LOGIN {12}\r\n")
                cont = c.readline()
                assert cont.startswith(b"+"), cont
            else:
                c.send(b"a LOGIN {12+}\r\n")
            c.send(b"dav")
        finally:
            if reset:
                reset_close(c.sock)
                c.sock = None
            c.close()
    wait_no_sessions(m)
    wait_fds(m, base)
    after = scrape_metrics(m.stats_port)
    for name in ("imapmux_backend_connects_total", "imapmux_backend_logins_total"):
        assert after[name] == before[name], (name, before[name], after[name])
    assert after["imapmux_connections_total"] == before["imapmux_connections_total"] + 40
    assert m.alive()


@pytest.mark.parametrize("how", ["close", "reset"])
def test_client_vanishes_mid_append(make_mux, dovecot, ca_ctx, how):
    """A logged-in client sends 5 MB of a 20 MB APPEND literal and vanishes
    (close, or RST): imapmux frees the session and closes its backend
    connection (Dovecot logs the disconnect in APPEND), the mailbox gains
    nothing, descriptors come back to baseline, and the user's next session
    works."""
    user = {"close": "grace", "reset": "heidi"}[how]
    msg = make_message(BIG, seed=21)
    m = start(make_mux, [("a", quiet_backend(dovecot))])
    round_trip(m, ca_ctx, "dave")
    base = settled_fds(m)
    before = inbox(dovecot, user)
    mark = len(dovecot.log_text())
    c = login(m, ca_ctx, user, timeout=15)
    try:
        c.send(b"a APPEND INBOX {%d}\r\n" % len(msg))
        cont = c.readline()
        assert cont.startswith(b"+"), cont
        assert send_until_error(c, msg[:5 * MIB]) == 5 * MIB
        wait_until(lambda: metric(m, "imapmux_sessions_proxying") == 1, 5, "session proxying")
    finally:
        if how == "reset":
            reset_close(c.sock)
            c.sock = None
        c.close()
    wait_no_sessions(m)
    wait_until(lambda: mux_conns_to(m, dovecot.port) == 0, 5,
               "imapmux closed its connection to Dovecot")
    pat = re.compile(r"imap\(%s\)<[^>]*><[^>]*>: (Info: )?Disconnected" % user)
    wait_until(lambda: pat.search(dovecot.log_text()[mark:]), 10,
               lambda: "Dovecot logged no disconnect of %s: %r"
               % (user, dovecot.log_text()[mark:][-1500:]))
    wait_fds(m, base)
    assert inbox(dovecot, user) == before, "the mailbox changed after a vanished APPEND"
    small = b"Subject: after the vanished append\r\n\r\nstill works\r\n"
    with login(m, ca_ctx, user) as c2:
        c2.send(b"b APPEND INBOX {%d+}\r\n%s\r\n" % (len(small), small))
        _, tagged = c2.read_until_tagged("b")
        assert tagged.startswith(b"b OK"), tagged
    after = inbox(dovecot, user)
    assert len(after) == len(before) + 1 and after[-1][1] == len(small), (before, after)
    assert m.alive()


# ---------------------------------------------------------------------------
# 8. half-closed sockets

@pytest.mark.parametrize("tls", [False, True], ids=["plain", "tls"])
def test_half_close_before_login(make_mux, dovecot, ca_ctx, tls):
    """Pre-login commands followed at once by shutdown(SHUT_WR): both are
    answered before imapmux closes, and the session ends."""
    m = start(make_mux, [("a", quiet_backend(dovecot))])
    base = settled_fds(m)
    with client(m, ca_ctx, tls=tls) as c:
        c.send(b"a1 CAPABILITY\r\na2 NOOP\r\n")
        half_close(c.sock)
        try:
            got = c.expect_closed(5)
        except imapc.Timeout:
            pytest.fail("still open 5s after the client's half-close: %r" % c.transcript)
    lines = got.split(b"\r\n")
    assert lines[0].startswith(b"* CAPABILITY "), got
    assert lines[1].startswith(b"a1 OK") and lines[2].startswith(b"a2 OK"), got
    wait_no_sessions(m)
    wait_fds(m, base)


@pytest.mark.parametrize("what", ["noop", "fetch", "append", "login_noop", "logout_kept",
                                  "idle"])
def test_half_close_after_command(make_mux, dovecot, ca_ctx, what):
    """A client (TLS) sends complete commands and shuts its side down for
    writing at once: every answer still arrives whole before imapmux closes
    -- a NOOP's OK; a 3 MB FETCH's literal and OK; the OK of a 3 MB APPEND
    whose literal was still streaming to Dovecot (and the message is
    stored); a pipelined LOGIN's and NOOP's OKs; the BYE and OK of a LOGOUT
    that imapmux takes itself (and the backend session is kept for the
    user's next login). A client in IDLE, which can never send DONE, is
    closed at once. The session ends in every case."""
    user = "judy"
    reuse = what == "logout_kept"
    # One worker: a kept session is kept by the worker that served it.
    m = start(make_mux, [("a", quiet_backend(dovecot, reuse_ttl=300 if reuse else 0))],
              imapmux={"workers": 1})
    msg = make_message(3 * MIB, seed=31)
    uid = dovecot.append(user, msg) if what == "fetch" else None
    before = inbox(dovecot, user)
    round_trip(m, ca_ctx, "dave")
    base = settled_fds(m)
    with client(m, ca_ctx, timeout=20) as c:
        if what == "login_noop":
            c.send(b"l LOGIN %s %s\r\nn NOOP\r\n" % (user.encode(), password(user).encode()))
        else:
            c.login(user, password(user))
            if what == "noop":
                c.send(b"a2 NOOP\r\n")
            elif what == "fetch":
                _, tagged = c.cmd("s", "SELECT INBOX")
                assert tagged.startswith(b"s OK"), tagged
                c.send(b"a3 UID FETCH %d (BODY.PEEK[])\r\n" % uid)
            elif what == "append":
                c.send(b"a4 APPEND INBOX {%d+}\r\n" % len(msg) + msg + b"\r\n")
            elif what == "logout_kept":
                c.send(b"o LOGOUT\r\n")
            else:
                c.send(b"t IDLE\r\n")
                cont = c.readline()
                assert cont.startswith(b"+"), cont
        t0 = time.monotonic()
        half_close(c.sock)
        try:
            got = c.expect_closed(10)
        except imapc.Timeout:
            pytest.fail("still open 10s after the client's half-close: %r" % c.transcript[-3:])
        closed_after = time.monotonic() - t0
    if what == "login_noop":
        assert re.match(rb"l OK \[CAPABILITY [^\]]*\] .*\r\nn OK .*\r\n", got, re.S), got[:500]
    elif what == "noop":
        assert re.match(rb"(\* [^\r]*\r\n)*a2 OK [^\r]*\r\n", got), got[:500]
    elif what == "fetch":
        want = b"BODY[] {%d}\r\n" % len(msg)
        assert want in got, "no FETCH literal in the answer: %r" % got[:300]
        body = got.split(want, 1)[1]
        assert body[:len(msg)] == msg, "FETCH literal cut at %d of %d bytes" % (
            min(len(body), len(msg)), len(msg))
        assert re.match(rb"\)\r\n(\* [^\r]*\r\n)*a3 OK ", body[len(msg):]), body[len(msg):][:300]
    elif what == "append":
        assert re.match(rb"(\* [^\r]*\r\n)*a4 OK ", got), got[:300]
        after = inbox(dovecot, user)
        assert len(after) == len(before) + 1 and after[-1][1] == len(msg), (before, after)
    elif what == "logout_kept":
        assert got.startswith(b"* BYE ") and b"\r\no OK " in got, got[:300]
    else:
        assert b"t OK" not in got and closed_after < 3, (closed_after, got[:300])
    if what != "logout_kept":
        wait_fds(m, base)
    wait_no_sessions(m)
    if what == "logout_kept":
        round_trip(m, ca_ctx, user)
        assert metric(m, "imapmux_sessions_reused_total") >= 1, "the kept session was not reused"
    assert m.alive()


def test_backend_half_closes(make_mux, dovecot, redis, prefix, ca_ctx, fakes):
    """A backend that answers two pipelined commands and shuts its side down
    for writing (no BYE), still reading: the client gets both answers, then
    `* BYE [UNAVAILABLE]` and the close; imapmux closes its side of the
    backend connection too (the fake sees EOF) and frees everything."""
    fake = fakes("halfclose")
    routing, rsec = redis_routes(redis, prefix, bob="fake", erin="good")
    m = start(make_mux, [("good", quiet_backend(dovecot)), ("fake", fake.section())],
              routing=routing, redis=rsec)
    round_trip(m, ca_ctx, "erin")
    base = settled_fds(m)
    with login(m, ca_ctx, "bob") as c:
        c.send(b"a NOOP\r\nb XHALFCLOSE\r\n")
        try:
            got = c.expect_closed(10)
        except imapc.Timeout:
            pytest.fail("still open 10s after the backend's half-close: %r" % c.transcript[-3:])
    lines = [x for x in got.split(b"\r\n") if x]
    assert len(lines) == 3, lines
    assert lines[0].startswith(b"a OK") and lines[1].startswith(b"b OK"), lines
    assert lines[2].startswith(b"* BYE [UNAVAILABLE]"), lines
    wait_until(lambda: fake.conns[-1].peer_closed, 5, "imapmux closed its side of the backend")
    wait_no_sessions(m)
    wait_fds(m, base)
    assert m.alive()
