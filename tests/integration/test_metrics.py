"""The stats endpoint (stats_listen): GET /metrics in Prometheus text format,
the counters moving with real logins through imapmux, and the small HTTP
server's answers and bounds (404, 405, 400, 431, a flood of idle or
garbage connections).

Per backend (backend="NAME", against real Dovecot backends): client logins
by result, health from the health checks, pool and connection gauges,
reuse hits, login and connect histograms; Redis link state against a real
redis-server killed under it; and README's metrics table, which must name
exactly the families /metrics has."""

import imaplib
import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

import conftest
import lab
from conftest import backend_section, password, wait_until

pytest.register_assert_rewrite("conftest_redis")
from conftest_redis import (  # noqa: E402
    USERS_R, backend, connect, crypt_hash, rd_password, redis_section, restart_redis,
    set_password, set_route, try_login)

pytest_plugins = ["conftest_redis"]

CONTENT_TYPE = "text/plain; version=0.0.4"

# name -> type of every family imapmux must expose.
REQUIRED = {
    "imapmux_up": "gauge",
    "imapmux_workers": "gauge",
    "imapmux_connections_total": "counter",
    "imapmux_sessions": "gauge",
    "imapmux_sessions_proxying": "gauge",
    "imapmux_logins_total": "counter",
    "imapmux_backend_connects_total": "counter",
    "imapmux_backend_lost_total": "counter",
    "imapmux_client_bytes_received_total": "counter",
    "imapmux_client_bytes_sent_total": "counter",
    "imapmux_preauth_bad_commands_total": "counter",
    "imapmux_tls_handshake_failures_total": "counter",
    "process_open_fds": "gauge",
    "process_resident_memory_bytes": "gauge",
    "process_start_time_seconds": "gauge",
}
LOGIN_RESULTS = ("ok", "auth_failed", "unavailable")

_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_SAMPLE = re.compile(r"^(%s)(\{[^{}]*\})? (\S+)$" % _NAME)
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')
_META = re.compile(r"^# (HELP|TYPE) (%s) (.*)$" % _NAME)


def histogram_family(name, types):
    """The family a sample belongs to: a histogram's _bucket, _sum and _count
    samples belong to the histogram's name."""
    for suffix in ("_bucket", "_sum", "_count"):
        base = name[:-len(suffix)]
        if name.endswith(suffix) and types.get(base) == "histogram":
            return base
    return name


def parse_exposition(text):
    """Parse Prometheus text format 0.0.4 strictly enough to catch a broken
    exposition. Returns (samples, types): samples maps (name, labels) to a
    float, labels being a sorted tuple of (key, value); types maps a family
    to its TYPE. Every family must have HELP and TYPE before its samples."""
    assert text.endswith("\n"), "exposition does not end with a newline"
    samples, types, helps = {}, {}, set()
    for line in text.split("\n")[:-1]:
        assert line, "empty line in exposition"
        if line.startswith("#"):
            m = _META.match(line)
            assert m, "bad comment line %r" % line
            kind, name, rest = m.groups()
            if kind == "TYPE":
                assert rest in ("counter", "gauge", "histogram", "summary", "untyped"), line
                assert name not in types, "TYPE twice for %s" % name
                types[name] = rest
            else:
                assert rest, "empty HELP for %s" % name
                helps.add(name)
            continue
        m = _SAMPLE.match(line)
        assert m, "bad sample line %r" % line
        name, labels_text, value = m.groups()
        family = histogram_family(name, types)
        assert family in types and family in helps, "%s has no HELP/TYPE before it" % name
        labels = ()
        if labels_text:
            inner = labels_text[1:-1]
            pairs = _LABEL.findall(inner)
            assert ",".join('%s="%s"' % p for p in pairs) == inner, "bad labels %r" % line
            labels = tuple(sorted(pairs))
        key = (name, labels)
        assert key not in samples, "duplicate sample %r" % line
        samples[key] = float(value)  # raises on a malformed value
    return samples, types


def http_get(port, path="/metrics", method="GET", data=None, timeout=5):
    """(status, headers, body) of one request; error statuses are returned,
    not raised."""
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path), data=data,
                                 method=method)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        with e:
            return e.code, e.headers, e.read()


