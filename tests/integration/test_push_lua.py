"""deploy/dovecot/imapmux-push.lua, the Dovecot push_notification Lua driver
(SPEC "Redis schema"): a real Dovecot 2.3 (lab.Dovecot(push_lua=...)) loads
it, a real redis-server carries `mbox USER MAILBOX` on <prefix>events, and a
raw-socket SUBSCRIBE sees what arrives. Clients are imaplib and dovecot-lda.

Every action is followed by events(): the events of the action's user until
the channel has been quiet for QUIET seconds, so each test asserts the exact
list (one event per mailbox per transaction, nothing twice, nothing else).
The script publishes while Dovecot commits, before the tagged OK: QUIET
only has to cover Redis delivering to the subscriber.
"""

import os
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

import lab

MSG = b"From: a@example.org\r\nSubject: push\r\n\r\nbody\r\n"
QUIET = 0.5
WAIT = 5.0
SPACE_USER = "space user"
USERS = {u: "pw-%s-Lq3" % u.replace(" ", "-") for u in (
    "inbox", "spacebox", "utf8", "seen", "keyword", "expunge", "five", "move", "lda",
    "prefix", "down", "silent", "restart", "pass", "acl", "unix", "ipv6", SPACE_USER)}
LDA = "/usr/lib/dovecot/dovecot-lda"


# ---------------------------------------------------------------------------
# a Redis subscriber on a raw socket

class Subscriber:
    """SUBSCRIBE channel on the Redis at address ((host, port) or a unix
    socket path); auth: None, (password,) or (username, password)."""

    def __init__(self, address, channel, auth=None):
        if isinstance(address, tuple):
            self.sock = socket.create_connection(address, timeout=WAIT)
        else:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(WAIT)
            self.sock.connect(address)
        self.buf = b""
        self.channel = channel.encode()
        if auth is not None:
            self._send("AUTH", *auth)
            assert self._reply(time.monotonic() + WAIT) == b"OK"
        self._send("SUBSCRIBE", channel)
        assert self._reply(time.monotonic() + WAIT) == [b"subscribe", self.channel, 1]

    def _send(self, *args):
        req = b"*%d\r\n" % len(args)
        for a in args:
            a = a.encode()
            req += b"$%d\r\n%s\r\n" % (len(a), a)
        self.sock.sendall(req)

    def _parse(self, pos):
        """One RESP value at self.buf[pos:]: (value, end), or None if the
        buffer does not hold all of it yet."""
        eol = self.buf.find(b"\r\n", pos)
        if eol < 0:
            return None
        kind, line = self.buf[pos:pos + 1], self.buf[pos + 1:eol]
        pos = eol + 2
        if kind in (b"+", b"-"):
            return line, pos
        if kind == b":":
            return int(line), pos
        if kind == b"$":
            n = int(line)
            if len(self.buf) < pos + n + 2:
                return None
            return self.buf[pos:pos + n], pos + n + 2
        if kind == b"*":
            items = []
            for _ in range(int(line)):
                got = self._parse(pos)
                if got is None:
                    return None
                items.append(got[0])
                pos = got[1]
            return items, pos
        raise AssertionError("bad RESP from redis: %r" % self.buf[pos - len(line) - 3:])

    def _reply(self, deadline):
        """The next RESP value, or None at deadline."""
        while True:
            got = self._parse(0)
            if got is not None:
                self.buf = self.buf[got[1]:]
                return got[0]
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except socket.timeout:
                return None
            assert data, "redis closed the subscriber's connection"
            self.buf += data

    def events(self, user, first=WAIT, quiet=QUIET):
        """The payloads for user (b"mbox USER ..."), as a list: waits up to
        first seconds for one, then until quiet seconds pass without one."""
        head = b"mbox " + user.encode() + b" "
        out = []
        deadline = time.monotonic() + first
        while True:
            msg = self._reply(deadline)
            if msg is None:
                return out
            assert msg[:2] == [b"message", self.channel], msg
            if msg[2].startswith(head):
                out.append(msg[2])
                deadline = time.monotonic() + quiet

    def close(self):
        self.sock.close()


def mbox(user, mailbox):
    return ("mbox %s %s" % (user, mailbox)).encode()


# ---------------------------------------------------------------------------
# servers of this module's own

def _dovecot(settings, **kw):
    d = lab.Dovecot(USERS, push_lua=settings, name="dovecot-push", **kw)
    d.start()
    return d


@pytest.fixture(scope="module")
def push_redis():
    r = lab.Redis()
    r.start()
    yield r
    r.cleanup()


