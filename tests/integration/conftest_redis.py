"""Helpers and fixtures for the Redis-backed features (routing, auth = redis,
brute-force counters, the events channel). Test modules load the fixtures with
`pytest_plugins = ["conftest_redis"]` and import the helpers they use.

  prefix            a key prefix of the test's own ("it-<test>-<random>:"), so that
                    tests sharing the session's Redis never see each other's routes,
                    users, counters or events (the brute-force counter of
                    127.0.0.1 included)
  fresh_redis       a redis-server of the test's own, for tests that stop it;
                    restart_redis(r) starts it again on the same port (empty)
  rdv_a, rdv_b      two module-scoped Dovecots holding the users USERS_R (and
                    the odd names WEIRD_USERS), master user lab.MASTER_USER
  rdv_fresh         a Dovecot of the test's own, for tests that stop it

  dv_password(u)    the user's password at Dovecot (auth = backend)
  rd_password(u)    the password whose hash the tests put in Redis (auth = redis);
                    Dovecot does not accept it, so a login with it can only work
                    through a master login
  crypt_hash(pw, scheme)   "$6$" (openssl passwd -6), "$y$" and "$2b$" (libcrypt
                    through ctypes)

  placed_on(m, ...)  log in through imapmux m, APPEND a message with a fresh
                    Message-ID, and return the name of the one Dovecot holding it
"""

import ctypes
import ctypes.util
import os
import re
import socket
import uuid

import pytest

import imapc
import lab
from conftest import wait_until  # noqa: F401 (re-exported)
from conftest import MASTER_PASSWORD

CLIENT_TIMEOUT = 8.0

# ---------------------------------------------------------------------------
# users

USERS_R = ["r%02d" % i for i in range(40)] + [
    "rkick", "rkickx", "rkick2", "rfail", "rfail2", "rfail3", "rfail4", "rok", "rok2",
    "rdelay", "rauth", "rauth2", "rsasl", "rspecial", "rdown", "rnohash",
]

# Names that need quoting toward the backend and Redis: a space, a double quote,
# braces (an IMAP literal's syntax), percent signs (printf), parentheses.
WEIRD_USERS = ['we"ird {5}', "pct %s%n%x", "sp ace(x)"]


def dv_password(user):
    return "dv-%s-Pw7" % user


def rd_password(user):
    return "rd-%s-Pw7" % user


# Passwords with every character IMAP quoting cares about (stored hashed).
SPECIAL_PASSWORD = 'p a"ss\\ w0rd {3}'


class RDovecot(lab.Dovecot):
    """lab.Dovecot plus users whose names Dovecot's passwd-file only finds
    escaped (\\" \\' \\\\), and auth_username_chars emptied so that any byte
    but ':' and newlines may be in a name."""

    def __init__(self, users, weird=(), **kw):
        super().__init__(users, **kw)
        self.weird = list(weird)

    def _write_files(self):
        super()._write_files()
        uid, gid = lab.mail_owner()
        lines = []
        for i, user in enumerate(self.weird):
            key = user.replace("\\", "\\\\").replace('"', '\\"').replace("'", "\\'")
            home = os.path.join(self.mail_root, "weird%d" % i)
            lines.append("%s:{PLAIN}%s:%d:%d::%s::\n" % (key, dv_password("weird"), uid, gid,
                                                          home))
        with open(os.path.join(self.dir, "users"), "a") as f:
            f.write("".join(lines))
        with open(self.conf_path, "a") as f:
            f.write("auth_username_chars =\n")


def start_rdovecot(name, weird=()):
    d = RDovecot({u: dv_password(u) for u in USERS_R}, weird=weird,
                 master_password=MASTER_PASSWORD, name=name)
    d.start()
    return d


@pytest.fixture(scope="module")
def rdv_a():
    d = start_rdovecot("rdovecot-a", weird=WEIRD_USERS)
    yield d
    d.cleanup()


@pytest.fixture(scope="module")
def rdv_b():
    d = start_rdovecot("rdovecot-b", weird=WEIRD_USERS)
    yield d
    d.cleanup()


@pytest.fixture
def rdv_fresh(request):
    d = start_rdovecot("rdovecot-fresh")
    yield d
    rep = getattr(request.node, "rep_call", None)
    if rep is None or rep.failed:
        print(d.log_tail_text(40))
    d.cleanup()


