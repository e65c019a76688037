"""tools/imapmuxctl against a real Redis, Dovecots and imapmux (issue #12):
route get/set/del, move (route + kick on two instances sharing Redis, the
next login on the new backend), kick, user add/passwd, who (sessions of one
or two instances from their stats ports; a dead one named), usage and exit
codes. backend drain/undrain/list: tests/integration/test_drain.py.
"""

import os
import re
import signal
import subprocess

import pytest

pytest.register_assert_rewrite("conftest_redis")
from conftest_redis import (  # noqa: E402
    backend, connect, dv_password, login_cmd, placed_on, redis_section, set_route,
    wait_subscribed)
import lab  # noqa: E402

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


# ---------------------------------------------------------------------------
# who: the stats ports (GET /sessions), not Redis

def _stats_mux(make_mux, r, prefix, rdv_a, rdv_b, **imapmux):
    port = lab.free_port()
    kv = {"workers": 2, "auth": "backend", "stats_listen": "127.0.0.1:%d" % port}
    kv.update(imapmux)
    m = make_mux(backends=[("a", backend(rdv_a)), ("b", backend(rdv_b))],
                 routing={"lookup": "redis", "fallback": "a", "cache_ttl": 60},
                 redis=redis_section(r, prefix), imapmux=kv)
    m.stats = "127.0.0.1:%d" % port
    return m


def _login(m, ca_ctx, user, password=None):
    c = connect(m.imaps_port, ca_ctx)
    _, tagged = c.cmd("l", login_cmd(user, password or dv_password(user)))
    assert tagged.startswith(b"l OK"), tagged
    return c


def _addr(c):
    return "%s:%d" % c.sock.getsockname()[:2]


def _table(out):
    """(header line, rows as field lists, total line) of who's output."""
    lines = out.rstrip("\n").split("\n")
    assert lines[0].split() == ["INSTANCE", "SESSION", "USER", "CLIENT", "BACKEND", "STATE",
                                "SINCE", "IDLE"], out
    # Aligned: every field starts where its header does.
    starts = [mt.start() for mt in re.finditer(r"\S+", lines[0])]
    for line in lines[1:-1]:
        assert [mt.start() for mt in re.finditer(r"\S+", line)] == starts, out
    return lines[0], [line.split() for line in lines[1:-1]], lines[-1]


def test_who_on_two_instances(make_mux, redis, prefix, rdv_a, rdv_b, ca_ctx):
    m1 = _stats_mux(make_mux, redis, prefix, rdv_a, rdv_b)
    m2 = _stats_mux(make_mux, redis, prefix, rdv_a, rdv_b)
    set_route(redis, prefix, "r06", "b")
    on1 = [_login(m1, ca_ctx, "r05"), connect(m1.imaps_port, ca_ctx)]
    on2 = [_login(m2, ca_ctx, "R06", dv_password("r06"))]

    p = ctl(m1.conf_path, "--stats", m1.stats, "--stats", m2.stats, "who")
    assert p.returncode == 0, p.stderr
    _, rows, total = _table(p.stdout)
    assert total == "3 session(s) on 2 instance(s)", p.stdout
    got = sorted((r[0], r[2], r[3], r[4], r[5]) for r in rows)
    assert got == sorted([
        (m1.stats, "r05", _addr(on1[0]), "a", "logged_in"),
        (m1.stats, "-", _addr(on1[1]), "-", "preauth"),
        (m2.stats, "r06", _addr(on2[0]), "b", "logged_in"),
    ]), p.stdout
    for r in rows:
        assert re.fullmatch(r"S-\d+", r[1]) and re.fullmatch(r"\d{4}-\d\d-\d\dT[\d:]{8}", r[6]), r
        assert re.fullmatch(r"\d+s", r[7]), r

    # One user, named as imapmux names users (username_case = fold).
    for name in ("r06", "R06"):
        p = ctl(m1.conf_path, "--stats", m1.stats, "--stats", m2.stats, "who", name)
        assert p.returncode == 0, p.stderr
        _, rows, total = _table(p.stdout)
        assert [(r[0], r[2]) for r in rows] == [(m2.stats, "r06")], p.stdout
        assert total == "1 session(s) on 2 instance(s)"

    # Without --stats: the configuration's stats_listen.
    p = ctl(m1.conf_path, "who")
    assert p.returncode == 0, p.stderr
    _, rows, total = _table(p.stdout)
    assert sorted(r[3] for r in rows) == sorted(_addr(c) for c in on1), p.stdout
    assert {r[0] for r in rows} == {m1.stats}

    # Usage.
    assert ctl(m1.conf_path, "who", "a", "b").returncode == 2
    assert ctl(m1.conf_path, "--stats", "nowhere", "who").returncode == 2


def test_who_names_an_instance_it_cannot_ask(make_mux, redis, prefix, rdv_a, rdv_b, ca_ctx):
    m = _stats_mux(make_mux, redis, prefix, rdv_a, rdv_b)
    c = _login(m, ca_ctx, "r07")
    dead = "127.0.0.1:%d" % lab.free_port()   # nothing listens there
    p = ctl(m.conf_path, "--stats", dead, "--stats", m.stats, "who")
    assert p.returncode == 1, (p.stdout, p.stderr)
    assert dead in p.stderr and "cannot connect" in p.stderr, p.stderr
    assert m.stats not in p.stderr, p.stderr
    _, rows, total = _table(p.stdout)
    assert [(r[0], r[2], r[3]) for r in rows] == [(m.stats, "r07", _addr(c))], p.stdout
    assert total == "1 session(s) on 1 instance(s); 1 instance(s) could not be asked", total

    # A port that answers something else than /sessions: named, exit 1.
    p = ctl(m.conf_path, "--stats", "127.0.0.1:%d" % rdv_a.port, "who")
    assert p.returncode == 1 and ("127.0.0.1:%d" % rdv_a.port) in p.stderr, p.stderr


def test_who_exits_1_when_a_worker_did_not_answer(make_mux, redis, prefix, rdv_a, rdv_b,
                                                  ca_ctx):
    """In a drain, the worker without sessions leaves its loop and cannot
    answer; the busy one (an APPEND waiting for its literal) still does."""
    m = _stats_mux(make_mux, redis, prefix, rdv_a, rdv_b, shutdown_timeout=20)
    c = _login(m, ca_ctx, "r08")
    try:
        c.send(b"a APPEND INBOX {100}\r\n")
        assert c.readline().startswith(b"+")
        m.expect_exit = True
        m.signal(signal.SIGTERM)
        for _ in range(10):   # until the idle worker has read the drain
            p = ctl(m.conf_path, "who")
            if p.returncode != 0:
                break
        assert p.returncode == 1, (p.stdout, p.stderr)
        assert re.search(r"%s: worker\(s\) [01] did not answer" % re.escape(m.stats), p.stderr), \
            p.stderr
        _, rows, total = _table(p.stdout)
        assert [(r[2], r[3]) for r in rows] == [("r08", _addr(c))], p.stdout
        assert total == "1 session(s) on 1 instance(s)", total
    finally:
        c.close()


def test_who_with_no_stats_listen_says_so(make_mux, redis, prefix, rdv_a, rdv_b):
    m = _mux(make_mux, redis, prefix, rdv_a, rdv_b)
    p = ctl(m.conf_path, "who")
    assert p.returncode == 1 and "stats_listen" in p.stderr, p.stderr
