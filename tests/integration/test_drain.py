"""Backend drain (issue #12): `imapmuxctl backend NAME drain|undrain` against a
real Redis, two real Dovecots and imapmux.

A drained backend gets no new logins (a route to it: NO [UNAVAILABLE]; the
hash fallback skips it), its quiet sessions leave with
`* BYE [UNAVAILABLE] Backend draining, reconnect.`, a command under way is
finished first, parked sessions go at once, kept sessions and idle pool
connections are closed and not reopened until undrain. The set lives in Redis:
an instance started later, or one that missed the event, reads it.
"""

import os
import subprocess
import time

import pytest

import lab

pytest.register_assert_rewrite("conftest_redis")
from conftest import scrape_metrics, socks_to, wait_until  # noqa: E402
from conftest_redis import (  # noqa: E402
    backend, connect, dv_password, login_cmd, placed_on, redis_section, set_route, try_login,
    wait_subscribed)

pytest_plugins = ["conftest_redis"]

HERE = os.path.dirname(os.path.abspath(__file__))
CTL = os.path.join(os.path.dirname(os.path.dirname(HERE)), "tools", "imapmuxctl")
BYE = b"* BYE [UNAVAILABLE] Backend draining, reconnect."


def ctl(conf, *args):
    return subprocess.run([CTL, "-c", conf] + list(args), capture_output=True, text=True,
                          timeout=20)


def _mux(make_mux, r, prefix, rdv_a, rdv_b, a_extra=None, imapmux=None, fallback="hash"):
    base = {"workers": 1, "auth": "backend", "auth_fail_delay": 0}
    base.update(imapmux or {})
    m = make_mux(backends=[("a", backend(rdv_a, **(a_extra or {}))), ("b", backend(rdv_b))],
                 routing={"lookup": "redis", "fallback": fallback, "cache_ttl": 60},
                 redis=redis_section(r, prefix), imapmux=base)
    return m


def _login(m, ca_ctx, user):
    c = connect(m.imaps_port, ca_ctx)
    _, tagged = c.cmd("l", login_cmd(user, dv_password(user)))
    assert tagged.startswith(b"l OK"), tagged
    return c


def test_drain_byes_quiet_sessions_refuses_routed_logins_and_undrain_restores(
        make_mux, redis, prefix, rdv_a, rdv_b, ca_ctx):
    m = _mux(make_mux, redis, prefix, rdv_a, rdv_b)
    wait_subscribed(redis, prefix, 1)
    set_route(redis, prefix, "r10", "a")
    set_route(redis, prefix, "r11", "b")
    on_a, on_b = _login(m, ca_ctx, "r10"), _login(m, ca_ctx, "r11")

    p = ctl(m.conf_path, "backend", "a", "drain")
    assert p.returncode == 0, p.stderr
    assert "1 subscriber" in p.stdout, p.stdout
    assert redis.command("SISMEMBER", prefix + "drained", "a") == 1
    got = on_a.expect_closed(5)
    assert BYE in got, got
    # The other backend's session goes on.
    _, tagged = on_b.cmd("n", "NOOP")
    assert tagged.startswith(b"n OK"), tagged
    # A login routed to the drained backend is refused as unavailable, the
    # session staying open for another try.
    with connect(m.imaps_port, ca_ctx) as c:
        _, tagged = c.cmd("l", login_cmd("r10", dv_password("r10")))
        assert tagged.startswith(b"l NO [UNAVAILABLE]"), tagged
        _, tagged = c.cmd("n", "NOOP")
        assert tagged.startswith(b"n OK"), tagged
    assert "routed backend is drained" in m.log_text()
    assert "backend a drained" in m.log_text()

    listed = ctl(m.conf_path, "backend", "list")
    assert listed.returncode == 0, listed.stderr
    lines = {ln.split()[0]: ln.split()[-1] for ln in listed.stdout.splitlines()}
    assert lines == {"a": "drained", "b": "service"}, listed.stdout

    p = ctl(m.conf_path, "backend", "a", "undrain")
    assert p.returncode == 0 and "undrained" in p.stdout, (p.stdout, p.stderr)
    assert redis.command("SISMEMBER", prefix + "drained", "a") == 0
    dvs = {"a": rdv_a, "b": rdv_b}
    wait_until(lambda: "backend a undrained" in m.log_text(), 5, "the undrain event")
    assert placed_on(m, ca_ctx, "r10", dv_password("r10"), dvs) == "a"
    on_b.close()


def test_usage_errors(make_mux, redis, prefix, rdv_a, rdv_b):
    m = _mux(make_mux, redis, prefix, rdv_a, rdv_b)
    p = ctl(m.conf_path, "backend", "nosuch", "drain")
    assert p.returncode == 1 and "nosuch" in p.stderr, p.stderr
    assert redis.command("SCARD", prefix + "drained") == 0
    assert ctl(m.conf_path, "backend", "a", "sideways").returncode == 2
    assert ctl(m.conf_path, "backend").returncode == 2
    # Undraining a name the configuration no longer has cleans it up.
    redis.command("SADD", prefix + "drained", "gone")
    assert ctl(m.conf_path, "backend", "gone", "undrain").returncode == 0
    assert redis.command("SCARD", prefix + "drained") == 0


