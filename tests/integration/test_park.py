"""Parked IDLE (issue #11): a quiet session gives its backend connection up,
imapmux answers for it, and a wake tells the client exactly what changed.

Every test runs three times: watch = events (changes announced on the Redis
events channel, as Dovecot's push script does; the test publishes them),
watch = idle (one watcher connection in IDLE per user and mailbox) and
watch = notify (one NOTIFY watcher per user); with watchers nothing is
published. The module's Dovecot has the mailbox list index, without which
Dovecot offers no NOTIFY. Real Dovecot, real Redis, real TLS; the clients are imapc
(tests/integration/imapc.py), whose every byte read is checked.
"""

import re
import signal
import time

import pytest

import imapc
import lab
from conftest import backend_section, password, scrape_metrics, socks_to, wait_until

pytest.register_assert_rewrite("conftest_redis")
from conftest_redis import publish, redis_section, wait_subscribed  # noqa: E402

pytest_plugins = ["conftest_redis"]

TIMEOUT = 10.0
WATCH = "events"


@pytest.fixture(scope="module")
def dovecot(cert, key):
    """conftest's Dovecot, with mailbox_list_index = yes (for NOTIFY)."""
    from conftest import MASTER_PASSWORD, USERS
    d = lab.Dovecot(USERS, tls=True, cert=cert, key=key, master_password=MASTER_PASSWORD,
                    name="dovecot-park", extra_conf="mailbox_list_index = yes\n")
    d.start()
    yield d
    d.cleanup()


@pytest.fixture(params=["events", "idle", "notify"], autouse=True)
def watch_mode(request):
    global WATCH
    WATCH = request.param
    yield request.param


def _announce(redis, prefix, user, mailbox="INBOX"):
    """What Dovecot's push script does after a change (events mode only: a
    watcher must find the change by itself)."""
    if WATCH == "events":
        assert publish(redis, prefix, "mbox %s %s" % (user, mailbox)) >= 1


def _mux(make_mux, dovecot, redis, prefix, imapmux=None, **bk):
    kv = backend_section(dovecot, watch=WATCH)
    kv.update(bk)
    port = lab.free_port()
    base = {"workers": 1, "park_idle_after": "1s", "log_level": "debug",
            "stats_listen": "127.0.0.1:%d" % port}
    base.update(imapmux or {})
    m = make_mux(backends=[("a", kv)], redis=redis_section(redis, prefix), imapmux=base)
    m.stats_port = port
    wait_subscribed(redis, prefix, 1)
    return m


def _metric(m, name):
    return scrape_metrics(m.stats_port).get(name, 0)


def _direct(dovecot, user):
    """A client straight on Dovecot (the store's truth, and the one making changes)."""
    c = imapc.Client(dovecot.port, timeout=TIMEOUT)
    c.greeting()
    _, t = c.cmd("l", "LOGIN %s %s" % (imapc.quote(user), imapc.quote(password(user))))
    assert t.startswith(b"l OK"), t
    return c


def _wait_parked(m, n, timeout=8.0):
    """n sessions parked; with watchers, each watcher up and the one
    catch-up wake it causes (sessions parked before it was up) over."""
    def parked():
        return _metric(m, "imapmux_sessions_parked") >= n
    wait_until(parked, timeout,
               lambda: "%d parked session(s) (have %s)" % (n, _metric(m, "imapmux_sessions_parked")))
    if WATCH != "events":
        wait_until(lambda: _metric(m, "imapmux_watchers_up") >= _metric(m, "imapmux_watchers") > 0,
                   timeout, "every watcher up")
        time.sleep(0.3)
        wait_until(parked, timeout, "parked again after the watchers' catch-up")


def _wakes(m, cause):
    return _metric(m, "imapmux_wakes_total{cause=\"%s\"}" % cause)


def _backend_socks(m, dovecot):
    """Backend connections imapmux holds for sessions (not its watchers)."""
    return len(socks_to(m.proc.pid, dovecot.port)) - int(_metric(m, "imapmux_watchers"))


def _login(m, ca_ctx, user):
    c = imapc.Client(m.imaps_port, tls=ca_ctx, timeout=TIMEOUT)
    c.greeting()
    _, t = c.cmd("l", "LOGIN %s %s" % (imapc.quote(user), imapc.quote(password(user))))
    assert t.startswith(b"l OK"), t
    return c


def _ok(c, tag, text):
    untagged, t = c.cmd(tag, text)
    assert t.startswith(tag.encode() + b" OK"), (text, t)
    return untagged


def _append(c, tag, subject, mailbox="INBOX"):
    msg = b"Subject: %s\r\n\r\nbody\r\n" % subject.encode()
    c.send(b"%s APPEND %s {%d}\r\n" % (tag.encode(), mailbox.encode(), len(msg)))
    assert c.readline().startswith(b"+"), "no continuation for APPEND"
    c.send(msg + b"\r\n")
    _, t = c.read_until_tagged(tag)
    assert t.startswith(tag.encode() + b" OK"), t




def test_idle_session_parks_and_wakes_on_change(make_mux, dovecot, redis, prefix, ca_ctx):
    user = "park1"
    d = _direct(dovecot, user)
    _append(d, "a1", "one")
    m = _mux(make_mux, dovecot, redis, prefix, reuse_ttl="0")
    c = _login(m, ca_ctx, user)
    sel = b"".join(_ok(c, "s", "SELECT INBOX"))
    n = int(re.search(rb"\* (\d+) EXISTS", sel).group(1))
    _ok(c, "f", "UID FETCH 1:* (FLAGS)")
    c.send(b"i IDLE\r\n")
    assert c.readline().startswith(b"+")
    _wait_parked(m, 1)
    w0, c0 = _wakes(m, "change"), _wakes(m, "client")
    wait_until(lambda: _backend_socks(m, dovecot) == 0, 5, "the backend connection closed")
    # A change, announced on the events channel: told in IDLE, exactly.
    _append(d, "a2", "two")
    _announce(redis, prefix, user)
    line = _data(c)
    assert line == b"* %d EXISTS\r\n" % (n + 1), line
    _wait_parked(m, 1)
    c.send(b"DONE\r\n")
    assert c.readline() == b"i OK Idle completed.\r\n"
    _ok(c, "n", "NOOP")
    assert (_wakes(m, "change") - w0) == 1
    # A command wakes it: the answer comes from Dovecot.
    fetched = b"".join(_ok(c, "g", "FETCH %d (FLAGS)" % (n + 1)))
    assert b"* %d FETCH" % (n + 1) in fetched
    assert (_wakes(m, "client") - c0) == 1
    _ok(c, "z", "LOGOUT")


