#!/usr/bin/python3
"""lab -- real servers on loopback for imapmux's integration tests and demo.

Stdlib only (Debian 12's python3). What it starts, each as a child in its own
process group, all state under a directory of its own:

  Dovecot   dovecot -F -c DIR/dovecot.conf: plain IMAP on 127.0.0.1:PORT,
            optionally STARTTLS on the same port and implicit TLS on a second
            one; passwd-file users ({PLAIN} or {SHA512-CRYPT}), a master user
            (auth_master_user_separator = *), Maildir under DIR/mail owned by
            an unprivileged uid; nothing read from /etc/dovecot.
  Redis     redis-server on 127.0.0.1:PORT, no persistence.
  imapmux   proxy/imapmux -c FILE, stderr to a log file.

Every wait is bounded; every process is stopped by stop() (SIGTERM, then
SIGKILL of its whole process group) and, as a last resort, at interpreter
exit. kill_hard() SIGKILLs a whole group at once (a backend "crash").

As a command (used by deploy/demo.sh):
  lab.py demo-start [--dir demo-run]     cert, Redis, Dovecot a and b, imapmux
  lab.py demo-stop  [--dir demo-run]
  lab.py demo-status [--dir demo-run]
"""

import atexit
import base64
import errno
import grp
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# IMAPMUX_BIN: run the tests against another build (e.g. a sanitizer one).
IMAPMUX = os.environ.get("IMAPMUX_BIN") or os.path.join(REPO, "proxy", "imapmux")
DOVECOT = shutil.which("dovecot", path="/usr/sbin:/usr/bin:/sbin:/bin") or "/usr/sbin/dovecot"
REDIS = shutil.which("redis-server", path="/usr/bin:/usr/sbin:/bin:/sbin") or "/usr/bin/redis-server"
OPENSSL = shutil.which("openssl", path="/usr/bin:/bin") or "/usr/bin/openssl"

MAIL_USER = "imapmux-mail"
MASTER_USER = "proxymaster"


class LabError(Exception):
    pass


# ---------------------------------------------------------------------------
# ports and waiting

_handed_out = set()


def _ephemeral_range():
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            lo, hi = (int(x) for x in f.read().split())
            return lo, hi
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(port):
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def free_port():
    """A TCP port on 127.0.0.1 that nothing uses now and that this process
    has not handed out before. Taken below the kernel's ephemeral range
    (and above the demo's ports), so that no outgoing connection grabs it
    between now and the moment a server binds it."""
    import random
    lo, _ = _ephemeral_range()
    if lo > 21000:
        for _ in range(200):
            port = random.randint(20000, lo - 1)
            if port not in _handed_out and _bindable(port):
                _handed_out.add(port)
                return port
    for _ in range(200):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        finally:
            s.close()
        if port not in _handed_out:
            _handed_out.add(port)
            return port
    raise LabError("no free port found")


def _listening_ports():
    """Ports in LISTEN state on this host (Linux /proc), or None."""
    ports = set()
    found = False
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(name) as f:
                next(f)
                for line in f:
                    parts = line.split()
                    if len(parts) > 3 and parts[3] == "0A":
                        ports.add(int(parts[1].rsplit(":", 1)[1], 16))
            found = True
        except OSError:
            pass
    return ports if found else None


def _check_proc(proc, what):
    if proc is not None and not proc.alive():
        raise LabError("%s exited (status %s) while waiting for it%s"
                       % (what, proc.returncode, proc.log_tail_text()))


def wait_listening(ports, timeout=10.0, proc=None, host="127.0.0.1"):
    """Wait until every port in ports is in LISTEN state. Does not connect
    (so the server sees no stray client) where /proc/net/tcp exists."""
    if isinstance(ports, int):
        ports = [ports]
    deadline = time.monotonic() + timeout
    while True:
        _check_proc(proc, "process")
        listening = _listening_ports()
        if listening is None:
            if all(_can_connect(host, p) for p in ports):
                return
        elif all(p in listening for p in ports):
            return
        if time.monotonic() > deadline:
            raise LabError("ports %s not listening after %.1fs%s" % (
                list(ports), timeout, proc.log_tail_text() if proc else ""))
        time.sleep(0.02)


