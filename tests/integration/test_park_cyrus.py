"""Parked IDLE (issue #11) against a real Cyrus IMAP 3.6 (deploy/lab.py Cyrus).

What Cyrus 3.6 offers, as the first test pins it down: CONDSTORE, QRESYNC
and IDLE (its idled tells an imapd in IDLE of a change within milliseconds
here), no NOTIFY. So sessions park with watch = idle (what `auto` picks),
and watch = events (the test publishes `mbox USER MAILBOX`); watch = notify
keeps them attached. Cyrus logs in the wake and the watchers through its
proxyservers (AUTHENTICATE PLAIN, authzid = the user), makes a user's INBOX
at their first login and has no TLS in the lab (backend tls = none); the
clients talk implicit TLS to imapmux.

Cyrus differs from Dovecot where a wake reads it: `* n RECENT` lines,
\\Recent in FLAGS (neither is modelled: the tests compare the rest), FETCH
items in its own order (FLAGS UID MODSEQ), and every change, an expunge
included, raises HIGHESTMODSEQ.
"""

import re
import time

import pytest

import imapc
import lab
from conftest import backend_section, wait_until

pytest.register_assert_rewrite("parklib", "conftest_redis")
from parklib import (TIMEOUT, announce, append, backend_socks, data,  # noqa: E402
                     lines_until, metric, mux, ok, park_idle, quiet, reset_inbox, wait_parked,
                     wakes)
from conftest_redis import redis_section  # noqa: E402

pytest_plugins = ["conftest_redis"]

RECENT = re.compile(rb"^\* \d+ RECENT\r\n$")


def _mux(make_mux, cyrus, redis, prefix, watch, **kw):
    return mux(make_mux, cyrus, redis, prefix, watch, **kw)


def _sorted_flags(line):
    """line with the flags of its FLAGS (...) sorted (their order means
    nothing; imapmux writes system flags in its own bit order)."""
    return re.sub(rb"FLAGS \(([^)]*)\)",
                  lambda m: b"FLAGS (" + b" ".join(sorted(m.group(1).split())) + b")", line)


def _view(c, tag="v", modseq=False):
    """{uid: (flags without \\Recent, modseq)} of c's selected mailbox, and
    the sequence order of the UIDs: what a FETCH 1:* shows, in any item
    order (Cyrus: FLAGS UID MODSEQ)."""
    untagged = ok(c, tag, "FETCH 1:* (UID FLAGS%s)" % (" MODSEQ" if modseq else ""))
    out, order = {}, []
    for u in untagged:
        m = re.match(rb"\* (\d+) FETCH \((.*)\)\r\n$", u)
        if not m:
            assert RECENT.match(u) or u.startswith(b"* OK [") or u.endswith(b" EXISTS\r\n"), u
            continue
        body = m.group(2)
        uid = int(re.search(rb"UID (\d+)", body).group(1))
        flags = sorted(f for f in re.search(rb"FLAGS \(([^)]*)\)", body).group(1).split()
                       if f != b"\\Recent")
        ms = re.search(rb"MODSEQ \((\d+)\)", body)
        out[uid] = (flags, int(ms.group(1)) if ms else None)
        order.append((int(m.group(1)), uid))
    assert [s for s, _ in sorted(order)] == list(range(1, len(order) + 1)), order
    return out, [u for _, u in sorted(order)]


def test_cyrus_offers_what_parking_needs(cyrus):
    """The lab Cyrus after a master login: CONDSTORE, QRESYNC, IDLE, no
    NOTIFY; IDLE tells an APPEND from another connection (measured)."""
    c = imapc.Client(cyrus.port, timeout=TIMEOUT)
    c.greeting()
    _, t = c.cmd("a", "AUTHENTICATE PLAIN " + imapc.plain_ir(lab.MASTER_USER,
                                                            cyrus.master_password,
                                                            authzid="park1"))
    caps = imapc.caps_of(t)
    assert caps is not None and {"CONDSTORE", "QRESYNC", "IDLE"} <= caps, t
    assert "NOTIFY" not in caps
    d = reset_inbox(cyrus, "park1", [])
    ok(c, "s", "EXAMINE INBOX")
    c.send(b"i IDLE\r\n")
    assert c.readline().startswith(b"+")
    t0 = time.monotonic()
    append(d, "ap", "probe")
    assert data(c, timeout=5) == b"* 1 EXISTS\r\n"
    print("Cyrus IDLE: APPEND -> EXISTS %.0f ms" % ((time.monotonic() - t0) * 1000))
    c.send(b"DONE\r\n")
    _, t = c.read_until_tagged("i")
    assert t.startswith(b"i OK"), t
    c.close()
    d.close()