def backend(dv, **extra):
    """A [backend] dict for Dovecot dv (plain IMAP, master credentials)."""
    kv = {"address": "127.0.0.1:%d" % dv.port, "tls": "none",
          "master_user": dv.master_user, "master_password": dv.master_password,
          "connect_timeout": "2s", "command_timeout": "5s"}
    kv.update(extra)
    return kv


# Health checks fast enough for a test: down after one failed check, up after one good.
FAST_CHECKS = {"check_interval": "500ms", "check_timeout": "1s", "check_rise": 1,
               "check_fall": 1}


# ---------------------------------------------------------------------------
# Redis

@pytest.fixture
def prefix(request):
    name = re.sub(r"[^A-Za-z0-9]+", "-", request.node.name)[:40]
    return "it-%s-%s:" % (name, uuid.uuid4().hex[:6])


@pytest.fixture
def fresh_redis(request):
    r = lab.Redis()
    r.start()
    yield r
    r.cleanup()


def restart_redis(r, timeout=10.0):
    """Start r again on the same port (after r.stop()); its data is gone."""
    r.start(timeout=timeout)
    return r


def resp(address, *args, password=None, db=None, timeout=5.0):
    """One command on a connection of its own to address ((host, port) or a
    unix socket path), after AUTH password and SELECT db when given; the
    decoded reply (lab._resp_read)."""
    family = socket.AF_UNIX if isinstance(address, str) else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(address)
        f = s.makefile("rb")
        pre = []
        if password is not None:
            pre.append(("AUTH", password))
        if db is not None:
            pre.append(("SELECT", db))
        for cmd in pre + [args]:
            req = b"*%d\r\n" % len(cmd)
            for a in cmd:
                a = a if isinstance(a, bytes) else str(a).encode()
                req += b"$%d\r\n%s\r\n" % (len(a), a)
            s.sendall(req)
            reply = lab._resp_read(f)
        return reply


def redis_section(r, prefix, **extra):
    kv = {"address": "127.0.0.1:%d" % r.port, "prefix": prefix}
    kv.update(extra)
    return kv


# wait_until lives in conftest.py; imported above for the modules that use it from here.


def numsub(r, channel):
    reply = r.command("PUBSUB", "NUMSUB", channel)
    return int(reply[1])


def wait_subscribed(r, prefix, n, timeout=8.0):
    """Wait until at least n connections SUBSCRIBE to <prefix>events (each
    imapmux instance subscribes; SPEC "Channel imapmux:events")."""
    chan = prefix + "events"
    return wait_until(lambda: numsub(r, chan) >= n, timeout,
                      lambda: "%d subscriber(s) on %s (have %d)" % (n, chan, numsub(r, chan)))


def publish(r, prefix, message):
    """PUBLISH on <prefix>events; returns the number of receivers."""
    return int(r.command("PUBLISH", prefix + "events", message))


def set_route(r, prefix, user, backend_name):
    key = (prefix.encode() + b"route:" + (user if isinstance(user, bytes) else user.encode()))
    assert r.command("SET", key, backend_name) == "OK"


def set_password(r, prefix, user, crypt_string):
    key = (prefix.encode() + b"user:" + (user if isinstance(user, bytes) else user.encode()))
    r.command("HSET", key, "password", crypt_string)


# ---------------------------------------------------------------------------
# crypt(3) strings

_libcrypt = None


def _lib():
    global _libcrypt
    if _libcrypt is None:
        lib = ctypes.CDLL(ctypes.util.find_library("crypt") or "libcrypt.so.1")
        lib.crypt_gensalt_rn.restype = ctypes.c_char_p
        lib.crypt_gensalt_rn.argtypes = [ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p,
                                         ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.crypt_r.restype = ctypes.c_char_p
        lib.crypt_r.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_void_p]
        _libcrypt = lib
    return _libcrypt


def libcrypt_hash(password, prefix):
    """crypt(3) of password with a fresh setting for prefix ("$y$", "$2b$",
    "$6$"), through libxcrypt's crypt_gensalt_rn and crypt_r."""
    lib = _lib()
    out = ctypes.create_string_buffer(256)
    setting = lib.crypt_gensalt_rn(prefix.encode(), 0, None, 0, out, len(out))
    if not setting:
        raise RuntimeError("crypt_gensalt_rn(%s) failed" % prefix)
    data = ctypes.create_string_buffer(65536)   # >= sizeof(struct crypt_data)
    h = lib.crypt_r(password.encode(), setting, data)
    if not h or h.startswith(b"*"):
        raise RuntimeError("crypt_r(%s) failed" % prefix)
    return h.decode()