def _can_connect(host, port):
    try:
        socket.create_connection((host, port), timeout=0.5).close()
        return True
    except OSError:
        return False


def wait_closed(port, timeout=10.0):
    """Wait until nothing listens on port any more."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listening = _listening_ports()
        if listening is not None and port not in listening:
            return
        if listening is None and not _can_connect("127.0.0.1", port):
            return
        time.sleep(0.02)
    raise LabError("port %d still listening after %.1fs" % (port, timeout))


def read_greeting(port, timeout=5.0, tls_context=None, host="127.0.0.1"):
    """Connect, read the first line (e.g. an IMAP greeting), close."""
    s = socket.create_connection((host, port), timeout=timeout)
    try:
        if tls_context is not None:
            s = tls_context.wrap_socket(s, server_hostname=host)
        buf = b""
        deadline = time.monotonic() + timeout
        while b"\n" not in buf:
            if time.monotonic() > deadline:
                raise LabError("no greeting on port %d" % port)
            chunk = s.recv(4096)
            if not chunk:
                raise LabError("port %d closed before greeting: %r" % (port, buf))
            buf += chunk
        return buf.split(b"\n", 1)[0] + b"\n"
    finally:
        s.close()


def wait_greeting(port, timeout=10.0, proc=None, prefix=b"* OK", tls_context=None):
    """Wait until a connection to port gets a line starting with prefix."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        _check_proc(proc, "server")
        try:
            line = read_greeting(port, timeout=max(0.5, deadline - time.monotonic()),
                                 tls_context=tls_context)
            if line.startswith(prefix):
                return line
            last = line
        except (OSError, LabError) as e:
            last = e
        time.sleep(0.05)
    raise LabError("no %r greeting on port %d within %.1fs (last: %r)%s"
                   % (prefix, port, timeout, last, proc.log_tail_text() if proc else ""))


# ---------------------------------------------------------------------------
# processes

_live = set()


class Proc:
    """A child in its own process group (session), with output to a file."""

    def __init__(self, argv, name, log_path=None, cwd=None, env=None, track=True):
        self.argv = list(argv)
        self.name = name
        self.log_path = log_path
        out = subprocess.DEVNULL
        if log_path:
            out = open(log_path, "ab")
        try:
            self.popen = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                          start_new_session=True, close_fds=True)
        finally:
            if log_path:
                out.close()
        self.pid = self.popen.pid
        self.pgid = self.pid
        self.track = track
        if track:
            _live.add(self)

    @property
    def returncode(self):
        return self.popen.poll()

    def alive(self):
        return self.popen.poll() is None

    def signal(self, sig):
        if self.alive():
            os.kill(self.pid, sig)

    def wait(self, timeout):
        """Wait up to timeout for the leader to exit; its status or None."""
        try:
            return self.popen.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None

    def _killpg(self, sig):
        try:
            os.killpg(self.pgid, sig)
        except ProcessLookupError:
            pass
        except PermissionError:
            pass

    def stop(self, timeout=5.0):
        """SIGTERM the group, wait up to timeout, then SIGKILL the group.
        The group is SIGKILLed in any case before the leader is reaped, so
        that no child (e.g. Dovecot's imap processes) outlives it."""
        if self.alive():
            self._killpg(signal.SIGTERM)
            self.wait(timeout)
        # While the leader is unreaped its pgid cannot be reused.
        self._killpg(signal.SIGKILL)
        self.wait(5.0)
        _live.discard(self)
        return self.returncode

    def kill_hard(self):
        """SIGKILL the whole process group at once (leader and children)."""
        self._killpg(signal.SIGKILL)
        self.wait(5.0)
        _wait_group_gone(self.pgid, 5.0)
        _live.discard(self)

    def group_pids(self):
        return group_pids(self.pgid)

    def log_text(self):
        if not self.log_path:
            return ""
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_tail_text(self, n=30):
        text = self.log_text()
        if not text:
            return ""
        lines = text.splitlines()[-n:]
        return "\n--- last lines of %s ---\n%s" % (self.log_path, "\n".join(lines))