@pytest.mark.parametrize("watch", ["auto", "idle", "events"])
def test_idle_session_parks_and_wakes_on_append(make_mux, cyrus, redis, prefix, ca_ctx, watch):
    """A TLS client in IDLE on INBOX parks (no backend connection left with
    reuse_ttl 0) and is told `* N EXISTS` of mail APPENDed straight to
    Cyrus. auto picks the IDLE watcher (Cyrus has no NOTIFY): one watcher
    per mailbox, so a second session on another folder makes two."""
    user = "park1"
    d = reset_inbox(cyrus, user, ["m1"])
    if not [u for u in ok(d, "li", 'LIST "" Other') if b"Other" in u]:
        ok(d, "c", "CREATE Other")
    m = _mux(make_mux, cyrus, redis, prefix, watch, reuse_ttl="0")
    c, n = park_idle(m, ca_ctx, user)
    assert n == 1
    o, _ = park_idle(m, ca_ctx, user, mailbox="Other")
    wait_parked(m, 2)
    assert metric(m, "imapmux_sessions_parked") == 2
    wait_until(lambda: backend_socks(m, cyrus) == 0, 5, "the backend connections closed")
    if watch == "events":
        assert metric(m, "imapmux_watchers") == 0
    else:
        assert metric(m, "imapmux_watchers") == 2      # IDLE watchers: per mailbox
        assert metric(m, "imapmux_watchers_up") == 2
        up = re.findall(r'watch a park1 "(\w+)": up', m.log_text())
        assert sorted(up) == ["INBOX", "Other"], up
        assert "(NOTIFY" not in m.log_text()
    w0 = wakes(m, "change")
    t0 = time.monotonic()
    append(d, "ap", "m2")
    announce(redis, prefix, watch, user)
    assert data(c) == b"* 2 EXISTS\r\n"
    print("%s: APPEND -> EXISTS through imapmux %.0f ms"
          % (watch, (time.monotonic() - t0) * 1000))
    wait_parked(m, 2)
    quiet(o, 0.3)   # the other folder's session heard nothing
    assert wakes(m, "change") - w0 == 1
    c.send(b"DONE\r\n")
    assert c.readline() == b"i OK Idle completed.\r\n"
    _, order = _view(c)
    assert len(order) == 2
    _ok_logout(c)


def _ok_logout(c):
    c.send(b"z LOGOUT\r\n")
    got = c.expect_closed(5)
    assert got.startswith(b"* BYE ") and b"\r\nz OK " in got, got


@pytest.mark.parametrize("watch", ["auto", "events"])
def test_wake_tells_expunges_highest_first_exists_and_flags(make_mux, cyrus, redis, prefix,
                                                           ca_ctx, watch):
    """Expunges (highest first), the new EXISTS and a flag change, exactly,
    in the client's numbering; afterwards the client's view through imapmux
    is a direct session's."""
    user = "park2"
    d = reset_inbox(cyrus, user, ["m1", "m2", "m3", "m4", "m5"])
    m = _mux(make_mux, cyrus, redis, prefix, watch, reuse_ttl="0")
    c, n = park_idle(m, ca_ctx, user)
    assert n == 5
    wait_parked(m, 1)
    ok(d, "st", "STORE 2,4 +FLAGS.SILENT (\\Deleted)")
    ok(d, "ex", "EXPUNGE")
    ok(d, "fl", "STORE 3 +FLAGS.SILENT (\\Flagged)")   # old 5 is 3 now
    append(d, "ap", "m6")
    announce(redis, prefix, watch, user)
    got = lines_until(c, lambda g: len(g) >= 4)
    assert got == [b"* 4 EXPUNGE\r\n", b"* 2 EXPUNGE\r\n", b"* 4 EXISTS\r\n",
                   b"* 3 FETCH (FLAGS (\\Flagged))\r\n"], got
    wait_parked(m, 1)
    quiet(c, 0.3)
    c.send(b"DONE\r\n")
    assert c.readline() == b"i OK Idle completed.\r\n"
    assert _view(c) == _view(d)


