#!/usr/bin/python3
"""webmail -- imapmux's webmail benchmark (`make bench`).

A webmail front end logs in on every click: connect, LOGIN, SELECT INBOX,
FETCH 1:* (FLAGS), LOGOUT, close. This runs that loop for USERS users in
parallel (one thread each), ROUNDS rounds per user through imapmux and
ROUNDS rounds directly against Dovecot, interleaved round by round in the
same run (each user goes proxied, direct, direct, proxied, proxied, ...;
half of the users start with a direct round), so that the noise of this shared machine hits both
sides alike. Everything runs on loopback, started with deploy/lab.py (stdlib
only), and is stopped at the end.

Measured:
  * backend logins per client login through imapmux: Dovecot's own
    `imap-login: Login:` lines. imapmux talks to Dovecot's plain port, which
    Dovecot marks `secured` (loopback is a trusted network); the direct
    rounds use Dovecot's implicit-TLS port, marked `TLS`. Only lines written
    during the measured loop are counted. Cross-checked with imapmux's
    /metrics: imapmux_backend_connects_total and
    imapmux_logins_total{result="ok"} before and after the loop.
  * LOGIN round trip (LOGIN sent -> tagged OK read) and whole-round time
    (connect -> close), median and p90, proxied and direct, and the ratios
    proxied / direct.

Results are printed and recorded at the top of BENCHMARKS.md's results
(--no-record: print only). Every wait is bounded: each socket operation by
--io-timeout, the whole loop by --time-limit; the run stops by itself.

Exit status: 0 when every round succeeded, 1 when some round failed (the
results are still recorded, failures included), 2 when the set-up failed.
"""

import argparse
import datetime
import os
import platform
import re
import resource
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "deploy"))

import lab  # noqa: E402

BENCHMARKS_MD = os.path.join(REPO, "BENCHMARKS.md")
RESULTS_MARKER = "<!-- bench/webmail.py inserts each new result below this line -->"
TARGET_LOGIN_RATIO = 0.05
MESSAGES_PER_USER = 5

# Dovecot's login line, e.g.
#   imap-login: Info: Login: user=<bench00>, method=PLAIN, rip=127.0.0.1,
#   lip=127.0.0.1, mpid=16256, secured, session=<...>
# `secured` = a plain connection from a trusted network (imapmux -> plain
# port); `TLS` = the implicit-TLS port (the direct rounds).
LOGIN_RE = re.compile(r"imap-login: (?:Info: )?Login: user=<([^>]*)>.*?, (secured|TLS)[,:]")


def password(user):
    return "pw-%s-Kx9" % user


def message(user, i):
    return ("From: bench <bench@localhost>\r\n"
            "To: %s@localhost\r\n"
            "Subject: webmail bench message %d\r\n"
            "Date: Mon, 02 Jan 2023 10:00:00 +0000\r\n"
            "Message-ID: <bench-%s-%d@imapmux.bench>\r\n"
            "\r\n"
            "Message %d of %s.\r\n" % (user, i, user, i, i, user)).encode()


# ---------------------------------------------------------------------------
# a minimal, bounded IMAP client

class RoundError(Exception):
    pass


class Conn:
    """One TLS IMAP connection; every read has a deadline."""

    def __init__(self, port, ctx, timeout):
        self.timeout = timeout
        self.buf = bytearray()
        raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        try:
            self.sock = ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        except Exception:
            raw.close()
            raise

    def send(self, line):
        self.sock.sendall(line.encode() + b"\r\n")

    def readline(self):
        deadline = time.monotonic() + self.timeout
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i + 2])
                del self.buf[:i + 2]
                m = re.search(rb"\{(\d+)\}\r\n$", line)
                if m:  # a server literal: its bytes belong to this response
                    n = int(m.group(1))
                    while len(self.buf) < n:
                        self._fill(deadline)
                    line += bytes(self.buf[:n])
                    del self.buf[:n]
                    line += self.readline()
                return line
            self._fill(deadline)

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise RoundError("timeout waiting for the server")
        self.sock.settimeout(left)
        chunk = self.sock.recv(65536)
        if not chunk:
            raise RoundError("connection closed by the server")
        self.buf += chunk

    def command(self, tag, text):
        """Send `tag text`; return (untagged lines, tagged line)."""
        self.send("%s %s" % (tag, text))
        return self.until_tagged(tag)

    def until_tagged(self, tag):
        untagged = []
        prefix = tag.encode() + b" "
        for _ in range(100000):
            line = self.readline()
            if line.startswith(prefix):
                return untagged, line
            untagged.append(line)
        raise RoundError("too many lines before %s's answer" % tag)

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def _ok(tagged):
    parts = tagged.split(None, 2)
    return len(parts) > 1 and parts[1].upper() == b"OK"


