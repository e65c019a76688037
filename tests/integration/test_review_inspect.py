"""Command inspection after login, against a real Dovecot (review findings).

imapmux looks at the head of every client command after login: it answers
COMPRESS and UNAUTHENTICATE itself, tracks SELECT/EXAMINE/CLOSE/UNSELECT and
IDLE, and marks the session "tainted" (never kept for reuse at LOGOUT) when
a command changes per-connection state (ENABLE, CONDSTORE, ...). Whatever it
cannot inspect must not reach the backend, or the inspection is void:

  a. a tag too long for the first 4 KiB fragment hides ENABLE QRESYNC;
  b. a tag over the proxy's 64 bytes hides a SELECT from the tracking;
  c. the same long tag hides UNAUTHENTICATE and COMPRESS DEFLATE;
  d. a non-synchronizing literal announced on a command that takes none
     (NOOP) hides a whole second command, which Dovecot runs (it skips the
     rest of NOOP's line up to the first LF and reads the "literal" as the
     next command);
  e. a synchronizing literal the backend never asks for (it answers the
     command at once): what the client sends next is a new command, and
     must be inspected as one;
  f. CONDSTORE after a literal (SELECT {5+} INBOX (CONDSTORE));
  g. legitimate literals (APPEND, {n+} and {n}) still work, byte for byte.

Evidence, per test: what the client reads (`* BAD` from imapmux, no
`* ENABLED`, no answer carrying the hidden command's tag), and what a reused
session looks like (imapmux_sessions_reused_total; Dovecot announces
`[HIGHESTMODSEQ n]` on SELECT only when CONDSTORE or QRESYNC is enabled on
the connection, so a SELECT INBOX tells whether an ENABLE leaked into a
kept session).

One worker (the reuse cache is per worker), check_interval = 0, implicit TLS
to a Dovecot of the module's own, reuse_ttl left at its default (on).
"""

import re

import pytest

import imapc
import lab
from conftest import MASTER_PASSWORD, backend_section, scrape_metrics

TIMEOUT = 8.0

USERS = ["ri-longenable", "ri-longsel", "ri-unauth", "ri-compress", "ri-nonsync",
         "ri-sync", "ri-condlit", "ri-append", "ri-trycreate"]

LONG_TAG = b"T" * 5000          # longer than the proxy's 4 KiB forwarding unit
TAG70 = b"t" * 70               # longer than the proxy's 64-byte tag bound


def upw(user):
    return "ipw-%s-R4" % user


@pytest.fixture(scope="module")
def idv(cert, key):
    d = lab.Dovecot({u: upw(u) for u in USERS}, tls=True, cert=cert, key=key,
                    master_password=MASTER_PASSWORD, name="dovecot-inspect")
    d.start()
    for u in USERS:
        d.append(u, message("seed for %s" % u))
    yield d
    d.cleanup()


def message(subject):
    return ("From: t <t@imapmux.test>\r\nTo: u@imapmux.test\r\nSubject: %s\r\n"
            "\r\nbody\r\n" % subject).encode()


def start_mux(make_mux, dv, cert):
    stats_port = lab.free_port()
    bk = backend_section(dv, tls="implicit", ca=cert, check_interval=0,
                         connect_timeout="3s", command_timeout="5s")
    m = make_mux(backends=[("a", bk)], routing={"lookup": "static", "fallback": "a"},
                 imapmux={"workers": 1, "stats_listen": "127.0.0.1:%d" % stats_port,
                          "auth_fail_delay": 0})
    lab.wait_listening(stats_port, timeout=10, proc=m.proc)
    m.stats_port = stats_port
    return m


def counts(m):
    """(sessions reused, backend logins) from /metrics."""
    s = scrape_metrics(m.stats_port)
    return int(s["imapmux_sessions_reused_total"]), int(s["imapmux_backend_logins_total"])


def login(m, ca_ctx, user, tag="l"):
    c = imapc.Client(m.imaps_port, tls=ca_ctx, timeout=TIMEOUT)
    c.greeting()
    _, tagged = c.cmd(tag, "LOGIN %s %s" % (imapc.quote(user), imapc.quote(upw(user))))
    assert tagged.startswith(tag.encode() + b" OK"), (user, tagged)
    return c