@pytest.fixture(scope="module")
def push_dovecot(push_redis):
    # Dovecot refuses user names with a space unless told otherwise.
    d = _dovecot({"imapmux_redis": "127.0.0.1:%d" % push_redis.port},
                 extra_conf="auth_username_chars =")
    yield d
    d.cleanup()


@pytest.fixture
def sub(push_redis):
    s = Subscriber(("127.0.0.1", push_redis.port), "imapmux:events")
    yield s
    s.close()


@pytest.fixture
def make_dovecot(request):
    """make_dovecot(settings) -> a started lab.Dovecot of this test's own."""
    made = []

    def make(settings, **kw):
        made.append(_dovecot(settings, **kw))
        return made[-1]

    yield make
    rep = getattr(request.node, "rep_call", None)
    for d in made:
        if rep is None or rep.failed:
            print(d.log_tail_text(40))
        d.cleanup()


@pytest.fixture
def own_redis():
    """A redis-server of this test's own (it may stop, restart or lock it)."""
    made = []

    def make():
        made.append(lab.Redis().start())
        return made[-1]

    yield make
    for r in made:
        r.cleanup()


def imap(dv, user):
    # A quoted user name: imaplib sends the name as it is given.
    return dv.imap('"%s"' % user, USERS[user], timeout=10)


def append(c, mailbox="INBOX"):
    """APPEND MSG on c; returns the seconds it took."""
    t = time.monotonic()
    typ, data = c.append(mailbox, None, None, MSG)
    took = time.monotonic() - t
    assert typ == "OK", data
    return took


def ok(reply):
    typ, data = reply
    assert typ == "OK", data
    return data


def wait_log(dv, needle, timeout=WAIT):
    deadline = time.monotonic() + timeout
    while needle not in dv.log_text():
        if time.monotonic() > deadline:
            raise AssertionError("%r not in Dovecot's log%s" % (needle, dv.log_tail_text()))
        time.sleep(0.05)


def warnings(dv):
    return [ln for ln in dv.log_text().splitlines() if "imapmux-push:" in ln]


# ---------------------------------------------------------------------------
# what is published

def test_append_inbox(push_dovecot, sub):
    c = imap(push_dovecot, "inbox")
    append(c)
    assert sub.events("inbox") == [mbox("inbox", "INBOX")]
    c.logout()


def test_mailbox_name_with_spaces_is_exact(push_dovecot, sub):
    c = imap(push_dovecot, "spacebox")
    ok(c.create('"Old  Sent Items "'))
    append(c, '"Old  Sent Items "')
    assert sub.events("spacebox") == [mbox("spacebox", "Old  Sent Items ")]
    c.logout()


def test_non_ascii_mailbox_arrives_as_dovecot_names_it(push_dovecot, sub):
    # Modified UTF-7 on the wire; Dovecot's name for it (and so the event's)
    # is UTF-8.
    c = imap(push_dovecot, "utf8")
    ok(c.create("Entw&APw-rfe"))
    append(c, "Entw&APw-rfe")
    assert sub.events("utf8") == [b"mbox utf8 Entw\xc3\xbcrfe"]
    c.logout()


def test_seen_set_and_cleared(push_dovecot, sub):
    c = imap(push_dovecot, "seen")
    append(c)
    assert sub.events("seen") == [mbox("seen", "INBOX")]
    ok(c.select("INBOX"))
    ok(c.store("1", "+FLAGS", r"(\Seen)"))
    assert sub.events("seen") == [mbox("seen", "INBOX")]
    ok(c.store("1", "-FLAGS", r"(\Seen)"))
    assert sub.events("seen") == [mbox("seen", "INBOX")]
    c.logout()


def test_keyword_set_and_cleared(push_dovecot, sub):
    c = imap(push_dovecot, "keyword")
    append(c)
    assert sub.events("keyword") == [mbox("keyword", "INBOX")]
    ok(c.select("INBOX"))
    ok(c.store("1", "+FLAGS", "($Label1)"))
    assert sub.events("keyword") == [mbox("keyword", "INBOX")]
    ok(c.store("1", "-FLAGS", "($Label1)"))
    assert sub.events("keyword") == [mbox("keyword", "INBOX")]
    c.logout()