def test_a_command_under_way_finishes_before_the_bye(make_mux, redis, prefix, rdv_a, rdv_b,
                                                      ca_ctx):
    m = _mux(make_mux, redis, prefix, rdv_a, rdv_b)
    wait_subscribed(redis, prefix, 1)
    set_route(redis, prefix, "r12", "a")
    c = _login(m, ca_ctx, "r12")
    msg = b"Subject: drain\r\n\r\n" + b"x" * 4000 + b"\r\n"
    c.send(b"ap APPEND INBOX {%d}\r\n" % len(msg))
    assert c.readline().startswith(b"+")
    c.send(msg[:1000])
    assert ctl(m.conf_path, "backend", "a", "drain").returncode == 0
    wait_until(lambda: "backend a drained" in m.log_text(), 5, "the drain event")
    # Mid-literal the session is not quiet: nothing may come yet.
    time.sleep(0.5)
    c.sock.settimeout(0.5)
    try:
        early = c.sock.recv(100)
    except (TimeoutError, OSError):
        early = b""
    assert early == b"", early
    c.sock.settimeout(8)
    c.send(msg[1000:] + b"\r\n")
    _, tagged = c.read_until_tagged("ap")
    assert tagged.startswith(b"ap OK"), tagged
    got = c.expect_closed(5)
    assert BYE in got, got
    assert "end=backend drained" in m.log_text() or "backend drained" in m.log_text()


def test_hash_fallback_skips_a_drained_backend_and_a_new_instance_reads_the_set(
        make_mux, redis, prefix, rdv_a, rdv_b, ca_ctx):
    m = _mux(make_mux, redis, prefix, rdv_a, rdv_b)
    wait_subscribed(redis, prefix, 1)
    dvs = {"a": rdv_a, "b": rdv_b}
    users = ["r%02d" % i for i in range(20, 32)]
    before = {u: placed_on(m, ca_ctx, u, dv_password(u), dvs) for u in users}
    assert set(before.values()) == {"a", "b"}, before  # both take users undrained
    assert ctl(m.conf_path, "backend", "a", "drain").returncode == 0
    wait_until(lambda: "backend a drained" in m.log_text(), 5, "the drain event")
    for u in users:
        assert placed_on(m, ca_ctx, u, dv_password(u), dvs) == "b", u

    # An instance started after the event learns the drain from the set.
    m2 = _mux(make_mux, redis, prefix, rdv_a, rdv_b)
    wait_subscribed(redis, prefix, 2)
    set_route(redis, prefix, "r13", "a")
    wait_until(lambda: try_login(m2, ca_ctx, "r13", dv_password("r13"))
               .startswith(b"l NO [UNAVAILABLE]"), 5, "the second instance refusing backend a")
    moved = [u for u in users if before[u] == "a"]
    assert all(placed_on(m2, ca_ctx, u, dv_password(u), dvs) == "b" for u in moved)
    assert ctl(m.conf_path, "backend", "a", "undrain").returncode == 0
    wait_until(lambda: try_login(m2, ca_ctx, "r13", dv_password("r13")).startswith(b"l OK"), 5,
               "the second instance taking backend a again")


def _metric(port, name):
    return scrape_metrics(port).get(name, 0)


def test_parked_kept_and_pooled_connections_go_at_once_and_pools_refill_on_undrain(
        make_mux, redis, prefix, rdv_a, rdv_b, ca_ctx):
    stats = lab.free_port()
    m = _mux(make_mux, redis, prefix, rdv_a, rdv_b,
             a_extra={"pool_min_idle": 2, "reuse_ttl": "60s", "watch": "events"},
             imapmux={"park_idle_after": "1s", "stats_listen": "127.0.0.1:%d" % stats})
    wait_subscribed(redis, prefix, 1)
    set_route(redis, prefix, "r14", "a")
    set_route(redis, prefix, "r15", "a")
    wait_until(lambda: len(socks_to(m.proc.pid, rdv_a.port)) == 2, 8, "the pool's 2 idle")

    parked = _login(m, ca_ctx, "r14")
    _, tagged = parked.cmd("s", "SELECT INBOX")
    assert tagged.startswith(b"s OK"), tagged
    parked.send(b"i IDLE\r\n")
    assert parked.readline().startswith(b"+")
    wait_until(lambda: _metric(stats, "imapmux_sessions_parked") == 1, 8, "a parked session")

    kept = _login(m, ca_ctx, "r15")
    kept.cmd("o", "LOGOUT")
    kept.close()
    # The pool's two idle ones, and the kept sessions: the logged-out
    # one's, and the parked one's backend session (kept for its wake).
    wait_until(lambda: len(socks_to(m.proc.pid, rdv_a.port)) == 4, 8,
               lambda: "two idle and two kept connections (have %s)"
               % socks_to(m.proc.pid, rdv_a.port))

    assert ctl(m.conf_path, "backend", "a", "drain").returncode == 0
    got = parked.expect_closed(5)
    assert BYE in got, got
    wait_until(lambda: socks_to(m.proc.pid, rdv_a.port) == [], 5,
               "no connection to the drained backend")
    assert _metric(stats, "imapmux_sessions_parked") == 0
    # Nothing comes back while drained (the pool looks again every 2 s).
    time.sleep(2.5)
    assert socks_to(m.proc.pid, rdv_a.port) == []

    assert ctl(m.conf_path, "backend", "a", "undrain").returncode == 0
    wait_until(lambda: len(socks_to(m.proc.pid, rdv_a.port)) == 2, 8,
               "the pool refilled after undrain")
    c = _login(m, ca_ctx, "r14")
    c.close()
