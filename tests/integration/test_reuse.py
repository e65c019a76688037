"""Reuse of backend sessions after LOGOUT (the webmail pattern; README
"[backend NAME] reuse_ttl", proxy/reuse.h).

On a client's LOGOUT, a session that changed no per-connection state (no
ENABLE, NOTIFY, LANGUAGE, AUTHENTICATE, LOGIN, UNAUTHENTICATE after login) and
is not in IDLE gets `* BYE Logging out` + `tag OK Logout completed.` from
imapmux itself once every earlier command is answered; the backend session is
reset with UNSELECT (when a mailbox was ever selected) and kept per worker for
reuse_ttl, for the next login of the same user with the same credentials
(auth = backend) or any verified login of the user (auth = redis).

Evidence of reuse, both ways round:
  - Dovecot's log: each backend login writes `imap-login: Info: Login:
    user=<USER>`; a reused session writes none;
  - /metrics: imapmux_sessions_reused_total and imapmux_backend_logins_total.

Every imapmux here has workers = 1 (the cache is per worker) and
check_interval = 0, and talks implicit TLS to Dovecot (verified against the
test certificate). Users are this module's own, on a Dovecot of its own
(fresh_dovecot's for the restart test). The last two tests pin problems
found here and fixed since: input pipelined after LOGOUT, and CONDSTORE
switched on without ENABLE.
"""

import imaplib
import os
import queue
import re
import socket
import threading
import time

import pytest

import imapc
import lab
from conftest import MASTER_PASSWORD, backend_section, password, scrape_metrics

pytest.register_assert_rewrite("conftest_redis")
from conftest_redis import (  # noqa: E402
    crypt_hash, master_logins, publish, redis_section, set_password, wait_subscribed,
    wait_until)

# The fixture prefix (a Redis key prefix of the test's own).
pytest_plugins = ["conftest_redis"]

TIMEOUT = 8.0

RUSERS = ["ru-rounds", "ru-fresh", "ru-a", "ru-b", "ru-wrong", "ru-taint", "ru-idle",
          "ru-idle2", "ru-pipe", "ru-ttl", "ru-ttl0", "ru-kick", "ru-kick2", "ru-redis",
          "ru-pw", "ru-slow", "ru-x1", "ru-x2", "ru-barrier", "ru-nosel-close",
          "ru-nosel-failedselect", "ru-nosel-neverselected"]


def rpw(user):
    return "rpw-%s-Q3" % user


def redis_pw(user):
    """The password hashed into Redis for auth = redis: Dovecot does not take
    it, so a login with it works only through the master login."""
    return "redis-%s-Zz8" % user


@pytest.fixture(scope="module")
def rdv(cert, key):
    d = lab.Dovecot({u: rpw(u) for u in RUSERS}, tls=True, cert=cert, key=key,
                    master_password=MASTER_PASSWORD, name="dovecot-reuse")
    d.start()
    yield d
    d.cleanup()


# ---------------------------------------------------------------------------
# helpers

def start_mux(make_mux, dv, cert, reuse_ttl=None, imapmux=None, redis=None, routing=None):
    """An imapmux with one worker, stats_listen, and backend a = dv over
    implicit TLS (reuse_ttl left at its default unless given)."""
    stats_port = lab.free_port()
    im = {"workers": 1, "stats_listen": "127.0.0.1:%d" % stats_port, "auth_fail_delay": 0}
    im.update(imapmux or {})
    bk = backend_section(dv, tls="implicit", ca=cert, check_interval=0,
                         connect_timeout="3s", command_timeout="5s")
    if reuse_ttl is not None:
        bk["reuse_ttl"] = reuse_ttl
    m = make_mux(backends=[("a", bk)], imapmux=im, redis=redis,
                 routing=routing or {"lookup": "static", "fallback": "a"})
    lab.wait_listening(stats_port, timeout=10, proc=m.proc)
    m.stats_port = stats_port
    return m


def metrics(m):
    """{family: value} of /metrics (samples without labels only)."""
    return {k: v for k, v in scrape_metrics(m.stats_port).items() if "{" not in k}


def counts(m):
    s = metrics(m)
    return int(s["imapmux_sessions_reused_total"]), int(s["imapmux_backend_logins_total"])


