"""Fixtures for imapmux's integration tests, built on deploy/lab.py.

  cert, key, ca_ctx   a self-signed certificate (CN=localhost, SAN 127.0.0.1)
                      and a client SSLContext that trusts only it (session);
                      other_cert(_pair): a second one that nothing trusts
  dovecot             a real Dovecot with USERS, plain IMAP + STARTTLS and an
                      implicit-TLS port (one per test module)
  fresh_dovecot       a Dovecot of the test's own, for tests that kill it
  make_mux(...)       starts proxy/imapmux with a config written for the test
                      (implicit TLS and STARTTLS listeners, backend a = the
                      module's Dovecot, static routing); make_mux.conf(...) only
                      writes one, make_mux.rewrite(m, ...) rewrites m's (for
                      SIGHUP). Every imapmux is stopped after the test, and the
                      test errors if one crashed, exited unasked, ignored
                      SIGTERM or (sanitizer build) reported a memory error
  mux                 make_mux() with the defaults
  client_tls()        implicit-TLS imapc.Client factory for mux
  redis               a real redis-server (session)
  cyrus               a real Cyrus IMAP 3.6 with USERS and CYRUS_ADMIN_USERS,
                      plain IMAP only (one per test module)

IMAPMUX_BIN=path runs everything against another imapmux build (e.g. one made
with `make SANITIZE=1` in a copy of the tree); IMAPMUX_KEEP=1 keeps the
session's temporary directory.

Passwords: password(user). Every test that changes a mailbox uses a user of
its own, so that modules can share one Dovecot.
"""

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "deploy"))
sys.path.insert(0, HERE)

import lab  # noqa: E402
import imapc  # noqa: E402

MASTER_PASSWORD = "it-master-Secret-93"

# A password with a space, a double quote and a backslash: exercises quoted
# strings and literals (stored hashed: passwd-file cannot hold every byte).
QUOTED_USER = "quoted"
QUOTED_PASSWORD = 'p a"ss\\ w0rd'
# UTF-8 in both (RFC 9051 allows it; SASL carries it as is).
UTF8_USER = "jürgen.ßøn"
UTF8_PASSWORD = "pässwörd-✓-Ωmega"
# Cyrus 3.6 refuses non-ASCII user names ("invalid user"): an ASCII name
# with the UTF-8 password for it.
UTF8PW_USER = "utf8pw"
# The password whose every form must stay out of imapmux's log.
CANARY_USER = "canary"
CANARY_PASSWORD = "Zq7-Canary-Pw-4417-xyzzy"

_PLAIN_USERS = [
    "alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan", "judy",
    "big", "idler", "piper", "curly", "crypt", "tlsstart", "tlsimpl", "killed", "killed2",
    "draining", "limits", "preauth", "pipe2", "idler2", "authz", "sasl", "viewer",
    "viewer2", "park1", "park2", "park3", "park4", "park5", "park6", "park7", "park8",
    "park9", "park10", "park11", "park12", "park13", "park14", "park15", "park16", "park17",
    "park18", "park19", "park20", "park21", "park22", "park23", "park24", "resume1",
] + ["model%d" % i for i in range(1, 14)]


def password(user):
    if user == QUOTED_USER:
        return QUOTED_PASSWORD
    if user == CANARY_USER:
        return CANARY_PASSWORD
    if user in (UTF8_USER, UTF8PW_USER):
        return UTF8_PASSWORD
    return "pw-%s-Kx9" % user


USERS = {u: password(u) for u in _PLAIN_USERS}
USERS["crypt"] = (password("crypt"), "SHA512-CRYPT")
USERS[QUOTED_USER] = (QUOTED_PASSWORD, "SHA512-CRYPT")
USERS[CANARY_USER] = (CANARY_PASSWORD, "SHA512-CRYPT")
USERS[UTF8_USER] = (UTF8_PASSWORD, "SHA512-CRYPT")
USERS[UTF8PW_USER] = (UTF8_PASSWORD, "SHA512-CRYPT")