def logout(c, tag="o"):
    """LOGOUT, answered by imapmux or Dovecot: a BYE and `tag OK`, then the close."""
    c.send("%s LOGOUT\r\n" % tag)
    got = c.expect_closed(5)
    lines = got.split(b"\r\n")
    assert any(x.startswith(b"* BYE") for x in lines), got
    assert any(x.startswith(tag.encode() + b" OK") for x in lines), got
    c.close()


def select_modseq(c, tag="p"):
    """SELECT INBOX; True if Dovecot announced HIGHESTMODSEQ (CONDSTORE or
    QRESYNC enabled on this backend connection)."""
    untagged, tagged = c.cmd(tag, "SELECT INBOX")
    assert tagged.startswith(tag.encode() + b" OK"), tagged
    return any(b"[HIGHESTMODSEQ " in x for x in untagged + [tagged])


def read_until_tagged_or_fail(c, tag, timeout, what):
    try:
        return c.read_until_tagged(tag, timeout=timeout)
    except (imapc.Timeout, imapc.Closed) as e:
        c.close()
        why = re.sub(r"[Tt]{40,}", lambda mo: "<long tag>", str(e))
        pytest.fail("%s: no `%s` answer: %s" % (what, tag, why[-1500:]), pytrace=False)


def tags_of(lines):
    return [x.split(b" ", 1)[0] for x in lines]


def short(lines):
    """Lines for an assertion message, long tags abbreviated."""
    return [re.sub(rb"[Tt]{40,}", lambda mo: b"<%d-byte tag>" % len(mo.group(0)), x)
            for x in lines]


def round_then_reuse(m, ca_ctx, c, user):
    """LOGOUT c, log user in again; returns (client, reused delta, modseq on
    SELECT in the new session)."""
    reused0, _ = counts(m)
    logout(c)
    c2 = login(m, ca_ctx, user, tag="l2")
    reused1, _ = counts(m)
    return c2, reused1 - reused0, select_modseq(c2)


# ---------------------------------------------------------------------------
# a. ENABLE behind a 5000-byte tag

def test_long_tag_hides_no_enable(make_mux, idv, cert, ca_ctx):
    user = "ri-longenable"
    m = start_mux(make_mux, idv, cert)
    c = login(m, ca_ctx, user)
    c.send(LONG_TAG + b" ENABLE QRESYNC\r\nn NOOP\r\n")
    untagged, tagged = read_until_tagged_or_fail(c, "n", 5, "NOOP after the long-tag ENABLE")
    assert tagged.startswith(b"n OK"), tagged
    assert not any(x.startswith(b"* ENABLED") for x in untagged), (
        "ENABLE behind a 5000-byte tag reached Dovecot", short(untagged))
    assert not any(x.startswith(LONG_TAG[:100]) for x in untagged), (
        "the long-tag command was forwarded (Dovecot answered it)", short(untagged))
    assert any(x.startswith(b"* BAD") for x in untagged), (
        "no untagged BAD from imapmux", short(untagged))
    c2, reused, modseq = round_then_reuse(m, ca_ctx, c, user)
    assert reused == 1, "the untainted session was not kept and reused"
    assert not modseq, "QRESYNC enabled in the reused session (HIGHESTMODSEQ on SELECT)"
    logout(c2)


# ---------------------------------------------------------------------------
# b. SELECT behind a 70-byte tag

def test_tag_over_64_bytes_does_not_select(make_mux, idv, cert, ca_ctx):
    user = "ri-longsel"
    m = start_mux(make_mux, idv, cert)
    c = login(m, ca_ctx, user)
    c.send(TAG70 + b" SELECT INBOX\r\nn NOOP\r\n")
    untagged, tagged = read_until_tagged_or_fail(c, "n", 5, "NOOP after the 70-byte-tag SELECT")
    assert tagged.startswith(b"n OK"), tagged
    assert not any(re.match(rb"\* \d+ EXISTS", x) for x in untagged), (
        "SELECT with a 70-byte tag reached Dovecot", short(untagged))
    assert not any(x.startswith(TAG70) for x in untagged), (
        "the 70-byte-tag command was forwarded", short(untagged))
    assert any(x.startswith(b"* BAD") for x in untagged), short(untagged)
    reused0, _ = counts(m)
    logout(c)
    c = login(m, ca_ctx, user, tag="l2")
    assert counts(m)[0] - reused0 == 1, "the session was not kept and reused"
    _, tagged = c.cmd("f", "FETCH 1 FLAGS")
    assert imapc.status_of(tagged) in ("BAD", "NO"), (
        "the reused session still had INBOX selected: %r" % tagged)
    logout(c)


