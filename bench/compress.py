#!/usr/bin/python3
"""compress -- memory of COMPRESS=DEFLATE sessions in imapmux (issue #13).

One real Dovecot (deploy/lab.py), USERS users with one MSG_KB message each.
Two phases, each with a fresh imapmux (one worker, plaintext listener, so
that only compression differs between the two kinds of session):

  proxying  park_idle_after = 0: N plain sessions are opened (LOGIN, SELECT,
            FETCH of the message, so that buffers and windows have been
            used), imapmux's VmRSS read; then N compressed sessions (the same,
            after COMPRESS DEFLATE, Python's zlib at windowBits -15 and level
            6 as the client, as a real client would), VmRSS read again;
  parked    park_idle_after = 1s, watch = idle: the same two kinds, each
            session then in IDLE until imapmux has parked all of them
            (imapmux_sessions_parked), VmRSS read after each kind.

Per session = RSS delta / N; compression's cost = compressed - plain. The
N sessions of a kind are split over the USERS users, so that Dovecot's
watchers (parked phase, one per user) are the same for both kinds and
already there when the plain kind is measured... except for the first kind:
the plain sessions are opened first and pay for the watchers; so the
parked phase opens one warm-up session per user first, parked, before the
baseline.

Usage: bench/compress.py [-n SESSIONS]   (prints a table for BENCHMARKS.md)
"""

import argparse
import os
import re
import socket
import sys
import tempfile
import time
import urllib.request
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "deploy"))

import lab  # noqa: E402

USERS = 10
MSG_KB = 40
TIMEOUT = 20.0
PASSWORD = "bench-pw-7Qx"


class Conn:
    """A blocking IMAP client, optionally compressed (RFC 4978)."""

    def __init__(self, port):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
        self.buf = b""
        self.comp = self.decomp = None
        self.line()

    def send(self, data):
        if self.comp is not None:
            data = self.comp.compress(data) + self.comp.flush(zlib.Z_SYNC_FLUSH)
        self.sock.sendall(data)

    def _more(self):
        raw = self.sock.recv(65536)
        if not raw:
            raise EOFError("closed: %r" % self.buf[-200:])
        self.buf += self.decomp.decompress(raw) if self.decomp is not None else raw

    def line(self):
        while b"\r\n" not in self.buf:
            self._more()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def tagged(self, tag):
        """Read up to tag's answer (literals read as they come)."""
        while True:
            line = self.line()
            m = re.search(rb"\{(\d+)\}$", line)
            if m:
                n = int(m.group(1))
                while len(self.buf) < n:
                    self._more()
                self.buf = self.buf[n:]
                continue
            if line.startswith(tag + b" "):
                if not line.startswith(tag + b" OK"):
                    raise RuntimeError(line)
                return line

    def cmd(self, tag, text):
        self.send(b"%s %s\r\n" % (tag, text))
        return self.tagged(tag)

    def compress(self):
        self.send(b"z COMPRESS DEFLATE\r\n")
        if self.line() != b"z OK DEFLATE active":
            raise RuntimeError("COMPRESS refused")
        self.comp = zlib.compressobj(6, zlib.DEFLATED, -15)
        self.decomp = zlib.decompressobj(-15)

    def close(self):
        self.sock.close()


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def metric(port, name):
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
        for line in r.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


def settle(mux, stats_port, parked_want=None):
    deadline = time.monotonic() + 60
    while parked_want is not None and metric(stats_port, "imapmux_sessions_parked") < parked_want:
        if time.monotonic() > deadline:
            raise RuntimeError("not all parked")
        time.sleep(0.2)
    time.sleep(6.5)  # imapmux trims the heap after frees, every 5 s at most (worker.c)
    return rss_kib(mux.pid)


