"""bench/imapbench, the C load generator (issue #14): each mode runs briefly
against a real Dovecot (its implicit-TLS port) and through imapmux, and its
JSON counts are checked against the server's own truth: Dovecot's log
(`Login: user=<...>` lines; the `Logged out in=N` bytes an imap process
read), imapmux's /metrics, the mailbox itself (what APPEND stored), the
process's sockets from /proc. Failures must be loud: a wrong password, a
closed port, a missing message, a bad option. No speed is asserted.

The module has a Dovecot of its own (the `dovecot` fixture is overridden
here, so make_mux's imapmux fronts it) with the users bench00..bench03."""

import json
import os
import random
import re
import socket
import subprocess
import threading
import time

import pytest

import lab
from conftest import (MASTER_PASSWORD, REPO, backend_section, proc_status_kib, scrape_metrics,
                      socks_to, wait_until)

IMAPBENCH = os.path.join(REPO, "bench", "imapbench")
PASSWORD = "bench-Pw-77"
USERS = {"bench%02d" % i: PASSWORD for i in range(4)}
USERS.update({"bulkapp": PASSWORD, "mixer0": PASSWORD, "mixer1": PASSWORD})
SMALL = (b"From: a@localhost\r\nTo: b@localhost\r\nSubject: small\r\n"
         b"Message-ID: <small@imapbench.test>\r\n\r\nhello\r\n")
BIG_LINES = 20000
BIG = (b"From: a@localhost\r\nSubject: big\r\n\r\n" + (b"x" * 78 + b"\r\n") * BIG_LINES)
# bench01's UID 2: literal bytes that look like IMAP lines (a tagged OK of
# imapbench's tags, a literal announcement), which the reader must count,
# never parse.
MEDIUM = (b"From: a@localhost\r\nSubject: medium\r\n\r\n"
          + b"b5 OK fake\r\n* 1 FETCH (BODY[] {99}\r\n+ go on\r\n" * 400)


@pytest.fixture(scope="module")
def dovecot(cert, key):
    d = lab.Dovecot(USERS, tls=True, cert=cert, key=key, master_password=MASTER_PASSWORD,
                    name="dovecot-imapbench")
    d.start()
    for u in USERS:
        d.append(u, SMALL)      # UID 1: the latency mode's small message
    d.append("bench00", BIG)    # UID 2: the biggest, bulk --fetch's
    d.append("bench01", MEDIUM)  # UID 2
    yield d
    d.cleanup()


def run(*args, timeout=30):
    """Run imapbench; returns (exit status, the JSON object or None, stderr)."""
    assert os.access(IMAPBENCH, os.X_OK), "build it first: make bench/imapbench"
    r = subprocess.run([IMAPBENCH] + [str(a) for a in args], capture_output=True,
                       timeout=timeout)
    out = r.stdout.decode()
    lines = out.splitlines()
    assert len(lines) <= 1, "more than one line on stdout: %r" % out[:2000]
    res = json.loads(lines[0]) if lines else None
    return r.returncode, res, r.stderr.decode()


def ok(*args, **kw):
    rc, res, err = run(*args, **kw)
    assert rc == 0 and res is not None, (rc, res, err[-2000:])
    assert res["errors"] == 0 and res["first_error"] is None, res
    assert res["stopped_by_time"] is False, res
    return res


def common(dv, *extra):
    return ["-p", dv.imaps_port, "-w", PASSWORD, "-t", 20] + list(extra)


def login_lines(dv, since, user_re=r"bench\d\d"):
    return len(re.findall(r"imap-login: Info: Login: user=<%s>" % user_re,
                          dv.log_text()[since:]))


def logout_ins(dv, since, user):
    """in= of every `Logged out` line of user's imap processes since offset."""
    return [int(m) for m in re.findall(r"imap\(%s\)<[^\n]*Logged out in=(\d+)" % user,
                                       dv.log_text()[since:])]


# ---------------------------------------------------------------------------
# logins

