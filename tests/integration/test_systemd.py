"""imapmux under systemd: the readiness protocol (sd_notify(3), written in
proxy/sdnotify.c) spoken to a NOTIFY_SOCKET the test binds, as systemd's
would be, and deploy/imapmux.service checked by systemd-analyze verify."""

import os
import re
import shutil
import signal
import socket
import subprocess

import pytest

import imapc
import lab
from conftest import password


def _recv(sock, timeout=10):
    sock.settimeout(timeout)
    return dict(l.split("=", 1) for l in sock.recv(4096).decode().splitlines())


@pytest.mark.parametrize("abstract", [False, True], ids=["path", "abstract"])
def test_ready_reloading_stopping(make_mux, tmp_path, abstract):
    path, imaps_port, imap_port = make_mux.conf()
    name = "@imapmux-test-%d" % os.getpid() if abstract else str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name[1:] if abstract else name)
    env = dict(os.environ, NOTIFY_SOCKET=name)
    p = lab.Proc([lab.IMAPMUX, "-c", path], "imapmux", log_path=str(tmp_path / "mux.log"),
                 env=env)
    try:
        msg = _recv(sock)
        # READY only once the listeners take clients: the port answers now.
        assert msg["READY"] == "1" and msg["MAINPID"] == str(p.pid), msg
        assert "serving" in msg["STATUS"], msg
        for port in (imaps_port, imap_port):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
        # A reload: RELOADING with the monotonic clock, then READY again.
        before = int(open("/proc/uptime").read().split()[0].split(".")[0])
        p.signal(signal.SIGHUP)
        msg = _recv(sock)
        assert msg["RELOADING"] == "1", msg
        usec = int(msg["MONOTONIC_USEC"])
        assert abs(usec / 1e6 - before) < 60, (usec, before)
        msg = _recv(sock)
        assert msg["READY"] == "1" and "reloaded" in msg["STATUS"], msg
        # A reload that fails still ends in READY, saying why.
        with open(path, "a") as f:
            f.write("\n[imapmux]\nno_such_key = 1\n")
        p.signal(signal.SIGHUP)
        assert _recv(sock)["RELOADING"] == "1"
        msg = _recv(sock)
        assert msg["READY"] == "1" and "reload failed" in msg["STATUS"], msg
        # The stop.
        p.signal(signal.SIGTERM)
        msg = _recv(sock)
        assert msg["STOPPING"] == "1", msg
        assert p.wait(timeout=15) == 0
    finally:
        p.stop()
        sock.close()


def test_sigint_stops_at_once_saying_stopping(make_mux, tmp_path, dovecot):
    """SIGINT: STOPPING with "stopping", and no drain: a logged-in session
    that would hold a SIGTERM's drain open does not hold this one."""
    path, imaps_port, imap_port = make_mux.conf(imapmux={"shutdown_timeout": "30s"},
                                                plaintext_auth=True)
    name = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(name)
    p = lab.Proc([lab.IMAPMUX, "-c", path], "imapmux", log_path=str(tmp_path / "mux.log"),
                 env=dict(os.environ, NOTIFY_SOCKET=name))
    try:
        assert _recv(sock)["READY"] == "1"
        c = imapc.Client(imap_port, timeout=10)
        c.greeting()
        c.login("alice", password("alice"))
        c.send(b"a APPEND INBOX {100}\r\n")   # mid-literal: never quiet
        assert c.readline().startswith(b"+")
        p.signal(signal.SIGINT)
        msg = _recv(sock)
        assert msg["STOPPING"] == "1" and msg["STATUS"] == "stopping", msg
        assert p.wait(timeout=10) == 0      # not the 30 s drain (and, under ASan, no leak)
        with open(str(tmp_path / "mux.log")) as f:
            assert 'user=alice' in f.read().split(' end=stopped')[0].splitlines()[-1]
        c.close()
    finally:
        p.stop()
        sock.close()


def test_no_notify_socket_no_datagram_and_check_mode_silent(make_mux, tmp_path):
    """imapmux -t (ExecStartPre) never says READY, even with NOTIFY_SOCKET."""
    path, _, _ = make_mux.conf()
    name = str(tmp_path / "notify")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(name)
    sock.settimeout(0.5)
    r = subprocess.run([lab.IMAPMUX, "-t", "-c", path], capture_output=True, text=True,
                       timeout=10, env=dict(os.environ, NOTIFY_SOCKET=name))
    assert r.returncode == 0, r.stderr
    with pytest.raises(socket.timeout):
        sock.recv(4096)
    sock.close()