def group_pids(pgid):
    """Pids whose process group is pgid (from /proc), zombies excluded."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                stat = f.read()
        except OSError:
            continue
        rest = stat.rsplit(")", 1)[1].split()
        if rest[0] != "Z" and int(rest[2]) == pgid:
            pids.append(int(d))
    return pids


def pid_alive(pid):
    """True if pid exists and is not a zombie."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _wait_group_gone(pgid, timeout):
    deadline = time.monotonic() + timeout
    while group_pids(pgid) and time.monotonic() < deadline:
        time.sleep(0.02)


def stop_all():
    for p in list(_live):
        try:
            p.stop(timeout=2.0)
        except Exception:
            pass


atexit.register(stop_all)


# ---------------------------------------------------------------------------
# TLS material and passwords

def make_cert(directory, name="cert", cn="localhost", key_type="rsa"):
    """Self-signed certificate for CN=localhost, SAN DNS:localhost and
    IP:127.0.0.1. Returns (cert_path, key_path)."""
    os.makedirs(directory, exist_ok=True)
    cert = os.path.join(directory, name + ".pem")
    keyname = name.replace("cert", "key") if "cert" in name else name + "-key"
    key = os.path.join(directory, keyname + ".pem")
    if key_type == "rsa":
        newkey = ["-newkey", "rsa:2048"]
    else:
        newkey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"]
    argv = [OPENSSL, "req", "-x509", "-nodes", "-days", "3650", *newkey,
            "-keyout", key, "-out", cert, "-subj", "/CN=" + cn,
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
            "-addext", "basicConstraints=critical,CA:TRUE"]
    r = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
    if r.returncode != 0:
        raise LabError("openssl req failed: %s" % r.stderr.decode(errors="replace"))
    os.chmod(key, 0o600)
    os.chmod(cert, 0o644)
    return cert, key


def client_context(cafile):
    """A client SSLContext that trusts exactly cafile (hostname checked)."""
    ctx = ssl.create_default_context(cafile=cafile)
    return ctx


def sha512_crypt(password):
    """A $6$ crypt(3) string for password, made by `openssl passwd -6`."""
    r = subprocess.run([OPENSSL, "passwd", "-6", "-stdin"], input=password.encode() + b"\n",
                       capture_output=True, timeout=30)
    if r.returncode != 0:
        raise LabError("openssl passwd failed: %s" % r.stderr.decode(errors="replace"))
    return r.stdout.decode().strip()


# ---------------------------------------------------------------------------
# the unprivileged owner of the mail

_mail_owner = None


def mail_owner():
    """(uid, gid) that owns test mail: the system user imapmux-mail, created
    when missing (we run as root), else nobody/nogroup."""
    global _mail_owner
    if _mail_owner is not None:
        return _mail_owner
    try:
        pw = pwd.getpwnam(MAIL_USER)
        _mail_owner = (pw.pw_uid, pw.pw_gid)
        return _mail_owner
    except KeyError:
        pass
    if os.geteuid() == 0 and shutil.which("useradd", path="/usr/sbin:/sbin:/usr/bin"):
        r = subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                            "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin",
                            MAIL_USER], capture_output=True, timeout=30)
        try:
            pw = pwd.getpwnam(MAIL_USER)
            _mail_owner = (pw.pw_uid, pw.pw_gid)
            return _mail_owner
        except KeyError:
            sys.stderr.write("lab: useradd %s failed (%s); using nobody\n"
                             % (MAIL_USER, r.stderr.decode(errors="replace").strip()))
    pw = pwd.getpwnam("nobody")
    try:
        gid = grp.getgrnam("nogroup").gr_gid
    except KeyError:
        gid = pw.pw_gid
    _mail_owner = (pw.pw_uid, gid)
    return _mail_owner


def _user_exists(name):
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


# ---------------------------------------------------------------------------
# Dovecot