def test_expunge(push_dovecot, sub):
    c = imap(push_dovecot, "expunge")
    append(c)
    append(c)
    assert sub.events("expunge") == [mbox("expunge", "INBOX")] * 2
    ok(c.select("INBOX"))
    ok(c.store("1:2", "+FLAGS.SILENT", r"(\Deleted)"))
    assert sub.events("expunge") == [mbox("expunge", "INBOX")]
    assert ok(c.expunge()) == [b"2", b"1"]
    assert sub.events("expunge") == [mbox("expunge", "INBOX")]
    c.logout()


def test_one_event_per_mailbox_per_transaction(push_dovecot, sub):
    c = imap(push_dovecot, "five")
    for _ in range(5):
        append(c)
    assert sub.events("five") == [mbox("five", "INBOX")] * 5
    ok(c.create("Copies"))
    ok(c.select("INBOX"))
    # One STORE, one COPY: a transaction each, over 5 messages.
    ok(c.store("1:5", "+FLAGS.SILENT", r"(\Flagged)"))
    assert sub.events("five") == [mbox("five", "INBOX")]
    ok(c.copy("1:5", "Copies"))
    assert sub.events("five") == [mbox("five", "Copies")]
    c.logout()


def test_move_tells_both_mailboxes(push_dovecot, sub):
    c = imap(push_dovecot, "move")
    append(c)
    assert sub.events("move") == [mbox("move", "INBOX")]
    ok(c.create('"Moved Here"'))
    ok(c.select("INBOX"))
    ok(c._simple_command("MOVE", "1", '"Moved Here"'))
    assert sorted(sub.events("move")) == [mbox("move", "INBOX"), mbox("move", "Moved Here")]
    c.logout()


def test_delivery_is_message_new(push_dovecot, sub):
    # dovecot-lda saves with MAILBOX_FLAG_POST_SESSION: MessageNew, not
    # MessageAppend.
    p = subprocess.run([LDA, "-c", push_dovecot.conf_path, "-d", "lda"], input=MSG,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=WAIT)
    assert p.returncode == 0, p.stdout
    assert sub.events("lda") == [mbox("lda", "INBOX")]


def test_user_name_with_space_is_skipped_and_logged(push_dovecot, sub):
    c = imap(push_dovecot, SPACE_USER)
    append(c)
    assert sub.events(SPACE_USER, first=1.0) == []
    wait_log(push_dovecot, "imapmux-push: user name '%s' holds a space" % SPACE_USER)
    c.logout()


def test_custom_prefix(push_redis, make_dovecot):
    address = ("127.0.0.1", push_redis.port)
    mine = Subscriber(address, "tenant7:events")
    default = Subscriber(address, "imapmux:events")
    dv = make_dovecot({"imapmux_redis": "127.0.0.1:%d" % push_redis.port,
                       "imapmux_prefix": "tenant7:"})
    c = imap(dv, "prefix")
    append(c)
    assert mine.events("prefix") == [mbox("prefix", "INBOX")]
    assert default.events("prefix", first=0.5) == []
    c.logout()
    mine.close()
    default.close()


@pytest.fixture
def raw_redis():
    """raw_redis(address, *args) -> a Subscriber on imapmux:events of a
    redis-server started with args, once it answers at address (a unix
    socket path or (host, port))."""
    made = []

    def make(address, *args):
        d = tempfile.mkdtemp(prefix="imapmux-push-redis-")
        # The imap process runs as the mail user: a unix socket's directory
        # must be traversable by it.
        os.chmod(d, 0o755)
        proc = lab.Proc([lab.REDIS, "--save", "", "--appendonly", "no", "--dir", d] +
                        [a.replace("DIR", d) for a in args],
                        "redis-raw", log_path=os.path.join(d, "redis.log"))
        made.append((proc, d))
        if isinstance(address, str):
            address = address.replace("DIR", d)
        deadline = time.monotonic() + WAIT
        while True:
            try:
                return Subscriber(address, "imapmux:events"), address
            except OSError:
                assert proc.alive() and time.monotonic() < deadline, proc.log_tail_text()
                time.sleep(0.05)

    yield make
    for proc, d in made:
        proc.stop()
        shutil.rmtree(d, ignore_errors=True)


def test_unix_socket(raw_redis, make_dovecot):
    s, path = raw_redis("DIR/redis.sock", "--port", "0", "--unixsocket", "DIR/redis.sock",
                        "--unixsocketperm", "777")
    dv = make_dovecot({"imapmux_redis": "unix:" + path})
    c = imap(dv, "unix")
    append(c)
    assert s.events("unix") == [mbox("unix", "INBOX")]
    c.logout()
    s.close()