UNIT = os.path.join(lab.REPO, "deploy", "imapmux.service")


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze")
def test_unit_file_verifies(tmp_path):
    """systemd-analyze verify on deploy/imapmux.service, installed under a
    root of its own with the binaries its Exec lines name: no warning."""
    root = tmp_path / "root"
    for d in ("usr/sbin", "etc/systemd/system", "etc/imapmux", "usr/bin"):
        (root / d).mkdir(parents=True)
    shutil.copy(lab.IMAPMUX, root / "usr/sbin/imapmux")
    shutil.copy("/bin/kill", root / "usr/bin/kill")
    shutil.copy(UNIT, root / "etc/systemd/system/imapmux.service")
    # the targets it orders itself after, from this machine's systemd
    shutil.copytree("/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    r = subprocess.run(["systemd-analyze", "verify", "--root", str(root),
                        "/etc/systemd/system/imapmux.service"],
                       capture_output=True, text=True, timeout=60)
    out = r.stdout + r.stderr
    mine = [l for l in out.splitlines() if "imapmux.service" in l]
    assert r.returncode == 0 and not mine, out
    unit = open(UNIT).read()
    for line in ("Type=notify", "User=imapmux", "NoNewPrivileges=yes",
                 "ProtectSystem=strict", "PrivateTmp=yes",
                 "SystemCallFilter=@system-service",
                 "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
                 "AmbientCapabilities=CAP_NET_BIND_SERVICE"):
        assert re.search("^%s$" % re.escape(line), unit, re.M), line
    # Stop waits longer than imapmux's own drain (shutdown_timeout = 30 s).
    assert int(re.search(r"^TimeoutStopSec=(\d+)", unit, re.M).group(1)) > 30


def _same_build():
    """make arguments that keep the tree's build as it is: the build
    remembers its flags, and a SANITIZE=1 tree must not be rebuilt without."""
    ldd = subprocess.run(["ldd", lab.IMAPMUX], capture_output=True, text=True, timeout=10)
    return ["SANITIZE=1"] if "libasan" in ldd.stdout else []


def test_make_install_lays_out_the_files(tmp_path):
    """make install DESTDIR=... PREFIX=/usr SYSTEMD_UNIT_DIR=/lib/systemd/system:
    the files where the unit and an operator look for them, and the installed
    imapmux and imapmuxctl run."""
    dest = tmp_path / "dest"
    r = subprocess.run(["make", "-s", "-C", lab.REPO, "install", "DESTDIR=%s" % dest,
                        "PREFIX=/usr", "SYSTEMD_UNIT_DIR=/lib/systemd/system"] + _same_build(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    want = {"usr/sbin/imapmux": 0o755, "usr/sbin/imapmuxctl": 0o755,
            "usr/share/man/man8/imapmuxctl.8": 0o644,
            "usr/share/doc/imapmux/proxy.conf": 0o644,
            "usr/share/doc/imapmux/SPEC.md": 0o644,
            "usr/share/doc/imapmux/fail2ban/filter.d/imapmux.conf": 0o644,
            "usr/share/doc/imapmux/dovecot/imapmux-push.lua": 0o644,
            "lib/systemd/system/imapmux.service": 0o644}
    for rel, mode in want.items():
        st = os.stat(dest / rel)
        assert st.st_mode & 0o777 == mode, (rel, oct(st.st_mode))
    v = subprocess.run([str(dest / "usr/sbin/imapmux"), "-V"], capture_output=True, text=True,
                       timeout=10)
    assert v.returncode == 0 and "imapmux" in v.stdout + v.stderr, v
    h = subprocess.run([str(dest / "usr/sbin/imapmuxctl"), "-h"], capture_output=True,
                       text=True, timeout=10)
    assert h.returncode == 0 and "route" in h.stdout + h.stderr, h
    # Without SYSTEMD_UNIT_DIR no unit is put in place (only its copy in doc).
    dest2 = tmp_path / "dest2"
    r = subprocess.run(["make", "-s", "-C", lab.REPO, "install", "DESTDIR=%s" % dest2] + _same_build(),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert (dest2 / "usr/local/sbin/imapmux").exists()
    assert not (dest2 / "lib").exists()
