"""PROXY protocol toward backends (issue #12): `[backend NAME] send_proxy = v1 |
v2` puts a PROXY header with the client's addresses (the incoming PROXY
header's where one was read) before everything on each connection made for a
client, and a LOCAL (v2) or UNKNOWN (v1) one on the proxy's own (health
checks). Checked against a real Dovecot listening with `haproxy = yes`, which
refuses a connection without a valid header and logs the header's address.
A header names one client, so `-t` refuses the settings that share a
connection among clients (pool_min_idle, reuse_ttl, unauthenticate = yes).
"""

import subprocess
import time

import pytest

import lab
from conftest import (MASTER_PASSWORD, USERS, backend_section, dovecot_login_line, login_via,
                      wait_until)

FAST_CHECKS = {"check_interval": "300ms", "check_timeout": "1s", "check_rise": 1,
               "check_fall": 1}


@pytest.fixture(scope="module")
def haproxy_dovecot():
    hport = lab.free_port()
    extra = ("haproxy_trusted_networks = 127.0.0.0/8\n"
             "service imap-login {\n"
             "  inet_listener imap_haproxy {\n"
             "    address = 127.0.0.1\n"
             "    port = %d\n"
             "    haproxy = yes\n"
             "  }\n"
             "}\n" % hport)
    d = lab.Dovecot(USERS, master_password=MASTER_PASSWORD, name="dovecot-haproxy",
                    extra_conf=extra)
    d.start()
    lab.wait_listening([hport], timeout=10)
    d.haproxy_port = hport
    yield d
    d.cleanup()


def _mux(make_mux, dv, cert, key, version):
    imap = lab.free_port()
    listens = [("imap", {"address": "127.0.0.1:%d" % imap, "tls": "starttls", "cert": cert,
                         "key": key, "allow_plaintext_auth": "yes",
                         "proxy_protocol": "yes"})]
    bk = backend_section(dv, send_proxy=version, forward_id="no", **FAST_CHECKS)
    bk["address"] = "127.0.0.1:%d" % dv.haproxy_port
    m = make_mux(listens=listens, backends=[("a", bk)],
                 imapmux={"workers": 1, "log_level": "debug", "auth_fail_delay": 0})
    m.imap_port = imap
    lab.wait_listening([imap], timeout=10, proc=m.proc)
    return m


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_backend_learns_the_client_from_the_header(make_mux, haproxy_dovecot, cert, key,
                                                   version):
    dv = haproxy_dovecot
    m = _mux(make_mux, dv, cert, key, version)
    # Health checks carry a LOCAL/UNKNOWN header: Dovecot takes them (one
    # failure would mark the backend down: check_fall = 1).
    time.sleep(1.0)
    since = len(dv.log_text())
    c = login_via(m.imap_port, "alice", b"PROXY TCP4 203.0.113.9 127.0.0.1 41000 143\r\n")
    line = dovecot_login_line(dv, "alice", since)
    assert "rip=203.0.113.9" in line, line
    assert "lip=127.0.0.1" in line, line
    _, t = c.cmd("s", "SELECT INBOX")
    assert t.startswith(b"s OK"), t
    c.cmd("o", "LOGOUT")
    c.close()
    # Without an incoming header: the client's own socket address and port.
    since = len(dv.log_text())
    c = login_via(m.imap_port, "bob", b"PROXY UNKNOWN\r\n", source="127.0.0.5")
    line = dovecot_login_line(dv, "bob", since)
    assert "rip=127.0.0.5" in line, line
    c.close()
    assert "routed backend is down" not in m.log_text()
    assert "is down" not in m.log_text(), m.log_text()


def test_a_backend_without_the_header_fails_health_and_logins(make_mux, haproxy_dovecot,
                                                             cert, key):
    """The test's own check that the Dovecot listener insists on a header:
    the same backend without send_proxy is marked down."""
    dv = haproxy_dovecot
    bk = backend_section(dv, forward_id="no", **FAST_CHECKS)
    bk["address"] = "127.0.0.1:%d" % dv.haproxy_port
    m = make_mux(backends=[("a", bk)], imapmux={"workers": 1, "auth_fail_delay": 0})
    wait_until(lambda: "backend a (127.0.0.1:%d) is down" % dv.haproxy_port in m.log_text(), 8,
               "backend a marked down")


def _check(make_mux, **bk):
    path, _, _ = make_mux.conf(backends=[("a", dict({"address": "127.0.0.1:1"}, **bk))])
    p = subprocess.run([lab.IMAPMUX, "-t", "-c", path], capture_output=True, text=True,
                       timeout=20)
    return p.returncode, p.stdout + p.stderr


def test_check_refuses_connections_shared_among_clients(make_mux):
    rc, out = _check(make_mux, send_proxy="v2")
    assert rc == 0, out
    rc, out = _check(make_mux, send_proxy="v1", reuse_ttl="0", unauthenticate="no")
    assert rc == 0, out
    for key, val in [("pool_min_idle", "2"), ("reuse_ttl", "60"), ("unauthenticate", "yes")]:
        rc, out = _check(make_mux, send_proxy="v2", **{key: val})
        assert rc != 0, (key, out)
        assert key in out and "send_proxy" in out and "one client" in out, out
    rc, out = _check(make_mux, send_proxy="v3")
    assert rc != 0 and "bad value 'v3' for send_proxy (no, v1, v2)" in out, out
