"""A login that finds its backend's pool at pool_max while kept (reuse)
sessions of that backend exist closes the oldest kept one and proceeds on
the freed slot, instead of waiting pool_wait for NO [UNAVAILABLE]
(proxy/pool.h pool_acquire, proxy/reuse.h reuse_evict_one).

One worker (pool bounds and the reuse cache are per worker), pool_max = 2,
pool_min_idle = 0 (no warm connections taking slots), reuse on, health
checks off, implicit TLS to a Dovecot of this module's own. Which kept
session went is read from Dovecot's log: the evicted one ends with the
LOGOUT imapmux sends it, the other is still open.
"""

import re
import time

import pytest

import imapc
import lab
from conftest import MASTER_PASSWORD, backend_section, scrape_metrics

TIMEOUT = 10.0
POOL_WAIT = 4.0
USERS = ["ev-a", "ev-b", "ev-c", "ev-barrier"]
PROXY_LOGOUT = b"* BYE Logging out\r\n%s OK Logout completed.\r\n"


def pw(user):
    return "evpw-%s-7k" % user


@pytest.fixture(scope="module")
def edv(cert, key):
    d = lab.Dovecot({u: pw(u) for u in USERS}, tls=True, cert=cert, key=key,
                    master_password=MASTER_PASSWORD, name="dovecot-evict")
    d.start()
    yield d
    d.cleanup()


def start_mux(make_mux, dv, cert):
    stats_port = lab.free_port()
    im = {"workers": 1, "stats_listen": "127.0.0.1:%d" % stats_port, "auth_fail_delay": 0}
    bk = backend_section(dv, tls="implicit", ca=cert, check_interval=0, reuse_ttl="300s",
                         pool_max=2, pool_min_idle=0, pool_wait="%ds" % POOL_WAIT)
    m = make_mux(backends=[("a", bk)], imapmux=im,
                 routing={"lookup": "static", "fallback": "a"})
    lab.wait_listening(stats_port, timeout=10, proc=m.proc)
    m.stats_port = stats_port
    return m


def counts(m):
    s = scrape_metrics(m.stats_port)
    return int(s["imapmux_sessions_reused_total"]), int(s["imapmux_backend_logins_total"])


def polite_ends(dv, user):
    """Dovecot's sessions of user ended by a LOGOUT."""
    return len(re.findall(r"imap\(%s\)<[^\n]*?Disconnected: Logged out" % re.escape(user),
                          dv.log_text()))


def wait_until(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail("timed out waiting: " + what)
        time.sleep(0.05)


def log_barrier(dv):
    """Dovecot's log has caught up with every session end before now: a
    direct session of ev-barrier, and its own end, are logged after them."""
    n = polite_ends(dv, "ev-barrier")
    c = dv.imap("ev-barrier", pw("ev-barrier"), timeout=10)
    c.logout()
    wait_until(lambda: polite_ends(dv, "ev-barrier") > n, 5, "Dovecot logged the barrier")


def login(m, ca_ctx, user, tag="l"):
    """(client, tagged answer, seconds the LOGIN took)."""
    c = imapc.Client(m.imaps_port, tls=ca_ctx, timeout=TIMEOUT)
    c.greeting()
    t0 = time.monotonic()
    _, tagged = c.cmd(tag, "LOGIN %s %s" % (imapc.quote(user), imapc.quote(pw(user))))
    return c, tagged, time.monotonic() - t0


def logout_kept(c, tag="o"):
    """LOGOUT answered by imapmux itself: the backend session is kept."""
    c.send("%s LOGOUT\r\n" % tag)
    got = c.expect_closed(5)
    assert got == PROXY_LOGOUT % tag.encode(), got
    c.close()


def test_full_pool_evicts_the_oldest_kept_session(make_mux, edv, cert, ca_ctx):
    m = start_mux(make_mux, edv, cert)
    base = {u: polite_ends(edv, u) for u in USERS}

    # Two kept sessions fill the pool: ev-a's first (the oldest), then ev-b's.
    for user in ("ev-a", "ev-b"):
        c, tagged, _ = login(m, ca_ctx, user)
        assert tagged.startswith(b"l OK "), (user, tagged)
        logout_kept(c)
    assert counts(m) == (0, 2)

    # ev-c finds no idle connection and the pool at its bound: ev-a's kept
    # session goes, and ev-c logs in on the slot at once, not after pool_wait.
    c, tagged, took = login(m, ca_ctx, "ev-c")
    assert tagged.startswith(b"l OK "), tagged
    assert took < POOL_WAIT - 1, "login waited %.1fs for a slot" % took
    assert counts(m) == (0, 3)
    wait_until(lambda: polite_ends(edv, "ev-a") > base["ev-a"], 5,
               "the evicted kept session of ev-a ended" + edv.log_tail_text(10))
    log_barrier(edv)
    assert polite_ends(edv, "ev-b") == base["ev-b"], "ev-b's kept session went too"

    # ev-b's kept session is still there to be taken.
    cb, tagged, _ = login(m, ca_ctx, "ev-b", tag="b")
    assert tagged.startswith(b"b OK "), tagged
    assert counts(m) == (1, 3)

    # Both slots attached, nothing kept: a third login waits pool_wait and
    # is refused, evicting nothing.
    ca, tagged, took = login(m, ca_ctx, "ev-a", tag="a")
    assert tagged.startswith(b"a NO [UNAVAILABLE]"), tagged
    assert took >= POOL_WAIT - 0.5, "refused after %.1fs" % took
    for cl in (c, cb, ca):
        cl.close()
