"""[routing] lookup = redis: routes from <prefix>route:USER, fallback, the local
route cache and the "route USER" event, backends going down and coming back,
and Redis itself going down (SPEC: [routing], "Redis schema", events channel).

Every route is proven with a message: the test APPENDs a message with a fresh
Message-ID through imapmux and asks each Dovecot directly which one holds it.
Logins here use auth = backend (Dovecot checks dv_password).

Tests that depend on the route cache use workers = 1: whether the cache is
per worker or per process is the implementation's choice, and with two
workers a second login may land on a worker that never cached the route.
"""

import os
import shutil
import tempfile
import time

import pytest

import imapc
import lab

pytest.register_assert_rewrite("conftest_redis")
from conftest_redis import (  # noqa: E402
    FAST_CHECKS, USERS_R, backend, connect, dv_password, placed_on, publish, redis_section,
    resp, restart_redis, set_route, try_login, wait_subscribed, wait_until)

# The fixtures prefix, fresh_redis, rdv_a, rdv_b and rdv_fresh.
pytest_plugins = ["conftest_redis"]

HASH_USERS = USERS_R[:12]


def _mux(make_mux, r, prefix, backends, fallback="hash", cache_ttl=None, workers=2,
         redis_extra=None):
    routing = {"lookup": "redis", "fallback": fallback}
    if cache_ttl is not None:
        routing["cache_ttl"] = cache_ttl
    return make_mux(backends=backends, routing=routing,
                    redis=redis_section(r, prefix, **(redis_extra or {})),
                    imapmux={"workers": workers, "auth": "backend", "auth_fail_delay": 0})


def _ab(rdv_a, rdv_b, **extra):
    return [("a", backend(rdv_a, **extra)), ("b", backend(rdv_b, **extra))]


def _on(m, ca_ctx, user, backends):
    return placed_on(m, ca_ctx, user, dv_password(user), backends)


def _static_hash_placement(make_mux, backends_conf, backends, ca_ctx, users):
    """Where lookup = static, fallback = hash puts each user (a reference)."""
    m0 = make_mux(backends=backends_conf, routing={"lookup": "static", "fallback": "hash"},
                  imapmux={"workers": 1})
    placement = {u: _on(m0, ca_ctx, u, backends) for u in users}
    m0.expect_exit = True   # stopped here on purpose (conftest's finish() checks)
    m0.stop()
    return placement


def _other(name):
    return "b" if name == "a" else "a"


# ---------------------------------------------------------------------------
# routes and fallback

def test_route_from_redis(make_mux, redis, prefix, rdv_a, rdv_b, ca_ctx):
    backends = {"a": rdv_a, "b": rdv_b}
    set_route(redis, prefix, "r00", "a")
    set_route(redis, prefix, "r01", "b")
    set_route(redis, prefix, "r02", "b")
    m = _mux(make_mux, redis, prefix, _ab(rdv_a, rdv_b), fallback="deny")
    assert _on(m, ca_ctx, "r00", backends) == "a"
    assert _on(m, ca_ctx, "r01", backends) == "b"
    assert _on(m, ca_ctx, "r02", backends) == "b"
    # The same answers through AUTHENTICATE PLAIN.
    with connect(m.imaps_port, ca_ctx) as c:
        _, tagged = c.cmd("s", "AUTHENTICATE PLAIN " + imapc.plain_ir("r01", dv_password("r01")))
        assert tagged.startswith(b"s OK [CAPABILITY "), tagged


def test_missing_key_fallback_hash_is_stable_and_spreads(make_mux, redis, prefix, rdv_a,
                                                           rdv_b, ca_ctx):
    """No route key: rendezvous hashing, the same placement as lookup = static
    with fallback = hash over the same backends, and stable."""
    backends = {"a": rdv_a, "b": rdv_b}
    reference = _static_hash_placement(make_mux, _ab(rdv_a, rdv_b), backends, ca_ctx,
                                       HASH_USERS)
    assert set(reference.values()) == {"a", "b"}, reference
    m = _mux(make_mux, redis, prefix, _ab(rdv_a, rdv_b), fallback="hash")
    got = {u: _on(m, ca_ctx, u, backends) for u in HASH_USERS}
    assert got == reference
    again = {u: _on(m, ca_ctx, u, backends) for u in HASH_USERS[:4]}
    assert again == {u: reference[u] for u in HASH_USERS[:4]}