def _park_idle(m, ca_ctx, user, enable=None, fetch=True, mailbox="INBOX"):
    """A client through imapmux with mailbox selected (UIDs learned when
    fetch), in IDLE; the SELECT's EXISTS count."""
    c = _login(m, ca_ctx, user)
    if enable:
        _ok(c, "e", "ENABLE " + enable)
    sel = b"".join(_ok(c, "s", "SELECT " + mailbox))
    n = int(re.search(rb"\* (\d+) EXISTS", sel).group(1))
    if fetch and n:
        _ok(c, "f", "UID FETCH 1:* (FLAGS)")
    c.send(b"i IDLE\r\n")
    assert c.readline().startswith(b"+")
    return c, n


def _reset_inbox(dovecot, user, subjects):
    """The user's INBOX holds exactly these messages (new ones, UIDs ascending)."""
    d = _direct(dovecot, user)
    sel = b"".join(_ok(d, "s", "SELECT INBOX"))
    if int(re.search(rb"\* (\d+) EXISTS", sel).group(1)):
        _ok(d, "d", "STORE 1:* +FLAGS.SILENT (\\Deleted)")
        _ok(d, "x", "EXPUNGE")
    for i, subj in enumerate(subjects):
        _append(d, "a%d" % i, subj)
    return d


def _data(c, timeout=TIMEOUT):
    """The next line but Dovecot's IDLE keep-alives ("* OK Still here",
    which Dovecot times per user and address, so one may come at any
    moment while a session is attached in IDLE)."""
    while True:
        line = c.readline(timeout=timeout)
        if line != b"* OK Still here\r\n":
            return line


def _lines_until(c, pred, timeout=TIMEOUT):
    got = []
    deadline = time.monotonic() + timeout
    while not pred(got):
        left = deadline - time.monotonic()
        assert left > 0, "waited for more lines; got %r" % got
        got.append(_data(c, timeout=left))
    return got


def test_wake_tells_expunges_highest_first_exists_and_flags(make_mux, dovecot, redis, prefix,
                                                           ca_ctx):
    user = "park2"
    d = _reset_inbox(dovecot, user, ["m1", "m2", "m3", "m4", "m5"])
    m = _mux(make_mux, dovecot, redis, prefix, reuse_ttl="0")
    c, n = _park_idle(m, ca_ctx, user)
    assert n == 5
    _wait_parked(m, 1)
    # Messages 2 and 4 go, 5 gets \Flagged, one arrives.
    _ok(d, "st", "STORE 2,4 +FLAGS.SILENT (\\Deleted)")
    _ok(d, "ex", "EXPUNGE")
    _ok(d, "fl", "STORE 3 +FLAGS.SILENT (\\Flagged)")   # old 5 is 3 now
    _append(d, "ap", "m6")
    _announce(redis, prefix, user, "INBOX")
    got = _lines_until(c, lambda g: len(g) >= 4)
    assert got == [b"* 4 EXPUNGE\r\n", b"* 2 EXPUNGE\r\n", b"* 4 EXISTS\r\n",
                   b"* 3 FETCH (FLAGS (\\Flagged))\r\n"], got
    _wait_parked(m, 1)
    c.send(b"DONE\r\n")
    assert c.readline() == b"i OK Idle completed.\r\n"
    # The client's numbering is the store's: message 4 is the new one.
    untagged = _ok(c, "u", "FETCH 4 (UID FLAGS)")
    assert len(untagged) == 1 and untagged[0].startswith(b"* 4 FETCH"), untagged


def test_condstore_and_qresync_clients_get_modseq_and_vanished(make_mux, dovecot, redis, prefix,
                                                              ca_ctx):
    user = "park3"
    d = _reset_inbox(dovecot, user, ["m1", "m2", "m3"])
    m = _mux(make_mux, dovecot, redis, prefix, reuse_ttl="0")
    cs, _ = _park_idle(m, ca_ctx, user, enable="CONDSTORE")
    qr, _ = _park_idle(m, ca_ctx, user, enable="QRESYNC")
    _wait_parked(m, 2)
    uids = [int(x) for x in re.findall(rb"\* \d+ FETCH \(UID (\d+)", b"".join(
        _ok(d, "u", "UID FETCH 1:* (UID)")))]
    _ok(d, "st", "STORE 1 +FLAGS.SILENT (\\Deleted)")
    _ok(d, "ex", "EXPUNGE")
    _ok(d, "fl", "STORE 1 +FLAGS.SILENT (\\Seen)")
    mod = b"".join(_ok(d, "ms", "FETCH 1 (MODSEQ)"))
    modseq = int(re.search(rb"MODSEQ \((\d+)\)", mod).group(1))
    _announce(redis, prefix, user, "INBOX")
    # What each client gets before its IDLE ends: exactly these lines
    # (the \\Seen change is the highest MODSEQ: no HIGHESTMODSEQ line).
    want = {cs: [b"* 1 EXPUNGE\r\n", b"* 1 FETCH (MODSEQ (%d) FLAGS (\\Seen))\r\n" % modseq],
            qr: [b"* VANISHED %d\r\n" % uids[0],
                 b"* 1 FETCH (UID %d MODSEQ (%d) FLAGS (\\Seen))\r\n" % (uids[1], modseq)]}
    for c, lines in want.items():
        assert _lines_until(c, lambda g: len(g) >= 2) == lines
    _wait_parked(m, 2)
    for c in want:
        c.send(b"DONE\r\n")
        untagged, t = c.read_until_tagged("i")
        assert (untagged, t) == ([], b"i OK Idle completed.\r\n")


