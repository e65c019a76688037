"""Connection limits and the command-line bound after login (README "Limits").

max_connections bounds the instance's client connections (all workers
together), max_connections_per_ip those of one client address; both are
answered with `* BYE [UNAVAILABLE] ...` where the client can read it (a
plaintext or STARTTLS port; an implicit-TLS port is closed before the
handshake), counted on /metrics and logged. max_line_length bounds one
command line after login: past it the session ends with
`* BYE Command line too long.`; literal bodies do not count.
"""

import re
import socket
import subprocess
import time
import ssl

import pytest

import imapc
import lab
from conftest import links_asan, password, proc_status_kib, scrape_metrics, wait_until

TIMEOUT = 8.0


def start(make_mux, **im):
    stats_port = lab.free_port()
    conf = {"workers": 2, "stats_listen": "127.0.0.1:%d" % stats_port, "auth_fail_delay": 0}
    conf.update(im)
    m = make_mux(imapmux=conf, plaintext_auth=True)
    lab.wait_listening(stats_port, timeout=10, proc=m.proc)
    m.stats_port = stats_port
    return m


def connect_from(port, source):
    """A plaintext client connected to port from loopback address source."""
    c = imapc.Client(port, timeout=TIMEOUT, connect=False)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.settimeout(TIMEOUT)
    s.bind((source, 0))
    s.connect(("127.0.0.1", port))
    c.sock = s
    return c


def greeted(port, source="127.0.0.1"):
    """A plaintext client, greeted, connected from source."""
    c = connect_from(port, source)
    g = c.greeting()
    assert g.startswith(b"* OK"), g
    return c


def refused(port, source="127.0.0.1"):
    """Connect and return everything read until the close."""
    c = connect_from(port, source)
    got = c.expect_closed(5)
    c.close()
    return got


def refusals(m):
    s = scrape_metrics(m.stats_port)
    return (s['imapmux_connections_refused_total{limit="max_connections"}'],
            s['imapmux_connections_refused_total{limit="max_connections_per_ip"}'])


def test_max_connections(make_mux, ca_ctx):
    m = start(make_mux, max_connections=5)
    held = [greeted(m.imap_port) for _ in range(3)]
    held += [imapc.Client(m.imaps_port, tls=ca_ctx, timeout=TIMEOUT) for _ in range(2)]
    for c in held[3:]:
        c.greeting()
    # The sixth, on either port: refused, whoever's worker took it.
    got = refused(m.imap_port)
    assert got == b"* BYE [UNAVAILABLE] Too many connections, try again later.\r\n", got
    # Implicit TLS: closed before any handshake (nothing can be said).
    with pytest.raises((ssl.SSLError, ConnectionResetError, OSError)):
        c = imapc.Client(m.imaps_port, tls=ca_ctx, timeout=TIMEOUT)
        c.greeting()
    assert refusals(m) == (2, 0)
    wait_until(lambda: "refused: max_connections (5) reached" in m.log_text(), 5,
               "the refusal logged")
    # The held ones still work; a freed place is taken again.
    _, t = held[0].cmd("n", "NOOP")
    assert t.startswith(b"n OK"), t
    held.pop(0).close()
    wait_until(lambda: scrape_metrics(m.stats_port)["imapmux_sessions"] == 4, 5,
               "the closed session freed")
    c = greeted(m.imap_port)
    c.login("alice", password("alice"))
    _, t = c.cmd("o", "LOGOUT")
    assert t.startswith(b"o OK")
    for c in held:
        c.close()


def test_max_connections_per_ip(make_mux):
    m = start(make_mux, max_connections_per_ip=3)
    held = [greeted(m.imap_port) for _ in range(3)]
    got = refused(m.imap_port)
    assert got == b"* BYE [UNAVAILABLE] Too many connections from your address.\r\n", got
    # Another loopback address has places of its own.
    other = [greeted(m.imap_port, source="127.0.0.2") for _ in range(3)]
    got = refused(m.imap_port, source="127.0.0.2")
    assert got.startswith(b"* BYE [UNAVAILABLE] Too many connections from your"), got
    assert refusals(m) == (0, 2)
    wait_until(lambda: "refused: max_connections_per_ip (3) reached" in m.log_text(), 5,
               "the refusal logged")
    # A place freed (here: by LOGOUT after a login) is a place again.
    c = held.pop()
    c.login("bob", password("bob"))
    _, t = c.cmd("o", "LOGOUT")
    assert t.startswith(b"o OK")
    c.close()
    wait_until(lambda: scrape_metrics(m.stats_port)["imapmux_sessions"] == 5, 5,
               "the session freed")
    held.append(greeted(m.imap_port))
    for c in held + other:
        c.close()


