"""Listening sockets at start-up (issue #12): a second imapmux on the same
ports fails at once with a clear message unless every instance says
`reuseport = yes`; the stats port is bound before any IMAP listener, so a
stats port in use stops the start-up before a single client is taken.
"""

import socket
import subprocess
import time

import imapc
import lab
from conftest import password

TIMEOUT = 10.0


def _run(path):
    """Start imapmux on path and let it fail: (returncode, stderr)."""
    r = subprocess.run([lab.IMAPMUX, "-c", path], capture_output=True, text=True,
                       timeout=TIMEOUT, stdin=subprocess.DEVNULL)
    return r.returncode, r.stderr


def _login(port, ca_ctx, user="alice"):
    c = imapc.Client(port, tls=ca_ctx, timeout=TIMEOUT)
    c.greeting()
    _, t = c.cmd("l", "LOGIN %s %s" % (imapc.quote(user), imapc.quote(password(user))))
    assert t.startswith(b"l OK"), t
    c.close()


def test_second_instance_on_the_same_ports_fails_clearly(make_mux, ca_ctx):
    m = make_mux()
    path, _, _ = make_mux.conf(ports=(m.imaps_port, m.imap_port))
    rc, err = _run(path)
    assert rc == 1, err
    assert "address in use, by another process" in err and "reuseport = yes" in err, err
    _login(m.imaps_port, ca_ctx)   # the first one goes on


def test_reuseport_lets_instances_share_the_ports(make_mux, ca_ctx):
    m1 = make_mux(imapmux={"reuseport": "yes"})
    m2 = make_mux(imapmux={"reuseport": "yes"}, ports=(m1.imaps_port, m1.imap_port))
    for _ in range(6):
        _login(m1.imaps_port, ca_ctx)
    assert m1.returncode is None and m2.returncode is None


def test_stats_port_in_use_stops_the_start_before_any_listener(make_mux):
    busy = socket.socket()
    busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    port = busy.getsockname()[1]
    try:
        path, imaps_port, imap_port = make_mux.conf(
            imapmux={"stats_listen": "127.0.0.1:%d" % port})
        rc, err = _run(path)
        assert rc == 1, err
        assert "(stats_listen)" in err, err
        for p in (imaps_port, imap_port):   # never listened: nobody was taken
            s = socket.socket()
            try:
                assert s.connect_ex(("127.0.0.1", p)) != 0
            finally:
                s.close()
    finally:
        busy.close()


def test_open_files_soft_limit_raised_to_the_hard_one(make_mux):
    """At start the soft limit goes up to the hard limit, and max_connections
    = auto follows it: (limit - 256) / 2."""
    import resource
    path, imaps_port, _ = make_mux.conf()

    def limits():
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, 4096))
    p = subprocess.Popen([lab.IMAPMUX, "-c", path], stdin=subprocess.DEVNULL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                         preexec_fn=limits)
    try:
        lab.wait_listening([imaps_port], timeout=TIMEOUT)
        assert p.poll() is None
        time.sleep(0.5)   # the start-up's last log lines
        with open("/proc/%d/limits" % p.pid) as f:
            line = [l for l in f if l.startswith("Max open files")][0]
        assert line.split()[3:5] == ["4096", "4096"], line
    finally:
        p.terminate()
        _, err = p.communicate(timeout=TIMEOUT)
    assert "open-files limit raised from 1024 to 4096 (the hard limit)" in err, err
    assert "max_connections = auto: 1920 (from the open-files limit)" in err, err


def test_runs_as_user_and_group_once_bound(make_mux, ca_ctx):
    """user and group: the sockets (a port below 1024 would need root) are
    bound and the keys read first, then imapmux is that user for good."""
    import os
    import pwd
    if os.geteuid() != 0:
        import pytest
        pytest.skip("needs root to change user")
    nobody = pwd.getpwnam("nobody")
    m = make_mux(imapmux={"user": "nobody", "group": "nogroup"})
    with open("/proc/%d/status" % m.proc.pid) as f:
        status = dict(l.split(":", 1) for l in f if ":" in l)
    assert status["Uid"].split() == [str(nobody.pw_uid)] * 4, status["Uid"]
    assert status["Gid"].split()[0] == str(nobody.pw_gid), status["Gid"]
    assert status["Groups"].split() == [str(nobody.pw_gid)], status["Groups"]
    assert "running as user nobody (uid %d" % nobody.pw_uid in m.log_text()
    _login(m.imaps_port, ca_ctx)


def test_unknown_user_or_group_is_a_configuration_error(make_mux):
    for kv, why in (({"user": "no-such-user-here"}, "user 'no-such-user-here': no such user"),
                    ({"user": "nobody", "group": "no-such-group"},
                     "group 'no-such-group': no such group"),
                    ({"group": "nogroup"}, "group = nogroup needs a user = in [imapmux]")):
        path, _, _ = make_mux.conf(imapmux=kv)
        r = lab.check_config(path)
        assert r.returncode == 1 and why in r.stderr, r.stderr