def test_logins_direct_counts_match_dovecot(dovecot):
    since = len(dovecot.log_text())
    res = ok("logins", *common(dovecot, "-c", 3, "-U", 4, "-n", 12, "--warmup", 2,
                               "--label", "direct", "--pid", dovecot.proc.pid))
    assert res["mode"] == "logins" and res["label"] == "direct" and res["tls"] == "implicit"
    assert res["target"] == "127.0.0.1:%d" % dovecot.imaps_port
    assert res["ops"] == 12 and res["concurrency"] == 3
    assert res["lat_us"]["samples"] == 12
    lat = res["lat_us"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"] <= lat["max"]
    # Dovecot's process tree did work during the measured phase.
    assert res["cpu_s"] is not None and res["cpu_s"] >= 0 and len(res["cpu_pids"]) == 1
    assert res["resumed"] == 0
    # Every login (warmup included) is one of Dovecot's, and nothing more.
    wait_until(lambda: login_lines(dovecot, since) >= 14, 5, "14 Dovecot logins")
    time.sleep(0.2)
    assert login_lines(dovecot, since) == 14
    # -U 4 over 3 loops: users 0, 1, 2 only.
    assert login_lines(dovecot, since, "bench03") == 0
    assert login_lines(dovecot, since, "bench02") > 0


def test_logins_resume_against_dovecot(dovecot):
    """Dovecot (OpenSSL 3, TLS 1.3) issues tickets: with --resume every
    loop's second and later handshakes resume; without, none does."""
    res = ok("logins", *common(dovecot, "-c", 2, "-n", 8, "--warmup", 2, "--resume"))
    assert res["ops"] == 8
    assert res["resumed"] == 8, res   # the warmup gave each loop its ticket
    res = ok("logins", *common(dovecot, "-c", 2, "-n", 8, "--warmup", 2))
    assert res["resumed"] == 0, res


def test_logins_through_imapmux_match_metrics(make_mux, dovecot):
    stats = lab.free_port()
    m = make_mux(imapmux={"stats_listen": "127.0.0.1:%d" % stats})
    lab.wait_listening(stats, timeout=10, proc=m.proc)
    key = 'imapmux_logins_total{result="ok"}'
    before = scrape_metrics(stats).get(key, 0)
    res = ok("logins", "-p", m.imaps_port, "-w", PASSWORD, "-t", 20, "-c", 2, "-U", 2,
             "-n", 10, "--warmup", 2, "--pid", m.proc.pid)
    assert res["ops"] == 10
    assert res["cpu_s"] is not None and res["cpu_per_op_us"] is not None
    assert scrape_metrics(stats).get(key, 0) - before == 12


def test_logins_starttls_and_plain(dovecot):
    res = ok("logins", "-p", dovecot.port, "-T", "starttls", "-w", PASSWORD, "-n", 3, "-t", 20)
    assert res["ops"] == 3 and res["tls"] == "starttls"
    res = ok("logins", "-p", dovecot.port, "-T", "none", "-w", PASSWORD, "-n", 3, "-t", 20)
    assert res["ops"] == 3 and res["tls"] == "none"


def test_ca_checks_the_certificate(dovecot, cert, other_cert):
    """--ca: the lab's certificate (SAN 127.0.0.1) passes; a CA that did not
    sign it fails the handshake."""
    res = ok("logins", *common(dovecot, "-n", 2, "--ca", cert))
    assert res["ops"] == 2
    rc, res, err = run("logins", *common(dovecot, "-n", 2, "--ca", other_cert))
    assert rc == 1 and "certificate verify failed" in res["first_error"], (res, err)


def test_wrong_password_fails_loudly(dovecot):
    rc, res, err = run("logins", "-p", dovecot.imaps_port, "-w", "not-the-password", "-n", 3,
                       "-t", 20)
    assert rc == 1, (rc, err)
    assert res["errors"] > 0 and res["ops"] == 0
    assert "AUTHENTICATIONFAILED" in res["first_error"] or "LOGIN" in res["first_error"]
    assert "not-the-password" not in res["first_error"] and "not-the-password" not in err


def test_closed_port_fails_loudly():
    port = lab.free_port()   # nothing listens there
    rc, res, err = run("logins", "-p", port, "-n", 3, "-t", 10)
    assert rc == 1, (rc, err)
    assert res["errors"] == 3 + 1 and res["ops"] == 0   # the warmup's one, then 3
    assert "connect" in res["first_error"] and "refused" in res["first_error"]


def test_usage_errors_exit_2():
    for args in ([], ["logins"], ["nosuchmode", "-p", "1"], ["logins", "-p", "0"],
                 ["bulk", "-p", "1"], ["bulk", "-p", "1", "--fetch", "--append", "1000"],
                 ["logins", "-p", "1", "-u", "u%d%d"], ["latency", "-p", "1", "--resume"],
                 ["logins", "-p", "1", "--pid", "999999999"]):
        rc, res, err = run(*args, timeout=10)
        assert rc == 2 and res is None, (args, rc, err)


def test_time_limit_stops_the_run(dovecot):
    """A server that never answers (a listener nobody accepts on): the run
    stops by itself at -t and says so; nothing completed is an error."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    try:
        t0 = time.monotonic()
        rc, res, err = run("logins", "-p", s.getsockname()[1], "-n", 3, "-t", 1)
        assert time.monotonic() - t0 < 5
    finally:
        s.close()
    assert rc == 1 and res["stopped_by_time"] is True and res["errors"] == 1, (rc, res, err)


# ---------------------------------------------------------------------------
# latency

def test_latency_noop_count_matches_dovecot_bytes(dovecot):
    """Every NOOP reaches Dovecot: each imap process's `Logged out in=`
    grows by exactly the bytes of the loop's NOOPs (warmup and measured).
    Dovecot's in= has an offset of its own (it counts a few bytes fewer
    than the client sent after LOGIN), so a one-NOOP run is the baseline."""
    def sent(nops):   # what the client sends after LOGIN: SELECT, NOOPs, LOGOUT
        return (len(b'b2 SELECT "INBOX"\r\n')
                + sum(len(b"b%d NOOP\r\n" % k) for k in range(3, 3 + nops))
                + len(b"b%d LOGOUT\r\n" % (3 + nops)))

    since = len(dovecot.log_text())
    ok("latency", *common(dovecot, "-u", "bench03", "-n", 1, "--warmup", 0))
    base = wait_until(lambda: logout_ins(dovecot, since, "bench03"), 5, "bench03 logged out")
    assert len(base) == 1
    since = len(dovecot.log_text())
    res = ok("latency", *common(dovecot, "-c", 2, "-U", 2, "-n", 60, "--warmup", 10))
    assert res["ops"] == 60 and res["lat_us"]["samples"] == 60
    lat = res["lat_us"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["p999"] <= lat["max"]
    want = base[0] + sent(5 + 30) - sent(1)   # per connection: 10 / 2 warmup, 60 / 2 measured
    for user in ("bench00", "bench01"):
        got = wait_until(lambda: logout_ins(dovecot, since, user), 5, "%s logged out" % user)
        assert got == [want], (user, got, want)


def test_latency_fetch_and_missing_uid(dovecot, make_mux):
    res = ok("latency", *common(dovecot, "-c", 2, "-U", 2, "-n", 20, "--cmd", "fetch"))
    assert res["ops"] == 20
    m = make_mux()
    res = ok("latency", "-p", m.imaps_port, "-w", PASSWORD, "-t", 20, "-c", 2, "-n", 20,
             "--cmd", "fetch", "--pid", m.proc.pid)
    assert res["ops"] == 20 and res["cpu_s"] is not None
    rc, res, err = run("latency", *common(dovecot, "-n", 5, "--cmd", "fetch", "--uid", 999))
    assert rc == 1 and res["errors"] > 0 and "UID FETCH 999" in res["first_error"], (res, err)


# ---------------------------------------------------------------------------
# bulk

def test_bulk_fetch_counts_every_byte(dovecot, make_mux):
    size = len(BIG)
    res = ok("bulk", "--fetch", *common(dovecot, "-n", 3, "--pid", dovecot.proc.pid))
    assert res["ops"] == 3 and res["bytes"] == 3 * size, (res["bytes"], size)
    assert res["mb_per_s"] > 0 and res["cpu_per_mb_ms"] is not None
    m = make_mux()
    res = ok("bulk", "--fetch", "-p", m.imaps_port, "-w", PASSWORD, "-t", 20, "-n", 2,
             "--pid", m.proc.pid)
    assert res["bytes"] == 2 * size
    # --uid picks another message: the small one.
    res = ok("bulk", "--fetch", *common(dovecot, "-n", 2, "--uid", 1))
    assert res["bytes"] == 2 * len(SMALL)
    rc, res, err = run("bulk", "--fetch", *common(dovecot, "-n", 2, "--uid", 999))
    assert rc == 1 and res["errors"] > 0, (res, err)


def test_bulk_append_grows_the_mailbox(dovecot, make_mux):
    def sizes():
        c = dovecot.imap("bulkapp", PASSWORD)
        try:
            c.select("INBOX")
            typ, data = c.fetch("1:*", "(RFC822.SIZE)")
            return [int(re.search(rb"RFC822.SIZE (\d+)", d).group(1))
                    for d in data if d]
        finally:
            c.logout()

    before = sizes()
    n, warm, nbytes = 4, 1, 150001
    res = ok("bulk", "--append", nbytes, "-u", "bulkapp",
             *common(dovecot, "-n", n, "--warmup", warm))
    assert res["ops"] == n and res["bytes"] == n * nbytes
    after = sizes()
    assert len(after) == len(before) + n + warm
    assert after[len(before):] == [nbytes] * (n + warm)
    # Through imapmux (its pre-login LITERAL+ or a synchronising literal).
    m = make_mux()
    res = ok("bulk", "--append", 1000, "-u", "bulkapp", "-p", m.imaps_port, "-w", PASSWORD,
             "-t", 20, "-n", 3, "--warmup", 0)
    assert res["bytes"] == 3000
    assert sizes()[len(after):] == [1000] * 3


class Splitter:
    """A TCP relay on loopback in front of Dovecot's plain port that hands
    the server's bytes to the client in random pieces of 1..40 bytes (with a
    short pause now and then, so that the client reads them one by one):
    the reader's lines and literals must come out right wherever a read
    ends. One connection at a time; every loop bounded by its sockets."""

    def __init__(self, port, seed=7):
        self.port, self.rnd = port, random.Random(seed)
        self.ls = socket.socket()
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(8)
        self.ls.settimeout(20)
        self.listen_port = self.ls.getsockname()[1]
        self.threads = []
        self.t = threading.Thread(target=self.serve, daemon=True)
        self.t.start()

    def serve(self):
        while True:
            try:
                c, _ = self.ls.accept()
            except OSError:
                return
            s = socket.create_connection(("127.0.0.1", self.port), timeout=20)
            for sock in (c, s):
                sock.settimeout(20)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for a, b, split in ((c, s, False), (s, c, True)):
                t = threading.Thread(target=self.pump, args=(a, b, split), daemon=True)
                t.start()
                self.threads.append(t)

    def pump(self, src, dst, split):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                while data and split:
                    k = self.rnd.randint(1, 40)
                    dst.sendall(data[:k])
                    data = data[k:]
                    if self.rnd.random() < 0.05:
                        time.sleep(0.0005)
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.ls.close()
        for t in self.threads:
            t.join(timeout=5)


def test_reader_survives_any_split(dovecot):
    """Through the splitting relay: bulk --fetch counts a literal full of
    fake IMAP lines exactly, latency --cmd fetch sees its one literal, and
    logins and mix parse every response, all with zero errors."""
    sp = Splitter(dovecot.port)
    try:
        plain = ["-p", sp.listen_port, "-T", "none", "-w", PASSWORD, "-t", 20]
        res = ok("bulk", "--fetch", *plain, "-u", "bench01", "-n", 2)
        assert res["bytes"] == 2 * len(MEDIUM), (res["bytes"], len(MEDIUM))
        res = ok("latency", *plain, "-u", "bench01", "-n", 5, "--cmd", "fetch")
        assert res["ops"] == 5
        res = ok("logins", *plain, "-u", "bench02", "-n", 3)
        assert res["ops"] == 3
        res = ok("mix", *plain, "-u", "mixer%d", "-U", 2, "-n", 2, "--warmup", 0)
        assert res["ops"] == 2
    finally:
        sp.close()


# ---------------------------------------------------------------------------
# idle

def test_idle_through_imapmux_samples_rss_and_backend_conns(make_mux, dovecot):
    """imapmux (parking off by default) holds backend connections for the
    idle sessions; imapbench's count is compared with the test's own from
    /proc, taken while imapbench holds (--hold 3) after its first sample.
    No health checks (check_interval = 0): nothing else connects meanwhile."""
    m = make_mux(backends=[("a", backend_section(dovecot, check_interval=0))])
    pid = m.proc.pid
    p = subprocess.Popen([IMAPBENCH, "idle", "-p", str(m.imaps_port), "-w", PASSWORD,
                          "-U", "4", "-c", "6", "--settle", "1", "--hold", "3",
                          "--pid", str(pid), "--backend-port", str(dovecot.port), "-t", "20"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        seen = []
        deadline = time.monotonic() + 15
        for line in p.stderr:
            seen.append(line)
            if b"idle: sample 1 taken" in line or time.monotonic() > deadline:
                break
        ours = [st for _, st in socks_to(pid, dovecot.port)].count("01")
        rss = proc_status_kib(pid, "VmRSS")
        out, err = p.communicate(timeout=20)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, (b"".join(seen) + err).decode()[-2000:]
    res = json.loads(out)
    assert res["ops"] == 6 and res["errors"] == 0
    assert res["backend_conns"] == [ours] and res["backend_conns_hold"] == [ours], (res, ours)
    assert ours >= 6    # one per idle session, at least
    assert abs(res["rss_kb"][0] - rss) <= rss // 5, (res["rss_kb"], rss)
    assert res["rss_kb_hold"][0] > 0 and res["rss_kb_tree"][0] >= res["rss_kb"][0]


def test_idle_direct(dovecot):
    res = ok("idle", *common(dovecot, "-U", 4, "-c", 4, "--settle", 0.2,
                             "--pid", dovecot.proc.pid))
    assert res["ops"] == 4
    assert res["rss_kb"][0] > 0 and res["backend_conns"] is None   # no --backend-port


# ---------------------------------------------------------------------------
# mix

def test_mix_sessions_match_dovecot(dovecot, make_mux):
    since = len(dovecot.log_text())
    res = ok("mix", *common(dovecot, "-u", "mixer%d", "-U", 2, "-c", 2, "-n", 12,
                            "--warmup", 2))
    assert res["ops"] == 12
    cmds = res["commands"]
    assert cmds["LOGIN"] == cmds["LOGOUT"] == cmds["SELECT"] == 12, cmds
    assert cmds["APPEND"] >= 12 and 0 < cmds["LIST"] < 12 + 1
    assert "imaptest" in res["mix"]
    wait_until(lambda: len(re.findall(r"imap\(mixer\d\)<[^\n]*Logged out",
                                      dovecot.log_text()[since:])) >= 14, 5,
               "14 mix sessions logged out")
    assert login_lines(dovecot, since, r"mixer\d") == 14
    m = make_mux()
    res = ok("mix", "-p", m.imaps_port, "-w", PASSWORD, "-t", 20, "-u", "mixer%d", "-U", 2,
             "-c", 2, "-n", 6, "--pid", m.proc.pid)
    assert res["ops"] == 6 and res["commands"]["LOGOUT"] == 6