def scrape(port):
    status, headers, body = http_get(port)
    assert status == 200, (status, body[:200])
    assert headers["Content-Type"] == CONTENT_TYPE, headers["Content-Type"]
    assert int(headers["Content-Length"]) == len(body)
    samples, _ = parse_exposition(body.decode("utf-8"))
    return samples


def value(samples, name, **labels):
    return samples[(name, tuple(sorted(labels.items())))]


def raw_request(port, data, timeout=5):
    """Send raw bytes, read until the server closes; returns what came back."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(data)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


@pytest.fixture
def stats_mux(make_mux):
    """An imapmux with stats_listen on a free port; returns (mux, port)."""
    port = lab.free_port()
    m = make_mux(imapmux={"stats_listen": "127.0.0.1:%d" % port})
    # The stats server starts after the workers, so it may lag the IMAP ports.
    lab.wait_listening(port, timeout=10, proc=m.proc)
    return m, port


def test_metrics_exposition(stats_mux):
    _, port = stats_mux
    status, headers, body = http_get(port, "/metrics")
    assert status == 200
    assert headers["Content-Type"] == CONTENT_TYPE
    assert headers["Connection"] == "close"
    assert int(headers["Content-Length"]) == len(body)
    samples, types = parse_exposition(body.decode("utf-8"))

    for name, typ in REQUIRED.items():
        assert types.get(name) == typ, "%s: TYPE %r, want %r" % (name, types.get(name), typ)
    names = {n for n, _ in samples}
    missing = set(REQUIRED) - names
    assert not missing, "no samples for %s" % sorted(missing)
    for r in LOGIN_RESULTS:
        assert value(samples, "imapmux_logins_total", result=r) >= 0
    assert value(samples, "imapmux_up") == 1
    assert value(samples, "imapmux_workers") == 2  # the factory's default
    assert value(samples, "imapmux_sessions") == 0
    assert value(samples, "process_open_fds") > 3
    assert value(samples, "process_resident_memory_bytes") > 1 << 20
    start = value(samples, "process_start_time_seconds")
    assert time.time() - 120 < start <= time.time() + 1

    # A query string does not change the answer.
    status, _, body2 = http_get(port, "/metrics?name[]=imapmux_up")
    assert status == 200 and b"imapmux_up 1\n" in body2


def _wait_counts(port, want, timeout=5.0):
    """Scrape until every (name, labels) in want has its value, or give up;
    returns the last scrape. The workers count on their own threads, and a
    session's end is seen after the client's LOGOUT returns."""
    deadline = time.monotonic() + timeout
    while True:
        samples = scrape(port)
        if all(samples.get(k) == v for k, v in want.items()) or time.monotonic() > deadline:
            return samples
        time.sleep(0.05)


def test_counters_follow_logins(stats_mux, ca_ctx):
    mux, port = stats_mux
    before = scrape(port)

    ok = imaplib.IMAP4_SSL("127.0.0.1", mux.imaps_port, ssl_context=ca_ctx, timeout=10)
    try:
        typ, _ = ok.login("alice", password("alice"))
        assert typ == "OK"
    finally:
        ok.logout()

    bad = imaplib.IMAP4_SSL("127.0.0.1", mux.imaps_port, ssl_context=ca_ctx, timeout=10)
    try:
        with pytest.raises(imaplib.IMAP4.error):
            bad.login("alice", "not-" + password("alice"))
    finally:
        bad.logout()

    def k(name, **labels):
        return (name, tuple(sorted(labels.items())))

    want = {
        k("imapmux_connections_total"): before[k("imapmux_connections_total")] + 2,
        k("imapmux_logins_total", result="ok"): before[k("imapmux_logins_total", result="ok")] + 1,
        k("imapmux_logins_total", result="auth_failed"):
            before[k("imapmux_logins_total", result="auth_failed")] + 1,
        k("imapmux_logins_total", result="unavailable"):
            before[k("imapmux_logins_total", result="unavailable")],
        k("imapmux_sessions"): 0,
        k("imapmux_sessions_proxying"): 0,
    }
    after = _wait_counts(port, want)
    wrong = {"%s%s" % (n, dict(lb) if lb else ""): (before.get((n, lb)), after.get((n, lb)), v)
             for (n, lb), v in want.items() if after.get((n, lb)) != v}
    assert not wrong, "metric: (before, after, want) %r" % wrong
    for name in ("imapmux_client_bytes_received_total", "imapmux_client_bytes_sent_total",
                 "imapmux_backend_connects_total"):
        assert after[k(name)] > before[k(name)], name


def test_not_found_and_method_not_allowed(stats_mux):
    _, port = stats_mux
    for path in ("/metricsx", "/metrics/", "/favicon.ico"):
        status, headers, body = http_get(port, path)
        assert status == 404, (path, status)
        assert headers["Connection"] == "close"
        assert int(headers["Content-Length"]) == len(body)

    status, headers, _ = http_get(port, "/metrics", method="POST", data=b"x=1")
    assert status == 405
    assert headers["Allow"] == "GET"
    status, _, _ = http_get(port, "/", method="DELETE")
    assert status == 405


def test_malformed_and_oversized_requests(stats_mux):
    _, port = stats_mux
    for data in (b"GARBAGE\r\n\r\n", b"GET /metrics\r\n\r\n", b"GET /metrics HTTP/1.1 x\r\n\r\n",
                 b"GET /metrics HTTP/1.1\r\nno colon here\r\n\r\n",
                 b"GET /metrics HTTP/1.1\r\nX: a\x00b\r\n\r\n", b"\x16\x03\x01\x00\x00\r\n\r\n"):
        resp = raw_request(port, data)
        assert resp.startswith(b"HTTP/1.0 400 "), (data, resp[:80])
    resp = raw_request(port, b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 5000 + b"\r\n\r\n")
    assert resp.startswith(b"HTTP/1.0 431 "), resp[:80]
    # Still serving.
    scrape(port)


@pytest.mark.slow
def test_flood_of_idle_and_garbage_connections(stats_mux):
    """100 connections that send nothing, garbage or half a request: more
    than the server's 64 slots. Each one over the limit takes the slot of
    the oldest connection that has not sent a whole request head, so a
    scrape succeeds at once (test_stats_hold holds it to that under a
    sustained attack), and no descriptor is left behind once they are
    gone."""
    mux, port = stats_mux
    fds_before = value(scrape(port), "process_open_fds")

    socks = []
    try:
        for i in range(100):
            s = socket.create_connection(("127.0.0.1", port), timeout=5)
            socks.append(s)
            try:
                if i % 3 == 1:
                    s.send(os.urandom(300).replace(b"\n", b"x"))
                elif i % 3 == 2:
                    s.send(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
            except OSError:
                pass  # one the server already closed

        t0 = time.monotonic()
        last = None
        while True:
            try:
                samples = scrape(port)
                break
            except (OSError, AssertionError, ValueError) as e:
                last = e
            assert time.monotonic() - t0 < 10, "no scrape within 10s of the flood: %r" % last
            time.sleep(0.1)
        assert value(samples, "imapmux_up") == 1
    finally:
        for s in socks:
            s.close()

    # Once the clients are gone, so are the server's descriptors for them.
    deadline = time.monotonic() + 5
    while True:
        fds = value(scrape(port), "process_open_fds")
        if fds <= fds_before or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert fds <= fds_before, (fds_before, fds)
    assert mux.alive()


# ---------------------------------------------------------------------------
# per backend, Redis, build info, README's table

FAST_CHECKS = {"check_interval": "0.5s", "check_timeout": "1s", "check_fall": 1,
               "check_rise": 1}


def start_stats_mux(make_mux, **kw):
    """make_mux(**kw) with stats_listen on a free port; returns (mux, port)."""
    port = lab.free_port()
    imapmux = {"stats_listen": "127.0.0.1:%d" % port}
    imapmux.update(kw.pop("imapmux", {}))
    m = make_mux(imapmux=imapmux, **kw)
    lab.wait_listening(port, timeout=10, proc=m.proc)
    return m, port


def wait_value(port, name, want, timeout=8.0, **labels):
    """Scrape until name{labels} == want; the last scrape."""
    key = (name, tuple(sorted(labels.items())))
    got = {}

    def ok():
        got["s"] = scrape(port)
        return got["s"].get(key) == want
    wait_until(ok, timeout, lambda: "%s%r == %r (is %r)" % (name, labels, want,
                                                             got["s"].get(key)))
    return got["s"]


def imap_login(mux, ca_ctx, user, pw):
    """Log in over implicit TLS; the client (logged in) or None (refused)."""
    c = imaplib.IMAP4_SSL("127.0.0.1", mux.imaps_port, ssl_context=ca_ctx, timeout=10)
    try:
        c.login(user, pw)
        return c
    except imaplib.IMAP4.error:
        c.logout()
        return None


def histogram(samples, name, **labels):
    """([(le, cumulative count)] in exposition order, sum, count) of one series."""
    want = dict(labels)
    buckets = []
    for (n, lb), v in samples.items():
        d = dict(lb)
        if n == name + "_bucket" and {k: d.get(k) for k in want} == want:
            buckets.append((d["le"], v))
    key = tuple(sorted(labels.items()))
    return buckets, samples[(name + "_sum", key)], samples[(name + "_count", key)]


def check_histogram(samples, name, count, **labels):
    buckets, total, n = histogram(samples, name, **labels)
    les = [le for le, _ in buckets]
    assert les[-1] == "+Inf", les
    bounds = [float(le) for le in les[:-1]]
    assert bounds == sorted(bounds) and len(set(bounds)) == len(bounds), les
    counts = [v for _, v in buckets]
    assert counts == sorted(counts), "buckets not cumulative: %r" % buckets
    assert counts[-1] == n == count, (buckets, n, count)
    assert (total > 0) == (count > 0), total


def test_per_backend_login_counters_and_histograms(make_mux, dovecot, fresh_dovecot, ca_ctx):
    """A good and a bad login routed to backend a move a's counters by
    exactly one each and b's not at all; a's login histogram counts both,
    its buckets cumulative; build_info carries the version."""
    m, port = start_stats_mux(make_mux, backends=[("a", backend_section(dovecot)),
                                                  ("b", backend_section(fresh_dovecot))])
    before = scrape(port)
    good = imap_login(m, ca_ctx, "alice", password("alice"))
    assert good is not None
    good.logout()
    assert imap_login(m, ca_ctx, "alice", "not-" + password("alice")) is None

    def k(backend, result):
        return ("imapmux_backend_client_logins_total",
                (("backend", backend), ("result", result)))
    want = {k("a", "ok"): before[k("a", "ok")] + 1,
            k("a", "auth_failed"): before[k("a", "auth_failed")] + 1}
    after = _wait_counts(port, want)
    for key in [k(b, r) for b in ("a", "b", "") for r in LOGIN_RESULTS]:
        delta = after[key] - before[key]
        assert delta == want.get(key, before[key]) - before[key], (key, delta)
    check_histogram(after, "imapmux_login_duration_seconds", 2, backend="a")
    check_histogram(after, "imapmux_login_duration_seconds", 0, backend="b")
    check_histogram(after, "imapmux_login_duration_seconds", 0, backend="")
    n = value(after, "imapmux_backend_connections_opened_total", backend="a")
    assert n >= 1
    check_histogram(after, "imapmux_backend_connect_duration_seconds", n, backend="a")
    assert value(after, "imapmux_routes_total", source="static") == 2
    assert value(after, "imapmux_backend_up", backend="a") == 1
    assert value(after, "imapmux_backend_up", backend="b") == 1
    # imapmux -V prints "imapmux VERSION (...)": the same version.
    version = subprocess.run([lab.IMAPMUX, "-V"], capture_output=True, text=True,
                             timeout=10).stdout.split()[1]
    builds = [dict(lb) for (n_, lb) in after if n_ == "imapmux_build_info"]
    assert builds == [{"version": version}], builds
    assert value(after, "imapmux_build_info", version=version) == 1


def test_counters_keep_their_backend_across_sighup(make_mux, dovecot, fresh_dovecot, ca_ctx):
    """A reload that reorders the backends and adds one keeps each name's
    counters (slots go by name), and counting goes on under the same name."""
    backends = [("a", backend_section(dovecot)), ("b", backend_section(fresh_dovecot))]
    m, port = start_stats_mux(make_mux, backends=backends, routing={"lookup": "static",
                                                                     "fallback": "b"})
    c = imap_login(m, ca_ctx, "alice", password("alice"))
    c.logout()
    s = wait_value(port, "imapmux_backend_client_logins_total", 1, backend="b", result="ok")
    assert value(s, "imapmux_backend_client_logins_total", backend="a", result="ok") == 0
    make_mux.rewrite(m, backends=[("n", backend_section(dovecot)), backends[1], backends[0]],
                     routing={"lookup": "static", "fallback": "b"})
    m.signal(signal.SIGHUP)
    wait_until(lambda: "configuration reloaded" in m.log_text(), 5, "the reload")
    s = scrape(port)
    assert value(s, "imapmux_backend_client_logins_total", backend="b", result="ok") == 1
    assert value(s, "imapmux_backend_client_logins_total", backend="a", result="ok") == 0
    assert value(s, "imapmux_backend_client_logins_total", backend="n", result="ok") == 0
    c = imap_login(m, ca_ctx, "alice", password("alice"))
    c.logout()
    wait_value(port, "imapmux_backend_client_logins_total", 2, backend="b", result="ok")


def test_killed_backend_shows_health_down(make_mux, dovecot, fresh_dovecot):
    m, port = start_stats_mux(make_mux, backends=[
        ("a", backend_section(dovecot, **FAST_CHECKS)),
        ("b", backend_section(fresh_dovecot, **FAST_CHECKS))])
    wait_until(lambda: "health checks: 2 of 2 backends checked" in m.log_text(), 5,
               "health checks started")
    time.sleep(1.2)  # a few probes: both stay up
    s = scrape(port)
    assert value(s, "imapmux_backend_up", backend="a") == 1
    assert value(s, "imapmux_backend_up", backend="b") == 1
    fresh_dovecot.stop()
    s = wait_value(port, "imapmux_backend_up", 0, backend="b")
    assert value(s, "imapmux_backend_up", backend="a") == 1
    fresh_dovecot.start()
    wait_value(port, "imapmux_backend_up", 1, timeout=10, backend="b")


def test_pool_gauges_follow_a_session(make_mux, dovecot, ca_ctx):
    """As test_pool.py's first scenario: pool_min_idle = 4 over 2 workers is
    4 idle before any client; a login takes one (in use 1) and the pool
    refills to 4 idle; after LOGOUT (reuse_ttl = 0) in use is 0 again."""
    m, port = start_stats_mux(make_mux, backends=[
        ("a", backend_section(dovecot, pool_min_idle=4, reuse_ttl=0))])

    def pool(state):
        return ("imapmux_backend_pool_connections", (("backend", "a"), ("state", state)))

    def conns(state):
        return ("imapmux_backend_connections", (("backend", "a"), ("state", state)))
    s = _wait_counts(port, {pool("idle"): 4, pool("in_use"): 0, conns("idle"): 4})
    assert s[pool("idle")] == 4 and s[pool("in_use")] == 0 and s[conns("idle")] == 4, s
    assert value(s, "imapmux_backend_pool_waiters", backend="a") == 0
    c = imap_login(m, ca_ctx, "alice", password("alice"))
    try:
        s = _wait_counts(port, {pool("idle"): 4, pool("in_use"): 1, conns("in_use"): 1,
                                conns("idle"): 4})
        got = {k: s[k] for k in (pool("idle"), pool("in_use"), conns("in_use"), conns("idle"))}
        assert list(got.values()) == [4, 1, 1, 4], got
    finally:
        c.logout()
    s = _wait_counts(port, {pool("in_use"): 0, conns("in_use"): 0, pool("idle"): 4})
    assert (s[pool("in_use")], s[conns("in_use")], s[pool("idle")]) == (0, 0, 4)


def test_reuse_hit_counted(make_mux, dovecot, ca_ctx):
    """As test_reuse.py: a LOGOUT keeps the backend session (reuse_ttl), the
    same user's next login takes it: one reuse hit, one held connection
    between the two."""
    m, port = start_stats_mux(make_mux, imapmux={"workers": 1},
                              backends=[("a", backend_section(dovecot, reuse_ttl="60s"))])
    c = imap_login(m, ca_ctx, "alice", password("alice"))
    c.logout()
    s = wait_value(port, "imapmux_backend_connections", 1, backend="a", state="held")
    assert value(s, "imapmux_backend_reuse_hits_total", backend="a") == 0
    c = imap_login(m, ca_ctx, "alice", password("alice"))
    try:
        s = wait_value(port, "imapmux_backend_reuse_hits_total", 1, backend="a")
        assert value(s, "imapmux_backend_connections", backend="a", state="held") == 0
        assert value(s, "imapmux_backend_connections", backend="a", state="in_use") == 1
        assert value(s, "imapmux_sessions_reused_total") == 1
    finally:
        c.logout()


def test_redis_link_gauge(make_mux, dovecot, fresh_redis, prefix):
    m, port = start_stats_mux(make_mux, redis=redis_section(fresh_redis, prefix))
    wait_value(port, "imapmux_redis_up", 1)
    s = scrape(port)
    assert value(s, "imapmux_redis_reconnects_total") == 0
    fresh_redis.proc.kill_hard()  # SIGKILL: no goodbye on the connections
    wait_value(port, "imapmux_redis_up", 0)
    restart_redis(fresh_redis)
    s = wait_value(port, "imapmux_redis_up", 1, timeout=15)
    assert value(s, "imapmux_redis_reconnects_total") >= 1


def test_lockouts_and_route_sources_exposed(stats_mux):
    """Families present from the start, at zero, with every label value."""
    _, port = stats_mux
    s = scrape(port)
    for kind in ("ip", "user"):
        assert value(s, "imapmux_login_lockouts_total", kind=kind) == 0
    for src in ("redis", "cache", "fallback", "static"):
        assert value(s, "imapmux_routes_total", source=src) == 0
    assert "imapmux_redis_up" not in {n for n, _ in s}  # no [redis]: no link to show


README = os.path.join(os.path.dirname(__file__), "..", "..", "README.md")


def readme_metrics():
    """{name: type} of README's metrics table (the one under "### Metrics")."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    i = text.index("\n| metric | type | labels | meaning |")
    out = {}
    for line in text[i + 1:].split("\n")[2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip("|").split("|")]
        m = re.fullmatch(r"`([a-z_:]+)`", cells[0])
        assert m, "metrics table: first cell %r is not a `name`" % cells[0]
        assert m.group(1) not in out, "metrics table names %s twice" % m.group(1)
        out[m.group(1)] = cells[1]
    return out


