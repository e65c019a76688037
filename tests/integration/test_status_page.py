"""GET /status on stats_listen (proxy/status.c): one JSON object an
operator or a tool reads, whose session counts follow real sessions through
imapmux to the lab's Dovecot: a logged-in imaplib client and a pre-auth one
(connected, greeted, not logged in); backends with their health (a real
Dovecot stopped under it), connections and pools; listeners; Redis link.
GET / is rendered in headless Chromium (Debian's chromium): its DOM after
the page's fetch, and a screenshot kept in the test's tmp_path."""

import imaplib
import json
import os
import re
import shutil
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request

import pytest

import lab
from conftest import backend_section, password, wait_until


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


# ---------------------------------------------------------------------------
# backends, listeners, Redis; the page in a real browser

FAST_CHECKS = {"check_interval": "0.5s", "check_timeout": "1s", "check_fall": 1,
               "check_rise": 1}


def two_backend_mux(make_mux, dovecot, fresh_dovecot, **kw):
    """imapmux in front of two real Dovecots (a, b; health checked) with
    stats_listen on a free port; returns (mux, port)."""
    port = lab.free_port()
    imapmux = {"stats_listen": "127.0.0.1:%d" % port}
    imapmux.update(kw.pop("imapmux", {}))
    m = make_mux(imapmux=imapmux, backends=[
        ("a", backend_section(dovecot, **FAST_CHECKS)),
        ("b", backend_section(fresh_dovecot, **FAST_CHECKS))], **kw)
    lab.wait_listening(port, timeout=10, proc=m.proc)
    return m, port


def test_status_backends_listeners_redis_state(make_mux, dovecot, fresh_dovecot, redis, ca_ctx):
    m, port = two_backend_mux(make_mux, dovecot, fresh_dovecot,
                              redis={"address": "127.0.0.1:%d" % redis.port,
                                     "prefix": "it-status:"})
    wait_until(lambda: get_status(port)["redis"]["up"], 8, "/status to show Redis up")
    doc = get_status(port)
    assert doc["instance"]["state"] == "accepting"
    assert doc["redis"] == {"configured": True, "address": "127.0.0.1:%d" % redis.port,
                            "up": True, "workers_up": 2}
    assert [(x["name"], x["address"], x["tls"]) for x in doc["listeners"]] == [
        ("imaps", "127.0.0.1:%d" % m.imaps_port, "implicit"),
        ("imap", "127.0.0.1:%d" % m.imap_port, "starttls")]
    bk = {b["name"]: b for b in doc["backends"]}
    assert list(bk) == ["a", "b"]
    assert bk["a"]["address"] == "127.0.0.1:%d" % dovecot.port
    assert bk["b"]["address"] == "127.0.0.1:%d" % fresh_dovecot.port
    assert bk["a"]["health"] == bk["b"]["health"] == "up"

    c = imaplib.IMAP4_SSL("127.0.0.1", m.imaps_port, ssl_context=ca_ctx, timeout=10)
    try:
        assert c.login("alice", password("alice"))[0] == "OK"
        # Routed to a (the factory's static fallback): its connection is in use.
        wait_until(lambda: get_status(port)["backends"][0]["connections"]["in_use"] == 1, 5,
                   "backend a to show one connection in use")
        doc = get_status(port)
        a = doc["backends"][0]
        assert a["connections"]["total"] >= 1 and a["pool"]["in_use"] == 1, a
        assert a["logins"]["ok"] == 1 and a["pool"]["waiters"] == 0, a
        assert doc["backends"][1]["connections"]["in_use"] == 0
        assert doc["sessions"]["by_state"] == {"pre_login": 0, "proxying": 1, "parked": 0}
    finally:
        c.logout()

    fresh_dovecot.stop()
    wait_until(lambda: get_status(port)["backends"][1]["health"] == "down", 8,
               "/status to show backend b down")
    assert get_status(port)["backends"][0]["health"] == "up"


def test_status_strings_are_json_escaped(make_mux, dovecot, tmp_path):
    """A configured string with a quote, a backslash and a non-ASCII
    character (a Redis socket path) arrives intact through json.loads."""
    sock = str(tmp_path / 'r"e\\dis-\u00e9.sock')
    port = lab.free_port()
    m = make_mux(imapmux={"stats_listen": "127.0.0.1:%d" % port},
                 redis={"address": "unix:" + sock, "prefix": "it-esc:"})
    lab.wait_listening(port, timeout=10, proc=m.proc)
    doc = get_status(port)
    assert doc["redis"]["address"] == "unix:" + sock, doc["redis"]
    assert doc["redis"]["up"] is False