_DOVECOT_CONF = """\
# Generated by deploy/lab.py: a self-contained Dovecot for imapmux's tests.
# Nothing here includes /etc/dovecot.
base_dir = {dir}/run
state_dir = {dir}/state
instance_name = {instance}
log_path = {dir}/dovecot.log
info_log_path = {dir}/dovecot.log
debug_log_path = {dir}/dovecot.log
log_timestamp = "%Y-%m-%d %H:%M:%S "
protocols = imap
listen = 127.0.0.1
shutdown_clients = yes
default_login_user = {login_user}
default_internal_user = {internal_user}
default_vsz_limit = 1G
default_client_limit = 2000
default_process_limit = 1000

ssl = {ssl}
{ssl_settings}
disable_plaintext_auth = no
auth_mechanisms = plain login
auth_master_user_separator = *
auth_failure_delay = 0
auth_cache_size = 0
auth_verbose = yes
login_trusted_networks = 127.0.0.0/8
verbose_proctitle = yes

first_valid_uid = {uid}
last_valid_uid = {uid}
first_valid_gid = {gid}
last_valid_gid = {gid}
mail_location = maildir:~/Maildir
mail_plugins = zlib
mailbox_idle_check_interval = 1 secs

passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {dir}/master-users
  master = yes
  result_success = continue
}}
passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {dir}/users
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {dir}/users
}}

service imap-login {{
  inet_listener imap {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener imaps {{
    address = 127.0.0.1
    port = {imaps_port}
    ssl = yes
  }}
  process_min_avail = 1
  service_count = 0
  client_limit = 1000
}}
service imap {{
  process_limit = 1000
}}
# No auth penalty: the tests fail logins from 127.0.0.1 on purpose.
service anvil {{
  client_limit = 5000
  unix_listener anvil-auth-penalty {{
    mode = 0
  }}
}}
protocol imap {{
  mail_plugins = $mail_plugins imap_zlib
  mail_max_userip_connections = 1000
}}
"""


