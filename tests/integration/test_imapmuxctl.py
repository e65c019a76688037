"""tools/imapmuxctl against a real Redis, Dovecots and imapmux (issue #12):
route get/set/del, move (route + kick on two instances sharing Redis, the
next login on the new backend), kick, usage and exit codes.

Not yet covered (not built yet): user add/passwd, backend drain/undrain, who.
"""

import os
import subprocess

import pytest

pytest.register_assert_rewrite("conftest_redis")
from conftest_redis import (  # noqa: E402
    backend, connect, dv_password, login_cmd, placed_on, redis_section, wait_subscribed)

pytest_plugins = ["conftest_redis"]

HERE = os.path.dirname(os.path.abspath(__file__))
CTL = os.path.join(os.path.dirname(os.path.dirname(HERE)), "tools", "imapmuxctl")


def ctl(conf, *args, stdin=None):
    return subprocess.run([CTL, "-c", conf] + list(args), input=stdin, capture_output=True,
                          text=True, timeout=20)


def _mux(make_mux, r, prefix, rdv_a, rdv_b):
    return make_mux(backends=[("a", backend(rdv_a)), ("b", backend(rdv_b))],
                    routing={"lookup": "redis", "fallback": "a", "cache_ttl": 60},
                    redis=redis_section(r, prefix),
                    imapmux={"workers": 1, "auth": "backend"})


def test_usage_and_route_get_set_del(make_mux, redis, prefix, rdv_a, rdv_b):
    m = _mux(make_mux, redis, prefix, rdv_a, rdv_b)
    assert subprocess.run([CTL, "-h"], capture_output=True).returncode == 0
    assert ctl(m.conf_path, "bogus").returncode == 2
    assert ctl(m.conf_path, "route", "get", "r01").stdout.startswith("(none")
    p = ctl(m.conf_path, "route", "set", "r01", "nosuch")
    assert p.returncode == 1 and "nosuch" in p.stderr
    assert redis.command("GET", prefix + "route:r01") is None
    assert ctl(m.conf_path, "route", "set", "r01", "b").returncode == 0
    assert redis.command("GET", prefix + "route:r01") in ("b", b"b")
    assert ctl(m.conf_path, "route", "get", "r01").stdout == "b\n"
    assert ctl(m.conf_path, "route", "del", "r01").returncode == 0
    assert redis.command("GET", prefix + "route:r01") is None


def test_move_kicks_on_two_instances_and_next_login_lands(make_mux, redis, prefix, rdv_a,
                                                          rdv_b, ca_ctx):
    m1 = _mux(make_mux, redis, prefix, rdv_a, rdv_b)
    m2 = _mux(make_mux, redis, prefix, rdv_a, rdv_b)
    wait_subscribed(redis, prefix, 2)
    dvs = {"a": rdv_a, "b": rdv_b}
    assert ctl(m1.conf_path, "route", "set", "r02", "a").returncode == 0
    assert placed_on(m1, ca_ctx, "r02", dv_password("r02"), dvs) == "a"
    sessions = []
    for m in (m1, m2):
        c = connect(m.imaps_port, ca_ctx)
        _, tagged = c.cmd("l", login_cmd("r02", dv_password("r02")))
        assert tagged.startswith(b"l OK"), tagged
        sessions.append(c)
    p = ctl(m1.conf_path, "move", "r02", "b")
    assert p.returncode == 0, p.stderr
    assert "2 subscriber" in p.stdout, p.stdout
    for c in sessions:
        got = c.expect_closed(5)
        assert b"* BYE [UNAVAILABLE]" in got, got
    # The route event dropped both instances' cached route.
    assert placed_on(m1, ca_ctx, "r02", dv_password("r02"), dvs) == "b"
    assert placed_on(m2, ca_ctx, "r02", dv_password("r02"), dvs) == "b"


def test_kick_counts_receivers(make_mux, redis, prefix, rdv_a, rdv_b, ca_ctx):
    m = _mux(make_mux, redis, prefix, rdv_a, rdv_b)
    wait_subscribed(redis, prefix, 1)
    c = connect(m.imaps_port, ca_ctx)
    _, tagged = c.cmd("l", login_cmd("r03", dv_password("r03")))
    assert tagged.startswith(b"l OK"), tagged
    p = ctl(m.conf_path, "kick", "r03")
    assert p.returncode == 0 and "1 subscriber" in p.stdout, (p.stdout, p.stderr)
    got = c.expect_closed(5)
    assert b"* BYE [UNAVAILABLE] Session terminated" in got, got


def test_user_add_then_passwd_with_auth_redis(make_mux, redis, prefix, rdv_a, ca_ctx):
    from conftest_redis import libcrypt_check, try_login
    m = make_mux(backends=[("a", backend(rdv_a))],
                 routing={"lookup": "redis", "fallback": "a"},
                 redis=redis_section(redis, prefix),
                 imapmux={"workers": 1, "auth": "redis", "auth_fail_delay": 0})
    first, second = "Ctl-Pw-first-81", "Ctl-Pw-second-82"
    p = subprocess.Popen([CTL, "-c", m.conf_path, "user", "add", "r04"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with open("/proc/%d/cmdline" % p.pid, "rb") as f:
        assert first.encode() not in f.read()
    out, err = p.communicate(first + "\n", timeout=20)
    assert p.returncode == 0, err
    h = redis.command("HGET", prefix + "user:r04", "password")
    h = h.decode() if isinstance(h, bytes) else h
    assert h.startswith("$y$") and libcrypt_check(first, h), h
    assert try_login(m, ca_ctx, "r04", first).startswith(b"l OK")
    p = ctl(m.conf_path, "user", "add", "r04", stdin=second + "\n")
    assert p.returncode == 1 and "exists" in p.stderr
    p = ctl(m.conf_path, "user", "passwd", "nobody-here", stdin=second + "\n")
    assert p.returncode == 1 and "no user" in p.stderr
    assert ctl(m.conf_path, "user", "passwd", "r04", stdin=second + "\n").returncode == 0
    assert try_login(m, ca_ctx, "r04", second).startswith(b"l OK")
    assert not try_login(m, ca_ctx, "r04", first).startswith(b"l OK")