def test_answered_while_parked_without_a_backend(make_mux, dovecot, redis, prefix, ca_ctx):
    user = "park4"
    _reset_inbox(dovecot, user, ["m1"])
    m = _mux(make_mux, dovecot, redis, prefix, reuse_ttl="0",
             imapmux={"park_keepalive": "1s"})
    c, _ = _park_idle(m, ca_ctx, user)
    _wait_parked(m, 1)
    w0, c0 = _wakes(m, "change"), _wakes(m, "client")
    wait_until(lambda: _backend_socks(m, dovecot) == 0, 5, "the backend connection closed")
    logins = _metric(m, "imapmux_backend_logins_total")
    # Keep-alives in IDLE.
    assert c.readline(timeout=3) == b"* OK Still here\r\n"
    c.send(b"DONE\r\n")
    assert c.readline() == b"i OK Idle completed.\r\n"
    # Clients re-issue IDLE: answered here, no login.
    for k in range(3):
        c.send(b"j%d IDLE\r\n" % k)
        assert c.readline() == b"+ idling\r\n"
        c.send(b"DONE\r\n")
        assert c.readline() == b"j%d OK Idle completed.\r\n" % k
    _ok(c, "n", "NOOP")
    _ok(c, "k", "CHECK")
    # Anything but DONE ends the IDLE with BAD, as Dovecot does.
    c.send(b"x IDLE\r\nnonsense\r\n")
    assert c.readline() == b"+ idling\r\n"
    assert c.readline() == b"x BAD Expected DONE.\r\n"
    assert _metric(m, "imapmux_backend_logins_total") == logins
    assert _backend_socks(m, dovecot) == 0
    assert (_wakes(m, "client") - c0) == 0
    # Parking waited for the watcher: no wake without a change (none made).
    assert _wakes(m, "change") == 0
    assert _metric(m, "imapmux_park_answers_total") >= 10
    assert _metric(m, "imapmux_park_keepalives_total") >= 1
    c.send(b"z LOGOUT\r\n")
    assert c.readline() == b"* BYE Logging out\r\n"
    assert c.readline() == b"z OK Logout completed.\r\n"
    c.expect_closed(5)
    assert _metric(m, "imapmux_backend_logins_total") == logins


def test_kept_session_serves_the_wake_one_per_user(make_mux, dovecot, redis, prefix, ca_ctx):
    user = "park13"
    d = _reset_inbox(dovecot, user, ["m1", "m2"])
    m = _mux(make_mux, dovecot, redis, prefix)   # reuse_ttl default: kept
    clients = [_park_idle(m, ca_ctx, user)[0] for _ in range(3)]
    _wait_parked(m, 3)
    # Three parked sessions of one user hold one backend connection.
    wait_until(lambda: _backend_socks(m, dovecot) == 1, 5, "one kept backend connection")
    logins = _metric(m, "imapmux_backend_logins_total")
    _append(d, "ap", "m3")
    _announce(redis, prefix, user, "INBOX")
    for c in clients:
        line = _data(c)
        assert line == b"* 3 EXISTS\r\n", c.transcript[-6:]
    _wait_parked(m, 3)
    # One of the wakes took the kept session; the others logged in.
    assert _metric(m, "imapmux_backend_logins_total") <= logins + 2
    assert _metric(m, "imapmux_sessions_reused_total") >= 1
    wait_until(lambda: _backend_socks(m, dovecot) <= 1, 5, "one kept backend connection again")


def test_change_outside_idle_waits_for_the_next_command(make_mux, dovecot, redis, prefix, ca_ctx):
    user = "park14"
    d = _reset_inbox(dovecot, user, ["m1", "m2", "m3"])
    m = _mux(make_mux, dovecot, redis, prefix, reuse_ttl="0")
    c = _login(m, ca_ctx, user)
    _ok(c, "s", "SELECT INBOX")
    _ok(c, "f", "UID FETCH 1:* (FLAGS)")
    _wait_parked(m, 1)   # parked without IDLE
    w0, c0 = _wakes(m, "change"), _wakes(m, "client")
    _ok(d, "st", "STORE 2 +FLAGS.SILENT (\\Deleted)")
    _ok(d, "ex", "EXPUNGE")
    _announce(redis, prefix, user, "INBOX")
    # No command in progress: nothing may be sent (RFC 3501 7.4.1).
    with pytest.raises(imapc.Timeout):
        c.readline(timeout=1.0)
    assert (_wakes(m, "change") - w0) == 0
    untagged, t = c.cmd("n", "NOOP")
    assert t.startswith(b"n OK"), t
    assert [u.rstrip(b"\r\n") for u in untagged] == [b"* 2 EXPUNGE"], untagged


def test_commands_that_wake_go_on_in_order_with_literals(make_mux, dovecot, redis, prefix, ca_ctx):
    user = "park15"
    _reset_inbox(dovecot, user, ["m1"])
    m = _mux(make_mux, dovecot, redis, prefix, reuse_ttl="0")
    c, _ = _park_idle(m, ca_ctx, user)
    _wait_parked(m, 1)
    w0, c0 = _wakes(m, "change"), _wakes(m, "client")
    msg = b"Subject: woke\r\n\r\nhello\r\n"
    # DONE and three commands in one write: DONE answered here, the rest in
    # order once the wake is done, the literal's "+" from Dovecot.
    c.send(b"DONE\r\na NOOP\r\nb APPEND INBOX {%d}\r\n" % len(msg))
    assert c.readline() == b"i OK Idle completed.\r\n"
    _, t = c.read_until_tagged("a")
    assert t.startswith(b"a OK"), t
    assert c.readline().startswith(b"+ ")
    c.send(msg + b"\r\n")
    _, t = c.read_until_tagged("b")
    assert t.startswith(b"b OK"), t
    # Not pipelined after the APPEND: Dovecot may run a FETCH beside an
    # APPEND still being saved, and then see the mailbox without it.
    untagged, t = c.cmd("c", "UID FETCH 1:* (UID)")
    assert t.startswith(b"c OK"), t
    fetched = [u for u in untagged if b"FETCH" in u]
    assert len(fetched) == 2, c.transcript[-14:]
    assert (_wakes(m, "client") - c0) == 1


def test_uids_never_fetched_are_learned_before_parking(make_mux, dovecot, redis, prefix, ca_ctx):
    user = "park16"
    d = _reset_inbox(dovecot, user, ["m1", "m2", "m3"])
    m = _mux(make_mux, dovecot, redis, prefix, reuse_ttl="0")
    # SELECT and IDLE: the client knows three messages by number only.
    c, n = _park_idle(m, ca_ctx, user, fetch=False)
    assert n == 3
    _wait_parked(m, 1)
    _ok(d, "st", "STORE 1 +FLAGS.SILENT (\\Deleted)")
    _ok(d, "ex", "EXPUNGE")
    _announce(redis, prefix, user, "INBOX")
    assert _data(c) == b"* 1 EXPUNGE\r\n"
    _wait_parked(m, 1)


