"""GET /status on stats_listen (proxy/status.c): one JSON object an
operator or a tool reads, whose session counts follow real sessions through
imapmux to the lab's Dovecot: a logged-in imaplib client and a pre-auth one
(connected, greeted, not logged in)."""

import imaplib
import json
import socket
import time
import urllib.error
import urllib.request

import pytest

import lab
from conftest import password, wait_until


@pytest.fixture
def status_mux(make_mux):
    """An imapmux with stats_listen on a free port; returns (mux, port)."""
    port = lab.free_port()
    m = make_mux(imapmux={"stats_listen": "127.0.0.1:%d" % port})
    lab.wait_listening(port, timeout=10, proc=m.proc)
    return m, port


def get_status(port):
    with urllib.request.urlopen("http://127.0.0.1:%d/status" % port, timeout=5) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "application/json"
        body = r.read()
    assert int(r.headers["Content-Length"]) == len(body)
    return json.loads(body.decode("utf-8"))


def sessions(doc):
    """The three session counts of a /status document."""
    return {k: doc["sessions"][k] for k in ("total", "logged_in", "parked")}


def test_status_instance_and_session_counts(status_mux, ca_ctx):
    mux, port = status_mux
    doc = get_status(port)
    inst = doc["instance"]
    assert inst["pid"] == mux.proc.pid
    assert isinstance(inst["version"], str) and inst["version"]
    assert inst["workers"] >= 1
    assert abs(inst["started"] - time.time()) < 60
    assert 0 <= inst["uptime"] < 60
    assert sessions(doc) == {"total": 0, "logged_in": 0, "parked": 0}

    # One logged in, one only greeted.
    logged = imaplib.IMAP4_SSL("127.0.0.1", mux.imaps_port, ssl_context=ca_ctx, timeout=10)
    pre = None
    try:
        assert logged.login("alice", password("alice"))[0] == "OK"
        pre = socket.create_connection(("127.0.0.1", mux.imap_port), timeout=10)
        assert pre.recv(4096).startswith(b"* OK")
        want = {"total": 2, "logged_in": 1, "parked": 0}
        wait_until(lambda: sessions(get_status(port)) == want, 5,
                   "/status to count 2 sessions, 1 logged in")
    finally:
        logged.logout()
        if pre is not None:
            pre.close()
    wait_until(lambda: get_status(port)["sessions"]["total"] == 0, 5,
               "/status to count no session")


def test_status_other_methods_and_paths(status_mux):
    _, port = status_mux
    req = urllib.request.Request("http://127.0.0.1:%d/status" % port, data=b"x", method="POST")
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(req, timeout=5)
    assert e.value.code == 405
    for path in ("/status/", "/statusx"):
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=5)
        assert e.value.code == 404


def test_status_page_html(status_mux):
    """GET / is one self-contained page that renders /status."""
    _, port = status_mux
    with urllib.request.urlopen("http://127.0.0.1:%d/" % port, timeout=5) as r:
        assert r.status == 200
        assert r.headers["Content-Type"] == "text/html; charset=utf-8"
        page = r.read().decode("utf-8")
    assert page.startswith("<!DOCTYPE html>")
    assert "fetch('/status'" in page and "<noscript>" in page
    assert "http:" not in page and "https:" not in page and "src=" not in page


def get_health(port):
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/health" % port, timeout=5) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def test_health_is_ok_until_sigterm_then_503_while_draining(make_mux, ca_ctx):
    """GET /health (what a load balancer checks, deploy/haproxy.cfg): 200 "ok"
    while the instance takes logins; after SIGTERM, while a session in the
    middle of an APPEND keeps the drain going, 503, so the balancer sends new
    clients elsewhere; the session's command still completes."""
    port = lab.free_port()
    mux = make_mux(imapmux={"stats_listen": "127.0.0.1:%d" % port, "shutdown_timeout": 20})
    lab.wait_listening(port, timeout=10, proc=mux.proc)
    assert get_health(port) == (200, b"ok\n")
    raw = socket.create_connection(("127.0.0.1", mux.imaps_port), timeout=10)
    s = ca_ctx.wrap_socket(raw, server_hostname="localhost")
    f = s.makefile("rb")
    try:
        assert f.readline().startswith(b"* OK")
        s.sendall(b"a LOGIN alice \"%s\"\r\n" % password("alice").encode())
        while not (line := f.readline()).startswith(b"a "):
            assert line, "closed during login"
        assert line.startswith(b"a OK"), line
        msg = b"Subject: drain\r\n\r\nhello\r\n"
        s.sendall(b"b APPEND INBOX {%d}\r\n" % len(msg))
        assert f.readline().startswith(b"+"), "no continuation"
        s.sendall(msg[:5])
        mux.expect_exit = True
        mux.proc.signal(15)
        wait_until(lambda: get_health(port)[0] == 503, 5, "/health to say 503 while draining")
        code, body = get_health(port)
        assert code == 503 and b"draining" in body, (code, body)
        s.sendall(msg[5:] + b"\r\n")
        lines = []
        while not (line := f.readline()).startswith(b"b "):
            assert line, "closed before the APPEND was answered: %r" % lines
            lines.append(line)
        assert line.startswith(b"b OK"), line
    finally:
        s.close()
    mux.proc.wait(timeout=20)
