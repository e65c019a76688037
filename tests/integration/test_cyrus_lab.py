"""The Cyrus IMAP lab (deploy/lab.py Cyrus) against Cyrus itself, without
imapmux: the second real backend, the one that offers UNAUTHENTICATE
(RFC 8437). If these fail, imapmux tests against Cyrus prove nothing.

What Cyrus 3.6 does, as these tests pin it down:
  * UNAUTHENTICATE is offered (CAPABILITY) and accepted only in sessions of
    Cyrus admins (imapd.conf `admins`); anyone else gets `BAD Unrecognized
    command`, including a user logged in by the master user (proxyservers).
  * Its answer is `tag OK [CAPABILITY <the greeting's list>] Completed`, with
    no untagged response, also when a mailbox is selected (it is closed).
  * What ENABLE turned on does not survive it.
"""

import os
import socket
import time

import pytest

import imapc
import lab
from conftest import CYRUS_ADMIN_USERS, MASTER_PASSWORD, QUOTED_PASSWORD, QUOTED_USER, password

ADMIN1, ADMIN2 = CYRUS_ADMIN_USERS


def _client(cyrus):
    c = imapc.Client(cyrus.port)
    c.greeting()
    return c


def _ok(c, tag, text):
    untagged, tagged = c.cmd(tag, text)
    assert imapc.status_of(tagged) == "OK", (text, untagged, tagged)
    return untagged, tagged


def _caps(c, tag="cap"):
    untagged, _ = _ok(c, tag, "CAPABILITY")
    lines = [u for u in untagged if u.upper().startswith(b"* CAPABILITY ")]
    assert len(lines) == 1, untagged
    return imapc.caps_of(lines[0])


def _exists(untagged):
    n = [int(u.split()[1]) for u in untagged if u.rstrip().upper().endswith(b" EXISTS")]
    assert n, untagged
    return n[-1]


def _append(c, tag, message, mailbox="INBOX"):
    c.send("%s APPEND %s {%d+}\r\n" % (tag, mailbox, len(message)) + message.decode() + "\r\n")
    untagged, tagged = c.read_until_tagged(tag)
    assert imapc.status_of(tagged) == "OK", (untagged, tagged)
    return untagged, tagged


def _msg(subject):
    return ("From: lab <lab@localhost>\r\nSubject: %s\r\nMessage-ID: <%s@lab>\r\n\r\n"
            "body of %s\r\n" % (subject, subject, subject)).encode()


def _search_subject(c, tag, subject):
    untagged, _ = _ok(c, tag, 'SEARCH SUBJECT "%s"' % subject)
    line = [u for u in untagged if u.upper().startswith(b"* SEARCH")]
    assert len(line) == 1, untagged
    return [int(x) for x in line[0].split()[2:]]


# ---------------------------------------------------------------------------
# the server and its logins

def test_cyrus_greeting_and_preauth_capabilities(cyrus):
    assert cyrus.alive()
    with _client(cyrus) as c:
        g = c.transcript[0]
        assert g.startswith(b"* OK [CAPABILITY IMAP4rev1 "), g
        assert b" Cyrus IMAP 3.6." in g and g.endswith(b" server ready\r\n"), g
        caps = imapc.caps_of(g)
        assert {"AUTH=PLAIN", "AUTH=LOGIN", "SASL-IR"} <= caps, caps
        # Plaintext logins without TLS; no TLS offered at all.
        assert "LOGINDISABLED" not in caps and "STARTTLS" not in caps, caps
        assert "UNAUTHENTICATE" not in caps
        assert "UNAUTHENTICATE" not in _caps(c)
        assert g == cyrus.greeting


def test_cyrus_login_with_the_right_password(cyrus):
    with _client(cyrus) as c:
        tagged = c.login("alice", password("alice"))
        assert b"] User logged in SESSIONID=<" in tagged, tagged
        caps = imapc.caps_of(tagged)
        assert {"IDLE", "UIDPLUS", "CONDSTORE", "ENABLE"} <= caps, caps
        _ok(c, "s", "SELECT INBOX")
    # passwords with a space, a quote and a backslash reach the sasldb intact
    with _client(cyrus) as c:
        c.login(QUOTED_USER, QUOTED_PASSWORD)
    with _client(cyrus) as c:
        _, tagged = c.cmd("a", "AUTHENTICATE PLAIN " + imapc.plain_ir("bob", password("bob")))
        assert tagged.startswith(b"a OK "), tagged