@pytest.mark.parametrize("watch", ["auto", "events"])
def test_condstore_and_qresync_clients_get_modseq_and_vanished(make_mux, cyrus, redis, prefix,
                                                              ca_ctx, watch):
    """CONDSTORE: EXPUNGE and FETCH with Cyrus's MODSEQ; QRESYNC: VANISHED
    and FETCH with UID. Round 1: the flag change is Cyrus's highest MODSEQ
    (no HIGHESTMODSEQ line). Round 2: the expunge comes last, and Cyrus
    counts it in HIGHESTMODSEQ (its EXPUNGE's OK says so): both clients
    get `* OK [HIGHESTMODSEQ h]` with Cyrus's value."""
    user = "park3"
    d = reset_inbox(cyrus, user, ["m1", "m2", "m3", "m4"])
    m = _mux(make_mux, cyrus, redis, prefix, watch, reuse_ttl="0")
    cs, _ = park_idle(m, ca_ctx, user, enable="CONDSTORE")
    qr, _ = park_idle(m, ca_ctx, user, enable="QRESYNC")
    wait_parked(m, 2)
    _, uids = _view(d)
    ok(d, "st", "STORE 1 +FLAGS.SILENT (\\Deleted)")
    ok(d, "ex", "EXPUNGE")
    ok(d, "fl", "STORE 1 +FLAGS.SILENT (\\Seen)")
    modseq = _view(d, modseq=True)[0][uids[1]][1]
    announce(redis, prefix, watch, user)
    want = {cs: [b"* 1 EXPUNGE\r\n", b"* 1 FETCH (MODSEQ (%d) FLAGS (\\Seen))\r\n" % modseq],
            qr: [b"* VANISHED %d\r\n" % uids[0],
                 b"* 1 FETCH (UID %d MODSEQ (%d) FLAGS (\\Seen))\r\n" % (uids[1], modseq)]}
    for c, lines in want.items():
        assert lines_until(c, lambda g: len(g) >= 2) == lines
    wait_parked(m, 2)
    # Round 2: a flag change, then an expunge of another message.
    ok(d, "f2", "STORE 1 +FLAGS.SILENT (\\Answered)")        # uids[1]
    modseq2 = _view(d, modseq=True)[0][uids[1]][1]
    ok(d, "s2", "STORE 3 +FLAGS.SILENT (\\Deleted)")          # uids[3]
    _, t = d.cmd("x2", "EXPUNGE")
    hms = int(re.search(rb"\[HIGHESTMODSEQ (\d+)\]", t).group(1))
    assert hms > modseq2, t
    announce(redis, prefix, watch, user)
    want = {cs: [b"* 3 EXPUNGE\r\n",
                 b"* 1 FETCH (MODSEQ (%d) FLAGS (\\Answered \\Seen))\r\n" % modseq2,
                 b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % hms],
            qr: [b"* VANISHED %d\r\n" % uids[3],
                 b"* 1 FETCH (UID %d MODSEQ (%d) FLAGS (\\Answered \\Seen))\r\n"
                 % (uids[1], modseq2),
                 b"* OK [HIGHESTMODSEQ %d] Highest\r\n" % hms]}
    for c, lines in want.items():
        got = [_sorted_flags(x) for x in lines_until(c, lambda g: len(g) >= 3)]
        # The text after the code is imapmux's own: compare up to it.
        assert got[:2] == lines[:2] and got[2].startswith(lines[2][:-len(b" Highest\r\n")]), got
    wait_parked(m, 2)
    for c in want:
        quiet(c, 0.2)
        c.send(b"DONE\r\n")
        untagged, t = c.read_until_tagged("i")
        assert (untagged, t) == ([], b"i OK Idle completed.\r\n")
        assert _view(c, modseq=True) == _view(d, modseq=True)


