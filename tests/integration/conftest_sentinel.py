"""Redis with Sentinel on loopback, for test_sentinel.py and test_fleet.py:
real redis-server (a master and replicas) and real redis-sentinel processes
in a temporary directory, with timings short enough that a failover ends in
a few seconds. Test modules load the fixtures with
`pytest_plugins = ["conftest_redis", "conftest_sentinel"]`.

  SentinelGroup(replicas=1, sentinels=3, quorum=2, acl=None)
      .start()            master, replicas, sentinels; returns once every
                          sentinel knows the replicas and the other sentinels
                          (a failover can then be decided)
      .master             the lab.Redis-like node that is the master now
      .node(port)         the node listening on port
      .sentinels          [Sentinel]
      .sentinels_conf()   "127.0.0.1:P1, 127.0.0.1:P2, ..." for [redis] sentinels
      .kill_master()      SIGKILL the master; returns it
      .wait_failover(old, timeout)  until every sentinel names another master;
                          returns the new master node
      .wait_replicated(key, value)  until every live replica holds key = value
      .cleanup()
  sentinel_group          a function-scoped SentinelGroup() started for the test
                          (for tests that kill a node)
  shared_sentinel_group   a module-scoped one, for tests that leave every node up
                          (each test keeps to its own key prefix)
  ACL_USER, ACL_PASSWORD  the ACL user of SentinelGroup(acl=True) and acl_redis
  acl_redis               a redis-server whose default user is off and whose only
                          user is ACL_USER (`on >pw ~* &* +@all`)

Every wait is bounded; nothing here sleeps unbounded.
"""

import os
import shutil
import tempfile

import pytest

import lab
from conftest import wait_until

MASTER_NAME = "imapmux-it"
ACL_USER = "imapmux-acl"
ACL_PASSWORD = "acl-Pw-3187-x"
REDIS_SENTINEL = (shutil.which("redis-sentinel", path="/usr/bin:/usr/sbin:/bin:/sbin")
                  or "/usr/bin/redis-sentinel")

# A failover within a few seconds: down after 1 s of silence, a failed
# failover retried after 2 x 4 s.
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 4000


def _resp_cmd(port, args, auth=None, timeout=5.0):
    """One command on a connection of its own, after AUTH user password
    when auth = (user, password) is given; the decoded reply."""
    import socket
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        f = s.makefile("rb")
        for cmd in ([("AUTH",) + tuple(auth)] if auth else []) + [tuple(args)]:
            req = b"*%d\r\n" % len(cmd)
            for a in cmd:
                a = a if isinstance(a, bytes) else str(a).encode()
                req += b"$%d\r\n%s\r\n" % (len(a), a)
            s.sendall(req)
            reply = lab._resp_read(f)
        return reply


class Node(lab.Redis):
    """A redis-server with extra arguments (replicaof, ACL users); command()
    authenticates as the ACL user when the node has one."""

    def __init__(self, directory, extra=(), auth=None, name="redis"):
        super().__init__(directory=directory)
        self.extra = list(extra)
        self.auth = auth
        self.name = name

    def start(self, timeout=10.0):
        argv = [lab.REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                "--appendonly", "no", "--dir", self.dir, "--daemonize", "no",
                "--protected-mode", "yes"] + self.extra
        self.proc = lab.Proc(argv, self.name, log_path=self.log_path)
        lab.wait_listening(self.port, timeout=timeout, proc=self.proc)
        wait_until(lambda: self._pong(), timeout, "%s answers PING" % self.name)
        return self

    def _pong(self):
        try:
            return self.command("PING") == "PONG"
        except (OSError, lab.LabError):
            return False

    def command(self, *args, timeout=5.0):
        return _resp_cmd(self.port, args, auth=self.auth, timeout=timeout)

    def info(self, section):
        text = self.command("INFO", section)
        out = {}
        for line in text.splitlines():
            if ":" in line:
                k, v = line.split(":", 1)
                out[k] = v.strip()
        return out


class Sentinel:
    def __init__(self, directory, master_port, quorum, auth=None):
        self.port = lab.free_port()
        self.dir = directory
        os.makedirs(directory, exist_ok=True)
        self.conf_path = os.path.join(directory, "sentinel.conf")
        self.log_path = os.path.join(directory, "sentinel.log")
        lines = ["port %d" % self.port, "bind 127.0.0.1", "dir %s" % directory,
                 "daemonize no",
                 "sentinel monitor %s 127.0.0.1 %d %d" % (MASTER_NAME, master_port, quorum),
                 "sentinel down-after-milliseconds %s %d" % (MASTER_NAME, DOWN_AFTER_MS),
                 "sentinel failover-timeout %s %d" % (MASTER_NAME, FAILOVER_TIMEOUT_MS),
                 "sentinel parallel-syncs %s 1" % MASTER_NAME]
        if auth:
            lines += ["sentinel auth-user %s %s" % (MASTER_NAME, auth[0]),
                      "sentinel auth-pass %s %s" % (MASTER_NAME, auth[1])]
        with open(self.conf_path, "w") as f:
            f.write("\n".join(lines) + "\n")
        self.proc = None

    def start(self, timeout=10.0):
        self.proc = lab.Proc([REDIS_SENTINEL, self.conf_path], "sentinel",
                             log_path=self.log_path)
        lab.wait_listening(self.port, timeout=timeout, proc=self.proc)
        return self

    def command(self, *args, timeout=5.0):
        return _resp_cmd(self.port, args, timeout=timeout)

    def master_addr(self):
        return self.command("SENTINEL", "get-master-addr-by-name", MASTER_NAME)

    def stop(self):
        if self.proc is not None:
            self.proc.stop(3.0)

    def log_text(self):
        return self.proc.log_text() if self.proc else ""