# Cyrus has the same users (passwords in a sasldb, whatever the scheme) and
# two Cyrus admins: Cyrus 3.6 offers UNAUTHENTICATE to admins only.
CYRUS_ADMIN_USERS = ("unauth1", "unauth2")
CYRUS_USERS = dict(USERS, **{u: password(u) for u in CYRUS_ADMIN_USERS})


# ---------------------------------------------------------------------------
# reports: remember each phase's outcome on the item (for log dumps)

@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)


def _failed(request):
    rep = getattr(request.node, "rep_call", None)
    return rep is None or rep.failed


# ---------------------------------------------------------------------------
# TLS material

@pytest.fixture(scope="session")
def labdir():
    d = tempfile.mkdtemp(prefix="imapmux-it-")
    os.chmod(d, 0o755)
    yield d
    if not os.environ.get("IMAPMUX_KEEP"):
        shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def cert_pair(labdir):
    return lab.make_cert(os.path.join(labdir, "tls"), "cert")


@pytest.fixture(scope="session")
def cert(cert_pair):
    return cert_pair[0]


@pytest.fixture(scope="session")
def key(cert_pair):
    return cert_pair[1]


@pytest.fixture(scope="session")
def ca_ctx(cert):
    return lab.client_context(cert)


@pytest.fixture(scope="session")
def other_cert_pair(labdir):
    """A second self-signed certificate (and key) that nothing trusts."""
    return lab.make_cert(os.path.join(labdir, "tls-other"), "cert")


@pytest.fixture(scope="session")
def other_cert(other_cert_pair):
    return other_cert_pair[0]


# ---------------------------------------------------------------------------
# servers

def _start_dovecot(cert, key, name):
    d = lab.Dovecot(USERS, tls=True, cert=cert, key=key, master_password=MASTER_PASSWORD,
                    name=name)
    d.start()
    return d


@pytest.fixture(scope="module")
def dovecot(cert, key):
    d = _start_dovecot(cert, key, "dovecot")
    yield d
    d.cleanup()


@pytest.fixture
def fresh_dovecot(cert, key, request):
    d = _start_dovecot(cert, key, "dovecot-fresh")
    yield d
    if _failed(request):
        print(d.log_tail_text(40))
    d.cleanup()


@pytest.fixture(scope="module")
def cyrus():
    c = lab.Cyrus(CYRUS_USERS, admins=CYRUS_ADMIN_USERS, master_password=MASTER_PASSWORD)
    c.start()
    yield c
    c.cleanup()


@pytest.fixture(scope="session")
def redis():
    r = lab.Redis()
    r.start()
    yield r
    r.cleanup()


# ---------------------------------------------------------------------------
# imapmux

def backend_section(dv, tls="none", **extra):
    """A [backend] dict for Dovecot dv."""
    port = dv.imaps_port if tls == "implicit" else dv.port
    kv = {"address": "127.0.0.1:%d" % port, "tls": tls,
          "master_user": lab.MASTER_USER, "master_password": dv.master_password,
          "connect_timeout": "3s", "command_timeout": "10s"}
    kv.update(extra)
    return kv


