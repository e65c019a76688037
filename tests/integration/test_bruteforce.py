"""Brute-force limits with auth = redis: failed logins are counted in Redis
under <prefix>authfail:ip:IP and <prefix>authfail:user:USER, each expiring
after auth_fail_window; once either count reaches auth_fail_limit, logins for
that user (or from that address) are refused with NO [AUTHENTICATIONFAILED],
even with the right password, until the key expires. Every failed login is
answered only after auth_fail_delay, without holding up the worker.

Client addresses: the tests connect to 127.0.0.1 from other loopback source
addresses (127.0.0.2 ...), so that the per-address and per-user counters can
be told apart. Each test has a Redis prefix of its own (fixture prefix).
"""

import threading
import time

import pytest

import imapc

pytest.register_assert_rewrite("conftest_redis")
from conftest_redis import (  # noqa: E402
    backend, connect, crypt_hash, login_cmd, rd_password, redis_section, set_password,
    try_login, wait_until)

# The fixtures prefix, fresh_redis, rdv_a, rdv_b and rdv_fresh.
pytest_plugins = ["conftest_redis"]

LIMIT, WINDOW = 3, 3.0


def _mux(make_mux, r, prefix, dv, **imapmux_extra):
    im = {"workers": 2, "auth": "redis", "auth_fail_limit": LIMIT,
          "auth_fail_window": "%ds" % WINDOW, "auth_fail_delay": "100ms"}
    im.update(imapmux_extra)
    return make_mux(backends=[("a", backend(dv))],
                    routing={"lookup": "static", "fallback": "a"},
                    redis=redis_section(r, prefix), imapmux=im)


def _users(r, prefix, *users):
    for u in users:
        set_password(r, prefix, u, crypt_hash(rd_password(u), "$6$"))


def _get_int(r, key):
    v = r.command("GET", key)
    return None if v is None else int(v)


def _fail(m, ca_ctx, user, source, tag="f"):
    tagged = try_login(m, ca_ctx, user, "wrong-" + rd_password(user), source=source, tag=tag)
    assert tagged.startswith(tag.encode() + b" NO [AUTHENTICATIONFAILED]"), (user, source, tagged)


def _login(m, ca_ctx, user, source):
    return try_login(m, ca_ctx, user, rd_password(user), source=source)


def _assert_count(r, key, n):
    """The counter reaches n (INCR may land just after the NO) and expires
    within auth_fail_window."""
    wait_until(lambda: _get_int(r, key) == n, 2,
               lambda: "%s == %d (is %r)" % (key, n, _get_int(r, key)))
    wait_until(lambda: 0 < int(r.command("PTTL", key)) <= WINDOW * 1000, 1,
               lambda: "%s expires within %ss (PTTL %s)" % (key, WINDOW, r.command("PTTL", key)))


def _wait_gone(r, *keys):
    """Wait (bounded by the window plus slack) until every key has expired."""
    wait_until(lambda: all(int(r.command("EXISTS", k)) == 0 for k in keys), WINDOW + 2.5,
               "%s expired" % (keys,), interval=0.1)


@pytest.mark.slow
def test_user_lockout_and_expiry(make_mux, redis, prefix, rdv_a, ca_ctx):
    _users(redis, prefix, "rfail", "rok")
    m = _mux(make_mux, redis, prefix, rdv_a)
    # Three failures for rfail, each from another address: only the user's
    # counter reaches the limit.
    for src in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
        _fail(m, ca_ctx, "rfail", src)
    ukey = prefix + "authfail:user:rfail"
    _assert_count(redis, ukey, LIMIT)
    for src in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
        _assert_count(redis, prefix + "authfail:ip:" + src, 1)
    # Locked: the right password from a fresh address is refused, LOGIN and
    # AUTHENTICATE alike; another user is not.
    tagged = _login(m, ca_ctx, "rfail", "127.0.0.5")
    assert tagged.startswith(b"l NO [AUTHENTICATIONFAILED]"), tagged
    with connect(m.imaps_port, ca_ctx, source="127.0.0.5") as c:
        _, tagged = c.cmd("p", "AUTHENTICATE PLAIN " + imapc.plain_ir("rfail", rd_password("rfail")))
        assert tagged.startswith(b"p NO [AUTHENTICATIONFAILED]"), tagged
    assert _login(m, ca_ctx, "rok", "127.0.0.6").startswith(b"l OK"), "rok locked too"
    # After the window the right password works again.
    _wait_gone(redis, ukey)
    tagged = _login(m, ca_ctx, "rfail", "127.0.0.5")
    assert tagged.startswith(b"l OK"), tagged


