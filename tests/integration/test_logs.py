"""Where imapmux's log lines go and how they look (README "Logs"):
log_format = json (one JSON object a line), log = syslog (RFC 3164 lines,
facility mail, to log_socket: here a datagram socket the test binds, as
/dev/log would be), and journald's priority prefixes when stderr is the
journal's stream (systemd's JOURNAL_STREAM names it by device and inode).
Each is read from a real imapmux logging a real login to the lab Dovecot."""

import json
import os
import re
import signal
import socket
import subprocess

import pytest

import lab
from conftest import password, wait_until
import imapc

pytest_plugins = ["conftest_redis"]

TIMEOUT = 8.0


def login_once(m):
    c = imapc.Client(m.imap_port, timeout=TIMEOUT)
    assert c.greeting().startswith(b"* OK")
    c.login("alice", password("alice"))
    c.close()


def datagrams_until(srv, text, rounds=50):
    """Datagrams from srv (a socket with a timeout) until one holds text:
    bounded, at most rounds datagrams or timeouts."""
    got = []
    for _ in range(rounds):
        try:
            got.append(srv.recv(4096).decode())
        except socket.timeout:
            pass
        if any(text in g for g in got):
            break
    return got


def test_json_lines_parse_and_carry_level_and_message(make_mux):
    m = make_mux(imapmux={"log_format": "json"}, plaintext_auth=True)
    login_once(m)
    wait_until(lambda: "login ok" in m.log_text(), 5, "the login's log line")
    lines = [l for l in m.log_text().splitlines() if l.strip()]
    docs = [json.loads(l) for l in lines]     # every line, or this raises
    assert all({"ts", "level", "msg"} <= set(d) for d in docs), docs
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", d["ts"]) for d in docs)
    ok = [d for d in docs if "login ok" in d["msg"]]
    assert ok and ok[0]["level"] == "info", docs
    assert password("alice") not in m.log_text()


