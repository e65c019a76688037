#!/usr/bin/python3
"""versuslib -- the world of bench/versus.py (issue #14), the same every run.

All on loopback, started with deploy/lab.py, each server a child in its own
process group:

  Dovecot   one lab.Dovecot: users bench00..bench19, password benchpw, three
            small messages in each INBOX and, in bench00's, one message of
            BIG_BYTES (20 MB) after them (UID 4), all written straight into
            the Maildirs before Dovecot starts; its plain port is the
            backend of both proxies, its implicit-TLS port the "direct"
            target.
  Redis     lab.Redis (imapmux's [redis]: routing stays static).
  imapmux   proxy/imapmux: one implicit-TLS listener, auth = backend, static
            routing to Dovecot's plain port, session reuse on (reuse_ttl),
            check_interval = 0, workers = 2 unless the caller says otherwise.
  nginx     Debian's nginx with its mail module (libnginx-mod-mail) as an
            IMAP proxy: implicit TLS, auth_http answered by an http server
            in the same nginx (Auth-Status OK, Auth-Server/Auth-Port =
            Dovecot's plain port: nginx then logs in to Dovecot with the
            client's own credentials, as imapmux's auth = backend does);
            worker_processes 2, master_process on, daemon off, its own -p
            prefix, -c config, error log, pid file and temp paths in its
            directory; nothing read from /etc/nginx.

The three TLS servers share one policy: the same self-signed ECDSA P-256
certificate, TLS 1.2 and 1.3 (clients here negotiate 1.3), X25519 first
(then P-256), OpenSSL's TLS 1.3 suites (AES-256-GCM first on all three).
"""

import grp
import os
import pwd
import shutil
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(REPO, "deploy"))
sys.path.insert(0, HERE)

import lab  # noqa: E402
import park  # noqa: E402  (BenchDovecot: a Dovecot whose Maildirs are filled before it starts)

NGINX = shutil.which("nginx", path="/usr/sbin:/usr/bin:/sbin:/bin") or "/usr/sbin/nginx"
NGINX_MAIL_MODULE = "/usr/lib/nginx/modules/ngx_mail_module.so"

USERS = ["bench%02d" % i for i in range(20)]
PASSWORD = "benchpw"
SMALL_MESSAGES = 3
BIG_USER = "bench00"
BIG_BYTES = 20 * 1000 * 1000
BIG_UID = SMALL_MESSAGES + 1
# Key-exchange groups, in each server's spelling.
CURVES_OPENSSL = "X25519:P-256"
CURVES_NGINX = "X25519:prime256v1"
# What nginx announces before login (after it, the client talks to Dovecot
# and sees Dovecot's own CAPABILITY): Dovecot's pre-login list, less
# STARTTLS (implicit TLS) and the AUTH= mechanisms nginx would have to offer
# itself (imap_auth is left at its default, plain: LOGIN and AUTHENTICATE
# PLAIN).
NGINX_IMAP_CAPABILITIES = ("IMAP4rev1", "SASL-IR", "LOGIN-REFERRALS", "ID", "ENABLE", "IDLE",
                           "LITERAL+")


