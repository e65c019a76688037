#!/usr/bin/python3
"""versus -- imapmux side by side with nginx's mail proxy and direct Dovecot
(issue #14; `make bench BENCH=versus`).

One world, the same every run (bench/versuslib.py): one Dovecot (users
bench00..bench19, password benchpw, three small messages per INBOX, one
20 MB message in bench00's), Redis, imapmux and nginx's mail proxy, both
proxies on implicit TLS with the same ECDSA P-256 certificate and TLS policy
in front of Dovecot's plain port; "direct" is Dovecot's own implicit-TLS
port. The load is bench/imapbench (C, libev + OpenSSL), one process per
measurement, given --pid for the target's processes: imapmux's pid, nginx's
master (its workers are descendants), Dovecot's master (its login and imap
processes are descendants, reaped ones counted through cutime/cstime).

Modes (--modes, or VERSUS_MODES in the environment; default all):
  logins         imapbench logins: connect, full TLS handshake, LOGIN,
                 SELECT, LOGOUT, close; CPU per login
  logins_resume  the same with --resume (each loop offers its last session)
  latency_noop   NOOP round trips on logged-in connections, percentiles
  latency_fetch  UID FETCH 1 (FLAGS BODY.PEEK[HEADER]) round trips
  bulk_fetch     UID FETCH of the 20 MB message; MB/s and CPU per MB
  bulk_append    APPEND of a 20 MB message (to bench19's INBOX, whose big
                 messages are removed again after every run)
  idle           N sessions in IDLE; the proxy's RSS and its connections to
                 Dovecot (imapmux parks quiet sessions: park_idle_after)
  mix            imapbench's imaptest-like stress mix; logins/s
  workers        logins against imapmux with workers = 1 and with 2 (a
                 second imapmux, workers = 1, next to the world's)
  scale          logins against one fresh imapmux with --scale-few parked
                 sessions and with --scale-many (opened in batches of
                 --scale-batch by imapbench idle processes, held open), in
                 the order few, many, many, few: per-login CPU must not
                 grow with the sessions imapmux keeps

Every mode runs each target --rounds times, alternating the order (A B C,
B C A, C A B, ...); the table shows medians over the rounds. The crypto
floor comes from `openssl speed` in the same run, before and after the
modes (the cheaper of the two is the floor):
  openssl speed -mr -seconds S ecdsap256 ecdhx25519: the "+F4:" line gives
  ECDSA P-256 signs/s, "+F5:" X25519 derives/s; a TLS 1.3 server does one
  of each per full handshake, so floor = 1/signs + 1/derives;
  openssl speed -mr -seconds S -bytes 16384 -evp aes-256-gcm: "+F:" gives
  bytes/s at 16 KB; floor CPU per MB = 10^6 / that.

Results are printed and recorded at the top of BENCHMARKS.md's results
(--no-record: print only). Bounded: imapbench gets -t and a subprocess
timeout, every start-up wait is bounded, the whole run by --time-limit
(modes not started by then are left out and the table says so). Exit
status: 0 when every run completed with zero errors, 1 otherwise (the
results are still printed and recorded), 2 when the set-up failed.
"""

import argparse
import datetime
import glob
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import urllib.request
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "deploy"))
sys.path.insert(0, HERE)

import lab  # noqa: E402
import versuslib as world  # noqa: E402
import webmail  # noqa: E402  (facts(), BENCHMARKS.md's results marker)

IMAPBENCH = os.environ.get("IMAPBENCH_BIN") or os.path.join(HERE, "imapbench")
TLSFLOOR = os.path.join(HERE, "tlsfloor")
BENCHMARKS_MD = webmail.BENCHMARKS_MD
RESULTS_MARKER = webmail.RESULTS_MARKER

MODES = ("logins", "logins_resume", "latency_noop", "latency_fetch", "bulk_fetch",
         "bulk_append", "idle", "mix", "workers", "scale")
TARGETS = ("direct", "nginx", "imapmux")
APPEND_USER = "bench19"

# The targets: (key, what, goal text, test on the value).
GOALS = (
    ("login_vs_nginx", "CPU per full-handshake login, imapmux / nginx", "<= 0.5",
     lambda v: v <= 0.5),
    ("login_vs_floor", "CPU per full-handshake login, imapmux / crypto floor", "<= 3",
     lambda v: v <= 3.0),
    ("resume_vs_nginx", "CPU per resumed login imapmux / nginx's full-handshake login",
     "<= 0.25", lambda v: v <= 0.25),
    ("bulk_vs_nginx", "bulk FETCH MB/s, imapmux / nginx", ">= 1.5", lambda v: v >= 1.5),
    ("bulk_vs_floor", "bulk FETCH CPU per MB, imapmux / aes-256-gcm floor", "<= 2",
     lambda v: v <= 2.0),
    ("noop_p50", "added NOOP latency p50, imapmux - direct (us)", "<= 20", lambda v: v <= 20),
    ("noop_p99", "added NOOP latency p99, imapmux - direct (us)", "<= 100",
     lambda v: v <= 100),
    ("mix_vs_direct", "stress-mix logins/s, imapmux / direct", ">= 1.5", lambda v: v >= 1.5),
    ("workers", "logins/s, imapmux workers = 2 / workers = 1", ">= 1.2 (scaling shown)",
     lambda v: v >= 1.2),
    ("scale", "CPU per login, many parked sessions / few", "~1 (<= 1.15)",
     lambda v: v <= 1.15),
    # No goal: what OpenSSL itself costs (bench/tlsfloor), under any OpenSSL server.
    ("login_vs_lib", "CPU per login, imapmux / OpenSSL's own full handshake (tlsfloor)",
     "(info)", None),
    ("lib_vs_floor", "OpenSSL's own full handshake (tlsfloor) / crypto floor", "(info)", None),
    ("lib_resume_vs_nginx", "OpenSSL's own resumed handshake (tlsfloor) / nginx login",
     "(info)", None),
    ("bulk_vs_relay", "bulk FETCH CPU per MB, imapmux / bare TLS relay (tlsfloor)", "(info)",
     None),
    ("relay_vs_floor", "bare TLS relay CPU per MB (tlsfloor) / aes-256-gcm floor", "(info)",
     None),
    # No goal: how much of the NOOP latency is TLS and a hop at all.
    ("noop_plain_p50", "NOOP p50, imapmux - Dovecot's plain port, no TLS (us)", "(info)", None),
    ("noop_plain_p99", "NOOP p99, imapmux - Dovecot's plain port, no TLS (us)", "(info)", None),
)