def test_cyrus_wrong_password_fails(cyrus):
    with _client(cyrus) as c:
        _, tagged = c.cmd("a", 'LOGIN alice "not-alices-password"')
        assert tagged == b"a NO Login failed: authentication failure\r\n", tagged
        _, tagged = c.cmd("b", "AUTHENTICATE PLAIN " + imapc.plain_ir("alice", "nope"))
        assert imapc.status_of(tagged) == "NO", tagged
        _, tagged = c.cmd("c", 'LOGIN nosuchuser "%s"' % password("alice"))
        assert imapc.status_of(tagged) == "NO", tagged
        # bob's password is not alice's
        _, tagged = c.cmd("d", 'LOGIN alice "%s"' % password("bob"))
        assert imapc.status_of(tagged) == "NO", tagged
        # and the connection still works
        c.login("alice", password("alice"), tag="e")


def test_cyrus_select_append_fetch(cyrus):
    msg = _msg("fetch-me-%d" % time.time_ns())
    with _client(cyrus) as c:
        c.login("carol", password("carol"))
        untagged, _ = _ok(c, "s", "SELECT INBOX")
        before = _exists(untagged)
        appended, tagged = _append(c, "a", msg)
        assert b"[APPENDUID " in tagged, tagged
        uid = int(tagged.split(b"[APPENDUID ", 1)[1].split(b"]")[0].split()[1])
        # Cyrus tells of the new message in the APPEND answer already
        untagged, _ = _ok(c, "n", "NOOP")
        assert b"* %d EXISTS\r\n" % (before + 1) in appended + untagged, (appended, untagged)
        untagged, _ = _ok(c, "f", "UID FETCH %d (UID RFC822.SIZE BODY.PEEK[])" % uid)
        assert len(untagged) == 1, untagged
        assert untagged[0].startswith(b"* %d FETCH (" % (before + 1)), untagged
        assert b"UID %d" % uid in untagged[0] and b"RFC822.SIZE %d" % len(msg) in untagged[0]
        assert b"BODY[] {%d}\r\n" % len(msg) + msg in untagged[0], untagged
        _ok(c, "o", "LOGOUT")


def test_cyrus_inbox_is_made_at_first_login(cyrus):
    with _client(cyrus) as c:
        c.login(cyrus.admin_user, cyrus.admin_password)
        untagged, _ = _ok(c, "l", 'LIST "" "user/frank"')
        assert untagged == [], untagged
    with _client(cyrus) as c:
        c.login("frank", password("frank"))
        untagged, _ = _ok(c, "s", "SELECT INBOX")
        assert _exists(untagged) == 0
    with _client(cyrus) as c:
        c.login(cyrus.admin_user, cyrus.admin_password)
        untagged, _ = _ok(c, "l", 'LIST "" "user/frank"')
        assert len(untagged) == 1 and untagged[0].endswith(b" user/frank\r\n"), untagged


# ---------------------------------------------------------------------------
# UNAUTHENTICATE

def test_cyrus_unauthenticate_is_for_admins_only(cyrus):
    with _client(cyrus) as c:
        tagged = c.login(ADMIN1, password(ADMIN1))
        assert "UNAUTHENTICATE" in imapc.caps_of(tagged), tagged
        assert "UNAUTHENTICATE" in _caps(c)
    with _client(cyrus) as c:
        tagged = c.login("alice", password("alice"))
        assert "UNAUTHENTICATE" not in imapc.caps_of(tagged), tagged
        assert "UNAUTHENTICATE" not in _caps(c)
        _, tagged = c.cmd("u", "UNAUTHENTICATE")
        assert tagged == b"u BAD Unrecognized command\r\n", tagged
        _, tagged = c.cmd("l", 'LOGIN bob "%s"' % password("bob"))
        assert tagged == b"l BAD Already logged in\r\n", tagged
    with _client(cyrus) as c:
        _, tagged = c.cmd("u", "UNAUTHENTICATE")
        assert tagged == b"u BAD Please login first\r\n", tagged