def test_mail_arriving_while_idle_then_parking(make_mux, dovecot, redis, prefix, ca_ctx):
    """EXISTS told during IDLE and never fetched: still parks, and the next
    change is told against that count."""
    user = "park17"
    d = _reset_inbox(dovecot, user, ["m1"])
    m = _mux(make_mux, dovecot, redis, prefix, reuse_ttl="0", imapmux={"park_idle_after": "2s"})
    c, _ = _park_idle(m, ca_ctx, user)
    _append(d, "ap", "m2")
    assert _data(c) == b"* 2 EXISTS\r\n"   # from Dovecot's own IDLE
    _wait_parked(m, 1)
    _append(d, "aq", "m3")
    _announce(redis, prefix, user, "INBOX")
    assert _data(c) == b"* 3 EXISTS\r\n"


def test_events_for_other_mailboxes_and_users_wake_nothing(make_mux, dovecot, redis, prefix,
                                                           ca_ctx):
    user, other = "park18", "park19"
    d = _reset_inbox(dovecot, user, ["m1"])
    work_box = "Work-" + WATCH   # the module's Dovecot serves both modes
    _ok(d, "c", "CREATE " + work_box)
    m = _mux(make_mux, dovecot, redis, prefix, reuse_ttl="0")
    inbox, _ = _park_idle(m, ca_ctx, user)
    work, _ = _park_idle(m, ca_ctx, user, mailbox=work_box)
    _reset_inbox(dovecot, other, [])
    third, _ = _park_idle(m, ca_ctx, other)
    _wait_parked(m, 3)
    w0, c0 = _wakes(m, "change"), _wakes(m, "client")
    _append(d, "ap", "w1", mailbox=work_box)
    _announce(redis, prefix, user, work_box)
    assert _data(work).endswith(b" EXISTS\r\n")
    for c in (inbox, third):
        with pytest.raises(imapc.Timeout):
            c.readline(timeout=0.5)
    assert (_wakes(m, "change") - w0) == 1


def test_kick_and_shutdown_reach_parked_sessions_at_once(make_mux, dovecot, redis, prefix, ca_ctx):
    user, other = "park20", "park19"
    _reset_inbox(dovecot, user, ["m1"])
    m = _mux(make_mux, dovecot, redis, prefix, reuse_ttl="0")
    kicked, _ = _park_idle(m, ca_ctx, user)
    stays, _ = _park_idle(m, ca_ctx, other)
    idle_out = _login(m, ca_ctx, other)
    _ok(idle_out, "s", "SELECT INBOX")
    _wait_parked(m, 3)
    publish(redis, prefix, "kick %s" % user)
    got = kicked.expect_closed(5)
    assert got.endswith(b"* BYE [UNAVAILABLE] Session terminated by the administrator.\r\n"), got
    # SIGTERM: parked sessions are quiet by definition: BYE at once, in
    # IDLE or not, long before shutdown_timeout.
    t0 = time.monotonic()
    m.signal(signal.SIGTERM)
    for c in (stays, idle_out):
        got = c.expect_closed(4)
        assert got.endswith(b"* BYE Server shutting down.\r\n"), got
    assert time.monotonic() - t0 < 3
    m.expect_exit = True


def test_mailbox_recreated_while_parked_ends_the_session(make_mux, dovecot, redis, prefix, ca_ctx):
    user = "park12"
    d = _reset_inbox(dovecot, user, [])
    box = "Gone-" + WATCH
    _ok(d, "c", "CREATE " + box)
    _append(d, "ap", "g1", mailbox=box)
    m = _mux(make_mux, dovecot, redis, prefix, reuse_ttl="0")
    c, _ = _park_idle(m, ca_ctx, user, mailbox=box)
    _wait_parked(m, 1)
    _ok(d, "dl", "DELETE " + box)
    _ok(d, "cr", "CREATE " + box)   # a new UIDVALIDITY
    _announce(redis, prefix, user, box)
    got = c.expect_closed(TIMEOUT)
    assert got.endswith(b"\r\n") and got.rsplit(b"\r\n", 2)[-2].startswith(b"* BYE [UNAVAILABLE]"), got
    assert _metric(m, "imapmux_wake_failures_total") == 1


@pytest.mark.parametrize("why", ["no master_user", "NOTIFY used", "ENABLE other"])
def test_sessions_stay_attached_where_no_wake_is_possible(make_mux, dovecot, redis, prefix, ca_ctx,
                                                          why):
    if WATCH != "events":
        pytest.skip("the same with any watcher")
    user = "park11"
    _reset_inbox(dovecot, user, ["m1"])
    bk = {"reuse_ttl": "0"}
    if why == "no master_user":
        bk.update(master_user=None, master_password=None)
    kv = backend_section(dovecot, watch=WATCH)
    kv.update(bk)
    kv = {k: v for k, v in kv.items() if v is not None}
    port = lab.free_port()
    m = make_mux(backends=[("a", kv)], redis=redis_section(redis, prefix),
                 imapmux={"workers": 1, "park_idle_after": "1s",
                          "stats_listen": "127.0.0.1:%d" % port})
    m.stats_port = port
    c = _login(m, ca_ctx, user)
    if why == "NOTIFY used":
        c.cmd("no", "NOTIFY NONE")
    if why == "ENABLE other":
        c.cmd("en", "ENABLE IMAP4rev2")
    _ok(c, "s", "SELECT INBOX")
    _ok(c, "f", "UID FETCH 1:* (FLAGS)")
    c.send(b"i IDLE\r\n")
    assert c.readline().startswith(b"+")
    time.sleep(2.5)
    assert _metric(m, "imapmux_sessions_parked") == 0
    assert _metric(m, "imapmux_parks_total") == 0
    assert _backend_socks(m, dovecot) >= 1
    c.send(b"DONE\r\n")
    _, t = c.read_until_tagged("i")
    assert t.startswith(b"i OK"), t


