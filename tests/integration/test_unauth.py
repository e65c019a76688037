"""UNAUTHENTICATE (RFC 8437) against a real Cyrus IMAP 3.6 (README
"UNAUTHENTICATE").

Cyrus 3.6 offers UNAUTHENTICATE only in sessions of its admins, so the
users unauth1 and unauth2 are Cyrus admins here (conftest.CYRUS_ADMIN_USERS);
alice is not, and her sessions show the ordinary reuse path on the same
server. Evidence from outside: /metrics (backend connects, logins,
connections returned by UNAUTHENTICATE, sessions reused) and what the next
session on the same backend connection finds (no mailbox selected, no
ENABLEd extension left).
"""

import time

import imapc
import lab
from conftest import backend_section, password, scrape_metrics, wait_until

TIMEOUT = 8.0


def start(make_mux, cyrus, **bk):
    stats_port = lab.free_port()
    kv = {"check_interval": 0, "pool_min_idle": 0}
    kv.update(bk)
    backends = [("c", backend_section(cyrus, tls="none", **kv))]
    m = make_mux(backends=backends, plaintext_auth=True,
                 imapmux={"workers": 1, "stats_listen": "127.0.0.1:%d" % stats_port,
                          "auth_fail_delay": 0, "log_level": "debug"})
    lab.wait_listening(stats_port, timeout=10, proc=m.proc)
    m.stats_port = stats_port
    return m


def metric(m, name):
    return scrape_metrics(m.stats_port)[name]


def login(m, user):
    c = imapc.Client(m.imap_port, timeout=TIMEOUT)
    c.greeting()
    _, t = c.cmd("l", "LOGIN %s %s" % (imapc.quote(user), imapc.quote(password(user))))
    assert t.startswith(b"l OK [CAPABILITY "), t
    return c, imapc.caps_of(t)


def logout(c):
    c.send("o LOGOUT\r\n")
    got = c.expect_closed(5)
    assert got == b"* BYE Logging out\r\no OK Logout completed.\r\n", got
    c.close()


def test_logout_returns_the_connection_to_the_shared_pool(make_mux, cyrus):
    m = start(make_mux, cyrus)
    c, caps = login(m, "unauth1")
    # Hidden from clients: UNAUTHENTICATE, LOGINDISABLED (Cyrus lists it
    # after login), the backend's COMPRESS= (imapmux's own COMPRESS=DEFLATE
    # is offered instead: test_compress.py).
    assert "UNAUTHENTICATE" not in caps and "LOGINDISABLED" not in caps, caps
    assert [x for x in caps if x.startswith("COMPRESS")] == ["COMPRESS=DEFLATE"], caps
    assert "QRESYNC" in caps and "UNSELECT" in caps
    # Per-connection state the next user must not inherit.
    untagged, t = c.cmd("e", "ENABLE QRESYNC")
    assert t.startswith(b"e OK") and any(b"QRESYNC" in x for x in untagged), (untagged, t)
    _, t = c.cmd("s", "SELECT INBOX")
    assert t.startswith(b"s OK"), t
    logout(c)
    wait_until(lambda: metric(m, "imapmux_backend_unauthenticated_total") == 1, 5,
               "the connection returned by UNAUTHENTICATE")
    assert metric(m, "imapmux_backend_connects_total") == 1

    # Another user gets that same connection (no new connect), logged in
    # afresh (one more backend login), with nothing of unauth1's state.
    c, caps2 = login(m, "unauth2")
    assert metric(m, "imapmux_backend_connects_total") == 1
    assert metric(m, "imapmux_backend_logins_total") == 2
    assert metric(m, 'imapmux_sessions_reused_total') == 0
    assert caps2 == caps
    _, t = c.cmd("f", "FETCH 1 FLAGS")
    assert t.startswith(b"f BAD"), t          # no mailbox selected
    _, t = c.cmd("s", "SELECT INBOX")
    assert t.startswith(b"s OK"), t
    body = b"Subject: unauth %d\r\n\r\nx\r\n" % time.monotonic_ns()
    c.send(b"a APPEND INBOX (\\Deleted) {%d+}\r\n" % len(body) + body + b"\r\n")
    _, t = c.read_until_tagged("a")
    assert t.startswith(b"a OK"), t
    untagged, t = c.cmd("x", "EXPUNGE")
    assert t.startswith(b"x OK"), t
    # QRESYNC was unauth1's: unauth2 gets EXPUNGE, not VANISHED.
    assert any(x.endswith(b" EXPUNGE\r\n") for x in untagged), untagged
    assert not any(b"VANISHED" in x for x in untagged), untagged
    logout(c)
    wait_until(lambda: metric(m, "imapmux_backend_unauthenticated_total") == 2, 5,
               "returned again")
    assert metric(m, "imapmux_backend_connects_total") == 1
    assert "connection back from a session (UNAUTHENTICATE)" in m.log_text()


def test_client_cannot_unauthenticate_itself(make_mux, cyrus):
    """Cyrus would accept it from this admin session: the proxy must not
    forward it (the client could then log in as anybody past imapmux)."""
    m = start(make_mux, cyrus)
    c, _ = login(m, "unauth1")
    _, t = c.cmd("u", "UNAUTHENTICATE")
    assert t == b"u BAD Unknown command.\r\n", t
    _, t = c.cmd("n", "NAMESPACE")
    assert t.startswith(b"n OK"), t
    _, t = c.cmd("l2", "LOGIN alice %s" % imapc.quote(password("alice")))
    assert t.startswith(b"l2 BAD"), t         # Cyrus: already logged in
    logout(c)


def test_without_unauthenticate_sessions_are_kept_per_user(make_mux, cyrus):
    """alice's sessions (no UNAUTHENTICATE offered) and, with
    unauthenticate = no, the admins' too, go to the per-user reuse cache."""
    m = start(make_mux, cyrus, unauthenticate="no")
    for user in ("alice", "unauth1"):
        c, _ = login(m, user)
        logout(c)
        c, _ = login(m, user)
        logout(c)
    s = scrape_metrics(m.stats_port)
    assert s["imapmux_backend_unauthenticated_total"] == 0, s
    assert s["imapmux_sessions_reused_total"] == 2, s
    assert s["imapmux_backend_logins_total"] == 2, s


def test_unauthenticate_with_pool_max_one(make_mux, cyrus):
    """pool_max = 1: five users in turn share the one connection."""
    m = start(make_mux, cyrus, pool_max=1, reuse_ttl=0)
    for i in range(5):
        c, _ = login(m, "unauth1" if i % 2 == 0 else "unauth2")
        _, t = c.cmd("s", "SELECT INBOX")
        assert t.startswith(b"s OK"), t
        logout(c)
        wait_until(lambda: metric(m, "imapmux_backend_unauthenticated_total") == i + 1, 5,
                   "returned %d" % (i + 1))
    assert metric(m, "imapmux_backend_connects_total") == 1
    assert metric(m, "imapmux_backend_logins_total") == 5