def test_missing_key_fallback_deny(make_mux, redis, prefix, rdv_a, rdv_b, ca_ctx):
    backends = {"a": rdv_a, "b": rdv_b}
    set_route(redis, prefix, "r03", "b")
    m = _mux(make_mux, redis, prefix, _ab(rdv_a, rdv_b), fallback="deny")
    tagged = try_login(m, ca_ctx, "r04", dv_password("r04"))
    assert tagged.startswith(b"l NO [AUTHENTICATIONFAILED]"), tagged
    with connect(m.imaps_port, ca_ctx) as c:
        _, tagged = c.cmd("s", "AUTHENTICATE PLAIN " + imapc.plain_ir("r04", dv_password("r04")))
        assert tagged.startswith(b"s NO [AUTHENTICATIONFAILED]"), tagged
        # The session is still usable after the refusal.
        _, tagged = c.cmd("n", "NOOP")
        assert tagged.startswith(b"n OK"), tagged
    assert _on(m, ca_ctx, "r03", backends) == "b"


def test_missing_key_fallback_names_a_backend(make_mux, redis, prefix, rdv_a, rdv_b, ca_ctx):
    backends = {"a": rdv_a, "b": rdv_b}
    set_route(redis, prefix, "r05", "a")
    m = _mux(make_mux, redis, prefix, _ab(rdv_a, rdv_b), fallback="b")
    for u in ("r06", "r07", "r08"):
        assert _on(m, ca_ctx, u, backends) == "b", u
    assert _on(m, ca_ctx, "r05", backends) == "a"


@pytest.mark.parametrize("fallback", ["b", "deny", "hash"])
def test_route_to_unknown_backend_uses_fallback(make_mux, redis, prefix, rdv_a, rdv_b, ca_ctx,
                                                fallback):
    backends = {"a": rdv_a, "b": rdv_b}
    set_route(redis, prefix, "r09", "nosuchbackend")
    set_route(redis, prefix, "r10", "")
    m = _mux(make_mux, redis, prefix, _ab(rdv_a, rdv_b), fallback=fallback)
    for u in ("r09", "r10"):
        if fallback == "deny":
            tagged = try_login(m, ca_ctx, u, dv_password(u))
            assert tagged.startswith(b"l NO [AUTHENTICATIONFAILED]"), (u, tagged)
        elif fallback == "b":
            assert _on(m, ca_ctx, u, backends) == "b", u
        else:
            assert _on(m, ca_ctx, u, backends) in ("a", "b"), u
    assert m.alive()


# ---------------------------------------------------------------------------
# the route cache and the "route USER" event

@pytest.mark.slow
def test_route_cache_ttl_short(make_mux, redis, prefix, rdv_a, rdv_b, ca_ctx):
    """cache_ttl = 2: a changed key is not seen before 2 s, and is seen after."""
    backends = {"a": rdv_a, "b": rdv_b}
    set_route(redis, prefix, "r11", "a")
    m = _mux(make_mux, redis, prefix, _ab(rdv_a, rdv_b), fallback="deny", cache_ttl=2,
             workers=1)
    t0 = time.monotonic()
    assert _on(m, ca_ctx, "r11", backends) == "a"
    set_route(redis, prefix, "r11", "b")
    assert _on(m, ca_ctx, "r11", backends) == "a", "route changed before cache_ttl"
    last = time.monotonic()
    assert last - t0 < 1.8, "test too slow to tell (%.2fs)" % (last - t0)
    # Past cache_ttl (counted from the lookup, or from the last use).
    time.sleep(max(0.0, last + 2.6 - time.monotonic()))
    deadline = time.monotonic() + 2.5
    while True:
        got = _on(m, ca_ctx, "r11", backends)
        if got == "b" or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert got == "b", "route still cached %.1fs after cache_ttl = 2" % (time.monotonic() - t0)


