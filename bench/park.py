#!/usr/bin/python3
"""park -- imapmux's parked-IDLE benchmark (issue #11; `make bench`).

USERS users x PER_USER implicit-TLS sessions each sit in IDLE on INBOX
through imapmux, in front of one real Dovecot, until imapmux parks them (a
parked session holds no backend connection; imapmux answers its IDLE). For
each mode, one after the other in the same run and with a fresh imapmux
each:

  events   watch = events: no watcher; Dovecot's push script
           (deploy/dovecot/imapmux-push.lua) publishes `mbox USER MAILBOX`
           on Redis, imapmux wakes the sessions parked on it
  idle     watch = idle: one watcher connection in IDLE per user and mailbox
           (per instance: the user's owner worker holds it, the others by
           message), shared by that user's parked sessions
  notify   watch = notify: one NOTIFY watcher connection per user (per
           instance), for all of that user's parked sessions
  idle1    idle with workers = 1 (the same count: watchers are per instance)
  off      park_idle_after = 0: every session keeps its backend connection
           (fewer sessions, OFF_USERS x PER_USER: a Dovecot imap process per
           session does not fit 3,000 times on this machine; reported per
           session)
  capacity watch = events, max_connections = the open-files limit: TLS
           sessions (CAP_USERS x CAP_PER_USER, from bench/capclient.py
           processes) opened and parked until imapmux refuses one; the
           largest number parked at once, imapmux's fds by kind and RSS at
           that moment, DONE/NOOP on a sample, APPEND wakes (see
           run_capacity). Its own time bound (--cap-time-limit).

measured, once every session is parked (bounded waits):
  * backend connections imapmux holds to Dovecot: its TCP sockets to
    Dovecot's port (/proc/PID/fd inodes in /proc/net/tcp), watchers
    included and also shown apart (imapmux_watchers);
  * Dovecot imap processes (ps: the processes named "imap" under Dovecot's
    master), those of the direct clients below left out, and their PSS;
  * imapmux VmRSS before any client (baseline), with every session
    connected over TLS but not logged in (pre-login) and with every session
    parked; per session = delta / sessions. Where gdb is installed, also
    glibc's heap bytes in use at the same moments (malloc_stats() called in
    the stopped process), and the sizes of imapmux's own structs read from
    the binary's debug info (the memory breakdown);
  * latency from an APPEND at the backend to `* N EXISTS` read at all three
    of a user's clients: SAMPLES users, each APPENDed to once through a
    fresh direct connection to Dovecot; interleaved with the same
    measurement on DIRECT_USERS users whose three clients each sit in IDLE
    directly on Dovecot (plain port): Dovecot's own IDLE notification, in
    the same run, on the same machine. The clock starts when the APPEND
    (with a LITERAL+ literal, one write) is written and stops when the last
    of the three clients has read its EXISTS.

Everything runs on loopback, started with deploy/lab.py, and is stopped at
the end. Dovecot's IDLE uses one inotify instance per imap process, all
under the one mail uid here: when fs.inotify.max_user_instances is below
what the run needs, this raises it for the run (as root) and restores it at
the end (--keep-inotify-limit: leave it; Dovecot then falls back to polling
every mailbox_idle_check_interval = 1 s past the limit, and says so in its
log, which the results count).

Results are printed and recorded at the top of BENCHMARKS.md's results
(--no-record: print only). Every wait is bounded; the whole run by
--time-limit. Exit status: 0 when every mode reached its sessions and every
sample completed, 1 otherwise (the results are still recorded, failures
included), 2 when the set-up failed.
"""

import argparse
import asyncio
import datetime
import json
import os
import re
import resource
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "deploy"))
sys.path.insert(0, HERE)

import lab  # noqa: E402
import webmail  # noqa: E402  (facts, /metrics, CPU accounting, percentiles)

BENCHMARKS_MD = webmail.BENCHMARKS_MD
RESULTS_MARKER = webmail.RESULTS_MARKER
PREFIX = "bench:"
MESSAGES_PER_USER = 3
INOTIFY_PATH = "/proc/sys/fs/inotify/max_user_instances"
TARGET_RSS_KB = 8.0

MODES = ("events", "idle", "notify", "idle1", "off", "capacity")
# mode: (watch, workers: None = --workers)
MODE_DEF = {"events": ("events", None), "idle": ("idle", None), "notify": ("notify", None),
            "idle1": ("idle", 1),
            "off": (None, None), "capacity": ("events", None)}
# The modes make bench runs (PARK_MODES in the environment: others).
DEFAULT_MODES = MODES
CAP_TARGET = 18000

# imapmux's log: "2026-01-01T00:00:00.000Z warn ..."
MUX_PROBLEM_RE = re.compile(r"^\S+Z (error|warn) (.*)$", re.M)
INOTIFY_WARN_RE = re.compile(r"Inotify instance limit for user \d+ \(UID \d+\) exceeded")
# malloc_stats(3) on stderr (imapmux's log)
MSTATS_TOTAL_RE = re.compile(r"Total \(incl\. mmap\):\s*\nsystem bytes\s*=\s*(\d+)\s*\n"
                             r"in use bytes\s*=\s*(\d+)")

# imapmux's structs whose sizes the breakdown shows (gdb, debug info).
STRUCTS = ("session", "park", "conn", "mbox_feed", "mbox_view", "conn_t13", "watch", "backend")


def password(user):
    return "pw-%s-Pk4" % user


def message(user, i, subject=None):
    return ("From: bench <bench@localhost>\r\n"
            "To: %s@localhost\r\n"
            "Subject: %s\r\n"
            "Date: Mon, 02 Jan 2023 10:00:00 +0000\r\n"
            "Message-ID: <park-%s-%s@imapmux.bench>\r\n"
            "\r\n"
            "Message %s of %s.\r\n"
            % (user, subject or "park bench message %d" % i, user, i, i, user)).encode()


class BenchError(Exception):
    pass


# ---------------------------------------------------------------------------
# the lab: Dovecot with its mail written straight into the Maildirs

class BenchDovecot(lab.Dovecot):
    """lab.Dovecot whose users' INBOXes are filled before it starts, by
    writing the messages into each Maildir's cur/ (1,000 users' worth of
    APPENDs would cost 3,000 logins)."""

    def __init__(self, users, messages, **kw):
        super().__init__(users, **kw)
        self.messages = messages

    def _write_files(self):
        super()._write_files()
        uid, gid = lab.mail_owner()
        stamp = int(time.time())
        for n, user in enumerate(sorted(self.users)):
            home = os.path.join(self.mail_root, user)
            md = os.path.join(home, "Maildir")
            for d in (home, md) + tuple(os.path.join(md, s) for s in ("cur", "new", "tmp")):
                os.makedirs(d, exist_ok=True)
                os.chown(d, uid, gid)
                os.chmod(d, 0o700)
            for i in range(self.messages):
                path = os.path.join(md, "cur", "%d.M%dP%d.bench:2," % (stamp, i, n))
                with open(path, "wb") as f:
                    f.write(message(user, i + 1))
                os.chown(path, uid, gid)


def dovecot_extra_conf(imap_processes):
    """Room for every imap process of the run (sessions not yet parked,
    watchers, direct clients) and for the services every one of them
    talks to (stats, log, auth: their client_limit is 0 = default)."""
    return ("default_client_limit = %d\n"
            "service imap {\n  process_limit = %d\n}\n"
            "service imap-login {\n  client_limit = 2000\n}\n"
            % (imap_processes * 2 + 1000, imap_processes))


# ---------------------------------------------------------------------------
# /proc

def socket_inodes(pid):
    inodes = set()
    d = "/proc/%d/fd" % pid
    for fd in os.listdir(d):
        try:
            t = os.readlink(os.path.join(d, fd))
        except OSError:
            continue
        if t.startswith("socket:["):
            inodes.add(int(t[8:-1]))
    return inodes


def tcp_table():
    """{inode: (local port, remote addr hex, remote port, state hex)}."""
    out = {}
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            p = line.split()
            inode = int(p[9])
            if inode == 0:
                continue
            raddr, rport = p[2].split(":")
            out[inode] = (int(p[1].split(":")[1], 16), raddr, int(rport, 16), p[3])
    return out


def socks_to(pid, port):
    """TCP sockets of process pid to 127.0.0.1:port, in state ESTABLISHED
    (the fds are listed first: a socket closed since has inode 0 in the
    table and is not counted)."""
    inodes = socket_inodes(pid)
    tab = tcp_table()
    return sum(1 for i in inodes if i in tab and tab[i][1] == "0100007F" and tab[i][2] == port
               and tab[i][3] == "01")


def proc_status_kib(pid, key):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise BenchError("no %s for pid %d" % (key, pid))


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def imap_processes(dv, direct_users):
    """(imapmux's, direct clients', PSS KiB of imapmux's) Dovecot imap
    processes: those named "imap" in Dovecot's process group; the direct
    clients' are told by their user in the process title (verbose_proctitle)."""
    mine = theirs = pss = 0
    for pid in lab.group_pids(dv.proc.pgid):
        if _read("/proc/%d/comm" % pid).strip() != b"imap":
            continue
        title = _read("/proc/%d/cmdline" % pid).replace(b"\0", b" ")
        if any(b"[%s " % u.encode() in title for u in direct_users):
            theirs += 1
            continue
        mine += 1
        for line in _read("/proc/%d/smaps_rollup" % pid).splitlines():
            if line.startswith(b"Pss:"):
                pss += int(line.split()[1])
    return mine, theirs, pss


def mux_heap_in_use(mux):
    """glibc's heap bytes in use in imapmux (all arenas and mmapped chunks):
    gdb stops the process, calls malloc_stats(3), which prints to imapmux's
    stderr (its log), and detaches. None without gdb or on any failure."""
    gdb = shutil.which("gdb")
    if gdb is None:
        return None
    before = os.path.getsize(mux.log_path)
    try:
        subprocess.run([gdb, "-batch", "-nx", "-p", str(mux.pid),
                        "-ex", "call (void) malloc_stats()", "-ex", "detach"],
                       stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    for _ in range(50):
        with open(mux.log_path, "rb") as f:
            f.seek(before)
            text = f.read().decode("utf-8", "replace")
        m = MSTATS_TOTAL_RE.search(text)
        if m:
            return int(m.group(2))
        time.sleep(0.02)
    return None


def struct_sizes(binary):
    """{name: sizeof(struct name)} from the binary's debug info (gdb)."""
    gdb = shutil.which("gdb")
    if gdb is None:
        return {}
    argv = [gdb, "-batch", "-nx"]
    for s in STRUCTS:
        argv += ["-ex", "p sizeof(struct %s)" % s]
    argv.append(binary)
    try:
        r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=60)
    except (OSError, subprocess.SubprocessError):
        return {}
    vals = re.findall(r"^\$\d+ = (\d+)$", r.stdout, re.M)
    return dict(zip(STRUCTS, (int(v) for v in vals))) if len(vals) == len(STRUCTS) else {}