def chromium(args, home, timeout=60):
    """Run headless Chromium (a temporary HOME and profile); its stdout."""
    exe = shutil.which("chromium")
    if exe is None:
        pytest.fail("chromium is not installed (deploy/deps.sh installs it)")
    env = dict(os.environ, HOME=str(home))
    cmd = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
           "--disable-dev-shm-usage", "--user-data-dir=%s" % (home / "profile"),
           "--virtual-time-budget=5000"] + args
    r = subprocess.run(cmd, env=env, capture_output=True, timeout=timeout)
    assert r.returncode == 0, (cmd, r.returncode, r.stderr[-2000:])
    return r.stdout.decode("utf-8", "replace")


def png_info(path):
    """(width, height, number of distinct pixel colours) of a PNG file."""
    from PIL import Image
    with open(path, "rb") as f:
        head = f.read(24)
    assert head[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG: %r" % head[:8]
    assert head[12:16] == b"IHDR"
    w, h = struct.unpack(">II", head[16:24])
    with Image.open(path) as im:
        im.load()
        assert im.size == (w, h)
        colours = im.convert("RGB").getcolors(maxcolors=1 << 16)
    return w, h, (len(colours) if colours is not None else 1 << 16)


@pytest.mark.nosan  # a browser: the page it renders is served by the tests above
def test_status_page_in_headless_chromium(make_mux, dovecot, fresh_dovecot, ca_ctx, tmp_path):
    """GET / in a real browser: once the page's fetch of /status has run, the
    DOM names both backends with their health (b's Dovecot stopped: down)
    and counts the logged-in session; a screenshot of it is a real 1280x900
    picture, not a blank."""
    m, port = two_backend_mux(make_mux, dovecot, fresh_dovecot)
    url = "http://127.0.0.1:%d/" % port
    fresh_dovecot.stop()
    wait_until(lambda: get_status(port)["backends"][1]["health"] == "down", 8,
               "/status to show backend b down")
    c = imaplib.IMAP4_SSL("127.0.0.1", m.imaps_port, ssl_context=ca_ctx, timeout=10)
    try:
        assert c.login("alice", password("alice"))[0] == "OK"
        wait_until(lambda: get_status(port)["sessions"]["logged_in"] == 1, 5,
                   "/status to count the session")
        home = tmp_path / "chromium-home"
        home.mkdir()
        dom = chromium(["--dump-dom", url], home)
        shot = tmp_path / "status-page.png"
        chromium(["--screenshot=%s" % shot, "--window-size=1280,900", "--hide-scrollbars",
                  url], home)
    finally:
        c.logout()

    # The backends table, filled in by the page's script from /status.
    body = dom[dom.index('<table id="backends">'):]
    body = body[:body.index("</table>")]
    rows = re.findall(r"<tr>(.*?)</tr>", body[body.index("<tbody>"):], re.S)
    cells = [re.findall(r"<td[^>]*>(.*?)</td>", r, re.S) for r in rows]
    assert [r[0] for r in cells] == ["a", "b"], cells
    assert cells[0][1] == "127.0.0.1:%d" % dovecot.port
    assert cells[1][1] == "127.0.0.1:%d" % fresh_dovecot.port
    assert cells[0][2] == '<span class="badge up">up</span>', cells[0]
    assert cells[1][2] == '<span class="badge down">down</span>', cells[1]
    assert cells[0][4] == "1", cells  # a's connection in use: the session's
    assert re.search(r'<b id="logged_in">1</b>', dom), dom[:3000]
    assert re.search(r'<b id="total">1</b>', dom), dom[:3000]
    assert re.search(r'<span id="state" class="badge accepting">accepting</span>', dom)
    assert 'id="err"></div>' in dom, "the page could not read /status"

    assert shot.exists(), "no screenshot written"
    w, h, ncolours = png_info(shot)
    assert (w, h) == (1280, 900)
    assert ncolours > 10, "screenshot is (nearly) one flat colour: %d colours" % ncolours
