"""[imapmux] auth = redis: imapmux checks the password against the crypt(3)
string in <prefix>user:USER (field password) and logs in to the backend as USER
with the backend's master credentials (Dovecot: SASL PLAIN authzid=USER,
authcid=proxymaster). SPEC: proxy.conf "auth", "Redis schema".

Dovecot's own password for each user (dv_password) differs from the one
hashed in Redis (rd_password): a login with rd_password can only work through
a master login, and one with dv_password must fail.

Brute-force limits and delays are off here (auth_fail_limit = 0,
auth_fail_delay = 0): test_bruteforce.py covers them.
"""

import base64
import signal
import time

import pytest

import imapc

pytest.register_assert_rewrite("conftest_redis")
from conftest_redis import (  # noqa: E402
    SPECIAL_PASSWORD, WEIRD_USERS, append_probe, backend, connect, crypt_hash, dovecot_has,
    dv_password, login_cmd, master_logins, new_msgid, rd_password, redis_section,
    resp, restart_redis, set_password, set_route, try_login, wait_until)

# The fixtures prefix, fresh_redis, rdv_a, rdv_b and rdv_fresh.
pytest_plugins = ["conftest_redis"]

NOT_CARRIED_EXACT = {"STARTTLS", "LOGINDISABLED", "SASL-IR"}
NOT_CARRIED_PREFIX = ("AUTH=", "COMPRESS=")


def _mux(make_mux, r, prefix, dv, **imapmux_extra):
    im = {"workers": 2, "auth": "redis", "auth_fail_limit": 0, "auth_fail_delay": 0}
    im.update(imapmux_extra)
    return make_mux(backends=[("a", backend(dv, check_interval=0))],
                    routing={"lookup": "redis", "fallback": "a"},
                    redis=redis_section(r, prefix, timeout="500ms"), imapmux=im)


def _assert_login_ok(tagged, tag):
    assert tagged.startswith(tag.encode() + b" OK [CAPABILITY "), tagged
    caps = imapc.caps_of(tagged)
    assert {"IMAP4REV1", "IDLE"} <= caps, caps
    assert not caps & NOT_CARRIED_EXACT, caps
    # imapmux's own COMPRESS=DEFLATE stands in for the backend's (test_compress.py)
    assert not [c for c in caps
                if c.startswith(NOT_CARRIED_PREFIX) and c != "COMPRESS=DEFLATE"], caps


def _assert_authfailed(tagged, tag):
    assert tagged.startswith(tag.encode() + b" NO [AUTHENTICATIONFAILED]"), tagged


def _user_is_served(m, ca_ctx, dv, user, password):
    """Log in through m, APPEND a probe, and find it in user's own mailbox on
    Dovecot: the backend session belongs to user (not to the master user)."""
    msgid = new_msgid()
    with connect(m.imaps_port, ca_ctx) as c:
        _, tagged = c.cmd("l", login_cmd(user, password))
        _assert_login_ok(tagged, "l")
        append_probe(c, msgid)
        c.cmd("o", "LOGOUT")
    assert dovecot_has(dv, user, msgid), "probe not in %r's mailbox" % user


# ---------------------------------------------------------------------------
# good and bad passwords

@pytest.mark.parametrize("scheme", ["$6$", "$y$", "$2b$"])
def test_login_with_crypt_string(make_mux, redis, prefix, rdv_a, ca_ctx, scheme):
    user = "rauth"
    set_password(redis, prefix, user, crypt_hash(rd_password(user), scheme))
    m = _mux(make_mux, redis, prefix, rdv_a)
    before = len(master_logins(rdv_a))
    with connect(m.imaps_port, ca_ctx) as c:
        _, tagged = c.cmd("l", "LOGIN %s %s" % (user, imapc.quote(rd_password(user))))
        _assert_login_ok(tagged, "l")
        _, tagged = c.cmd("s", "SELECT INBOX")
        assert tagged.startswith(b"s OK"), tagged
    # Dovecot saw a master login as the user.
    wait_until(lambda: user in master_logins(rdv_a)[before:], 3,
               "Dovecot logs 'Master user logging in as %s'" % user)
    _user_is_served(m, ca_ctx, rdv_a, user, rd_password(user))
    # Wrong password, and Dovecot's own password (no pass-through): refused.
    for tag, pw in (("w1", "wrong-" + rd_password(user)), ("w2", dv_password(user)),
                    ("w3", rd_password(user)[:-1]), ("w4", "")):
        assert try_login(m, ca_ctx, user, pw, tag=tag).startswith(
            tag.encode() + b" NO [AUTHENTICATIONFAILED]"), (tag, pw)