def test_redis_lost_and_back_every_parked_session_resynchronizes(make_mux, dovecot, fresh_redis,
                                                                 prefix, ca_ctx):
    from conftest_redis import restart_redis
    if WATCH != "events":
        pytest.skip("events only (a watcher's loss: test_watcher_lost...)")
    user = "park10"
    r = fresh_redis
    d = _reset_inbox(dovecot, user, ["m1"])
    m = _mux(make_mux, dovecot, r, prefix, reuse_ttl="0")
    c, _ = _park_idle(m, ca_ctx, user)
    _wait_parked(m, 1)
    r.proc.kill_hard()
    # Mail arrives while nobody can announce it.
    _append(d, "ap", "m2")
    time.sleep(0.5)
    restart_redis(r)
    # Back on the channel: events may have been missed, so the session
    # reads the store again and tells what it missed.
    assert _data(c, timeout=15) == b"* 2 EXISTS\r\n"
    _wait_parked(m, 1)


def test_watcher_lost_sessions_resynchronize_and_park_again(make_mux, dovecot, redis, prefix,
                                                            ca_ctx):
    import subprocess
    if WATCH == "events":
        pytest.skip("watchers only (Redis lost: test_redis_lost...)")
    user = "park9"
    d = _reset_inbox(dovecot, user, ["m1"])
    m = _mux(make_mux, dovecot, redis, prefix, reuse_ttl="0")
    clients = [_park_idle(m, ca_ctx, user)[0] for _ in range(2)]
    _wait_parked(m, 2)
    assert _metric(m, "imapmux_watchers") == 1     # one per user (and mailbox)
    lost = _metric(m, "imapmux_watchers_lost_total")
    # Dovecot drops every connection of the user: the watcher's is the only one.
    subprocess.run(["doveadm", "-c", dovecot.conf_path, "kick", user], check=True,
                   capture_output=True, timeout=10)
    wait_until(lambda: _metric(m, "imapmux_watchers_lost_total") > lost, 5, "the watcher lost")
    d = _direct(dovecot, user)   # the kick closed this one too
    # While it is down, mail comes; the sessions learn it (resync on the
    # loss, or the new watcher's catch-up), and park again.
    _append(d, "ap", "m2")
    for c in clients:
        assert _data(c) == b"* 2 EXISTS\r\n"
    _wait_parked(m, 2)
    wait_until(lambda: _metric(m, "imapmux_watchers_up") == 1, 10, "a new watcher up")
    _append(d, "aq", "m3")
    for c in clients:
        line = _data(c)
        assert line == b"* 3 EXISTS\r\n", c.transcript[-6:]


def test_watcher_renews_its_idle_on_the_same_connection(make_mux, dovecot, redis, prefix,
                                                         ca_ctx):
    """watch_refresh: the watcher ends its IDLE and begins it again (RFC 2177),
    on the connection it has, and still hears every change."""
    if WATCH == "events":
        pytest.skip("watchers only")
    user = "park16"
    d = _reset_inbox(dovecot, user, ["m1"])
    m = _mux(make_mux, dovecot, redis, prefix, reuse_ttl="0", watch_refresh="1s")
    c, n = _park_idle(m, ca_ctx, user)
    _wait_parked(m, 1)
    logins = _metric(m, "imapmux_backend_logins_total")
    lost = _metric(m, "imapmux_watchers_lost_total")
    wait_until(lambda: m.log_text().count("IDLE renewed") >= 3, 10, "three IDLE renewals")
    assert _metric(m, "imapmux_backend_logins_total") == logins   # the same connection
    assert _metric(m, "imapmux_watchers_lost_total") == lost
    assert _metric(m, "imapmux_sessions_parked") == 1
    _append(d, "a", "m2")
    assert _data(c) == b"* %d EXISTS\r\n" % (n + 1)


PUSH_PREFIX = "itpark-push:"


@pytest.fixture(scope="module")
def push_dovecot(cert, key, redis):
    """A Dovecot that announces its own changes: deploy/dovecot/imapmux-push.lua
    publishing on the events channel of the Redis imapmux uses."""
    from conftest import MASTER_PASSWORD, USERS
    d = lab.Dovecot(USERS, tls=True, cert=cert, key=key, master_password=MASTER_PASSWORD,
                    name="dovecot-park-push",
                    push_lua={"imapmux_redis": "127.0.0.1:%d" % redis.port,
                              "imapmux_prefix": PUSH_PREFIX})
    d.start()
    yield d
    d.cleanup()


def test_dovecot_push_script_wakes_parked_sessions(make_mux, push_dovecot, redis, ca_ctx):
    """End to end with no event published by the test: Dovecot's push script
    announces every change, and parked sessions in IDLE are told it."""
    if WATCH != "events":
        pytest.skip("the push script feeds watch = events")
    user = "park8"
    dv = push_dovecot
    d = _reset_inbox(dv, user, ["m1", "m2"])
    m = _mux(make_mux, dv, redis, PUSH_PREFIX, reuse_ttl="0")
    c, n = _park_idle(m, ca_ctx, user)
    assert n == 2
    _wait_parked(m, 1)
    wait_until(lambda: _backend_socks(m, dv) == 0, 5, "the backend connection closed")
    _append(d, "ap", "m3")
    assert _data(c) == b"* 3 EXISTS\r\n"
    _wait_parked(m, 1)
    _ok(d, "s", "SELECT INBOX")
    _ok(d, "fl", "STORE 1 +FLAGS.SILENT (\\Flagged)")
    assert _data(c) == b"* 1 FETCH (FLAGS (\\Flagged))\r\n"
    _wait_parked(m, 1)
    _ok(d, "dl", "STORE 2 +FLAGS.SILENT (\\Deleted)")
    got = [_data(c)]
    _ok(d, "ex", "EXPUNGE")
    got.append(_data(c))
    assert got == [b"* 2 FETCH (FLAGS (\\Deleted))\r\n", b"* 2 EXPUNGE\r\n"], got
    assert _wakes(m, "change") >= 3