def test_cyrus_unauthenticate_then_login_as_another_user(cyrus):
    subject = "only-for-%s-%d" % (ADMIN1, time.time_ns())
    with _client(cyrus) as c:
        greeting_caps = imapc.caps_of(c.transcript[0])
        c.login(ADMIN1, password(ADMIN1))
        _append(c, "a", _msg(subject))
        untagged, _ = _ok(c, "s", "SELECT INBOX")
        n1 = _exists(untagged)
        assert n1 >= 1 and _search_subject(c, "f", subject), untagged

        untagged, tagged = c.cmd("u", "UNAUTHENTICATE")
        assert untagged == [], untagged
        assert tagged.startswith(b"u OK [CAPABILITY ") and tagged.endswith(b"] Completed\r\n")
        # the answer carries the not-authenticated capabilities (as the greeting)
        assert imapc.caps_of(tagged) == greeting_caps, tagged
        _, tagged = c.cmd("x", "SELECT INBOX")
        assert tagged == b"x BAD Please login first\r\n", tagged

        c.login(ADMIN2, password(ADMIN2), tag="l2")
        untagged, _ = _ok(c, "s2", "SELECT INBOX")
        assert _exists(untagged) != n1, untagged
        assert _search_subject(c, "f2", subject) == []

        _ok(c, "u2", "UNAUTHENTICATE")
        # a user that is not an admin may log in after it too
        tagged = c.login("dave", password("dave"), tag="l3")
        assert "UNAUTHENTICATE" not in imapc.caps_of(tagged), tagged
        untagged, _ = _ok(c, "s3", "SELECT INBOX")
        assert _search_subject(c, "f3", subject) == []
        _ok(c, "o", "LOGOUT")
    assert "login: localhost [127.0.0.1] dave plaintext" in cyrus.log_text()


def test_cyrus_unauthenticate_with_a_mailbox_selected(cyrus):
    with _client(cyrus) as c:
        c.login(ADMIN2, password(ADMIN2))
        _append(c, "a", _msg("selected-%d" % time.time_ns()))
        _ok(c, "s", "SELECT INBOX")
        untagged, tagged = c.cmd("u", "UNAUTHENTICATE")
        # no untagged answer ([CLOSED] or other) and no selected state left
        assert untagged == [] and tagged.startswith(b"u OK [CAPABILITY "), (untagged, tagged)
        c.login(ADMIN2, password(ADMIN2), tag="l")
        _, tagged = c.cmd("f", "FETCH 1 FLAGS")
        assert tagged == b"f BAD Please select a mailbox first\r\n", tagged


def test_cyrus_enable_does_not_survive_unauthenticate(cyrus):
    def expunge_one(c, t):
        _append(c, t + "a", _msg("expunge-%d" % time.time_ns()))
        untagged, _ = _ok(c, t + "s", "SELECT INBOX")
        n = _exists(untagged)
        _ok(c, t + "d", "STORE %d +FLAGS.SILENT (\\Deleted)" % n)
        untagged, _ = _ok(c, t + "e", "EXPUNGE")
        return untagged

    with _client(cyrus) as c:
        c.login(ADMIN1, password(ADMIN1))
        untagged, _ = _ok(c, "en", "ENABLE QRESYNC")
        assert untagged == [b"* ENABLED CONDSTORE QRESYNC\r\n"], untagged
        # QRESYNC on: EXPUNGE is answered with VANISHED (RFC 7162)
        untagged = expunge_one(c, "q")
        assert [u for u in untagged if u.startswith(b"* VANISHED ")], untagged
        _ok(c, "u", "UNAUTHENTICATE")
        c.login(ADMIN1, password(ADMIN1), tag="l")
        untagged = expunge_one(c, "p")
        assert not [u for u in untagged if u.startswith(b"* VANISHED ")], untagged
        assert [u for u in untagged if u.endswith(b" EXPUNGE\r\n")], untagged


# ---------------------------------------------------------------------------
# the master user (imapmux's auth = redis)

