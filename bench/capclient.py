#!/usr/bin/python3
"""capclient -- one client process of park.py's capacity mode.

Holds thousands of implicit-TLS IMAP sessions in IDLE in one process: raw
non-blocking ssl sockets on one selector (epoll), one small state machine
per connection, no thread or coroutine per connection. park.py starts a
few of these (a process has the same open-files limit as imapmux, so the
sessions imapmux is to hold are spread over several) and drives them over
stdin/stdout, one JSON object per line:

  first line (set-up)  {"port", "cafile", "sources": [127.0.0.x, ...],
                        "sessions": [[user, password], ...] in opening order,
                        "inflight", "io_timeout"}
  {"op": "open", "n"}  open the next n sessions, at most inflight at once:
                       TCP connect (from the sources in turn), TLS handshake,
                       greeting, LOGIN, SELECT INBOX, IDLE. The first failure
                       stops new starts (those in flight finish). Reply
                       {"op": "open", "ok", "failed": [{"stage", "error"}],
                        "idle", "started", "left"}
  {"op": "check", "n", "exclude"}  on n sessions in IDLE spread over the
                       list (none of the users in exclude): DONE (expect the
                       tagged OK), NOOP (tagged OK), IDLE again (+). Reply
                       {"op": "check", "ok", "failed": [...]}
  {"op": "close", "n", "exclude"}  close n sessions in IDLE (the last
                       opened, none of exclude's users). Reply {"op":
                       "close", "closed"}
  {"op": "wait", "user", "timeout"}  arm: want = the highest EXISTS the
                       user's sessions in IDLE have seen + 1; reply at once
                       {"op": "armed", "of", "want"}, then, once every one
                       of them has read `* want EXISTS` or at the timeout,
                       {"op": "wait", "of", "seen", "last": CLOCK_MONOTONIC
                       seconds of the last one, "lost"}
  {"op": "stats"}      {"op": "stats", "idle", "lost", "lost_first",
                        "keepalives", "other", "other_first", "cpu"}
  {"op": "quit"}       close everything and exit

Every wait is bounded by io_timeout (wait: its own timeout); a connection
past its deadline fails at the stage it was in. A session in IDLE that the
server closes is counted lost.
"""

import errno
import json
import os
import re
import resource
import selectors
import socket
import ssl
import sys
import time

IP_BIND_ADDRESS_NO_PORT = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", 24)
EXISTS_RE = re.compile(rb"\* (\d+) EXISTS$")

# Connection states: what the connection waits for there.
CONNECT = "connect"        # TCP connect to complete (writable)
TLS = "tls"                # the TLS handshake
GREETING = "greeting"      # the server's `* OK` greeting
LOGIN = "login"            # `a OK` to LOGIN
SELECT = "select"          # `b OK` to SELECT INBOX (EXISTS on the way)
IDLE_START = "idle"        # `+` to IDLE
IDLE = "in-idle"           # in IDLE: untagged lines only, no deadline
DONE = "done"              # `i OK` to DONE (check)
NOOP = "noop"              # `n OK` to NOOP (check)
REIDLE = "re-idle"         # `+` to the IDLE after the check
CLOSED = "closed"


class Conn:
    __slots__ = ("user", "pw", "sock", "state", "inbuf", "outbuf", "deadline", "exists",
                 "mask", "last_line", "checking")

    def __init__(self, user, pw):
        self.user, self.pw = user, pw
        self.sock = None
        self.state = CONNECT
        self.inbuf = b""
        self.outbuf = b""
        self.deadline = None
        self.exists = 0
        self.mask = 0
        self.last_line = b""
        self.checking = False


class Failed(Exception):
    pass