# ---------------------------------------------------------------------------
# c. UNAUTHENTICATE and COMPRESS behind a 5000-byte tag

def test_long_tag_unauthenticate_answered_by_proxy(make_mux, idv, cert, ca_ctx):
    user = "ri-unauth"
    m = start_mux(make_mux, idv, cert)
    c = login(m, ca_ctx, user)
    c.send(LONG_TAG + b" UNAUTHENTICATE\r\nn NOOP\r\n")
    untagged, tagged = read_until_tagged_or_fail(c, "n", 5, "NOOP after the long-tag command")
    assert tagged.startswith(b"n OK"), tagged
    assert not any(x.startswith(LONG_TAG[:100]) for x in untagged), (
        "UNAUTHENTICATE behind a 5000-byte tag was forwarded to the backend", short(untagged))
    assert any(x.startswith(b"* BAD") for x in untagged), short(untagged)
    _, tagged = c.cmd("s", "SELECT INBOX")
    assert tagged.startswith(b"s OK"), ("no longer logged in", tagged)
    logout(c)


def test_long_tag_compress_answered_by_proxy(make_mux, idv, cert, ca_ctx):
    user = "ri-compress"
    m = start_mux(make_mux, idv, cert)
    c = login(m, ca_ctx, user)
    c.send(LONG_TAG + b" COMPRESS DEFLATE\r\nn NOOP\r\n")
    untagged, tagged = read_until_tagged_or_fail(
        c, "n", 5, "NOOP after the long-tag COMPRESS (a compressed stream is unreadable)")
    assert tagged.startswith(b"n OK"), tagged
    assert not any(x.startswith(LONG_TAG[:100]) for x in untagged), (
        "COMPRESS behind a 5000-byte tag was forwarded to the backend", short(untagged))
    assert any(x.startswith(b"* BAD") for x in untagged), short(untagged)
    # Plain IMAP still, both ways: a mailbox opens and its answer is text.
    untagged, tagged = c.cmd("s", "SELECT INBOX")
    assert tagged.startswith(b"s OK"), tagged
    assert any(re.match(rb"\* \d+ EXISTS\r\n$", x) for x in untagged), untagged
    logout(c)


# ---------------------------------------------------------------------------
# d, e. a second command hidden in a literal nobody asked for

ENABLE_LINE = b"b ENABLE QRESYNC\r\n"


def test_nonsync_literal_on_noop_hides_no_command(make_mux, idv, cert, ca_ctx):
    user = "ri-nonsync"
    m = start_mux(make_mux, idv, cert)
    c = login(m, ca_ctx, user)
    # One command to the proxy: a NOOP with one {18+} literal argument
    # (the 18 bytes are b's command line), ended by the final CRLF.
    c.send(b"a NOOP {%d+}\r\n%s\r\nn NOOP\r\n" % (len(ENABLE_LINE), ENABLE_LINE))
    untagged, tagged = read_until_tagged_or_fail(c, "n", 5, "NOOP after the literal")
    assert tagged.startswith(b"n OK"), tagged
    assert b"a" in tags_of(untagged), ("no answer to a", untagged)
    assert not any(x.startswith(b"* ENABLED") for x in untagged), (
        "the ENABLE inside a's literal ran on Dovecot", untagged)
    assert b"b" not in tags_of(untagged), ("the literal was run as command b", untagged)
    c2, reused, modseq = round_then_reuse(m, ca_ctx, c, user)
    assert reused == 1, "the session was not kept and reused"
    assert not modseq, "QRESYNC enabled in the reused session (HIGHESTMODSEQ on SELECT)"
    logout(c2)


