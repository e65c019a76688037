"""[redis] sentinels / master_name / username (issue #12, "Fleet"): imapmux
finds the Redis master through real redis-sentinel processes, follows a
failover, and logs in to Redis as an ACL user; tools/imapmuxctl does the
same. Every Redis here is real: a master, a replica and three sentinels
(quorum 2) on loopback (conftest_sentinel.py).

Routes are proven as in test_redis_routing.py: a message APPENDed through
imapmux is looked for on each Dovecot directly.
"""

import os
import re
import subprocess

import pytest

import lab

pytest.register_assert_rewrite("conftest_redis")
from conftest_redis import (  # noqa: E402
    backend, connect, crypt_hash, dv_password, login_cmd, placed_on, rd_password, try_login,
    wait_until)
from conftest_sentinel import (  # noqa: E402
    ACL_PASSWORD, ACL_USER, MASTER_NAME, SentinelGroup)

pytest_plugins = ["conftest_redis", "conftest_sentinel"]

HERE = os.path.dirname(os.path.abspath(__file__))
CTL = os.path.join(os.path.dirname(os.path.dirname(HERE)), "tools", "imapmuxctl")

# How long imapmux may take to reach the new master once the sentinels
# named it: a link in backoff waits at most 5 s, the +switch-master watch
# sends it at once.
FOLLOW_TIMEOUT = 15.0


def ctl(conf, *args, stdin=None):
    return subprocess.run([CTL, "-c", conf] + list(args), input=stdin, capture_output=True,
                          text=True, timeout=30)


def sentinel_redis(group, prefix, **extra):
    kv = {"sentinels": group.sentinels_conf(), "master_name": MASTER_NAME, "prefix": prefix,
          "timeout": "1s"}
    kv.update(extra)
    return kv


def _mux(make_mux, redis, rdv_a, rdv_b, auth="backend", fallback="deny", workers=1):
    return make_mux(backends=[("a", backend(rdv_a)), ("b", backend(rdv_b))],
                    routing={"lookup": "redis", "fallback": fallback, "cache_ttl": 0},
                    redis=redis,
                    imapmux={"workers": workers, "auth": auth, "auth_fail_delay": 0})


# ---------------------------------------------------------------------------
# imapmux -t

def _check(make_mux, rdv_a, redis):
    path, _, _ = make_mux.conf(backends=[("a", backend(rdv_a))],
                               routing={"lookup": "redis", "fallback": "a"}, redis=redis)
    return lab.check_config(path)


def test_config_check_of_the_sentinel_keys(make_mux, rdv_a):
    s = "127.0.0.1:26379, 127.0.0.1:26380"
    p = _check(make_mux, rdv_a, {"sentinels": s, "master_name": "mymaster",
                                 "username": "imapmux", "password": "pw"})
    assert p.returncode == 0, p.stderr
    cases = [
        ({"sentinels": s}, "sentinels needs master_name in [redis]"),
        ({"master_name": "mymaster"}, "master_name needs sentinels in [redis]"),
        ({"address": "127.0.0.1:6379", "sentinels": s, "master_name": "m"},
         "address and sentinels exclude each other"),
        ({"sentinels": "127.0.0.1:1, unix:/run/x", "master_name": "m"},
         "bad address 'unix:/run/x' in sentinels"),
        ({"sentinels": "127.0.0.1:1,", "master_name": "m"}, "empty entry in sentinels"),
        ({"address": "127.0.0.1:6379", "username": "imapmux"},
         "username needs password in [redis]"),
    ]
    for redis, why in cases:
        p = _check(make_mux, rdv_a, redis)
        assert p.returncode == 1, (redis, p.stderr)
        assert re.search(r"\.conf:\d+: ", p.stderr), p.stderr
        assert why in p.stderr, (redis, p.stderr)


# ---------------------------------------------------------------------------
# discovery and failover