def test_cyrus_master_user_logs_in_as_a_user(cyrus):
    subject = "by-master-%d" % time.time_ns()
    with _client(cyrus) as c:
        _, tagged = c.cmd("a", "AUTHENTICATE PLAIN " +
                          imapc.plain_ir(lab.MASTER_USER, MASTER_PASSWORD, authzid="erin"))
        assert tagged.startswith(b"a OK [CAPABILITY "), tagged
        assert b"] Success (no protection) SESSIONID=<" in tagged, tagged
        # a session of erin's, not an admin's: no UNAUTHENTICATE
        assert "UNAUTHENTICATE" not in imapc.caps_of(tagged)
        _append(c, "p", _msg(subject))
        _ok(c, "o", "LOGOUT")
    # what the master put into "INBOX" is in erin's own INBOX
    with _client(cyrus) as c:
        c.login("erin", password("erin"))
        _ok(c, "s", "SELECT INBOX")
        assert len(_search_subject(c, "f", subject)) == 1
    assert "login: localhost [127.0.0.1] erin PLAIN" in cyrus.log_text()
    m = cyrus.imap_as("erin")
    try:
        assert m.select("INBOX")[0] == "OK"
    finally:
        m.logout()


def test_cyrus_master_user_needs_its_password_and_users_cannot_proxy(cyrus):
    with _client(cyrus) as c:
        _, tagged = c.cmd("a", "AUTHENTICATE PLAIN " +
                          imapc.plain_ir(lab.MASTER_USER, "wrong", authzid="erin"))
        assert tagged == b"a NO authentication failure\r\n", tagged
        _, tagged = c.cmd("b", "AUTHENTICATE PLAIN " +
                          imapc.plain_ir("alice", password("alice"), authzid="bob"))
        assert tagged == b"b NO authentication failure\r\n", tagged
    assert "user alice is not allowed to proxy" in cyrus.log_text()


# ---------------------------------------------------------------------------
# the lab itself

def _group_sockets(pgid):
    """{inode} of the sockets open in process group pgid."""
    inodes = set()
    for pid in lab.group_pids(pgid):
        try:
            fds = os.listdir("/proc/%d/fd" % pid)
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink("/proc/%d/fd/%s" % (pid, fd))
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def _inet_listeners(inodes):
    """(file, local address) of every listening TCP or bound UDP socket in inodes."""
    found = []
    for name in ("tcp", "tcp6", "udp", "udp6"):
        with open("/proc/net/" + name) as f:
            next(f)
            for line in f:
                parts = line.split()
                listening = parts[3] == "0A" if name.startswith("tcp") else True
                if listening and int(parts[9]) in inodes:
                    found.append((name, parts[1]))
    return found


def test_cyrus_runs_as_cyrus_and_listens_only_on_its_port(cyrus):
    pids = lab.group_pids(cyrus.proc.pgid)
    assert len(pids) >= 3, pids          # master, idled, a preforked imapd
    uid = lab._cyrus_owner()[0]
    for pid in pids:
        with open("/proc/%d/status" % pid) as f:
            ids = [line.split()[1:] for line in f if line.startswith(("Uid:", "Gid:"))]
        assert ids[0] == [str(uid)] * 4, (pid, ids)
    listeners = _inet_listeners(_group_sockets(cyrus.proc.pgid))
    assert listeners == [("tcp", "0100007F:%04X" % cyrus.port)], listeners


def test_cyrus_lab_start_stop_kill_and_busy_port():
    c = lab.Cyrus({"zed": "pw-zed-1"}, name="cyrus-life")
    try:
        t0 = time.monotonic()
        c.start(timeout=15)
        assert time.monotonic() - t0 < 5, "Cyrus took %.1fs to start" % (time.monotonic() - t0)
        m = c.imap("zed")
        assert m.select("INBOX") == ("OK", [b"0"])
        m.logout()
        pgid = c.proc.pgid
        c.kill_hard()
        assert not c.alive() and lab.group_pids(pgid) == []
        with pytest.raises(OSError):
            socket.create_connection(("127.0.0.1", c.port), timeout=2).close()
        # a restart on the same directory keeps the mail
        c.start()
        m = c.imap("zed")
        assert m.select("INBOX") == ("OK", [b"0"])
        m.logout()
        c.stop()
        assert not c.alive()
    finally:
        c.cleanup()
    assert not os.path.exists(c.dir)

    # A port that is taken: LabError at once, with master's complaint.
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    c = lab.Cyrus({"zed": "pw-zed-1"}, port=busy.getsockname()[1], name="cyrus-busy")
    try:
        t0 = time.monotonic()
        with pytest.raises(lab.LabError, match="unable to bind"):
            c.start(timeout=15)
        assert time.monotonic() - t0 < 5
        assert not c.alive()
    finally:
        busy.close()
        c.cleanup()