class CapClient:
    def __init__(self, cfg, stdin_rest):
        self.sel = selectors.DefaultSelector()
        self.ctx = ssl.create_default_context(cafile=cfg["cafile"])
        self.port = cfg["port"]
        self.sources = cfg["sources"]
        self.todo = cfg["sessions"]
        self.inflight = cfg["inflight"]
        self.timeout = cfg["io_timeout"]
        self.next = 0              # index in todo of the next session to start
        self.want_open = 0         # starts the current open op may still make
        self.busy = set()          # connections with a deadline
        self.idle = []             # connections in IDLE, in order of arrival
        self.op = None             # the op waiting for its connections
        self.op_ok = 0
        self.op_failed = []
        self.check_set = set()
        self.check_ok = 0
        self.check_failed = []
        self.waits = []            # [user, want, deadline, {conn: t}, of]
        self.lost = 0
        self.lost_first = []
        self.keepalives = 0
        self.other = 0
        self.other_first = []
        self.stdin_buf = stdin_rest
        self.quit = False
        os.set_blocking(0, False)
        self.sel.register(0, selectors.EVENT_READ, None)

    # -- replies
    def reply(self, obj):
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    # -- connections
    def start(self, user, pw):
        c = Conn(user, pw)
        src = self.sources[self.next % len(self.sources)]
        try:
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        except OSError as e:
            self.fail(c, "client socket", str(e))
            return
        c.sock = s
        try:
            s.setblocking(False)
            s.setsockopt(socket.SOL_IP, IP_BIND_ADDRESS_NO_PORT, 1)
            s.bind((src, 0))
            err = s.connect_ex(("127.0.0.1", self.port))
        except OSError as e:
            self.fail(c, "connect", str(e))
            return
        if err not in (0, errno.EINPROGRESS):
            self.fail(c, "connect", os.strerror(err))
            return
        c.deadline = time.monotonic() + self.timeout
        self.busy.add(c)
        self.watch(c, selectors.EVENT_WRITE)

    def watch(self, c, mask):
        if mask == c.mask:
            return
        if c.mask == 0:
            self.sel.register(c.sock, mask, c)
        elif mask == 0:
            self.sel.unregister(c.sock)
        else:
            self.sel.modify(c.sock, mask, c)
        c.mask = mask

    def close(self, c):
        if c.sock is not None:
            self.watch(c, 0)
            try:
                c.sock.close()
            except OSError:
                pass
            c.sock = None
        self.busy.discard(c)
        self.check_set.discard(c)
        c.state = CLOSED

    def fail(self, c, stage, why):
        was = c.state
        self.close(c)
        if was == IDLE:
            self.lost += 1
            if len(self.lost_first) < 5:
                self.lost_first.append("%s: %s" % (c.user, why))
            self.idle.remove(c)
            return
        if c.checking:
            self.idle.remove(c)
        err = {"stage": stage, "error": why, "user": c.user}
        if c.checking:
            self.check_failed.append(err)
        else:
            self.op_failed.append(err)
            self.want_open = 0     # the first failure stops the ramp here

    def send(self, c, data):
        c.outbuf += data
        self.flush(c)

    def flush(self, c):
        while c.outbuf:
            try:
                n = c.sock.send(c.outbuf)
            except (ssl.SSLWantWriteError, ssl.SSLWantReadError, BlockingIOError):
                self.watch(c, selectors.EVENT_READ | selectors.EVENT_WRITE)
                return
            c.outbuf = c.outbuf[n:]
        self.watch(c, selectors.EVENT_READ)

    def event(self, c, mask):
        if c.state == CONNECT:
            err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise Failed(os.strerror(err))
            self.watch(c, 0)
            c.sock = self.ctx.wrap_socket(c.sock, server_hostname="127.0.0.1",
                                          do_handshake_on_connect=False)
            c.state = TLS
        if c.state == TLS:
            try:
                c.sock.do_handshake()
            except ssl.SSLWantReadError:
                self.watch(c, selectors.EVENT_READ)
                return
            except ssl.SSLWantWriteError:
                self.watch(c, selectors.EVENT_WRITE)
                return
            c.state = GREETING
            self.watch(c, selectors.EVENT_READ)
        if c.outbuf and mask & selectors.EVENT_WRITE:
            self.flush(c)
        # Read until OpenSSL has nothing left: bytes it holds decrypted
        # would not wake the selector again.
        while c.sock is not None:
            try:
                data = c.sock.recv(65536)
            except (ssl.SSLWantReadError, BlockingIOError):
                return
            except ssl.SSLWantWriteError:
                self.watch(c, selectors.EVENT_READ | selectors.EVENT_WRITE)
                return
            if not data:
                raise Failed("closed by the server%s"
                             % (" after \"%s\"" % c.last_line[:120].decode("utf-8", "replace")
                                if c.last_line else ""))
            c.inbuf += data
            while c.sock is not None:
                i = c.inbuf.find(b"\r\n")
                if i < 0:
                    break
                line, c.inbuf = c.inbuf[:i], c.inbuf[i + 2:]
                self.line(c, line)
            if len(c.inbuf) > 65536:
                raise Failed("line too long")

    def expect_tagged(self, c, line, tag):
        """True when line is tag's OK; Failed when it is tag's NO/BAD."""
        if not line.startswith(tag + b" "):
            return False
        if not line.startswith(tag + b" OK"):
            raise Failed(line[:160].decode("utf-8", "replace"))
        return True

    def step(self, c, state):
        c.state = state
        c.deadline = time.monotonic() + self.timeout

    def line(self, c, line):
        now = time.monotonic()
        m = EXISTS_RE.match(line)
        if m:
            c.exists = int(m.group(1))
            if c.state == IDLE:
                for w in self.waits:
                    if w[0] == c.user and c.exists >= w[1] and c not in w[3]:
                        w[3][c] = now
                return
        st = c.state
        if st == GREETING:
            if not line.startswith(b"* OK"):
                raise Failed(line[:160].decode("utf-8", "replace"))
            self.send(c, b"a LOGIN %s %s\r\n" % (c.user.encode(), c.pw.encode()))
            self.step(c, LOGIN)
        elif st == LOGIN:
            if self.expect_tagged(c, line, b"a"):
                self.send(c, b"b SELECT INBOX\r\n")
                self.step(c, SELECT)
            else:
                c.last_line = line
        elif st == SELECT:
            if self.expect_tagged(c, line, b"b"):
                self.send(c, b"i IDLE\r\n")
                self.step(c, IDLE_START)
        elif st in (IDLE_START, REIDLE):
            if line.startswith(b"+"):
                c.state = IDLE
                c.deadline = None
                self.busy.discard(c)
                if st == IDLE_START:
                    self.idle.append(c)
                    self.op_ok += 1
                else:
                    c.checking = False
                    self.check_set.discard(c)
                    self.check_ok += 1
            elif not line.startswith(b"*"):
                raise Failed(line[:160].decode("utf-8", "replace"))
        elif st == IDLE:
            if line == b"* OK Still here":
                self.keepalives += 1
            else:
                self.other += 1
                c.last_line = line
                if len(self.other_first) < 5:
                    self.other_first.append(line[:120].decode("utf-8", "replace"))
        elif st == DONE:
            if self.expect_tagged(c, line, b"i"):
                self.send(c, b"n NOOP\r\n")
                self.step(c, NOOP)
        elif st == NOOP:
            if self.expect_tagged(c, line, b"n"):
                self.send(c, b"i IDLE\r\n")
                self.step(c, REIDLE)

    # -- ops
    def command(self, cmd):
        op = cmd["op"]
        if op == "open":
            self.op = cmd
            self.op_ok = 0
            self.op_failed = []
            self.want_open = cmd["n"]
        elif op == "check":
            ex = set(cmd.get("exclude", ()))
            cands = [c for c in self.idle if c.user not in ex]
            step = max(1, len(cands) // max(1, cmd["n"]))
            self.check_ok = 0
            self.check_failed = []
            for c in cands[::step][:cmd["n"]]:
                c.checking = True
                self.check_set.add(c)
                self.busy.add(c)
                self.send(c, b"DONE\r\n")
                self.step(c, DONE)
            self.op = cmd
        elif op == "close":
            ex = set(cmd.get("exclude", ()))
            victims = [c for c in reversed(self.idle) if c.user not in ex][:cmd["n"]]
            for c in victims:
                self.close(c)
                self.idle.remove(c)
            self.reply({"op": "close", "closed": len(victims)})
        elif op == "wait":
            mine = [c for c in self.idle if c.user == cmd["user"]]
            want = max([c.exists for c in mine] + [0]) + 1
            self.waits.append([cmd["user"], want, time.monotonic() + cmd["timeout"], {},
                               len(mine)])
            self.reply({"op": "armed", "of": len(mine), "want": want})
        elif op == "stats":
            r = resource.getrusage(resource.RUSAGE_SELF)
            self.reply({"op": "stats", "idle": len(self.idle), "lost": self.lost,
                        "lost_first": self.lost_first, "keepalives": self.keepalives,
                        "other": self.other, "other_first": self.other_first,
                        "cpu": r.ru_utime + r.ru_stime, "maxrss_kb": r.ru_maxrss})
        elif op == "quit":
            self.quit = True

    def read_stdin(self):
        try:
            data = os.read(0, 65536)
        except BlockingIOError:
            return
        if not data:
            self.quit = True
            return
        self.stdin_buf += data
        self.read_stdin_buffered()

    def read_stdin_buffered(self):
        while b"\n" in self.stdin_buf:
            line, self.stdin_buf = self.stdin_buf.split(b"\n", 1)
            if line.strip():
                self.command(json.loads(line))

    def progress(self, now):
        while self.want_open > 0 and len(self.busy) < self.inflight and self.next < len(self.todo):
            user, pw = self.todo[self.next]
            self.next += 1
            self.want_open -= 1
            self.start(user, pw)
        for c in [c for c in self.busy if c.deadline is not None and now > c.deadline]:
            self.fail(c, c.state, "no answer within %.0f s" % self.timeout)
        op = self.op
        if op is not None and op["op"] == "open" and not self.busy and (
                self.want_open == 0 or self.next >= len(self.todo)):
            self.op = None
            self.reply({"op": "open", "ok": self.op_ok, "failed": self.op_failed,
                        "idle": len(self.idle), "started": self.next,
                        "left": len(self.todo) - self.next})
        elif op is not None and op["op"] == "check" and not self.check_set:
            self.op = None
            self.reply({"op": "check", "ok": self.check_ok, "failed": self.check_failed})
        for w in list(self.waits):
            user, want, deadline, seen, of = w
            if len(seen) >= of or now > deadline:
                self.waits.remove(w)
                mine = sum(1 for c in self.idle if c.user == user)
                self.reply({"op": "wait", "of": of, "seen": len(seen),
                            "last": max(seen.values()) if seen else None,
                            "lost": of - mine})

    def loop(self):
        while not self.quit:
            for key, mask in self.sel.select(0.2):
                c = key.data
                if c is None:
                    self.read_stdin()
                    continue
                if c.sock is None:
                    continue
                try:
                    self.event(c, mask)
                except Failed as e:
                    self.fail(c, c.state, str(e))
                except (OSError, ssl.SSLError) as e:
                    self.fail(c, c.state, "%s: %s" % (type(e).__name__, e))
            self.progress(time.monotonic())
        for c in self.idle + list(self.busy):
            if c.sock is not None:
                c.sock.close()


def main():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # The set-up line read from fd 0 itself (a buffered reader could keep
    # bytes of the next commands from the selector).
    buf = b""
    while b"\n" not in buf:
        data = os.read(0, 1 << 20)
        if not data:
            return 1
        buf += data
    line, rest = buf.split(b"\n", 1)
    cli = CapClient(json.loads(line), rest)
    cli.reply({"op": "ready", "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0]})
    if rest:
        cli.read_stdin_buffered()
    cli.loop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
