"""Helpers for the parked-IDLE tests in test_park_cyrus.py and
test_park_edges.py (test_park.py keeps its own copies).

They are test_park.py's helpers with the watch mode passed in, not read from
a module global: importing test_park itself would share that global (set by
test_park's autouse fixture) with every module that imports it. `server` is
anything with .port, .master_password and the users' passwords
(conftest.password): the module's Dovecot, or lab.Cyrus.
"""

import re
import time

import imapc
import lab
from conftest import backend_section, password, scrape_metrics, socks_to, wait_until
from conftest_redis import publish, redis_section, wait_subscribed

TIMEOUT = 10.0
KEEPALIVE = b"* OK Still here\r\n"


def announce(redis, prefix, watch, user, mailbox="INBOX"):
    """What Dovecot's push script does after a change; with a watcher
    (watch != events) nothing is published: it must find the change itself."""
    if watch == "events":
        assert publish(redis, prefix, "mbox %s %s" % (user, mailbox)) >= 1


def mux(make_mux, server, redis, prefix, watch, imapmux=None, **bk):
    """One worker, park_idle_after 1s, /metrics on m.stats_port, the
    backend a = server (no TLS) with its master credentials."""
    kv = backend_section(server, watch=watch)
    kv.update(bk)
    kv = {k: v for k, v in kv.items() if v is not None}
    port = lab.free_port()
    base = {"workers": 1, "park_idle_after": "1s", "log_level": "debug",
            "stats_listen": "127.0.0.1:%d" % port}
    base.update(imapmux or {})
    m = make_mux(backends=[("a", kv)], redis=redis_section(redis, prefix), imapmux=base)
    m.stats_port = port
    m.watch = watch
    wait_subscribed(redis, prefix, 1)
    return m


def metric(m, name):
    return scrape_metrics(m.stats_port).get(name, 0)


def wakes(m, cause):
    return metric(m, "imapmux_wakes_total{cause=\"%s\"}" % cause)


def backend_socks(m, server):
    """Backend connections imapmux holds for sessions (not its watchers)."""
    return len(socks_to(m.proc.pid, server.port)) - int(metric(m, "imapmux_watchers"))


def wait_parked(m, n, timeout=8.0):
    """n sessions parked; with watchers, each watcher up and the one
    catch-up wake it causes (sessions parked before it was up) over."""
    def parked():
        return metric(m, "imapmux_sessions_parked") >= n
    wait_until(parked, timeout,
               lambda: "%d parked session(s) (have %s)" % (n, metric(m, "imapmux_sessions_parked")))
    if m.watch != "events":
        wait_until(lambda: metric(m, "imapmux_watchers_up") >= metric(m, "imapmux_watchers") > 0,
                   timeout, "every watcher up")
        time.sleep(0.3)
        wait_until(parked, timeout, "parked again after the watchers' catch-up")


def direct(server, user, enable=None):
    """A client straight on the server (the store's truth, and the one
    making changes)."""
    c = imapc.Client(server.port, timeout=TIMEOUT)
    c.greeting()
    _, t = c.cmd("l", "LOGIN %s %s" % (imapc.quote(user), imapc.quote(password(user))))
    assert t.startswith(b"l OK"), t
    if enable:
        ok(c, "e", "ENABLE " + enable)
    return c


def login(m, ca_ctx, user):
    """An implicit-TLS client through imapmux, logged in."""
    c = imapc.Client(m.imaps_port, tls=ca_ctx, timeout=TIMEOUT)
    c.greeting()
    _, t = c.cmd("l", "LOGIN %s %s" % (imapc.quote(user), imapc.quote(password(user))))
    assert t.startswith(b"l OK"), t
    return c


def ok(c, tag, text):
    untagged, t = c.cmd(tag, text)
    assert t.startswith(tag.encode() + b" OK"), (text, t)
    return untagged


def append(c, tag, subject, mailbox="INBOX"):
    """APPEND through c; mailbox is sent as written (atom, quoted string)."""
    if isinstance(mailbox, str):
        mailbox = mailbox.encode()
    msg = b"Subject: %s\r\n\r\nbody\r\n" % subject.encode()
    c.send(b"%s APPEND %s {%d}\r\n" % (tag.encode(), mailbox, len(msg)))
    assert c.readline().startswith(b"+"), "no continuation for APPEND"
    c.send(msg + b"\r\n")
    _, t = c.read_until_tagged(tag)
    assert t.startswith(tag.encode() + b" OK"), t
    return t


def exists_of(untagged):
    return int(re.search(rb"\* (\d+) EXISTS", b"".join(untagged)).group(1))


def park_idle(m, ca_ctx, user, enable=None, fetch=True, mailbox="INBOX", select="SELECT"):
    """A client through imapmux with mailbox selected (UIDs learned when
    fetch), in IDLE; (client, the SELECT's EXISTS count)."""
    c = login(m, ca_ctx, user)
    if enable:
        ok(c, "e", "ENABLE " + enable)
    n = exists_of(ok(c, "s", "%s %s" % (select, mailbox)))
    if fetch and n:
        ok(c, "f", "UID FETCH 1:* (FLAGS)")
    c.send(b"i IDLE\r\n")
    assert c.readline().startswith(b"+")
    return c, n


def reset_inbox(server, user, subjects, mailbox="INBOX"):
    """The user's mailbox holds exactly these messages (new ones, UIDs
    ascending); the direct client, with the mailbox selected."""
    d = direct(server, user)
    if exists_of(ok(d, "s", "SELECT " + mailbox)):
        ok(d, "d", "STORE 1:* +FLAGS.SILENT (\\Deleted)")
        ok(d, "x", "EXPUNGE")
    for i, subj in enumerate(subjects):
        append(d, "a%d" % i, subj, mailbox)
    return d


def data(c, timeout=TIMEOUT, skip=(KEEPALIVE,)):
    """The next line but the server's IDLE keep-alives (Dovecot times them
    per user and address: one may come at any moment while attached)."""
    while True:
        line = c.readline(timeout=timeout)
        if line not in skip:
            return line


def lines_until(c, pred, timeout=TIMEOUT):
    got = []
    deadline = time.monotonic() + timeout
    while not pred(got):
        left = deadline - time.monotonic()
        assert left > 0, "waited for more lines; got %r" % got
        got.append(data(c, timeout=left))
    return got


def quiet(c, secs, skip=(KEEPALIVE,)):
    """Nothing but keep-alives arrives on c for secs seconds (Dovecot's may
    have come while the session was still attached, before it parked)."""
    deadline = time.monotonic() + secs
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        try:
            line = c.readline(timeout=left)
        except imapc.Timeout:
            return
        if line not in skip:
            raise AssertionError("unexpected %r" % line)