class Dovecot:
    """A real Dovecot on loopback.

    users: {name: password} stored as {PLAIN}, or {name: (password,
    "SHA512-CRYPT")} stored hashed. tls: also offer STARTTLS on port and
    implicit TLS on imaps_port with cert/key (made here when not given).
    extra_conf: text appended to the generated dovecot.conf (e.g.
    "imap_capability = +XFOOBAR").
    """

    def __init__(self, users, port=None, tls=False, cert=None, key=None, imaps_port=None,
                 master_user=MASTER_USER, master_password="lab-master-secret",
                 directory=None, name="dovecot", extra_conf=""):
        self.users = dict(users)
        self.extra_conf = extra_conf
        self.port = port or free_port()
        self.tls = tls
        self.imaps_port = (imaps_port or free_port()) if tls else None
        self.master_user = master_user
        self.master_password = master_password
        self.name = name
        self.own_dir = directory is None
        if directory is None:
            directory = tempfile.mkdtemp(prefix="imapmux-%s-" % name)
        os.makedirs(directory, exist_ok=True)
        # Dovecot's unprivileged processes (auth as 'dovecot', imap as the
        # mail owner) must be able to traverse it.
        os.chmod(directory, 0o755)
        self.dir = os.path.abspath(directory)
        self.cert, self.key = cert, key
        if tls and not cert:
            self.cert, self.key = make_cert(self.dir, "cert")
        self.conf_path = os.path.join(self.dir, "dovecot.conf")
        self.log_path = os.path.join(self.dir, "dovecot.log")
        self.stderr_path = os.path.join(self.dir, "dovecot.stderr")
        self.mail_root = os.path.join(self.dir, "mail")
        self.proc = None

    # -- files
    def _write_files(self):
        uid, gid = mail_owner()
        for sub in ("run", "state"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        os.makedirs(self.mail_root, exist_ok=True)
        os.chown(self.mail_root, uid, gid)
        os.chmod(self.mail_root, 0o755)
        lines = []
        for user, pw in sorted(self.users.items()):
            if ":" in user or "\n" in user:
                raise LabError("bad user name %r" % user)
            if isinstance(pw, tuple):
                pw, scheme = pw
            else:
                scheme = "PLAIN"
            if scheme.upper() == "SHA512-CRYPT":
                stored = "{SHA512-CRYPT}" + sha512_crypt(pw)
            elif scheme.upper() == "PLAIN":
                if ":" in pw or "\n" in pw:
                    raise LabError("password for %r needs a hashed scheme" % user)
                stored = "{PLAIN}" + pw
            else:
                raise LabError("unknown scheme %r" % scheme)
            home = os.path.join(self.mail_root, user)
            lines.append("%s:%s:%d:%d::%s::\n" % (user, stored, uid, gid, home))
        self._write(os.path.join(self.dir, "users"), "".join(lines))
        self._write(os.path.join(self.dir, "master-users"),
                    "%s:{SHA512-CRYPT}%s\n" % (self.master_user,
                                               sha512_crypt(self.master_password)))
        ssl_settings = ""
        if self.tls:
            ssl_settings = ("ssl_cert = <%s\nssl_key = <%s\nssl_min_protocol = TLSv1.2\n"
                            % (self.cert, self.key))
        login_user = "dovenull" if _user_exists("dovenull") else "nobody"
        internal_user = "dovecot" if _user_exists("dovecot") else "nobody"
        conf = _DOVECOT_CONF.format(
            dir=self.dir, instance="imapmux-lab-%d" % self.port, port=self.port,
            imaps_port=self.imaps_port if self.tls else 0, ssl="yes" if self.tls else "no",
            ssl_settings=ssl_settings, uid=uid, gid=gid, login_user=login_user,
            internal_user=internal_user)
        if self.extra_conf:
            conf += "\n# extra_conf\n" + self.extra_conf.rstrip("\n") + "\n"
        self._write(self.conf_path, conf)

    @staticmethod
    def _write(path, text):
        with open(path, "w") as f:
            f.write(text)
        os.chmod(path, 0o644)

    # -- life
    def start(self, timeout=15.0):
        self._write_files()
        self.proc = Proc([DOVECOT, "-F", "-c", self.conf_path], self.name,
                         log_path=self.stderr_path)
        try:
            wait_greeting(self.port, timeout=timeout, proc=self.proc)
            if self.tls:
                wait_greeting(self.imaps_port, timeout=timeout, proc=self.proc,
                              tls_context=client_context(self.cert))
        except Exception:
            tail = self.log_tail_text()
            self.stop()
            raise LabError("Dovecot did not start%s" % tail)
        return self

    def alive(self):
        return self.proc is not None and self.proc.alive()

    def stop(self, timeout=5.0):
        if self.proc is not None:
            self.proc.stop(timeout)

    def kill_hard(self):
        """SIGKILL Dovecot's whole process group: master, login and imap
        processes die at once, as in a crash or an OOM kill."""
        if self.proc is not None:
            self.proc.kill_hard()

    def cleanup(self):
        self.stop()
        if self.own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def log_text(self):
        out = []
        for p in (self.stderr_path, self.log_path):
            try:
                with open(p, "rb") as f:
                    out.append(f.read().decode("utf-8", "replace"))
            except OSError:
                pass
        return "".join(out)

    def log_tail_text(self, n=30):
        lines = self.log_text().splitlines()[-n:]
        return "\n--- last lines of %s ---\n%s" % (self.log_path, "\n".join(lines))

    def maildir(self, user):
        return os.path.join(self.mail_root, user, "Maildir")

    # -- direct access (bypassing imapmux)
    def imap(self, user, password=None, timeout=30):
        """An imaplib connection to this Dovecot, logged in as user."""
        import imaplib
        c = imaplib.IMAP4("127.0.0.1", self.port, timeout=timeout)
        pw = password
        if pw is None:
            pw = self.users[user]
            if isinstance(pw, tuple):
                pw = pw[0]
        c.login(user, pw)
        return c

    def append(self, user, message, mailbox="INBOX", flags=None):
        """APPEND message (bytes) as user directly; returns the new UID."""
        c = self.imap(user)
        try:
            typ, data = c.append(mailbox, flags, None, message)
            if typ != "OK":
                raise LabError("APPEND failed: %r" % data)
            uid = None
            text = data[0].decode() if data and data[0] else ""
            if "APPENDUID" in text:
                uid = int(text.split("APPENDUID", 1)[1].split("]")[0].split()[1])
            return uid
        finally:
            try:
                c.logout()
            except Exception:
                pass


# ---------------------------------------------------------------------------
# Redis

class Redis:
    def __init__(self, port=None, directory=None):
        self.port = port or free_port()
        self.own_dir = directory is None
        self.dir = os.path.abspath(directory or tempfile.mkdtemp(prefix="imapmux-redis-"))
        os.makedirs(self.dir, exist_ok=True)
        self.log_path = os.path.join(self.dir, "redis.log")
        self.proc = None

    def start(self, timeout=10.0):
        argv = [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self.dir, "--daemonize", "no",
                "--protected-mode", "yes"]
        self.proc = Proc(argv, "redis", log_path=self.log_path)
        wait_listening(self.port, timeout=timeout, proc=self.proc)
        deadline = time.monotonic() + timeout
        while True:
            try:
                if self.command("PING") == "PONG":
                    return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise LabError("redis did not answer PING%s" % self.proc.log_tail_text())
            time.sleep(0.05)

    def command(self, *args, timeout=5.0):
        """Send one command (RESP), return the decoded reply."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            req = b"*%d\r\n" % len(args)
            for a in args:
                a = a if isinstance(a, bytes) else str(a).encode()
                req += b"$%d\r\n%s\r\n" % (len(a), a)
            s.sendall(req)
            f = s.makefile("rb")
            return _resp_read(f)

    def alive(self):
        return self.proc is not None and self.proc.alive()

    def stop(self, timeout=5.0):
        if self.proc is not None:
            self.proc.stop(timeout)

    def cleanup(self):
        self.stop()
        if self.own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


def _resp_read(f):
    line = f.readline()
    if not line:
        raise OSError("redis closed the connection")
    t, rest = line[:1], line[1:].rstrip(b"\r\n")
    if t == b"+":
        return rest.decode()
    if t == b"-":
        raise LabError("redis error: %s" % rest.decode())
    if t == b":":
        return int(rest)
    if t == b"$":
        n = int(rest)
        if n < 0:
            return None
        data = f.read(n + 2)
        return data[:-2].decode("utf-8", "replace")
    if t == b"*":
        n = int(rest)
        return None if n < 0 else [_resp_read(f) for _ in range(n)]
    raise LabError("bad redis reply %r" % line)


# ---------------------------------------------------------------------------
# imapmux

def _conf_value(v):
    if isinstance(v, bool):
        return "yes" if v else "no"
    return str(v)


def imapmux_conf_text(imapmux=None, listens=(), backends=(), routing=None, redis=None,
                      extra=""):
    """proxy.conf text. imapmux/routing/redis: dicts of key -> value;
    listens/backends: sequences of (name, dict). None values are left out."""
    out = ["# Generated by deploy/lab.py\n"]

    def section(header, kv):
        out.append("\n[%s]\n" % header)
        for k, v in kv.items():
            if v is not None:
                out.append("%s = %s\n" % (k, _conf_value(v)))

    section("imapmux", imapmux or {})
    for name, kv in listens:
        section("listen %s" % name, kv)
    if redis is not None:
        section("redis", redis)
    if routing is not None:
        section("routing", routing)
    for name, kv in backends:
        section("backend %s" % name, kv)
    out.append(extra)
    return "".join(out)


def write_imapmux_conf(path, **kw):
    text = imapmux_conf_text(**kw)
    with open(path, "w") as f:
        f.write(text)
    return path


def listen_ports_of(conf_text):
    """The ports of every [listen ...] address in a proxy.conf text."""
    ports = []
    in_listen = False
    for raw in conf_text.splitlines():
        line = raw.split("#", 1)[0].split(";", 1)[0].strip()
        if line.startswith("["):
            in_listen = line[1:].split()[0].rstrip("]") == "listen"
            continue
        if in_listen and "=" in line:
            k, v = (x.strip() for x in line.split("=", 1))
            if k == "address" and not v.startswith("unix:"):
                ports.append(int(v.rsplit(":", 1)[1]))
    return ports


class Imapmux:
    """proxy/imapmux -c conf_path, stderr (and stdout) to log_path."""

    def __init__(self, conf_path, log_path, binary=IMAPMUX, cwd=None):
        self.conf_path = conf_path
        self.log_path = log_path
        self.binary = binary
        self.cwd = cwd
        self.proc = None
        with open(conf_path) as f:
            self.ports = listen_ports_of(f.read())

    def start(self, timeout=10.0, track=True):
        if not os.access(self.binary, os.X_OK):
            raise LabError("%s is not built (make proxy/imapmux)" % self.binary)
        self.proc = Proc([self.binary, "-c", self.conf_path], "imapmux",
                         log_path=self.log_path, cwd=self.cwd, track=track)
        try:
            wait_listening(self.ports, timeout=timeout, proc=self.proc)
        except Exception:
            self.stop()
            raise
        return self

    @property
    def pid(self):
        return self.proc.pid

    def alive(self):
        return self.proc is not None and self.proc.alive()

    @property
    def returncode(self):
        return self.proc.returncode if self.proc else None

    def signal(self, sig):
        self.proc.signal(sig)

    def wait(self, timeout):
        return self.proc.wait(timeout)

    def stop(self, timeout=5.0):
        if self.proc is not None:
            return self.proc.stop(timeout)
        return None

    def log_text(self):
        return self.proc.log_text() if self.proc else ""

    def log_tail_text(self, n=40):
        return self.proc.log_tail_text(n) if self.proc else ""


def check_config(conf_path, binary=IMAPMUX, timeout=10):
    """Run `imapmux -t -c conf_path`; returns CompletedProcess (text)."""
    return subprocess.run([binary, "-t", "-c", conf_path], capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


# ---------------------------------------------------------------------------
# demo

DEMO_PASSWORD = "demo-pass"
DEMO_MASTER_PASSWORD = "demo-master-secret"
DEMO_REDIS_PORT = 16379
DEMO_BACKENDS = (("a", 11143, ("alice", "carol")), ("b", 11144, ("bob",)))
DEMO_LISTEN_PORTS = (9993, 9143)


def _pidfile_pid(path):
    try:
        with open(path) as f:
            pid = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return pid


def _demo_pidfiles(d):
    return [os.path.join(d, n) for n in ("imapmux.pid", "dovecot-a.pid", "dovecot-b.pid",
                                         "redis.pid")]


def demo_running(d):
    return [p for p in _demo_pidfiles(d) if _pidfile_pid(p)]


def _write_pid(path, pid):
    with open(path, "w") as f:
        f.write("%d\n" % pid)


def _welcome(user, backend):
    return ("From: imapmux demo <demo@localhost>\r\n"
            "To: %s@localhost\r\n"
            "Subject: Welcome, %s\r\n"
            "Date: %s\r\n"
            "Message-ID: <welcome-%s@imapmux.demo>\r\n"
            "MIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=utf-8\r\n"
            "\r\n"
            "Hello %s, this mailbox lives on backend %s behind imapmux.\r\n"
            % (user, user, time.strftime("%a, %d %b %Y %H:%M:%S +0000", time.gmtime()),
               user, user, backend)).encode()


def demo_start(d, imapmux_conf="proxy.conf"):
    d = os.path.abspath(d)
    if demo_running(d):
        print("demo: already running (pid files in %s); run `make demo-stop` first" % d)
        return 2
    # A fresh demo every time: old mail, logs and pid files go.
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    os.chmod(d, 0o755)
    busy = [p for p in (DEMO_REDIS_PORT, 11143, 11144) + DEMO_LISTEN_PORTS + (9100,)
            if _can_connect("127.0.0.1", p)]
    if busy:
        print("demo: ports already in use: %s" % ", ".join(map(str, busy)), file=sys.stderr)
        return 1
    started = []
    try:
        cert, key = make_cert(d, "cert")
        print("demo: certificate %s (CN=localhost, SAN 127.0.0.1)" % cert)

        redis = Redis(port=DEMO_REDIS_PORT, directory=os.path.join(d, "redis"))
        redis.start()
        started.append(redis.proc)
        _write_pid(os.path.join(d, "redis.pid"), redis.proc.pid)
        print("demo: redis-server on 127.0.0.1:%d" % DEMO_REDIS_PORT)

        backends = []
        for name, port, users in DEMO_BACKENDS:
            dv = Dovecot({u: (DEMO_PASSWORD, "SHA512-CRYPT") for u in users}, port=port,
                         master_password=DEMO_MASTER_PASSWORD,
                         directory=os.path.join(d, "dovecot-" + name), name="dovecot-" + name)
            dv.start()
            started.append(dv.proc)
            _write_pid(os.path.join(d, "dovecot-%s.pid" % name), dv.proc.pid)
            backends.append(dv)
            for u in users:
                dv.append(u, _welcome(u, name))
                redis.command("SET", "imapmux:route:" + u, name)
                redis.command("HSET", "imapmux:user:" + u, "password", sha512_crypt(DEMO_PASSWORD))
            print("demo: Dovecot %s on 127.0.0.1:%d (users: %s)" % (name, port, ", ".join(users)))

        conf = os.path.join(REPO, imapmux_conf) if not os.path.isabs(imapmux_conf) else imapmux_conf
        if not os.path.exists(conf):
            raise LabError("%s is missing" % conf)
        mux = Imapmux(conf, os.path.join(d, "imapmux.log"), cwd=REPO)
        mux.start(track=False)
        started.append(mux.proc)
        _write_pid(os.path.join(d, "imapmux.pid"), mux.proc.pid)
        ports = mux.ports or list(DEMO_LISTEN_PORTS)
        print("demo: imapmux pid %d listening on %s (log %s)"
              % (mux.proc.pid, ", ".join("127.0.0.1:%d" % p for p in ports), mux.log_path))
    except Exception as e:
        print("demo: start failed: %s" % e, file=sys.stderr)
        for p in reversed(started):
            p.stop(2.0)
        for pf in _demo_pidfiles(d):
            try:
                os.unlink(pf)
            except OSError:
                pass
        return 1
    # Leave the demo running after this process exits.
    for p in started:
        _live.discard(p)
    return 0


def demo_stop(d):
    d = os.path.abspath(d)
    any_stopped = False
    for pf in _demo_pidfiles(d):
        pid = _pidfile_pid(pf)
        if pid:
            name = os.path.basename(pf)[:-4]
            # Each was started as a process-group leader.
            try:
                os.killpg(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.05)
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            print("demo: stopped %s (pid %d)" % (name, pid))
            any_stopped = True
        try:
            os.unlink(pf)
        except OSError:
            pass
    if not any_stopped:
        print("demo: nothing running")
    return 0


def demo_status(d):
    running = demo_running(os.path.abspath(d))
    for pf in _demo_pidfiles(os.path.abspath(d)):
        pid = _pidfile_pid(pf)
        print("%-10s %s" % (os.path.basename(pf)[:-4], "pid %d" % pid if pid else "stopped"))
    return 0 if running else 3


def main(argv):
    import argparse
    ap = argparse.ArgumentParser(prog="lab.py", description=__doc__.split("\n")[0])
    ap.add_argument("cmd", choices=["demo-start", "demo-stop", "demo-status"])
    ap.add_argument("--dir", default=os.path.join(REPO, "demo-run"))
    ap.add_argument("--conf", default="proxy.conf", help="imapmux config for demo-start")
    a = ap.parse_args(argv)
    if a.cmd == "demo-start":
        return demo_start(a.dir, a.conf)
    if a.cmd == "demo-stop":
        return demo_stop(a.dir)
    return demo_status(a.dir)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