def webmail_round(port, ctx, user, timeout, expect_messages):
    """One click: connect, LOGIN, SELECT INBOX, FETCH 1:* (FLAGS), LOGOUT,
    close. Returns (login_seconds, round_seconds)."""
    t0 = time.perf_counter()
    c = Conn(port, ctx, timeout)
    try:
        greeting = c.readline()
        if not greeting.startswith(b"* OK"):
            raise RoundError("greeting %r" % greeting[:100])
        c.send("a1 LOGIN %s %s" % (user, password(user)))
        t1 = time.perf_counter()
        _, tagged = c.until_tagged("a1")
        t2 = time.perf_counter()
        if not _ok(tagged):
            raise RoundError("LOGIN: %r" % tagged[:200])
        _, tagged = c.command("a2", "SELECT INBOX")
        if not _ok(tagged):
            raise RoundError("SELECT: %r" % tagged[:200])
        untagged, tagged = c.command("a3", "FETCH 1:* (FLAGS)")
        if not _ok(tagged):
            raise RoundError("FETCH: %r" % tagged[:200])
        n = sum(1 for u in untagged if re.match(rb"\* \d+ FETCH ", u))
        if n != expect_messages:
            raise RoundError("FETCH returned %d messages, expected %d" % (n, expect_messages))
        _, tagged = c.command("a4", "LOGOUT")
        if not _ok(tagged):
            raise RoundError("LOGOUT: %r" % tagged[:200])
    finally:
        c.close()
    t3 = time.perf_counter()
    return t2 - t1, t3 - t0


# ---------------------------------------------------------------------------
# measurements

def http_get_metrics(port, timeout=5.0):
    """{metric line key: value} from GET /metrics."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    if not re.match(rb"HTTP/1\.[01] 200 ", head):
        raise lab.LabError("GET /metrics: %r" % head[:200])
    out = {}
    for line in body.decode("utf-8", "replace").splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.rpartition(" ")
            try:
                out[key] = float(value)
            except ValueError:
                pass
    return out


def count_logins(log_path, offset):
    """(proxied, direct, proxied users) from Dovecot's log after offset:
    `secured` logins came through imapmux (plain port), `TLS` ones were the
    direct rounds (implicit-TLS port)."""
    with open(log_path, "rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", "replace")
    proxied = direct = 0
    users = {}
    for m in LOGIN_RE.finditer(text):
        if m.group(2) == "secured":
            proxied += 1
            users[m.group(1)] = users.get(m.group(1), 0) + 1
        else:
            direct += 1
    return proxied, direct, users


def group_cpu(pgid):
    """CPU seconds of a process group: every live member's own time plus
    that of its children it has reaped (Dovecot's short-lived imap processes
    end up in the master's). Differences between two samples are exact."""
    tck = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in lab.group_pids(pgid):
        try:
            with open("/proc/%d/stat" % pid) as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in rest[11:15])   # utime stime cutime cstime
    return total / tck


def self_cpu():
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def cpu_sample(dv, mux):
    return {"client": self_cpu(), "dovecot": group_cpu(dv.proc.pgid),
            "imapmux": group_cpu(mux.proc.pgid)}