@pytest.mark.slow
def test_address_lockout_and_expiry(make_mux, redis, prefix, rdv_a, ca_ctx):
    _users(redis, prefix, "rfail", "rfail2", "rfail3", "rok")
    m = _mux(make_mux, redis, prefix, rdv_a)
    src = "127.0.0.7"
    for u in ("rfail", "rfail2", "rfail3"):
        _fail(m, ca_ctx, u, src)
    ikey = prefix + "authfail:ip:" + src
    _assert_count(redis, ikey, LIMIT)
    _assert_count(redis, prefix + "authfail:user:rfail2", 1)
    tagged = _login(m, ca_ctx, "rok", src)
    assert tagged.startswith(b"l NO [AUTHENTICATIONFAILED]"), tagged
    assert _login(m, ca_ctx, "rok", "127.0.0.8").startswith(b"l OK"), "other address locked"
    _wait_gone(redis, ikey)
    tagged = _login(m, ca_ctx, "rok", src)
    assert tagged.startswith(b"l OK"), tagged


def test_lockout_shared_by_two_instances(make_mux, redis, prefix, rdv_a, ca_ctx):
    """Two imapmux on the same Redis: failures on one lock out on the other."""
    _users(redis, prefix, "rfail", "rfail2", "rfail3", "rfail4", "rok")
    m1 = _mux(make_mux, redis, prefix, rdv_a)
    m2 = _mux(make_mux, redis, prefix, rdv_a)
    for src in ("127.0.0.2", "127.0.0.3", "127.0.0.4"):
        _fail(m1, ca_ctx, "rfail", src)
    for u in ("rfail2", "rfail3", "rfail4"):
        _fail(m1, ca_ctx, u, "127.0.0.9")
    _assert_count(redis, prefix + "authfail:user:rfail", LIMIT)
    _assert_count(redis, prefix + "authfail:ip:127.0.0.9", LIMIT)
    tagged = _login(m2, ca_ctx, "rfail", "127.0.0.5")
    assert tagged.startswith(b"l NO [AUTHENTICATIONFAILED]"), ("user lock not shared", tagged)
    tagged = _login(m2, ca_ctx, "rok", "127.0.0.9")
    assert tagged.startswith(b"l NO [AUTHENTICATIONFAILED]"), ("address lock not shared", tagged)
    assert _login(m2, ca_ctx, "rok", "127.0.0.6").startswith(b"l OK")


def test_limit_zero_is_off(make_mux, redis, prefix, rdv_a, ca_ctx):
    _users(redis, prefix, "rfail")
    m = _mux(make_mux, redis, prefix, rdv_a, auth_fail_limit=0)
    for i in range(LIMIT + 3):
        _fail(m, ca_ctx, "rfail", "127.0.0.10", tag="f%d" % i)
    tagged = _login(m, ca_ctx, "rfail", "127.0.0.10")
    assert tagged.startswith(b"l OK"), tagged


@pytest.mark.slow
def test_failure_delay_does_not_block_the_worker(make_mux, redis, prefix, rdv_a, ca_ctx):
    """auth_fail_delay = 1s, one worker: the wrong password is answered after
    >= 0.9 s; meanwhile the same worker answers another client's NOOP (before
    and after login) and greets a new connection at once. A right password
    is not delayed."""
    _users(redis, prefix, "rdelay", "rok")
    m = _mux(make_mux, redis, prefix, rdv_a, workers=1, auth_fail_delay="1s",
             auth_fail_limit=10)
    logged = connect(m.imaps_port, ca_ctx)
    preauth = connect(m.imaps_port, ca_ctx)
    victim = connect(m.imaps_port, ca_ctx, source="127.0.0.11")
    try:
        t0 = time.monotonic()
        _, tagged = logged.cmd("l", login_cmd("rok", rd_password("rok")))
        assert tagged.startswith(b"l OK"), tagged
        assert time.monotonic() - t0 < 0.8, "a successful login was delayed"
        _, tagged = logged.cmd("s", "SELECT INBOX")
        assert tagged.startswith(b"s OK"), tagged

        result = {}

        def wrong():
            t = time.monotonic()
            _, tg = victim.cmd("w", login_cmd("rdelay", "wrong-password"), timeout=8)
            result["elapsed"], result["tagged"] = time.monotonic() - t, tg

        th = threading.Thread(target=wrong)
        th.start()
        time.sleep(0.2)   # the wrong password is now being delayed
        timings = []
        for tag, c in (("n1", preauth), ("n2", logged)):
            t = time.monotonic()
            _, tagged = c.cmd(tag, "NOOP", timeout=5)
            timings.append((tag, time.monotonic() - t))
            assert tagged.startswith(tag.encode() + b" OK"), tagged
        t = time.monotonic()
        with connect(m.imaps_port, ca_ctx):
            timings.append(("greeting", time.monotonic() - t))
        still_waiting = th.is_alive()
        th.join(10)
        assert not th.is_alive(), "no answer to the wrong password"
        assert result["tagged"].startswith(b"w NO [AUTHENTICATIONFAILED]"), result
        assert result["elapsed"] >= 0.9, "wrong password answered after %.2fs" % result["elapsed"]
        assert result["elapsed"] < 4, "wrong password answered after %.2fs" % result["elapsed"]
        assert still_waiting, "the NOOPs were not sent during the delay (%r)" % timings
        assert all(dt < 0.3 for _, dt in timings), "worker blocked by the delay: %r" % timings
    finally:
        for c in (logged, preauth, victim):
            c.close()