def test_route_cache_long_ttl_and_route_event(make_mux, redis, prefix, rdv_a, rdv_b, ca_ctx):
    """cache_ttl = 600: the changed key is ignored until PUBLISH "route USER"
    drops the cached route."""
    backends = {"a": rdv_a, "b": rdv_b}
    set_route(redis, prefix, "r12", "a")
    set_route(redis, prefix, "r13", "a")
    m = _mux(make_mux, redis, prefix, _ab(rdv_a, rdv_b), fallback="deny", cache_ttl=600,
             workers=1)
    wait_subscribed(redis, prefix, 1)
    assert _on(m, ca_ctx, "r12", backends) == "a"
    assert _on(m, ca_ctx, "r13", backends) == "a"
    set_route(redis, prefix, "r12", "b")
    set_route(redis, prefix, "r13", "b")
    assert _on(m, ca_ctx, "r12", backends) == "a"
    time.sleep(1.0)
    assert _on(m, ca_ctx, "r12", backends) == "a"
    # An event for someone else drops nothing of r12's; neither does r1 (a
    # prefix of r12) nor r123.
    for other in ("route r13", "route r1", "route r123"):
        assert publish(redis, prefix, other) >= 1
    time.sleep(0.5)
    assert _on(m, ca_ctx, "r12", backends) == "a"
    assert _on(m, ca_ctx, "r13", backends) == "b"
    assert publish(redis, prefix, "route r12") >= 1
    time.sleep(0.5)
    assert _on(m, ca_ctx, "r12", backends) == "b"


def test_route_event_reaches_every_worker(make_mux, redis, prefix, rdv_a, rdv_b, ca_ctx):
    """Routes are cached per worker (README); "route USER" drops USER's route
    in every worker. Eight logins spread over both workers (SO_REUSEPORT) and
    cache the old route; after the event, no login may still use it."""
    backends = {"a": rdv_a, "b": rdv_b}
    set_route(redis, prefix, "r19", "a")
    m = _mux(make_mux, redis, prefix, _ab(rdv_a, rdv_b), fallback="deny", cache_ttl=600,
             workers=2)
    wait_subscribed(redis, prefix, 1)
    time.sleep(0.5)   # the other worker's subscription, where each has its own
    assert [_on(m, ca_ctx, "r19", backends) for _ in range(8)] == ["a"] * 8
    set_route(redis, prefix, "r19", "b")
    assert publish(redis, prefix, "route r19") >= 1
    time.sleep(0.5)
    assert [_on(m, ca_ctx, "r19", backends) for _ in range(8)] == ["b"] * 8


# ---------------------------------------------------------------------------
# backends down (health checks)

def _wait_login(m, ca_ctx, user, want_prefix, timeout):
    """Log user in repeatedly until the tagged answer starts with want_prefix
    (bytes, after the tag); returns the last answer."""
    deadline = time.monotonic() + timeout
    while True:
        tagged = try_login(m, ca_ctx, user, dv_password(user))
        if tagged.startswith(b"l " + want_prefix) or time.monotonic() > deadline:
            return tagged
        time.sleep(0.25)


