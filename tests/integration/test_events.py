"""The events channel <prefix>events (SPEC "Redis schema"): every instance
subscribes; `kick USER` closes every session of USER with `* BYE
[UNAVAILABLE] ...`, and leaves every other session alone. ("route USER" is
tested in test_redis_routing.py.)

Logins use auth = backend (Dovecot's passwords) and lookup = redis, so that
Redis is in use whatever else the build does with it.
"""

import time

import pytest

import imapc

pytest.register_assert_rewrite("conftest_redis")
from conftest_redis import (  # noqa: E402
    backend, connect, dv_password, login_cmd, publish, redis_section, wait_subscribed)

# The fixtures prefix, fresh_redis, rdv_a, rdv_b and rdv_fresh.
pytest_plugins = ["conftest_redis"]


def _mux(make_mux, r, prefix, dv, workers=2):
    return make_mux(backends=[("a", backend(dv))],
                    routing={"lookup": "redis", "fallback": "a"},
                    redis=redis_section(r, prefix),
                    imapmux={"workers": workers, "auth": "backend"})


def _session(m, ca_ctx, user, idle=False):
    c = connect(m.imaps_port, ca_ctx)
    _, tagged = c.cmd("l", login_cmd(user, dv_password(user)))
    assert tagged.startswith(b"l OK"), (user, tagged)
    _, tagged = c.cmd("s", "SELECT INBOX")
    assert tagged.startswith(b"s OK"), tagged
    if idle:
        c.send(b"i IDLE\r\n")
        line = c.readline()
        assert line.startswith(b"+"), line
    return c


def _assert_kicked(c, what, timeout=3.0):
    try:
        got = c.expect_closed(timeout)
    except imapc.Timeout:
        raise AssertionError("%s: not closed %.0fs after the kick; read %r"
                             % (what, timeout, c.transcript[-3:]))
    # The BYE is the last thing sent, a whole line (untagged responses the
    # backend sent just before may precede it).
    last = got[:-2].rsplit(b"\r\n", 1)[-1] if got.endswith(b"\r\n") else got
    assert last.startswith(b"* BYE [UNAVAILABLE]"), (what, got)


def _assert_untouched(c, what, idle=False):
    if idle:
        c.send(b"DONE\r\n")
        _, tagged = c.read_until_tagged("i", timeout=5)
        assert tagged.startswith(b"i OK"), (what, tagged)
    _, tagged = c.cmd("n", "NOOP", timeout=5)
    assert tagged.startswith(b"n OK"), (what, tagged)


def test_kick_closes_every_session_of_the_user(make_mux, redis, prefix, rdv_a, ca_ctx):
    m = _mux(make_mux, redis, prefix, rdv_a)
    wait_subscribed(redis, prefix, 1)
    time.sleep(0.5)   # every worker's subscription, where each has its own
    clients = []
    try:
        # Two sessions in IDLE and two selected, so that both workers most
        # likely hold some (SO_REUSEPORT spreads connections).
        kicked = [(_session(m, ca_ctx, "rkick", idle=idle), "rkick %s #%d"
                   % ("in IDLE" if idle else "selected", i))
                  for i, idle in enumerate((True, False, True, False))]
        clients = [c for c, _ in kicked]
        # rkickx: a name that starts with the kicked one; rkick2: another user.
        x_sel = _session(m, ca_ctx, "rkickx")
        o_idle = _session(m, ca_ctx, "rkick2", idle=True)
        pre = connect(m.imaps_port, ca_ctx)
        clients += [x_sel, o_idle, pre]
        assert publish(redis, prefix, "kick rkick") >= 1
        for c, what in kicked:
            _assert_kicked(c, what)
        _assert_untouched(x_sel, "rkickx")
        _assert_untouched(o_idle, "rkick2 in IDLE", idle=True)
        _assert_untouched(pre, "a session before login")
        # A kick is not a ban: rkick logs in again.
        c = _session(m, ca_ctx, "rkick")
        clients.append(c)
        _assert_untouched(c, "rkick after the kick")
    finally:
        for c in clients:
            c.close()
    assert m.alive()


def test_kick_reaches_every_instance(make_mux, redis, prefix, rdv_a, ca_ctx):
    m1 = _mux(make_mux, redis, prefix, rdv_a)
    m2 = _mux(make_mux, redis, prefix, rdv_a, workers=1)
    wait_subscribed(redis, prefix, 2)
    time.sleep(0.3)
    clients = []
    try:
        k1 = _session(m1, ca_ctx, "rkick", idle=True)
        k2 = _session(m2, ca_ctx, "rkick", idle=True)
        k2b = _session(m2, ca_ctx, "rkick")
        o1 = _session(m1, ca_ctx, "rkick2")
        o2 = _session(m2, ca_ctx, "rkick2", idle=True)
        clients = [k1, k2, k2b, o1, o2]
        assert publish(redis, prefix, "kick rkick") >= 2
        _assert_kicked(k1, "rkick on instance 1")
        _assert_kicked(k2, "rkick in IDLE on instance 2")
        _assert_kicked(k2b, "rkick selected on instance 2")
        _assert_untouched(o1, "rkick2 on instance 1")
        _assert_untouched(o2, "rkick2 on instance 2", idle=True)
    finally:
        for c in clients:
            c.close()
    assert m1.alive() and m2.alive()


@pytest.mark.parametrize("message", [
    "kick nobody-logged-in", "kick", "kick ", "route", "bogus rkick", "", "KICK",
    "kick rkick2 extra words", "mbox rkick2", "\x00kick rkick2", "kick rkick2\r\n" * 3,
])
def test_odd_events_are_harmless(make_mux, redis, prefix, rdv_a, ca_ctx, message):
    """Malformed, unknown or empty events change nothing for other users and
    never bring imapmux down ("kick rkick2 extra words" names no user of
    ours, whatever an implementation makes of it)."""
    m = _mux(make_mux, redis, prefix, rdv_a, workers=1)
    wait_subscribed(redis, prefix, 1)
    c = _session(m, ca_ctx, "rkick", idle=True)
    try:
        assert publish(redis, prefix, message) >= 1
        time.sleep(0.3)
        _assert_untouched(c, "rkick after %r" % message, idle=True)
    finally:
        c.close()
    assert m.alive()


def test_events_on_another_prefix_are_ignored(make_mux, redis, prefix, rdv_a, ca_ctx):
    m = _mux(make_mux, redis, prefix, rdv_a, workers=1)
    wait_subscribed(redis, prefix, 1)
    c = _session(m, ca_ctx, "rkick", idle=True)
    try:
        redis.command("PUBLISH", "other-" + prefix + "events", "kick rkick")
        redis.command("PUBLISH", "imapmux:events", "kick rkick")
        time.sleep(0.3)
        _assert_untouched(c, "rkick", idle=True)
    finally:
        c.close()