def dv_logins(dv, user):
    """Dovecot's successful logins of user (direct ones included)."""
    return len(re.findall(r"imap-login: Info: Login: user=<%s>," % re.escape(user),
                          dv.log_text()))


def dv_ends(dv, user, polite=False):
    """Dovecot's ends of user's IMAP sessions (polite: those ended by a
    LOGOUT; else any disconnect too)."""
    what = r"Disconnected: Logged out" if polite else r"Disconnected"
    return len(re.findall(r"imap\(%s\)<[^\n]*?%s" % (re.escape(user), what), dv.log_text()))


def append(dv, user, msg):
    """APPEND directly at Dovecot, and wait until its log shows that direct
    session's end (so that later counts of session ends are not upset)."""
    n = dv_ends(dv, user)
    dv.append(user, msg)
    wait_until(lambda: dv_ends(dv, user) > n, 5, "Dovecot logged the direct APPEND session end")


def log_barrier(dv):
    """Wait until Dovecot's log caught up with every login before now: log in
    directly as ru-barrier and wait for that Login line (one imap-login
    process writes both, in order, through one pipe). dv.barrier: another
    (user, password) for a Dovecot without ru-barrier."""
    user, pw = getattr(dv, "barrier", ("ru-barrier", rpw("ru-barrier")))
    n = dv_logins(dv, user)
    c = dv.imap(user, pw, timeout=10)
    try:
        c.logout()
    except Exception:
        pass
    wait_until(lambda: dv_logins(dv, user) > n, 5, "Dovecot logged the barrier login")


def wait_logins(dv, user, want):
    """Dovecot's log shows exactly want logins of user (waits for lines to
    arrive, then for the log to settle)."""
    wait_until(lambda: dv_logins(dv, user) >= want, 5,
               lambda: "%d Dovecot logins of %s (have %d)" % (want, user, dv_logins(dv, user)))
    log_barrier(dv)
    assert dv_logins(dv, user) == want, dv.log_tail_text(20)


def connect(m, ca_ctx):
    c = imapc.Client(m.imaps_port, tls=ca_ctx, timeout=TIMEOUT)
    c.greeting()
    return c


def login(m, ca_ctx, user, pw=None, tag="l"):
    c = connect(m, ca_ctx)
    _, tagged = c.cmd(tag, "LOGIN %s %s" % (imapc.quote(user), imapc.quote(pw or rpw(user))))
    assert tagged.startswith(tag.encode() + b" OK [CAPABILITY "), (user, tagged)
    return c


def select(c, mailbox="INBOX", tag="s"):
    """SELECT; returns the EXISTS count."""
    untagged, tagged = c.cmd(tag, "SELECT %s" % mailbox)
    assert tagged.startswith(tag.encode() + b" OK"), tagged
    exists = [int(x.split()[1]) for x in untagged if re.match(rb"\* \d+ EXISTS\r\n$", x)]
    assert len(exists) == 1, untagged
    return exists[0]


PROXY_LOGOUT = b"* BYE Logging out\r\n%s OK Logout completed.\r\n"


def logout_exact(c, tag="o"):
    """LOGOUT answered by imapmux: exactly its two lines, then the close.
    (imapmux answers only once the backend session is reset and can be
    taken: a login right after may reuse it; test_slow_backend_reset.)"""
    c.send("%s LOGOUT\r\n" % tag)
    got = c.expect_closed(5)
    assert got == PROXY_LOGOUT % tag.encode(), got
    c.close()


def logout_any(c, tag="o"):
    """LOGOUT answered by whoever: a BYE, tag OK, then the close."""
    c.send("%s LOGOUT\r\n" % tag)
    got = c.expect_closed(5)
    lines = got.split(b"\r\n")
    assert any(x.startswith(b"* BYE") for x in lines), got
    assert got.endswith(b"\r\n") and lines[-2].startswith(tag.encode() + b" OK "), got
    c.close()
    return got


def message(subject, msgid=None):
    msgid = msgid or "reuse-%d@imapmux.test" % time.time_ns()
    return ("From: t <t@imapmux.test>\r\nTo: u@imapmux.test\r\nSubject: %s\r\n"
            "Message-ID: <%s>\r\n\r\nbody\r\n" % (subject, msgid)).encode(), msgid