def test_auto_watches_with_notify_where_offered(make_mux, dovecot, redis, prefix, cert, key,
                                                ca_ctx):
    """watch = auto: one NOTIFY watcher per user where the backend offers
    NOTIFY (Dovecot's default), one IDLE watcher per mailbox where it does
    not (mailbox_list_index = no); watch = notify there keeps sessions
    attached."""
    from conftest import MASTER_PASSWORD, USERS
    if WATCH != "events":
        pytest.skip("about watch = auto and notify themselves")
    user = "park7"
    plain = lab.Dovecot(USERS, tls=True, cert=cert, key=key, master_password=MASTER_PASSWORD,
                        name="dovecot-nonotify", extra_conf="mailbox_list_index = no\n")
    plain.start()
    try:
        for dv, watch, watchers in ((dovecot, "auto", 1), (plain, "auto", 2),
                                    (plain, "notify", 0)):
            d = _reset_inbox(dv, user, ["m1"])
            if b"Other" not in b"".join(_ok(d, "li", 'LIST "" Other')):
                _ok(d, "c", "CREATE Other")
            kv = backend_section(dv, watch=watch, reuse_ttl="0")
            port = lab.free_port()
            m = make_mux(backends=[("a", kv)], redis=redis_section(redis, prefix),
                         imapmux={"workers": 1, "park_idle_after": "1s",
                                  "stats_listen": "127.0.0.1:%d" % port})
            m.stats_port = port
            a, _ = _park_idle(m, ca_ctx, user)
            b, n = _park_idle(m, ca_ctx, user, mailbox="Other")
            if watchers == 0:
                time.sleep(2.5)
                assert _metric(m, "imapmux_sessions_parked") == 0, watch
            else:
                wait_until(lambda: _metric(m, "imapmux_sessions_parked") == 2, 8, "parked")
                wait_until(lambda: _metric(m, "imapmux_watchers_up") == watchers, 8,
                           lambda: "%d watcher(s) with watch = %s (have %s)" % (
                               watchers, watch, _metric(m, "imapmux_watchers_up")))
                assert _metric(m, "imapmux_watchers") == watchers
                _append(d, "ap", "m2", mailbox="Other")
                assert _data(b) == b"* %d EXISTS\r\n" % (n + 1)
            for c in (a, b):
                c.close()
            m.expect_exit = True
            m.stop()
    finally:
        plain.cleanup()


def test_config_keys_and_warnings(make_mux, dovecot, redis, prefix):
    """park_keepalive and watch are checked by `imapmux -t`; a backend whose
    sessions cannot park (no master credentials) is named once, as a
    warning; watch = events needs [redis]."""
    if WATCH != "events":
        pytest.skip("configuration only")
    plain = backend_section(dovecot)
    del plain["master_user"], plain["master_password"]
    path, _, _ = make_mux.conf(
        backends=[("a", backend_section(dovecot, watch="notify")), ("b", plain),
                  ("c", backend_section(dovecot, watch="events"))],
        redis=redis_section(redis, prefix),
        imapmux={"park_idle_after": "45s", "park_keepalive": "90s"})
    r = lab.check_config(path)
    assert r.returncode == 0, r.stderr
    warnings = [l for l in r.stderr.splitlines() if ": warning: " in l]
    assert len(warnings) == 1 and "backend b will not park" in warnings[0], r.stderr
    for bad, why in ((("watch", "sometimes"), "bad value 'sometimes' for watch"),
                     (("park_keepalive", "0"), "park_keepalive")):
        kv = backend_section(dovecot)
        imx = {}
        if bad[0] == "watch":
            kv["watch"] = bad[1]
        else:
            imx[bad[0]] = bad[1]
        path, _, _ = make_mux.conf(backends=[("a", kv)], imapmux=imx)
        r = lab.check_config(path)
        assert r.returncode == 1 and why in r.stderr, r.stderr
    path, _, _ = make_mux.conf(backends=[("a", backend_section(dovecot, watch="events"))])
    r = lab.check_config(path)
    assert r.returncode == 1 and "watch = events needs a [redis] section" in r.stderr, r.stderr


def test_reload_keeps_parked_sessions(make_mux, dovecot, redis, prefix, ca_ctx):
    """SIGHUP with parked sessions: they stay parked on the configuration
    they logged in with and wake on a change as before; sessions after the
    reload park under the new one."""
    user = "park6"
    d = _reset_inbox(dovecot, user, ["m1"])
    m = _mux(make_mux, dovecot, redis, prefix, reuse_ttl="0")
    c, _ = _park_idle(m, ca_ctx, user)
    _wait_parked(m, 1)
    kv = backend_section(dovecot, watch=WATCH, reuse_ttl="0")
    make_mux.rewrite(m, backends=[("a", kv)], redis=redis_section(redis, prefix),
                     imapmux={"workers": 1, "park_idle_after": "1s", "log_level": "debug",
                              "stats_listen": "127.0.0.1:%d" % m.stats_port,
                              "park_keepalive": "1m"})
    m.signal(signal.SIGHUP)
    wait_until(lambda: "configuration reloaded" in m.log_text(), 5, "the reload logged")
    assert _metric(m, "imapmux_sessions_parked") == 1
    c2, _ = _park_idle(m, ca_ctx, user)
    _wait_parked(m, 2)
    _append(d, "ap", "m2")
    _announce(redis, prefix, user)
    for cl in (c, c2):
        assert _data(cl) == b"* 2 EXISTS\r\n"
    _wait_parked(m, 2)
    for cl in (c, c2):
        cl.send(b"DONE\r\n")
        _, t = cl.read_until_tagged("i")
        assert t == b"i OK Idle completed.\r\n"


def test_done_racing_a_wake(make_mux, dovecot, redis, prefix, ca_ctx):
    """The client ends its IDLE just as a change wakes the session: it gets
    what changed, then its IDLE's OK, in that order, and the session goes
    on (parked again, or attached)."""
    user = "park5"
    d = _reset_inbox(dovecot, user, ["m1", "m2"])
    m = _mux(make_mux, dovecot, redis, prefix, reuse_ttl="0")
    for k in range(3):
        c, n = _park_idle(m, ca_ctx, user)
        _wait_parked(m, 1)
        _append(d, "ap%d" % k, "new%d" % k)
        _announce(redis, prefix, user)
        if k == 1:
            time.sleep(0.01)
        c.send(b"DONE\r\n")
        untagged, t = c.read_until_tagged("i")
        assert t == b"i OK Idle completed.\r\n", t
        got = [u for u in untagged if u != b"* OK Still here\r\n"]
        # Told before the OK, or (if the DONE won) at the next command. News
        # of a change comes a moment after it (the event through Redis; a
        # watcher's IDLE notification, about half a second with Dovecot):
        # until then a parked NOOP has nothing to tell, as a Dovecot IDLE
        # ended at that moment would not have had either.
        time.sleep(1.5 if WATCH != "events" else 0.3)
        untagged, t = c.cmd("n", "NOOP")
        assert t.startswith(b"n OK"), t
        got += [u for u in untagged if u != b"* OK Still here\r\n"]
        assert got == [b"* %d EXISTS\r\n" % (n + 1)], (k, got, c.transcript[-10:])
        _ok(c, "z", "LOGOUT")
        c.close()
        wait_until(lambda: _metric(m, "imapmux_sessions_parked") == 0, 5, "the session gone")