def libcrypt_check(password, crypt_string):
    lib = _lib()
    data = ctypes.create_string_buffer(65536)
    h = lib.crypt_r(password.encode(), crypt_string.encode(), data)
    return h is not None and h.decode() == crypt_string


def crypt_hash(password, scheme="$6$"):
    if scheme == "$6$":
        h = lab.sha512_crypt(password)        # openssl passwd -6
    else:
        h = libcrypt_hash(password, scheme)
    assert h.startswith(scheme) and libcrypt_check(password, h), h
    return h


# ---------------------------------------------------------------------------
# clients

def connect(port, ca_ctx, source=None, timeout=CLIENT_TIMEOUT):
    """An implicit-TLS imapc.Client to imapmux on port, optionally from a
    given loopback source address (127.0.0.2 ...: another client IP). The
    greeting is read."""
    c = imapc.Client(port, timeout=timeout, connect=False)
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                 source_address=(source, 0) if source else None)
    c.sock = ca_ctx.wrap_socket(s, server_hostname="127.0.0.1")
    c.greeting()
    return c


def login_cmd(user, password):
    """A LOGIN command text with both arguments as literals (any bytes)."""
    u = user if isinstance(user, bytes) else user.encode()
    p = password if isinstance(password, bytes) else password.encode()
    return b"LOGIN {%d+}\r\n%s {%d+}\r\n%s" % (len(u), u, len(p), p)


def try_login(m, ca_ctx, user, password, source=None, tag="l"):
    """Connect, LOGIN (literals), close; the tagged answer."""
    with connect(m.imaps_port, ca_ctx, source=source) as c:
        _, tagged = c.cmd(tag, login_cmd(user, password))
        return tagged


def new_msgid():
    return "probe-%s@imapmux.test" % uuid.uuid4().hex


def append_probe(c, msgid, tag="ap"):
    """APPEND to INBOX through c a small message with Message-ID <msgid>."""
    msg = ("From: probe <probe@imapmux.test>\r\n"
           "To: someone@imapmux.test\r\n"
           "Subject: route probe\r\n"
           "Message-ID: <%s>\r\n"
           "\r\n"
           "Which backend am I on?\r\n" % msgid).encode()
    c.send(b"%s APPEND INBOX {%d+}\r\n%s\r\n" % (tag.encode(), len(msg), msg))
    _, tagged = c.read_until_tagged(tag)
    assert tagged.startswith(tag.encode() + b" OK"), tagged


def dovecot_has(dv, user, msgid):
    """True if user's INBOX on Dovecot dv holds a message with Message-ID
    msgid. Asks Dovecot directly with a master login (any user name)."""
    with imapc.Client(dv.port, timeout=10) as c:
        c.greeting()
        _, tagged = c.cmd("a", "AUTHENTICATE PLAIN " + imapc.plain_ir(
            dv.master_user, dv.master_password, authzid=user))
        assert tagged.startswith(b"a OK"), (dv.name, user, tagged)
        _, tagged = c.cmd("e", "EXAMINE INBOX")
        assert tagged.startswith(b"e OK"), tagged
        untagged, tagged = c.cmd("s", 'UID SEARCH HEADER Message-ID "%s"' % msgid)
        assert tagged.startswith(b"s OK"), tagged
        hits = []
        for line in untagged:
            if line.startswith(b"* SEARCH"):
                hits += line.split()[2:]
        return len(hits) > 0


def where(msgid, user, backends):
    """Names of the Dovecots (backends: name -> Dovecot) holding msgid."""
    return sorted(name for name, dv in backends.items() if dovecot_has(dv, user, msgid))


def placed_on(m, ca_ctx, user, password, backends, source=None):
    """Log user in through imapmux m (LOGIN with literals), APPEND a probe,
    LOGOUT; the name of the one backend that holds the probe. AssertionError
    with the tagged answer when the login fails."""
    msgid = new_msgid()
    with connect(m.imaps_port, ca_ctx, source=source) as c:
        _, tagged = c.cmd("l", login_cmd(user, password))
        assert tagged.startswith(b"l OK"), (user, tagged)
        append_probe(c, msgid)
        c.cmd("o", "LOGOUT")
    found = where(msgid, user, backends)
    assert len(found) == 1, "probe for %r found on %s" % (user, found or "no backend")
    return found[0]


def master_logins(dv):
    """Dovecot's "Master user logging in as USER" log lines, in order."""
    return re.findall(r"auth: Info: Master user logging in as (.*)", dv.log_text())