class SentinelGroup:
    def __init__(self, replicas=1, sentinels=3, quorum=2, acl=False):
        self.dir = tempfile.mkdtemp(prefix="imapmux-sentinel-")
        os.chmod(self.dir, 0o755)
        self.auth = (ACL_USER, ACL_PASSWORD) if acl else None
        extra = []
        if acl:
            extra = ["--user", ACL_USER, "on", ">" + ACL_PASSWORD, "~*", "&*", "+@all",
                     "--user", "default", "off",
                     "--masteruser", ACL_USER, "--masterauth", ACL_PASSWORD]
        self.nodes = [Node(os.path.join(self.dir, "master"), extra, self.auth, "redis-master")]
        mport = self.nodes[0].port
        for i in range(replicas):
            self.nodes.append(Node(os.path.join(self.dir, "replica%d" % i),
                                   extra + ["--replicaof", "127.0.0.1", str(mport)],
                                   self.auth, "redis-replica%d" % i))
        self.sentinels = [Sentinel(os.path.join(self.dir, "sentinel%d" % i), mport, quorum,
                                   self.auth)
                          for i in range(sentinels)]
        self.master = self.nodes[0]

    def start(self, timeout=20.0):
        for n in self.nodes:
            n.start()
        for n in self.nodes[1:]:
            wait_until(lambda n=n: n.info("replication").get("master_link_status") == "up",
                       timeout, "%s replicates" % n.name)
        for s in self.sentinels:
            s.start()
        want_replicas = len(self.nodes) - 1
        want_peers = len(self.sentinels) - 1

        def ready(s):
            try:
                return (len(s.command("SENTINEL", "replicas", MASTER_NAME)) >= want_replicas
                        and len(s.command("SENTINEL", "sentinels", MASTER_NAME)) >= want_peers)
            except (OSError, lab.LabError):
                return False
        for s in self.sentinels:
            wait_until(lambda s=s: ready(s), timeout,
                       "sentinel %d knows %d replica(s) and %d other sentinel(s)"
                       % (s.port, want_replicas, want_peers), interval=0.2)
        return self

    def sentinels_conf(self):
        return ", ".join("127.0.0.1:%d" % s.port for s in self.sentinels)

    def node(self, port):
        return next(n for n in self.nodes if n.port == int(port))

    def kill_master(self):
        old = self.master
        old.proc.kill_hard()
        return old

    def wait_failover(self, old, timeout=30.0):
        """Until every live sentinel names a master other than old, and that
        node says it is a master; the new master."""
        def moved():
            addrs = set()
            for s in self.sentinels:
                if s.proc is None or not s.proc.alive():
                    continue
                try:
                    a = s.master_addr()
                except (OSError, lab.LabError):
                    return False
                addrs.add(tuple(a) if a else None)
            if len(addrs) != 1:
                return False
            a = addrs.pop()
            if a is None or int(a[1]) == old.port:
                return False
            try:
                return self.node(a[1]).command("ROLE")[0] == "master" and a
            except (OSError, lab.LabError):
                return False
        a = wait_until(moved, timeout, "the sentinels promote a replica of %d" % old.port,
                       interval=0.2)
        self.master = self.node(a[1])
        return self.master

    def wait_replicated(self, key, value, timeout=10.0):
        for n in self.nodes:
            if n is self.master or not n.alive():
                continue
            wait_until(lambda n=n: n.command("GET", key) == value, timeout,
                       "%s holds %s" % (n.name, key))

    def logs(self):
        out = []
        for s in self.sentinels:
            out.append("--- sentinel %d ---\n%s" % (s.port, "\n".join(
                s.log_text().splitlines()[-25:])))
        return "\n".join(out)

    def cleanup(self):
        for s in self.sentinels:
            s.stop()
        for n in self.nodes:
            n.stop()
        if not os.environ.get("IMAPMUX_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)


def _failed(request):
    rep = getattr(request.node, "rep_call", None)
    return rep is None or rep.failed


@pytest.fixture
def sentinel_group(request):
    g = SentinelGroup().start()
    yield g
    if _failed(request):
        print(g.logs())
    g.cleanup()


@pytest.fixture(scope="module")
def shared_sentinel_group():
    g = SentinelGroup().start()
    yield g
    g.cleanup()


@pytest.fixture
def acl_redis():
    d = tempfile.mkdtemp(prefix="imapmux-acl-")
    n = Node(d, ["--user", ACL_USER, "on", ">" + ACL_PASSWORD, "~*", "&*", "+@all",
                 "--user", "default", "off"], (ACL_USER, ACL_PASSWORD), "redis-acl")
    n.start()
    yield n
    n.stop()
    shutil.rmtree(d, ignore_errors=True)