# ---------------------------------------------------------------------------
# 1. the webmail pattern: one backend login for many client logins

def test_five_rounds_one_backend_login(make_mux, rdv, cert, ca_ctx):
    user = "ru-rounds"
    append(rdv, user, message("round")[0])
    m = start_mux(make_mux, rdv, cert)
    base_logins = dv_logins(rdv, user)
    base_ends, base_polite = dv_ends(rdv, user), dv_ends(rdv, user, polite=True)
    assert counts(m) == (0, 0)

    for i in range(5):
        c = login(m, ca_ctx, user, tag="l%d" % i)
        assert select(c, tag="s%d" % i) >= 1
        untagged, tagged = c.cmd("f%d" % i, "FETCH 1:* FLAGS")
        assert tagged.startswith(b"f%d OK" % i), tagged
        assert any(b" FETCH (FLAGS (" in x for x in untagged), untagged
        logout_exact(c, "o%d" % i)
        assert counts(m) == (i, 1), "after round %d" % (i + 1)

    wait_logins(rdv, user, base_logins + 1)
    assert counts(m) == (4, 1)
    # The one backend session is still open at Dovecot (kept, not logged out).
    assert dv_ends(rdv, user) == base_ends, rdv.log_tail_text(20)

    # Shutdown drops the kept session: Dovecot sees it end.
    m.expect_exit = True
    t0 = time.monotonic()
    assert m.stop(timeout=10) is not None
    assert time.monotonic() - t0 < 4, "SIGTERM with only a kept session took %.1fs" % (
        time.monotonic() - t0)
    wait_until(lambda: dv_ends(rdv, user, polite=True) > base_polite, 5,
               lambda: "Dovecot saw the kept session LOGOUT at shutdown" + rdv.log_tail_text(10))


# ---------------------------------------------------------------------------
# 2. a reused session starts fresh: nothing selected, current mailbox state

def test_reused_session_has_no_mailbox_selected_and_sees_changes(make_mux, rdv, cert, ca_ctx):
    user = "ru-fresh"
    append(rdv, user, message("first")[0])
    m = start_mux(make_mux, rdv, cert)

    c = login(m, ca_ctx, user)
    n0 = select(c)
    logout_exact(c)
    assert counts(m) == (0, 1)

    # A change made meanwhile, directly at Dovecot.
    append(rdv, user, message("meanwhile")[0])

    c = login(m, ca_ctx, user)
    assert counts(m) == (1, 1), "second login did not reuse the kept session"
    _, tagged = c.cmd("f", "FETCH 1 FLAGS")
    assert imapc.status_of(tagged) in ("BAD", "NO"), (
        "a reused session still had a mailbox selected: %r" % tagged)
    assert select(c) == n0 + 1
    logout_exact(c)
    # Once more, with EXAMINE in the reused session this time.
    append(rdv, user, message("meanwhile 2")[0])
    c = login(m, ca_ctx, user)
    assert counts(m) == (2, 1)
    _, tagged = c.cmd("f", "FETCH 1 FLAGS")
    assert imapc.status_of(tagged) in ("BAD", "NO"), tagged
    untagged, tagged = c.cmd("x", "EXAMINE INBOX")
    assert tagged.startswith(b"x OK [READ-ONLY]"), tagged
    assert b"* %d EXISTS\r\n" % (n0 + 2) in untagged, untagged
    logout_exact(c)


# ---------------------------------------------------------------------------
# 3. other credentials never get a kept session

def test_wrong_password_never_reuses(make_mux, rdv, cert, ca_ctx):
    user = "ru-wrong"
    m = start_mux(make_mux, rdv, cert)
    c = login(m, ca_ctx, user)
    select(c)
    logout_exact(c)
    log_barrier(rdv)
    base = dv_logins(rdv, user)

    for i, pw in enumerate(["not-" + rpw(user), rpw(user) + "x", rpw(user).upper()]):
        with connect(m, ca_ctx) as c:
            _, tagged = c.cmd("w%d" % i, "LOGIN %s %s" % (imapc.quote(user), imapc.quote(pw)))
            assert tagged.startswith(b"w%d NO [AUTHENTICATIONFAILED]" % i), (pw, tagged)
            # Still not logged in: a command needing a login is refused.
            _, tagged = c.cmd("s%d" % i, "SELECT INBOX")
            assert imapc.status_of(tagged) == "BAD", tagged
    assert counts(m) == (0, 4), "wrong passwords: reused/backend logins"
    log_barrier(rdv)
    assert dv_logins(rdv, user) == base, "Dovecot logged a wrong password in"

    # The kept session survived the failed attempts and goes to the right password.
    c = login(m, ca_ctx, user)
    assert counts(m) == (1, 4)
    logout_exact(c)