def test_authenticate_plain(make_mux, redis, prefix, rdv_a, ca_ctx):
    user = "rsasl"
    set_password(redis, prefix, user, crypt_hash(rd_password(user), "$y$"))
    m = _mux(make_mux, redis, prefix, rdv_a)
    with connect(m.imaps_port, ca_ctx) as c:          # SASL-IR
        _, tagged = c.cmd("a1", "AUTHENTICATE PLAIN " + imapc.plain_ir(user, rd_password(user)))
        _assert_login_ok(tagged, "a1")
        _, tagged = c.cmd("s", "SELECT INBOX")
        assert tagged.startswith(b"s OK"), tagged
    with connect(m.imaps_port, ca_ctx) as c:          # continuation
        c.send(b"a2 AUTHENTICATE PLAIN\r\n")
        assert c.readline().startswith(b"+")
        c.send(imapc.plain_ir(user, rd_password(user), authzid=user).encode() + b"\r\n")
        _, tagged = c.read_until_tagged("a2")
        _assert_login_ok(tagged, "a2")
    with connect(m.imaps_port, ca_ctx) as c:
        _, tagged = c.cmd("a3", "AUTHENTICATE PLAIN " + imapc.plain_ir(user, dv_password(user)))
        _assert_authfailed(tagged, "a3")
        c.send(b"a4 AUTHENTICATE PLAIN\r\n")
        assert c.readline().startswith(b"+")
        c.send(imapc.plain_ir(user, "nope").encode() + b"\r\n")
        _, tagged = c.read_until_tagged("a4")
        _assert_authfailed(tagged, "a4")
        # Right credentials, but for someone else's mailbox: never a login.
        _, tagged = c.cmd("a5", "AUTHENTICATE PLAIN " + imapc.plain_ir(
            user, rd_password(user), authzid="rauth"))
        assert imapc.status_of(tagged) == "NO", tagged
        _, tagged = c.cmd("a6", "AUTHENTICATE PLAIN " + imapc.plain_ir(user, rd_password(user)))
        _assert_login_ok(tagged, "a6")


def test_unknown_user_refused(make_mux, redis, prefix, rdv_a, ca_ctx):
    """No <prefix>user:USER hash: NO [AUTHENTICATIONFAILED], even for a user
    Dovecot knows, with Dovecot's password; the backend is not asked."""
    set_password(redis, prefix, "rok", crypt_hash(rd_password("rok")))
    # A hash without a password field is no better.
    redis.command("HSET", prefix + "user:rnohash", "name", "No Hash")
    m = _mux(make_mux, redis, prefix, rdv_a)
    before = len(master_logins(rdv_a))
    for user, pw in (("rnohash", dv_password("rnohash")), ("rnohash", rd_password("rnohash")),
                     ("nobody-anywhere", "whatever"), ("rdown", dv_password("rdown"))):
        _assert_authfailed(try_login(m, ca_ctx, user, pw), "l")
        with connect(m.imaps_port, ca_ctx) as c:
            _, tagged = c.cmd("s", "AUTHENTICATE PLAIN " + imapc.plain_ir(user, pw))
            _assert_authfailed(tagged, "s")
    _assert_login_ok(try_login(m, ca_ctx, "rok", rd_password("rok")), "l")
    wait_until(lambda: "rok" in master_logins(rdv_a)[before:], 3, "master login of rok")
    assert master_logins(rdv_a)[before:] == ["rok"]


@pytest.mark.parametrize("stored", ["", "*", "!", "*0", "*1", "$6$", "$6$rounds=5000$",
                                    "$y$", "not-a-crypt-string", "{PLAIN}secret",
                                    "$2b$05$short"])
def test_unusable_crypt_string_refused(make_mux, redis, prefix, rdv_a, ca_ctx, stored):
    """A stored value that is no valid crypt string matches no password,
    including the value itself and the empty password (libc's failure
    tokens "*0"/"*1" included); imapmux stays up."""
    set_password(redis, prefix, "rauth2", stored)
    set_password(redis, prefix, "rok", crypt_hash(rd_password("rok")))
    m = _mux(make_mux, redis, prefix, rdv_a)
    for pw in {stored, "", "secret", "*0", "*1", "x"}:
        tagged = try_login(m, ca_ctx, "rauth2", pw)
        _assert_authfailed(tagged, "l")
    _assert_login_ok(try_login(m, ca_ctx, "rok", rd_password("rok")), "l")
    assert m.alive()