@pytest.mark.slow
def test_explicit_route_to_down_backend_is_unavailable(make_mux, redis, prefix, rdv_a,
                                                       rdv_fresh, ca_ctx):
    """A user routed to a backend that is down gets NO [UNAVAILABLE] (never
    another backend); when it comes back (same port) the user is served
    there again."""
    backends = {"a": rdv_a, "b": rdv_fresh}
    set_route(redis, prefix, "r14", "b")
    m = _mux(make_mux, redis, prefix,
             [("a", backend(rdv_a, **FAST_CHECKS)), ("b", backend(rdv_fresh, **FAST_CHECKS))],
             fallback="a")
    assert _on(m, ca_ctx, "r14", backends) == "b"
    rdv_fresh.stop()
    time.sleep(2.0)     # several failed checks: b is down
    t0 = time.monotonic()
    tagged = try_login(m, ca_ctx, "r14", dv_password("r14"))
    assert tagged.startswith(b"l NO [UNAVAILABLE]"), tagged
    assert time.monotonic() - t0 < 3.0, "a known-down backend should be refused at once"
    # Nothing fell through to a: the fallback is for users without a route.
    with connect(m.imaps_port, ca_ctx) as c:
        _, tagged = c.cmd("s", "AUTHENTICATE PLAIN " + imapc.plain_ir("r14", dv_password("r14")))
        assert tagged.startswith(b"s NO [UNAVAILABLE]"), tagged
    rdv_fresh.start()
    tagged = _wait_login(m, ca_ctx, "r14", b"OK", timeout=6)
    assert tagged.startswith(b"l OK"), tagged
    assert _on(m, ca_ctx, "r14", backends) == "b"


@pytest.mark.slow
def test_fallback_hash_skips_down_backend_and_restores(make_mux, redis, prefix, rdv_a,
                                                        rdv_fresh, ca_ctx):
    """fallback = hash is over healthy backends: with b down its users land on
    a; when b is back, the old placement returns (rendezvous hashing). The
    route cache (cache_ttl = 60) must not pin a user without a route to a
    dead backend."""
    backends = {"a": rdv_a, "b": rdv_fresh}
    conf = [("a", backend(rdv_a, **FAST_CHECKS)), ("b", backend(rdv_fresh, **FAST_CHECKS))]
    m = _mux(make_mux, redis, prefix, conf, fallback="hash", cache_ttl=60)
    first = {u: _on(m, ca_ctx, u, backends) for u in HASH_USERS}
    on_b = [u for u, b in first.items() if b == "b"]
    on_a = [u for u, b in first.items() if b == "a"]
    assert on_a and on_b, first
    rdv_fresh.stop()
    tagged = _wait_login(m, ca_ctx, on_b[0], b"OK", timeout=6)
    assert tagged.startswith(b"l OK"), (on_b[0], tagged)
    for u in on_b + on_a[:2]:
        assert _on(m, ca_ctx, u, {"a": rdv_a}) == "a", u
    rdv_fresh.start()
    # b is back after a good check (check_rise = 1, every 500 ms).
    deadline = time.monotonic() + 6
    while True:
        got = _on(m, ca_ctx, on_b[0], backends)
        if got == "b" or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    assert got == "b", "%s not back on b after it returned" % on_b[0]
    again = {u: _on(m, ca_ctx, u, backends) for u in HASH_USERS}
    assert again == first


# ---------------------------------------------------------------------------
# Redis down

