"""The stats endpoint (stats_listen): GET /metrics in Prometheus text format,
the counters moving with real logins through imapmux, and the small HTTP
server's answers and bounds (404, 405, 400, 431, a flood of idle or
garbage connections)."""

import imaplib
import os
import re
import socket
import time
import urllib.error
import urllib.request

import pytest

import lab
from conftest import password

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
