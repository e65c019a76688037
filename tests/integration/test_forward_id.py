"""The client's address to the backend (issue #12): before each login it
makes for a client, on a new or a pooled connection (and a parked session's
wake), imapmux sends `ID ("x-originating-ip" ... "x-originating-port" ...
"x-connected-ip" ... "x-connected-port" ... "x-session-id" ...)`
(`[backend] forward_id = yes`, the default), so that Dovecot, trusting
imapmux (`login_trusted_networks`), logs and limits by the real client: the
PROXY header's address where one was read. Checked in Dovecot's own log.
"""

import re
import time

import pytest

import lab
from conftest import (MASTER_PASSWORD, USERS, backend_section, dovecot_login_line, login_via,
                      wait_until)


@pytest.fixture(scope="module")
def trusting_dovecot():
    d = lab.Dovecot(USERS, master_password=MASTER_PASSWORD, name="dovecot-fwdid",
                    extra_conf="login_trusted_networks = 127.0.0.0/8\n")
    d.start()
    yield d
    d.cleanup()


def _mux(make_mux, dv, cert, key, **bk):
    imap = lab.free_port()
    listens = [("imap", {"address": "127.0.0.1:%d" % imap, "tls": "starttls", "cert": cert,
                         "key": key, "allow_plaintext_auth": "yes",
                         "proxy_protocol": "yes"})]
    m = make_mux(listens=listens, backends=[("a", backend_section(dv, **bk))],
                 imapmux={"workers": 1, "log_level": "debug", "auth_fail_delay": 0})
    m.imap_port = imap
    lab.wait_listening([imap], timeout=10, proc=m.proc)
    return m


def _login_via(m, user, header):
    return login_via(m.imap_port, user, header)


def test_client_address_reaches_dovecot_through_a_proxy_header(make_mux, trusting_dovecot,
                                                               cert, key):
    dv = trusting_dovecot
    m = _mux(make_mux, dv, cert, key)
    since = len(dv.log_text())
    c = _login_via(m, "alice", b"PROXY TCP4 203.0.113.9 127.0.0.1 41000 143\r\n")
    line = dovecot_login_line(dv, "alice", since)
    assert "rip=203.0.113.9" in line, line
    assert "lip=127.0.0.1" in line, line
    assert re.search(r"session=<imapmux-\d+>", line), line
    c.cmd("o", "LOGOUT")
    c.close()


def test_without_a_header_the_socket_peer_and_with_forward_id_no_nothing(make_mux,
                                                                         trusting_dovecot,
                                                                         cert, key):
    dv = trusting_dovecot
    m = _mux(make_mux, dv, cert, key)
    since = len(dv.log_text())
    # PROXY v1 UNKNOWN: the connection's own endpoints
    c = _login_via(m, "bob", b"PROXY UNKNOWN\r\n")
    line = dovecot_login_line(dv, "bob", since)
    assert "rip=127.0.0.1" in line and re.search(r"session=<imapmux-\d+>", line), line
    c.close()

    m2 = _mux(make_mux, dv, cert, key, forward_id="no")
    since = len(dv.log_text())
    c = _login_via(m2, "carol", b"PROXY TCP4 198.51.100.7 127.0.0.1 42000 143\r\n")
    line = dovecot_login_line(dv, "carol", since)
    assert "198.51.100.7" not in line and "rip=127.0.0.1" in line, line
    assert "imapmux-" not in line, line
    c.close()


def test_pooled_connection_gets_each_clients_address(make_mux, trusting_dovecot, cert, key):
    """Connections made ahead of any login (pool_min_idle) carry the ID of the
    client each one is used for, sent at that login."""
    dv = trusting_dovecot
    m = _mux(make_mux, dv, cert, key, pool_min_idle="2", reuse_ttl="0")
    time.sleep(0.5)  # the pool fills
    since = len(dv.log_text())
    clients = []
    for user, ip in (("alice", "192.0.2.21"), ("bob", "192.0.2.22")):
        clients.append(_login_via(m, user, b"PROXY TCP4 %s 127.0.0.1 43000 143\r\n"
                                  % ip.encode()))
        line = dovecot_login_line(dv, user, since)
        assert "rip=%s" % ip in line, line
    for c in clients:
        c.close()


def test_a_parked_sessions_wake_logs_in_with_its_clients_address(make_mux, trusting_dovecot,
                                                               cert, key):
    """The wake's master login is made for the client: its ID too; the
    watcher's own login (for nobody) has none."""
    from conftest import scrape_metrics
    dv = trusting_dovecot
    stats = lab.free_port()
    imap = lab.free_port()
    listens = [("imap", {"address": "127.0.0.1:%d" % imap, "tls": "starttls", "cert": cert,
                         "key": key, "allow_plaintext_auth": "yes",
                         "proxy_protocol": "yes"})]
    m = make_mux(listens=listens, backends=[("a", backend_section(dv, watch="idle",
                                                                  reuse_ttl="0"))],
                 imapmux={"workers": 1, "log_level": "debug", "park_idle_after": "1s",
                          "stats_listen": "127.0.0.1:%d" % stats})
    m.imap_port = imap
    lab.wait_listening([imap, stats], timeout=10, proc=m.proc)
    since = len(dv.log_text())
    c = _login_via(m, "dave", b"PROXY TCP4 192.0.2.77 127.0.0.1 44000 143\r\n")
    _, t = c.cmd("s", "SELECT INBOX")
    assert t.startswith(b"s OK"), t
    wait_until(lambda: scrape_metrics(stats).get("imapmux_sessions_parked", 0) == 1, 10,
               "parked")
    _, t = c.cmd("f", "UID FETCH 1:* (FLAGS)")   # wakes
    assert t.startswith(b"f OK"), t

    def logins():
        return [l for l in dv.log_text()[since:].splitlines()
                if "imap-login: Info: Login: user=<dave>" in l]
    wait_until(lambda: len([l for l in logins() if "rip=192.0.2.77" in l]) >= 2, 5,
               lambda: "the client's login and the wake's, both from 192.0.2.77: %r"
               % logins())
    assert any("rip=127.0.0.1" in l and "imapmux-" not in l for l in logins()), logins()
    c.close()