def test_other_user_never_gets_the_session(make_mux, rdv, cert, ca_ctx):
    a, b = "ru-a", "ru-b"
    m = start_mux(make_mux, rdv, cert)
    c = login(m, ca_ctx, a)
    select(c)
    logout_exact(c)
    assert counts(m) == (0, 1)

    msg, marker = message("only for a")
    append(rdv, a, msg)
    base_b = dv_logins(rdv, b)

    c = login(m, ca_ctx, b)
    assert counts(m) == (0, 2), "b took a kept session"
    select(c)
    untagged, tagged = c.cmd("q", 'UID SEARCH HEADER Message-ID "%s"' % marker)
    assert tagged.startswith(b"q OK"), tagged
    assert untagged == [b"* SEARCH\r\n"], "b sees a's mailbox: %r" % untagged
    logout_exact(c)
    wait_logins(rdv, b, base_b + 1)

    # a gets its own session back, and sees the marker there.
    c = login(m, ca_ctx, a)
    assert counts(m) == (1, 2)
    select(c)
    untagged, _ = c.cmd("q", 'UID SEARCH HEADER Message-ID "%s"' % marker)
    assert len(untagged) == 1 and len(untagged[0].split()) == 3, untagged
    logout_exact(c)


def direct_login_ok(dv, user, pw):
    try:
        dv.imap(user, pw, timeout=5).logout()
        return True
    except imaplib.IMAP4.error:
        return False


def set_dovecot_password(dv, user, old, new):
    """Change user's {PLAIN} password in dv's passwd-file, and wait until
    Dovecot takes the new one (it looks at the file at most once a second)."""
    path = os.path.join(dv.dir, "users")
    with open(path) as f:
        text = f.read()
    entry = "%s:{PLAIN}%s:" % (user, old)
    assert entry in text
    with open(path + ".new", "w") as f:
        f.write(text.replace(entry, "%s:{PLAIN}%s:" % (user, new)))
    os.chmod(path + ".new", 0o644)
    os.rename(path + ".new", path)
    wait_until(lambda: direct_login_ok(dv, user, new), 5, "Dovecot takes the new password",
               interval=0.3)


def test_password_changed_at_backend(make_mux, rdv, cert, ca_ctx):
    """The new password never gets the session kept for the old one: it logs
    in to Dovecot afresh. (What the old password gets meanwhile, the kept
    session, is up to reuse_ttl or a kick.)"""
    user, new = "ru-pw", "rpw-ru-pw-NEW-7"
    m = start_mux(make_mux, rdv, cert)
    c = login(m, ca_ctx, user)
    select(c)
    logout_exact(c)
    set_dovecot_password(rdv, user, rpw(user), new)
    log_barrier(rdv)
    base = dv_logins(rdv, user)
    try:
        c = login(m, ca_ctx, user, new)
        assert counts(m) == (0, 2), "the new password got the old password's session"
        select(c)
        logout_exact(c)
        wait_logins(rdv, user, base + 1)
        # Now both are kept; each password gets its own back.
        c = login(m, ca_ctx, user, new)
        assert counts(m) == (1, 2)
        logout_exact(c)
    finally:
        set_dovecot_password(rdv, user, new, rpw(user))


# ---------------------------------------------------------------------------
# 4. per-connection state: ENABLE & co. taint the session; IDLE