def test_command_line_bound_after_login(make_mux):
    m = start(make_mux, max_line_length=2048)
    c = greeted(m.imap_port)
    c.login("alice", password("alice"))
    # Just below the bound (line end included) goes through to Dovecot.
    pad = "x" * (2048 - len('s LIST "" ""\r\n'))
    _, t = c.cmd("s", 'LIST "" "%s"' % pad)
    assert t.startswith(b"s OK"), t
    # A literal far longer than the bound is no line: APPEND works.
    body = b"Subject: big\r\n\r\n" + b"y" * 20000 + b"\r\n"
    c.send(b"a APPEND INBOX {%d+}\r\n" % len(body) + body + b"\r\n")
    _, t = c.read_until_tagged("a")
    assert t.startswith(b"a OK"), t
    # One byte over: the session ends with a clear BYE.
    c.send('t LIST "" "%s"\r\n' % (pad + "x"))
    got = c.expect_closed(5)
    assert got == b"* BYE Command line too long.\r\n", got
    s = scrape_metrics(m.stats_port)
    assert s["imapmux_lines_too_long_total"] == 1, s
    wait_until(lambda: 'end="command line over max_line_length (2048)"' in m.log_text(), 5,
               "the close logged")


def test_limit_keys_checked(make_mux, tmp_path):
    """Out-of-range values are refused by `imapmux -t` with file:line."""
    f = make_mux
    for key, val in (("max_line_length", 100), ("max_connections", -1), ("max_connections", 0),
                     ("max_connections_per_ip", "many")):
        path, _, _ = f.conf(imapmux={key: val})
        r = lab.check_config(path)
        assert r.returncode == 1, (key, r)
        assert key in r.stderr and path + ":" in r.stderr, r.stderr


def _tcp_sockets(pid):
    """imapmux's established TCP sockets, from the kernel (ss -tnpi):
    [(local port, peer port, recv_q, send_q, bytes_received, bytes_acked)]."""
    out = subprocess.run(["ss", "-tnpiH", "state", "established"], capture_output=True,
                         text=True, timeout=10, check=True).stdout
    socks, head = [], None
    for line in out.splitlines():
        if not line.startswith(("\t", " ")):
            head = line.split() if "pid=%d," % pid in line else None
            continue
        if head is None:
            continue
        info = dict(re.findall(r"(bytes_received|bytes_acked):(\d+)", line))
        socks.append((int(head[2].rsplit(":", 1)[1]), int(head[3].rsplit(":", 1)[1]),
                      int(head[0]), int(head[1]), int(info.get("bytes_received", 0)),
                      int(info.get("bytes_acked", 0))))
    return socks


def _held_by_imapmux(pid, client_port):
    """Bytes imapmux has taken from one side and not yet handed to the other
    side's socket, each way, for the session of the client on client_port:
    read from the client (received less still queued) less written toward
    the backend (acked plus still queued), and the same backend -> client.
    The backend socket is the one of imapmux's with the most bytes in."""
    socks = _tcp_sockets(pid)
    cli = [s for s in socks if s[1] == client_port]
    assert len(cli) == 1, socks
    be = max((s for s in socks if s[1] != client_port), key=lambda s: s[4])
    _, _, c_rq, c_sq, c_rx, c_ack = cli[0]
    _, _, b_rq, b_sq, b_rx, b_ack = be
    return (c_rx - c_rq) - (b_ack + b_sq), (b_rx - b_rq) - (c_ack + c_sq)