@pytest.mark.slow
def test_redis_down_cached_routes_and_fallback_then_recovery(make_mux, fresh_redis, prefix,
                                                            rdv_a, rdv_b, ca_ctx):
    """Redis stops: a user whose route is cached keeps logging in (to the
    routed backend), a user not cached follows fallback = hash. Redis comes
    back empty on the same port: imapmux uses it again within seconds, with
    no restart (routes are read and the events channel is subscribed again)."""
    r = fresh_redis
    backends = {"a": rdv_a, "b": rdv_b}
    conf = _ab(rdv_a, rdv_b)
    cached, uncached = "r15", "r16"
    fresh = USERS_R[17:37]
    hashed = _static_hash_placement(make_mux, conf, backends, ca_ctx, [cached, uncached] + fresh)
    m = _mux(make_mux, r, prefix, conf, fallback="hash", cache_ttl=600, workers=1,
             redis_extra={"timeout": "500ms"})
    wait_subscribed(r, prefix, 1)
    # Routes that disagree with the hash, so that each answer tells which rule applied.
    set_route(r, prefix, cached, _other(hashed[cached]))
    set_route(r, prefix, uncached, _other(hashed[uncached]))
    assert _on(m, ca_ctx, cached, backends) == _other(hashed[cached])

    r.stop()
    t0 = time.monotonic()
    assert _on(m, ca_ctx, cached, backends) == _other(hashed[cached])
    assert _on(m, ca_ctx, uncached, backends) == hashed[uncached]
    assert _on(m, ca_ctx, cached, backends) == _other(hashed[cached])
    assert time.monotonic() - t0 < 6, "logins with Redis down took %.1fs" % (time.monotonic() - t0)

    restart_redis(r)
    for u in fresh:
        set_route(r, prefix, u, _other(hashed[u]))
    # Each attempt uses a user never looked up before, so that a fallback
    # answer given while imapmux reconnects cannot be cached into the next.
    deadline = time.monotonic() + 10
    tried = []
    for u in fresh:
        got = _on(m, ca_ctx, u, backends)
        tried.append((u, got))
        if got == _other(hashed[u]) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert tried[-1][1] == _other(hashed[tried[-1][0]]), \
        "imapmux did not use the restarted Redis: %r" % tried
    wait_subscribed(r, prefix, 1, timeout=max(1.0, deadline - time.monotonic()))
    assert m.alive()


# ---------------------------------------------------------------------------
# configuration and the Redis connection

def test_config_with_every_new_key_checks_ok(make_mux, redis, prefix, rdv_a, rdv_b):
    """`imapmux -t` accepts every key of the Redis features, with values
    spelled as in proxy.conf's documentation."""
    path, _, _ = make_mux.conf(
        backends=[("a", backend(rdv_a, master_separator="*", check_interval="5s",
                                check_timeout="3s", check_rise=2, check_fall=3)),
                  ("b", backend(rdv_b, check_interval=0))],
        routing={"lookup": "redis", "fallback": "hash", "cache_ttl": 60},
        redis=redis_section(redis, prefix, password="secret", db=0, timeout="2s"),
        imapmux={"auth": "redis", "auth_fail_limit": 10, "auth_fail_window": "5m",
                 "auth_fail_delay": "1s", "auth_threads": 2})
    r = lab.check_config(path)
    assert r.returncode == 0, (r.stdout, r.stderr)
    for fallback in ("deny", "b"):
        path, _, _ = make_mux.conf(backends=_ab(rdv_a, rdv_b),
                                   routing={"lookup": "redis", "fallback": fallback},
                                   redis=redis_section(redis, prefix))
        r = lab.check_config(path)
        assert r.returncode == 0, (fallback, r.stdout, r.stderr)


def test_redis_over_unix_socket(make_mux, prefix, rdv_a, rdv_b, ca_ctx):
    """[redis] address = unix:/path (SPEC's proxy.conf)."""
    d = tempfile.mkdtemp(prefix="imx-rsock-")
    sock = os.path.join(d, "redis.sock")
    proc = lab.Proc([lab.REDIS, "--port", "0", "--unixsocket", sock, "--unixsocketperm", "777",
                     "--save", "", "--appendonly", "no", "--dir", d, "--daemonize", "no"],
                    "redis-unix", log_path=os.path.join(d, "redis.log"))
    try:
        def pong():
            try:
                return resp(sock, "PING") == "PONG"
            except OSError:
                return False
        wait_until(pong, 10, "redis-server answers on %s" % sock)
        resp(sock, "SET", prefix + "route:r18", "b")
        m = make_mux(backends=_ab(rdv_a, rdv_b), routing={"lookup": "redis", "fallback": "a"},
                     redis={"address": "unix:" + sock, "prefix": prefix},
                     imapmux={"auth": "backend"})
        assert _on(m, ca_ctx, "r18", {"a": rdv_a, "b": rdv_b}) == "b"
    finally:
        proc.stop()
        shutil.rmtree(d, ignore_errors=True)