def test_password_with_quotes_spaces_braces(make_mux, redis, prefix, rdv_a, ca_ctx):
    user = "rspecial"
    set_password(redis, prefix, user, crypt_hash(SPECIAL_PASSWORD, "$6$"))
    m = _mux(make_mux, redis, prefix, rdv_a)
    pw = SPECIAL_PASSWORD.encode()
    with connect(m.imaps_port, ca_ctx) as c:
        _, tagged = c.cmd("q", "LOGIN %s %s" % (user, imapc.quote(SPECIAL_PASSWORD)))
        _assert_login_ok(tagged, "q")
    with connect(m.imaps_port, ca_ctx) as c:
        c.send(b"y LOGIN %s {%d}\r\n" % (user.encode(), len(pw)))
        assert c.readline().startswith(b"+")
        c.send(pw + b"\r\n")
        _, tagged = c.read_until_tagged("y")
        _assert_login_ok(tagged, "y")
    with connect(m.imaps_port, ca_ctx) as c:
        _, tagged = c.cmd("p", "AUTHENTICATE PLAIN " + imapc.plain_ir(user, SPECIAL_PASSWORD))
        _assert_login_ok(tagged, "p")
    _assert_authfailed(try_login(m, ca_ctx, user, SPECIAL_PASSWORD.replace("\\", "")), "l")


# ---------------------------------------------------------------------------
# user names: quoting toward Redis and the backend, and injection

@pytest.mark.parametrize("user", WEIRD_USERS)
def test_user_name_needing_quotes(make_mux, redis, prefix, rdv_a, ca_ctx, user):
    """A user name with a space, quotes, braces or % (a real Dovecot user):
    the Redis keys are looked up byte for byte and the master login names
    exactly this user."""
    pw = rd_password("weird")
    set_password(redis, prefix, user, crypt_hash(pw, "$y$"))
    set_route(redis, prefix, user, "a")
    m = _mux(make_mux, redis, prefix, rdv_a)
    with connect(m.imaps_port, ca_ctx) as c:
        _, tagged = c.cmd("q", "LOGIN %s %s" % (imapc.quote(user), imapc.quote(pw)))
        _assert_login_ok(tagged, "q")
    with connect(m.imaps_port, ca_ctx) as c:
        _, tagged = c.cmd("p", "AUTHENTICATE PLAIN " + imapc.plain_ir(user, pw))
        _assert_login_ok(tagged, "p")
    _user_is_served(m, ca_ctx, rdv_a, user, pw)
    _assert_authfailed(try_login(m, ca_ctx, user, dv_password("weird")), "l")
    assert m.alive()


def _plain(msg):
    return "AUTHENTICATE PLAIN " + imapc.b64(msg)


def _injections():
    """(id, user name for the Redis keys or None, command bytes) -- every
    command must be refused with NO and no master login at the backend."""
    pw = rd_password("rauth").encode()
    out = []
    for uname in (b"rauth*proxymaster", b"rauth*", b"*rauth"):
        out.append(("sep-login-" + uname.decode(), uname, login_cmd(uname, pw)))
        out.append(("sep-plain-" + uname.decode(), uname, _plain(b"\0" + uname + b"\0" + pw)))
    for name, uname in (("cr", b"rauth\r"), ("lf", b"rauth\n"), ("crlf", b"rauth\r\nx LOGIN a b"),
                        ("nul", b"rauth\0"), ("nul-mid", b"rau\0th"), ("tab", b"rauth\t"),
                        ("del", b"rauth\x7f")):
        out.append(("ctl-login-" + name, uname, login_cmd(uname, pw)))
        out.append(("ctl-plain-" + name, uname if b"\0" not in uname else None,
                    _plain(b"\0" + uname + b"\0" + pw)))
    # A NUL in the password (a C string would end there and match the hash).
    out.append(("nul-in-password", None, login_cmd(b"rauth", pw + b"\0junk")))
    # PLAIN with a fourth field, or a NUL inside the password field.
    out.append(("plain-4-fields", None, _plain(b"\0rauth\0" + pw + b"\0junk")))
    out.append(("plain-trailing-nul", None, _plain(b"rauth\0rauth\0" + pw + b"\0")))
    out.append(("plain-nul-authzid", None, _plain(b"rauth\0\0rauth\0" + pw)))
    for n in (256, 1000):
        uname = b"u" * n
        out.append(("long-%d-login" % n, uname, login_cmd(uname, pw)))
        out.append(("long-%d-plain" % n, uname, _plain(b"\0" + uname + b"\0" + pw)))
    return out