def test_readme_table_lists_exactly_the_metrics(make_mux, dovecot, redis, prefix):
    """Both ways: every family /metrics has is in README's table with its
    type, and the table names nothing /metrics lacks (with [redis], so that
    its families are there)."""
    m, port = start_stats_mux(make_mux, redis=redis_section(redis, prefix))
    status, _, body = http_get(port)
    assert status == 200
    _, types = parse_exposition(body.decode("utf-8"))
    table = readme_metrics()
    assert set(types) - set(table) == set(), "not in README's table"
    assert set(table) - set(types) == set(), "in README's table, not in /metrics"
    wrong = {n: (table[n], t) for n, t in types.items() if table[n] != t}
    assert not wrong, "README type vs /metrics TYPE: %r" % wrong


def test_lockouts_counted_by_kind(make_mux, redis, prefix, rdv_a, ca_ctx):
    """auth = redis with auth_fail_limit = 2 (as test_bruteforce.py): a user
    whose budget is spent is refused once more (kind="user"), an address
    whose budget is spent likewise (kind="ip"); both refusals, answered
    before any backend was chosen, count under backend=""."""
    for u in USERS_R[:4]:
        set_password(redis, prefix, u, crypt_hash(rd_password(u), "$6$"))
    port = lab.free_port()
    m = make_mux(backends=[("a", backend(rdv_a))], routing={"lookup": "static", "fallback": "a"},
                 redis=redis_section(redis, prefix),
                 imapmux={"stats_listen": "127.0.0.1:%d" % port, "auth": "redis",
                          "auth_fail_limit": 2, "auth_fail_window": "30s",
                          "auth_fail_delay": "10ms"})
    lab.wait_listening(port, timeout=10, proc=m.proc)
    u1, u2, u3, u4 = USERS_R[:4]

    def no(user, pw, src):
        tagged = try_login(m, ca_ctx, user, pw, source=src)
        assert tagged.startswith(b"l NO [AUTHENTICATIONFAILED]"), (user, src, tagged)

    # u1's budget from two addresses, then u1 with the right password: user.
    no(u1, "wrong", "127.0.0.2")
    no(u1, "wrong", "127.0.0.3")
    s = scrape(port)
    assert value(s, "imapmux_login_lockouts_total", kind="user") == 0
    no(u1, rd_password(u1), "127.0.0.4")
    s = wait_value(port, "imapmux_login_lockouts_total", 1, kind="user")
    assert value(s, "imapmux_login_lockouts_total", kind="ip") == 0
    # 127.0.0.5's budget with two other users, then a third user from it: ip.
    no(u2, "wrong", "127.0.0.5")
    no(u3, "wrong", "127.0.0.5")
    no(u4, rd_password(u4), "127.0.0.5")
    s = wait_value(port, "imapmux_login_lockouts_total", 1, kind="ip")
    assert value(s, "imapmux_login_lockouts_total", kind="user") == 1
    # 4 wrong passwords + 2 lockouts, all before routing; nothing under a.
    assert value(s, "imapmux_backend_client_logins_total", backend="", result="auth_failed") == 6
    assert value(s, "imapmux_backend_client_logins_total", backend="a", result="auth_failed") == 0
    check_histogram(s, "imapmux_login_duration_seconds", 6, backend="")


