"""Parked IDLE (issue #11): edge cases test_park.py does not reach, against
a real Dovecot 2.3 (mailbox_list_index = yes, for NOTIFY).

What this Dovecot does, as found with direct sessions first (and asserted
where a test depends on it):
  * it offers no UTF8=ACCEPT: `ENABLE UTF8=ACCEPT` is answered OK with no
    `* ENABLED`, and a raw UTF-8 name is refused ("not valid mUTF-7"), so
    non-ASCII names travel as modified UTF-7 (Caf&AOk-) either way;
  * NOTIFY's `* STATUS` names the mailbox by its internal UTF-8 name, not
    its wire name: `R&-D` comes as the atom `R&D`, `Caf&AOk-` as the
    literal {5} Café (8-bit); a name with a `"` or `\\` comes quoted with
    escapes, one with more than four of them as a literal;
  * the push script (watch = events) publishes the same UTF-8 name, as the
    tests do here;
  * `inbox.Sub` is INBOX.Sub (the INBOX part of a name in any case), and
    NOTIFY and the push script name it INBOX.Sub.
"""

import re

import pytest

import imapc
import lab

pytest.register_assert_rewrite("parklib", "conftest_redis")
from parklib import (announce, append, backend_socks, data, direct, login,  # noqa: E402
                     metric, mux, ok, park_idle, quiet, reset_inbox, wait_parked, wakes)

pytest_plugins = ["conftest_redis"]


@pytest.fixture(scope="module")
def dovecot(cert, key):
    """conftest's Dovecot, with mailbox_list_index = yes (for NOTIFY)."""
    from conftest import MASTER_PASSWORD, USERS
    d = lab.Dovecot(USERS, tls=True, cert=cert, key=key, master_password=MASTER_PASSWORD,
                    name="dovecot-park-edges", extra_conf="mailbox_list_index = yes\n")
    d.start()
    yield d
    d.cleanup()


def _box(d, wire):
    """Mailbox wire (an IMAP string as sent) exists, empty, with one
    message; d has nothing selected afterwards."""
    untagged, t = d.cmd("c", "CREATE " + wire)
    assert t.startswith(b"c OK") or b"ALREADYEXISTS" in t, t
    if b"* 0 EXISTS\r\n" not in ok(d, "s", "SELECT " + wire):
        ok(d, "d", "STORE 1:* +FLAGS.SILENT (\\Deleted)")
        ok(d, "x", "EXPUNGE")
    append(d, "ap0", "first", wire)
    ok(d, "u", "UNSELECT")


# ---------------------------------------------------------------------------
# non-ASCII mailbox names (modified UTF-7)

@pytest.mark.parametrize("watch", ["idle", "notify", "events"])
@pytest.mark.parametrize("wire,utf8,enable", [
    ("Caf&AOk-", "Caf\u00e9", None),
    ("Caf&AOk-", "Caf\u00e9", "UTF8=ACCEPT"),
    ("R&-D", "R&D", None),
])
def test_non_ascii_mailbox_parks_and_wakes(make_mux, dovecot, redis, prefix, ca_ctx, watch, wire,
                                           utf8, enable):
    """A session on a mailbox whose wire name is modified UTF-7 (with or
    without the client's ENABLE UTF8=ACCEPT, which this Dovecot does not
    enable) parks and wakes on mail there, though NOTIFY and events name
    it in UTF-8; a session of the same user on INBOX is told nothing."""
    user = "park1"
    reset_inbox(dovecot, user, ["i1"])
    d = direct(dovecot, user)
    _box(d, '"%s"' % wire)
    m = mux(make_mux, dovecot, redis, prefix, watch, reuse_ttl="0")
    inbox, _ = park_idle(m, ca_ctx, user)
    c = login(m, ca_ctx, user)
    if enable:
        untagged = ok(c, "e", "ENABLE " + enable)
        assert untagged == [], untagged       # nothing enabled: Dovecot 2.3
    sel = ok(c, "s", 'SELECT "%s"' % wire)
    assert b"* 1 EXISTS\r\n" in sel, sel
    ok(c, "f", "UID FETCH 1:* (FLAGS)")
    c.send(b"i IDLE\r\n")
    assert c.readline().startswith(b"+")
    wait_parked(m, 2)
    append(d, "ap", "second", '"%s"' % wire)
    announce(redis, prefix, watch, user, utf8)
    assert data(c) == b"* 2 EXISTS\r\n"
    wait_parked(m, 2)
    quiet(inbox, 0.3)
    c.send(b"DONE\r\n")
    assert c.readline() == b"i OK Idle completed.\r\n"
    assert len([u for u in ok(c, "v", "FETCH 1:* (UID)") if b" FETCH " in u]) == 2