def test_examine_is_woken_read_only(make_mux, dovecot, redis, prefix, ca_ctx):
    """A client that EXAMINEd its mailbox is woken with EXAMINE (its view
    stays read-only: a STORE after the wake is refused as before)."""
    user = "park4"
    d = _reset_inbox(dovecot, user, ["m1"])
    m = _mux(make_mux, dovecot, redis, prefix, reuse_ttl="0")
    c = _login(m, ca_ctx, user)
    _ok(c, "x", "EXAMINE INBOX")
    _ok(c, "f", "UID FETCH 1:* (FLAGS)")
    c.send(b"i IDLE\r\n")
    assert c.readline().startswith(b"+")
    _wait_parked(m, 1)
    _append(d, "ap", "m2")
    _announce(redis, prefix, user)
    assert _data(c) == b"* 2 EXISTS\r\n"
    _wait_parked(m, 1)
    c.send(b"DONE\r\n")
    _, t = c.read_until_tagged("i")
    assert t == b"i OK Idle completed.\r\n"
    # The session woke read-only, as EXAMINE left it (Dovecot: OK, ignored).
    _, t = c.cmd("st", "STORE 1 +FLAGS (\\Seen)")
    assert b"read-only" in t, t


def test_wake_with_the_backend_gone_ends_the_session(make_mux, fresh_dovecot, redis, prefix,
                                                     ca_ctx):
    """A parked session whose backend cannot be reached when it wakes is
    ended with * BYE [UNAVAILABLE], not left hanging."""
    if WATCH != "events":
        pytest.skip("a watcher loses its connection first (test_watcher_lost...)")
    user = "park3"
    dv = fresh_dovecot
    _reset_inbox(dv, user, ["m1"])
    m = _mux(make_mux, dv, redis, prefix, reuse_ttl="0", check_interval="0")
    c, _ = _park_idle(m, ca_ctx, user)
    _wait_parked(m, 1)
    dv.stop()
    _announce(redis, prefix, user)
    got = c.expect_closed(TIMEOUT)
    assert got.rstrip(b"\r\n").rsplit(b"\r\n", 1)[-1].startswith(b"* BYE [UNAVAILABLE]"), got
    assert _metric(m, "imapmux_wake_failures_total") == 1


# ---- workers = 2: one watcher per instance ---------------------------------
#
# The kernel spreads a user's connections over the workers (SO_REUSEPORT);
# the user's owner worker holds the one real watcher, the other holds it
# by message (proxy/watch.h).

def _mux2(make_mux, dovecot, redis, prefix, **bk):
    return _mux(make_mux, dovecot, redis, prefix, imapmux={"workers": 2}, **bk)


def _worker_of(m, c):
    """The worker that took client c (its "connected on" debug line)."""
    port = c.sock.getsockname()[1]
    pat = re.compile(r"S-(\d+) -@127\.0\.0\.1:%d connected on \S+ \(worker (\d+)\)" % port)
    found = wait_until(lambda: pat.findall(m.log_text()), 5, "client port %d logged" % port)
    return int(found[-1][1])


def _spread(m, ca_ctx, user, mailbox="INBOX", at_least=6, each=2, most=24):
    """Clients of user through imapmux in IDLE on mailbox, at least
    `at_least` of them and `each` on each of the two workers; [(client,
    EXISTS count, worker)]."""
    out = []
    while len(out) < most:
        c, n = _park_idle(m, ca_ctx, user, mailbox=mailbox)
        out.append((c, n, _worker_of(m, c)))
        on = [w for _, _, w in out]
        if len(out) >= at_least and on.count(0) >= each and on.count(1) >= each:
            return out
    pytest.fail("%d connections, all on one worker?" % len(out))


def _dovecot_conns(dovecot, user):
    """Connections Dovecot has for user (doveadm who -1: one line each)."""
    import subprocess
    r = subprocess.run(["doveadm", "-c", dovecot.conf_path, "who", "-1", user],
                       capture_output=True, text=True, timeout=10, check=True)
    return sum(1 for line in r.stdout.splitlines() if line.split()[:1] == [user])


def _told(m, user, mailbox="INBOX"):
    """{worker: parked sessions told} of the changes logged for user."""
    pat = re.compile(r"worker (\d+): change of %s \"%s\": (\d+) parked session" %
                     (re.escape(user), re.escape(mailbox)))
    out = {}
    for w, n in pat.findall(m.log_text()):
        out[int(w)] = out.get(int(w), 0) + int(n)
    return out


def _real_watchers_logged(m, user):
    """Real watchers opened for user (not holds), by the log."""
    return len(re.findall(r"worker \d+: watch a %s [^\n]*[\")]: opening" % re.escape(user),
                          m.log_text()))


