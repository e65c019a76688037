#!/usr/bin/python3
"""lab -- real servers on loopback for imapmux's integration tests and demo.

Stdlib only (Debian 12's python3). What it starts, each as a child in its own
process group, all state under a directory of its own:

  Dovecot   dovecot -F -c DIR/dovecot.conf: plain IMAP on 127.0.0.1:PORT,
            optionally STARTTLS on the same port and implicit TLS on a second
            one; passwd-file users ({PLAIN} or {SHA512-CRYPT}), a master user
            (auth_master_user_separator = *), Maildir under DIR/mail owned by
            an unprivileged uid; nothing read from /etc/dovecot.
  Cyrus     Cyrus IMAP 3.6 master -C DIR/imapd.conf -M DIR/cyrus.conf, run as
            the user cyrus: imap on 127.0.0.1:PORT only, idled on a unix
            socket; sasldb users, autocreated INBOXes, a proxyservers master
            user (AUTHENTICATE PLAIN with an authzid) and optional admins
            (the only users Cyrus 3.6 offers UNAUTHENTICATE to); syslog goes
            to DIR/cyrus.log through a preloaded shim.
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


def _port_slice(first, last):
    """This process's share of [first, last]: under pytest-xdist (make
    integration JOBS=N) each worker draws from its own slice, so that two
    workers never pick the same port between its check and its bind."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    count = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if not worker.startswith("gw") or count < 2:
        return first, last
    i = int(worker[2:]) % count
    size = (last - first + 1) // count
    return first + i * size, first + (i + 1) * size - 1


def free_port():
    """A TCP port on 127.0.0.1 that nothing uses now and that this process
    has not handed out before. Taken below the kernel's ephemeral range
    (and above the demo's ports), so that no outgoing connection grabs it
    between now and the moment a server binds it."""
    import random
    lo, _ = _ephemeral_range()
    if lo > 21000:
        first, last = _port_slice(20000, lo - 1)
        for _ in range(200):
            port = random.randint(first, last)
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

    def __init__(self, argv, name, log_path=None, cwd=None, env=None, track=True, user=None):
        """user: (uid, gid) to run as, without supplementary groups (we may
        be root; Cyrus refuses to run as root)."""
        self.argv = list(argv)
        self.name = name
        self.log_path = log_path
        out = subprocess.DEVNULL
        if log_path:
            out = open(log_path, "ab")
        ids = {}
        if user is not None:
            ids = {"user": user[0], "group": user[1], "extra_groups": []}
        try:
            self.popen = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=out,
                                          stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                          start_new_session=True, close_fds=True, **ids)
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
auth_mechanisms = plain login{oauth_mechs}
# Any byte in user names (the default set is ASCII only): UTF-8 logins.
auth_username_chars =
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
mail_plugins = zlib{push_plugins}
mailbox_idle_check_interval = 1 secs

passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {dir}/master-users
  master = yes
  result_success = continue
}}
{oauth_passdb}passdb {{
  driver = passwd-file
  args = scheme=PLAIN username_format=%u {dir}/users{users_mechs}
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

# The oauth2 passdb (Dovecot 2.3, built into dovecot-core): only for the
# XOAUTH2 and OAUTHBEARER mechanisms, which the passwd-file passdb below then
# never sees (nor does this one see PLAIN passwords). The bearer token is the
# "password"; Dovecot checks it against the introspection endpoint and the
# user the client named against username_attribute.
OAUTH2_PASSDB = """\
passdb {{
  driver = oauth2
  mechanisms = xoauth2 oauthbearer
  args = {path}
}}
"""

# DIR/dovecot-oauth2.conf.ext. introspection_mode = post: a POST of
# "token=TOKEN" (application/x-www-form-urlencoded) to introspection_url;
# force_introspection: always ask the endpoint (no tokeninfo_url here);
# active_attribute/active_value: RFC 7662's "active": true is required.
OAUTH2_CONF = """\
introspection_mode = post
introspection_url = {url}
force_introspection = yes
username_attribute = username
active_attribute = active
active_value = true
timeout_msecs = 5000
"""

# The push_notification Lua driver: the notify framework, push_notification
# on it, mail_lua (the Lua storage API) and the driver itself.
PUSH_PLUGINS = " notify push_notification mail_lua push_notification_lua"
PUSH_LUA = os.path.join(REPO, "deploy", "dovecot", "imapmux-push.lua")


def push_lua_conf(settings):
    """The plugin { } block that loads imapmux-push.lua with settings."""
    lines = ["plugin {", "  push_notification_driver = lua:file=%s" % PUSH_LUA]
    for k, v in sorted(settings.items()):
        if "\n" in str(k) + str(v):
            raise LabError("bad push_lua setting %r" % k)
        lines.append("  %s = %s" % (k, v))
    return "\n# push_lua\n" + "\n".join(lines) + "\n}\n"


class Dovecot:
    """A real Dovecot on loopback.

    users: {name: password} stored as {PLAIN}, or {name: (password,
    "SHA512-CRYPT")} stored hashed. tls: also offer STARTTLS on port and
    implicit TLS on imaps_port with cert/key (made here when not given).
    extra_conf: text appended to the generated dovecot.conf (e.g.
    "imap_capability = +XFOOBAR").
    oauth2_url: None (the default: PLAIN and LOGIN only), or the URL of an
    RFC 7662 token introspection endpoint (http://127.0.0.1:PORT/...): then
    Dovecot also offers XOAUTH2 and OAUTHBEARER, checked by a passdb with
    driver = oauth2 (DIR/dovecot-oauth2.conf.ext, see OAUTH2_CONF) that
    POSTs token=TOKEN to the URL and wants {"active": true, "username":
    USER} back, USER the name the client gave; oauth2_conf adds lines to
    that file.
    push_lua: None (the default: no push notifications), or a dict of
    plugin settings ({"imapmux_redis": "127.0.0.1:PORT", "imapmux_prefix":
    ...}) for deploy/dovecot/imapmux-push.lua, which is then loaded as the
    push_notification Lua driver.
    """

    def __init__(self, users, port=None, tls=False, cert=None, key=None, imaps_port=None,
                 master_user=MASTER_USER, master_password="lab-master-secret",
                 directory=None, name="dovecot", extra_conf="", push_lua=None,
                 oauth2_url=None, oauth2_conf=""):
        self.users = dict(users)
        self.oauth2_url = oauth2_url
        self.oauth2_conf = oauth2_conf
        self.extra_conf = extra_conf
        self.push_lua = push_lua
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
        oauth_mechs = oauth_passdb = users_mechs = ""
        if self.oauth2_url:
            if "\n" in self.oauth2_url:
                raise LabError("bad oauth2_url %r" % self.oauth2_url)
            oauth2_path = os.path.join(self.dir, "dovecot-oauth2.conf.ext")
            text = OAUTH2_CONF.format(url=self.oauth2_url)
            if self.oauth2_conf:
                text += self.oauth2_conf.rstrip("\n") + "\n"
            self._write(oauth2_path, text)
            oauth_mechs = " xoauth2 oauthbearer"
            oauth_passdb = OAUTH2_PASSDB.format(path=oauth2_path)
            # A token is no password: a refused one is not tried on the
            # users' file (whose passdb would otherwise follow).
            users_mechs = "\n  mechanisms = plain login"
        login_user = "dovenull" if _user_exists("dovenull") else "nobody"
        internal_user = "dovecot" if _user_exists("dovecot") else "nobody"
        conf = _DOVECOT_CONF.format(
            dir=self.dir, instance="imapmux-lab-%d" % self.port, port=self.port,
            imaps_port=self.imaps_port if self.tls else 0, ssl="yes" if self.tls else "no",
            ssl_settings=ssl_settings, uid=uid, gid=gid, login_user=login_user,
            internal_user=internal_user, oauth_mechs=oauth_mechs, oauth_passdb=oauth_passdb,
            users_mechs=users_mechs,
            push_plugins=PUSH_PLUGINS if self.push_lua is not None else "")
        if self.push_lua is not None:
            conf += push_lua_conf(self.push_lua)
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
# Cyrus IMAP

# master and ctl_cyrusdb come with cyrus-common. imapd and idled come with
# cyrus-imapd, which Conflicts with dovecot-imapd: deploy/deps.sh unpacks the
# two binaries into CYRUS_UNPACKED instead of installing that package.
CYRUS_LIBEXEC = "/usr/lib/cyrus/bin"
CYRUS_UNPACKED = "/usr/local/lib/imapmux-cyrus"
CYRUS_USER = "cyrus"
CYRUS_ADMIN = "cyrusadmin"
CYRUS_SERVERNAME = "imapmux-lab"
SASLPASSWD2 = (shutil.which("saslpasswd2", path="/usr/sbin:/usr/bin:/sbin:/bin")
               or "/usr/sbin/saslpasswd2")


def cyrus_binary(name):
    """Path of a Cyrus program (master, ctl_cyrusdb, imapd, idled):
    $CYRUS_<NAME> if set, else the package's, else the one deps.sh unpacked."""
    path = os.environ.get("CYRUS_" + name.upper())
    if path:
        return path
    for d in (CYRUS_LIBEXEC, CYRUS_UNPACKED):
        path = os.path.join(d, name)
        if os.access(path, os.X_OK):
            return path
    raise LabError("Cyrus %s not found in %s or %s (run `make deps`)"
                   % (name, CYRUS_LIBEXEC, CYRUS_UNPACKED))


# Cyrus logs only through syslog(3), and a test machine may have no /dev/log.
# This is preloaded into master and its children (LD_PRELOAD survives their
# execv) and appends every message to LAB_LOG_PATH instead.
_SYSLOG_SHIM_C = r"""
/* Generated by deploy/lab.py: syslog(3) to a file. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <sys/time.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

static char lab_ident[64] = "?";
static int lab_mask = 0xff;

void openlog(const char *ident, int option, int facility)
{
	(void)option;
	(void)facility;
	if (ident)
		snprintf(lab_ident, sizeof lab_ident, "%s", ident);
}

void closelog(void)
{
}

int setlogmask(int mask)
{
	int old = lab_mask;

	if (mask != 0)
		lab_mask = mask;
	return old;
}

static size_t lab_add(size_t n, int k, size_t size)
{
	if (k < 0)
		return n;
	return n + (size_t)k < size ? n + (size_t)k : size - 1;
}

void vsyslog(int pri, const char *fmt, va_list ap)
{
	static const char *const level[] = {"emerg", "alert", "crit", "err",
					    "warning", "notice", "info", "debug"};
	int saved = errno;
	char buf[8192];
	struct timeval tv;
	struct tm tm;
	size_t n;
	int fd;

	if (!(LOG_MASK(LOG_PRI(pri)) & lab_mask))
		return;
	gettimeofday(&tv, NULL);
	localtime_r(&tv.tv_sec, &tm);
	n = strftime(buf, sizeof buf, "%Y-%m-%d %H:%M:%S", &tm);
	n = lab_add(n, snprintf(buf + n, sizeof buf - n, ".%03d %s[%d]: %s: ",
				(int)(tv.tv_usec / 1000), lab_ident, (int)getpid(),
				level[LOG_PRI(pri)]), sizeof buf);
	errno = saved; /* for %m */
	n = lab_add(n, vsnprintf(buf + n, sizeof buf - n, fmt, ap), sizeof buf);
	while (n > 0 && buf[n - 1] == '\n')
		n--;
	buf[n++] = '\n';
	fd = open(LAB_LOG_PATH, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
	if (fd >= 0) {
		ssize_t w = write(fd, buf, n);

		(void)w;
		close(fd);
	}
	errno = saved;
}

void syslog(int pri, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsyslog(pri, fmt, ap);
	va_end(ap);
}

void __syslog_chk(int pri, int flag, const char *fmt, ...)
{
	va_list ap;

	(void)flag;
	va_start(ap, fmt);
	vsyslog(pri, fmt, ap);
	va_end(ap);
}

void __vsyslog_chk(int pri, int flag, const char *fmt, va_list ap)
{
	(void)flag;
	vsyslog(pri, fmt, ap);
}
"""

_CYRUS_IMAPD_CONF = """\
# Generated by deploy/lab.py: a self-contained Cyrus imapd for imapmux's tests.
# Nothing here reads /etc/imapd.conf or /var/lib/cyrus.
configdirectory: {dir}/conf
partition-default: {dir}/spool
defaultpartition: default
sievedir: {dir}/sieve
temp_path: {dir}/tmp
idlesocket: {dir}/conf/socket/idle
lmtpsocket: {dir}/conf/socket/lmtp
notifysocket: {dir}/conf/socket/notify
ptloader_sock: {dir}/conf/socket/ptsock
servername: {servername}
# Cyrus 3.6 offers UNAUTHENTICATE (RFC 8437) to admins only.
admins: {admins}
# May authenticate as themselves and authorize as any user (SASL PLAIN authzid).
proxyservers: {proxyservers}
allowplaintext: yes
sasl_pwcheck_method: auxprop
sasl_auxprop_plugin: sasldb
sasl_sasldb_path: {dir}/sasldb2
sasl_mech_list: PLAIN LOGIN
# A user's INBOX is made at their first login (admins excepted: lab.py makes
# theirs at start).
autocreate_quota: 0
# The tests fail logins on purpose.
failedloginpause: 0
imapidlepoll: 1
"""

_CYRUS_CONF = """\
# Generated by deploy/lab.py: imap on 127.0.0.1:{port} and nothing else (no
# pop3, lmtp, sieve or http); idled on a unix socket in {dir}/conf/socket.
START {{
  recover cmd="{ctl_cyrusdb} -r -C {imapd_conf}"
}}
SERVICES {{
  imap cmd="{imapd} -C {imapd_conf}" listen="127.0.0.1:{port}" proto="tcp4" prefork=1
}}
DAEMON {{
  idled cmd="{idled} -C {imapd_conf}"
}}
"""


def _cyrus_owner():
    try:
        pw = pwd.getpwnam(CYRUS_USER)
    except KeyError:
        raise LabError("no user %r (cyrus-common creates it; run `make deps`)" % CYRUS_USER)
    return pw.pw_uid, pw.pw_gid


def _untraversable_parent(path, uid, gid):
    """The first ancestor of path that uid:gid (no other groups) cannot
    search, or None."""
    p = os.path.dirname(path)
    while True:
        st = os.stat(p)
        if st.st_uid == uid:
            bit = 0o100
        elif st.st_gid == gid:
            bit = 0o010
        else:
            bit = 0o001
        if not st.st_mode & bit:
            return p
        if p == "/":
            return None
        p = os.path.dirname(p)


class Cyrus:
    """A real Cyrus IMAP 3.6 (master, imapd, idled) on 127.0.0.1:port.

    Everything lives in its directory: imapd.conf, cyrus.conf, a sasldb with
    the passwords, configdirectory (conf/) and the mail spool (spool/); the
    daemons run as the unprivileged user cyrus. Logins are checked against
    the sasldb (LOGIN and AUTHENTICATE PLAIN/LOGIN, plaintext allowed without
    TLS; no TLS at all).

    users: {name: password} (a Dovecot-style (password, scheme) value is
    taken as its password). A user's INBOX is made at their first login.
    admins: names among users that are Cyrus admins. Cyrus 3.6 offers
    UNAUTHENTICATE (RFC 8437) only to admins, so only their sessions can use
    it; their INBOXes are made at start (Cyrus does not auto-create an
    admin's). Admins also see every user's mailboxes, as user/NAME.
    master_user/master_password: in proxyservers, not an admin: logs in as
    any user with AUTHENTICATE PLAIN "USER\\0master\\0password" (imap_as).
    admin_user/admin_password: a Cyrus admin without a mailbox (admin_imap).
    extra_conf: lines appended to imapd.conf.
    """

    def __init__(self, users, port=None, directory=None, name="cyrus",
                 master_user=MASTER_USER, master_password="lab-master-secret",
                 admins=(), admin_user=CYRUS_ADMIN, admin_password="lab-admin-secret",
                 extra_conf=""):
        self.users = dict(users)
        self.admins = tuple(admins)
        self.port = port or free_port()
        self.master_user = master_user
        self.master_password = master_password
        self.admin_user = admin_user
        self.admin_password = admin_password
        self.extra_conf = extra_conf
        self.name = name
        for a in self.admins:
            if a not in self.users:
                raise LabError("admin %r is not among the users" % a)
        for special in (master_user, admin_user):
            if special in self.users:
                raise LabError("%r is both a user and the master or admin user" % special)
        self.own_dir = directory is None
        if directory is None:
            directory = tempfile.mkdtemp(prefix="imapmux-%s-" % name)
        os.makedirs(directory, exist_ok=True)
        self.dir = os.path.abspath(directory)
        # cyrus.conf has no quoting; idled's socket path must fit sun_path.
        if any(ch in self.dir for ch in " \t\n\"'\\") or len(self.dir) > 80:
            raise LabError("unusable directory for Cyrus: %r" % self.dir)
        self.imapd_conf = os.path.join(self.dir, "imapd.conf")
        self.cyrus_conf = os.path.join(self.dir, "cyrus.conf")
        self.log_path = os.path.join(self.dir, "cyrus.log")
        self.stderr_path = os.path.join(self.dir, "master.stderr")
        self.shim_path = os.path.join(self.dir, "syslog-to-file.so")
        self.proc = None
        self.owner = None
        self.shim = None
        self.greeting = None
        self.start_seconds = None

    # -- files
    @staticmethod
    def _password(pw):
        if isinstance(pw, tuple):
            pw = pw[0]
        if not pw or any(ch in pw for ch in "\r\n\0"):
            raise LabError("password %r cannot go into a sasldb" % pw)
        return pw

    def _saslpasswd(self, user, password):
        if not user or any(ch in user for ch in " \t\r\n\0@/\"'\\"):
            raise LabError("bad user name %r" % user)
        r = subprocess.run([SASLPASSWD2, "-f", os.path.join(self.dir, "sasldb2"), "-c", "-p",
                            "-u", CYRUS_SERVERNAME, user],
                           input=self._password(password).encode(), capture_output=True,
                           timeout=30)
        if r.returncode != 0:
            raise LabError("saslpasswd2 %s failed: %s" % (user, r.stderr.decode(errors="replace")))

    def _build_shim(self):
        """Compile the syslog shim; on failure run without it (no log)."""
        src = os.path.join(self.dir, "syslog-to-file.c")
        with open(src, "w") as f:
            f.write(_SYSLOG_SHIM_C)
        cc = shutil.which("cc") or shutil.which("gcc") or "cc"
        try:
            r = subprocess.run([cc, "-shared", "-fPIC", "-O1", "-o", self.shim_path,
                                '-DLAB_LOG_PATH="%s"' % self.log_path, src],
                               capture_output=True, timeout=60)
            err = r.stderr.decode(errors="replace") if r.returncode else None
        except OSError as e:
            err = str(e)
        if err is not None:
            with open(self.stderr_path, "a") as f:
                f.write("lab: no Cyrus log (syslog shim not built: %s)\n" % err)
            return None
        return self.shim_path

    def _write_files(self):
        uid, gid = self.owner = _cyrus_owner()
        bad = _untraversable_parent(self.dir, uid, gid)
        if bad:
            raise LabError("user %s cannot reach %s (through %s)" % (CYRUS_USER, self.dir, bad))
        for sub in ("conf/db", "conf/proc", "conf/socket", "conf/log", "conf/msg",
                    "conf/user", "conf/quota", "conf/lock", "spool", "sieve", "tmp"):
            os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
        with open(self.imapd_conf, "w") as f:
            f.write(_CYRUS_IMAPD_CONF.format(
                dir=self.dir, servername=CYRUS_SERVERNAME,
                admins=" ".join((self.admin_user,) + self.admins),
                proxyservers=self.master_user))
            if self.extra_conf:
                f.write("# extra_conf\n" + self.extra_conf.rstrip("\n") + "\n")
        with open(self.cyrus_conf, "w") as f:
            f.write(_CYRUS_CONF.format(
                dir=self.dir, port=self.port, imapd_conf=self.imapd_conf,
                ctl_cyrusdb=cyrus_binary("ctl_cyrusdb"), imapd=cyrus_binary("imapd"),
                idled=cyrus_binary("idled")))
        for user, pw in sorted(self.users.items()):
            self._saslpasswd(user, pw)
        self._saslpasswd(self.master_user, self.master_password)
        self._saslpasswd(self.admin_user, self.admin_password)
        self.shim = self._build_shim()
        os.chown(self.dir, uid, gid)
        os.chmod(self.dir, 0o755)
        for root, dirs, files in os.walk(self.dir):
            for n in dirs + files:
                os.chown(os.path.join(root, n), uid, gid)
        os.chmod(os.path.join(self.dir, "sasldb2"), 0o600)

    # -- life
    def start(self, timeout=15.0):
        t0 = time.monotonic()
        self._write_files()
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"}
        if os.environ.get("TZ"):
            env["TZ"] = os.environ["TZ"]
        if self.shim:
            env["LD_PRELOAD"] = self.shim
        self.proc = Proc([cyrus_binary("master"), "-C", self.imapd_conf, "-M", self.cyrus_conf,
                          "-p", os.path.join(self.dir, "master.pid")], self.name,
                         log_path=self.stderr_path, cwd=self.dir, env=env, user=self.owner)
        try:
            self._wait_greeting(timeout)
            if self.admins:
                c = self.admin_imap()
                try:
                    for a in self.admins:
                        typ, data = c.create("user/" + a)
                        # (a restart on the same directory finds it)
                        if typ != "OK" and b"exists" not in b" ".join(data):
                            raise LabError("CREATE user/%s: %r" % (a, data))
                finally:
                    c.logout()
        except Exception as e:
            tail = self.log_tail_text()
            self.stop()
            raise LabError("Cyrus did not start: %s%s" % (e, tail)) from None
        self.start_seconds = time.monotonic() - t0
        return self

    def _bind_failed(self):
        text = self._read(self.log_path)
        return "unable to bind to imap" in text or "unable to create imap listener" in text

    def _wait_greeting(self, timeout):
        """Wait for master to listen and for an imapd's greeting. Master
        keeps running when it cannot bind the port: its log tells."""
        deadline = time.monotonic() + timeout
        last = None
        while True:
            _check_proc(self.proc, "Cyrus master")
            if self._bind_failed():
                raise LabError("master cannot listen on 127.0.0.1:%d" % self.port)
            listening = _listening_ports()
            if listening is None or self.port in listening:
                try:
                    # Short: the listener may be someone else's (bind failed).
                    line = read_greeting(self.port, timeout=1.0)
                    if line.startswith(b"* OK") and not self._bind_failed():
                        self.greeting = line
                        return
                    last = line
                except (OSError, LabError) as e:
                    last = e
            if time.monotonic() > deadline:
                raise LabError("no greeting on 127.0.0.1:%d within %.1fs (last: %r)"
                               % (self.port, timeout, last))
            time.sleep(0.02)

    def alive(self):
        return self.proc is not None and self.proc.alive()

    def stop(self, timeout=5.0):
        """SIGTERM master (it stops its children), then SIGKILL the group."""
        if self.proc is not None:
            self.proc.stop(timeout)

    def kill_hard(self):
        """SIGKILL master, imapd and idled at once (a crash)."""
        if self.proc is not None:
            self.proc.kill_hard()

    def cleanup(self):
        self.stop()
        if self.own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    @staticmethod
    def _read(path):
        try:
            with open(path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def log_text(self):
        """master's stderr, then everything Cyrus sent to syslog."""
        return self._read(self.stderr_path) + self._read(self.log_path)

    def log_tail_text(self, n=30):
        lines = self.log_text().splitlines()[-n:]
        return "\n--- last lines of %s ---\n%s" % (self.log_path, "\n".join(lines))

    # -- direct access (bypassing imapmux)
    def _connect(self, timeout):
        import imaplib
        return imaplib.IMAP4("127.0.0.1", self.port, timeout=timeout)

    def imap(self, user, password=None, timeout=30):
        """An imaplib connection to this Cyrus, logged in (LOGIN) as user."""
        c = self._connect(timeout)
        pw = password
        if pw is None:
            pw = self.users[user]
            if isinstance(pw, tuple):
                pw = pw[0]
        c.login(user, pw)
        return c

    def imap_as(self, user, timeout=30):
        """Logged in as user by the master user: AUTHENTICATE PLAIN with
        authzid user (how imapmux's auth = redis logs in)."""
        c = self._connect(timeout)
        token = ("%s\0%s\0%s" % (user, self.master_user, self.master_password)).encode()
        c.authenticate("PLAIN", lambda _challenge: token)
        return c

    def admin_imap(self, timeout=30):
        """Logged in as the Cyrus admin (sees every user's mailboxes)."""
        return self.imap(self.admin_user, self.admin_password, timeout=timeout)

    def append(self, user, message, mailbox="INBOX", flags=None):
        """APPEND message (bytes) as user directly; returns the new UID."""
        c = self.imap(user)
        try:
            typ, data = c.append(mailbox, flags, None, message)
            if typ != "OK":
                raise LabError("APPEND failed: %r" % data)
            text = data[0].decode() if data and data[0] else ""
            if "APPENDUID" in text:
                return int(text.split("APPENDUID", 1)[1].split("]")[0].split()[1])
            return None
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