# ---------------------------------------------------------------------------
# names NOTIFY sends quoted with escapes, or as a literal

@pytest.mark.parametrize("watch,name", [
    ("notify", 'a"b'),            # * STATUS "a\"b"
    ("notify", "b\\c"),           # * STATUS "b\\c"
    ("notify", "sp ace"),         # * STATUS "sp ace"
    ("notify", 'q"""""x'),        # * STATUS {7} (more than four escapes)
    ("events", 'q"""""x'),
    ("idle", 'q"""""x'),
])
def test_mailbox_name_with_quotes_and_backslashes(make_mux, dovecot, redis, prefix, ca_ctx, watch,
                                                  name):
    """The session parked on a mailbox whose name needs quoting wakes on a
    change there, whatever form NOTIFY's STATUS gives the name in; a
    literal concerns every mailbox of the user (a wake too many, told
    nothing: the INBOX session hears nothing)."""
    user = "park2"
    wire = imapc.quote(name)
    reset_inbox(dovecot, user, ["i1"])
    d = direct(dovecot, user)
    _box(d, wire)
    if watch == "notify":
        # What this Dovecot sends, pinned: quoted with escapes, or a literal.
        w = direct(dovecot, user, enable="CONDSTORE")
        ok(w, "n", "NOTIFY SET (personal (MessageNew))")
        w.send(b"i IDLE\r\n")
        assert w.readline().startswith(b"+")
        append(d, "pr", "probe", wire)
        st = w.read_response(timeout=5)
        lit = b"* STATUS {%d}\r\n%s (" % (len(name), name.encode())
        assert st.startswith(lit if name.count('"') + name.count("\\") > 4
                             else b"* STATUS %s (" % wire.encode()), st
        w.close()
    m = mux(make_mux, dovecot, redis, prefix, watch, reuse_ttl="0")
    inbox, _ = park_idle(m, ca_ctx, user)
    c, n = park_idle(m, ca_ctx, user, mailbox=wire)
    wait_parked(m, 2)
    w0 = wakes(m, "change")
    append(d, "ap", "second", wire)
    announce(redis, prefix, watch, user, name)
    assert data(c) == b"* %d EXISTS\r\n" % (n + 1)
    wait_parked(m, 2)
    quiet(inbox, 0.3)
    literal = watch == "notify" and name.count('"') + name.count("\\") > 4
    assert wakes(m, "change") - w0 == (2 if literal else 1)


# ---------------------------------------------------------------------------
# kept sessions and ENABLE state

@pytest.mark.parametrize("watch", ["events", "idle"])
def test_kept_sessions_follow_the_enable_state(make_mux, dovecot, redis, prefix, ca_ctx, watch):
    """reuse_ttl default: a plain session and a CONDSTORE one, of two users
    and then of one user, each keep their backend connection while parked
    (the kept session's key varies with the ENABLE state), and each wake
    takes its own: no backend login, one reuse per wake, MODSEQ for the
    CONDSTORE client only."""
    plain_user, cs_user = "park3", "park4"
    dp = reset_inbox(dovecot, plain_user, ["m1"])
    dc = reset_inbox(dovecot, cs_user, ["m1"])
    m = mux(make_mux, dovecot, redis, prefix, watch)
    plain, _ = park_idle(m, ca_ctx, plain_user)
    cs, _ = park_idle(m, ca_ctx, cs_user, enable="CONDSTORE")
    # The same user twice: plain and CONDSTORE, on plain_user's INBOX.
    plain2, _ = park_idle(m, ca_ctx, plain_user, enable="CONDSTORE")
    wait_parked(m, 3)
    wait_until_socks(m, dovecot, 3)
    logins, reused = (metric(m, "imapmux_backend_logins_total"),
                      metric(m, "imapmux_sessions_reused_total"))
    ok(dp, "fl", "STORE 1 +FLAGS.SILENT (\\Flagged)")
    ok(dc, "fl", "STORE 1 +FLAGS.SILENT (\\Flagged)")
    ms_p = _modseq(dp, 1)
    ms_c = _modseq(dc, 1)
    announce(redis, prefix, watch, plain_user)
    announce(redis, prefix, watch, cs_user)
    assert data(plain) == b"* 1 FETCH (FLAGS (\\Flagged))\r\n"
    assert data(cs) == b"* 1 FETCH (MODSEQ (%d) FLAGS (\\Flagged))\r\n" % ms_c
    assert data(plain2) == b"* 1 FETCH (MODSEQ (%d) FLAGS (\\Flagged))\r\n" % ms_p
    wait_parked(m, 3)
    assert metric(m, "imapmux_backend_logins_total") == logins
    assert metric(m, "imapmux_sessions_reused_total") == reused + 3
    wait_until_socks(m, dovecot, 3)
    # A client command wakes each once more: the backend connection each
    # one gets is in its ENABLE state (a STORE's FETCH carries MODSEQ in a
    # CONDSTORE session only, RFC 7162 3.2).
    for c in (plain, cs, plain2):
        c.send(b"DONE\r\n")
        _, t = c.read_until_tagged("i")
        assert t == b"i OK Idle completed.\r\n"
    got = {c: b"".join(ok(c, "g", "STORE 1 -FLAGS (\\Flagged)")) for c in (plain, cs, plain2)}
    assert got[plain] == b"* 1 FETCH (FLAGS ())\r\n", got[plain]
    for c in (cs, plain2):
        assert re.match(rb"\* 1 FETCH \(MODSEQ \(\d+\) FLAGS \(\)\)\r\n$", got[c]), got[c]
    assert metric(m, "imapmux_backend_logins_total") == logins
    assert metric(m, "imapmux_sessions_reused_total") == reused + 6