class MuxFactory:
    def __init__(self, request, tmp_path, cert, key, dovecot_getter):
        self.request = request
        self.tmp_path = tmp_path
        self.cert = cert
        self.key = key
        self.dovecot_getter = dovecot_getter
        self.started = []
        self.n = 0

    def conf(self, backends=None, imapmux=None, listens=None, routing=None, redis=None,
             plaintext_auth=False, extra="", cert=None, key=None, path=None, ports=None):
        """Write a config (to path, or a new file); returns (path, imaps_port,
        imap_port). ports: reuse (imaps_port, imap_port)."""
        self.n += 1
        imaps_port, imap_port = ports or (lab.free_port(), lab.free_port())
        cert, key = cert or self.cert, key or self.key
        if listens is None:
            listens = [
                ("imaps", {"address": "127.0.0.1:%d" % imaps_port, "tls": "implicit",
                           "cert": cert, "key": key}),
                ("imap", {"address": "127.0.0.1:%d" % imap_port, "tls": "starttls",
                          "cert": cert, "key": key,
                          "allow_plaintext_auth": plaintext_auth}),
            ]
        if backends is None:
            backends = [("a", backend_section(self.dovecot_getter()))]
        if routing is None:
            routing = {"lookup": "static", "fallback": backends[0][0]}
        base = {"workers": 2, "log_level": "info", "preauth_timeout": 30,
                "shutdown_timeout": 5}
        base.update(imapmux or {})
        path = path or str(self.tmp_path / ("imapmux-%d.conf" % self.n))
        lab.write_imapmux_conf(path, imapmux=base, listens=listens, backends=backends,
                               routing=routing, redis=redis, extra=extra)
        return path, imaps_port, imap_port

    def __call__(self, **kw):
        path, imaps_port, imap_port = self.conf(**kw)
        m = lab.Imapmux(path, path[:-5] + ".log")
        m.imaps_port, m.imap_port = imaps_port, imap_port
        m.expect_exit = False
        m.allow_leaks = False   # SIGINT exits at once, without freeing
        self.started.append(m)
        m.start()
        return m

    def rewrite(self, m, **kw):
        """Rewrite m's config file in place (same listener ports), e.g. before
        a SIGHUP."""
        self.conf(path=m.conf_path, ports=(m.imaps_port, m.imap_port), **kw)

    def finish(self):
        """Stop every imapmux of the test; fail the test if one died of a
        signal, exited unasked, did not exit on SIGTERM, or (in a sanitizer
        build, IMAPMUX_BIN) reported a memory error."""
        problems = []
        for m in self.started:
            rc = m.returncode
            if rc is None:
                rc = m.stop(timeout=10)
                if rc == -signal.SIGKILL:
                    problems.append("imapmux (%s) did not exit within 10s of SIGTERM"
                                    % m.conf_path)
            # A test may make imapmux exit (expect_exit), but never die of a
            # signal other than the ones the test sent.
            elif not m.expect_exit:
                problems.append("imapmux (%s) exited during the test with status %s"
                                % (m.conf_path, rc))
            if rc is not None and rc < 0 and -rc not in (signal.SIGTERM, signal.SIGINT,
                                                         signal.SIGKILL):
                problems.append("imapmux (%s) died of signal %s"
                                % (m.conf_path, signal.Signals(-rc).name))
            log = m.log_text()
            for marker in ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer"):
                if marker in log and not (marker == "ERROR: LeakSanitizer" and m.allow_leaks):
                    i = log.index(marker)
                    problems.append("imapmux (%s) log: %s" % (m.conf_path, log[i:i + 3000]))
            m.stop()
            if problems or (_failed(self.request) and m.proc is not None):
                print(m.log_tail_text(60))
        if problems:
            pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture
def make_mux(request, tmp_path, cert, key):
    def get_dovecot():
        return request.getfixturevalue("dovecot")
    f = MuxFactory(request, tmp_path, cert, key, get_dovecot)
    yield f
    f.finish()


@pytest.fixture
def mux(make_mux):
    return make_mux()


# ---------------------------------------------------------------------------
# helpers for tests

@pytest.fixture
def client_tls(mux, ca_ctx):
    """A factory of connected implicit-TLS clients to the default mux."""
    import imapc
    clients = []

    def make(**kw):
        c = imapc.Client(mux.imaps_port, tls=ca_ctx, **kw)
        clients.append(c)
        return c
    yield make
    for c in clients:
        c.close()


