"""Parked IDLE (issue #11): a quiet session gives its backend connection up,
imapmux answers for it, and a wake tells the client exactly what changed.

Real Dovecot, real Redis (the events channel), real TLS; the clients are
imapc (tests/integration/imapc.py), whose every byte read is checked.
"""

import re
import time

import pytest

import imapc
import lab
from conftest import backend_section, password, scrape_metrics, socks_to, wait_until

pytest.register_assert_rewrite("conftest_redis")
from conftest_redis import publish, redis_section, wait_subscribed  # noqa: E402

pytest_plugins = ["conftest_redis"]

TIMEOUT = 10.0


def _mux(make_mux, dovecot, redis, prefix, imapmux=None, **bk):
    kv = backend_section(dovecot, watch="events")
    kv.update(bk)
    port = lab.free_port()
    base = {"workers": 1, "park_idle_after": "1s", "log_level": "debug",
            "stats_listen": "127.0.0.1:%d" % port}
    base.update(imapmux or {})
    m = make_mux(backends=[("a", kv)], redis=redis_section(redis, prefix), imapmux=base)
    m.stats_port = port
    wait_subscribed(redis, prefix, 1)
    return m


def _metric(m, name):
    return scrape_metrics(m.stats_port).get(name, 0)


def _direct(dovecot, user):
    """A client straight on Dovecot (the store's truth, and the one making changes)."""
    c = imapc.Client(dovecot.port, timeout=TIMEOUT)
    c.greeting()
    _, t = c.cmd("l", "LOGIN %s %s" % (imapc.quote(user), imapc.quote(password(user))))
    assert t.startswith(b"l OK"), t
    return c


def _wait_parked(m, n, timeout=8.0):
    wait_until(lambda: _metric(m, "imapmux_sessions_parked") >= n, timeout,
               lambda: "%d parked session(s) (have %s)" % (n, _metric(m, "imapmux_sessions_parked")))


def _backend_socks(m, dovecot):
    return len(socks_to(m.proc.pid, dovecot.port))


def _login(m, ca_ctx, user):
    c = imapc.Client(m.imaps_port, tls=ca_ctx, timeout=TIMEOUT)
    c.greeting()
    _, t = c.cmd("l", "LOGIN %s %s" % (imapc.quote(user), imapc.quote(password(user))))
    assert t.startswith(b"l OK"), t
    return c


def _ok(c, tag, text):
    untagged, t = c.cmd(tag, text)
    assert t.startswith(tag.encode() + b" OK"), (text, t)
    return untagged


def _append(c, tag, subject, mailbox="INBOX"):
    msg = b"Subject: %s\r\n\r\nbody\r\n" % subject.encode()
    c.send(b"%s APPEND %s {%d}\r\n" % (tag.encode(), mailbox.encode(), len(msg)))
    assert c.readline().startswith(b"+"), "no continuation for APPEND"
    c.send(msg + b"\r\n")
    _, t = c.read_until_tagged(tag)
    assert t.startswith(tag.encode() + b" OK"), t




def test_idle_session_parks_and_wakes_on_change(make_mux, dovecot, redis, prefix, ca_ctx):
    user = "park1"
    d = _direct(dovecot, user)
    _append(d, "a1", "one")
    m = _mux(make_mux, dovecot, redis, prefix, reuse_ttl="0")
    c = _login(m, ca_ctx, user)
    sel = b"".join(_ok(c, "s", "SELECT INBOX"))
    n = int(re.search(rb"\* (\d+) EXISTS", sel).group(1))
    _ok(c, "f", "UID FETCH 1:* (FLAGS)")
    c.send(b"i IDLE\r\n")
    assert c.readline().startswith(b"+")
    _wait_parked(m, 1)
    wait_until(lambda: _backend_socks(m, dovecot) == 0, 5, "the backend connection closed")
    # A change, announced on the events channel: told in IDLE, exactly.
    _append(d, "a2", "two")
    assert publish(redis, prefix, "mbox %s INBOX" % user) >= 1
    line = c.readline(timeout=TIMEOUT)
    assert line == b"* %d EXISTS\r\n" % (n + 1), line
    _wait_parked(m, 1)
    c.send(b"DONE\r\n")
    assert c.readline() == b"i OK Idle completed.\r\n"
    _ok(c, "n", "NOOP")
    assert _metric(m, "imapmux_wakes_total{cause=\"change\"}") == 1
    # A command wakes it: the answer comes from Dovecot.
    fetched = b"".join(_ok(c, "g", "FETCH %d (FLAGS)" % (n + 1)))
    assert b"* %d FETCH" % (n + 1) in fetched
    assert _metric(m, "imapmux_wakes_total{cause=\"client\"}") == 1
    _ok(c, "z", "LOGOUT")
