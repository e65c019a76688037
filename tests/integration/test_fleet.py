"""A fleet on loopback (issue #12, "Fleet"): two imapmux instances behind a
real HAProxy running deploy/haproxy.cfg itself (TCP, send-proxy-v2, health
checks on each instance's GET /health), sharing one Redis with Sentinel (a
master, a replica, three sentinels: conftest_sentinel.py) and two Dovecots.

  (a) logins through HAProxy work; imapmux and Dovecot see the client's own
      address (the PROXY header's)
  (b) imapmuxctl move kicks the user on both instances; the next login lands
      on the new backend
  (c) brute-force counters are shared: failures through one instance lock
      the user out on the other
  (d) one instance killed: HAProxy's health check marks it down and logins
      go on through the other; one SIGTERMed while a session is in a command:
      its /health says 503, HAProxy takes it out, the command completes
  (e) the Redis master killed: after the failover, logins that need Redis
      (routes, uncached, fallback = deny) work again

Each test has a fleet of its own (instances, HAProxy, a Redis key prefix);
the Sentinel group is the module's, except for (e), which kills its master.
Every wait is bounded.
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import urllib.request

import pytest

import imapc
import lab

pytest.register_assert_rewrite("conftest_redis")
from conftest_redis import (  # noqa: E402
    backend, connect, dv_password, login_cmd, placed_on, try_login, wait_until)
from conftest import dovecot_login_line  # noqa: E402
from conftest_sentinel import MASTER_NAME  # noqa: E402

pytest_plugins = ["conftest_redis", "conftest_sentinel"]

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
CTL = os.path.join(REPO, "tools", "imapmuxctl")
HAPROXY_CFG = os.path.join(REPO, "deploy", "haproxy.cfg")
HAPROXY = "/usr/sbin/haproxy"
LIMIT = 3


def ctl(conf, *args):
    return subprocess.run([CTL, "-c", conf] + list(args), capture_output=True, text=True,
                          timeout=30)


class Fleet:
    """The instances (make_mux's), HAProxy, the Sentinel group and the Dovecots.
    front.imaps_port is HAProxy's port, for conftest_redis's helpers."""

    class Front:
        pass

    def __init__(self, make_mux, group, prefix, rdv_a, rdv_b, cert, key):
        self.group = group
        self.prefix = prefix
        self.dvs = {"a": rdv_a, "b": rdv_b}
        self.muxes = []
        for _ in range(2):
            port, stats = lab.free_port(), lab.free_port()
            listens = [("imaps", {"address": "127.0.0.1:%d" % port, "tls": "implicit",
                                  "cert": cert, "key": key, "proxy_protocol": "yes",
                                  "proxy_trusted": "127.0.0.0/8"})]
            m = make_mux(
                listens=listens,
                backends=[("a", backend(rdv_a)), ("b", backend(rdv_b))],
                routing={"lookup": "redis", "fallback": "deny", "cache_ttl": 0},
                redis={"sentinels": group.sentinels_conf(), "master_name": MASTER_NAME,
                       "prefix": prefix, "timeout": "1s"},
                imapmux={"workers": 1, "auth": "backend", "auth_fail_delay": 0,
                         "auth_fail_limit": LIMIT, "auth_fail_window": "1m",
                         "stats_listen": "127.0.0.1:%d" % stats, "shutdown_timeout": 10})
            m.imaps_port, m.stats_port = port, stats
            lab.wait_listening([stats], timeout=10, proc=m.proc)
            self.muxes.append(m)
        self.front = Fleet.Front()
        self.front.imaps_port = lab.free_port()
        self.dir = tempfile.mkdtemp(prefix="imapmux-haproxy-")
        env = dict(os.environ,
                   IMAPMUX_FRONT="127.0.0.1:%d" % self.front.imaps_port,
                   IMAPMUX_CHECK_INTER="300ms", IMAPMUX_CHECK_FALL="2",
                   IMAPMUX_CHECK_RISE="1")
        for i, m in enumerate(self.muxes, 1):
            env["IMAPMUX_%d" % i] = "127.0.0.1:%d" % m.imaps_port
            env["IMAPMUX_%d_HEALTH" % i] = str(m.stats_port)
        # cwd: HAProxy's own directory, for anything it might write.
        self.haproxy = lab.Proc([HAPROXY, "-f", HAPROXY_CFG, "-db"], "haproxy",
                                log_path=os.path.join(self.dir, "haproxy.log"), cwd=self.dir,
                                env=env)
        lab.wait_listening([self.front.imaps_port], timeout=10, proc=self.haproxy)
        # Both instances subscribed on the master: events reach them.
        wait_until(lambda: self.numsub() >= 2, 10, "both instances subscribed on the master")

    def numsub(self):
        return int(self.group.master.command("PUBSUB", "NUMSUB", self.prefix + "events")[1])

    def route(self, user, name):
        self.group.master.command("SET", self.prefix + "route:" + user, name)

    def logged_in(self, m):
        with urllib.request.urlopen("http://127.0.0.1:%d/status" % m.stats_port,
                                    timeout=5) as r:
            return json.loads(r.read().decode())["sessions"]["logged_in"]

    def haproxy_log(self):
        return self.haproxy.log_text()

    def cleanup(self):
        self.haproxy.stop(3.0)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def make_fleet(make_mux, prefix, rdv_a, rdv_b, cert, key, request):
    fleets = []

    def make(group):
        f = Fleet(make_mux, group, prefix, rdv_a, rdv_b, cert, key)
        fleets.append(f)
        return f
    yield make
    rep = getattr(request.node, "rep_call", None)
    for f in fleets:
        if rep is None or rep.failed:
            print("--- haproxy ---\n" + "\n".join(f.haproxy_log().splitlines()[-30:]))
            print(f.group.logs())
        f.cleanup()


@pytest.fixture
def fleet(make_fleet, shared_sentinel_group):
    """A fleet on the module's Sentinel group (no Redis node is killed)."""
    return make_fleet(shared_sentinel_group)


def direct(m, ca_ctx, client_ip):
    """A TLS client straight to instance m, introduced by a PROXY v1 header
    as coming from client_ip (we connect from 127.0.0.1: trusted)."""
    s = socket.create_connection(("127.0.0.1", m.imaps_port), timeout=8)
    s.sendall(b"PROXY TCP4 %s 127.0.0.1 40000 993\r\n" % client_ip.encode())
    c = imapc.Client(m.imaps_port, timeout=8, connect=False)
    c.sock = ca_ctx.wrap_socket(s, server_hostname="127.0.0.1")
    c.greeting()
    return c


def _login(c, user, password, tag="l"):
    _, tagged = c.cmd(tag, login_cmd(user, password))
    return tagged


# ---------------------------------------------------------------------------

def test_a_login_through_haproxy_carries_the_client_address(fleet, ca_ctx):
    fleet.route("r20", "b")
    dv = fleet.dvs["b"]
    since = len(dv.log_text())
    with connect(fleet.front.imaps_port, ca_ctx, source="127.0.0.2") as c:
        assert _login(c, "r20", dv_password("r20")).startswith(b"l OK")
        c.cmd("o", "LOGOUT")
    # On backend b (the route), with HAProxy's client as rip.
    line = dovecot_login_line(dv, "r20", since)
    assert "rip=127.0.0.2" in line and "session=<imapmux-" in line, line
    # imapmux's own record names the client too (whichever instance had it).
    logs = "".join(m.log_text() for m in fleet.muxes)
    assert re.search(r"event=session_end .*client=127\.0\.0\.2:\d+ .*user=r20", logs), logs[-3000:]


def test_b_move_kicks_on_both_instances(fleet, ca_ctx):
    fleet.route("r21", "a")
    sessions = []
    for _ in range(2):
        c = connect(fleet.front.imaps_port, ca_ctx)
        assert _login(c, "r21", dv_password("r21")).startswith(b"l OK")
        sessions.append(c)
    # leastconn: the second session went to the instance without one.
    assert [fleet.logged_in(m) for m in fleet.muxes] == [1, 1]
    p = ctl(fleet.muxes[0].conf_path, "move", "r21", "b")
    assert p.returncode == 0, p.stderr
    assert "2 subscriber" in p.stdout, p.stdout
    for c in sessions:
        got = c.expect_closed(5)
        assert b"* BYE [UNAVAILABLE]" in got, got
    for _ in range(2):
        assert placed_on(fleet.front, ca_ctx, "r21", dv_password("r21"), fleet.dvs) == "b"


def test_c_brute_force_counts_are_shared(fleet, ca_ctx):
    fleet.route("r22", "a")
    fleet.route("r23", "a")
    m1, m2 = fleet.muxes
    for i in range(LIMIT):
        with direct(m1, ca_ctx, "192.0.2.50") as c:
            assert _login(c, "r22", "wrong-%d" % i).startswith(b"l NO [AUTHENTICATIONFAILED]")
    key = fleet.prefix + "authfail:user:r22"
    wait_until(lambda: fleet.group.master.command("GET", key) == str(LIMIT), 3,
               "the failures counted in Redis")
    # The other instance, another client address, the right password: refused.
    with direct(m2, ca_ctx, "192.0.2.51") as c:
        assert _login(c, "r22", dv_password("r22")).startswith(b"l NO [AUTHENTICATIONFAILED]")
    wait_until(lambda: "too many failures for this user" in m2.log_text(), 3,
               "instance 2 refused r22 for the failures counted by instance 1")
    # Through HAProxy too, whichever instance answers; another user is not concerned.
    for _ in range(2):
        assert try_login(fleet.front, ca_ctx, "r22", dv_password("r22")).startswith(
            b"l NO [AUTHENTICATIONFAILED]")
    assert try_login(fleet.front, ca_ctx, "r23", dv_password("r23")).startswith(b"l OK")


def test_d_a_killed_instance_is_taken_out(fleet, ca_ctx):
    fleet.route("r24", "b")
    assert placed_on(fleet.front, ca_ctx, "r24", dv_password("r24"), fleet.dvs) == "b"
    m1 = fleet.muxes[0]
    m1.expect_exit = True
    m1.proc.kill_hard()
    wait_until(lambda: re.search(r"Server imapmux/imapmux1 is DOWN", fleet.haproxy_log()), 10,
               lambda: "HAProxy marks imapmux1 down (%s)" % fleet.haproxy_log()[-1500:])
    for _ in range(4):
        assert placed_on(fleet.front, ca_ctx, "r24", dv_password("r24"), fleet.dvs) == "b"
    assert "imapmux2 is DOWN" not in fleet.haproxy_log()


def test_d_a_draining_instance_fails_its_health_check(fleet, ca_ctx):
    """SIGTERM with a session in the middle of a command: the instance drains
    (waits for it) and answers /health with 503; HAProxy takes it out for
    that (Layer 7) while the session finishes its command."""
    fleet.route("r26", "a")
    m1, m2 = fleet.muxes
    c = direct(m2, ca_ctx, "192.0.2.60")
    assert _login(c, "r26", dv_password("r26")).startswith(b"l OK")
    msg = b"Subject: drain\r\n\r\nbody\r\n"
    c.send(b"ap APPEND INBOX {%d}\r\n" % len(msg))
    assert c.readline().startswith(b"+"), "continuation for the literal"
    c.send(msg[:5])
    m2.signal(signal.SIGTERM)
    wait_until(lambda: re.search(r"imapmux2 is DOWN, reason: Layer7 wrong status, code: 503",
                                 fleet.haproxy_log()), 8,
               lambda: "HAProxy sees imapmux2's 503 (%s)" % fleet.haproxy_log()[-1500:])
    assert m2.alive(), "imapmux2 still drains (the APPEND is not done)"
    before = m2.log_text().count("event=session_end")
    assert placed_on(fleet.front, ca_ctx, "r26", dv_password("r26"), fleet.dvs) == "a"
    assert m2.log_text().count("event=session_end") == before   # m1 had it
    c.send(msg[5:] + b"\r\n")
    _, tagged = c.read_until_tagged("ap")
    assert tagged.startswith(b"ap OK"), tagged
    c.close()
    assert m2.wait(10) is not None, "imapmux2 exits once its last session is gone"
    m2.expect_exit = True


def test_e_logins_survive_a_redis_failover(make_fleet, sentinel_group, ca_ctx):
    fleet = make_fleet(sentinel_group)
    g = fleet.group
    fleet.route("r25", "b")
    g.wait_replicated(fleet.prefix + "route:r25", "b")
    assert placed_on(fleet.front, ca_ctx, "r25", dv_password("r25"), fleet.dvs) == "b"
    old = g.kill_master()
    new = g.wait_failover(old)

    def works():
        try:
            return placed_on(fleet.front, ca_ctx, "r25", dv_password("r25"), fleet.dvs) == "b"
        except (AssertionError, OSError):
            return False
    wait_until(works, 15, "a Redis-routed login through HAProxy after the failover",
               interval=0.3)
    moved = "command connection moved from 127.0.0.1:%d to 127.0.0.1:%d" % (old.port, new.port)
    for m in fleet.muxes:
        wait_until(lambda m=m: moved in m.log_text(), 15,
                   lambda m=m: "%s follows the master (%s)" % (m.conf_path, m.log_tail_text(20)))
    # Both instances' subscriber links followed: a move kicks on both.
    for _ in range(2):
        assert works()
    wait_until(lambda: fleet.numsub() >= 2, 15, "both instances subscribed on the new master")
    p = ctl(fleet.muxes[1].conf_path, "move", "r25", "a")
    assert p.returncode == 0 and "2 subscriber" in p.stdout, (p.stdout, p.stderr)
    assert placed_on(fleet.front, ca_ctx, "r25", dv_password("r25"), fleet.dvs) == "a"