def test_state_changing_commands_prevent_reuse(make_mux, rdv, cert, ca_ctx):
    user = "ru-taint"
    append(rdv, user, message("taint")[0])
    m = start_mux(make_mux, rdv, cert)
    base = dv_logins(rdv, user)
    # Each round sends one tainting command; the next login must be a new
    # backend login. (NOTIFY is refused by Dovecot; the proxy must not reuse
    # the session anyway. A LOGIN after login never reaches the backend:
    # imapmux answers it BAD itself, see test_relogin_refused_by_proxy.)
    taints = ["ENABLE CONDSTORE", "NOTIFY NONE", "enable utf8=accept",
              "SELECT INBOX (CONDSTORE)"]
    for i, cmd in enumerate(taints):
        c = login(m, ca_ctx, user, tag="l%d" % i)
        assert counts(m) == (0, i + 1), "reused after %r" % (taints[i - 1] if i else None)
        select(c)
        untagged, tagged = c.cmd("t%d" % i, cmd)
        assert imapc.status_of(tagged) in ("OK", "NO", "BAD"), tagged
        logout_any(c, "o%d" % i)

    # Untainted round: kept, and the next login reuses it.
    c = login(m, ca_ctx, user)
    assert counts(m) == (0, len(taints) + 1)
    logout_exact(c)
    c = login(m, ca_ctx, user)
    assert counts(m) == (1, len(taints) + 1)
    # The reused session has no CONDSTORE (it never had it enabled).
    select(c)
    untagged, tagged = c.cmd("f", "FETCH 1:* (FLAGS)")
    assert tagged.startswith(b"f OK"), tagged
    assert not any(b"MODSEQ" in x for x in untagged), untagged
    logout_exact(c)
    wait_logins(rdv, user, base + len(taints) + 1)


def test_relogin_refused_by_proxy(make_mux, rdv, cert, ca_ctx):
    """LOGIN and AUTHENTICATE after login are answered BAD by imapmux and
    never reach the backend, so they change nothing there: the session is
    still kept at LOGOUT and reused by the next login."""
    user = "ru-taint"
    m = start_mux(make_mux, rdv, cert)
    c = login(m, ca_ctx, user)
    before = counts(m)
    for i, cmd in enumerate(["LOGIN %s %s" % (user, rpw(user)), "AUTHENTICATE PLAIN",
                             "UNAUTHENTICATE", "STARTTLS"]):
        untagged, tagged = c.cmd("r%d" % i, cmd)
        assert tagged.startswith(b"r%d BAD" % i), tagged
    logout_exact(c)
    c = login(m, ca_ctx, user)
    assert counts(m) == (before[0] + 1, before[1]), "not reused after a refused re-login"
    logout_exact(c)


@pytest.mark.parametrize("pipelined", [False, True], ids=["done-then-logout",
                                                          "done+logout-one-write"])
def test_idle_done_then_logout(make_mux, rdv, cert, ca_ctx, pipelined):
    user = "ru-idle" if not pipelined else "ru-idle2"
    m = start_mux(make_mux, rdv, cert)
    base = dv_logins(rdv, user)
    c = login(m, ca_ctx, user)
    select(c)
    c.send(b"i IDLE\r\n")
    line = c.readline()
    assert line.startswith(b"+ "), line
    if pipelined:
        c.send(b"DONE\r\no LOGOUT\r\n")
        _, tagged = c.read_until_tagged("i", timeout=5)
        assert tagged.startswith(b"i OK"), tagged
        got = c.expect_closed(5)
        lines = got.split(b"\r\n")
        assert lines[0].startswith(b"* BYE") and lines[-2].startswith(b"o OK "), got
        c.close()
    else:
        c.send(b"DONE\r\n")
        _, tagged = c.read_until_tagged("i", timeout=5)
        assert tagged.startswith(b"i OK"), tagged
        logout_any(c)

    # Reused or not, the next login works, with a mailbox-less session,
    # and the two kinds of evidence agree.
    c = login(m, ca_ctx, user)
    reused, logins = counts(m)
    assert (reused, logins) in ((1, 1), (0, 2)), (reused, logins)
    _, tagged = c.cmd("f", "FETCH 1 FLAGS")
    assert imapc.status_of(tagged) in ("BAD", "NO"), tagged
    select(c)
    logout_any(c)
    wait_logins(rdv, user, base + logins)


# ---------------------------------------------------------------------------
# 5. pipelining before LOGOUT