@pytest.mark.parametrize("watch", ["auto", "events"])
def test_answered_while_parked_without_a_backend_login(make_mux, cyrus, redis, prefix, ca_ctx,
                                                       watch):
    """DONE, IDLE, NOOP, CHECK and keep-alives while parked: no backend
    login (imapmux_backend_logins_total), no backend connection but the
    watcher, and no wake (Cyrus's watcher hears nothing while nothing
    changes, for several seconds)."""
    user = "park4"
    reset_inbox(cyrus, user, ["m1"])
    m = _mux(make_mux, cyrus, redis, prefix, watch, reuse_ttl="0",
             imapmux={"park_keepalive": "1s"})
    c, _ = park_idle(m, ca_ctx, user)
    wait_parked(m, 1)
    wait_until(lambda: backend_socks(m, cyrus) == 0, 5, "the backend connection closed")
    logins = metric(m, "imapmux_backend_logins_total")
    assert logins == (1 if watch == "events" else 2)   # the session's (+ the watcher's)
    answers = metric(m, "imapmux_park_answers_total")
    assert c.readline(timeout=3) == b"* OK Still here\r\n"
    c.send(b"DONE\r\n")
    assert c.readline() == b"i OK Idle completed.\r\n"
    for k in range(3):
        c.send(b"j%d IDLE\r\n" % k)
        assert c.readline() == b"+ idling\r\n"
        c.send(b"DONE\r\n")
        assert c.readline() == b"j%d OK Idle completed.\r\n" % k
    assert ok(c, "n", "NOOP") == []
    assert ok(c, "k", "CHECK") == []
    c.send(b"w IDLE\r\n")
    assert c.readline() == b"+ idling\r\n"
    assert c.readline(timeout=3) == b"* OK Still here\r\n"
    assert c.readline(timeout=3) == b"* OK Still here\r\n"
    c.send(b"DONE\r\n")
    assert c.readline() == b"w OK Idle completed.\r\n"
    assert metric(m, "imapmux_backend_logins_total") == logins
    assert backend_socks(m, cyrus) == 0
    assert wakes(m, "client") == 0 and wakes(m, "change") == 0
    assert metric(m, "imapmux_park_answers_total") - answers >= 9
    assert metric(m, "imapmux_sessions_parked") == 1
    c.send(b"z LOGOUT\r\n")
    assert c.readline() == b"* BYE Logging out\r\n"
    assert c.readline() == b"z OK Logout completed.\r\n"
    c.expect_closed(5)
    assert metric(m, "imapmux_backend_logins_total") == logins


@pytest.mark.parametrize("watch", ["auto", "events"])
def test_commands_that_wake_are_answered_in_order(make_mux, cyrus, redis, prefix, ca_ctx, watch):
    """DONE plus pipelined UID FETCH and NOOP while parked: DONE answered
    by imapmux, the rest by Cyrus after the wake, in order. Then a change
    while parked outside IDLE is only marked; the UID FETCH that wakes
    gets it told first (EXPUNGE, EXISTS), then its own answer."""
    user = "park5"
    d = reset_inbox(cyrus, user, ["m1", "m2"])
    m = _mux(make_mux, cyrus, redis, prefix, watch, reuse_ttl="0")
    c, _ = park_idle(m, ca_ctx, user)
    wait_parked(m, 1)
    c0 = wakes(m, "client")
    c.send(b"DONE\r\na UID FETCH 1:* (UID FLAGS)\r\nb NOOP\r\n")
    assert c.readline() == b"i OK Idle completed.\r\n"
    untagged, t = c.read_until_tagged("a")
    assert t.startswith(b"a OK"), t
    fetched = [u for u in untagged if b" FETCH " in u]
    assert len(fetched) == 2 and all(re.match(rb"\* [12] FETCH \(", u) for u in fetched), untagged
    untagged, t = c.read_until_tagged("b")
    assert t.startswith(b"b OK"), t
    assert [u for u in untagged if not RECENT.match(u)] == [], untagged
    assert wakes(m, "client") - c0 == 1
    _, uids = _view(d)
    # Parked again, outside IDLE; a change is marked, not told.
    wait_parked(m, 1)
    w0 = wakes(m, "change")
    ok(d, "st", "STORE 1 +FLAGS.SILENT (\\Deleted)")
    ok(d, "ex", "EXPUNGE")
    append(d, "ap", "m3")
    announce(redis, prefix, watch, user)
    quiet(c, 1.0)
    assert wakes(m, "change") == w0
    untagged, t = c.cmd("u", "UID FETCH 1:* (UID)")
    assert t.startswith(b"u OK"), t
    untagged = [u for u in untagged if not RECENT.match(u)]
    assert untagged[:2] == [b"* 1 EXPUNGE\r\n", b"* 2 EXISTS\r\n"], untagged
    uids_now = [int(x) for x in re.findall(rb"UID (\d+)", b"".join(untagged[2:]))]
    assert len(untagged) == 4 and uids_now[0] == uids[1] and uids_now[1] > uids[1], untagged


