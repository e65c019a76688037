"""PROXY protocol v1/v2 on listeners with proxy_protocol = yes (README
"PROXY protocol").

What a load balancer in front sends is played here by the test: a header,
then the client's own stream on the same connection, in the same packet or
later. The evidence that imapmux took the client address from the header:
its log lines name it, and max_connections_per_ip and the brute-force
counters count it, not the balancer's 127.0.0.1.
"""

import socket
import struct
import time

import pytest

import imapc
import lab
from conftest import password, scrape_metrics, wait_until

TIMEOUT = 8.0
SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v1(src, sport=50000, dst=None, dport=993):
    fam = "TCP6" if ":" in src else "TCP4"
    dst = dst or ("::1" if ":" in src else "127.0.0.1")
    return ("PROXY %s %s %s %d %d\r\n" % (fam, src, dst, sport, dport)).encode()


def v2(src, sport=50000, dst=None, dport=993, tlvs=b"", command=1):
    dst = dst or ("::1" if ":" in src else "127.0.0.1")
    if ":" in src:
        addr = (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, dst)
                + struct.pack("!HH", sport, dport))
        fam = 0x21
    else:
        addr = (socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!HH", sport, dport))
        fam = 0x11
    body = addr + tlvs
    return SIG + bytes([0x20 | command, fam]) + struct.pack("!H", len(body)) + body


def start(make_mux, cert, key, trusted=None, **im):
    stats_port = lab.free_port()
    imaps, imap = lab.free_port(), lab.free_port()
    listens = [
        ("imaps", {"address": "127.0.0.1:%d" % imaps, "tls": "implicit", "cert": cert,
                   "key": key, "proxy_protocol": "yes"}),
        ("imap", {"address": "127.0.0.1:%d" % imap, "tls": "starttls", "cert": cert,
                  "key": key, "allow_plaintext_auth": "yes", "proxy_protocol": "yes"}),
    ]
    if trusted is not None:
        for _, kv in listens:
            kv["proxy_trusted"] = trusted
    conf = {"workers": 2, "stats_listen": "127.0.0.1:%d" % stats_port, "auth_fail_delay": 0,
            "log_level": "debug"}
    conf.update(im)
    m = make_mux(listens=listens, imapmux=conf)
    m.imaps_port, m.imap_port, m.stats_port = imaps, imap, stats_port
    lab.wait_listening([imaps, imap, stats_port], timeout=10, proc=m.proc)
    return m


def raw(port):
    s = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    return s


def plain_client(sock):
    c = imapc.Client(0, timeout=TIMEOUT, connect=False)
    c.sock = sock
    return c


@pytest.mark.parametrize("hdr", ["v1", "v2", "v1-ipv6", "v2-ipv6", "v2-tlv"])
def test_header_then_imap_in_one_packet(make_mux, cert, key, hdr):
    m = start(make_mux, cert, key)
    src = "2001:db8::7" if hdr.endswith("ipv6") else "203.0.113.9"
    if hdr.startswith("v1"):
        h = v1(src, sport=41000)
    else:
        tlvs = b"\x04\x00\x03abc\x01\x00\x04imap" if hdr == "v2-tlv" else b""
        h = v2(src, sport=41000, tlvs=tlvs)
    s = raw(m.imap_port)
    # Header and the first command together: nothing of the command may
    # be lost to the header reader.
    s.sendall(h + b"a1 CAPABILITY\r\n")
    c = plain_client(s)
    assert c.greeting().startswith(b"* OK [CAPABILITY ")
    _, t = c.read_until_tagged("a1")
    assert t.startswith(b"a1 OK"), t
    c.login("alice", password("alice"))
    _, t = c.cmd("o", "LOGOUT")
    assert t.startswith(b"o OK"), t
    c.close()
    shown = "[%s]:41000" % src if ":" in src else "%s:41000" % src
    wait_until(lambda: ("alice@%s login ok" % shown) in m.log_text(), 5,
               "the login logged with the client address from the header")


def test_header_in_pieces_then_tls(make_mux, cert, key, ca_ctx):
    """Implicit TLS after the header: the ClientHello must reach TLS whole,
    however the header was split."""
    m = start(make_mux, cert, key)
    h = v2("198.51.100.4", sport=42000)
    s = raw(m.imaps_port)
    for i in range(0, len(h), 5):
        s.sendall(h[i:i + 5])
        time.sleep(0.02)
    ts = ca_ctx.wrap_socket(s, server_hostname="127.0.0.1")
    c = plain_client(ts)
    assert c.greeting().startswith(b"* OK")
    c.login("bob", password("bob"))
    _, t = c.cmd("o", "LOGOUT")
    assert t.startswith(b"o OK")
    c.close()
    wait_until(lambda: "bob@198.51.100.4:42000 login ok" in m.log_text(), 5, "login logged")


@pytest.mark.parametrize("what", ["local", "unknown"])
def test_local_and_unknown_keep_the_real_address(make_mux, cert, key, what):
    m = start(make_mux, cert, key)
    h = v2("0.0.0.0", command=0) if what == "local" else b"PROXY UNKNOWN\r\n"
    s = raw(m.imap_port)
    s.sendall(h)
    c = plain_client(s)
    assert c.greeting().startswith(b"* OK")
    c.login("alice", password("alice"))
    c.close()
    wait_until(lambda: "alice@127.0.0.1:" in m.log_text() and " login ok" in m.log_text(), 5,
               "login logged with the connection's own address")


@pytest.mark.parametrize("bad", [b"GET / HTTP/1.0\r\n\r\n", b"a1 CAPABILITY\r\n",
                                 b"PROXY TCP4 1.2.3.4 5.6.7.8 1 2\n",
                                 b"PROXY TCP4 01.2.3.4 5.6.7.8 1 2\r\n",
                                 SIG + b"\x21\x12\x00\x0c" + b"\x00" * 12])
def test_bad_header_closes_without_a_word(make_mux, cert, key, bad):
    m = start(make_mux, cert, key)
    s = raw(m.imap_port)
    s.sendall(bad)
    got = _closed_without_a_word(s)
    assert got == b"", got
    wait_until(lambda: "bad PROXY header" in m.log_text(), 5, "the refusal logged")


def _closed_without_a_word(s):
    s.settimeout(5)
    got = b""
    while True:
        try:
            d = s.recv(4096)
        except ConnectionResetError:
            break
        if not d:
            break
        got += d
    s.close()
    return got


def test_proxy_trusted_refuses_headers_from_elsewhere(make_mux, cert, key):
    """proxy_trusted: a connection from a host not listed is closed before
    a byte is read (and logged); from a listed one the header is taken."""
    m = start(make_mux, cert, key, trusted="10.0.0.0/8, 2001:db8::/32")
    for port in (m.imap_port, m.imaps_port):
        s = raw(port)
        s.sendall(v1("203.0.113.9") + b"a1 CAPABILITY\r\n")
        assert _closed_without_a_word(s) == b""
    # one warning a second at most; each session's end is logged
    wait_until(lambda: m.log_text().count('end="not in proxy_trusted"') == 2, 5,
               "both refusals logged")
    assert "refused: not in [listen imap] proxy_trusted" in m.log_text()
    assert "203.0.113.9" not in m.log_text()   # the header was never read

    m2 = start(make_mux, cert, key, trusted="192.0.2.0/24 , 127.0.0.0/8")
    s = raw(m2.imap_port)
    s.sendall(v1("203.0.113.9", sport=41000))
    c = plain_client(s)
    assert c.greeting().startswith(b"* OK")
    c.login("alice", password("alice"))
    wait_until(lambda: "alice@203.0.113.9:41000" in m2.log_text(), 5, "the header's address")
    c.close()


@pytest.mark.parametrize("listen, why", [
    ({"proxy_trusted": "127.0.0.0/8"}, "proxy_trusted needs proxy_protocol = yes"),
    ({"proxy_protocol": "yes", "proxy_trusted": "127.0.0.0/8, 10.0.0.0/33"},
     "bad address or range '10.0.0.0/33' in proxy_trusted"),
    ({"proxy_protocol": "yes", "proxy_trusted": "lb.example.com"},
     "bad address or range 'lb.example.com' in proxy_trusted"),
])
def test_proxy_trusted_checked_at_load(make_mux, cert, key, listen, why):
    kv = {"address": "127.0.0.1:%d" % lab.free_port(), "tls": "implicit", "cert": cert,
          "key": key}
    kv.update(listen)
    path, _, _ = make_mux.conf(listens=[("imaps", kv)])
    r = lab.check_config(path)
    assert r.returncode == 1 and why in r.stderr, r.stderr


def test_no_header_in_time(make_mux, cert, key):
    m = start(make_mux, cert, key, preauth_timeout=1)
    s = raw(m.imaps_port)
    s.sendall(b"PROXY TCP4 ")
    s.settimeout(5)
    t0 = time.monotonic()
    assert s.recv(100) == b""
    assert time.monotonic() - t0 < 4
    wait_until(lambda: "no PROXY header in time" in m.log_text(), 5, "the timeout logged")


def test_per_ip_limit_counts_the_header_address(make_mux, cert, key):
    m = start(make_mux, cert, key, max_connections_per_ip=2)
    held = []
    for _ in range(2):
        s = raw(m.imap_port)
        s.sendall(v1("192.0.2.50"))
        c = plain_client(s)
        assert c.greeting().startswith(b"* OK")
        held.append(c)
    # A third from the same client address behind the same balancer: no.
    s = raw(m.imap_port)
    s.sendall(v1("192.0.2.50"))
    c = plain_client(s)
    got = c.expect_closed(5)
    assert got == b"* BYE [UNAVAILABLE] Too many connections from your address.\r\n", got
    # Another client behind the same balancer address: yes.
    s = raw(m.imap_port)
    s.sendall(v1("192.0.2.51"))
    c = plain_client(s)
    assert c.greeting().startswith(b"* OK")
    held.append(c)
    assert scrape_metrics(m.stats_port)[
        'imapmux_connections_refused_total{limit="max_connections_per_ip"}'] == 1
    for c in held:
        c.close()