def test_pipelined_logout_answers_in_order(make_mux, rdv, cert, ca_ctx):
    user = "ru-pipe"
    for i in range(3):
        append(rdv, user, message("pipe %d" % i)[0])
    m = start_mux(make_mux, rdv, cert)
    base = dv_logins(rdv, user)

    c = login(m, ca_ctx, user)
    c.send(b"a SELECT INBOX\r\nb FETCH 1:* FLAGS\r\nc LOGOUT\r\n")
    untagged, tagged = c.read_until_tagged("a", timeout=5)
    assert tagged.startswith(b"a OK"), tagged
    assert b"* 3 EXISTS\r\n" in untagged, untagged
    untagged, tagged = c.read_until_tagged("b", timeout=5)
    assert tagged.startswith(b"b OK"), tagged
    assert [x for x in untagged if b" FETCH (FLAGS (" in x] == untagged and len(untagged) == 3, \
        untagged
    got = c.expect_closed(5)
    assert got == PROXY_LOGOUT % b"c", got
    c.close()
    assert counts(m) == (0, 1)

    c = login(m, ca_ctx, user)
    assert counts(m) == (1, 1), "the pipelined session was not reused"
    _, tagged = c.cmd("f", "FETCH 1 FLAGS")
    assert imapc.status_of(tagged) in ("BAD", "NO"), tagged
    logout_exact(c)
    wait_logins(rdv, user, base + 1)


class LatencyRelay:
    """A TCP relay to 127.0.0.1:port that delays every byte from there by
    delay seconds (bytes toward it pass at once): a far-away backend. It
    relays TLS as it is."""

    def __init__(self, port, delay):
        self.target, self.delay = port, delay
        self.lsock = socket.create_server(("127.0.0.1", 0))
        self.port = self.lsock.getsockname()[1]
        self.socks = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                down, _ = self.lsock.accept()
                up = socket.create_connection(("127.0.0.1", self.target), timeout=5)
            except OSError:
                return
            up.settimeout(None)
            self.socks += [down, up]
            q = queue.Queue()
            threading.Thread(target=self._pipe, args=(down, up, None), daemon=True).start()
            threading.Thread(target=self._pipe, args=(up, None, q), daemon=True).start()
            threading.Thread(target=self._late, args=(q, down), daemon=True).start()

    def _pipe(self, src, dst, q):
        while True:
            try:
                data = src.recv(65536)
            except OSError:
                data = b""
            if q is not None:
                q.put((time.monotonic() + self.delay, data))
            elif data:
                try:
                    dst.sendall(data)
                except OSError:
                    return
            if not data:
                if dst is not None:
                    self._shut(dst)
                return

    def _late(self, q, dst):
        while True:
            due, data = q.get()
            time.sleep(max(0.0, due - time.monotonic()))
            if not data:
                self._shut(dst)
                return
            try:
                dst.sendall(data)
            except OSError:
                return

    @staticmethod
    def _shut(s):
        try:
            s.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self):
        for s in [self.lsock] + self.socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def test_slow_backend_reset(make_mux, rdv, cert, ca_ctx):
    """With 0.2 s from the backend to imapmux, the reset's answer comes well
    after the client could log in again: imapmux answers the LOGOUT only once
    the session is reset, so an immediate next login still reuses it."""
    user = "ru-slow"
    relay = LatencyRelay(rdv.imaps_port, 0.2)
    try:
        stats_port = lab.free_port()
        bk = backend_section(rdv, tls="implicit", ca=cert, check_interval=0,
                             connect_timeout="8s", command_timeout="8s")
        bk["address"] = "127.0.0.1:%d" % relay.port
        m = make_mux(backends=[("a", bk)], routing={"lookup": "static", "fallback": "a"},
                     imapmux={"workers": 1, "stats_listen": "127.0.0.1:%d" % stats_port})
        lab.wait_listening(stats_port, timeout=10, proc=m.proc)
        m.stats_port = stats_port
        for i in range(3):
            c = login(m, ca_ctx, user)
            assert counts(m) == (i, 1), "round %d" % (i + 1)
            select(c)
            logout_exact(c)
        assert counts(m) == (2, 1)
    finally:
        relay.close()


# ---------------------------------------------------------------------------
# 6. reuse_ttl