def pct(values, p):
    """Nearest-rank percentile."""
    if not values:
        return float("nan")
    v = sorted(values)
    k = max(0, min(len(v) - 1, int(-(-p * len(v) // 100)) - 1))
    return v[k]


def summary(values):
    if not values:
        return float("nan"), float("nan")
    return statistics.median(values), pct(values, 90)


# ---------------------------------------------------------------------------
# environment facts

def _run(argv, cwd=REPO, strip=True):
    try:
        r = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=20,
                           stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            return ""
        return r.stdout.strip() if strip else r.stdout
    except (OSError, subprocess.SubprocessError):
        return ""


def facts():
    f = {}
    f["commit"] = _run(["git", "rev-parse", "--short", "HEAD"]) or "unknown"
    status = _run(["git", "status", "--porcelain", "--untracked-files=all"], strip=False)
    changed = [ln[3:] for ln in status.splitlines() if len(ln) > 3]
    f["dirty"] = bool(changed)
    f["changed"] = changed
    # What the imapmux binary is built from (make builds the working tree).
    f["src_dirty"] = [c for c in changed if c.startswith(("proxy/", "common/"))]
    f["nproc"] = _run(["nproc"]) or str(os.cpu_count())
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    f["cpu"] = model
    f["kernel"] = platform.release()
    try:
        f["loadavg"] = "%.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        f["loadavg"] = "unknown"
    f["dovecot"] = _run([lab.DOVECOT, "--version"]) or "unknown"
    f["openssl"] = _run([lab.OPENSSL, "version"]) or "unknown"
    f["imapmux"] = _run([lab.IMAPMUX, "-V"]) or "unknown"
    try:
        import hashlib
        with open(lab.IMAPMUX, "rb") as fh:
            f["binary"] = "%s, sha256 %s" % (os.path.relpath(lab.IMAPMUX, REPO),
                                             hashlib.sha256(fh.read()).hexdigest()[:16])
    except OSError:
        f["binary"] = lab.IMAPMUX
    f["python"] = platform.python_version()
    return f


# ---------------------------------------------------------------------------
# the run

class Side:
    def __init__(self, name):
        self.name = name
        self.login = []
        self.round = []
        self.errors = []
        self.lock = threading.Lock()

    def ok(self, login, rnd):
        with self.lock:
            self.login.append(login)
            self.round.append(rnd)

    def fail(self, user, e):
        with self.lock:
            self.errors.append("%s: %s: %s" % (user, type(e).__name__, e))


def user_loop(idx, user, rounds, sides, ports, ctx, timeout, deadline, stop, done):
    """Alternate proxied and direct rounds (A B B A A B ...: each side is
    first in half of the pairs); half the users start with each side."""
    consecutive = 0
    try:
        for r in range(rounds):
            order = ("proxied", "direct") if (idx + r) % 2 == 0 else ("direct", "proxied")
            for name in order:
                if stop.is_set() or time.monotonic() > deadline:
                    return
                try:
                    login, rnd = webmail_round(ports[name], ctx, user, timeout,
                                               MESSAGES_PER_USER)
                    sides[name].ok(login, rnd)
                    consecutive = 0
                except (OSError, ssl.SSLError, RoundError) as e:
                    sides[name].fail(user, e)
                    consecutive += 1
                    if consecutive >= 5:
                        sides[name].fail(user, RoundError("5 failures in a row; user stops"))
                        return
    finally:
        done[idx] = True


def run(args):
    started_wall = datetime.datetime.now(datetime.timezone.utc)
    info = facts()
    tmp = tempfile.mkdtemp(prefix="imapmux-bench-")
    os.chmod(tmp, 0o755)
    users = ["bench%02d" % i for i in range(args.users)]
    dv = mux = None
    try:
        # -- set-up
        cert, key = lab.make_cert(os.path.join(tmp, "tls"), "cert")
        ctx = lab.client_context(cert)
        dv = lab.Dovecot({u: password(u) for u in users}, tls=True, cert=cert, key=key,
                         directory=os.path.join(tmp, "dovecot"), name="dovecot-bench")
        dv.start()
        for u in users:
            for i in range(MESSAGES_PER_USER):
                dv.append(u, message(u, i + 1))

        imaps_port, stats_port = lab.free_port(), lab.free_port()
        conf = {
            "imapmux": {"workers": 2, "auth": "backend", "log_level": "info",
                        "stats_listen": "127.0.0.1:%d" % stats_port, "shutdown_timeout": 5},
            "listens": [("imaps", {"address": "127.0.0.1:%d" % imaps_port,
                                   "tls": "implicit", "cert": cert, "key": key})],
            "routing": {"lookup": "static", "fallback": "a"},
            "backends": [("a", {"address": "127.0.0.1:%d" % dv.port, "tls": "none",
                                "reuse_ttl": 300, "pool_min_idle": 4, "pool_max": 200,
                                "check_interval": 0})],
        }
        conf_path = os.path.join(tmp, "imapmux.conf")
        lab.write_imapmux_conf(conf_path, **conf)
        with open(conf_path) as f:
            conf_text = f.read()
        mux = lab.Imapmux(conf_path, os.path.join(tmp, "imapmux.log"))
        mux.start()
        lab.wait_listening(stats_port, timeout=10, proc=mux.proc)
        # Let the pool (pool_min_idle) fill before the clock starts.
        time.sleep(1.0)
    except Exception as e:
        print("bench: set-up failed: %s" % e, file=sys.stderr)
        if mux is not None:
            print(mux.log_tail_text(), file=sys.stderr)
        if mux is not None:
            mux.stop()
        if dv is not None:
            dv.cleanup()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        return 2

    ok = False
    try:
        # -- the measured loop
        metrics0 = http_get_metrics(stats_port)
        cpu0 = cpu_sample(dv, mux)
        log_offset = os.path.getsize(dv.log_path)
        sides = {"proxied": Side("proxied"), "direct": Side("direct")}
        ports = {"proxied": imaps_port, "direct": dv.imaps_port}
        stop = threading.Event()
        done = [False] * len(users)
        t_start = time.monotonic()
        deadline = t_start + args.time_limit
        threads = [threading.Thread(target=user_loop, daemon=True, name=u,
                                    args=(i, u, args.rounds, sides, ports, ctx,
                                          args.io_timeout, deadline, stop, done))
                   for i, u in enumerate(users)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(max(0.1, deadline + args.io_timeout * 8 - time.monotonic()))
        stop.set()
        elapsed = time.monotonic() - t_start
        cpu1 = cpu_sample(dv, mux)
        hung = sum(1 for d in done if not d)
        time_limited = elapsed > args.time_limit

        # Dovecot's log is written by its log process: wait (bounded) until
        # every direct login is in, then until the proxied count settles.
        want_direct = len(sides["direct"].login)
        settle_deadline = time.monotonic() + 10
        last = None
        stable_since = time.monotonic()
        while time.monotonic() < settle_deadline:
            counts = count_logins(dv.log_path, log_offset)
            if counts[:2] != last:
                last, stable_since = counts[:2], time.monotonic()
            if counts[1] >= want_direct and time.monotonic() - stable_since >= 1.0:
                break
            time.sleep(0.1)
        be_proxied, be_direct, be_users = count_logins(dv.log_path, log_offset)
        metrics1 = http_get_metrics(stats_port)
        ok = True
    finally:
        mux_rc = mux.stop(timeout=10)
        dv.stop()
        if not ok:
            print(mux.log_tail_text(20), file=sys.stderr)
            if not args.keep:
                dv.cleanup()
                shutil.rmtree(tmp, ignore_errors=True)

    m_keys = [("imapmux_backend_connects_total", "imapmux_backend_connects_total"),
              ('imapmux_logins_total{result="ok"}', 'imapmux_logins_total{result="ok"}')]
    mdelta = {k: metrics1.get(k, float("nan")) - metrics0.get(k, float("nan"))
              for k, _ in m_keys}

    res = {
        "when": started_wall, "facts": info, "args": args, "conf_text": conf_text,
        "sides": sides, "elapsed": elapsed, "hung": hung, "time_limited": time_limited,
        "be_proxied": be_proxied, "be_direct": be_direct, "be_users": be_users,
        "mdelta": mdelta, "mux_rc": mux_rc,
        "cpu": {k: cpu1[k] - cpu0[k] for k in cpu0},
    }
    text = render(res)
    print(text)
    failures = sum(len(s.errors) for s in sides.values())
    if failures:
        print("bench: %d failed rounds; first ones:" % failures, file=sys.stderr)
        for s in sides.values():
            for e in s.errors[:5]:
                print("  %s: %s" % (s.name, e), file=sys.stderr)
        print(mux.log_tail_text(20), file=sys.stderr)
    if args.record:
        record(res)
        print("bench: recorded in %s" % BENCHMARKS_MD)
    if args.keep:
        print("bench: kept %s" % tmp)
    else:
        dv.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if (failures or hung or time_limited) else 0


# ---------------------------------------------------------------------------
# output

def _ms(x):
    return "%.2f" % (x * 1000.0)


def _ratio(a, b):
    if not b or a != a or b != b:
        return "n/a"
    return "%.3g" % (a / b)


def render(res):
    s = res["sides"]
    p, d = s["proxied"], s["direct"]
    args = res["args"]
    pl_med, pl_p90 = summary(p.login)
    dl_med, dl_p90 = summary(d.login)
    pr_med, pr_p90 = summary(p.round)
    dr_med, dr_p90 = summary(d.round)
    n_p = len(p.login)
    per_login = res["be_proxied"] / n_p if n_p else float("nan")
    verdict = "met" if per_login <= TARGET_LOGIN_RATIO else "not met"
    md = res["mdelta"]
    rows = [
        ("", "direct (TLS to Dovecot)", "via imapmux", "imapmux / direct"),
        ("rounds ok", str(len(d.login)), str(n_p), ""),
        ("rounds failed", str(len(d.errors)), str(len(p.errors)), ""),
        ("LOGIN round trip, median (ms)", _ms(dl_med), _ms(pl_med), _ratio(pl_med, dl_med)),
        ("LOGIN round trip, p90 (ms)", _ms(dl_p90), _ms(pl_p90), _ratio(pl_p90, dl_p90)),
        ("whole round, median (ms)", _ms(dr_med), _ms(pr_med), _ratio(pr_med, dr_med)),
        ("whole round, p90 (ms)", _ms(dr_p90), _ms(pr_p90), _ratio(pr_p90, dr_p90)),
        ("backend logins (Dovecot log)", str(res["be_direct"]), str(res["be_proxied"]), ""),
        ("backend logins per client login",
         "%.3f" % (res["be_direct"] / len(d.login)) if d.login else "n/a",
         "%.3f" % per_login, ""),
    ]
    w = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = ["| " + " | ".join(r[i].ljust(w[i]) for i in range(4)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (w[i] + 2) for i in range(4)) + "|")
    out = ["webmail benchmark: %d users x %d rounds each side, interleaved, %.1f s"
           % (args.users, args.rounds, res["elapsed"]), ""]
    out += lines
    out += ["",
            "backend logins per client login through imapmux: %.3f (target <= %.2f: %s)"
            % (per_login, TARGET_LOGIN_RATIO, verdict),
            "imapmux /metrics deltas over the loop: imapmux_backend_connects_total %+g, "
            "imapmux_logins_total{result=\"ok\"} %+g"
            % (md["imapmux_backend_connects_total"], md['imapmux_logins_total{result="ok"}']),
            "CPU seconds during the loop (%.1f s wall, %s cores): client (this Python) %.1f, "
            "Dovecot %.1f, imapmux %.1f"
            % (res["elapsed"], res["facts"]["nproc"], res["cpu"]["client"],
               res["cpu"]["dovecot"], res["cpu"]["imapmux"]),
            "backend logins through imapmux per user: %s"
            % (", ".join("%s=%d" % kv for kv in sorted(res["be_users"].items())) or "none")]
    if res["hung"] or res["time_limited"]:
        out.append("WARNING: the loop hit its time limit (%d user threads unfinished)"
                   % res["hung"])
    return "\n".join(out)


def record(res):
    f = res["facts"]
    args = res["args"]
    when = res["when"].strftime("%Y-%m-%d %H:%M UTC")
    dirty = "none"
    if f["dirty"]:
        shown = f["changed"][:12]
        dirty = "%s%s" % (", ".join("`%s`" % c for c in shown),
                          ", ..." if len(f["changed"]) > len(shown) else "")
    src = ("clean (as committed)" if not f["src_dirty"] else
           "MODIFIED in the working tree (%d files)" % len(f["src_dirty"]))
    cmd = "make bench"
    if (args.users, args.rounds) != (20, 50) or args.time_limit != 240:
        cmd = "/usr/bin/python3 bench/webmail.py %s" % " ".join(sys.argv[1:])
    sec = ["### %s — webmail, commit `%s`%s" % (when, f["commit"],
                                                  " (dirty tree)" if f["dirty"] else ""),
           "",
           "- command: `%s` (started as `%s`)" % (cmd, " ".join([sys.executable] + sys.argv)),
           "- commit: `%s`; uncommitted changes: %s; imapmux sources (proxy/, common/): %s"
           % (f["commit"], dirty, src),
           "- machine: nproc %s, CPU `%s`, kernel %s, load average at start %s"
           % (f["nproc"], f["cpu"], f["kernel"], f["loadavg"]),
           "- software: %s (`%s`, built from the working tree); Dovecot %s; %s; Python %s"
           % (f["imapmux"], f["binary"], f["dovecot"], f["openssl"], f["python"]),
           "- load: %d users (one thread each) x %d rounds through imapmux + %d rounds direct, "
           "alternating per user; %d messages per INBOX; loop took %.1f s"
           % (args.users, args.rounds, args.rounds, MESSAGES_PER_USER, res["elapsed"]),
           "",
           "```",
           render(res),
           "```",
           "",
           "<details><summary>imapmux configuration</summary>",
           "",
           "```ini",
           res["conf_text"].rstrip("\n"),
           "```",
           "",
           "</details>",
           ""]
    section = "\n".join(sec) + "\n"
    if os.path.exists(BENCHMARKS_MD):
        with open(BENCHMARKS_MD) as fh:
            doc = fh.read()
    else:
        doc = BENCHMARKS_HEADER
    if RESULTS_MARKER not in doc:
        doc = doc.rstrip("\n") + "\n\n## Results (newest first)\n\n" + RESULTS_MARKER + "\n"
    head, _, tail = doc.partition(RESULTS_MARKER)
    doc = head + RESULTS_MARKER + "\n\n" + section + tail.lstrip("\n")
    tmp = BENCHMARKS_MD + ".tmp"
    with open(tmp, "w") as fh:
        fh.write(doc.rstrip("\n") + "\n")
    os.replace(tmp, BENCHMARKS_MD)


BENCHMARKS_HEADER = """\
# Benchmarks

Performance of imapmux is shown here, by benchmarks that record what they measured; never by
timed tests. `make bench` builds imapmux and runs `bench/webmail.py`, which adds a dated
section at the top of the results below (older results stay underneath).

## webmail (`bench/webmail.py`)

A webmail front end logs in on every click. The benchmark starts, on loopback, one Dovecot
(20 users `bench00`..`bench19`, 5 messages each) and imapmux in front of it (one implicit-TLS
listener, `auth = backend`, `workers = 2`, static routing to backend `a` = Dovecot's plain port
with `reuse_ttl = 300`, `pool_min_idle = 4`, `pool_max = 200`, `check_interval = 0`). Then 20
threads, one per user, each do 50 rounds through imapmux and 50 rounds directly against
Dovecot's implicit-TLS port, alternating (proxied, direct, direct, proxied, proxied, ...; half
of the users start with a direct round). A round is: TLS connect, `LOGIN`, `SELECT INBOX`, `FETCH 1:* (FLAGS)`,
`LOGOUT`, close. Every client connection is a full TLS handshake on both sides.

How to read the numbers:

- **Both sides come from one interleaved run**, on a shared, noisy 2-core machine on which the
  client threads, Dovecot and imapmux all compete for the CPU. The absolute milliseconds say
  little and vary from run to run; compare the **ratios** (imapmux / direct), and compare
  runs by their ratios, not by their milliseconds.
- *LOGIN round trip*: from sending `LOGIN` to reading its tagged `OK`. Direct, that is
  Dovecot's own authentication and imap process start. Through imapmux it also contains
  whatever imapmux does to get a logged-in backend session: a new connection and a backend
  `LOGIN`, or (with session reuse) taking a kept session of the same user.
- *whole round*: connect to close, including the TLS handshake and the four commands.
- *backend logins per client login*: the real logins at Dovecot (its
  `imap-login: Login: user=<...>` lines; imapmux uses Dovecot's plain port, which Dovecot logs
  as `secured`, the direct rounds its TLS port, logged as `TLS`) during the loop, divided by
  the client logins through imapmux. 1.0 = every client login costs a backend login (no
  reuse). With reuse after `LOGOUT`, the ideal is one per user for the whole run (20 / 1000 =
  0.02); the target is <= 0.05. The direct column is 1.0 by construction and checks the
  counting.
- The `/metrics` deltas (`imapmux_backend_connects_total`, `imapmux_logins_total{result="ok"}`)
  over the loop are a cross-check from imapmux's own side: backend connections opened (the
  pool's idle connections included) and client logins accepted.
- The *CPU seconds* line says where the machine's time went during the loop (this Python
  client with its 20 threads, Dovecot with every process it started, imapmux). When the
  sum approaches wall time x cores, the machine was saturated and latencies include queueing
  for the CPU: a backend login costs Dovecot a new imap process, so Dovecot's CPU need, and
  with it the direct rounds' latency, falls as imapmux reuses sessions.
- A run with failed rounds says so in its table; its timings cover the successful rounds only.
"""


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--users", type=int, default=20, help="parallel users (max 100)")
    ap.add_argument("--rounds", type=int, default=50, help="rounds per user per side")
    ap.add_argument("--time-limit", type=float, default=240.0,
                    help="seconds; the loop stops starting rounds after this")
    ap.add_argument("--io-timeout", type=float, default=15.0,
                    help="seconds; bound on each connect and each answer")
    ap.add_argument("--no-record", dest="record", action="store_false",
                    help="print only; do not update BENCHMARKS.md")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args(argv)
    if not 1 <= args.users <= 100 or not 1 <= args.rounds <= 1000:
        ap.error("--users must be 1..100 and --rounds 1..1000")
    if not 1 <= args.time_limit <= 1800 or not 1 <= args.io_timeout <= 120:
        ap.error("--time-limit must be 1..1800 and --io-timeout 1..120")
    return run(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