def test_client_that_never_reads_is_held_back_not_buffered(make_mux):
    """Bytes buffered per session are bounded: a client pipelining NOOPs
    without reading a single answer fills the socket buffers, imapmux stops
    reading from the side it cannot write to, what it holds in hand stays
    small (measured from the kernel's byte counts of its two sockets, so it
    holds under the sanitizers too), its memory does not follow, and once the
    client reads, every answer is there.

    The client is not always stopped outright: Dovecot goes on reading
    commands while it cannot write their answers and keeps those in its own
    memory (seen: its imap process at 268 MB after 60 MB of NOOPs), so how
    soon the whole chain stalls is Dovecot's affair and timing's, not a
    property of imapmux; what imapmux holds is."""
    m = start(make_mux)
    asan = links_asan(m.pid)
    c = greeted(m.imap_port)
    c.login("alice", password("alice"))
    before = proc_status_kib(m.pid, "VmRSS")
    s = c.sock
    client_port = s.getsockname()[1]
    s.setblocking(False)
    chunk = b"".join(b"n%d NOOP\r\n" % i for i in range(1000))
    sent_cmds, sent, t0 = 0, 0, time.monotonic()
    pending = b""
    stalled_since = None
    held_max = [0, 0]
    next_probe = 0
    # Bounded: 20 s at most, and 200 MB at most.
    while time.monotonic() - t0 < 20 and sent < 200 * 1024 * 1024:
        if not pending:
            pending = chunk
            sent_cmds += 1000
        if sent >= next_probe:
            held = _held_by_imapmux(m.pid, client_port)
            held_max = [max(a, b) for a, b in zip(held_max, held)]
            next_probe = sent + (2 << 20)
        try:
            n = s.send(pending)
            pending = pending[n:]
            sent += n
            stalled_since = None
        except BlockingIOError:
            if stalled_since is None:
                stalled_since = time.monotonic()
            elif time.monotonic() - stalled_since > 2.0:
                break
            time.sleep(0.01)
    held = _held_by_imapmux(m.pid, client_port)
    held_max = [max(a, b) for a, b in zip(held_max, held)]
    grown = (proc_status_kib(m.pid, "VmRSS") - before) / 1024
    print("sent %.1f MiB (%s); imapmux held at most %d bytes client->backend, %d "
          "backend->client; RSS +%.1f MiB" %
          (sent / 2**20, "stalled" if stalled_since else "not stalled at the end",
           held_max[0], held_max[1], grown))
    assert sent > 8 << 20, "only %d bytes went out: the test measured nothing" % sent
    assert held_max[0] < 1 << 20 and held_max[1] < 1 << 20, held_max
    if not asan:
        assert grown < 8, "imapmux RSS grew by %.1f MiB while the client did not read" % grown
    # Now read: every complete NOOP sent gets its OK, in order.
    s.setblocking(True)
    s.sendall(pending)
    expect = sent_cmds
    got, buf = 0, b""
    s.settimeout(30)
    last = None
    while got < expect:
        d = s.recv(1 << 20)
        assert d, "closed after %d of %d answers" % (got, expect)
        buf += d
        lines = buf.split(b"\r\n")
        buf = lines.pop()
        for line in lines:
            assert line.startswith(b"n") and b" OK" in line, line
            last = line
            got += 1
    assert last.startswith(b"n999 OK"), last
    c.close()


def test_max_connections_auto_and_the_open_files_warning(make_mux):
    """auto takes (open-files limit - 256) / 2, the limit imapmux raises its
    soft one to: the hard limit it inherits from here; an explicit value the
    limit cannot carry is warned about."""
    import resource
    _, soft = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft <= 512:
        pytest.skip("open-files limit %r: auto takes another branch" % soft)
    m = start(make_mux)
    want = "max_connections = auto: %d (from the open-files limit)" % ((soft - 256) // 2)
    wait_until(lambda: want in m.log_text(), 5, want)
    assert "is below what max_connections" not in m.log_text()
    m2 = start(make_mux, max_connections=soft)
    warn = ("open-files limit %d is below what max_connections = %d needs (about %d)"
            % (soft, soft, 2 * soft + 256))
    wait_until(lambda: warn in m2.log_text(), 5, warn)
