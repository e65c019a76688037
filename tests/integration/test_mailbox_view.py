"""The client's mailbox view (common/mbox_feed, mbox_view) as the pump feeds
it from a real Dovecot's responses.

imapmux keeps, per logged-in session, a model of what the client was told
about its selected mailbox: the input parked IDLE (issue #11) diffs when a
session wakes. Here a second client changes the mailbox (APPEND, EXPUNGE,
flag changes) while the first one is told about it through imapmux; when the
first one logs out, imapmux's debug log line of its view must match what
Dovecot itself reports (STATUS), and say the view is reliable.
"""

import re

import pytest

import imapc
from conftest import password, wait_until

TIMEOUT = 5.0
VIEW = re.compile(
    r"S-\d+ (\S+)@\S+ mailbox view: (\w+) \"([^\"]*)\" (SELECT|EXAMINE) "
    r"uidvalidity=(\d+) uidnext=(\d+) exists=(\d+) highestmodseq=(\d+) enabled=(\d+) "
    r"(reliable|unreliable: .*)")


def client(m, ca_ctx, user):
    c = imapc.Client(m.imaps_port, tls=ca_ctx, timeout=TIMEOUT)
    c.greeting()
    _, t = c.cmd("l", "LOGIN %s %s" % (imapc.quote(user), imapc.quote(password(user))))
    assert t.startswith(b"l OK"), t
    return c


def ok(c, tag, text):
    untagged, t = c.cmd(tag, text)
    assert t.startswith(tag.encode() + b" OK"), (text, t)
    return untagged


def append(c, tag, subject):
    msg = b"Subject: %s\r\n\r\nbody\r\n" % subject.encode()
    c.send(b"%s APPEND INBOX {%d}\r\n" % (tag.encode(), len(msg)))
    assert c.readline().startswith(b"+"), "no continuation for APPEND"
    c.send(msg + b"\r\n")
    _, t = c.read_until_tagged(tag)
    assert t.startswith(tag.encode() + b" OK"), t


def status(c):
    untagged = ok(c, "st", "STATUS INBOX (MESSAGES UIDNEXT UIDVALIDITY HIGHESTMODSEQ)")
    line = b" ".join(untagged)
    return {k.decode(): int(v) for k, v in re.findall(rb"([A-Z]+) (\d+)", line)}


def views(m, user):
    return [v for v in VIEW.findall(m.log_text()) if v[0] == user]


def logout(c):
    c.send(b"z LOGOUT\r\n")
    c.expect_closed(TIMEOUT)


@pytest.fixture
def dbg_mux(make_mux):
    return make_mux(imapmux={"log_level": "debug"})


def test_view_follows_appends_expunges_and_flags(dbg_mux, ca_ctx):
    a = client(dbg_mux, ca_ctx, "viewer")
    b = client(dbg_mux, ca_ctx, "viewer")
    ok(a, "s", "SELECT INBOX")
    for i in range(4):
        append(b, "ap%d" % i, "m%d" % i)
    ok(a, "n1", "NOOP")                      # * N EXISTS reaches a
    ok(b, "bs", "SELECT INBOX")
    ok(b, "d", "STORE 1:2 +FLAGS (\\Deleted)")
    ok(b, "e", "EXPUNGE")
    ok(a, "n2", "NOOP")                      # * 1 EXPUNGE twice
    ok(a, "f", "FETCH 1:* (UID FLAGS)")
    ok(a, "fl", "STORE 1 +FLAGS (\\Seen)")
    logout(a)
    want = status(b)
    logout(b)
    wait_until(lambda: len(views(dbg_mux, "viewer")) >= 2, TIMEOUT, "both view log lines")
    got = [v for v in views(dbg_mux, "viewer") if v[2] == "INBOX"]
    assert len(got) == 2, got
    for v in got:
        _, state, name, mode, uidvalidity, uidnext, exists, _, _, rel = v
        assert (state, name, mode, rel) == ("selected", "INBOX", "SELECT", "reliable"), v
        assert int(uidvalidity) == want["UIDVALIDITY"], (v, want)
        assert int(exists) == want["MESSAGES"], (v, want)
    # The first client saw every UID (its FETCH): its UIDNEXT is at least
    # past them, and at most the server's.
    assert any(int(v[5]) == want["UIDNEXT"] for v in got), (got, want)


def test_view_examine_quoted_name_close_and_condstore(dbg_mux, ca_ctx):
    a = client(dbg_mux, ca_ctx, "viewer2")
    b = client(dbg_mux, ca_ctx, "viewer2")
    append(b, "ap", "one")
    ok(a, "x", 'EXAMINE "INBOX"')
    logout(a)
    wait_until(lambda: views(dbg_mux, "viewer2"), TIMEOUT, "the EXAMINE view line")
    v = views(dbg_mux, "viewer2")[-1]
    assert v[1:4] == ("selected", "INBOX", "EXAMINE"), v
    assert v[9] == "reliable", v

    # CLOSE: nothing selected.
    a = client(dbg_mux, ca_ctx, "viewer2")
    ok(a, "s", "SELECT INBOX")
    ok(a, "c", "CLOSE")
    logout(a)
    wait_until(lambda: len(views(dbg_mux, "viewer2")) >= 2, TIMEOUT, "the CLOSE view line")
    v = views(dbg_mux, "viewer2")[-1]
    assert v[1] == "none" and int(v[6]) == 0, v

    # ENABLE CONDSTORE: learned from the server's * ENABLED; HIGHESTMODSEQ
    # from the SELECT's answer.
    a = client(dbg_mux, ca_ctx, "viewer2")
    ok(a, "en", "ENABLE CONDSTORE")
    ok(a, "s", "SELECT INBOX")
    logout(a)
    want = status(b)
    logout(b)
    wait_until(lambda: len(views(dbg_mux, "viewer2")) >= 3, TIMEOUT, "the CONDSTORE view line")
    v = views(dbg_mux, "viewer2")[-1]
    assert v[1] == "selected" and int(v[8]) & 1, v           # MBOX_EN_CONDSTORE
    assert int(v[7]) == want["HIGHESTMODSEQ"], (v, want)
    assert int(v[6]) == want["MESSAGES"] and v[9] == "reliable", (v, want)
