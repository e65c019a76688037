"""IPv6 clients counted per prefix (review finding).

One IPv6 host commonly holds a whole /64 and can pick any address in it, so
counting IPv6 clients per address gives such a client as many
per-address connections and brute-force guesses as it likes. After the fix
IPv6 addresses are grouped by [imapmux] ipv6_prefix (default 64) for
max_connections_per_ip and for the brute-force counters (Redis key
<prefix>authfail:ip:2001:db8::/64); ipv6_prefix = 128 counts single
addresses again.

The client addresses come from PROXY headers (the listeners have
proxy_protocol = yes), as a load balancer in front would send them.
"""

import socket
import struct

import pytest

import imapc
import lab
from conftest import password

pytest.register_assert_rewrite("conftest_redis")
from conftest_redis import login_cmd, redis_section, wait_until  # noqa: E402

# The fixture prefix.
pytest_plugins = ["conftest_redis"]

TIMEOUT = 8.0
SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def v1(src, sport=50000):
    return ("PROXY TCP6 %s ::1 %d 143\r\n" % (src, sport)).encode()


def v2(src, sport=50000):
    addr = (socket.inet_pton(socket.AF_INET6, src) + socket.inet_pton(socket.AF_INET6, "::1")
            + struct.pack("!HH", sport, 143))
    return SIG + bytes([0x21, 0x21]) + struct.pack("!H", len(addr)) + addr


HEADERS = {"v1": v1, "v2": v2}


def start(make_mux, cert, key, redis=None, **im):
    imaps, imap = lab.free_port(), lab.free_port()
    listens = [
        ("imaps", {"address": "127.0.0.1:%d" % imaps, "tls": "implicit", "cert": cert,
                   "key": key, "proxy_protocol": "yes"}),
        ("imap", {"address": "127.0.0.1:%d" % imap, "tls": "starttls", "cert": cert,
                  "key": key, "allow_plaintext_auth": "yes", "proxy_protocol": "yes"}),
    ]
    conf = {"workers": 2, "auth_fail_delay": 0}
    conf.update(im)
    m = make_mux(listens=listens, imapmux=conf, redis=redis)
    m.imaps_port, m.imap_port = imaps, imap
    lab.wait_listening([imaps, imap], timeout=10, proc=m.proc)
    return m


def behind_balancer(m, src, hdr="v1"):
    """A plaintext client on m's imap port whose PROXY header says src."""
    s = socket.create_connection(("127.0.0.1", m.imap_port), timeout=TIMEOUT)
    s.sendall(HEADERS[hdr](src))
    c = imapc.Client(0, timeout=TIMEOUT, connect=False)
    c.sock = s
    return c


def admitted(c):
    line = c.read_response(5)
    return line.startswith(b"* OK"), line


@pytest.mark.parametrize("hdr", ["v1", "v2"])
def test_per_ip_limit_counts_the_slash64(make_mux, cert, key, hdr):
    m = start(make_mux, cert, key, max_connections_per_ip=2)
    held = []
    try:
        for src in ("2001:db8::1", "2001:db8::2"):
            c = behind_balancer(m, src, hdr)
            held.append(c)
            ok, line = admitted(c)
            assert ok, (src, line)
        c = behind_balancer(m, "2001:db8::3", hdr)
        held.append(c)
        line = c.read_response(5)
        assert line.startswith(b"* BYE [UNAVAILABLE]"), (
            "a third connection from 2001:db8::/64 was admitted", line)
        assert c.wait_closed_or_timeout(5), "not closed after the BYE"
        # Another /64: admitted.
        c = behind_balancer(m, "2001:db8:0:1::1", hdr)
        held.append(c)
        ok, line = admitted(c)
        assert ok, ("2001:db8:0:1::1", line)
    finally:
        for c in held:
            c.close()


def test_ipv6_prefix_128_counts_addresses(make_mux, cert, key):
    m = start(make_mux, cert, key, max_connections_per_ip=2, ipv6_prefix=128)
    held = []
    try:
        for src in ("2001:db8::1", "2001:db8::2", "2001:db8::3", "2001:db8:0:1::1"):
            c = behind_balancer(m, src)
            held.append(c)
            ok, line = admitted(c)
            assert ok, (src, line)
    finally:
        for c in held:
            c.close()


def test_auth_failures_counted_per_slash64(make_mux, cert, key, dovecot, redis, prefix):
    m = start(make_mux, cert, key, redis=redis_section(redis, prefix), auth="backend",
              auth_fail_limit=2, auth_fail_delay="100ms")

    def attempt(src, user, pw, tag):
        c = behind_balancer(m, src)
        try:
            c.greeting()
            _, tagged = c.cmd(tag, login_cmd(user, pw))
            return tagged
        finally:
            c.close()

    # Two users (each user's own budget stays below the limit), two addresses
    # of one /64.
    for i, (src, user) in enumerate((("2001:db8::1", "alice"), ("2001:db8::2", "bob"))):
        tagged = attempt(src, user, "wrong-" + password(user), "f%d" % i)
        assert tagged.startswith(b"f%d NO [AUTHENTICATIONFAILED]" % i), tagged
    key = prefix + "authfail:ip:2001:db8::/64"

    def count(k):
        v = redis.command("GET", k)
        return None if v is None else int(v)
    # INCR may land just after the NO.
    wait_until(lambda: count(key) == 2, 2,
               lambda: "%s == 2 (is %r; per address: %r, %r)" % (
                   key, count(key), count(prefix + "authfail:ip:2001:db8::1"),
                   count(prefix + "authfail:ip:2001:db8::2")))
    for k in ("2001:db8::1", "2001:db8::2"):
        assert count(prefix + "authfail:ip:" + k) is None, "counted per address too: " + k
    # The /64 is locked out, another /64 is not.
    tagged = attempt("2001:db8::3", "carol", password("carol"), "l1")
    assert tagged.startswith(b"l1 NO [AUTHENTICATIONFAILED]"), tagged
    tagged = attempt("2001:db8:0:1::1", "carol", password("carol"), "l2")
    assert tagged.startswith(b"l2 OK"), tagged