def test_route_sources(make_mux, dovecot, redis, prefix, ca_ctx):
    """lookup = redis, one worker: a user with a route in Redis is routed by
    Redis, then by the worker's cache; one without goes to the fallback."""
    users = list(conftest.USERS)[:2]
    set_route(redis, prefix, users[0], "a")
    m, port = start_stats_mux(make_mux, imapmux={"workers": 1},
                              redis=redis_section(redis, prefix),
                              routing={"lookup": "redis", "fallback": "a", "cache_ttl": 60})
    wait_value(port, "imapmux_redis_up", 1)

    def src(name):
        return ("imapmux_routes_total", (("source", name),))
    for u in (users[0], users[0], users[1]):
        c = imap_login(m, ca_ctx, u, password(u))
        assert c is not None, u
        c.logout()
    s = _wait_counts(port, {src("redis"): 1, src("cache"): 1, src("fallback"): 1})
    assert [s[src(x)] for x in ("redis", "cache", "fallback", "static")] == [1, 1, 1, 0], s


def test_pool_waiters_gauge(make_mux, dovecot, ca_ctx):
    """As test_pool.py's pool_wait scenario, on one worker with pool_max = 1:
    while one session holds the only connection, a second login waits for
    it (waiters 1); the first one's LOGOUT frees the slot (reuse_ttl = 0),
    the waiting login gets a connection and waiters is 0 again."""
    m, port = start_stats_mux(make_mux, imapmux={"workers": 1}, backends=[
        ("a", backend_section(dovecot, pool_max=1, pool_wait="10s", reuse_ttl=0))])
    first = imap_login(m, ca_ctx, "alice", password("alice"))
    second = None
    try:
        s = wait_value(port, "imapmux_backend_pool_connections", 1, backend="a", state="in_use")
        assert value(s, "imapmux_backend_pool_waiters", backend="a") == 0
        second = connect(m.imaps_port, ca_ctx)
        second.cmd_send("w", 'LOGIN alice "%s"' % password("alice"))
        wait_value(port, "imapmux_backend_pool_waiters", 1, backend="a")
        first.logout()
        first = None
        _, tagged = second.read_until_tagged("w", timeout=10)
        assert tagged.startswith(b"w OK"), tagged
        s = wait_value(port, "imapmux_backend_pool_waiters", 0, backend="a")
        assert value(s, "imapmux_backend_pool_connections", backend="a", state="in_use") == 1
    finally:
        if first is not None:
            first.logout()
        if second is not None:
            second.close()