def sanitized_build():
    """Is the imapmux under test an ASan/UBSan build (make SANITIZE=1)?"""
    try:
        r = subprocess.run(["ldd", lab.IMAPMUX], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return b"libasan" in r.stdout


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes more than a few seconds")
    config.addinivalue_line(
        "markers", "nosan: checks nothing ASan or UBSan would see (packaging, documents, a "
        "browser, timing): skipped when the build is SANITIZE=1, which CI runs second")
    # Never leave a child behind, whatever happens to the run.
    signal.signal(signal.SIGTERM, lambda *a: (lab.stop_all(), os._exit(143)))


def login_via(port, user, header, source=None, timeout=10.0):
    """A plain client on port that sends header (a PROXY header, or b"")
    first, then LOGINs as user (a lab user); the logged-in imapc.Client."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                 source_address=(source, 0) if source else None)
    s.sendall(header)
    c = imapc.Client(0, timeout=timeout, connect=False)
    c.sock = s
    assert c.greeting().startswith(b"* OK")
    _, t = c.cmd("l", "LOGIN %s %s" % (imapc.quote(user), imapc.quote(password(user))))
    assert t.startswith(b"l OK"), t
    return c


def dovecot_login_line(dv, user, since):
    """Dovecot's imap-login line for user's login, written after offset since."""
    def line():
        text = dv.log_text()[since:]
        got = [l for l in text.splitlines() if "imap-login: Info: Login: user=<%s>" % user in l]
        return got[-1] if got else None
    return wait_until(line, 5, lambda: "Dovecot's login line for %s in %r"
                      % (user, dv.log_text()[since:][-3000:]))


def wait_until(pred, timeout, what, interval=0.05):
    """Poll pred() until it is true; AssertionError after timeout seconds,
    saying what (a string, or a function returning one, called then).
    Returns pred's true value."""
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("%s: not true after %.1fs"
                                 % (what() if callable(what) else what, timeout))
        time.sleep(interval)


def scrape_metrics(port):
    """{sample name (with its labels): value} of imapmux's /metrics."""
    with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % port, timeout=5) as r:
        text = r.read().decode()
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, val = line.rsplit(None, 1)
            out[name] = float(val)
    return out


# ---------------------------------------------------------------------------
# what a process holds, from /proc (fd, socket and memory checks)

LOOPBACK_HEX = "0100007F"


def raise_nofile():
    """Raise the soft open-files limit to the hard one (inherited by the
    imapmux a test starts afterwards); a generator for module fixtures:
    the limit is put back after."""
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 65536
    if soft == resource.RLIM_INFINITY or soft >= want:
        yield
        return
    resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def socket_inodes(pid):
    """Inodes of the sockets process pid has open."""
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
    """{inode: (local port, remote addr hex, remote port, state hex)} of
    the host's IPv4 TCP sockets."""
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
    """[(local port, state hex)] of every TCP socket process pid holds to
    127.0.0.1:port. Sound under churn: the fds are listed first, and a
    socket closed since has inode 0 in the table, so every one counted was
    open at listing time."""
    inodes = socket_inodes(pid)
    tab = tcp_table()
    return sorted((tab[i][0], tab[i][3]) for i in inodes
                  if i in tab and tab[i][1] == LOOPBACK_HEX and tab[i][2] == port)


def proc_status_kib(pid, key):
    """A /proc/PID/status memory line in KiB ("VmRSS", "VmHWM")."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise AssertionError("no %s for pid %d" % (key, pid))


def links_asan(pid):
    """Is process pid an AddressSanitizer build (RSS means little there)?"""
    with open("/proc/%d/maps" % pid) as f:
        return "libasan" in f.read()


def pytest_collection_modifyitems(config, items):
    if not any(item.get_closest_marker("nosan") for item in items) or not sanitized_build():
        return
    skip = pytest.mark.skip(reason="nosan: run by the plain build's pass")
    for item in items:
        if item.get_closest_marker("nosan"):
            item.add_marker(skip)