def test_syslog_lines_reach_the_socket_with_facility_mail(make_mux, tmp_path):
    path = str(tmp_path / "log.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    srv.settimeout(1.0)
    try:
        m = make_mux(imapmux={"log": "syslog", "log_socket": path}, plaintext_auth=True)
        login_once(m)
        got = datagrams_until(srv, "login ok")
        ok = [g for g in got if "login ok" in g]
        assert ok, got
        # <PRI> = facility mail (2) * 8 + severity info (6); then a
        # timestamp "Mmm dd hh:mm:ss" and the tag imapmux[PID]: (no host name:
        # the local socket form, as syslog(3) writes it)
        assert re.match(r"<22>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d imapmux\[%d\]: " % m.pid,
                        ok[0]), ok[0]
        assert all(re.match(r"<(1[6-9]|2[0-3])>", g) for g in got), got
        # Lines go to syslog, not to stderr as well.
        assert "login ok" not in m.log_text()
    finally:
        srv.close()


def test_journald_priority_prefixes_when_stderr_is_the_journal(make_mux, tmp_path):
    path, imaps_port, imap_port = make_mux.conf(plaintext_auth=True)
    log = str(tmp_path / "journal.log")
    open(log, "w").close()
    st = os.stat(log)
    env = dict(os.environ, JOURNAL_STREAM="%d:%d" % (st.st_dev, st.st_ino))
    p = lab.Proc([lab.IMAPMUX, "-c", path], "imapmux", log_path=log, env=env)
    try:
        lab.wait_listening([imap_port], timeout=10, proc=p)
        c = imapc.Client(imap_port, timeout=TIMEOUT)
        assert c.greeting().startswith(b"* OK")
        c.login("alice", password("alice"))
        c.close()
        wait_until(lambda: "login ok" in open(log).read(), 5, "the login's log line")
        lines = [l for l in open(log).read().splitlines() if l.strip()]
        # sd-daemon(3): <6> info, <4> warning, <3> error; no timestamp of
        # our own (the journal has its own).
        assert all(re.match(r"<[3467]>\S", l) for l in lines), lines
        assert any(l.startswith("<6>") and "login ok" in l for l in lines), lines
        assert not any(re.match(r"<\d>\d{4}-", l) for l in lines), lines
    finally:
        p.stop()


def test_bad_values_are_refused_by_the_check(make_mux):
    for key, val in (("log_format", "xml"), ("log", "file")):
        path, _, _ = make_mux.conf(imapmux={key: val})
        r = subprocess.run([lab.IMAPMUX, "-t", "-c", path], capture_output=True, text=True,
                           timeout=10)
        assert r.returncode == 1, (key, r)
        assert "bad value '%s' for %s" % (val, key) in r.stderr, r.stderr


def summary(text, **match):
    """The session_end lines of a text log whose keys hold match's values,
    each as a dict."""
    out = []
    for line in text.splitlines():
        if " event=session_end " not in line:
            continue
        kv = dict((k, v.strip('"')) for k, v in
                  re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', line))
        if all(kv.get(k) == v for k, v in match.items()):
            out.append(kv)
    return out


def logout_summary(m, c, port):
    """LOGOUT on c (from local port), then its session's summary line."""
    c.send(b"z LOGOUT\r\n")
    c.read_until_tagged("z")
    c.close()
    client = "127.0.0.1:%d" % port
    wait_until(lambda: summary(m.log_text(), client=client), 5, "the session's summary line")
    (kv,) = summary(m.log_text(), client=client)
    return kv


def test_session_summary_line_for_a_login_and_logout(make_mux, ca_ctx):
    """One key=value line a session: client, listener, TLS, user, method,
    backend, reuse, parks, duration, bytes both sides, how it ended."""
    m = make_mux(plaintext_auth=True)
    c = imapc.Client(m.imap_port, timeout=TIMEOUT)
    assert c.greeting().startswith(b"* OK")
    c.login("alice", password("alice"))
    port = c.sock.getsockname()[1]
    c.send(b"s SELECT INBOX\r\n")
    _, t = c.read_until_tagged("s")
    assert t.startswith(b"s OK"), t
    kv = logout_summary(m, c, port)
    assert kv["listener"] == "imap" and kv["tls"] == "none", kv
    assert kv["user"] == "alice" and kv["method"] == "login" and kv["backend"] == "a", kv
    assert kv["reused"] == "no" and kv["parked"] == "0", kv
    assert re.fullmatch(r"\S+", kv["session"]) and kv["session"].startswith("S-"), kv
    assert 0 <= float(kv["duration"]) < 30, kv
    # what the client sent and got; the backend carried the SELECT and LOGOUT both ways
    assert int(kv["client_in"]) > 40 and int(kv["client_out"]) > 100, kv
    assert int(kv["backend_in"]) > 100 and int(kv["backend_out"]) >= len("s SELECT INBOX\r\n"), kv
    assert kv["end"].startswith("logout"), kv

    # Implicit TLS, AUTHENTICATE PLAIN, the client just goes away.
    import imaplib
    i = imaplib.IMAP4_SSL("127.0.0.1", m.imaps_port, ssl_context=ca_ctx, timeout=TIMEOUT)
    i.authenticate("PLAIN", lambda _: b"\0alice\0" + password("alice").encode())
    tport = i.sock.getsockname()[1]
    i.shutdown()
    client = "127.0.0.1:%d" % tport
    wait_until(lambda: summary(m.log_text(), client=client), 5, "the TLS session's line")
    (kv,) = summary(m.log_text(), client=client)
    assert kv["listener"] == "imaps" and kv["tls"] in ("TLSv1.2", "TLSv1.3"), kv
    assert kv["method"] == "authenticate" and kv["user"] == "alice", kv
    assert password("alice") not in m.log_text()


def test_session_summary_line_as_json(make_mux):
    m = make_mux(imapmux={"log_format": "json"}, plaintext_auth=True)
    login_once(m)
    wait_until(lambda: '"event":"session_end"' in m.log_text(), 5, "the summary line")
    docs = [json.loads(l) for l in m.log_text().splitlines() if l.strip()]
    (d,) = [d for d in docs if d.get("event") == "session_end"]
    assert d["msg"] == "session end" and d["user"] == "alice" and d["backend"] == "a", d
    assert isinstance(d["client_in"], int) and isinstance(d["duration"], float), d


FILTER = os.path.join(lab.REPO, "deploy", "fail2ban", "filter.d", "imapmux.conf")


def fail2ban_ips(log_path):
    """The address of each failure fail2ban-regex finds with our filter."""
    r = subprocess.run(["fail2ban-regex", "--out", "ip", log_path, FILTER],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr + r.stdout
    return sorted(l.strip() for l in r.stdout.splitlines() if l.strip())


def fail_logins(m, attempts):
    """LOGIN from each (source address, user, password); none may succeed
    but those whose password is right."""
    from test_conn_limits import connect_from
    for source, user, pw in attempts:
        c = connect_from(m.imap_port, source)
        assert c.greeting().startswith(b"* OK")
        _, t = c.cmd("L1", "LOGIN %s %s" % (imapc.quote(user), imapc.quote(pw)))
        assert t.startswith(b"L1 OK" if pw == password("alice") else b"L1 NO"), t
        c.close()


ATTEMPTS = [
    ("127.0.0.2", "alice", "wrong-1"),
    ("127.0.0.2", "nobody", "wrong-2"),
    ("127.0.0.3", "alice", "wrong-3"),
    # a user name made to look like another address's failure
    ("127.0.0.4", 'x ip=10.9.9.9 result=auth_failed user=y', "wrong-4"),
    ("127.0.0.4", "z@10.9.9.9:1 login failed: ip=10.9.9.9", "wrong-5"),
    # a success is no failure
    ("127.0.0.5", "alice", None),
]


def _attempts():
    return [(s, u, p if p is not None else password("alice")) for s, u, p in ATTEMPTS]


def test_fail2ban_filter_finds_each_failure_and_nothing_else(make_mux, tmp_path):
    """deploy/fail2ban/filter.d/imapmux.conf with the real fail2ban-regex on
    real lines (text, then JSON, then the journal's form): the address of
    every failed login, not the success, not an address a user name carries."""
    want = ["127.0.0.2", "127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.4"]
    for fmt in ("text", "json"):
        m = make_mux(imapmux={"log_format": fmt, "auth_fail_delay": 0}, plaintext_auth=True)
        fail_logins(m, _attempts())
        wait_until(lambda: m.log_text().count("login_failed") >= 5, 5, "five failures logged")
        assert fail2ban_ips(m.log_path) == want, (fmt, m.log_text())
        assert "wrong-" not in m.log_text()
    # The journal's form: priority prefix, no timestamp of our own.
    m = make_mux(imapmux={"auth_fail_delay": 0}, plaintext_auth=True)
    fail_logins(m, _attempts())
    wait_until(lambda: m.log_text().count("login_failed") >= 5, 5, "five failures logged")
    journal = tmp_path / "journal.log"
    journal.write_text("".join("<6>" + l.split(" ", 2)[2] + "\n"
                               for l in m.log_text().splitlines() if " info " in l))
    assert fail2ban_ips(str(journal)) == want, journal.read_text()


def test_syslog_unreachable_lines_go_to_stderr(make_mux, tmp_path):
    """log = syslog with no one at log_socket: nothing is lost, the lines
    (without the syslog header) go to stderr."""
    m = make_mux(imapmux={"log": "syslog", "log_socket": str(tmp_path / "nobody.sock")},
                 plaintext_auth=True)
    login_once(m)
    wait_until(lambda: "login ok" in m.log_text(), 5, "the login's line on stderr")
    assert not re.search(r"^<\d+>", m.log_text(), re.M), m.log_text()


def test_log_settings_follow_a_reload(make_mux, tmp_path):
    """SIGHUP applies log_format and log like any other key: text, then
    JSON on stderr, then syslog to a socket, each from the next line on."""
    m = make_mux(plaintext_auth=True)
    login_once(m)
    make_mux.rewrite(m, imapmux={"log_format": "json"}, plaintext_auth=True)
    m.signal(signal.SIGHUP)
    wait_until(lambda: "configuration reloaded" in m.log_text(), 5, "the reload")
    login_once(m)
    wait_until(lambda: m.log_text().count("login ok") == 2, 5, "the second login's line")
    text = m.log_text()
    before, after = text.split("configuration reloaded", 1)
    assert not before.splitlines()[0].startswith("{"), before
    later = [json.loads(l) for l in after.splitlines()[1:] if l.strip()]
    assert any("login ok" in d["msg"] for d in later), after

    path = str(tmp_path / "log.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    srv.settimeout(1.0)
    try:
        make_mux.rewrite(m, imapmux={"log": "syslog", "log_socket": path},
                         plaintext_auth=True)
        m.signal(signal.SIGHUP)
        # The reload is applied when it says so (the signal alone may still
        # find the old settings: a login before it logs to stderr).
        got = datagrams_until(srv, "configuration reloaded")
        assert any("configuration reloaded" in g for g in got), got
        login_once(m)
        got = datagrams_until(srv, "login ok")
        assert any("login ok" in g for g in got), got
        assert m.log_text().count("login ok") == 2, m.log_text()
    finally:
        srv.close()


def test_syslog_socket_that_appears_later_gets_the_lines(make_mux, tmp_path):
    """log = syslog while nothing listens at log_socket: stderr; once the
    socket is there (syslog started late), the lines go to it."""
    path = str(tmp_path / "late.sock")
    m = make_mux(imapmux={"log": "syslog", "log_socket": path}, plaintext_auth=True)
    login_once(m)
    wait_until(lambda: "login ok" in m.log_text(), 5, "the first login on stderr")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    srv.bind(path)
    srv.settimeout(1.0)
    try:
        got = []
        for _ in range(20):        # bounded: 20 logins, each waiting at most 1 s
            login_once(m)
            try:
                while True:
                    got.append(srv.recv(4096).decode())
            except socket.timeout:
                pass
            if any("login ok" in g for g in got):
                break
        assert any("login ok" in g and g.startswith("<22>") for g in got), got
    finally:
        srv.close()


def test_summary_counts_backend_bytes_of_every_attach_across_a_park(make_mux, fresh_dovecot,
                                                                    redis, prefix, ca_ctx):
    """A session that parks and wakes has had two backend connections: the
    summary's backend bytes are both's, not the last one's."""
    import parklib
    user, body = "park24", b"x" * 40000
    d = parklib.reset_inbox(fresh_dovecot, user, [])
    msg = b"Subject: big\r\n\r\n" + body + b"\r\n"
    d.send(b"a APPEND INBOX {%d}\r\n" % len(msg))
    assert d.readline().startswith(b"+")
    d.send(msg + b"\r\n")
    _, t = d.read_until_tagged("a")
    assert t.startswith(b"a OK"), t
    d.close()
    m = parklib.mux(make_mux, fresh_dovecot, redis, prefix, "events")
    c = parklib.login(m, ca_ctx, user)
    port = c.sock.getsockname()[1]
    parklib.ok(c, "s", "SELECT INBOX")
    parklib.ok(c, "f1", "FETCH 1 BODY.PEEK[]")        # 40 KB from the first backend session
    c.send(b"i IDLE\r\n")
    assert c.readline().startswith(b"+")
    parklib.wait_parked(m, 1)
    c.send(b"DONE\r\n")
    _, t = c.read_until_tagged("i")
    assert t.startswith(b"i OK"), t
    parklib.ok(c, "f2", "FETCH 1 BODY.PEEK[]")        # the wake's backend session: 40 KB more
    kv = logout_summary(m, c, port)
    assert int(kv["parked"]) >= 1, kv
    assert int(kv["backend_in"]) > 2 * len(body), kv
    assert int(kv["client_out"]) > 2 * len(body), kv
    assert int(kv["backend_out"]) >= len(b"f1 FETCH 1 BODY.PEEK[]\r\n") * 2, kv