class BenchError(Exception):
    pass


# ---------------------------------------------------------------------------
# the crypto floor

def openssl_speed(seconds):
    """{"sign_s", "derive_s", "aes_gcm_Bps"} from `openssl speed -mr` (its
    machine-readable lines, see the module's docstring)."""
    def run(*argv):
        r = subprocess.run([lab.OPENSSL, "speed", "-mr", "-seconds", str(seconds), *argv],
                           capture_output=True, text=True, timeout=seconds * 10 + 60,
                           stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise BenchError("openssl speed %s failed: %s" % (" ".join(argv), r.stderr[-500:]))
        return (r.stdout + r.stderr).splitlines()

    out = {}
    for line in run("ecdsap256", "ecdhx25519"):
        f = line.split(":")
        if f[0] == "+F4" and f[2] == "256":       # +F4:idx:bits:sign/s:verify/s
            out["sign_s"] = float(f[3])
        elif f[0] == "+F5" and f[2] == "253":     # +F5:idx:bits:op/s:s/op
            out["derive_s"] = float(f[3])
    for line in run("-bytes", "16384", "-evp", "aes-256-gcm"):
        f = line.split(":")
        if f[0] == "+F" and f[2].upper() == "AES-256-GCM":   # +F:idx:name:bytes/s...
            out["aes_gcm_Bps"] = float(f[3])
    if set(out) != {"sign_s", "derive_s", "aes_gcm_Bps"}:
        raise BenchError("openssl speed: could not parse %s" % sorted(out))
    out["handshake_us"] = 1e6 / out["sign_s"] + 1e6 / out["derive_s"]
    out["aes_ms_per_mb"] = 1e3 * 1e6 / out["aes_gcm_Bps"]
    return out


def tlsfloor():
    """What OpenSSL itself costs a TLS server here (bench/tlsfloor): a full
    TLS 1.3 handshake as imapmux's listeners make it (one ticket, the key
    log callback), a resumed one, and MB through a bare TLS relay."""
    def run(*argv):
        r = subprocess.run([TLSFLOOR, *argv], capture_output=True, text=True, timeout=300,
                           stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise BenchError("tlsfloor %s failed: %s" % (" ".join(argv), r.stderr[-500:]))
        return json.loads(r.stdout)
    return {"full_us": run("handshake", "-n", "2000", "--tickets", "1",
                           "--keylog")["server_cpu_us_per_handshake"],
            "resumed_us": run("handshake", "-n", "2000", "--tickets", "1", "--keylog",
                              "--resume")["server_cpu_us_per_handshake"],
            "relay_ms_per_mb": run("relay", "-m", "2000")["relay_cpu_ms_per_mb"]}


def floor_of(samples):
    """The floor: the cheapest of the samples (the machine is shared; a
    busy moment only makes a sample dearer)."""
    libs = [s["lib"] for s in samples if s.get("lib")]
    return {"handshake_us": min(s["handshake_us"] for s in samples),
            "aes_ms_per_mb": min(s["aes_ms_per_mb"] for s in samples),
            "lib": {k: min(x[k] for x in libs) for k in libs[0]} if libs else None,
            "samples": samples}


# ---------------------------------------------------------------------------
# running imapbench

class Target:
    """Where imapbench connects, and the processes whose CPU (and, in the
    idle mode, memory) is measured: pids, the roots of process trees;
    pgid, the process group they all share (for the RSS before a run)."""

    def __init__(self, name, port, pids, pgid, tls="implicit"):
        self.name = name
        self.port = port
        self.pids = list(pids)
        self.pgid = pgid
        self.tls = tls


class Run:
    """The run's world, deadline and log of every imapbench call."""

    def __init__(self, args, tmp):
        self.args = args
        self.tmp = tmp
        self.deadline = time.monotonic() + args.time_limit
        self.cert = self.key = None
        self.dv = self.redis = self.nginx = self.mux = None
        self.conf_text = ""
        self.calls = 0
        self.restarts = 0

    def left(self):
        return self.deadline - time.monotonic()

    def over(self):
        return self.left() <= 0

    def fresh(self, target):
        """Replace the nginx or imapmux of target by a fresh process (new
        ports; target is updated in place), so that what sessions cost is
        not hidden in heap that earlier runs grew and freed."""
        self.restarts += 1
        d = os.path.join(self.tmp, "%s-%d" % (target.name, self.restarts))
        if target.name == "nginx":
            self.nginx.stop()
            self.nginx = world.start_nginx(d, self.cert, self.key, self.dv.port,
                                           sessions=self.args.idle_sessions)
            p = self.nginx
        else:
            self.mux.stop()
            self.mux, _ = world.start_imapmux(d, self.cert, self.key, self.dv, self.redis,
                                              workers=2, imapmux_extra=IMAPMUX_EXTRA)
            p = self.mux
        target.port = p.port if target.name == "nginx" else p.ports[0]
        target.pids, target.pgid = [p.pid], p.proc.pgid

    def plain(self):
        """Dovecot's plain port without TLS: a reference for latency only."""
        return Target("plain", self.dv.port, [self.dv.proc.pid], self.dv.proc.pgid, tls="none")

    def targets(self):
        return [Target("direct", self.dv.imaps_port, [self.dv.proc.pid], self.dv.proc.pgid),
                Target("nginx", self.nginx.port, [self.nginx.pid], self.nginx.proc.pgid),
                Target("imapmux", self.mux.ports[0], [self.mux.pid], self.mux.proc.pgid)]


def imapbench(run, mode, target, opts, label, pids=None, limit=None):
    """One imapbench process against target; its JSON object, with "rc",
    "client_cpu_s" (imapbench's own CPU) and, on failure, "errors" >= 1 and
    "first_error". Bounded by -t and by a subprocess timeout past it."""
    limit = max(5, int(min(limit or run.args.run_time, run.left() + 5)))
    argv = [IMAPBENCH, mode, "-H", "127.0.0.1", "-p", str(target.port), "-T", target.tls,
            "-w", world.PASSWORD, "-t", str(limit), "--label", label] + list(opts)
    for p in (pids if pids is not None else target.pids):
        argv += ["--pid", str(p)]
    run.calls += 1
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=limit + 30,
                           stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return {"rc": None, "errors": 1, "ops": 0, "argv": argv,
                "first_error": "imapbench did not end within %d s" % (limit + 30)}
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    res = None
    for line in reversed(r.stdout.splitlines()):
        if line.startswith("{"):
            try:
                res = json.loads(line)
            except ValueError:
                pass
            break
    if res is None:
        res = {"errors": 1, "ops": 0,
               "first_error": "no JSON from imapbench (exit %s): %s"
               % (r.returncode, r.stderr.strip()[-300:])}
    elif r.returncode != 0 and not res.get("errors"):
        res["errors"] = 1
        res["first_error"] = res.get("first_error") or "exit status %d" % r.returncode
    res["rc"] = r.returncode
    res["argv"] = argv
    res["client_cpu_s"] = (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)
    return res


def rounds(run, mode, targets, one, n_rounds):
    """Each target n_rounds times, the order rotated every round (A B C,
    B C A, C A B). one(target, round) runs one measurement. Returns
    {target name: [results]} and whether the deadline cut it short."""
    results = {t.name: [] for t in targets}
    cut = False
    n = len(targets)
    for r in range(n_rounds):
        order = targets[r % n:] + targets[:r % n]
        for t in order:
            if run.over():
                cut = True
                break
            res = one(t, r)
            results[t.name].append(res)
            print("versus: %-13s round %d %-11s %s" % (mode, r + 1, t.name, brief(res)),
                  flush=True)
        if cut:
            break
    return results, cut


def brief(res):
    parts = ["ops %s" % res.get("ops")]
    for k, fmt in (("ops_per_s", "%.0f/s"), ("cpu_per_op_us", "cpu/op %.0f us"),
                   ("mb_per_s", "%.0f MB/s"), ("cpu_per_mb_ms", "cpu/MB %.2f ms")):
        if res.get(k) is not None:
            parts.append(fmt % res[k])
    if res.get("lat_us"):
        parts.append("p50 %.0f p99 %.0f us" % (res["lat_us"]["p50"], res["lat_us"]["p99"]))
    if res.get("resumed") is not None and res.get("mode") == "logins":
        parts.append("resumed %s" % res["resumed"])
    if res.get("rss_kb"):
        parts.append("rss %s kB, backend %s" % (res["rss_kb"], res.get("backend_conns")))
    if res.get("errors"):
        parts.append("ERRORS %s: %s" % (res["errors"], res.get("first_error")))
    return ", ".join(parts)


def user_opts(users=len(world.USERS)):
    return ["-u", "bench%02d", "-U", str(users)]


# ---------------------------------------------------------------------------
# the modes: each returns {"mode", "results": {target: [...]}, "cut", ...}

def _mode(run, mode, targets, one, n_rounds=None, **extra):
    t0 = time.monotonic()
    results, cut = rounds(run, mode, targets, one, n_rounds or run.args.rounds)
    out = {"mode": mode, "targets": [t.name for t in targets], "results": results, "cut": cut,
           "mode_s": time.monotonic() - t0}
    out.update(extra)
    return out


def backend_logins(run, offset, want, timeout=10.0):
    """Dovecot's `Login:` lines after offset of its log (its log process
    writes them a moment after the fact): waits until they reach want or
    stay the same for a second; the sum of both kinds (plain port, from a
    proxy, and TLS port, direct)."""
    deadline = time.monotonic() + timeout
    last, since = None, time.monotonic()
    while True:
        proxied, direct, _ = webmail.count_logins(run.dv.log_path, offset)
        n = proxied + direct
        if n != last:
            last, since = n, time.monotonic()
        if n >= want or time.monotonic() - since >= 1.0 or time.monotonic() > deadline:
            return n
        time.sleep(0.1)


def logins_run(run, target, opts, label):
    """imapbench logins, and the logins Dovecot saw meanwhile: a check of
    imapbench's count (direct and nginx: one each, warm-up included) and
    what session reuse saves Dovecot (imapmux)."""
    offset = os.path.getsize(run.dv.log_path)
    res = imapbench(run, "logins", target, opts, label)
    done = int(res.get("ops") or 0) + run.args.login_warmup
    res["dovecot_logins"] = backend_logins(run, offset, done)
    res["dovecot_per_login"] = res["dovecot_logins"] / done if done else None
    return res


def mode_logins(run, resume=False):
    a = run.args
    opts = ["-c", str(a.login_conc), "-n", str(a.logins), "--warmup", str(a.login_warmup)]
    opts += user_opts() + (["--resume"] if resume else [])
    name = "logins_resume" if resume else "logins"
    return _mode(run, name, run.targets(),
                 lambda t, r: logins_run(run, t, opts, "%s/%s/%d" % (name, t.name, r)))


def mode_latency(run, cmd):
    a = run.args
    opts = ["-c", str(a.lat_conc), "-n", str(a.lat_ops), "--warmup", str(a.lat_warmup),
            "--cmd", cmd] + user_opts()
    name = "latency_" + cmd
    # Shorter runs, more rounds: a busy moment of the shared machine then
    # hits one short run of one target, and the median leaves it out.
    return _mode(run, name, run.targets() + [run.plain()],
                 lambda t, r: imapbench(run, "latency", t, opts, "%s/%s/%d" % (name, t.name, r)),
                 n_rounds=a.lat_rounds)


def mode_bulk_fetch(run):
    a = run.args
    opts = ["--fetch", "--uid", str(world.BIG_UID), "-c", "1", "-n", str(a.bulk_ops),
            "--warmup", "1", "-u", world.BIG_USER, "-U", "1"]
    return _mode(run, "bulk_fetch", run.targets(),
                 lambda t, r: imapbench(run, "bulk", t, opts, "bulk_fetch/%s/%d" % (t.name, r)))


def drop_appended(run):
    """Remove the big messages APPENDed to APPEND_USER's INBOX (Dovecot
    notices at its next sync), so that the mailbox does not grow from run
    to run."""
    md = run.dv.maildir(APPEND_USER)
    n = 0
    for sub in ("cur", "new"):
        for path in glob.glob(os.path.join(md, sub, "*")):
            try:
                if os.path.getsize(path) > 1000 * 1000:
                    os.unlink(path)
                    n += 1
            except OSError:
                pass
    return n


def mode_bulk_append(run):
    a = run.args
    opts = ["--append", str(world.BIG_BYTES), "-c", "1", "-n", str(a.append_ops),
            "--warmup", "1", "-u", APPEND_USER, "-U", "1"]

    def one(t, r):
        res = imapbench(run, "bulk", t, opts, "bulk_append/%s/%d" % (t.name, r))
        res["dropped"] = drop_appended(run)
        return res

    return _mode(run, "bulk_append", run.targets(), one)


def rss_sum(pids):
    total = 0
    for p in pids:
        try:
            with open("/proc/%d/status" % p) as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            pass
    return total


def mode_idle(run):
    a = run.args
    opts = ["-c", str(a.idle_sessions), "--settle", str(a.idle_settle), "--hold", "0",
            "--backend-port", str(run.dv.port)] + user_opts()

    def one(t, r):
        # The sessions' memory is that of the whole tree under --pid:
        # imapmux's one process, nginx's master and its workers, Dovecot's
        # master and every login and imap process (direct: one imap process
        # per session; RSS summed, so pages shared between processes count
        # once in each). The RSS before: the target's process group, the
        # same processes, the proxies freshly started.
        if t.name != "direct":
            run.fresh(t)
        base = rss_sum(lab.group_pids(t.pgid))
        limit = a.run_time + a.idle_settle + 60
        res = imapbench(run, "idle", t, opts, "idle/%s/%d" % (t.name, r), limit=limit)
        res["rss_base_kb"] = base
        return res

    return _mode(run, "idle", run.targets(), one, sessions=a.idle_sessions)


def mode_mix(run):
    a = run.args
    opts = ["-c", str(a.mix_conc), "-n", str(a.mix_logins)] + user_opts()
    return _mode(run, "mix", run.targets(),
                 lambda t, r: imapbench(run, "mix", t, opts, "mix/%s/%d" % (t.name, r)))


def thread_ticks(pid):
    """{tid: utime + stime clock ticks} of every thread of pid."""
    out = {}
    for tid in os.listdir("/proc/%d/task" % pid):
        try:
            with open("/proc/%d/task/%s/stat" % (pid, tid)) as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[int(tid)] = int(rest[11]) + int(rest[12])
    return out


def thread_split(before, after):
    """The CPU each thread took between two thread_ticks() samples, in %
    of the process's, largest first, threads under 2% left out."""
    d = sorted((after[t] - before.get(t, 0) for t in after), reverse=True)
    total = sum(d)
    return [round(100.0 * x / total) for x in d if total and 100.0 * x / total >= 2]


def mode_workers(run):
    """imapmux with workers = 1 (a second instance, started for this mode)
    and the world's, workers = 2, alternating."""
    a = run.args
    mux1, _ = world.start_imapmux(os.path.join(run.tmp, "imapmux-w1"), run.cert, run.key,
                                  run.dv, run.redis, name="imapmux-w1", workers=1,
                                  imapmux_extra=IMAPMUX_EXTRA, redis_prefix="versus-w1:")
    try:
        targets = [Target("imapmux-w1", mux1.ports[0], [mux1.pid], mux1.proc.pgid),
                   Target("imapmux-w2", run.mux.ports[0], [run.mux.pid], run.mux.proc.pgid)]
        opts = ["-c", str(a.login_conc), "-n", str(a.logins), "--warmup",
                str(a.login_warmup)] + user_opts()

        def one(t, r):
            # How imapmux's CPU fell on its threads: with 2 workers, both
            # should carry about half (the load is shared out at all).
            t0 = thread_ticks(t.pids[0])
            res = imapbench(run, "logins", t, opts, "workers/%s/%d" % (t.name, r))
            res["thread_split"] = thread_split(t0, thread_ticks(t.pids[0]))
            return res

        return _mode(run, "workers", targets, one)
    finally:
        mux1.stop()


def scrape(port):
    """{sample: value} of imapmux's /metrics at port ({}: no answer)."""
    out = {}
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
            for line in r.read().decode().splitlines():
                if line and not line.startswith("#"):
                    name, val = line.rsplit(None, 1)
                    out[name] = float(val)
    except OSError:
        pass
    return out


def parked_now(port):
    """imapmux_sessions_parked (None: no answer)."""
    v = scrape(port).get("imapmux_sessions_parked")
    return None if v is None else int(v)


# What imapmux did besides the logins while they were measured.
SCALE_DELTAS = ("imapmux_parks_total", 'imapmux_wakes_total{cause="change"}',
                'imapmux_wakes_total{cause="client"}', "imapmux_backend_logins_total",
                "imapmux_park_keepalives_total")


def hold_parked(run, target, stats_port, n, procs, batch):
    """Bring the parked sessions of target to at least n: imapbench idle
    processes of batch sessions each (Dovecot logs each in once; imapmux
    parks them after park_idle_after and gives its connection back), kept
    open (--hold) until stopped. Each batch waits for its sessions to park
    (bounded), so Dovecot never has more than a batch at once."""
    hold = int(run.left()) + 60
    while (parked_now(stats_port) or 0) < n and not run.over():
        want = (parked_now(stats_port) or 0) + batch
        argv = [IMAPBENCH, "idle", "-H", "127.0.0.1", "-p", str(target.port), "-T", "implicit",
                "-w", world.PASSWORD, "-c", str(batch), "--settle", "1", "--hold", str(hold),
                "-t", str(hold + 60)] + user_opts()
        procs.append(subprocess.Popen(argv, stdout=subprocess.DEVNULL,
                                      stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL))
        deadline = time.monotonic() + 120
        while (parked_now(stats_port) or 0) < want * 0.98 and time.monotonic() < deadline:
            if procs[-1].poll() is not None:
                raise BenchError("scale: imapbench idle exited early (%s)" % procs[-1].returncode)
            time.sleep(0.5)
    return parked_now(stats_port) or 0


def settle_parks(stats_port, quiet=2.0, limit=30.0):
    """Wait (bounded) until no session has parked for quiet seconds: the
    last batch's stragglers do not park during the measurement."""
    deadline = time.monotonic() + limit
    last, since = None, time.monotonic()
    while time.monotonic() < deadline:
        n = scrape(stats_port).get("imapmux_parks_total")
        if n != last:
            last, since = n, time.monotonic()
        elif time.monotonic() - since >= quiet:
            return
        time.sleep(0.25)


def stop_all_procs(procs):
    for p in procs:
        if p.poll() is None:
            p.terminate()
    for p in procs:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    procs.clear()


def mode_scale(run):
    """Logins with few and with many parked sessions on the same imapmux
    (issue #14: per-login work must not grow with the sessions it keeps):
    a fresh imapmux, --scale-few parked sessions, logins; then
    --scale-many, logins; the order alternates over the rounds (few, many,
    many, few, ...), the many held from their first round to their last."""
    a = run.args
    stats_port = lab.free_port()
    mux, _ = world.start_imapmux(os.path.join(run.tmp, "imapmux-scale"), run.cert, run.key,
                                 run.dv, run.redis, name="imapmux-scale", workers=2,
                                 stats_port=stats_port, redis_prefix="versus-scale:",
                                 imapmux_extra={"park_idle_after": "1s"})
    target = Target("imapmux", mux.ports[0], [mux.pid], mux.proc.pgid)
    opts = ["-c", str(a.login_conc), "-n", str(a.logins), "--warmup", str(a.login_warmup)]
    opts += user_opts()
    base = []  # the few, held all along
    extra = []  # the rest of the many
    results = {"few": [], "many": []}
    held = {"few": [], "many": []}
    t0 = time.monotonic()
    try:
        hold_parked(run, target, stats_port, a.scale_few, base, min(a.scale_few, 500))
        order = ["few", "many", "many", "few"][:max(2, min(4, 2 * a.rounds))]
        for r, which in enumerate(order):
            if run.over():
                break
            if which == "many":
                hold_parked(run, target, stats_port, a.scale_many, extra, a.scale_batch)
                settle_parks(stats_port)
            else:
                stop_all_procs(extra)
                deadline = time.monotonic() + 30
                while (parked_now(stats_port) or 0) > a.scale_few * 1.05 and \
                        time.monotonic() < deadline:
                    time.sleep(0.5)
            n = parked_now(stats_port)
            m0 = scrape(stats_port)
            res = imapbench(run, "logins", target, opts, "scale/%s/%d" % (which, r))
            m1 = scrape(stats_port)
            res["parked"] = n
            res["during"] = {k.replace("imapmux_", ""): m1.get(k, 0) - m0.get(k, 0)
                             for k in SCALE_DELTAS}
            results[which].append(res)
            held[which].append(n)
            print("versus: %-13s round %d %-11s parked %s, %s; during it: %s"
                  % ("scale", r + 1, which, n, brief(res), res["during"]), flush=True)
    finally:
        stop_all_procs(extra)
        stop_all_procs(base)
        mux.stop()
    return {"mode": "scale", "targets": ["few", "many"], "results": results,
            "cut": run.over(), "mode_s": time.monotonic() - t0, "held": held}


MODE_FUNCS = {
    "logins": mode_logins,
    "logins_resume": lambda run: mode_logins(run, resume=True),
    "latency_noop": lambda run: mode_latency(run, "noop"),
    "latency_fetch": lambda run: mode_latency(run, "fetch"),
    "bulk_fetch": mode_bulk_fetch,
    "bulk_append": mode_bulk_append,
    "idle": mode_idle,
    "mix": mode_mix,
    "workers": mode_workers,
    "scale": mode_scale,
}

# The world's imapmux, apart from versuslib's defaults: sessions quiet this
# long are parked (the idle mode's settle time is longer).
IMAPMUX_EXTRA = {"park_idle_after": "2s"}


# ---------------------------------------------------------------------------
# medians and the table

def _num(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x


def metric(res, key):
    """One number of one imapbench result, or None."""
    if key == "lat_p50" or key == "lat_p99" or key == "lat_p999" or key == "lat_p90":
        v = (res.get("lat_us") or {}).get(key[4:])
    elif key == "resumed_pct":
        v = 100.0 * res["resumed"] / res["ops"] if res.get("ops") and _num(
            res.get("resumed")) else None
    elif key == "rss_total":
        v = _tree_sum(res, "rss_kb")
    elif key == "rss_per_session":
        v = _tree_sum(res, "rss_kb")
        base = res.get("rss_base_kb")
        v = (v - base) / res["ops"] if v is not None and _num(base) and res.get("ops") else None
    elif key == "backend_total":
        v = _tree_sum(res, "backend_conns")
    elif key == "busy":
        # cores the --pid trees kept busy during the measured phase
        v = res["cpu_s"] / res["wall_s"] if _num(res.get("cpu_s")) and res.get("wall_s") \
            else None
    elif key == "cmds_per_s":
        c = res.get("commands")
        v = sum(c.values()) / res["wall_s"] if c and res.get("wall_s") else None
    else:
        v = res.get(key)
    return v if _num(v) else None


def _tree_sum(res, key):
    """Sum over the --pid trees of an idle sample (imapbench's KEY_tree,
    falling back to KEY, the --pid processes alone)."""
    vals = res.get(key + "_tree") or res.get(key)
    return sum(vals) if vals else None


def median_of(results, key):
    vals = [v for v in (metric(r, key) for r in results if not r.get("errors")) if v is not None]
    return statistics.median(vals) if vals else None


def errors_of(results):
    return sum(int(r.get("errors") or 0) for r in results)


def first_error(results):
    for r in results:
        if r.get("errors"):
            return r.get("first_error")
    return None


# mode: [(header, metric key, format)]
COLUMNS = {
    "logins": [("logins/s", "ops_per_s", "%.0f"), ("CPU/login us", "cpu_per_op_us", "%.0f"),
               ("busy cores", "busy", "%.2f"),
               ("round p50 ms", "lat_p50", "%.1f", 1e-3),
               ("round p99 ms", "lat_p99", "%.1f", 1e-3),
               ("Dovecot logins per login", "dovecot_per_login", "%.3f")],
    "logins_resume": [("logins/s", "ops_per_s", "%.0f"),
                      ("CPU/login us", "cpu_per_op_us", "%.0f"),
                      ("resumed %", "resumed_pct", "%.0f"),
                      ("Dovecot logins per login", "dovecot_per_login", "%.3f")],
    "latency_noop": [("p50 us", "lat_p50", "%.0f"), ("p90 us", "lat_p90", "%.0f"),
                     ("p99 us", "lat_p99", "%.0f"), ("p99.9 us", "lat_p999", "%.0f"),
                     ("CPU/op us", "cpu_per_op_us", "%.1f")],
    "bulk_fetch": [("MB/s", "mb_per_s", "%.0f"), ("CPU/MB ms", "cpu_per_mb_ms", "%.2f")],
    "idle": [("sessions", "ops", "%.0f"), ("RSS kB", "rss_total", "%.0f"),
             ("RSS/session kB", "rss_per_session", "%.1f"),
             ("backend conns", "backend_total", "%.0f")],
    "mix": [("logins/s", "ops_per_s", "%.0f"), ("commands/s", "cmds_per_s", "%.0f"),
            ("CPU/login us", "cpu_per_op_us", "%.0f")],
}
COLUMNS["latency_fetch"] = COLUMNS["latency_noop"]
COLUMNS["bulk_append"] = COLUMNS["bulk_fetch"]
COLUMNS["workers"] = COLUMNS["logins"][:2] + [("busy cores", "busy", "%.2f")]
COLUMNS["scale"] = [("parked", "parked", "%.0f")] + COLUMNS["logins"][:3]


def fmt(v, f, scale=1.0):
    return "-" if v is None else f % (v * scale)


def md_table(rows):
    w = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w[i]) for i, c in enumerate(r)) + " |" for r in rows]
    lines.insert(1, "|" + "|".join("-" * (x + 2) for x in w) + "|")
    return lines