def test_routes_read_from_the_master_the_sentinels_name(make_mux, shared_sentinel_group,
                                                         prefix, rdv_a, rdv_b, ca_ctx):
    g = shared_sentinel_group
    dvs = {"a": rdv_a, "b": rdv_b}
    m = _mux(make_mux, sentinel_redis(g, prefix), rdv_a, rdv_b)
    g.master.command("SET", prefix + "route:r10", "b")
    assert placed_on(m, ca_ctx, "r10", dv_password("r10"), dvs) == "b"
    # The route really came from Redis: unrouted users are refused (deny).
    assert try_login(m, ca_ctx, "r11", dv_password("r11")).startswith(
        b"l NO [AUTHENTICATIONFAILED]")
    log = m.log_text()
    want = "connection up at 127.0.0.1:%d (the master" % g.master.port
    assert "command " + want in log and "subscriber " + want in log, log
    assert "watching sentinel 127.0.0.1:" in log, log
    # The subscriber link is on the master: a kick published there arrives.
    wait_until(lambda: int(g.master.command("PUBSUB", "NUMSUB", prefix + "events")[1]) >= 1,
               8, "imapmux subscribed on the master")
    # imapmuxctl finds the same master.
    p = ctl(m.conf_path, "route", "set", "r11", "a")
    assert p.returncode == 0, p.stderr
    assert g.master.command("GET", prefix + "route:r11") == "a"
    assert placed_on(m, ca_ctx, "r11", dv_password("r11"), dvs) == "a"


def test_failover_is_followed(make_mux, sentinel_group, prefix, rdv_a, rdv_b, ca_ctx):
    """SIGKILL the master: the sentinels promote the replica, and logins
    that need Redis (auth = redis: the hash; lookup = redis: the route, not
    cached) work again within a bounded time; imapmux logged the move;
    imapmuxctl and the events channel follow too."""
    g = sentinel_group
    dvs = {"a": rdv_a, "b": rdv_b}
    m = _mux(make_mux, sentinel_redis(g, prefix), rdv_a, rdv_b, auth="redis")
    for u in ("r12", "r13"):
        g.master.command("HSET", prefix + "user:" + u, "password", crypt_hash(rd_password(u)))
    g.master.command("SET", prefix + "route:r12", "b")
    g.wait_replicated(prefix + "route:r12", "b")
    assert placed_on(m, ca_ctx, "r12", rd_password("r12"), dvs) == "b"

    old = g.kill_master()
    new = g.wait_failover(old)
    assert new.port != old.port

    def works():
        try:
            return placed_on(m, ca_ctx, "r12", rd_password("r12"), dvs) == "b"
        except (AssertionError, OSError):
            return False
    wait_until(works, FOLLOW_TIMEOUT, "a Redis-routed auth = redis login after the failover",
               interval=0.3)
    moved = "moved from 127.0.0.1:%d to 127.0.0.1:%d" % (old.port, new.port)
    wait_until(lambda: ("command connection " + moved) in m.log_text()
               and ("subscriber connection " + moved) in m.log_text(),
               FOLLOW_TIMEOUT, lambda: "imapmux logs the move (%s)" % m.log_tail_text(30))
    assert "announced a failover from 127.0.0.1:%d to 127.0.0.1:%d" % (
        old.port, new.port) in m.log_text()

    # imapmuxctl asks the sentinels as well: the route lands on the new master.
    p = ctl(m.conf_path, "route", "set", "r13", "a")
    assert p.returncode == 0, p.stderr
    assert new.command("GET", prefix + "route:r13") == "a"
    assert placed_on(m, ca_ctx, "r13", rd_password("r13"), dvs) == "a"
    # The subscriber link followed: a kick through the new master reaches a session.
    c = connect(m.imaps_port, ca_ctx)
    _, tagged = c.cmd("l", login_cmd("r13", rd_password("r13")))
    assert tagged.startswith(b"l OK"), tagged
    p = ctl(m.conf_path, "kick", "r13")
    assert p.returncode == 0 and "1 subscriber" in p.stdout, (p.stdout, p.stderr)
    got = c.expect_closed(5)
    assert b"* BYE [UNAVAILABLE]" in got, got