def big_message(size=BIG_BYTES):
    """A text/plain message of exactly size bytes: headers, then 78-byte
    lines (76 characters and CRLF), the last one cut to fit."""
    head = ("From: bench <bench@localhost>\r\n"
            "To: %s@localhost\r\n"
            "Subject: versus bench, %d bytes\r\n"
            "Date: Mon, 02 Jan 2023 10:00:00 +0000\r\n"
            "Message-ID: <versus-big@imapmux.bench>\r\n"
            "MIME-Version: 1.0\r\n"
            "Content-Type: text/plain; charset=us-ascii\r\n"
            "\r\n" % (BIG_USER, size)).encode()
    line = (b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-+0123456789ab"
            b"\r\n")
    body_len = size - len(head)
    if body_len < 2:
        raise lab.LabError("big message of %d bytes is smaller than its headers" % size)
    body = line * (body_len // len(line))
    rest = body_len - len(body)
    if rest:
        body += line[:rest - 2] + b"\r\n" if rest >= 2 else b"\n"
    return head + body


class WorldDovecot(park.BenchDovecot):
    """park.BenchDovecot (SMALL_MESSAGES small messages per INBOX, written
    into cur/ before the start) plus one message of big_bytes in BIG_USER's
    INBOX, named to sort after the small ones: Dovecot gives a Maildir's new
    files their UIDs in file-name order, so it is UID BIG_UID."""

    def __init__(self, users, big_bytes, **kw):
        super().__init__(users, SMALL_MESSAGES, **kw)
        self.big_bytes = big_bytes

    def _write_files(self):
        super()._write_files()
        if not self.big_bytes or BIG_USER not in self.users:
            return
        uid, gid = lab.mail_owner()
        stamp = int(time.time()) + 1
        path = os.path.join(self.maildir(BIG_USER), "cur", "%d.M0P0.big:2," % stamp)
        with open(path, "wb") as f:
            f.write(big_message(self.big_bytes))
        os.chown(path, uid, gid)


def dovecot_extra_conf(sessions):
    """Room for sessions imap processes at once (the idle mode: one per
    session, direct or through nginx, whose backend connections are each a
    Dovecot session), the same curves as the proxies, and what Dovecot
    advertises to LITERAL+-aware clients left as it is."""
    procs = max(1000, sessions + 200)
    return ("ssl_curve_list = %s\n"
            "default_client_limit = %d\n"
            "service imap {\n  process_limit = %d\n}\n"
            "service imap-login {\n  client_limit = %d\n}\n"
            "protocol imap {\n  mail_max_userip_connections = %d\n}\n"
            % (CURVES_OPENSSL, procs * 2 + 1000, procs, procs + 1000, procs))


def start_dovecot(directory, cert, key, big_bytes=BIG_BYTES, sessions=0, users=None):
    """The world's Dovecot, started (bounded wait); users: {name: password}
    (default: bench00..bench19 with PASSWORD)."""
    users = users or {u: PASSWORD for u in USERS}
    dv = WorldDovecot(users, big_bytes, tls=True, cert=cert, key=key, directory=directory,
                      name="dovecot-versus", extra_conf=dovecot_extra_conf(sessions))
    dv.start(timeout=30)
    return dv


# ---------------------------------------------------------------------------
# nginx's mail proxy

def _nginx_user():
    """`user` for nginx's workers when we are root (nginx refuses to keep
    root for them): nobody and its group, or nogroup."""
    if os.geteuid() != 0:
        return ""
    pw = pwd.getpwnam("nobody")
    try:
        group = grp.getgrnam("nogroup").gr_name
    except KeyError:
        group = grp.getgrgid(pw.pw_gid).gr_name
    return "user nobody %s;\n" % group


def nginx_conf_text(directory, cert, key, port, auth_port, backend_port, workers=2,
                    worker_connections=4096):
    """nginx.conf for the mail proxy: everything under directory."""
    d = directory
    return """\
# Generated by bench/versuslib.py: nginx's IMAP proxy for bench/versus.py.
load_module {module};
{user}worker_processes {workers};
worker_rlimit_nofile {nofile};
daemon off;
master_process on;
pid {d}/nginx.pid;
error_log {d}/error.log notice;
events {{
    worker_connections {wc};
}}
http {{
    access_log off;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    # auth_http, answered here: every login goes to Dovecot's plain port,
    # which checks the client's own password.
    server {{
        listen 127.0.0.1:{auth_port};
        location = /auth {{
            add_header Auth-Status OK;
            add_header Auth-Server 127.0.0.1;
            add_header Auth-Port {backend_port};
            return 204;
        }}
    }}
}}
mail {{
    server_name localhost;
    auth_http 127.0.0.1:{auth_port}/auth;
    proxy_pass_error_message on;
    imap_capabilities {caps};
    ssl_certificate {cert};
    ssl_certificate_key {key};
    ssl_protocols TLSv1.2 TLSv1.3;
    ssl_ecdh_curve {curves};
    server {{
        listen 127.0.0.1:{port} ssl;
        protocol imap;
    }}
}}
""".format(module=NGINX_MAIL_MODULE, user=_nginx_user(), workers=workers,
           nofile=worker_connections * 2 + 64, d=d, wc=worker_connections, auth_port=auth_port,
           backend_port=backend_port, caps=" ".join(NGINX_IMAP_CAPABILITIES), cert=cert, key=key,
           curves=CURVES_NGINX, port=port)


class Nginx:
    """nginx -p DIR -c DIR/nginx.conf -e DIR/error.log, in the foreground
    (daemon off) with its master and worker_processes workers; proc.pid is
    the master (its workers are its children)."""

    def __init__(self, directory, cert, key, backend_port, port=None, auth_port=None,
                 workers=2, worker_connections=4096):
        self.dir = os.path.abspath(directory)
        os.makedirs(os.path.join(self.dir, "tmp"), exist_ok=True)
        os.chmod(self.dir, 0o755)
        self.port = port or lab.free_port()
        self.auth_port = auth_port or lab.free_port()
        self.conf_path = os.path.join(self.dir, "nginx.conf")
        self.log_path = os.path.join(self.dir, "error.log")
        self.stderr_path = os.path.join(self.dir, "nginx.stderr")
        self.text = nginx_conf_text(self.dir, cert, key, self.port, self.auth_port, backend_port,
                                    workers, worker_connections)
        self.proc = None

    def _argv(self, *extra):
        return [NGINX, "-p", self.dir + "/", "-c", self.conf_path, "-e", self.log_path, *extra]

    def check(self, timeout=20):
        """nginx -t on the configuration; raises LabError with its output."""
        r = subprocess.run(self._argv("-t", "-q"), capture_output=True, text=True,
                           timeout=timeout, stdin=subprocess.DEVNULL)
        if r.returncode != 0:
            raise lab.LabError("nginx -t failed:\n%s%s" % (r.stdout, r.stderr))

    def start(self, timeout=15.0, ca=None):
        if not os.access(NGINX, os.X_OK):
            raise lab.LabError("%s is not installed (make deps: nginx, libnginx-mod-mail)"
                               % NGINX)
        with open(self.conf_path, "w") as f:
            f.write(self.text)
        self.check()
        self.proc = lab.Proc(self._argv(), "nginx", log_path=self.stderr_path)
        try:
            lab.wait_listening([self.port, self.auth_port], timeout=timeout, proc=self.proc)
            if ca is not None:
                lab.wait_greeting(self.port, timeout=timeout, proc=self.proc,
                                  tls_context=lab.client_context(ca))
            self._wait_workers(timeout)
        except Exception:
            tail = self.log_tail_text()
            self.stop()
            raise lab.LabError("nginx did not start%s" % tail)
        return self

    def _wait_workers(self, timeout):
        want = int(self.text.split("worker_processes ", 1)[1].split(";", 1)[0])
        deadline = time.monotonic() + timeout
        while len(self.worker_pids()) < want:
            if time.monotonic() > deadline:
                raise lab.LabError("nginx has %d of its %d workers after %.0f s"
                                   % (len(self.worker_pids()), want, timeout))
            time.sleep(0.02)

    @property
    def pid(self):
        return self.proc.pid

    def worker_pids(self):
        """The master's live children (the workers), from /proc."""
        out = []
        for pid in lab.group_pids(self.proc.pgid):
            try:
                with open("/proc/%d/stat" % pid) as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            if ppid == self.proc.pid:
                out.append(pid)
        return sorted(out)

    def alive(self):
        return self.proc is not None and self.proc.alive()

    def stop(self, timeout=5.0):
        if self.proc is not None:
            self.proc.stop(timeout)

    def log_tail_text(self, n=30):
        lines = []
        for p in (self.stderr_path, self.log_path):
            try:
                with open(p, "rb") as f:
                    lines += f.read().decode("utf-8", "replace").splitlines()
            except OSError:
                pass
        return "\n--- last lines of %s ---\n%s" % (self.log_path, "\n".join(lines[-n:]))


def nginx_version():
    try:
        r = subprocess.run([NGINX, "-v"], capture_output=True, text=True, timeout=10,
                           stdin=subprocess.DEVNULL)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return (r.stderr or r.stdout).strip().replace("nginx version: nginx/", "") or "unknown"


def start_nginx(directory, cert, key, backend_port, workers=2, sessions=0):
    """The world's nginx mail proxy in front of backend_port, started and
    greeting over TLS (bounded waits)."""
    wc = max(4096, 2 * sessions + 256)
    return Nginx(directory, cert, key, backend_port, workers=workers,
                 worker_connections=wc).start(ca=cert)


# ---------------------------------------------------------------------------
# imapmux

def imapmux_conf(cert, key, port, dv, redis, workers=2, stats_port=None, imapmux_extra=None,
                 backend_extra=None, redis_prefix="versus:"):
    """lab.write_imapmux_conf keywords for the world's imapmux (a second
    instance gets a redis_prefix of its own: not one fleet with the first)."""
    backend = {"address": "127.0.0.1:%d" % dv.port, "tls": "none",
               "master_user": lab.MASTER_USER, "master_password": dv.master_password,
               "reuse_ttl": 300, "check_interval": 0}
    backend.update(backend_extra or {})
    top = {"workers": workers, "auth": "backend", "log_level": "warn", "shutdown_timeout": 5,
           "curves": CURVES_OPENSSL}
    if stats_port:
        top["stats_listen"] = "127.0.0.1:%d" % stats_port
    top.update(imapmux_extra or {})
    return {
        "imapmux": top,
        "listens": [("imaps", {"address": "127.0.0.1:%d" % port, "tls": "implicit",
                               "cert": cert, "key": key})],
        "redis": {"address": "127.0.0.1:%d" % redis.port, "prefix": redis_prefix},
        "routing": {"lookup": "static", "fallback": "a"},
        "backends": [("a", backend)],
    }


def start_imapmux(directory, cert, key, dv, redis, name="imapmux", workers=2, **kw):
    """An imapmux of the world, started (bounded wait); returns (Imapmux,
    the configuration's text)."""
    os.makedirs(directory, exist_ok=True)
    port = lab.free_port()
    conf_path = os.path.join(directory, name + ".conf")
    lab.write_imapmux_conf(conf_path, **imapmux_conf(cert, key, port, dv, redis, workers, **kw))
    r = lab.check_config(conf_path)
    if r.returncode != 0:
        raise lab.LabError("imapmux -t: %s%s" % (r.stdout, r.stderr))
    mux = lab.Imapmux(conf_path, os.path.join(directory, name + ".log"))
    mux.start(timeout=15)
    lab.wait_greeting(port, timeout=15, proc=mux.proc, tls_context=lab.client_context(cert))
    with open(conf_path) as f:
        return mux, f.read()