def test_user_name_injection_refused(make_mux, redis, prefix, rdv_a, ca_ctx):
    """Names with the master separator, control bytes (CR, LF, NUL, ...) or
    over 255 bytes are refused with NO, even when Redis holds a matching
    hash and route for the exact bytes, and Dovecot never sees a master
    login for them. (The real user rauth has the same password: a name cut
    at a control byte would log in as rauth.)"""
    pw = rd_password("rauth")
    h = crypt_hash(pw, "$6$")
    set_password(redis, prefix, "rauth", h)
    set_password(redis, prefix, "rok2", crypt_hash(rd_password("rok2")))
    cases = _injections()
    for _, uname, _ in cases:
        if uname is not None:
            set_password(redis, prefix, uname, h)
            set_route(redis, prefix, uname, "a")
    m = _mux(make_mux, redis, prefix, rdv_a)
    before_master = len(master_logins(rdv_a))
    failures = []
    for case_id, _, command in cases:
        with connect(m.imaps_port, ca_ctx) as c:
            tag = "i"
            c.send(b"i " + (command.encode() if isinstance(command, str) else command) + b"\r\n")
            _, tagged = c.read_until_tagged(tag)
            if imapc.status_of(tagged) != "NO":
                failures.append((case_id, tagged))
                continue
            _, tagged = c.cmd("n", "NOOP")
            if not tagged.startswith(b"n OK"):
                failures.append((case_id, "after the NO: " + repr(tagged)))
    assert not failures, failures
    # A sentinel login: once Dovecot has logged it, everything before it is
    # in the log too.
    _assert_login_ok(try_login(m, ca_ctx, "rok2", rd_password("rok2")), "l")
    wait_until(lambda: "rok2" in master_logins(rdv_a)[before_master:], 3,
               "master login of the sentinel rok2")
    assert master_logins(rdv_a)[before_master:] == ["rok2"]
    assert m.alive()
    # rauth itself still logs in.
    _assert_login_ok(try_login(m, ca_ctx, "rauth", pw), "l")


def test_user_name_of_255_bytes_is_clean(make_mux, redis, prefix, rdv_a, ca_ctx):
    """255 bytes is within the limit: with a hash in Redis the answer is a
    clean tagged OK or NO (Dovecot has no such user) and the session stays
    usable."""
    uname = "v" * 255
    set_password(redis, prefix, uname, crypt_hash(rd_password("rauth")))
    set_route(redis, prefix, uname, "a")
    m = _mux(make_mux, redis, prefix, rdv_a)
    with connect(m.imaps_port, ca_ctx) as c:
        _, tagged = c.cmd("l", login_cmd(uname, rd_password("rauth")))
        assert imapc.status_of(tagged) in ("OK", "NO"), tagged
        _, tagged = c.cmd("n", "NOOP")
        assert tagged.startswith(b"n OK"), tagged
    assert m.alive()


def test_redis_password_and_db(make_mux, fresh_redis, prefix, rdv_a, ca_ctx):
    """[redis] password and db: imapmux authenticates to Redis and reads the
    user's hash from that database (db 0 holds another hash for the user)."""
    r = fresh_redis
    secret = "redis-Secret-71"
    user = "rauth"
    addr = ("127.0.0.1", r.port)
    assert r.command("CONFIG", "SET", "requirepass", secret) == "OK"
    resp(addr, "HSET", prefix + "user:" + user, "password", crypt_hash("in-db-0"),
         password=secret)
    resp(addr, "HSET", prefix + "user:" + user, "password", crypt_hash(rd_password(user)),
         password=secret, db=3)
    resp(addr, "SET", prefix + "route:" + user, "a", password=secret, db=3)
    m = make_mux(backends=[("a", backend(rdv_a, check_interval=0))],
                 routing={"lookup": "redis", "fallback": "deny"},
                 redis=redis_section(r, prefix, password=secret, db=3),
                 imapmux={"auth": "redis", "auth_fail_delay": 0})
    _user_is_served(m, ca_ctx, rdv_a, user, rd_password(user))
    _assert_authfailed(try_login(m, ca_ctx, user, "in-db-0"), "l")


# ---------------------------------------------------------------------------
# Redis down