def test_sync_literal_not_asked_for_then_enable(make_mux, idv, cert, ca_ctx):
    user = "ri-sync"
    m = start_mux(make_mux, idv, cert)
    c = login(m, ca_ctx, user)
    c.send(b"a NOOP {%d}\r\n" % len(ENABLE_LINE))
    seen = []
    while True:
        try:
            r = c.read_response(5)
        except (imapc.Timeout, imapc.Closed) as e:
            pytest.fail("NOOP {n}: neither `+` nor an answer to a: %s" % e, pytrace=False)
        seen.append(r)
        if r.startswith(b"+") or r.startswith(b"a "):
            break
    reused0, logins0 = counts(m)
    if r.startswith(b"+"):
        # The literal was asked for: its bytes are data, never a command.
        c.send(ENABLE_LINE + b"\r\n")
        untagged, tagged = read_until_tagged_or_fail(c, "a", 5, "NOOP with its literal")
        assert not any(x.startswith(b"* ENABLED") for x in untagged), untagged
        _, tagged = c.cmd("n", "NOOP")
        assert tagged.startswith(b"n OK"), tagged
        assert b"b" not in tags_of(c.transcript), c.transcript
        c2, reused, modseq = round_then_reuse(m, ca_ctx, c, user)
        assert reused == 1 and not modseq, (reused, modseq)
        logout(c2)
        return
    # Dovecot answers NOOP at once and never sends "+": the literal is not
    # sent (RFC 3501 7.5), so the next line is a new command, b.
    c.send(ENABLE_LINE)
    untagged, tagged = read_until_tagged_or_fail(c, "b", 5, "ENABLE after the answered NOOP")
    assert tagged.startswith(b"b OK"), tagged
    _, tagged = c.cmd("n", "NOOP")
    assert tagged.startswith(b"n OK"), tagged
    logout(c)
    c = login(m, ca_ctx, user, tag="l2")
    reused1, logins1 = counts(m)
    assert (reused1 - reused0, logins1 - logins0) == (0, 1), (
        "a session with QRESYNC enabled (b ENABLE, taken by imapmux for a's literal) "
        "was kept and reused")
    assert not select_modseq(c), "QRESYNC enabled in the next session"
    logout(c)


# ---------------------------------------------------------------------------
# f. CONDSTORE after a literal

def test_condstore_after_literal_taints(make_mux, idv, cert, ca_ctx):
    user = "ri-condlit"
    m = start_mux(make_mux, idv, cert)
    c = login(m, ca_ctx, user)
    c.send(b"a SELECT {5+}\r\nINBOX (CONDSTORE)\r\n")
    untagged, tagged = read_until_tagged_or_fail(c, "a", 5, "SELECT (CONDSTORE)")
    assert tagged.startswith(b"a OK"), tagged
    # CONDSTORE is on for this connection from now on (RFC 7162 3.1).
    assert any(b"[HIGHESTMODSEQ " in x for x in untagged + [tagged]), untagged
    reused0, logins0 = counts(m)
    logout(c)
    c = login(m, ca_ctx, user, tag="l2")
    reused1, logins1 = counts(m)
    assert (reused1 - reused0, logins1 - logins0) == (0, 1), (
        "a session with CONDSTORE on (SELECT ... (CONDSTORE) after a literal) was reused")
    # (No HIGHESTMODSEQ probe here: once SELECT ... (CONDSTORE) has run,
    # Dovecot keeps modseqs on in the mailbox's index and reports
    # HIGHESTMODSEQ to every later SELECT, on any connection.)
    logout(c)


# ---------------------------------------------------------------------------
# g. legitimate literals

def fetch_body(c, uid, tag):
    untagged, tagged = c.cmd(tag, "UID FETCH %d BODY.PEEK[]" % uid)
    assert tagged.startswith(tag.encode() + b" OK"), tagged
    bodies = []
    for r in untagged:
        mo = re.search(rb"BODY\[\] \{(\d+)\}\r\n", r)
        if mo:
            start = mo.end()
            bodies.append(r[start:start + int(mo.group(1))])
    assert len(bodies) == 1, untagged
    return bodies[0]


def appenduid(tagged):
    mo = re.search(rb"\[APPENDUID \d+ (\d+)\]", tagged)
    assert mo, tagged
    return int(mo.group(1))