def inotify_limit():
    try:
        return int(_read(INOTIFY_PATH).strip())
    except ValueError:
        return None


def set_inotify_limit(n):
    try:
        with open(INOTIFY_PATH, "w") as f:
            f.write("%d\n" % n)
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------
# a minimal asyncio IMAP client; every read has a deadline

class Client:
    """One IMAP connection. After idle() a reader task follows the IDLE:
    every `* N EXISTS` updates exists and completes the waiters for it."""

    def __init__(self, user):
        self.user = user
        self.reader = self.writer = None
        self.exists = 0
        self.waiters = []      # (count, future)
        self.task = None
        self.closed = False
        self.keepalives = 0
        self.other = 0         # untagged lines in IDLE but EXISTS and keep-alives

    async def connect(self, port, ctx, timeout):
        kw = {"ssl": ctx, "server_hostname": "127.0.0.1"} if ctx is not None else {}
        self.reader, self.writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, **kw), timeout)
        greeting = await self.readline(timeout)
        if not greeting.startswith(b"* OK"):
            raise BenchError("greeting %r" % greeting[:100])

    async def readline(self, timeout):
        line = await asyncio.wait_for(self.reader.readline(), timeout)
        if not line.endswith(b"\n"):
            raise BenchError("connection closed by the server")
        m = re.search(rb"\{(\d+)\}\r\n$", line)
        if m:   # a server literal: its bytes belong to this response
            line += await asyncio.wait_for(self.reader.readexactly(int(m.group(1))), timeout)
            line += await self.readline(timeout)
        return line

    async def command(self, tag, text, timeout):
        self.writer.write(b"%s %s\r\n" % (tag.encode(), text.encode()))
        untagged = []
        prefix = tag.encode() + b" "
        while True:
            line = await self.readline(timeout)
            if line.startswith(prefix):
                if line.split(None, 2)[1:2] != [b"OK"]:
                    raise BenchError("%s: %r" % (text.split()[0], line[:200]))
                return untagged
            untagged.append(line)

    async def login_select(self, timeout):
        await self.command("a1", "LOGIN %s %s" % (self.user, password(self.user)), timeout)
        sel = b"".join(await self.command("a2", "SELECT INBOX", timeout))
        m = re.search(rb"\* (\d+) EXISTS", sel)
        if not m:
            raise BenchError("SELECT INBOX without EXISTS")
        self.exists = int(m.group(1))
        fetched = await self.command("a3", "UID FETCH 1:* (FLAGS)", timeout)
        if sum(1 for u in fetched if b" FETCH " in u) != self.exists:
            raise BenchError("UID FETCH returned %d of %d messages" % (len(fetched), self.exists))

    async def idle(self, timeout):
        self.writer.write(b"i IDLE\r\n")
        line = await self.readline(timeout)
        if not line.startswith(b"+"):
            raise BenchError("IDLE: %r" % line[:200])
        self.task = asyncio.get_running_loop().create_task(self._follow())

    async def _follow(self):
        try:
            while True:
                line = await self.reader.readline()
                now = time.perf_counter()
                if not line:
                    break
                m = re.match(rb"\* (\d+) EXISTS\r\n$", line)
                if m:
                    self.exists = int(m.group(1))
                    for w in [w for w in self.waiters if w[0] <= self.exists]:
                        self.waiters.remove(w)
                        if not w[1].done():
                            w[1].set_result(now)
                elif line == b"* OK Still here\r\n":
                    self.keepalives += 1
                else:
                    self.other += 1
        except (OSError, ssl.SSLError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            self.closed = True
            for _, fut in self.waiters:
                if not fut.done():
                    fut.set_exception(BenchError("connection closed in IDLE"))
            self.waiters = []

    def wait_exists(self, count):
        fut = asyncio.get_running_loop().create_future()
        if self.closed:
            fut.set_exception(BenchError("connection closed in IDLE"))
        elif self.exists >= count:
            fut.set_result(time.perf_counter())
        else:
            self.waiters.append((count, fut))
        return fut

    def close(self):
        if self.task is not None:
            self.task.cancel()
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:
                pass


async def gather_bounded(coros, limit):
    """Run the coroutines, at most limit at once; their exceptions are
    returned, not raised."""
    sem = asyncio.Semaphore(limit)

    async def one(c):
        async with sem:
            try:
                return await c
            except (OSError, ssl.SSLError, asyncio.TimeoutError, asyncio.IncompleteReadError,
                    BenchError) as e:
                return e
    return await asyncio.gather(*(one(c) for c in coros))


def _errname(e):
    if isinstance(e, asyncio.TimeoutError):
        return "timeout"
    return "%s: %s" % (type(e).__name__, e)


# ---------------------------------------------------------------------------
# one mode

class Run:
    """The run's lab (Dovecot, Redis, certificate) and deadline."""

    def __init__(self, args, tmp):
        self.args = args
        self.tmp = tmp
        self.deadline = time.monotonic() + args.time_limit
        self.users = ["bench%04d" % i for i in range(args.users)]
        self.direct_users = ["bdirect%d" % i for i in range(args.direct_users)]
        self.cap_users = (["cap%05d" % i for i in range(args.cap_users)]
                          if "capacity" in args.mode_list else [])
        self.nofile = None
        self.dv = self.redis = None
        self.cert = self.key = self.ctx = None

    def left(self, want):
        """A wait's bound: want seconds, or what is left of the run."""
        return max(0.5, min(want, self.deadline - time.monotonic()))

    def over(self):
        return time.monotonic() > self.deadline


def mux_conf(run, mode, imaps_port, stats_port):
    args = run.args
    backend = {"address": "127.0.0.1:%d" % run.dv.port, "tls": "none",
               "master_user": lab.MASTER_USER, "master_password": run.dv.master_password,
               "reuse_ttl": 0, "check_interval": 0, "connect_timeout": "5s",
               "command_timeout": "20s"}
    watch, workers = MODE_DEF[mode]
    if watch is not None:
        backend["watch"] = watch
    conf = {
        "imapmux": {"workers": workers or args.workers, "auth": "backend", "log_level": "info",
                    "stats_listen": "127.0.0.1:%d" % stats_port, "shutdown_timeout": 5,
                    "park_idle_after": "0" if mode == "off" else "%ds" % args.park_after,
                    "preauth_timeout": 900},
        "listens": [("imaps", {"address": "127.0.0.1:%d" % imaps_port, "tls": "implicit",
                               "cert": run.cert, "key": run.key})],
        "routing": {"lookup": "static", "fallback": "a"},
        "backends": [("a", backend)],
    }
    if mode == "capacity":
        # Nothing but the open-files limit is to stop it: max_connections
        # at the limit itself (auto would be (limit - 256) / 2), no
        # per-address bound (the default), the brute-force budgets left
        # at their default (the clients come from 16 addresses per process,
        # a few logins in flight per address).
        conf["imapmux"]["max_connections"] = run.nofile
    if MODE_DEF[mode][0] == "events":
        conf["redis"] = {"address": "127.0.0.1:%d" % run.redis.port, "prefix": PREFIX}
    return conf


def metrics(port):
    try:
        return webmail.http_get_metrics(port)
    except (OSError, lab.LabError):
        return {}


async def until(pred, timeout, poll=0.2):
    """Poll pred() (in a thread: it may read /proc or /metrics) until true
    or timeout; returns its last value."""
    deadline = time.monotonic() + timeout
    while True:
        v = await asyncio.to_thread(pred)
        if v or time.monotonic() > deadline:
            return v
        await asyncio.sleep(poll)


async def append_sample(run, user, clients, tag):
    """APPEND to user's INBOX through a new direct connection; seconds from
    writing the APPEND to the last of clients reading its EXISTS."""
    timeout = run.args.io_timeout
    a = Client(user)
    try:
        await a.connect(run.dv.port, None, timeout)
        await a.command("l", "LOGIN %s %s" % (user, password(user)), timeout)
        want = max(c.exists for c in clients) + 1
        futs = [c.wait_exists(want) for c in clients]
        msg = message(user, tag, "park bench sample %s" % tag)
        t0 = time.perf_counter()
        a.writer.write(b"p APPEND INBOX {%d+}\r\n%s\r\n" % (len(msg), msg))
        done, pending = await asyncio.wait(futs, timeout=timeout)
        for f in pending:
            f.cancel()
        while True:
            line = await a.readline(timeout)
            if line.startswith(b"p "):
                if not line.startswith(b"p OK"):
                    raise BenchError("APPEND: %r" % line[:200])
                break
        if pending:
            raise BenchError("%d of %d clients saw no EXISTS within %.0f s"
                             % (len(pending), len(clients), timeout))
        return max(f.result() for f in done) - t0
    finally:
        if a.writer is not None:
            try:
                a.writer.write(b"z LOGOUT\r\n")
            except Exception:
                pass
        a.close()


def mux_problems(mux, offset=0):
    """imapmux's warn and error lines (after offset): (count, first few)."""
    try:
        with open(mux.log_path, "rb") as f:
            f.seek(offset)
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return 0, []
    found = MUX_PROBLEM_RE.findall(text)
    return len(found), ["%s %s" % (lvl, msg[:200]) for lvl, msg in found[:8]]


def start_mux(run, mode, tmp, res):
    """A fresh imapmux for mode (its ports and config in res). A port taken
    by another process between lab.free_port() and the bind (the machine
    is shared) makes imapmux exit: then new ports, up to three times."""
    for attempt in range(3):
        imaps_port, stats_port = lab.free_port(), lab.free_port()
        conf_path = os.path.join(tmp, "imapmux.conf")
        lab.write_imapmux_conf(conf_path, **mux_conf(run, mode, imaps_port, stats_port))
        with open(conf_path) as f:
            res["conf_text"] = f.read()
        mux = lab.Imapmux(conf_path, os.path.join(tmp, "imapmux-%d.log" % attempt))
        try:
            mux.start()
            lab.wait_listening(stats_port, timeout=10, proc=mux.proc)
            time.sleep(0.3)
            if mux.alive():
                res["imaps_port"], res["stats_port"] = imaps_port, stats_port
                return mux
        except lab.LabError as e:
            last = e
        else:
            last = BenchError("imapmux exited at start%s" % mux.log_tail_text(5))
        mux.stop()
    raise last


async def run_mode(run, mode):
    """One mode with a fresh imapmux. Returns its result dict."""
    args = run.args
    dv = run.dv
    users = run.users[:args.off_users] if mode == "off" else run.users
    n_sess = len(users) * args.per_user
    res = {"mode": mode, "users": len(users), "sessions": n_sess, "errors": [],
           "samples": [], "direct": [], "sample_errors": [], "direct_errors": []}
    tmp = os.path.join(run.tmp, mode)
    os.makedirs(tmp, exist_ok=True)
    dlog0 = os.path.getsize(dv.log_path) if os.path.exists(dv.log_path) else 0
    mux = start_mux(run, mode, tmp, res)
    clients, direct = [], {}
    t_mode = time.monotonic()
    cpu0 = webmail.cpu_sample(dv, mux)
    imaps_port, stats_port = res["imaps_port"], res["stats_port"]
    try:
        if mode == "events":
            chan = PREFIX + "events"
            ok = await until(lambda: int(run.redis.command("PUBSUB", "NUMSUB", chan)[1]) >= 1,
                             run.left(10))
            if not ok:
                raise BenchError("imapmux did not subscribe to %s" % chan)
        await asyncio.sleep(0.5)
        res["rss_base"] = proc_status_kib(mux.pid, "VmRSS")
        res["heap_base"] = await asyncio.to_thread(mux_heap_in_use, mux)
        res["zone_base"], res["zonemap_base"] = zone_bytes(stats_port)

        # Dovecot's own IDLE, measured beside imapmux: its clients first,
        # so that they hold inotify instances whatever the limit.
        for u in run.direct_users:
            direct[u] = [Client(u) for _ in range(args.per_user)]
        dclients = [c for cs in direct.values() for c in cs]

        async def direct_up(c):
            await c.connect(dv.port, None, args.io_timeout)
            await c.login_select(args.io_timeout)
            await c.idle(args.io_timeout)
        bad = [e for e in await gather_bounded([direct_up(c) for c in dclients], 20) if e]
        if bad:
            raise BenchError("direct clients: %s" % _errname(bad[0]))

        # Every session over TLS, greeted, not logged in.
        for u in users:
            clients += [Client(u) for _ in range(args.per_user)]
        t0 = time.monotonic()
        got = await gather_bounded([c.connect(imaps_port, run.ctx, args.io_timeout)
                                    for c in clients], args.batch)
        res["connect_s"] = time.monotonic() - t0
        failed = [(c, e) for c, e in zip(clients, got) if e]
        if failed:
            res["errors"].append("%d TLS connects failed (first: %s)"
                                 % (len(failed), _errname(failed[0][1])))
        live = [c for c, e in zip(clients, got) if not e]
        await asyncio.sleep(1.0)
        res["rss_prelogin"] = proc_status_kib(mux.pid, "VmRSS")
        res["heap_prelogin"] = await asyncio.to_thread(mux_heap_in_use, mux)
        res["zone_prelogin"], res["zonemap_prelogin"] = zone_bytes(stats_port)
        res["prelogin_n"] = len(live)

        # Logins in batches. Sessions not parked yet hold a Dovecot imap
        # process each: let at most max_unparked wait for parking.
        t0 = time.monotonic()
        in_idle = []
        logged_errors = []

        async def login_idle(c):
            await c.login_select(args.io_timeout)
            await c.idle(args.io_timeout)
        for i in range(0, len(live), args.batch):
            if run.over():
                res["errors"].append("run time limit reached during the logins")
                break
            chunk = live[i:i + args.batch]
            got = await gather_bounded([login_idle(c) for c in chunk], args.batch)
            in_idle += [c for c, e in zip(chunk, got) if not e]
            logged_errors += [e for e in got if e]
            if mode != "off":
                cap = len(in_idle) - args.max_unparked
                await until(lambda: metrics(stats_port).get("imapmux_sessions_parked", 0)
                            >= cap, run.left(30))
        res["login_s"] = time.monotonic() - t0
        if logged_errors:
            res["errors"].append("%d logins failed (first: %s)"
                                 % (len(logged_errors), _errname(logged_errors[0])))
        res["in_idle"] = len(in_idle)

        # Settle: every session parked (and, with watchers, every watcher
        # up and the catch-up wake it causes over), or for "off" a moment.
        t0 = time.monotonic()
        if mode == "off":
            await asyncio.sleep(2.0)
        else:
            def all_parked():
                m = metrics(stats_port)
                return m.get("imapmux_sessions_parked", 0) >= len(in_idle)

            def watchers_up():
                m = metrics(stats_port)
                return m.get("imapmux_watchers_up", 0) >= m.get("imapmux_watchers", 0)
            ok = await until(all_parked, run.left(args.park_timeout))
            if MODE_DEF[mode][0] == "idle":
                ok = await until(watchers_up, run.left(args.park_timeout)) and ok
                await asyncio.sleep(1.0)
                ok = await until(all_parked, run.left(args.park_timeout)) and ok
            if not ok:
                m = metrics(stats_port)
                res["errors"].append("not every session parked within %.0f s: %d of %d"
                                     % (args.park_timeout, m.get("imapmux_sessions_parked", 0),
                                        len(in_idle)))
            await asyncio.sleep(1.0)
        res["settle_s"] = time.monotonic() - t0
        # imapmux gives the pages its parked sessions freed (their SSL
        # objects) back within 5 s while sessions live (worker.c, malloc_trim).
        await asyncio.sleep(6.0)

        # The state with every session parked.
        m = metrics(stats_port)
        res["parked"] = int(m.get("imapmux_sessions_parked", 0))
        res["mux_sessions"] = int(m.get("imapmux_sessions", 0))
        res["watchers"] = int(m.get("imapmux_watchers", 0))
        res["watchers_up"] = int(m.get("imapmux_watchers_up", 0))
        res["backend_conns"] = await asyncio.to_thread(socks_to, mux.pid, dv.port)
        res["rss_parked"] = proc_status_kib(mux.pid, "VmRSS")
        res["heap_parked"] = await asyncio.to_thread(mux_heap_in_use, mux)
        res["zone_parked"], res["zonemap_parked"] = zone_bytes(stats_port)
        mine, theirs, pss = await asyncio.to_thread(imap_processes, dv, run.direct_users)
        res["imap_procs"], res["imap_procs_direct"], res["imap_pss_kb"] = mine, theirs, pss
        res["metrics_parked"] = m

        # APPEND -> EXISTS, alternating imapmux and direct samples.
        by_user = {}
        for c in in_idle:
            by_user.setdefault(c.user, []).append(c)
        full = [u for u in users if len(by_user.get(u, [])) == args.per_user]
        step = max(1, len(full) // max(1, args.samples))
        picked = full[::step][:args.samples]
        t0 = time.monotonic()
        for k, u in enumerate(picked):
            if run.over():
                res["errors"].append("run time limit reached during the samples")
                break
            for side in (("mux", "direct") if k % 2 == 0 else ("direct", "mux")):
                if side == "mux":
                    who, cs, out, errs = u, by_user[u], res["samples"], res["sample_errors"]
                else:
                    who = run.direct_users[k % len(run.direct_users)]
                    cs, out, errs = direct[who], res["direct"], res["direct_errors"]
                try:
                    out.append(await append_sample(run, who, cs, "%s-%d-%s" % (mode, k, side)))
                except (OSError, ssl.SSLError, asyncio.TimeoutError, BenchError) as e:
                    errs.append("%s: %s" % (who, _errname(e)))
            if mode != "off":
                # The woken sessions park again before the next sample.
                await until(lambda: metrics(stats_port).get("imapmux_sessions_parked", 0)
                            >= res["parked"], run.left(10), poll=0.05)
        res["sample_s"] = time.monotonic() - t0
        m = metrics(stats_port)
        res["metrics_end"] = m
        res["lost_in_idle"] = sum(1 for c in in_idle if c.closed)
        res["keepalives"] = sum(c.keepalives for c in in_idle)
        res["unexpected_lines"] = sum(c.other for c in in_idle)
    except (BenchError, lab.LabError, OSError, ssl.SSLError, asyncio.TimeoutError) as e:
        res["errors"].append("mode stopped: %s" % _errname(e))
    finally:
        res["cpu"] = {k: v - cpu0[k] for k, v in webmail.cpu_sample(dv, mux).items()}
        for c in clients + [c for cs in direct.values() for c in cs]:
            c.close()
        await asyncio.sleep(0.5)
        res["mux_alive"] = mux.alive()
        res["mux_rc_before_stop"] = mux.returncode
        mux.stop(timeout=10)
        res["problems"] = mux_problems(mux)
        if not res["mux_alive"]:
            res["errors"].append("imapmux exited (status %s) during the mode%s"
                                 % (res["mux_rc_before_stop"], mux.log_tail_text(15)))
        # Dovecot's imap processes of this mode end before the next one.
        await until(lambda: imap_processes(dv, ())[0] == 0, run.left(30))
        with open(dv.log_path, "rb") as f:
            f.seek(dlog0)
            dtext = f.read().decode("utf-8", "replace")
        res["inotify_warnings"] = len(INOTIFY_WARN_RE.findall(dtext))
        res["dovecot_errors"] = len(re.findall(r" (?:Error|Fatal|Panic): ", dtext))
        res["dovecot_error_lines"] = [ln[:200] for ln in dtext.splitlines()
                                      if re.search(r" (?:Error|Fatal|Panic): ", ln)][:5]
        res["mode_s"] = time.monotonic() - t_mode
    return res


# ---------------------------------------------------------------------------
# capacity: how many parked TLS sessions one imapmux holds under its
# open-files limit (issue #11). The clients are bench/capclient.py
# processes (a process has the same limit as imapmux): this side drives
# them, paces the logins and looks at imapmux from /proc.

CAPCLIENT = os.path.join(HERE, "capclient.py")


def nofile_of(pid):
    """(soft, hard) RLIMIT_NOFILE of process pid, from /proc/PID/limits."""
    for line in _read("/proc/%d/limits" % pid).decode().splitlines():
        if line.startswith("Max open files"):
            p = line.split()
            return int(p[3]), int(p[4])
    return None, None


def fd_census(pid, ports):
    """imapmux's open fds by kind: {kind: count, "total": n}. ports:
    {"imaps", "stats", "dovecot", "redis"}. Sockets are told apart through
    /proc/net/tcp (their inode): listeners, client connections (local port
    = the imaps listener's), backend connections (to Dovecot), Redis; the
    rest by what the fd's link names (eventfd, eventpoll, pipe, file)."""
    links = []
    d = "/proc/%d/fd" % pid
    for fd in os.listdir(d):
        try:
            links.append(os.readlink(os.path.join(d, fd)))
        except OSError:
            continue
    tab = tcp_table()
    unix = set()
    for line in _read("/proc/net/unix").decode("utf-8", "replace").splitlines()[1:]:
        p = line.split()
        if len(p) >= 7:
            unix.add(int(p[6]))
    out = {"total": len(links)}

    def add(kind):
        out[kind] = out.get(kind, 0) + 1
    for t in links:
        if t.startswith("socket:["):
            inode = int(t[8:-1])
            if inode in tab:
                lport, _raddr, rport, state = tab[inode]
                if state == "0A":
                    add("listener imaps" if lport == ports["imaps"] else
                        "listener stats" if lport == ports["stats"] else "listener other")
                elif lport == ports["imaps"]:
                    add("client")
                elif rport == ports["dovecot"]:
                    add("backend (Dovecot)")
                elif rport == ports["redis"]:
                    add("Redis")
                elif lport == ports["stats"]:
                    add("stats client")
                else:
                    add("tcp other")
            elif inode in unix:
                add("unix socket")
            else:
                add("socket other")
        elif t.startswith("anon_inode:"):
            add(t[len("anon_inode:"):].strip("[]"))
        elif t.startswith("pipe:"):
            add("pipe")
        elif t == "/dev/null":
            add("/dev/null")
        else:
            add("file %s" % os.path.basename(t))
    return out


def census_text(c):
    rest = sorted((k, v) for k, v in c.items() if k not in ("total", "client"))
    return "%d client sockets + %d others (%s)" % (
        c.get("client", 0), c["total"] - c.get("client", 0),
        ", ".join("%s %d" % kv for kv in rest) or "none")


def zone_bytes(port):
    """imapmux's zone (common/zone.h): bytes of slots in use, bytes mapped."""
    m = metrics(port)
    return (m.get('imapmux_zone_bytes{kind="used"}'), m.get('imapmux_zone_bytes{kind="mapped"}'))


def metrics_quick(port):
    """/metrics with a short deadline: at the fd limit imapmux's stats
    thread cannot accept (EMFILE), and the connect waits in its backlog."""
    try:
        return webmail.http_get_metrics(port, timeout=2.0)
    except (OSError, lab.LabError):
        return {}


class CapProc:
    """One bench/capclient.py process and its JSON-lines pipe."""

    def __init__(self, k, proc, sessions):
        self.k = k
        self.proc = proc
        self.sessions = sessions
        self.left = len(sessions)
        self.idle = 0

    async def send(self, obj):
        self.proc.stdin.write((json.dumps(obj) + "\n").encode())
        await self.proc.stdin.drain()

    async def recv(self, timeout):
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise BenchError("capacity client %d exited (status %s)"
                             % (self.k, self.proc.returncode))
        return json.loads(line)

    async def ask(self, obj, timeout):
        await self.send(obj)
        return await self.recv(timeout)


def cap_mux_ports(run, res):
    return {"imaps": res["imaps_port"], "stats": res["stats_port"], "dovecot": run.dv.port,
            "redis": run.redis.port}


async def cap_append(run, user, tag):
    """APPEND one message to user's INBOX through a fresh direct connection
    to Dovecot (plain port). Returns CLOCK_MONOTONIC when the APPEND was
    written (capclient's clock: time.monotonic in every process)."""
    timeout = run.args.io_timeout
    a = Client(user)
    try:
        await a.connect(run.dv.port, None, timeout)
        await a.command("l", "LOGIN %s %s" % (user, password(user)), timeout)
        msg = message(user, tag, "park bench capacity wake %s" % tag)
        t0 = time.monotonic()
        a.writer.write(b"p APPEND INBOX {%d+}\r\n%s\r\n" % (len(msg), msg))
        while True:
            line = await a.readline(timeout)
            if line.startswith(b"p "):
                if not line.startswith(b"p OK"):
                    raise BenchError("APPEND: %r" % line[:200])
                return t0
    finally:
        if a.writer is not None:
            try:
                a.writer.write(b"z LOGOUT\r\n")
            except Exception:
                pass
        a.close()


async def run_capacity(run):
    """The capacity mode: sessions opened until imapmux refuses one (or the
    count or time bound), then the state at that moment, checks that the
    parked sessions still answer, and wakes. Returns its result dict."""
    args = run.args
    dv = run.dv
    t_mode = time.monotonic()
    deadline = t_mode + args.cap_time_limit
    users = run.cap_users
    total = min(args.cap_max, len(users) * args.cap_per_user)
    res = {"mode": "capacity", "users": len(users), "sessions": total, "errors": [],
           "samples": [], "direct": [], "sample_errors": [], "direct_errors": [],
           "attempted": 0, "in_idle": 0, "peak_parked": 0, "progress": []}
    tmp = os.path.join(run.tmp, "capacity")
    os.makedirs(tmp, exist_ok=True)
    dlog0 = os.path.getsize(dv.log_path) if os.path.exists(dv.log_path) else 0
    mux = start_mux(run, "capacity", tmp, res)
    res["mux_nofile"] = nofile_of(mux.pid)
    ports = cap_mux_ports(run, res)
    stats_port = res["stats_port"]
    procs = []
    cpu0 = webmail.cpu_sample(dv, mux)
    cap_log = open(os.path.join(tmp, "capclient.log"), "ab")

    def left(want):
        return max(0.5, min(want, deadline - time.monotonic()))
    try:
        chan = PREFIX + "events"
        ok = await until(lambda: int(run.redis.command("PUBSUB", "NUMSUB", chan)[1]) >= 1,
                         left(10))
        if not ok:
            raise BenchError("imapmux did not subscribe to %s" % chan)
        await asyncio.sleep(0.5)
        res["rss_base"] = proc_status_kib(mux.pid, "VmRSS")
        res["fds_base"] = await asyncio.to_thread(fd_census, mux.pid, ports)

        # The client processes: user j's sessions all in process j % K (a
        # wake's EXISTS is then seen in one place), each process connecting
        # from 16 loopback addresses of its own.
        K = args.cap_procs
        for k in range(K):
            sessions = [[u, password(u)] for u in users[k::K] for _ in range(args.cap_per_user)]
            p = await asyncio.create_subprocess_exec(
                sys.executable, CAPCLIENT, stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE, stderr=cap_log, limit=1 << 22)
            cp = CapProc(k, p, sessions)
            procs.append(cp)
            await cp.send({"port": res["imaps_port"], "cafile": run.cert,
                           "sources": ["127.0.%d.%d" % (1 + k, 2 + i) for i in range(16)],
                           "sessions": sessions, "inflight": args.cap_inflight,
                           "io_timeout": args.io_timeout})
        for cp in procs:
            r = await cp.recv(30)
            if r.get("op") != "ready":
                raise BenchError("capacity client %d: %r" % (cp.k, r))
            res["client_nofile"] = r["nofile"]

        # The ramp: rounds of cap_batch sessions over the processes; after
        # each, wait (bounded) until no more than cap_max_unparked of those
        # in IDLE are still attached (each holds a Dovecot imap process and
        # a backend fd). Near the limit (the approach) every session parks
        # before the next round, and a round takes at most a third of the
        # fds left: a session being logged in holds two (client, backend),
        # a parked one one, so the first refusal comes with every fd but
        # one or two held by parked sessions, not by logins in flight.
        limit = res["mux_nofile"][0] or run.nofile
        t0 = time.monotonic()
        stop = None
        next_report = 2000
        metrics_gone = 0
        fds_now = res["fds_base"]["total"]
        approach_at = limit - 2 * (args.cap_batch + args.cap_max_unparked) - 100
        res["approach_from"] = None
        while stop is None:
            if time.monotonic() > deadline:
                stop = "the time bound (%.0f s)" % args.cap_time_limit
                break
            approach = fds_now >= approach_at
            n = min(args.cap_batch, total - res["attempted"])
            if approach:
                if res["approach_from"] is None:
                    res["approach_from"] = (res["in_idle"], time.monotonic() - t0)
                n = min(n, max(1, (limit - fds_now) // 3))
            if n <= 0 or not any(cp.left for cp in procs):
                stop = "the count bound (%d sessions attempted)" % res["attempted"]
                break
            asks = []
            live = [cp for cp in procs if cp.left]
            for i, cp in enumerate(live):
                share = min(cp.left, n // len(live) + (1 if i < n % len(live) else 0))
                if share:
                    asks.append((cp, share))
            for cp, share in asks:
                await cp.send({"op": "open", "n": share})
            failed = []
            for cp, share in asks:
                r = await cp.recv(args.io_timeout * 6 + 30)
                res["attempted"] += cp.left - r["left"]
                cp.left = r["left"]
                cp.idle = r["idle"]
                failed += r["failed"]
            res["in_idle"] = sum(cp.idle for cp in procs)
            if failed:
                res["first_failures"] = failed[:5]
                res["failed_n"] = len(failed)
                f = failed[0]
                stop = "a refusal: session %s at stage %s: %s" % (f["user"], f["stage"],
                                                                   f["error"])
                break
            # Pace on parking; /metrics unreadable means imapmux has no fd
            # left for the stats thread: go on, the next round will tell.
            want = res["in_idle"] - (0 if approach else args.cap_max_unparked)
            parked = 0
            wait_end = time.monotonic() + left(30)
            while time.monotonic() < wait_end:
                m = await asyncio.to_thread(metrics_quick, stats_port)
                if not m:
                    metrics_gone += 1
                    break
                parked = int(m.get("imapmux_sessions_parked", 0))
                res["peak_parked"] = max(res["peak_parked"], parked)
                if parked >= want:
                    break
                await asyncio.sleep(0.2)
            fds_now = len(os.listdir("/proc/%d/fd" % mux.pid))
            if res["in_idle"] >= next_report:
                next_report += 2000
                el = time.monotonic() - t0
                res["progress"].append((res["in_idle"], parked, fds_now, el))
                print("park: capacity: %d sessions in IDLE, %d parked, imapmux %d fds, %.0f s"
                      % (res["in_idle"], parked, fds_now, el), flush=True)
        res["stop"] = stop
        res["ramp_s"] = time.monotonic() - t0
        res["metrics_unreachable_rounds"] = metrics_gone
        print("park: capacity: stopped by %s after %.0f s; %d attempted, %d in IDLE"
              % (stop, res["ramp_s"], res["attempted"], res["in_idle"]), flush=True)

        # Every session in IDLE parks; the refused ones are closed already
        # (by the clients), so imapmux has an fd again for /metrics.
        t0 = time.monotonic()
        m = {}
        while time.monotonic() < t0 + left(args.park_timeout):
            m = await asyncio.to_thread(metrics_quick, stats_port)
            if m and int(m.get("imapmux_sessions_parked", 0)) >= res["in_idle"]:
                break
            await asyncio.sleep(0.5)
        await asyncio.sleep(2.0)
        res["settle_s"] = time.monotonic() - t0

        # The state at the limit: /proc first (needs no fd of imapmux's).
        res["fds_limit"] = await asyncio.to_thread(fd_census, mux.pid, ports)
        res["rss_parked"] = proc_status_kib(mux.pid, "VmRSS")
        res["threads"] = len(os.listdir("/proc/%d/task" % mux.pid))
        m = await asyncio.to_thread(metrics_quick, stats_port)
        res["metrics_parked"] = m
        res["parked"] = int(m["imapmux_sessions_parked"]) if m else None
        res["mux_sessions"] = int(m.get("imapmux_sessions", 0)) if m else None
        res["peak_parked"] = max(res["peak_parked"], res["parked"] or 0)
        res["heap_parked"] = await asyncio.to_thread(mux_heap_in_use, mux)
        res["emfile_at_limit"] = mux_emfile(mux)
        print("park: capacity: at the limit: %s parked, imapmux %d fds (%s), VmRSS %d KiB"
              % (res["parked"], res["fds_limit"]["total"], census_text(res["fds_limit"]),
                 res["rss_parked"]), flush=True)

        # The wake users: spread over the first users (all opened).
        opened_users = max(1, res["in_idle"] // args.cap_per_user)
        step = max(1, opened_users // max(1, args.cap_wakes))
        wake_users = users[:opened_users:step][:args.cap_wakes]
        limit_user = next(u for u in users if u not in wake_users)
        spare = wake_users + [limit_user]

        # Every parked session still answers: DONE, NOOP, IDLE on a sample
        # (parked answers; no backend connection, no fd).
        per = [args.cap_checks // K + (1 if k < args.cap_checks % K else 0) for k in range(K)]
        res["checks_ok"], res["checks_failed"] = 0, []
        for cp, n in zip(procs, per):
            await cp.send({"op": "check", "n": n, "exclude": spare})
        for cp in procs:
            r = await cp.recv(args.io_timeout + 30)
            res["checks_ok"] += r["ok"]
            res["checks_failed"] += r["failed"]

        # A wake at the limit, before any room is made: each woken session
        # needs an fd for its backend login, and there is one at most.
        cp = procs[users.index(limit_user) % K]
        armed = await cp.ask({"op": "wait", "user": limit_user, "timeout": args.io_timeout}, 10)
        lw = {"user": limit_user, "of": armed["of"], "fds": len(os.listdir("/proc/%d/fd"
                                                                          % mux.pid))}
        try:
            await cap_append(run, limit_user, "cap-limit")
        except (OSError, ssl.SSLError, asyncio.TimeoutError, BenchError) as e:
            lw["error"] = _errname(e)
        r = await cp.recv(args.io_timeout + 10)
        lw["seen"], lw["lost"] = r["seen"], r["lost"]
        r = await cp.ask({"op": "stats"}, 30)
        lw["lost_first"] = [x for x in r["lost_first"] if x.startswith(limit_user + ":")]
        res["limit_wake"] = lw
        await asyncio.sleep(3.0)
        m = await asyncio.to_thread(metrics_quick, stats_port)
        lw["parked_after"] = int(m.get("imapmux_sessions_parked", 0)) if m else None
        lw["wake_failures"] = _m(m, "imapmux_wake_failures_total")

        # Room for the wakes: a woken session logs in to the backend (one
        # fd each), which the limit leaves no room for.
        res["room_closed"] = 0
        for cp, n in zip(procs, [args.cap_room // K + (1 if k < args.cap_room % K else 0)
                                 for k in range(K)]):
            r = await cp.ask({"op": "close", "n": n, "exclude": spare}, 30)
            res["room_closed"] += r["closed"]
        expect = (lw["parked_after"] or res["parked"] or res["in_idle"]) - res["room_closed"]
        await until(lambda: int(metrics_quick(stats_port).get("imapmux_sessions_parked", -1))
                    <= expect, left(15))
        m = await asyncio.to_thread(metrics_quick, stats_port)
        res["parked_before_wakes"] = int(m.get("imapmux_sessions_parked", 0)) if m else None
        res["fds_before_wakes"] = len(os.listdir("/proc/%d/fd" % mux.pid))

        # Wakes: one APPEND per wake user (Dovecot's push script publishes
        # `mbox USER INBOX`), every session of that user reads EXISTS.
        res["wakes"] = []
        for i, u in enumerate(wake_users):
            cp = procs[users.index(u) % K]
            armed = await cp.ask({"op": "wait", "user": u, "timeout": args.io_timeout}, 10)
            try:
                t0 = await cap_append(run, u, "cap-%d" % i)
            except (OSError, ssl.SSLError, asyncio.TimeoutError, BenchError) as e:
                res["sample_errors"].append("%s: APPEND: %s" % (u, _errname(e)))
                t0 = None
            r = await cp.recv(args.io_timeout + 10)
            w = {"user": u, "of": armed["of"], "seen": r["seen"], "lost": r["lost"]}
            if t0 is not None and r["last"] is not None and r["seen"] == r["of"] and r["of"]:
                w["ms"] = (r["last"] - t0) * 1000.0
                res["samples"].append(r["last"] - t0)
            elif t0 is not None:
                res["sample_errors"].append("%s: %d of %d sessions read EXISTS within %.0f s"
                                            % (u, r["seen"], r["of"], args.io_timeout))
            res["wakes"].append(w)
            if res["parked_before_wakes"] is not None:
                await until(lambda: int(metrics_quick(stats_port).get(
                    "imapmux_sessions_parked", 0)) >= res["parked_before_wakes"], left(15),
                    poll=0.1)
        m = await asyncio.to_thread(metrics_quick, stats_port)
        res["metrics_end"] = m
        res["parked_end"] = int(m.get("imapmux_sessions_parked", 0)) if m else None
        res["lost_in_idle"] = res["keepalives"] = res["unexpected_lines"] = 0
        res["lost_first"], res["other_first"] = [], []
        res["client_cpu"] = 0.0
        res["client_maxrss_kb"] = []
        for cp in procs:
            r = await cp.ask({"op": "stats"}, 30)
            res["lost_in_idle"] += r["lost"]
            res["keepalives"] += r["keepalives"]
            res["unexpected_lines"] += r["other"]
            res["lost_first"] += r["lost_first"]
            res["other_first"] += r["other_first"]
            res["client_cpu"] += r["cpu"]
            res["client_maxrss_kb"].append(r["maxrss_kb"])
    except (BenchError, lab.LabError, OSError, ssl.SSLError, asyncio.TimeoutError,
            ValueError, KeyError) as e:
        res["errors"].append("mode stopped: %s" % _errname(e))
    finally:
        res["cpu"] = {k: v - cpu0[k] for k, v in webmail.cpu_sample(dv, mux).items()}
        res["cpu"]["client"] += res.get("client_cpu", 0.0)
        for cp in procs:
            try:
                await cp.send({"op": "quit"})
            except (OSError, ConnectionError):
                pass
        for cp in procs:
            try:
                await asyncio.wait_for(cp.proc.wait(), 30)
            except asyncio.TimeoutError:
                cp.proc.kill()
                await cp.proc.wait()
        cap_log.close()
        await asyncio.sleep(0.5)
        res["mux_alive"] = mux.alive()
        res["mux_rc_before_stop"] = mux.returncode
        mux.stop(timeout=10)
        res["problems"] = mux_problems(mux)
        res["emfile"] = mux_emfile(mux)
        if not res["mux_alive"]:
            res["errors"].append("imapmux exited (status %s) during the mode%s"
                                 % (res["mux_rc_before_stop"], mux.log_tail_text(15)))
        await until(lambda: imap_processes(dv, ())[0] == 0, 30)
        with open(dv.log_path, "rb") as f:
            f.seek(dlog0)
            dtext = f.read().decode("utf-8", "replace")
        res["inotify_warnings"] = len(INOTIFY_WARN_RE.findall(dtext))
        res["dovecot_errors"] = len(re.findall(r" (?:Error|Fatal|Panic): ", dtext))
        res["dovecot_error_lines"] = [ln[:200] for ln in dtext.splitlines()
                                      if re.search(r" (?:Error|Fatal|Panic): ", ln)][:5]
        res["mode_s"] = time.monotonic() - t_mode
    return res


def mux_emfile(mux):
    """imapmux's log lines naming EMFILE ("Too many open files"): (count,
    first few, the kinds: what was refused the fd)."""
    try:
        with open(mux.log_path, "rb") as f:
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return 0, [], {}
    found = [ln for ln in text.splitlines() if "Too many open files" in ln]
    kinds = {}
    for ln in found:
        k = re.sub(r"^\S+Z \S+ ", "", ln)
        k = re.sub(r"S-\d+ \S+", "S-N", k)
        k = re.sub(r"worker \d+", "worker N", k)[:120]
        kinds[k] = kinds.get(k, 0) + 1
    return len(found), [ln[:200] for ln in found[:3]], kinds


# ---------------------------------------------------------------------------
# output

def _kb(x):
    return "%.2f" % x if x == x else "n/a"


def _per_session(res, key, scale):
    """(value at key - value before any client) / sessions, or nan. The
    sessions: those connected (pre-login) or those in IDLE (parked, or
    attached with parking off)."""
    base = res.get(key.split("_")[0] + "_base")
    n = res.get("prelogin_n") if key.endswith("_prelogin") else res.get("in_idle")
    if res.get(key) is None or base is None or not n:
        return float("nan")
    return (res[key] - base) / scale / n


def rss_kb(res, key):
    """VmRSS growth per session, KiB (VmRSS is in KiB)."""
    return _per_session(res, key, 1.0)


def heap_kb(res, key):
    """glibc heap growth per session, KiB (malloc_stats gives bytes)."""
    return _per_session(res, key, 1024.0)


def _p(values, p):
    return webmail.pct(values, p) * 1000.0 if values else float("nan")


def _ms(x):
    return "%.1f" % x if x == x else "n/a"


def _m(m, key):
    return m.get(key, 0) if m else 0


def mode_label(res):
    return {"events": "events (watch = events)", "idle": "idle (watch = idle)",
            "notify": "notify (watch = notify)",
            "idle1": "idle, workers = 1", "off": "off (park_idle_after = 0)"}[res["mode"]]


def render(out):
    args = out["args"]
    modes = [r for r in out["modes"] if r["mode"] != "capacity"]
    text = []
    if modes:
        text += render_modes(out, modes)
    for r in out["modes"]:
        if r["mode"] == "capacity":
            text += render_capacity(out, r)
    text.append("")
    text += verdicts(out)
    if modes:
        text.append("")
        text += breakdown(out)
    return "\n".join(text)


def render_modes(out, modes):
    args = out["args"]
    rows = [("mode", "sessions in IDLE", "parked", "backend connections (watchers)",
             "Dovecot imap processes", "imapmux RSS KB/session", "APPEND->EXISTS p50 / p99 ms",
             "direct Dovecot p50 / p99 ms")]
    for r in modes:
        rows.append((mode_label(r),
                     "%d of %d" % (r.get("in_idle", 0), r["sessions"]),
                     str(r.get("parked", "n/a")),
                     "%s (%d)" % (r.get("backend_conns", "n/a"), r.get("watchers", 0)),
                     str(r.get("imap_procs", "n/a")),
                     _kb(rss_kb(r, "rss_parked")),
                     "%s / %s" % (_ms(_p(r["samples"], 50)), _ms(_p(r["samples"], 99))),
                     "%s / %s" % (_ms(_p(r["direct"], 50)), _ms(_p(r["direct"], 99)))))
    w = [max(len(x[i]) for x in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(x[i].ljust(w[i]) for i in range(len(w))) + " |" for x in rows]
    lines.insert(1, "|" + "|".join("-" * (w[i] + 2) for i in range(len(w))) + "|")
    text = ["parked-IDLE benchmark: %d users x %d TLS sessions in IDLE on INBOX "
            "(parking off: %d users x %d), %d APPEND samples per mode, %.0f s"
            % (args.users, args.per_user, min(args.off_users, args.users), args.per_user,
               args.samples, out["elapsed"]), ""]
    text += lines
    text.append("")
    for r in modes:
        m, me = r.get("metrics_parked", {}), r.get("metrics_end", {})
        text.append("%s:" % mode_label(r))
        text.append("  imapmux VmRSS: %s KiB before any client, %s KiB with %s sessions "
                    "pre-login (TLS up, greeted), %s KiB with every session %s"
                    % (r.get("rss_base", "n/a"), r.get("rss_prelogin", "n/a"),
                       r.get("prelogin_n", "n/a"), r.get("rss_parked", "n/a"),
                       "in IDLE, attached" if r["mode"] == "off" else "parked"))
        text.append("  per session: RSS %s KB pre-login, %s KB %s; glibc heap in use %s KB "
                    "pre-login, %s KB %s"
                    % (_kb(rss_kb(r, "rss_prelogin")), _kb(rss_kb(r, "rss_parked")),
                       "attached" if r["mode"] == "off" else "parked",
                       _kb(heap_kb(r, "heap_prelogin")), _kb(heap_kb(r, "heap_parked")),
                       "attached" if r["mode"] == "off" else "parked"))
        text.append("  backend connections: %s (watchers %d, up %d); Dovecot imap processes "
                    "for imapmux %s (PSS %.0f MiB, %.2f MiB each), plus %s of the direct clients"
                    % (r.get("backend_conns", "n/a"), r.get("watchers", 0),
                       r.get("watchers_up", 0), r.get("imap_procs", "n/a"),
                       r.get("imap_pss_kb", 0) / 1024.0,
                       r.get("imap_pss_kb", 0) / 1024.0 / r["imap_procs"]
                       if r.get("imap_procs") else 0.0, r.get("imap_procs_direct", "n/a")))
        text.append("  samples: %d ok via imapmux, %d failed; %d ok direct, %d failed"
                    % (len(r["samples"]), len(r["sample_errors"]), len(r["direct"]),
                       len(r["direct_errors"])))
        if r["samples"]:
            text.append("  APPEND->EXISTS via imapmux (ms): min %.1f, median %.1f, mean %.1f, "
                        "max %.1f" % (min(r["samples"]) * 1e3,
                                      statistics.median(r["samples"]) * 1e3,
                                      statistics.mean(r["samples"]) * 1e3,
                                      max(r["samples"]) * 1e3))
        if r["direct"]:
            text.append("  APPEND->EXISTS direct (ms):      min %.1f, median %.1f, mean %.1f, "
                        "max %.1f" % (min(r["direct"]) * 1e3,
                                      statistics.median(r["direct"]) * 1e3,
                                      statistics.mean(r["direct"]) * 1e3,
                                      max(r["direct"]) * 1e3))
        text.append("  wakes before the samples (watchers' catch-up): %g"
                    % _m(m, 'imapmux_wakes_total{cause="change"}'))
        text.append("  /metrics at the end: parks %g, wakes change %g / client %g, wake failures "
                    "%g, backend logins %g, watchers lost %g, keep-alives %g"
                    % (_m(me, "imapmux_parks_total"),
                       _m(me, 'imapmux_wakes_total{cause="change"}'),
                       _m(me, 'imapmux_wakes_total{cause="client"}'),
                       _m(me, "imapmux_wake_failures_total"),
                       _m(me, "imapmux_backend_logins_total"),
                       _m(me, "imapmux_watchers_lost_total"),
                       _m(me, "imapmux_park_keepalives_total")))
        text.append("  time: TLS connects %.1f s, logins %.1f s, parking %.1f s, samples %.1f s, "
                    "mode %.1f s; CPU s: client %.1f, Dovecot %.1f, imapmux %.1f"
                    % (r.get("connect_s", 0), r.get("login_s", 0), r.get("settle_s", 0),
                       r.get("sample_s", 0), r.get("mode_s", 0), r["cpu"]["client"],
                       r["cpu"]["dovecot"], r["cpu"]["imapmux"]))
        n_prob, first = r.get("problems", (0, []))
        text.append("  imapmux log: %d warn/error lines; Dovecot log: %d errors, %d inotify-limit "
                    "warnings; client connections lost in IDLE %s, other untagged lines in "
                    "IDLE (RECENT, ...) %s"
                    % (n_prob, r.get("dovecot_errors", 0), r.get("inotify_warnings", 0),
                       r.get("lost_in_idle", "n/a"), r.get("unexpected_lines", "n/a")))
        for ln in first[:4]:
            text.append("    imapmux: %s" % ln)
        for ln in r.get("dovecot_error_lines", [])[:3]:
            text.append("    dovecot: %s" % ln)
        for e in r["errors"] + r["sample_errors"][:3] + r["direct_errors"][:3]:
            text.append("  PROBLEM: %s" % e)
    return text


def render_capacity(out, r):
    args = out["args"]
    soft, hard = r.get("mux_nofile") or (None, None)
    fl, fb = r.get("fds_limit"), r.get("fds_base")
    parked = r.get("parked")
    text = ["capacity: parked TLS sessions in one imapmux (watch = events, %d workers, "
            "RLIMIT_NOFILE soft %s / hard %s, max_connections = %s), %d users x %d sessions, "
            "at most %d attempted, from %d client processes (%d logins in flight each), "
            "%.0f s" % (args.workers, soft, hard, soft, args.cap_users, args.cap_per_user,
                        args.cap_max, args.cap_procs, args.cap_inflight, r.get("mode_s", 0)),
            ""]
    text.append("  sessions: %d attempted, %d in IDLE; parked at once (imapmux_sessions_parked "
                "with every session in IDLE parked): %s; largest seen during the run %s"
                % (r.get("attempted", 0), r.get("in_idle", 0),
                   "n/a" if parked is None else parked, r.get("peak_parked", 0)))
    n, first, kinds = r.get("emfile", (0, [], {}))
    text.append("  stopped by: %s" % (r.get("stop") or "n/a (mode stopped early)"))
    if r.get("stop", "").startswith("a refusal"):
        text.append("  what limited it: %s" % (
            "the open-files limit (imapmux logged EMFILE; with the refused sessions closed and "
            "every session in IDLE parked it holds %s fds of %s)"
            % (fl["total"] if fl else "n/a", soft) if n else
            "not the open-files limit (no EMFILE in imapmux's log): see the refusal"))
    for f in r.get("first_failures", [])[1:3]:
        text.append("    and: %s at stage %s: %s" % (f["user"], f["stage"], f["error"]))
    if r.get("failed_n"):
        text.append("    (%d session%s of that round failed in all; each was closed by its "
                    "client)" % (r["failed_n"], "" if r["failed_n"] == 1 else "s"))
    text.append("  imapmux log: %d lines with EMFILE (Too many open files)%s"
                % (n, ": " if kinds else ""))
    for k, v in sorted(kinds.items(), key=lambda kv: -kv[1])[:4]:
        text.append("    %dx %s" % (v, k))
    if fl:
        text.append("  imapmux open fds at that moment: %d of the %s limit: %s"
                    % (fl["total"], soft, census_text(fl)))
    if fb:
        text.append("  imapmux open fds before any client: %d (%s)"
                    % (fb["total"], census_text(fb)))
    if fl and r.get("threads"):
        text.append("  imapmux threads: %d (workers, stats, health, crypt pool, ...: no fds of "
                    "their own but the eventfds and epolls above)" % r["threads"])
    if r.get("rss_parked") is not None and parked:
        per = (r["rss_parked"] - r["rss_base"]) / float(parked)
        heap = (r["heap_parked"] / 1024.0 / parked) if r.get("heap_parked") else float("nan")
        text.append("  imapmux VmRSS: %d KiB before any client, %d KiB (%.1f MiB) at the limit: "
                    "%.2f KB per parked session; glibc heap in use at the limit %s KB per "
                    "parked session" % (r["rss_base"], r["rss_parked"], r["rss_parked"] / 1024.0,
                                        per, _kb(heap)))
    if r.get("ramp_s"):
        prog = ", ".join("%d at %.0f s" % (p[0], p[3]) for p in r.get("progress", []))
        text.append("  ramp: %d sessions in IDLE in %.0f s (%.0f per second); in IDLE: %s"
                    % (r.get("in_idle", 0), r["ramp_s"], r.get("in_idle", 0) / r["ramp_s"],
                       prog or "-"))
        if r.get("approach_from"):
            text.append("  approach (from %d sessions in IDLE, at %.0f s): each round waits for "
                        "every session to park and takes at most a third of the fds left"
                        % r["approach_from"])
        if r.get("metrics_unreachable_rounds"):
            text.append("  /metrics unreachable after %d rounds (the stats thread's accept had "
                        "no fd)" % r["metrics_unreachable_rounds"])
    if "checks_ok" in r:
        text.append("  checks: DONE, NOOP, IDLE on %d parked sessions spread over the run: "
                    "%d answered (tagged OK, OK, +), %d failed"
                    % (r["checks_ok"] + len(r["checks_failed"]), r["checks_ok"],
                       len(r["checks_failed"])))
        for f in r["checks_failed"][:3]:
            text.append("    check failed: %s at %s: %s" % (f["user"], f["stage"], f["error"]))
    lw = r.get("limit_wake")
    if lw:
        text.append("  a wake at the limit (no room made; imapmux %d fds): APPEND to %s's INBOX: "
                    "%d of %d sessions read `* N EXISTS`, %d ended%s; then %s parked, wake "
                    "failures %g" % (lw["fds"], lw["user"], lw["seen"], lw["of"], lw["lost"],
                                     " (APPEND: %s)" % lw["error"] if lw.get("error") else "",
                                     lw.get("parked_after"), lw.get("wake_failures", 0)))
        for ln in lw.get("lost_first", [])[:2]:
            text.append("    ended: %s" % ln)
    if "wakes" in r:
        full = [w for w in r["wakes"] if "ms" in w]
        text.append("  wakes: %d parked sessions closed first (room for the wakes' backend "
                    "connections), %s parked, imapmux %s fds; one APPEND each to %d users' "
                    "INBOX (Dovecot's push script -> Redis `mbox USER INBOX`): %d of %d users "
                    "had every session read `* N EXISTS` (%s sessions)"
                    % (r.get("room_closed", 0), r.get("parked_before_wakes"),
                       r.get("fds_before_wakes"), len(r["wakes"]), len(full), len(r["wakes"]),
                       "+".join(str(w["of"]) for w in r["wakes"])))
        if r["samples"]:
            text.append("  APPEND->EXISTS at the last of a user's sessions (ms): min %.1f, "
                        "median %.1f, max %.1f"
                        % (min(r["samples"]) * 1e3, statistics.median(r["samples"]) * 1e3,
                           max(r["samples"]) * 1e3))
    me = r.get("metrics_end") or {}
    if "parked_end" in r:
        text.append("  at the end: %s parked; client connections lost in IDLE %s, keep-alives "
                    "%s, other untagged lines in IDLE %s; /metrics: parks %g, wakes change %g / "
                    "client %g, wake failures %g, backend logins %g"
                    % (r["parked_end"], r.get("lost_in_idle"), r.get("keepalives"),
                       r.get("unexpected_lines"), _m(me, "imapmux_parks_total"),
                       _m(me, 'imapmux_wakes_total{cause="change"}'),
                       _m(me, 'imapmux_wakes_total{cause="client"}'),
                       _m(me, "imapmux_wake_failures_total"),
                       _m(me, "imapmux_backend_logins_total")))
        for ln in r.get("lost_first", [])[:3]:
            text.append("    lost: %s" % ln)
    text.append("  time: ramp %.1f s, parking %.1f s, mode %.1f s; CPU s: clients %.1f, "
                "Dovecot %.1f, imapmux %.1f"
                % (r.get("ramp_s", 0), r.get("settle_s", 0), r.get("mode_s", 0),
                   r["cpu"]["client"], r["cpu"]["dovecot"], r["cpu"]["imapmux"]))
    n_prob, first = r.get("problems", (0, []))
    text.append("  imapmux log: %d warn/error lines; Dovecot log: %d errors, %d inotify-limit "
                "warnings" % (n_prob, r.get("dovecot_errors", 0), r.get("inotify_warnings", 0)))
    for ln in first[:4]:
        text.append("    imapmux: %s" % ln)
    for ln in r.get("dovecot_error_lines", [])[:3]:
        text.append("    dovecot: %s" % ln)
    for e in r["errors"] + r["sample_errors"][:3]:
        text.append("  PROBLEM: %s" % e)
    return text


def verdicts(out):
    args = out["args"]
    by = {r["mode"]: r for r in out["modes"]}
    lines = ["targets (issue #11):"]

    def met(ok):
        return "met" if ok else "NOT met"

    def all_parked(r):
        return r.get("parked", 0) == r["sessions"]
    for mode in ("idle", "notify", "idle1"):
        if mode not in by:
            continue
        r = by[mode]
        workers = MODE_DEF[mode][1] or args.workers
        note = ""
        if workers > 1 and r.get("watchers", 0) > r["users"]:
            # Watchers are per instance (proxy/watch.h): more than one per
            # user means the owner worker's sharing failed.
            note = "; %s watchers for %d users" % (r["watchers"], r["users"])
        lines.append("  backend connections with %s watchers, %d worker%s: %s (target <= %d: "
                     "%s)%s" % ("NOTIFY" if mode == "notify" else "IDLE", workers,
                                "s" if workers > 1 else "", r.get("backend_conns", "n/a"),
                                r["users"], met(r.get("backend_conns", 1 << 30) <= r["users"]
                                                and all_parked(r)), note))
    if "events" in by:
        r = by["events"]
        lines.append("  backend connections with events: %s (target 0: %s)"
                     % (r.get("backend_conns", "n/a"),
                        met(r.get("backend_conns", 1) == 0 and all_parked(r))))
    for mode in ("events", "idle", "notify", "idle1"):
        if mode in by:
            kb = rss_kb(by[mode], "rss_parked")
            lines.append("  imapmux RSS per parked session, %s: %s KB (target <= %.0f KB "
                         "including OpenSSL: %s)" % (mode_label(by[mode]), _kb(kb), TARGET_RSS_KB,
                                                     met(kb == kb and kb <= TARGET_RSS_KB)))
    for mode in ("events", "idle", "idle1"):
        if mode not in by:
            continue
        r = by[mode]
        a50, a99, d50, d99 = (_p(r["samples"], 50), _p(r["samples"], 99),
                              _p(r["direct"], 50), _p(r["direct"], 99))
        target = ""
        if mode == "events":
            target = " (target: events faster: %s)" % met(a50 < d50 and a99 < d99)
        lines.append("  APPEND->EXISTS, %s vs direct Dovecot: p50 %s vs %s ms, p99 %s vs %s ms%s"
                     % (mode_label(r), _ms(a50), _ms(d50), _ms(a99), _ms(d99), target))
    if "capacity" in by:
        r = by["capacity"]
        n = r.get("parked")
        limit = (r.get("mux_nofile") or (None,))[0]
        lines.append("  parked TLS sessions in one process under a %s fd limit: %s (target >= %d: "
                     "%s)" % (limit, "n/a" if n is None else n, CAP_TARGET,
                              met(n is not None and n >= CAP_TARGET)))
    if "off" in by and by["off"].get("in_idle"):
        r = by["off"]
        n = args.users * args.per_user
        rss = rss_kb(r, "rss_parked")
        pss = r.get("imap_pss_kb", 0) / max(1, r.get("imap_procs") or 1)
        lines.append("  parking off (measured with %d sessions), scaled to %d: %d backend "
                     "connections and Dovecot imap processes (%.1f GiB PSS at %.2f MiB each), "
                     "imapmux %.0f MiB RSS (%.2f KB per session)"
                     % (r["in_idle"], n, n, n * pss / 1024.0 / 1024.0, pss / 1024.0,
                        rss * n / 1024.0 if rss == rss else float("nan"), rss))
    return lines


def breakdown(out):
    """Where a parked session's memory goes: what was measured and what the
    binary says."""
    sz = out["sizes"]
    by = {r["mode"]: r for r in out["modes"]}
    r = by.get("events") or (out["modes"][0] if out["modes"] else None)
    lines = ["memory per parked session (%s), where it goes:" % (mode_label(r) if r else "-")]
    if r is None:
        return lines
    pre, park = rss_kb(r, "rss_prelogin"), rss_kb(r, "rss_parked")
    hpre, hpark = heap_kb(r, "heap_prelogin"), heap_kb(r, "heap_parked")
    zpre, zpark = heap_kb(r, "zone_prelogin"), heap_kb(r, "zone_parked")
    zmap = heap_kb(r, "zonemap_parked")
    lines.append("  measured: RSS %s KB pre-login -> %s KB parked; glibc heap in use %s KB "
                 "pre-login -> %s KB parked; imapmux's zone (common/zone.h: sessions' "
                 "long-lived objects, packed apart from the heap) in use %s KB -> %s KB, "
                 "mapped %s KB parked"
                 % (_kb(pre), _kb(park), _kb(hpre), _kb(hpark), _kb(zpre), _kb(zpark),
                    _kb(zmap)))
    if not sz:
        lines.append("  (no gdb: no struct sizes and no heap figures)")
    else:
        lines.append("  imapmux's own structs (gdb, sizeof): session %d B (holds the client "
                     "conn, %d B, and both tokenizers), park %d B, mbox_feed %d B, mbox_view %d B "
                     "(+ its message runs and name), TLS keys (conn_t13) %d B, watch %d B, "
                     "backend %d B"
                     % (sz["session"], sz["conn"], sz["park"], sz["mbox_feed"], sz["mbox_view"],
                        sz["conn_t13"], sz["watch"], sz["backend"]))
        if hpre == hpre:
            lines.append("  OpenSSL: the heap per pre-login session, %.2f KB (the SSL object "
                         "and what hangs off it after the handshake; no record buffers: "
                         "SSL_MODE_RELEASE_BUFFERS, no session cache, no tickets), is gone "
                         "once the session parks: its TLS 1.3 goes on with its keys alone "
                         "(conn_shed_tls; handovers %d)"
                         % (hpre, int(r.get("metrics_parked", {}).get(
                             "imapmux_tls_handovers_total", 0))))
        ours = sz["session"] + sz["park"] + sz["mbox_feed"] + sz["mbox_view"] + sz["conn_t13"]
        lines.append("  session struct + park + mbox_feed + mbox_view + TLS keys = %.2f KB "
                     "(mailbox model: feed + view = %.2f KB, plus the view's runs and name); "
                     "measured in the zone: %s KB (size classes round up)"
                     % (ours / 1024.0, (sz["mbox_feed"] + sz["mbox_view"]) / 1024.0, _kb(zpark)))
    lines.append("  buffers: 0 while parked (client in/out exist only while bytes are pending); "
                 "RSS above heap + zone in use (%s KB per session): pages partly used, by the "
                 "heap (what logins and the Redis and backend links left) and by the zone's "
                 "blocks" % _kb(park - hpark - zpark))
    ri = by.get("idle")
    if ri and ri.get("watchers") and r["mode"] == "events" and sz:
        extra = (heap_kb(ri, "heap_parked") - hpark) * ri["in_idle"] / ri["watchers"]
        lines.append("  idle mode: %d watchers inside its per-session figure; heap per watcher "
                     "(idle minus events, per watcher) %.2f KB: struct watch %d B + struct "
                     "backend %d B (its conn's buffers are released while idle)"
                     % (ri["watchers"], extra, sz["watch"], sz["backend"]))
    return lines


def load_line(out):
    args = out["args"]
    parts = []
    if set(args.mode_list) - {"capacity"}:
        parts.append("%d users (`bench0000`..) x %d implicit-TLS sessions, %d messages per "
                     "INBOX; parking off: the first %d users; %d direct users x %d clients on "
                     "Dovecot's plain port; %d workers (idle1: 1)"
                     % (args.users, args.per_user, MESSAGES_PER_USER,
                        min(args.off_users, args.users), args.direct_users, args.per_user,
                        args.workers))
    if "capacity" in args.mode_list:
        parts.append("capacity: %d users (`cap00000`..) x %d implicit-TLS sessions (at most %d "
                     "attempted, stopping at the first refusal or after %.0f s), %d messages per "
                     "INBOX, %d client processes, %d logins in flight each, rounds of %d, at most "
                     "%d in IDLE not yet parked, %d workers"
                     % (args.cap_users, args.cap_per_user, args.cap_max, args.cap_time_limit,
                        MESSAGES_PER_USER, args.cap_procs, args.cap_inflight, args.cap_batch,
                        args.cap_max_unparked, args.workers))
    parts.append("park_idle_after = %ds; reuse_ttl = 0; fs.inotify.max_user_instances %s"
                 % (args.park_after, out["inotify"]))
    return "; ".join(parts)


def conf_summary(out):
    modes = [o["mode"] for o in out["modes"]]
    if "events" in modes:
        text = ("events mode; idle: watch = idle and no [redis]; idle1: the same with "
                "workers = 1; off: park_idle_after = 0 and no [redis]")
        if "capacity" in modes:
            text += "; capacity: events' with max_connections = the open-files limit"
        return text
    return "%s mode" % (modes[0] if modes else "no")


def record(out):
    f = out["facts"]
    args = out["args"]
    when = out["when"].strftime("%Y-%m-%d %H:%M UTC")
    dirty = "none"
    if f["dirty"]:
        shown = f["changed"][:12]
        dirty = "%s%s" % (", ".join("`%s`" % c for c in shown),
                          ", ..." if len(f["changed"]) > len(shown) else "")
    src = ("clean (as committed)" if not f["src_dirty"] else
           "MODIFIED in the working tree (%d files)" % len(f["src_dirty"]))
    started = " ".join([sys.executable] + sys.argv)
    cmd = "make bench" if not sys.argv[1:] else "/usr/bin/python3 bench/park.py %s" % (
        " ".join(sys.argv[1:]))
    if not sys.argv[1:] and os.environ.get("PARK_MODES"):
        cmd = "make bench BENCH=park PARK_MODES=%s" % os.environ["PARK_MODES"]
    sec = ["### %s — park, commit `%s`%s" % (when, f["commit"],
                                               " (dirty tree)" if f["dirty"] else ""),
           "",
           "- command: `%s` (started as `%s`%s)" % (cmd, started,
                                                    ", niceness %d" % out["nice"]
                                                    if out["nice"] else ""),
           "- commit: `%s`; uncommitted changes: %s; imapmux sources (proxy/, common/): %s"
           % (f["commit"], dirty, src),
           "- machine: nproc %s, CPU `%s`, kernel %s, load average at start %s, at the end %s"
           % (f["nproc"], f["cpu"], f["kernel"], f["loadavg"], out["loadavg_end"]),
           "- software: %s (`%s`, built from the working tree); Dovecot %s; %s; Python %s"
           % (f["imapmux"], f["binary"], f["dovecot"], f["openssl"], f["python"]),
           "- load: %s" % load_line(out),
           "",
           "```",
           out["text"],
           "```",
           "",
           "<details><summary>imapmux configuration (%s)</summary>" % conf_summary(out),
           "",
           "```ini",
           out["conf_text"].rstrip("\n"),
           "```",
           "",
           "</details>",
           ""]
    section = "\n".join(sec) + "\n"
    if os.path.exists(BENCHMARKS_MD):
        with open(BENCHMARKS_MD) as fh:
            doc = fh.read()
    else:
        doc = webmail.BENCHMARKS_HEADER
    if RESULTS_MARKER not in doc:
        doc = doc.rstrip("\n") + "\n\n## Results (newest first)\n\n" + RESULTS_MARKER + "\n"
    head, _, tail = doc.partition(RESULTS_MARKER)
    doc = head + RESULTS_MARKER + "\n\n" + section + tail.lstrip("\n")
    tmp = BENCHMARKS_MD + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(doc.rstrip("\n") + "\n")
    os.replace(tmp, BENCHMARKS_MD)


# ---------------------------------------------------------------------------
# the run

def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft != resource.RLIM_INFINITY and soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def needed_imap_processes(args):
    """Dovecot imap processes the run may have at once, of the modes it
    runs: the off mode's sessions, or the watchers (one per user and worker
    at most) and the sessions waiting to park, or capacity's sessions in
    IDLE not parked yet and its logins in flight; plus the direct clients
    and the APPENDs."""
    others = set(args.mode_list) - {"capacity"}
    off = min(args.off_users, args.users) * args.per_user if "off" in others else 0
    parked = (args.users * min(args.workers, args.per_user) + args.max_unparked + args.batch
              if others - {"off"} else 0)
    cap = 0
    if "capacity" in args.mode_list:
        cap = args.cap_max_unparked + args.cap_batch + args.cap_procs * args.cap_inflight
    return max(off, parked, cap) + args.direct_users * args.per_user + 100


def start_dovecot(run, procs):
    """The run's Dovecot. Its port may be taken by another process between
    lab.free_port() and the bind (the machine is shared; lab's start then
    sees the other server's greeting): Dovecot exits, and is started again
    on a new port, up to three times."""
    users = {u: password(u) for u in run.users + run.direct_users + run.cap_users}
    last = None
    for attempt in range(3):
        dv = BenchDovecot(users, MESSAGES_PER_USER,
                          directory=os.path.join(run.tmp, "dovecot-%d" % attempt),
                          name="dovecot-park", extra_conf=dovecot_extra_conf(procs),
                          push_lua={"imapmux_redis": "127.0.0.1:%d" % run.redis.port,
                                    "imapmux_prefix": PREFIX})
        try:
            dv.start(timeout=60)
            time.sleep(1.0)
            if dv.alive():
                return dv
            last = BenchError("Dovecot exited after its start%s" % dv.log_tail_text(5))
        except lab.LabError as e:
            last = e
        dv.stop()
    raise last


async def run_all(run, modes):
    outs = []
    for mode in modes:
        # The capacity mode has its own time bound (--cap-time-limit).
        if run.over() and mode != "capacity":
            continue
        print("park: mode %s ..." % mode, flush=True)
        r = await (run_capacity(run) if mode == "capacity" else run_mode(run, mode))
        if mode == "capacity":
            print("park: mode capacity done in %.0f s: %s sessions in IDLE, %s parked"
                  % (r.get("mode_s", 0), r.get("in_idle"), r.get("parked")), flush=True)
        else:
            print("park: mode %s done in %.0f s: %s sessions in IDLE, %s parked, %s backend "
                  "connections, %s imap processes"
                  % (mode, r.get("mode_s", 0), r.get("in_idle"), r.get("parked"),
                     r.get("backend_conns"), r.get("imap_procs")), flush=True)
        outs.append(r)
    return outs


def run(args):
    started_wall = datetime.datetime.now(datetime.timezone.utc)
    t_start = time.monotonic()
    info = webmail.facts()
    nofile = raise_nofile()
    modes = args.mode_list
    # The other modes' clients are this process's sockets; capacity's are
    # its client processes'.
    need_fds = args.users * args.per_user + 500 if set(modes) - {"capacity"} else 0
    if nofile < need_fds:
        print("park: open-files limit %d is below the %d this run needs" % (nofile, need_fds),
              file=sys.stderr)
        return 2
    procs = needed_imap_processes(args)
    inotify0 = inotify_limit()
    inotify_note = str(inotify0)
    restore_inotify = False
    if (inotify0 is not None and inotify0 < procs + 200 and not args.keep_inotify_limit
            and os.geteuid() == 0):
        if set_inotify_limit(procs + 200):
            restore_inotify = True
            inotify_note = "raised from %d to %d for the run" % (inotify0, procs + 200)
    tmp = tempfile.mkdtemp(prefix="imapmux-park-")
    os.chmod(tmp, 0o755)
    r = Run(args, tmp)
    r.nofile = nofile
    outs = []
    try:
        try:
            r.cert, r.key = lab.make_cert(os.path.join(tmp, "tls"), "cert")
            r.ctx = lab.client_context(r.cert)
            r.redis = lab.Redis(directory=os.path.join(tmp, "redis"))
            r.redis.start()
            r.dv = start_dovecot(r, procs)
        except Exception as e:
            print("park: set-up failed: %s" % e, file=sys.stderr)
            return 2
        sizes = struct_sizes(lab.IMAPMUX)
        outs = asyncio.run(run_all(r, modes))
    finally:
        if r.dv is not None:
            r.dv.stop()
        if r.redis is not None:
            r.redis.stop()
        if restore_inotify:
            set_inotify_limit(inotify0)
    try:
        load_end = "%.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        load_end = "unknown"
    out = {"when": started_wall, "facts": info, "args": args, "modes": outs, "sizes": sizes,
           "elapsed": time.monotonic() - t_start, "inotify": inotify_note,
           "loadavg_end": load_end, "nice": os.nice(0),
           "conf_text": next((o["conf_text"] for o in outs if o["mode"] == "events"),
                             outs[0].get("conf_text", "") if outs else "")}
    out["text"] = render(out)
    print(out["text"])
    if args.record:
        record(out)
        print("park: recorded in %s" % BENCHMARKS_MD)
    if args.keep:
        print("park: kept %s" % tmp)
    else:
        if r.dv is not None:
            r.dv.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    bad = len(outs) < len(modes) or any(
        o["errors"] or o["sample_errors"] or o["direct_errors"] for o in outs)
    return 1 if bad else 0


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=1000, help="users (bench0000...)")
    ap.add_argument("--per-user", type=int, default=3, help="sessions per user")
    ap.add_argument("--off-users", type=int, default=100,
                    help="users in the parking-off mode (a backend process per session)")
    ap.add_argument("--modes", default=os.environ.get("PARK_MODES") or ",".join(DEFAULT_MODES),
                    help="comma-separated, of %s (default: $PARK_MODES, else %s)"
                    % (", ".join(MODES), ",".join(DEFAULT_MODES)))
    ap.add_argument("--samples", type=int, default=50, help="APPEND samples per mode and side")
    ap.add_argument("--direct-users", type=int, default=5,
                    help="users whose clients sit in IDLE directly on Dovecot")
    ap.add_argument("--workers", type=int, default=2, help="imapmux workers")
    ap.add_argument("--park-after", type=int, default=1, help="park_idle_after, seconds")
    ap.add_argument("--batch", type=int, default=100, help="connects and logins at once")
    ap.add_argument("--max-unparked", type=int, default=300,
                    help="logged-in sessions not parked yet before the next batch waits")
    ap.add_argument("--park-timeout", type=float, default=120.0,
                    help="seconds; bound on waiting for every session to park")
    ap.add_argument("--io-timeout", type=float, default=20.0,
                    help="seconds; bound on each connect, answer and sample")
    ap.add_argument("--time-limit", type=float, default=900.0,
                    help="seconds; the run stops starting work after this")
    ap.add_argument("--cap-users", type=int, default=4000,
                    help="capacity: users (cap00000...)")
    ap.add_argument("--cap-per-user", type=int, default=5, help="capacity: sessions per user")
    ap.add_argument("--cap-max", type=int, default=19990,
                    help="capacity: bound on the sessions attempted")
    ap.add_argument("--cap-procs", type=int, default=3,
                    help="capacity: client processes (each holds its share of the sessions)")
    ap.add_argument("--cap-inflight", type=int, default=32,
                    help="capacity: sessions being opened at once, per client process")
    ap.add_argument("--cap-batch", type=int, default=300,
                    help="capacity: sessions per round (all processes)")
    ap.add_argument("--cap-max-unparked", type=int, default=300,
                    help="capacity: sessions in IDLE not parked yet before the next round waits")
    ap.add_argument("--cap-checks", type=int, default=100,
                    help="capacity: parked sessions checked with DONE, NOOP, IDLE at the end")
    ap.add_argument("--cap-wakes", type=int, default=5,
                    help="capacity: users woken by an APPEND at the end")
    ap.add_argument("--cap-room", type=int, default=50,
                    help="capacity: sessions closed before the wakes (room for their "
                    "backend connections)")
    ap.add_argument("--cap-time-limit", type=float, default=900.0,
                    help="seconds; the capacity mode's own bound")
    ap.add_argument("--keep-inotify-limit", action="store_true",
                    help="do not raise fs.inotify.max_user_instances for the run")
    ap.add_argument("--no-record", dest="record", action="store_false",
                    help="print only; do not update BENCHMARKS.md")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args(argv)
    args.mode_list = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in args.mode_list if m not in MODES]
    if bad:
        ap.error("unknown mode %s" % ", ".join(bad))
    if not (1 <= args.users <= 5000 and 1 <= args.per_user <= 10 and args.samples >= 1
            and args.direct_users >= 1 and 1 <= args.batch <= 1000 and args.workers >= 1
            and 1 <= args.cap_users <= 50000 and 1 <= args.cap_per_user <= 50
            and 1 <= args.cap_procs <= 16 and 1 <= args.cap_inflight <= 500
            and 1 <= args.cap_batch <= 5000 and args.cap_max >= 1):
        ap.error("out of range")
    return run(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