def render_mode(m):
    cols = COLUMNS[m["mode"]]
    rows = [["target", "runs"] + [c[0] for c in cols] + ["errors"]]
    for name in m["targets"]:
        res = m["results"][name]
        row = [name, str(len(res))]
        for c in cols:
            row.append(fmt(median_of(res, c[1]), c[2], c[3] if len(c) > 3 else 1.0))
        e = errors_of(res)
        text = (first_error(res) or "")[:60].replace("|", "/")
        row.append(str(e) if not e else "%d: %s" % (e, text))
        rows.append(row)
    title = {"logins": "logins, full TLS handshake", "logins_resume": "logins, TLS resumption",
             "latency_noop": "latency, NOOP", "latency_fetch": "latency, small UID FETCH",
             "bulk_fetch": "bulk FETCH, %d MB message" % (world.BIG_BYTES // 10**6),
             "bulk_append": "bulk APPEND, %d MB message" % (world.BIG_BYTES // 10**6),
             "idle": "idle, %s sessions in IDLE" % m.get("sessions"),
             "mix": "stress mix", "workers": "imapmux workers = 1 vs 2, logins",
             "scale": "imapmux logins with few and with many parked sessions"}[m["mode"]]
    out = ["%s (medians of %s rounds, %.0f s)%s"
           % (title, max((len(v) for v in m["results"].values()), default=0), m["mode_s"],
              ", CUT SHORT by the time limit" if m["cut"] else "")]
    out += md_table(rows)
    if m["mode"] == "mix":
        mixes = {r.get("mix") for res in m["results"].values() for r in res if r.get("mix")}
        if mixes:
            out.append("mix used: %s" % "; ".join(sorted(str(x) for x in mixes)))
    return out


def goal_values(modes, floor):
    """{goal key: (value, note)} from the modes' medians."""
    by = {m["mode"]: m for m in modes}
    vals = {}

    def med(mode, target, key):
        m = by.get(mode)
        if m is None or target not in m["results"]:
            return None
        return median_of(m["results"][target], key)

    def ratio(a, b):
        return a / b if a is not None and b else None

    mux_login = med("logins", "imapmux", "cpu_per_op_us")
    ngx_login = med("logins", "nginx", "cpu_per_op_us")
    vals["login_vs_nginx"] = (ratio(mux_login, ngx_login), "")
    vals["login_vs_floor"] = (ratio(mux_login, floor["handshake_us"] if floor else None),
                              "floor %.0f us" % floor["handshake_us"] if floor else "")
    resumed = med("logins_resume", "imapmux", "resumed_pct")
    vals["resume_vs_nginx"] = (ratio(med("logins_resume", "imapmux", "cpu_per_op_us"),
                                     ngx_login),
                               "" if resumed is None else "%.0f%% resumed" % resumed)
    vals["bulk_vs_nginx"] = (ratio(med("bulk_fetch", "imapmux", "mb_per_s"),
                                   med("bulk_fetch", "nginx", "mb_per_s")), "")
    vals["bulk_vs_floor"] = (ratio(med("bulk_fetch", "imapmux", "cpu_per_mb_ms"),
                                   floor["aes_ms_per_mb"] if floor else None),
                             "floor %.3f ms/MB" % floor["aes_ms_per_mb"] if floor else "")
    for ref, prefix in (("direct", "noop_"), ("plain", "noop_plain_")):
        for p in ("p50", "p99"):
            a, b = (med("latency_noop", "imapmux", "lat_" + p),
                    med("latency_noop", ref, "lat_" + p))
            vals[prefix + p] = (a - b if a is not None and b is not None else None,
                                "" if a is None or b is None else "%.0f - %.0f" % (a, b))
    vals["mix_vs_direct"] = (ratio(med("mix", "imapmux", "ops_per_s"),
                                   med("mix", "direct", "ops_per_s")), "")
    busy = [med("workers", t, "busy") for t in ("imapmux-w1", "imapmux-w2")]
    note = "" if None in busy else "imapmux busy %.2f / %.2f cores" % tuple(busy)
    split = [r.get("thread_split") for r in by["workers"]["results"]["imapmux-w2"]] \
        if "workers" in by else []
    if split and split[-1]:
        note += "; workers = 2, CPU by thread: %s%%" % "/".join(str(x) for x in split[-1])
    vals["workers"] = (ratio(med("workers", "imapmux-w2", "ops_per_s"),
                             med("workers", "imapmux-w1", "ops_per_s")), note)
    many, few = med("scale", "many", "parked"), med("scale", "few", "parked")
    vals["scale"] = (ratio(med("scale", "many", "cpu_per_op_us"),
                           med("scale", "few", "cpu_per_op_us")),
                     "" if many is None else "%.0f vs %.0f parked" % (many, few))
    lib = (floor or {}).get("lib") or {}
    full, resumed, relay = lib.get("full_us"), lib.get("resumed_us"), lib.get("relay_ms_per_mb")
    vals["login_vs_lib"] = (ratio(mux_login, full), "" if full is None else "%.0f us" % full)
    vals["lib_vs_floor"] = (ratio(full, floor["handshake_us"] if floor else None), "")
    vals["lib_resume_vs_nginx"] = (ratio(resumed, ngx_login),
                                   "" if resumed is None else "%.0f us" % resumed)
    vals["bulk_vs_relay"] = (ratio(med("bulk_fetch", "imapmux", "cpu_per_mb_ms"), relay),
                             "" if relay is None else "%.3f ms/MB" % relay)
    vals["relay_vs_floor"] = (ratio(relay, floor["aes_ms_per_mb"] if floor else None), "")
    return vals


GOAL_MODES = {"login_vs_nginx": ("logins",), "login_vs_floor": ("logins",),
              "resume_vs_nginx": ("logins_resume", "logins"), "bulk_vs_nginx": ("bulk_fetch",),
              "bulk_vs_floor": ("bulk_fetch",), "noop_p50": ("latency_noop",),
              "noop_p99": ("latency_noop",), "mix_vs_direct": ("mix",), "workers": ("workers",),
              "noop_plain_p50": ("latency_noop",), "noop_plain_p99": ("latency_noop",),
              "scale": ("scale",), "login_vs_lib": ("logins",), "lib_vs_floor": (),
              "lib_resume_vs_nginx": ("logins",), "bulk_vs_relay": ("bulk_fetch",),
              "relay_vs_floor": ()}


def render_goals(modes, floor):
    vals = goal_values(modes, floor)
    by = {m["mode"]: m for m in modes}
    rows = [["target (issue #14)", "measured", "goal", "verdict", "note"]]
    for key, what, goal, ok in GOALS:
        if GOAL_MODES[key] and not any(mode in by for mode in GOAL_MODES[key]):
            continue    # --modes left its mode out (no modes: the floors alone)
        v, note = vals[key]
        dirty = [mode for mode in GOAL_MODES[key] if mode in by and any(
            errors_of(res) for res in by[mode]["results"].values())]
        if ok is None:
            verdict = ""
        elif v is None:
            verdict = "n/a"
        else:
            verdict = "PASS" if ok(v) else "MISS"
            if dirty:
                verdict += " (errors in %s)" % ", ".join(dirty)
        if key == "resume_vs_nginx" and v is not None:
            resumed = median_of(by["logins_resume"]["results"]["imapmux"], "resumed_pct")
            if not resumed:
                verdict = "MISS (nothing resumed)"
        if key == "workers" and verdict == "MISS":
            busy1 = median_of(by["workers"]["results"]["imapmux-w1"], "busy")
            if busy1 is not None and busy1 < 0.9:
                # One worker is one core at most: one that is not kept
                # busy is not what limits the logins/s.
                verdict = "MISS (not shown: 1 worker < 1 core busy)"
        rows.append([what, "-" if v is None else "%.3g" % v, goal, verdict, note])
    return md_table(rows)


def render(out):
    f = out["facts"]
    lines = ["versus: imapmux vs nginx %s vs direct Dovecot, %.0f s; %s"
             % (f["nginx"], out["elapsed"], out["cmd"]),
             "machine: nproc %s, CPU %s, kernel %s; %s; Dovecot %s; nginx %s; %s"
             % (f["nproc"], f["cpu"], f["kernel"], f["openssl"], f["dovecot"], f["nginx"],
                f["imapmux"]),
             ""]
    fl = out["floor"]
    if fl:
        lines.append("crypto floor (openssl speed, cheaper of %d samples): full handshake "
                     "%.1f us (ECDSA P-256 sign + X25519 derive), aes-256-gcm at 16 KB "
                     "%.3f ms per MB" % (len(fl["samples"]), fl["handshake_us"],
                                         fl["aes_ms_per_mb"]))
        if fl.get("lib"):
            lines.append("OpenSSL's own cost (bench/tlsfloor, cheaper of the samples): full "
                         "handshake %.0f us, resumed %.0f us (server side, memory BIOs, one "
                         "ticket, key log on); bare TLS relay %.3f ms per MB"
                         % (fl["lib"]["full_us"], fl["lib"]["resumed_us"],
                            fl["lib"]["relay_ms_per_mb"]))
        lines.append("  samples: " + "; ".join(
            "%.0f signs/s, %.0f derives/s, %.0f MB/s" % (s["sign_s"], s["derive_s"],
                                                         s["aes_gcm_Bps"] / 1e6)
            for s in fl["samples"]))
        lines.append("")
    for m in out["modes"]:
        lines += render_mode(m)
        lines.append("")
    if out["skipped"]:
        lines.append("NOT RUN (time limit): %s" % ", ".join(out["skipped"]))
        lines.append("")
    lines += render_goals(out["modes"], fl)
    return "\n".join(lines)


def record(out):
    f = out["facts"]
    when = out["when"].strftime("%Y-%m-%d %H:%M UTC")
    dirty = "none"
    if f["dirty"]:
        shown = f["changed"][:12]
        dirty = "%s%s" % (", ".join("`%s`" % c for c in shown),
                          ", ..." if len(f["changed"]) > len(shown) else "")
    src = ("clean (as committed)" if not f["src_dirty"] else
           "MODIFIED in the working tree (%d files)" % len(f["src_dirty"]))
    a = out["args"]
    sec = ["### %s — versus, commit `%s`%s" % (when, f["commit"],
                                                 " (dirty tree)" if f["dirty"] else ""),
           "",
           "- command: `%s` (started as `%s`%s)" % (
               out["cmd"], " ".join([sys.executable] + sys.argv),
               ", niceness %d" % out["nice"] if out["nice"] else ""),
           "- commit: `%s`; uncommitted changes: %s; imapmux sources (proxy/, common/): %s"
           % (f["commit"], dirty, src),
           "- machine: nproc %s, CPU `%s`, kernel %s, load average at start %s, at the end %s"
           % (f["nproc"], f["cpu"], f["kernel"], f["loadavg"], out["loadavg_end"]),
           "- software: %s (`%s`); nginx %s (Debian, libnginx-mod-mail); Dovecot %s; %s; "
           "imapbench `%s`" % (f["imapmux"], f["binary"], f["nginx"], f["dovecot"],
                               f["openssl"], f["imapbench"]),
           "- load: %d rounds per mode (latency %d), order rotated; logins -c %d -n %d; "
           "latency -c %d -n %d; "
           "bulk -n %d (FETCH) / %d (APPEND) x %d MB; idle %d sessions, settle %g s; mix -c %d "
           "-n %d; imapbench -t %d"
           % (a.rounds, a.lat_rounds, a.login_conc, a.logins, a.lat_conc, a.lat_ops, a.bulk_ops,
              a.append_ops, world.BIG_BYTES // 10**6, a.idle_sessions, a.idle_settle,
              a.mix_conc, a.mix_logins, a.run_time),
           "",
           "```",
           out["text"],
           "```",
           "",
           "<details><summary>imapmux and nginx configurations</summary>",
           "",
           "```ini",
           out["conf_text"].rstrip("\n"),
           "```",
           "",
           "```nginx",
           out["nginx_conf"].rstrip("\n"),
           "```",
           "",
           "</details>",
           ""]
    section = "\n".join(sec) + "\n"
    with open(BENCHMARKS_MD) as fh:
        doc = fh.read()
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

def setup(run):
    a = run.args
    tmp = run.tmp
    run.cert, run.key = lab.make_cert(os.path.join(tmp, "tls"), "cert", key_type="ec")
    run.redis = lab.Redis(directory=os.path.join(tmp, "redis")).start()
    run.dv = world.start_dovecot(os.path.join(tmp, "dovecot"), run.cert, run.key,
                                 sessions=a.idle_sessions if "idle" in a.mode_list else 0)
    run.nginx = world.start_nginx(os.path.join(tmp, "nginx"), run.cert, run.key, run.dv.port,
                                  sessions=a.idle_sessions)
    run.mux, run.conf_text = world.start_imapmux(os.path.join(tmp, "imapmux"), run.cert,
                                                 run.key, run.dv, run.redis, workers=2,
                                                 imapmux_extra=IMAPMUX_EXTRA)


def command_line():
    if not sys.argv[1:]:
        modes = os.environ.get("VERSUS_MODES")
        return "make bench BENCH=versus" + (" VERSUS_MODES=%s" % modes if modes else "")
    return "/usr/bin/python3 bench/versus.py %s" % " ".join(sys.argv[1:])


def run_all(args):
    started = datetime.datetime.now(datetime.timezone.utc)
    t0 = time.monotonic()
    info = webmail.facts()
    info["nginx"] = world.nginx_version()
    info["imapbench"] = os.path.relpath(IMAPBENCH, REPO)
    if not os.access(IMAPBENCH, os.X_OK):
        print("versus: %s is not built (make bench/imapbench)" % IMAPBENCH, file=sys.stderr)
        return 2
    tmp = tempfile.mkdtemp(prefix="imapmux-versus-")
    os.chmod(tmp, 0o755)
    run = Run(args, tmp)
    modes, skipped, floors = [], [], []
    try:
        try:
            floors.append(openssl_speed(args.speed_seconds))
            floors[-1]["lib"] = tlsfloor()
            setup(run)
        except Exception as e:
            print("versus: set-up failed: %s" % e, file=sys.stderr)
            return 2
        for name in args.mode_list:
            if run.over():
                skipped.append(name)
                continue
            print("versus: mode %s ..." % name, flush=True)
            modes.append(MODE_FUNCS[name](run))
        try:
            floors.append(openssl_speed(args.speed_seconds))
            floors[-1]["lib"] = tlsfloor()
        except BenchError as e:
            print("versus: %s" % e, file=sys.stderr)
    finally:
        problems = ""
        if run.mux is not None and not run.mux.alive():
            problems = run.mux.log_tail_text(20)
        lab.stop_all()
        if problems:
            print("versus: imapmux exited during the run%s" % problems, file=sys.stderr)
    try:
        load_end = "%.2f %.2f %.2f" % os.getloadavg()
    except OSError:
        load_end = "unknown"
    out = {"when": started, "facts": info, "args": args, "modes": modes, "skipped": skipped,
           "floor": floor_of(floors) if floors else None, "elapsed": time.monotonic() - t0,
           "cmd": command_line(), "nice": os.nice(0), "loadavg_end": load_end,
           "conf_text": run.conf_text, "nginx_conf": run.nginx.text if run.nginx else ""}
    out["text"] = render(out)
    print(out["text"])
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"floor": out["floor"], "modes": modes, "skipped": skipped}, fh, indent=1)
    if args.record:
        record(out)
        print("versus: recorded in %s" % BENCHMARKS_MD)
    if args.keep:
        print("versus: kept %s" % tmp)
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    bad = skipped or any(m["cut"] or any(errors_of(r) for r in m["results"].values())
                         for m in modes)
    return 1 if bad else 0


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--modes", default=os.environ.get("VERSUS_MODES") or ",".join(MODES),
                    help="comma-separated, of %s (default: $VERSUS_MODES, else all)"
                    % ", ".join(MODES))
    ap.add_argument("--rounds", type=int, default=3, help="rounds per mode and target")
    ap.add_argument("--logins", type=int, default=1000, help="logins per logins run (-n)")
    ap.add_argument("--login-conc", type=int, default=10, help="login loops at once (-c)")
    ap.add_argument("--login-warmup", type=int, default=50, help="logins before measuring")
    ap.add_argument("--lat-ops", type=int, default=8000, help="round trips per latency run")
    ap.add_argument("--lat-rounds", type=int, default=7, help="rounds of the latency modes")
    ap.add_argument("--lat-conc", type=int, default=1, help="latency connections")
    ap.add_argument("--lat-warmup", type=int, default=500, help="round trips before measuring")
    ap.add_argument("--bulk-ops", type=int, default=20, help="20 MB FETCHes per bulk run")
    ap.add_argument("--append-ops", type=int, default=10, help="20 MB APPENDs per bulk run")
    ap.add_argument("--idle-sessions", type=int, default=300, help="sessions in IDLE")
    ap.add_argument("--idle-settle", type=float, default=5.0,
                    help="seconds between the last IDLE and the sample (imapmux parks after 2)")
    ap.add_argument("--mix-conc", type=int, default=10, help="stress-mix clients")
    ap.add_argument("--mix-logins", type=int, default=300, help="stress-mix logins per run")
    ap.add_argument("--scale-few", type=int, default=100, help="scale: the few parked sessions")
    ap.add_argument("--scale-many", type=int, default=8000,
                    help="scale: the many parked sessions (under max_connections = auto)")
    ap.add_argument("--scale-batch", type=int, default=800,
                    help="scale: sessions opened at once (Dovecot logs each in)")
    ap.add_argument("--run-time", type=int, default=60, help="imapbench -t per run, seconds")
    ap.add_argument("--speed-seconds", type=int, default=2, help="openssl speed -seconds")
    ap.add_argument("--time-limit", type=float, default=540.0,
                    help="seconds; no mode starts after this, runs are cut to it")
    ap.add_argument("--json", help="also write every imapbench result to this file")
    ap.add_argument("--no-record", dest="record", action="store_false",
                    help="print only; do not update BENCHMARKS.md")
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    args = ap.parse_args(argv)
    args.mode_list = [m.strip() for m in args.modes.split(",") if m.strip()]
    bad = [m for m in args.mode_list if m not in MODES]
    if bad:
        ap.error("unknown mode %s (modes: %s)" % (", ".join(bad), ", ".join(MODES)))
    if not (1 <= args.rounds <= 20 and 1 <= args.login_conc <= 200 and args.logins >= 1
            and 1 <= args.lat_conc <= 100 and args.lat_ops >= 1 and 1 <= args.lat_rounds <= 50
            and args.bulk_ops >= 1
            and args.append_ops >= 1 and 1 <= args.idle_sessions <= 5000
            and 1 <= args.mix_conc <= 200 and args.mix_logins >= 1
            and 5 <= args.run_time <= 600 and 1 <= args.speed_seconds <= 30
            and 10 <= args.time_limit <= 3600):
        ap.error("out of range")
    return run_all(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