def test_reuse_ttl_expiry(make_mux, rdv, cert, ca_ctx):
    user = "ru-ttl"
    m = start_mux(make_mux, rdv, cert, reuse_ttl="1s")
    base, base_ends = dv_logins(rdv, user), dv_ends(rdv, user, polite=True)

    c = login(m, ca_ctx, user)
    select(c)
    logout_exact(c)
    # Within the TTL: reused.
    c = login(m, ca_ctx, user)
    assert counts(m) == (1, 1)
    select(c)
    logout_exact(c)
    # Past it: dropped (Dovecot sees the session end), and a new login.
    time.sleep(2.5)
    wait_until(lambda: dv_ends(rdv, user, polite=True) > base_ends, 3,
               lambda: "kept session logged out after reuse_ttl" + rdv.log_tail_text(10))
    c = login(m, ca_ctx, user)
    assert counts(m) == (1, 2), "a session was reused past reuse_ttl"
    select(c)
    logout_exact(c)
    wait_logins(rdv, user, base + 2)


def test_reuse_ttl_zero_never_reuses(make_mux, rdv, cert, ca_ctx):
    user = "ru-ttl0"
    m = start_mux(make_mux, rdv, cert, reuse_ttl=0)
    base = dv_logins(rdv, user)
    for i in range(3):
        c = login(m, ca_ctx, user)
        select(c)
        logout_any(c)
    assert counts(m) == (0, 3)
    wait_logins(rdv, user, base + 3)


# ---------------------------------------------------------------------------
# 7. the backend goes away while a session is kept

@pytest.mark.parametrize("how", ["stop", "kill"])
def test_backend_restart_while_kept(make_mux, fresh_dovecot, cert, ca_ctx, how):
    user = "alice"
    fresh_dovecot.barrier = ("judy", password("judy"))
    m = start_mux(make_mux, fresh_dovecot, cert)
    c = login(m, ca_ctx, user, password(user))
    select(c)
    logout_exact(c)
    assert counts(m) == (0, 1)

    if how == "stop":
        fresh_dovecot.stop()
    else:
        fresh_dovecot.kill_hard()
    lab.wait_closed(fresh_dovecot.imaps_port, timeout=10)
    fresh_dovecot.start()
    base = dv_logins(fresh_dovecot, user)

    c = login(m, ca_ctx, user, password(user))
    assert counts(m) == (0, 2), "a dead kept session was reused"
    select(c)
    _, tagged = c.cmd("n", "NOOP")
    assert tagged.startswith(b"n OK "), tagged
    logout_exact(c)
    wait_logins(fresh_dovecot, user, base + 1)
    assert "[UNAVAILABLE]" not in b"".join(c.transcript).decode("utf-8", "replace")


# ---------------------------------------------------------------------------
# 8, 9. with Redis: kick, auth = redis

def test_kick_drops_kept_session(make_mux, rdv, cert, ca_ctx, redis, prefix):
    kicked, other = "ru-kick", "ru-kick2"
    m = start_mux(make_mux, rdv, cert, redis=redis_section(redis, prefix),
                  routing={"lookup": "redis", "fallback": "a"})
    wait_subscribed(redis, prefix, 1)
    for user in (kicked, other):
        c = login(m, ca_ctx, user)
        select(c)
        logout_exact(c)
    assert counts(m) == (0, 2)
    log_barrier(rdv)
    base_k, base_o = dv_logins(rdv, kicked), dv_logins(rdv, other)
    ends_k, ends_o = dv_ends(rdv, kicked, polite=True), dv_ends(rdv, other)

    assert publish(redis, prefix, "kick %s" % kicked) >= 1
    wait_until(lambda: dv_ends(rdv, kicked, polite=True) > ends_k, 5,
               lambda: "Dovecot saw the kicked kept session log out" + rdv.log_tail_text(10))

    c = login(m, ca_ctx, kicked)
    assert counts(m) == (0, 3), "the kicked user's kept session was reused"
    select(c)
    logout_exact(c)
    # The other user's kept session was left alone.
    assert dv_ends(rdv, other) == ends_o
    c = login(m, ca_ctx, other)
    assert counts(m) == (1, 3), "kick dropped another user's kept session"
    logout_exact(c)
    wait_logins(rdv, kicked, base_k + 1)
    assert dv_logins(rdv, other) == base_o