def test_two_workers_share_one_watcher(make_mux, dovecot, redis, prefix, ca_ctx):
    """Sessions of one user on both workers: ONE watcher connection (per
    mailbox with watch = idle, per user with notify), seen from imapmux and
    from Dovecot; a change reaches the sessions of both workers, exactly."""
    if WATCH == "events":
        pytest.skip("watchers only")
    user = "park21"
    d = _reset_inbox(dovecot, user, ["m1"])
    if b"Other" not in b"".join(_ok(d, "li", 'LIST "" Other')):
        _ok(d, "c", "CREATE Other")
    m = _mux2(make_mux, dovecot, redis, prefix, reuse_ttl="0")
    clients = _spread(m, ca_ctx, user)
    _wait_parked(m, len(clients))
    assert _metric(m, "imapmux_watchers") == 1
    assert _metric(m, "imapmux_watchers_up") == 1
    assert _real_watchers_logged(m, user) == 1
    assert "(held through worker" in m.log_text()
    # Parked: no session holds a backend connection; on Dovecot the user
    # has the watcher's and the test's own (d).
    wait_until(lambda: _dovecot_conns(dovecot, user) == 1 + 1, 5,
               lambda: "the watcher's connection of %s on Dovecot (have %d)"
               % (user, _dovecot_conns(dovecot, user) - 1))
    # A change: every session, on either worker, is told it in IDLE.
    _append(d, "ap", "m2")
    for c, n, _ in clients:
        assert _data(c) == b"* %d EXISTS\r\n" % (n + 1), c.transcript[-6:]
    told = _told(m, user)
    assert told.get(0, 0) >= 1 and told.get(1, 0) >= 1, told
    _wait_parked(m, len(clients))
    # Another mailbox of the same user, on both workers: one more watcher
    # with watch = idle, the same one with notify.
    others = _spread(m, ca_ctx, user, mailbox="Other", at_least=2, each=1)
    _wait_parked(m, len(clients) + len(others))
    want = 2 if WATCH == "idle" else 1
    assert _metric(m, "imapmux_watchers") == want
    wait_until(lambda: _dovecot_conns(dovecot, user) == want + 1, 5,
               lambda: "%d watcher connection(s) of %s on Dovecot (have %d)"
               % (want, user, _dovecot_conns(dovecot, user) - 1))
    _append(d, "ao", "o1", mailbox="Other")
    for c, n, _ in others:
        assert _data(c) == b"* %d EXISTS\r\n" % (n + 1), c.transcript[-6:]
    # ... and only those: the INBOX sessions heard nothing.
    for c, _, _ in clients:
        with pytest.raises(imapc.Timeout):
            _data(c, timeout=0.5)
    for c, _, _ in clients + others:
        c.send(b"DONE\r\n")
        _, t = c.read_until_tagged("i")
        assert t == b"i OK Idle completed.\r\n", t


def test_two_workers_watcher_lost_resynchronizes_both(make_mux, dovecot, redis, prefix,
                                                       ca_ctx):
    """The one watcher lost: the sessions of both workers read the store
    again, park again, and hear the next change through the new watcher."""
    import subprocess
    if WATCH == "events":
        pytest.skip("watchers only")
    user = "park22"
    d = _reset_inbox(dovecot, user, ["m1"])
    m = _mux2(make_mux, dovecot, redis, prefix, reuse_ttl="0")
    clients = _spread(m, ca_ctx, user)
    _wait_parked(m, len(clients))
    assert _metric(m, "imapmux_watchers") == 1
    lost = _metric(m, "imapmux_watchers_lost_total")
    subprocess.run(["doveadm", "-c", dovecot.conf_path, "kick", user], check=True,
                   capture_output=True, timeout=10)
    wait_until(lambda: _metric(m, "imapmux_watchers_lost_total") > lost, 5, "the watcher lost")
    d = _direct(dovecot, user)
    _append(d, "ap", "m2")
    for c, n, _ in clients:
        assert _data(c) == b"* %d EXISTS\r\n" % (n + 1), c.transcript[-6:]
    _wait_parked(m, len(clients))
    wait_until(lambda: _metric(m, "imapmux_watchers_up") == 1, 10, "a new watcher up")
    assert _metric(m, "imapmux_watchers") == 1
    _append(d, "aq", "m3")
    for c, n, _ in clients:
        assert _data(c) == b"* %d EXISTS\r\n" % (n + 2), c.transcript[-6:]
    _wait_parked(m, len(clients))


def test_two_workers_reload_and_shutdown(make_mux, dovecot, redis, prefix, ca_ctx):
    """SIGHUP with sessions holding another worker's watcher: they stay
    parked and wake on a change, as do sessions parked after it; SIGTERM
    then says BYE to every one of them, and imapmux exits cleanly."""
    if WATCH == "events":
        pytest.skip("watchers only")
    user = "park23"
    d = _reset_inbox(dovecot, user, ["m1"])
    m = _mux2(make_mux, dovecot, redis, prefix, reuse_ttl="0")
    before = _spread(m, ca_ctx, user, at_least=4, each=2)
    _wait_parked(m, len(before))
    kv = backend_section(dovecot, watch=WATCH, reuse_ttl="0")
    make_mux.rewrite(m, backends=[("a", kv)], redis=redis_section(redis, prefix),
                     imapmux={"workers": 2, "park_idle_after": "1s", "log_level": "debug",
                              "stats_listen": "127.0.0.1:%d" % m.stats_port,
                              "park_keepalive": "1m"})
    m.signal(signal.SIGHUP)
    wait_until(lambda: "configuration reloaded" in m.log_text(), 5, "the reload logged")
    assert _metric(m, "imapmux_sessions_parked") == len(before)
    after = _spread(m, ca_ctx, user, at_least=4, each=2)
    _wait_parked(m, len(before) + len(after))
    # Sessions keep the configuration they logged in with: at most one
    # watcher for each (the new one once every worker has reloaded).
    assert 1 <= _metric(m, "imapmux_watchers") <= 2
    _append(d, "ap", "m2")
    for c, n, _ in before + after:
        assert _data(c) == b"* %d EXISTS\r\n" % (n + 1), c.transcript[-6:]
    _wait_parked(m, len(before) + len(after))
    m.signal(signal.SIGTERM)
    for c, _, _ in before + after:
        got = c.expect_closed(5)
        assert got.endswith(b"* BYE Server shutting down.\r\n"), got
    assert m.wait(10) == 0
    m.expect_exit = True


def test_two_workers_changes_before_the_hold_arrives(make_mux, dovecot, redis, prefix, ca_ctx):
    """Mail arriving while sessions on both workers are about to park (the
    hold on its way to the owner, the watcher coming up): none is missed."""
    if WATCH == "events":
        pytest.skip("watchers only")
    user = "park24"
    d = _reset_inbox(dovecot, user, ["m1"])
    m = _mux2(make_mux, dovecot, redis, prefix, reuse_ttl="0")
    clients = _spread(m, ca_ctx, user, at_least=4, each=2)
    total = 1
    # Appends at moments around the parking of each session (park_idle_after
    # is 1 s): every session must end up told every one of them.
    for k in range(4):
        time.sleep(0.35)
        _append(d, "ap%d" % k, "x%d" % k)
        total += 1
    for c, n, _ in clients:
        lines = _lines_until(c, lambda got: got and got[-1] == b"* %d EXISTS\r\n" % total)
        assert all(re.match(rb"\* \d+ EXISTS\r\n$", x) for x in lines), lines
    _wait_parked(m, len(clients))
    _append(d, "az", "last")
    for c, _, _ in clients:
        assert _data(c) == b"* %d EXISTS\r\n" % (total + 1), c.transcript[-6:]
