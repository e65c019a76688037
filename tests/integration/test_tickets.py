"""TLS 1.3 session tickets (`tls_tickets`, `tls_ticket_lifetime`; README
"TLS session resumption"): a client that kept the ticket of its last
connection resumes (no certificate, no signature), on the listener that
issued it, and on another imapmux instance that shares the keys through
Redis; the keys in Redis are those the SPEC names; TLS 1.2 gets no ticket;
`tls_tickets = no` issues none. The clients are Python's ssl (OpenSSL's own
client): SSLSocket.session_reused says what the server did.
"""

import socket
import ssl
import subprocess
import time

import pytest

import lab
from conftest import password, scrape_metrics, wait_until
from conftest_redis import prefix, redis_section  # noqa: F401 (fixture)

USER = "tlsimpl"


def client_ctx(cert, max_version=ssl.TLSVersion.TLSv1_3):
    ctx = lab.client_context(cert)
    ctx.maximum_version = max_version
    return ctx


def connect(port, ctx, session=None):
    """A TLS connection to imapmux, its greeting read (a TLS 1.3 server's
    ticket arrives after the handshake: reading is what takes it in)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=8)
    s = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
    line = b""
    while not line.endswith(b"\r\n"):
        chunk = s.recv(4096)
        assert chunk, "closed before the greeting"
        line += chunk
    assert line.startswith(b"* OK"), line
    return s


def login(s):
    """LOGIN and LOGOUT over s, so that resumption is shown to carry a whole
    working session, not just a handshake."""
    s.sendall(b'a LOGIN %s "%s"\r\n' % (USER.encode(), password(USER).encode()))
    data = b""
    while b"a OK" not in data and b"a NO" not in data:
        chunk = s.recv(4096)
        assert chunk, data
        data += chunk
    assert b"a OK" in data, data
    s.sendall(b"b LOGOUT\r\n")
    while b"b OK" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    s.close()


def ticket(port, ctx):
    """Connect once, log in, and return the session with its ticket."""
    s = connect(port, ctx)
    sess = s.session
    assert not s.session_reused
    login(s)
    return sess


def stats_mux(make_mux, **imapmux):
    """An imapmux with a stats port (m.stats_port)."""
    port = lab.free_port()
    m = make_mux(imapmux=dict(imapmux, stats_listen="127.0.0.1:%d" % port))
    m.stats_port = port
    return m


def handshakes(m):
    got = scrape_metrics(m.stats_port)
    return (got['imapmux_tls_handshakes_total{resumed="no"}'],
            got['imapmux_tls_handshakes_total{resumed="yes"}'])


def test_resumes_with_ticket(make_mux, cert):
    m = stats_mux(make_mux)
    ctx = client_ctx(cert)
    sess = ticket(m.imaps_port, ctx)
    assert sess is not None and sess.has_ticket
    s = connect(m.imaps_port, ctx, session=sess)
    assert s.session_reused and s.version() == "TLSv1.3"
    login(s)
    # The resumed connection got a ticket of its own (single-use tickets).
    assert handshakes(m) == (1, 1)


def test_no_tickets_when_off(make_mux, cert):
    m = stats_mux(make_mux, tls_tickets="no")
    ctx = client_ctx(cert)
    s = connect(m.imaps_port, ctx)
    sess = s.session
    login(s)
    assert not sess.has_ticket
    s = connect(m.imaps_port, ctx, session=sess)
    assert not s.session_reused
    login(s)
    assert handshakes(m) == (2, 0)


def test_tls12_gets_no_ticket(make_mux, cert):
    m = stats_mux(make_mux)
    ctx = client_ctx(cert, ssl.TLSVersion.TLSv1_2)
    s = connect(m.imaps_port, ctx)
    assert s.version() == "TLSv1.2"
    sess = s.session
    login(s)
    s = connect(m.imaps_port, ctx, session=sess)
    assert not s.session_reused
    login(s)


def test_ticket_only_at_its_listener(make_mux, cert, key):
    # Two implicit-TLS listeners of one instance, same certificate: a ticket
    # from the first does not open at the second (session id context).
    p1, p2 = lab.free_port(), lab.free_port()
    listens = [(name, {"address": "127.0.0.1:%d" % p, "tls": "implicit", "cert": cert,
                       "key": key}) for name, p in (("one", p1), ("two", p2))]
    make_mux(listens=listens, ports=(p1, p2))
    ctx = client_ctx(cert)
    sess = ticket(p1, ctx)
    s = connect(p2, ctx, session=sess)
    assert not s.session_reused
    login(s)
    s = connect(p1, ctx, session=ticket(p1, ctx))
    assert s.session_reused
    login(s)


def two_instances(make_mux, redis=None, imapmux=None):
    """Two imapmux instances alike (a fleet), with stats ports."""
    out = []
    for _ in range(2):
        port = lab.free_port()
        m = make_mux(imapmux=dict(imapmux or {}, stats_listen="127.0.0.1:%d" % port),
                     redis=redis)
        m.stats_port = port
        out.append(m)
    return out


def test_fleet_shares_keys_through_redis(make_mux, cert, redis, prefix):
    a, b = two_instances(make_mux, redis=redis_section(redis, prefix))
    for m in (a, b):
        wait_until(lambda m=m: "keys shared through Redis" in m.log_text(), 10,
                   "imapmux logs that it shares the ticket keys")
    ctx = client_ctx(cert)
    sess = ticket(a.imaps_port, ctx)
    s = connect(b.imaps_port, ctx, session=sess)
    assert s.session_reused
    login(s)
    assert handshakes(b) == (0, 1)
    # SPEC: PREFIXticketkey:LIFETIME:EPOCH, 80 bytes, kept 3 lifetimes.
    keys = sorted(redis.command("KEYS", prefix + "ticketkey:*"))
    assert len(keys) == 2, keys
    epochs = [int(k.rsplit(":", 1)[1]) for k in keys]
    assert keys[0].startswith(prefix + "ticketkey:3600:") and epochs[1] == epochs[0] + 1
    for k in keys:
        assert redis.command("STRLEN", k) == 80
        assert 3 * 3600 - 60 < redis.command("TTL", k) <= 3 * 3600


def test_instances_without_redis_do_not_share(make_mux, cert):
    a, b = two_instances(make_mux)
    ctx = client_ctx(cert)
    sess = ticket(a.imaps_port, ctx)
    s = connect(b.imaps_port, ctx, session=sess)
    assert not s.session_reused
    login(s)
    s = connect(a.imaps_port, ctx, session=ticket(a.imaps_port, ctx))
    assert s.session_reused
    login(s)


@pytest.mark.parametrize("name,value", [("tls_ticket_lifetime", "0"),
                                       ("tls_ticket_lifetime", "500ms"),
                                       ("tls_ticket_lifetime", "169h"),
                                       ("tls_tickets", "maybe")])
def test_bad_values_refused(make_mux, name, value):
    path = make_mux.conf(imapmux={name: value})[0]
    r = subprocess.run([lab.IMAPMUX, "-t", "-c", path], capture_output=True, text=True,
                       timeout=10)
    assert r.returncode != 0, (r.stdout, r.stderr)
    assert ("bad " in r.stderr + r.stdout) and name in r.stderr + r.stdout, r


def test_fleet_keys_rotate_in_step(make_mux, cert, redis, prefix):
    # tls_ticket_lifetime = 2s: the keys change every 2 s; for 6 s, a ticket
    # fresh from A always resumes at B, whichever epoch it was sealed in,
    # and Redis holds a key per epoch, each kept 3 lifetimes.
    a, b = two_instances(make_mux, redis=redis_section(redis, prefix),
                         imapmux={"tls_ticket_lifetime": "2s"})
    for m in (a, b):
        wait_until(lambda m=m: "keys shared through Redis" in m.log_text(), 10,
                   "imapmux logs that it shares the ticket keys")
    ctx = client_ctx(cert)

    def epochs():
        return sorted(int(k.rsplit(":", 1)[1])
                      for k in redis.command("KEYS", prefix + "ticketkey:2:*"))
    first = epochs()
    t_end = time.monotonic() + 6
    tries = 0
    while time.monotonic() < t_end:
        s = connect(b.imaps_port, ctx, session=ticket(a.imaps_port, ctx))
        assert s.session_reused, "try %d: a ticket from A did not resume at B" % tries
        login(s)
        tries += 1
        time.sleep(0.2)
    # Keys of new epochs came (older ones expired), one per epoch, each
    # kept at most 3 lifetimes.
    last = epochs()
    assert last[-1] >= first[-1] + 2, (first, last)
    assert len(last) >= 3 and last == list(range(last[0], last[0] + len(last))), last
    for k in redis.command("KEYS", prefix + "ticketkey:2:*"):
        assert 0 < redis.command("TTL", k) <= 6
    assert tries >= 10


def s_client(port, cafile, tmp_path, sess_in=None, sess_out=None):
    """One `openssl s_client` connection (TLS 1.3) that logs out; its output.
    s_client writes -sess_out when the server sends a ticket."""
    argv = [lab.OPENSSL, "s_client", "-connect", "127.0.0.1:%d" % port, "-tls1_3",
            "-CAfile", cafile, "-verify_return_error", "-ign_eof"]
    if sess_in:
        argv += ["-sess_in", str(sess_in)]
    if sess_out:
        argv += ["-sess_out", str(sess_out)]
    r = subprocess.run(argv, input=b"a LOGOUT\r\n", capture_output=True, timeout=20)
    out = r.stdout.decode(errors="replace")
    assert "a OK" in out, out[-2000:]
    return out


def test_resumed_connection_gets_a_new_ticket(make_mux, cert, tmp_path):
    # OpenSSL's own client: each resumed connection must hand it a fresh
    # ticket (-sess_out written), so that a client never offers one twice;
    # a chain of resumptions, each from the previous connection's ticket.
    m = make_mux()
    prev = tmp_path / "s0.pem"
    out = s_client(m.imaps_port, cert, tmp_path, sess_out=prev)
    assert "New, TLSv1.3" in out and prev.exists()
    for i in range(1, 4):
        nxt = tmp_path / ("s%d.pem" % i)
        out = s_client(m.imaps_port, cert, tmp_path, sess_in=prev, sess_out=nxt)
        assert "Reused, TLSv1.3" in out, out[-2000:]
        assert nxt.exists(), "resumed connection %d sent no ticket" % i
        assert nxt.read_bytes() != prev.read_bytes()
        prev = nxt