def test_auth_redis_reuse(make_mux, rdv, cert, ca_ctx, redis, prefix):
    user = "ru-redis"
    set_password(redis, prefix, user, crypt_hash(redis_pw(user)))
    m = start_mux(make_mux, rdv, cert, redis=redis_section(redis, prefix),
                  routing={"lookup": "redis", "fallback": "a"},
                  imapmux={"auth": "redis", "auth_fail_limit": 0})
    base_master = len(master_logins(rdv))

    c = login(m, ca_ctx, user, redis_pw(user))
    select(c)
    logout_exact(c)
    wait_until(lambda: len(master_logins(rdv)) == base_master + 1, 5,
               lambda: "one master login (have %d)" % (len(master_logins(rdv)) - base_master))
    assert master_logins(rdv)[-1] == user
    assert counts(m) == (0, 1)

    # A wrong password (Dovecot's own included) is refused, and takes nothing.
    for i, pw in enumerate([redis_pw(user) + "x", rpw(user)]):
        with connect(m, ca_ctx) as c:
            _, tagged = c.cmd("w%d" % i, "LOGIN %s %s" % (user, imapc.quote(pw)))
            assert tagged.startswith(b"w%d NO [AUTHENTICATIONFAILED]" % i), tagged
    assert counts(m) == (0, 1)

    c = login(m, ca_ctx, user, redis_pw(user))
    assert counts(m) == (1, 1), "a verified login did not reuse the kept session"
    _, tagged = c.cmd("f", "FETCH 1 FLAGS")
    assert imapc.status_of(tagged) in ("BAD", "NO"), tagged
    select(c)
    logout_exact(c)
    log_barrier(rdv)
    assert len(master_logins(rdv)) == base_master + 1, "a new master login for a reuse"


# ---------------------------------------------------------------------------
# problems found by this module, fixed since

def test_input_pipelined_after_logout_does_not_stall(make_mux, rdv, cert, ca_ctx):
    user = "ru-x1"
    m = start_mux(make_mux, rdv, cert)
    c = login(m, ca_ctx, user)
    select(c)
    c.send(b"o LOGOUT\r\nn NOOP\r\n")
    # Dovecot itself answers at once and ignores what follows LOGOUT.
    try:
        got = c.expect_closed(2)
    except imapc.Timeout:
        got = b"(still open after 2 s) " + b"".join(c.transcript[-2:])
    c.close()
    lines = got.split(b"\r\n")
    assert lines[0].startswith(b"* BYE") and b"o OK Logout completed" in got, got


def test_implicit_condstore_is_not_carried_over(make_mux, rdv, cert, ca_ctx):
    user = "ru-x2"
    append(rdv, user, message("condstore")[0])
    m = start_mux(make_mux, rdv, cert)
    c = login(m, ca_ctx, user)
    _, tagged = c.cmd("s", "SELECT INBOX (CONDSTORE)")
    assert tagged.startswith(b"s OK"), tagged
    logout_any(c)

    # Reused or not, the next session must behave as a fresh one: no
    # CONDSTORE, so no MODSEQ in the untagged FETCH of a STORE.
    c = login(m, ca_ctx, user)
    select(c)
    untagged, tagged = c.cmd("st", "STORE 1 FLAGS (\\Flagged)")
    assert tagged.startswith(b"st OK"), tagged
    reused = counts(m)[0]
    logout_any(c)
    assert not any(b"MODSEQ" in x for x in untagged), (reused, untagged)


@pytest.mark.parametrize("how", ["close", "failed_select", "never_selected"])
def test_reuse_when_nothing_is_selected_at_logout(make_mux, rdv, cert, ca_ctx, how):
    """CLOSE before LOGOUT, a failed SELECT, or no SELECT at all: nothing is
    selected, so no UNSELECT is needed and the session is still reused."""
    user = "ru-nosel-" + how.replace("_", "")
    append(rdv, user, message("nosel")[0])
    m = start_mux(make_mux, rdv, cert)
    for i in range(3):
        c = login(m, ca_ctx, user, tag="l%d" % i)
        if how == "close":
            select(c, tag="s%d" % i)
            _, tagged = c.cmd("c%d" % i, "CLOSE")
            assert tagged.startswith(b"c%d OK" % i), tagged
        elif how == "failed_select":
            select(c, tag="s%d" % i)
            _, tagged = c.cmd("x%d" % i, "SELECT no-such-mailbox")
            assert tagged.startswith(b"x%d NO" % i), tagged
        logout_exact(c, "o%d" % i)
    assert counts(m) == (2, 1)