@pytest.mark.slow
def test_redis_down_auth_unavailable_then_recovers(make_mux, fresh_redis, prefix, rdv_a,
                                                  ca_ctx):
    r = fresh_redis
    user = "rdown"
    h = crypt_hash(rd_password(user), "$6$")
    set_password(r, prefix, user, h)
    set_route(r, prefix, user, "a")
    m = _mux(make_mux, r, prefix, rdv_a)
    _assert_login_ok(try_login(m, ca_ctx, user, rd_password(user)), "l")

    r.stop()
    t0 = time.monotonic()
    tagged = try_login(m, ca_ctx, user, rd_password(user))
    assert tagged.startswith(b"l NO [UNAVAILABLE]"), tagged
    with connect(m.imaps_port, ca_ctx) as c:
        _, tagged = c.cmd("p", "AUTHENTICATE PLAIN " + imapc.plain_ir(user, rd_password(user)))
        assert tagged.startswith(b"p NO [UNAVAILABLE]"), tagged
        _, tagged = c.cmd("n", "NOOP")
        assert tagged.startswith(b"n OK"), tagged
    assert time.monotonic() - t0 < 6, "answers with Redis down took %.1fs" % (
        time.monotonic() - t0)

    restart_redis(r)
    set_password(r, prefix, user, h)
    set_route(r, prefix, user, "a")
    deadline = time.monotonic() + 10
    while True:
        tagged = try_login(m, ca_ctx, user, rd_password(user))
        if tagged.startswith(b"l OK") or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    _assert_login_ok(tagged, "l")
    _assert_authfailed(try_login(m, ca_ctx, user, "wrong"), "l")
    assert m.alive()


@pytest.mark.slow
def test_redis_hung_answers_within_timeout(make_mux, fresh_redis, prefix, rdv_a, ca_ctx):
    """A Redis that accepts and never answers (SIGSTOP): [redis] timeout =
    500ms bounds each command, so logins get NO [UNAVAILABLE] quickly and
    the rest of the proxy keeps answering; after SIGCONT logins work again."""
    r = fresh_redis
    user = "rdown"
    set_password(r, prefix, user, crypt_hash(rd_password(user), "$6$"))
    set_route(r, prefix, user, "a")
    m = _mux(make_mux, r, prefix, rdv_a, workers=1)
    _assert_login_ok(try_login(m, ca_ctx, user, rd_password(user)), "l")
    r.proc.signal(signal.SIGSTOP)
    try:
        with connect(m.imaps_port, ca_ctx) as c:
            t0 = time.monotonic()
            _, tagged = c.cmd("l", login_cmd(user, rd_password(user)), timeout=8)
            elapsed = time.monotonic() - t0
            assert tagged.startswith(b"l NO [UNAVAILABLE]"), tagged
            assert elapsed < 3.0, "answered after %.2fs with timeout = 500ms" % elapsed
            t0 = time.monotonic()
            _, tagged = c.cmd("n", "NOOP", timeout=3)
            assert tagged.startswith(b"n OK"), tagged
            assert time.monotonic() - t0 < 0.5
    finally:
        r.proc.signal(signal.SIGCONT)
    deadline = time.monotonic() + 10
    while True:
        tagged = try_login(m, ca_ctx, user, rd_password(user))
        if tagged.startswith(b"l OK") or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    _assert_login_ok(tagged, "l")


def test_no_secrets_in_log(make_mux, redis, prefix, rdv_a, ca_ctx):
    """auth = redis at log_level = debug: neither the client's password (right
    or wrong, in any encoding), nor the stored hash, nor the backend's master
    password reaches imapmux's log."""
    user = "rauth"
    pw = "Zq8-Redis-Canary-5521"
    wrong = "Wr0ng-Redis-Canary-7730"
    h = crypt_hash(pw, "$y$")
    set_password(redis, prefix, user, h)
    m = _mux(make_mux, redis, prefix, rdv_a, log_level="debug")
    _assert_login_ok(try_login(m, ca_ctx, user, pw), "l")
    _assert_authfailed(try_login(m, ca_ctx, user, wrong), "l")
    with connect(m.imaps_port, ca_ctx) as c:
        _, tagged = c.cmd("p", "AUTHENTICATE PLAIN " + imapc.plain_ir(user, pw))
        _assert_login_ok(tagged, "p")
    with connect(m.imaps_port, ca_ctx) as c:
        _, tagged = c.cmd("p", "AUTHENTICATE PLAIN " + imapc.plain_ir(user, wrong))
        _assert_authfailed(tagged, "p")
    time.sleep(0.2)
    log = m.log_text()
    assert user in log, "no log line names the user at all?"
    secrets = {pw, wrong, h, h.rsplit("$", 1)[1], rdv_a.master_password}
    for secret in (pw, wrong):
        secrets.add(imapc.plain_ir(user, secret))
        secrets.add(base64.b64encode(secret.encode()).decode())
        secrets.add(secret.encode().hex())
    secrets.add(imapc.plain_ir(rdv_a.master_user, rdv_a.master_password, authzid=user))
    leaked = [s for s in secrets if s in log]
    assert not leaked, "secrets in the log: %r" % leaked