def open_kind(port, users, n, compressed, idle):
    conns = []
    for i in range(n):
        u = users[i % len(users)]
        c = Conn(port)
        c.cmd(b"l", b"LOGIN %s %s" % (u.encode(), PASSWORD.encode()))
        if compressed:
            c.compress()
        c.cmd(b"s", b"SELECT INBOX")
        c.cmd(b"f", b"FETCH 1 BODY.PEEK[]")
        # and something back the other way, through the inflater
        c.cmd(b"n", b"NOOP")
        if idle:
            c.send(b"i IDLE\r\n")
            if not c.line().startswith(b"+"):
                raise RuntimeError("IDLE refused")
        conns.append(c)
    return conns


def start_mux(tmp, dv, parked, tag):
    port, stats = lab.free_port(), lab.free_port()
    backend = {"address": "127.0.0.1:%d" % dv.port, "tls": "none",
               "master_user": lab.MASTER_USER, "master_password": dv.master_password,
               "reuse_ttl": 0, "check_interval": 0}
    if parked:
        backend["watch"] = "idle"
    conf = os.path.join(tmp, "imapmux-%s.conf" % tag)
    lab.write_imapmux_conf(
        conf,
        imapmux={"workers": 1, "log_level": "info", "stats_listen": "127.0.0.1:%d" % stats,
                 "park_idle_after": "1s" if parked else "0", "auth_fail_limit": 0,
                 "max_connections_per_ip": 0},
        listens=[("imap", {"address": "127.0.0.1:%d" % port, "tls": "none",
                           "allow_plaintext_auth": "yes"})],
        routing={"lookup": "static", "fallback": "a"},
        backends=[("a", backend)])
    mux = lab.Imapmux(conf, os.path.join(tmp, "imapmux-%s.log" % tag)).start()
    lab.wait_listening(stats, timeout=10, proc=mux.proc)
    return mux, port, stats


def phase(tmp, dv, users, n, parked):
    tag = "parked" if parked else "proxying"
    mux, port, stats = start_mux(tmp, dv, parked, tag)
    keep = []
    try:
        if parked:  # the watchers (one per user) before the baseline
            keep += open_kind(port, users, len(users), False, True)
            settle(mux, stats, len(users))
        base = settle(mux, stats, len(users) if parked else None)
        keep += open_kind(port, users, n, False, parked)
        plain = settle(mux, stats, len(users) + n if parked else None)
        keep += open_kind(port, users, n, True, parked)
        comp = settle(mux, stats, len(users) + 2 * n if parked else None)
        return {"phase": tag, "n": n, "base": base, "plain": plain, "comp": comp,
                "plain_per": (plain - base) / n, "comp_per": (comp - plain) / n}
    finally:
        for c in keep:
            c.close()
        mux.stop()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=100, help="sessions of each kind (default 100)")
    args = ap.parse_args()
    users = ["cz%d" % i for i in range(USERS)]
    tmp = tempfile.mkdtemp(prefix="imapmux-bench-compress-")
    dv = lab.Dovecot({u: PASSWORD for u in users})
    dv.start()
    results = []
    try:
        body = b"".join(b"%06d Lorem ipsum dolor sit amet, consectetur adipiscing elit %d\r\n"
                        % (i, i * 7919 % 1000) for i in range(MSG_KB * 1024 // 70))
        msg = b"Subject: bench\r\n\r\n" + body
        for u in users:
            c = Conn(dv.port)
            c.cmd(b"l", b"LOGIN %s %s" % (u.encode(), PASSWORD.encode()))
            c.send(b"a APPEND INBOX {%d}\r\n" % len(msg))
            c.line()
            c.send(msg + b"\r\n")
            c.tagged(b"a")
            c.close()
        for parked in (False, True):
            results.append(phase(tmp, dv, users, args.n, parked))
    finally:
        dv.cleanup()
    lines = ["| phase | sessions per kind | imapmux RSS base / +plain / +compressed (KiB) | "
             "per plain session | per compressed session | compression's cost |",
             "|---|---|---|---|---|---|"]
    for r in results:
        lines.append("| %s | %d | %d / %d / %d | %.1f KiB | %.1f KiB | %.1f KiB |" % (
            r["phase"], r["n"], r["base"], r["plain"], r["comp"], r["plain_per"],
            r["comp_per"], r["comp_per"] - r["plain_per"]))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