@pytest.mark.parametrize("why", ["watch = notify", "no master_user"])
def test_sessions_stay_attached_where_cyrus_cannot_wake_them(make_mux, cyrus, redis, prefix,
                                                             ca_ctx, why):
    """watch = notify: Cyrus offers no NOTIFY, so sessions stay attached
    (IDLE goes on to Cyrus itself, which tells new mail). imapmux -t cannot
    know a backend's capabilities (it connects nowhere): it accepts the
    config without a word. Without master_user, -t warns that the backend
    will not park, and sessions stay attached too."""
    user = "park6"
    d = reset_inbox(cyrus, user, ["m1"])
    bk = {"watch": "notify"} if why == "watch = notify" else {
        "watch": "auto", "master_user": None, "master_password": None}
    kv = backend_section(cyrus, reuse_ttl="0", **bk)
    kv = {k: v for k, v in kv.items() if v is not None}
    path, _, _ = make_mux.conf(backends=[("a", kv)], redis=redis_section(redis, prefix),
                               imapmux={"park_idle_after": "1s"})
    r = lab.check_config(path)
    assert r.returncode == 0, r.stderr
    warnings = [x for x in r.stderr.splitlines() if ": warning: " in x]
    if why == "watch = notify":
        assert warnings == [], r.stderr
    else:
        assert len(warnings) == 1 and "backend a will not park" in warnings[0], r.stderr
    m = _mux(make_mux, cyrus, redis, prefix, bk["watch"], reuse_ttl="0",
             **{k: v for k, v in bk.items() if k != "watch"})
    c, _ = park_idle(m, ca_ctx, user)
    time.sleep(2.5)
    assert metric(m, "imapmux_sessions_parked") == 0
    assert metric(m, "imapmux_parks_total") == 0
    assert metric(m, "imapmux_watchers") == 0
    assert backend_socks(m, cyrus) == 1
    append(d, "ap", "m2")
    assert data(c, skip=()) == b"* 2 EXISTS\r\n"    # Cyrus's own IDLE
    c.send(b"DONE\r\n")
    untagged, t = c.read_until_tagged("i")
    assert t.startswith(b"i OK"), t


def test_kept_session_serves_the_wake(make_mux, cyrus, redis, prefix, ca_ctx):
    """reuse_ttl default: the parked session's Cyrus connection is kept,
    and the wake takes it (imapmux_sessions_reused_total, no new login)."""
    user = "park7"
    d = reset_inbox(cyrus, user, ["m1"])
    m = _mux(make_mux, cyrus, redis, prefix, "auto")
    c, _ = park_idle(m, ca_ctx, user)
    wait_parked(m, 1)
    wait_until(lambda: backend_socks(m, cyrus) == 1, 5, "one kept backend connection")
    logins, reused = (metric(m, "imapmux_backend_logins_total"),
                      metric(m, "imapmux_sessions_reused_total"))
    append(d, "ap", "m2")
    assert data(c) == b"* 2 EXISTS\r\n"
    wait_parked(m, 1)
    assert metric(m, "imapmux_backend_logins_total") == logins
    assert metric(m, "imapmux_sessions_reused_total") == reused + 1
    c.send(b"DONE\r\n")
    assert c.readline() == b"i OK Idle completed.\r\n"
    assert _view(c) == _view(d)