def wait_until_socks(m, dovecot, n):
    from conftest import wait_until
    wait_until(lambda: backend_socks(m, dovecot) == n, 5,
               lambda: "%d kept backend connection(s) (have %d)" % (n, backend_socks(m, dovecot)))


def _modseq(d, seq):
    got = b"".join(ok(d, "ms", "FETCH %d (MODSEQ)" % seq))
    return int(re.search(rb"MODSEQ \((\d+)\)", got).group(1))


# ---------------------------------------------------------------------------
# two mailboxes of one user

@pytest.mark.parametrize("watch", ["events", "idle", "notify"])
def test_a_change_wakes_only_the_sessions_on_its_mailbox(make_mux, dovecot, redis, prefix, ca_ctx,
                                                        watch):
    """Two sessions parked on INBOX, one on Work, of one user: mail in Work
    wakes only Work's; a flag change in INBOX wakes only INBOX's two."""
    user = "park5"
    d = reset_inbox(dovecot, user, ["m1"])
    _box(d, "Work")
    m = mux(make_mux, dovecot, redis, prefix, watch, reuse_ttl="0")
    in1, _ = park_idle(m, ca_ctx, user)
    in2, _ = park_idle(m, ca_ctx, user)
    work, _ = park_idle(m, ca_ctx, user, mailbox="Work")
    wait_parked(m, 3)
    if watch != "events":
        assert metric(m, "imapmux_watchers") == (2 if watch == "idle" else 1)
    w0 = wakes(m, "change")
    append(d, "ap", "w2", "Work")
    announce(redis, prefix, watch, user, "Work")
    assert data(work) == b"* 2 EXISTS\r\n"
    wait_parked(m, 3)
    for c in (in1, in2):
        quiet(c, 0.3)
    assert wakes(m, "change") - w0 == 1
    ok(d, "s", "SELECT INBOX")
    ok(d, "fl", "STORE 1 +FLAGS.SILENT (\\Seen)")
    announce(redis, prefix, watch, user, "INBOX")
    for c in (in1, in2):
        assert data(c) == b"* 1 FETCH (FLAGS (\\Seen))\r\n"
    wait_parked(m, 3)
    quiet(work, 0.3)
    assert wakes(m, "change") - w0 == 3


@pytest.mark.parametrize("watch", ["idle", "notify", "events"])
def test_inbox_child_selected_in_lower_case_wakes(make_mux, dovecot, redis, prefix, ca_ctx, watch):
    """A client that SELECTs inbox.Sub (INBOX.Sub to Dovecot: the INBOX
    part of a name is case-insensitive) parks, and mail in INBOX.Sub wakes
    it."""
    user = "park6"
    reset_inbox(dovecot, user, [])
    d = direct(dovecot, user)
    _box(d, "INBOX.Sub")
    m = mux(make_mux, dovecot, redis, prefix, watch, reuse_ttl="0")
    c, n = park_idle(m, ca_ctx, user, mailbox="inbox.Sub")
    assert n == 1
    wait_parked(m, 1)
    append(d, "ap", "second", "INBOX.Sub")
    announce(redis, prefix, watch, user, "INBOX.Sub")
    try:
        line = data(c, timeout=3)
    except imapc.Timeout:
        line = None
    told = [x for x in m.log_text().splitlines() if "change of" in x]
    assert line == b"* 2 EXISTS\r\n", (line, told)