def test_ipv6_address(raw_redis, make_dovecot):
    port = lab.free_port()
    s, _ = raw_redis(("::1", port), "--port", str(port), "--bind", "::1")
    dv = make_dovecot({"imapmux_redis": "[::1]:%d" % port})
    c = imap(dv, "ipv6")
    append(c)
    assert s.events("ipv6") == [mbox("ipv6", "INBOX")]
    c.logout()
    s.close()


# ---------------------------------------------------------------------------
# Redis down, slow or picky: mail goes on

def test_redis_port_closed(make_dovecot):
    port = lab.free_port()
    dv = make_dovecot({"imapmux_redis": "127.0.0.1:%d" % port})
    c = imap(dv, "down")
    assert append(c) < 1.0
    wait_log(dv, "imapmux-push: redis 127.0.0.1:%d: connection refused; 1 mbox event(s) "
             "for down not published on imapmux:events" % port)
    c.logout()


def test_redis_silent(make_dovecot):
    # Accepts (the kernel does, from the backlog) and never answers.
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(8)
    try:
        port = ls.getsockname()[1]
        dv = make_dovecot({"imapmux_redis": "127.0.0.1:%d" % port})
        c = imap(dv, "silent")
        for _ in range(2):
            assert append(c) < 1.0
        wait_log(dv, "imapmux-push: redis 127.0.0.1:%d: timeout" % port)
        c.logout()
    finally:
        ls.close()


def test_redis_restarted_and_stopped(own_redis, make_dovecot):
    r = own_redis()
    address = ("127.0.0.1", r.port)
    dv = make_dovecot({"imapmux_redis": "127.0.0.1:%d" % r.port})
    c = imap(dv, "restart")
    s = Subscriber(address, "imapmux:events")
    append(c)
    assert s.events("restart") == [mbox("restart", "INBOX")]
    # The kept connection dies with Redis: the next transaction reopens it
    # at once, without a warning.
    s.close()
    r.stop()
    r.start()
    s = Subscriber(address, "imapmux:events")
    append(c)
    assert s.events("restart") == [mbox("restart", "INBOX")]
    assert warnings(dv) == []
    # Redis gone: the APPEND succeeds without waiting and the log says so.
    r.stop()
    assert append(c) < 1.0
    wait_log(dv, "imapmux-push: redis 127.0.0.1:%d: connection refused" % r.port)
    # Back again: the events flow again.
    s.close()
    r.start()
    s = Subscriber(address, "imapmux:events")
    append(c)
    assert s.events("restart") == [mbox("restart", "INBOX")]
    assert len(warnings(dv)) == 1
    c.logout()
    s.close()


def test_redis_password(own_redis, make_dovecot):
    secret = "Rq-Canary-5531-pass"
    r = own_redis()
    assert r.command("CONFIG", "SET", "requirepass", secret) == "OK"
    dv = make_dovecot({"imapmux_redis": "127.0.0.1:%d" % r.port,
                       "imapmux_redis_password": secret})
    s = Subscriber(("127.0.0.1", r.port), "imapmux:events", auth=(secret,))
    c = imap(dv, "pass")
    append(c)
    assert s.events("pass") == [mbox("pass", "INBOX")]
    c.logout()
    s.close()
    assert secret not in dv.log_text()


def test_redis_acl_user_and_wrong_password(own_redis, make_dovecot):
    secret = "Rq-Canary-8813-acl"
    r = own_redis()
    dv = make_dovecot({"imapmux_redis": "127.0.0.1:%d" % r.port,
                       "imapmux_redis_username": "pushy",
                       "imapmux_redis_password": secret})
    s = Subscriber(("127.0.0.1", r.port), "imapmux:events")
    c = imap(dv, "acl")
    # No such ACL user yet: AUTH fails, the mail does not.
    assert append(c) < 1.0
    wait_log(dv, "imapmux-push: redis 127.0.0.1:%d: redis: WRONGPASS" % r.port)
    assert s.events("acl", first=0.5) == []
    assert r.command("ACL", "SETUSER", "pushy", "on", ">" + secret, "resetchannels",
                     "&imapmux:events", "-@all", "+publish") == "OK"
    append(c)
    assert s.events("acl") == [mbox("acl", "INBOX")]
    c.logout()
    assert secret not in dv.log_text()
    s.close()


def test_mail_survives_a_broken_setting(make_dovecot):
    dv = make_dovecot({"imapmux_redis": "no-port-here"})
    c = imap(dv, "down")
    assert append(c) < 1.0
    wait_log(dv, "imapmux-push: redis no-port-here: imapmux_redis: not HOST:PORT")
    c.logout()