def test_append_literals_byte_exact_and_in_order(make_mux, idv, cert, ca_ctx):
    user = "ri-append"
    m = start_mux(make_mux, idv, cert)
    c = login(m, ca_ctx, user)
    # Bodies that look like IMAP: commands, literal announcements, a tag.
    body1 = (b"From: x <x@imapmux.test>\r\nSubject: nonsync\r\n\r\n"
             b"z ENABLE QRESYNC\r\nq LOGOUT\r\n{5+}\r\nabc {3}\r\n\x01\x7f\xff\r\n")
    body2 = (b"From: x <x@imapmux.test>\r\nSubject: sync\r\n\r\n"
             b"y SELECT INBOX (CONDSTORE)\r\n* BYE fake\r\n{0}\r\n")
    c.send(b"n1 NOOP\r\nap1 APPEND INBOX {%d+}\r\n%s\r\nn2 NOOP\r\n" % (len(body1), body1))
    order = []
    for tag in ("n1", "ap1", "n2"):
        _, tagged = read_until_tagged_or_fail(c, tag, 5, "pipelined APPEND {n+}")
        assert tagged.startswith(tag.encode() + b" OK"), tagged
        order.append(tag)
        if tag == "ap1":
            uid1 = appenduid(tagged)
    c.send(b"ap2 APPEND INBOX (\\Seen) {%d}\r\n" % len(body2))
    cont = c.readline(5)
    assert cont.startswith(b"+"), cont
    c.send(body2 + b"\r\nn3 NOOP\r\n")
    _, tagged = read_until_tagged_or_fail(c, "ap2", 5, "APPEND {n}")
    assert tagged.startswith(b"ap2 OK"), tagged
    uid2 = appenduid(tagged)
    _, tagged = read_until_tagged_or_fail(c, "n3", 5, "NOOP after APPEND {n}")
    assert tagged.startswith(b"n3 OK"), tagged
    _, tagged = c.cmd("s", "SELECT INBOX")
    assert tagged.startswith(b"s OK"), tagged
    assert fetch_body(c, uid1, "f1") == body1
    assert fetch_body(c, uid2, "f2") == body2
    # Still plain, and QRESYNC was never enabled by a message body.
    assert not any(b"[HIGHESTMODSEQ " in x for x in c.transcript), "a body was run"
    logout(c)


def test_append_trycreate_literal_is_not_run(make_mux, idv, cert, ca_ctx):
    user = "ri-trycreate"
    m = start_mux(make_mux, idv, cert)
    c = login(m, ca_ctx, user)
    body = b"x LOGOUT\r\ny ENABLE QRESYNC\r\n"
    c.send(b"ap APPEND no-such-mailbox {%d+}\r\n%s\r\n" % (len(body), body))
    untagged, tagged = read_until_tagged_or_fail(c, "ap", 5, "APPEND to a missing mailbox")
    assert tagged.startswith(b"ap NO [TRYCREATE]"), tagged
    assert not any(x.startswith(b"* BYE") or x.startswith(b"* ENABLED") for x in untagged), \
        untagged
    _, tagged = c.cmd("n", "NOOP")
    assert tagged.startswith(b"n OK"), ("x LOGOUT was run", tagged)
    assert b"x" not in tags_of(c.transcript) and b"y" not in tags_of(c.transcript), c.transcript
    logout(c)


# ---------------------------------------------------------------------------
# h. tags a server answers untagged, and a DONE line that is not plain

@pytest.mark.parametrize("tag", [b"a*b", b"a{b", b"a+b", b"a\"b"])
def test_invalid_tag_answered_by_proxy(make_mux, idv, cert, ca_ctx, tag):
    """A tag the backend would answer untagged (so no in-flight count could
    follow it) is refused by imapmux: the session stays in step, LOGOUT is
    answered at once and the session is kept and reused."""
    user = "ri-unauth"
    m = start_mux(make_mux, idv, cert)
    c = login(m, ca_ctx, user)
    c.send(tag + b" NOOP\r\nn NOOP\r\n")
    untagged, tagged = read_until_tagged_or_fail(c, "n", 5, "NOOP after a bad tag")
    assert tagged.startswith(b"n OK"), tagged
    assert any(x.startswith(b"* BAD") for x in untagged), untagged
    c2, reused, _ = round_then_reuse(m, ca_ctx, c, user)
    assert reused == 1, "session not kept after a refused bad-tag command"
    logout(c2)


def test_done_line_with_literal_ends_idle_cleanly(make_mux, idv, cert, ca_ctx):
    """While idling, a line other than a plain short DONE (here one with a
    literal) is not passed on: imapmux ends IDLE with its own DONE and drops
    the line, literal included, so the literal's bytes never run as a
    command at the backend."""
    user = "ri-unauth"
    m = start_mux(make_mux, idv, cert)
    c = login(m, ca_ctx, user)
    c.cmd("s", "SELECT INBOX")
    c.send("t IDLE\r\n")
    assert c.readline(5).startswith(b"+")
    c.send(b"DONE {9+}\r\nh NOOP\r\n\r\nn NOOP\r\n")
    untagged, tagged = read_until_tagged_or_fail(c, "n", 5, "NOOP after IDLE")
    assert tagged.startswith(b"n OK"), tagged
    assert not any(x.startswith(b"h ") for x in untagged), untagged
    assert any(x.startswith(b"t OK") for x in untagged), untagged
    logout(c)