def test_forced_failover_with_the_old_master_alive(make_mux, sentinel_group, prefix, rdv_a,
                                                  rdv_b, ca_ctx):
    """SENTINEL FAILOVER: the old master stays up and takes connections;
    both links end on the new master: imapmux's writes (the brute-force
    counter, EVAL) land there and its subscription is there, none is left
    on the old one."""
    g = sentinel_group
    dvs = {"a": rdv_a, "b": rdv_b}
    m = _mux(make_mux, sentinel_redis(g, prefix), rdv_a, rdv_b)
    g.master.command("SET", prefix + "route:r16", "b")
    g.wait_replicated(prefix + "route:r16", "b")
    assert placed_on(m, ca_ctx, "r16", dv_password("r16"), dvs) == "b"
    old = g.master
    assert g.sentinels[0].command("SENTINEL", "FAILOVER", MASTER_NAME) == "OK"
    new = g.wait_failover(old)
    moved = "moved from 127.0.0.1:%d to 127.0.0.1:%d" % (old.port, new.port)
    wait_until(lambda: ("command connection " + moved) in m.log_text()
               and ("subscriber connection " + moved) in m.log_text(),
               FOLLOW_TIMEOUT, lambda: "imapmux logs the move (%s)" % m.log_tail_text(30))
    assert old.alive()   # (the sentinels make it a replica later, in their own time)
    assert placed_on(m, ca_ctx, "r16", dv_password("r16"), dvs) == "b"
    # A failed login is counted by a script that writes: on the new master.
    assert try_login(m, ca_ctx, "r16", "wrong").startswith(b"l NO [AUTHENTICATIONFAILED]")
    wait_until(lambda: new.command("GET", prefix + "authfail:user:r16") == "1", 5,
               "the failure counted on the new master")
    wait_until(lambda: int(new.command("PUBSUB", "NUMSUB", prefix + "events")[1]) == 1, 5,
               "imapmux subscribed on the new master")
    assert int(old.command("PUBSUB", "NUMSUB", prefix + "events")[1]) == 0


# ---------------------------------------------------------------------------
# ACL users

def test_acl_user_with_an_address(make_mux, acl_redis, prefix, rdv_a, rdv_b, ca_ctx):
    dvs = {"a": rdv_a, "b": rdv_b}
    good = {"address": "127.0.0.1:%d" % acl_redis.port, "prefix": prefix,
            "username": ACL_USER, "password": ACL_PASSWORD}
    m = _mux(make_mux, good, rdv_a, rdv_b)
    acl_redis.command("SET", prefix + "route:r14", "b")
    assert placed_on(m, ca_ctx, "r14", dv_password("r14"), dvs) == "b"
    assert ACL_PASSWORD not in m.log_text()
    # imapmuxctl logs in as the same user.
    p = ctl(m.conf_path, "route", "get", "r14")
    assert p.returncode == 0 and p.stdout == "b\n", (p.stdout, p.stderr)

    bad = dict(good, username="nobody-here")
    m2 = _mux(make_mux, bad, rdv_a, rdv_b)
    line = "AUTH as user 'nobody-here' at 127.0.0.1:%d failed: WRONGPASS" % acl_redis.port
    wait_until(lambda: line in m2.log_text(), 8,
               lambda: "the refused AUTH logged (%s)" % m2.log_tail_text(20))
    assert ACL_PASSWORD not in m2.log_text()
    # Without Redis the route is unknown: fallback = deny refuses.
    assert try_login(m2, ca_ctx, "r14", dv_password("r14")).startswith(b"l NO")
    p = ctl(m2.conf_path, "route", "get", "r14")
    assert p.returncode == 1 and "WRONGPASS" in p.stderr, (p.stdout, p.stderr)


def test_acl_user_through_sentinel(make_mux, prefix, rdv_a, rdv_b, ca_ctx):
    """A master whose default user is off, monitored by one sentinel (with
    auth-user): discovery, AUTH USER PASSWORD and ROLE on the master."""
    g = SentinelGroup(replicas=0, sentinels=1, quorum=1, acl=True)
    try:
        g.start()
        dvs = {"a": rdv_a, "b": rdv_b}
        m = _mux(make_mux, sentinel_redis(g, prefix, username=ACL_USER,
                                          password=ACL_PASSWORD), rdv_a, rdv_b)
        g.master.command("SET", prefix + "route:r15", "b")
        assert placed_on(m, ca_ctx, "r15", dv_password("r15"), dvs) == "b"
        assert "command connection up at 127.0.0.1:%d" % g.master.port in m.log_text()
        p = ctl(m.conf_path, "route", "get", "r15")
        assert p.returncode == 0 and p.stdout == "b\n", (p.stdout, p.stderr)
    finally:
        g.cleanup()
