"""IMAP extensions carried through imapmux (issue #13), against a real
Dovecot 2.3 and a real Cyrus IMAP 3.6: every group that makes sense on both
runs on both (the `server` fixture), and checks the effect on the store
with a client straight on the backend, or compares with what the backend
answers directly.

- ENABLE state: a reused backend session never carries ENABLEd state (or
  a CONDSTORE switched on by SELECT ... (CONDSTORE)) to a login that did
  not ask for it, and a parked CONDSTORE session's kept backend is not
  handed to a fresh login, while its own wake gets MODSEQ.
- Capabilities and ENABLE answers as the backend gives them; IMAP4rev2 and
  UTF8=ACCEPT where offered (neither Dovecot 2.3.19 nor Cyrus 3.6.1 offers
  them: those tests skip and say what the backend listed).
- Literals: {n+} passes (single and MULTIAPPEND); LITERAL- (a Dovecot with
  imap_literal_minus = yes): {n+} up to 4096 bytes passes, above it the
  proxy answers `tag BAD [TOOBIG]` itself (RFC 7888 section 4; the backend
  only ever sees a synchronizing {n}, so it could not) and skips the
  literal, where Dovecot itself would send `* BYE [TOOBIG]` and close.
- Binary literals (RFC 3516): APPEND ~{n+} with a NUL, FETCH BINARY[1]
  answered ~{n} with NULs, Cyrus's BODY[] as ~{n}: byte for byte what the
  backend answers directly, and the stream stays in step.
- MOVE, SPECIAL-USE (LIST RETURN (SPECIAL-USE); CREATE ... (USE ...) on
  Cyrus, which offers CREATE-SPECIAL-USE), METADATA (SETMETADATA with a
  literal value; Dovecot with imap_metadata), MULTIAPPEND, CATENATE, NOTIFY
  (Dovecot only: Cyrus 3.6 has none): passed through, effect seen directly.

Literals inside response codes (`NO [BADCHARSET ({5}...)]`) are covered by
tests/unit/test_imap_tok.c: neither backend sends one (Dovecot answers `NO
[BADCHARSET] Unknown charset`, Cyrus `BAD Unrecognized character set`).
"""

import re
import time

import pytest

import imapc
import lab
from conftest import MASTER_PASSWORD, USERS, backend_section, password, scrape_metrics

pytest.register_assert_rewrite("parklib")
from parklib import (announce, append, data, direct, metric, ok, park_idle,  # noqa: E402
                     reset_inbox, wait_parked)
from parklib import mux as park_mux  # noqa: E402

pytest_plugins = ["conftest_redis"]

TIMEOUT = 10.0

# METADATA needs an attribute dictionary; SPECIAL-USE needs special_use
# mailboxes; the lab's Dovecot has neither by default.
DOVECOT_EXT_CONF = r"""
mail_attribute_dict = file:%h/dovecot-attributes
protocol imap {
  imap_metadata = yes
}
namespace inbox {
  inbox = yes
  mailbox Sent {
    special_use = \Sent
    auto = create
  }
}
"""

# What imapmux never shows a logged-in client (common/caps.c).
HIDDEN = {"STARTTLS", "LOGINDISABLED", "SASL-IR", "UNAUTHENTICATE"}
HIDDEN_PREFIXES = ("AUTH=", "COMPRESS=")


@pytest.fixture(scope="module")
def dv():
    d = lab.Dovecot(USERS, master_password=MASTER_PASSWORD, name="dovecot-ext",
                    extra_conf=DOVECOT_EXT_CONF)
    d.start()
    yield d
    d.cleanup()


@pytest.fixture(params=["dovecot", "cyrus"])
def server(request):
    """The backend of the test: the module's Dovecot or the module's Cyrus
    (server.kind says which)."""
    s = request.getfixturevalue("dv" if request.param == "dovecot" else "cyrus")
    s.kind = request.param
    return s


def start(make_mux, server, **bk):
    """imapmux in front of server (one worker, /metrics on m.stats_port)."""
    stats_port = lab.free_port()
    kv = backend_section(server, check_interval=0, pool_min_idle=0)
    kv.update(bk)
    m = make_mux(backends=[("a", kv)],
                 imapmux={"workers": 1, "log_level": "debug",
                          "stats_listen": "127.0.0.1:%d" % stats_port})
    lab.wait_listening(stats_port, timeout=10, proc=m.proc)
    m.stats_port = stats_port
    return m


def login(m, ca_ctx, user, tag="l"):
    """A TLS client through imapmux, logged in; (client, its capabilities)."""
    c = imapc.Client(m.imaps_port, tls=ca_ctx, timeout=TIMEOUT)
    c.greeting()
    _, t = c.cmd(tag, "LOGIN %s %s" % (imapc.quote(user), imapc.quote(password(user))))
    assert t.startswith(tag.encode() + b" OK [CAPABILITY "), t
    return c, imapc.caps_of(t)


def direct_caps(server, user):
    """(client straight on server, its post-login capabilities)."""
    c = imapc.Client(server.port, timeout=TIMEOUT)
    c.greeting()
    _, t = c.cmd("l", "LOGIN %s %s" % (imapc.quote(user), imapc.quote(password(user))))
    assert t.startswith(b"l OK"), t
    caps = imapc.caps_of(t)
    if caps is None:
        caps = imapc.caps_of(ok(c, "c", "CAPABILITY")[0])
    return c, caps


def logout(c):
    c.send(b"z LOGOUT\r\n")
    got = c.expect_closed(5)
    assert got.startswith(b"* BYE ") and b"\r\nz OK " in got, got
    c.close()
    return got


def counts(m):
    s = scrape_metrics(m.stats_port)
    return s["imapmux_sessions_reused_total"], s["imapmux_backend_logins_total"]


def fetch_has_modseq(c, tag="f"):
    """Does a flag change (set, then cleared) on message 1 come back with
    MODSEQ? RFC 7162 3.2: yes once CONDSTORE is on, never before (a plain
    FETCH FLAGS would not tell: Dovecot adds MODSEQ only to unsolicited
    FETCH responses)."""
    untagged = ok(c, tag, "STORE 1 +FLAGS (\\Flagged)") + ok(c, tag + "-",
                                                           "STORE 1 -FLAGS (\\Flagged)")
    fetches = [u for u in untagged if b" FETCH " in u]
    assert len(fetches) == 2, untagged
    return any(b"MODSEQ" in u for u in fetches)


def body_of(c, seq, tag="b"):
    """The BODY[] literal of message seq (bytes), from c's selected mailbox."""
    r = b"".join(ok(c, tag, "FETCH %d (BODY.PEEK[])" % seq))
    m = re.search(rb"BODY\[\] ~?\{(\d+)\}\r\n", r)
    assert m, r
    return r[m.end():m.end() + int(m.group(1))]


def mailbox(d, name):
    """Make sure mailbox name exists and is empty (d: a direct client)."""
    if not [u for u in ok(d, "li", 'LIST "" %s' % name) if name.encode() in u]:
        ok(d, "cr", "CREATE %s" % name)
    n = int(re.search(rb"\* (\d+) EXISTS", b"".join(ok(d, "sx", "SELECT " + name))).group(1))
    if n:
        ok(d, "dl", "STORE 1:* +FLAGS.SILENT (\\Deleted)")
        ok(d, "ex", "EXPUNGE")
    ok(d, "us", "UNSELECT")


def send_append(c, tag, parts, nonsync=True, mailbox_name="INBOX"):
    """APPEND with one literal per message in parts (MULTIAPPEND when more
    than one); {n+} when nonsync, else {n} waiting for each "+"."""
    plus = b"+" if nonsync else b""
    head = b"%s APPEND %s" % (tag.encode(), mailbox_name.encode())
    for i, body in enumerate(parts):
        c.send(head + b" {%d%s}\r\n" % (len(body), plus))
        if not nonsync:
            assert c.readline().startswith(b"+"), "no continuation"
        c.send(body)
        head = b""
    c.send(b"\r\n")
    return c.read_until_tagged(tag)


# ---------------------------------------------------------------------------
# capabilities, ENABLE, IMAP4rev2


def test_capabilities_and_enable_answers_match_the_backend(make_mux, server, ca_ctx):
    """The client's capabilities are the backend's less what imapmux never
    carries, and ENABLE of every extension this issue names is answered as
    the backend answers it (what is not offered is not ENABLED)."""
    user = "alice"
    m = start(make_mux, server)
    d, dcaps = direct_caps(server, user)
    c, caps = login(m, ca_ctx, user)
    # plus imapmux's own COMPRESS=DEFLATE (compress = yes; test_compress.py)
    want = {x for x in dcaps if x not in HIDDEN and not x.startswith(HIDDEN_PREFIXES)}
    want.add("COMPRESS=DEFLATE")
    assert caps == want, (sorted(caps ^ want))
    assert {"ENABLE", "CONDSTORE", "QRESYNC", "MOVE", "MULTIAPPEND", "CATENATE",
            "BINARY", "UNSELECT"} <= caps, caps
    cmd = "ENABLE CONDSTORE QRESYNC UTF8=ACCEPT IMAP4rev2"
    got, want = c.cmd("e", cmd), d.cmd("e", cmd)
    assert got[0] == want[0] and imapc.status_of(got[1]) == imapc.status_of(want[1]), \
        (got, want)
    enabled = set(b" ".join(got[0]).split()[2:])
    assert {b"CONDSTORE", b"QRESYNC"} <= enabled, got
    for ext in (b"UTF8=ACCEPT", b"IMAP4rev2"):
        assert (ext in enabled) == (ext.decode().upper() in caps), (ext, got, caps)
    print("%s offers IMAP4rev2: %s, UTF8=ACCEPT: %s" % (server.kind, "IMAP4REV2" in caps,
                                                         "UTF8=ACCEPT" in caps))
    logout(c)
    d.close()


@pytest.mark.parametrize("ext", ["IMAP4rev2", "UTF8=ACCEPT"])
def test_enable_of_what_the_backend_may_offer(make_mux, server, ca_ctx, ext):
    """Where the backend offers IMAP4rev2 (RFC 9051) or UTF8=ACCEPT (RFC
    6855), a client ENABLEs it through imapmux and gets the backend's
    behaviour; such a session is never reused after LOGOUT."""
    user = "bob"
    m = start(make_mux, server)
    c, caps = login(m, ca_ctx, user)
    if ext.upper() not in caps:
        logout(c)
        pytest.skip("%s does not offer %s after login (it lists: %s)"
                    % (server.kind, ext, " ".join(sorted(caps))))
    untagged = ok(c, "e", "ENABLE " + ext)
    assert untagged == [b"* ENABLED %s\r\n" % ext.encode()], untagged
    if ext == "IMAP4rev2":
        # RFC 9051: no RECENT, and ESEARCH answers a SEARCH.
        sel = ok(c, "s", "SELECT INBOX")
        assert not any(u.endswith(b" RECENT\r\n") for u in sel), sel
        res = ok(c, "q", "SEARCH ALL")
        assert any(u.startswith(b"* ESEARCH") for u in res), res
    else:
        name = "Caf\u00e9"
        _, t = c.cmd("c", 'CREATE "%s"' % name)
        assert imapc.status_of(t) in ("OK", "NO"), t
        lst = b"".join(ok(c, "li", 'LIST "" "%s"' % name))
        assert name.encode() in lst, lst
    logout(c)
    before = counts(m)
    c, _ = login(m, ca_ctx, user)
    assert counts(m)[0] == before[0], "a session that ENABLEd %s was reused" % ext
    logout(c)


# ---------------------------------------------------------------------------
# ENABLE state and kept sessions


def test_reused_session_never_carries_enabled_state(make_mux, server, ca_ctx):
    """Reuse works (control), but after ENABLE CONDSTORE, or CONDSTORE
    switched on by SELECT ... (CONDSTORE), the next login gets a backend
    session of its own: its FETCH shows no MODSEQ."""
    user = "carol"
    d = reset_inbox(server, user, ["m1"])
    d.close()
    m = start(make_mux, server, reuse_ttl=300, unauthenticate="no")
    c, _ = login(m, ca_ctx, user)
    ok(c, "s", "SELECT INBOX")
    assert not fetch_has_modseq(c)
    assert logout(c) == b"* BYE Logging out\r\nz OK Logout completed.\r\n"
    c, _ = login(m, ca_ctx, user)
    assert counts(m) == (1, 1), "the control: an untainted session is reused"
    assert ok(c, "e", "ENABLE CONDSTORE") == [b"* ENABLED CONDSTORE\r\n"]
    ok(c, "s", "SELECT INBOX")
    assert fetch_has_modseq(c)
    logout(c)
    for i, how in enumerate(["ENABLE", "SELECT"]):
        c, _ = login(m, ca_ctx, user)
        assert counts(m) == (1, 2 + i), "reused after CONDSTORE was switched on (%s)" % how
        ok(c, "s", "SELECT INBOX")
        assert not fetch_has_modseq(c), "CONDSTORE inherited"
        if how == "ENABLE":
            ok(c, "s2", "SELECT INBOX (CONDSTORE)")
            assert fetch_has_modseq(c, "f2")
        logout(c)


def test_parked_condstore_session_kept_apart_from_fresh_logins(make_mux, server, redis, prefix,
                                                              ca_ctx):
    """A CONDSTORE client parks (its backend session kept under a key of its
    ENABLE state): a fresh login of the same user and password does not get
    that session (no reuse, no MODSEQ), while the parked client's wake tells
    MODSEQ, and after it its backend session is a CONDSTORE one."""
    user = "dave"
    d = reset_inbox(server, user, ["m1"])
    m = park_mux(make_mux, server, redis, prefix, "events")
    cs, _ = park_idle(m, ca_ctx, user, enable="CONDSTORE")
    wait_parked(m, 1)
    reused = metric(m, "imapmux_sessions_reused_total")
    fresh, _ = login(m, ca_ctx, user, tag="l2")
    assert metric(m, "imapmux_sessions_reused_total") == reused, \
        "a fresh login took the parked CONDSTORE session's backend"
    ok(fresh, "s", "SELECT INBOX")
    assert not fetch_has_modseq(fresh)
    logout(fresh)
    ok(d, "fl", "STORE 1 +FLAGS.SILENT (\\Flagged)")
    ms = int(re.search(rb"MODSEQ \((\d+)\)", b"".join(ok(d, "ms", "FETCH 1 (MODSEQ)"))).group(1))
    announce(redis, prefix, "events", user)
    line = data(cs)
    while line.startswith(b"* OK [HIGHESTMODSEQ"):
        line = data(cs)
    assert line == b"* 1 FETCH (MODSEQ (%d) FLAGS (\\Flagged))\r\n" % ms, line
    cs.send(b"DONE\r\n")
    untagged, t = cs.read_until_tagged("i")
    assert t == b"i OK Idle completed.\r\n", (untagged, t)
    got = b"".join(ok(cs, "g", "STORE 1 -FLAGS (\\Flagged)"))
    assert b"MODSEQ" in got, got          # RFC 7162 3.2: CONDSTORE is on
    logout(cs)
    d.close()


# ---------------------------------------------------------------------------
# literals


def test_nonsync_literals_and_multiappend(make_mux, server, ca_ctx):
    """{n+} in APPEND and in a MULTIAPPEND of three (mixed with a
    synchronizing one) reach the store byte for byte."""
    user = "erin"
    d = reset_inbox(server, user, [])
    m = start(make_mux, server)
    c, caps = login(m, ca_ctx, user)
    assert "LITERAL+" in caps and "MULTIAPPEND" in caps, caps
    bodies = [b"Subject: lit %d\r\n\r\n%s\r\n" % (i, b"x" * (100 * i + 7)) for i in range(4)]
    _, t = send_append(c, "a1", bodies[:1])
    assert t.startswith(b"a1 OK"), t
    _, t = send_append(c, "a2", bodies[1:3])
    assert t.startswith(b"a2 OK"), t
    _, t = send_append(c, "a3", bodies[3:], nonsync=False)
    assert t.startswith(b"a3 OK"), t
    ok(c, "n", "NOOP")
    n = int(re.search(rb"\* (\d+) EXISTS", b"".join(ok(d, "s", "SELECT INBOX"))).group(1))
    assert n == 4
    assert [body_of(d, i + 1, "b%d" % i) for i in range(4)] == bodies
    logout(c)
    d.close()


@pytest.fixture(scope="module")
def dv_literal_minus():
    d = lab.Dovecot(USERS, master_password=MASTER_PASSWORD, name="dovecot-litminus",
                    extra_conf="imap_literal_minus = yes\n")
    d.start()
    yield d
    d.cleanup()


def test_literal_minus_limit(make_mux, dv_literal_minus, ca_ctx):
    """A backend offering LITERAL- only: {n+} of 4096 bytes passes; one of
    4097 gets `BAD [TOOBIG]` from imapmux, its bytes are skipped and the
    session goes on, nothing stored. (Dovecot itself closes: `* BYE
    [TOOBIG]`; imapmux answers the tagged BAD RFC 7888 section 4 asks for,
    which it can since it knows where the literal ends.) A synchronizing
    literal of any size still works."""
    server, user = dv_literal_minus, "frank"
    d, dcaps = direct_caps(server, user)
    assert "LITERAL-" in dcaps and "LITERAL+" not in dcaps, dcaps
    big = b"Subject: big\r\n\r\n" + b"y" * (5000 - 16)
    d.send(b"x APPEND INBOX {%d+}\r\n" % len(big) + big + b"\r\n")
    direct_answer = d.expect_closed(5)
    assert direct_answer.startswith(b"* BYE [TOOBIG]"), direct_answer
    d.close()

    d = reset_inbox(server, user, [])
    m = start(make_mux, server)
    c, caps = login(m, ca_ctx, user)
    assert "LITERAL-" in caps and "LITERAL+" not in caps, caps
    fit = b"Subject: fit\r\n\r\n" + b"f" * (4096 - 18) + b"\r\n"
    assert len(fit) == 4096
    _, t = send_append(c, "a1", [fit])
    assert t.startswith(b"a1 OK"), t
    over = fit + b"!"
    untagged, t = send_append(c, "a2", [over])
    assert (untagged, t) == ([], b"a2 BAD [TOOBIG] Non-synchronizing literal too large.\r\n")
    # The same in a MULTIAPPEND's first literal, with a second after it.
    c.send(b"a3 APPEND INBOX {%d+}\r\n" % len(big) + big + b" {3+}\r\nabc\r\n")
    untagged, t = c.read_until_tagged("a3")
    assert t.startswith(b"a3 BAD [TOOBIG]"), (untagged, t)
    _, t = send_append(c, "a4", [big], nonsync=False)
    assert t.startswith(b"a4 OK"), t
    # Past the first line part the backend holds the command already: the
    # {n+} stays the {n} imapmux makes of it, and the backend takes it as
    # it takes any synchronizing literal (README "IMAP extensions").
    c.send(b"a5 APPEND INBOX {3+}\r\nabc {%d+}\r\n" % len(big) + big + b"\r\n")
    _, t = c.read_until_tagged("a5")
    assert t.startswith(b"a5 OK"), t
    ok(c, "n", "NOOP")
    n = int(re.search(rb"\* (\d+) EXISTS", b"".join(ok(d, "s", "SELECT INBOX"))).group(1))
    assert n == 4
    assert [body_of(d, i + 1, "b%d" % i) for i in range(4)] == [fit, big, b"abc", big]
    logout(c)
    d.close()


@pytest.fixture(scope="module")
def dv_no_literal():
    d = lab.Dovecot(USERS, master_password=MASTER_PASSWORD, name="dovecot-nolit",
                    extra_conf="imap_capability = IMAP4rev1 ID ENABLE IDLE UNSELECT "
                               "MULTIAPPEND\n")
    d.start()
    yield d
    d.cleanup()


def test_no_nonsync_literals_offered(make_mux, dv_no_literal, ca_ctx):
    """A backend listing neither LITERAL+ nor LITERAL- (Dovecot with its
    capability list set: it would still take {3+} directly, unannounced):
    imapmux goes by what is offered, answers `BAD` and skips the literal,
    which an RFC 3501 server would read as commands. Synchronizing
    literals pass."""
    server, user = dv_no_literal, "frank"
    d = reset_inbox(server, user, [])
    m = start(make_mux, server)
    c, caps = login(m, ca_ctx, user)
    assert not {"LITERAL+", "LITERAL-"} & caps, caps
    untagged, t = send_append(c, "a1", [b"abc"])
    assert (untagged, t) == (
        [], b"a1 BAD Non-synchronizing literals are not supported by this server.\r\n")
    _, t = send_append(c, "a2", [b"Subject: s\r\n\r\nx\r\n"] * 2, nonsync=False)
    assert t.startswith(b"a2 OK"), t
    ok(c, "n", "NOOP")
    n = int(re.search(rb"\* (\d+) EXISTS", b"".join(ok(d, "s", "SELECT INBOX"))).group(1))
    assert n == 2
    logout(c)
    d.close()


def test_binary_literals_both_ways(make_mux, server, ca_ctx):
    """APPEND ~{n+} with a NUL (RFC 3516) is stored as the backend stores it
    directly; FETCH BINARY[1] (~{7} with NULs) and BODY[] come to the client
    byte for byte as the backend sends them directly, and the stream is in
    step after each."""
    user = "grace"
    d = reset_inbox(server, user, [])
    m = start(make_mux, server)
    c, caps = login(m, ca_ctx, user)
    assert "BINARY" in caps, caps
    b64msg = (b"Subject: bin\r\nMIME-Version: 1.0\r\nContent-Type: application/octet-stream"
              b"\r\nContent-Transfer-Encoding: base64\r\n\r\nAAECAwAA/w==\r\n")
    raw = b"Subject: raw\r\n\r\nA\x00B\r\n"
    _, t = send_append(c, "a1", [b64msg])
    assert t.startswith(b"a1 OK"), t
    c.send(b"a2 APPEND INBOX ~{%d+}\r\n" % len(raw) + raw + b"\r\n")
    _, t = c.read_until_tagged("a2")
    assert t.startswith(b"a2 OK"), t
    # The same raw message appended directly, for comparison.
    d.send(b"a3 APPEND INBOX ~{%d+}\r\n" % len(raw) + raw + b"\r\n")
    _, t = d.read_until_tagged("a3")
    assert t.startswith(b"a3 OK"), t
    ok(c, "s", "EXAMINE INBOX")
    ok(d, "s", "EXAMINE INBOX")
    for i, cmd in enumerate(["FETCH 1 (BINARY.PEEK[1] BINARY.SIZE[1])", "FETCH 2 (BODY.PEEK[])",
                             "FETCH 3 (BODY.PEEK[])", "FETCH 1:3 (BINARY.PEEK[1])"]):
        got, want = c.cmd("f%d" % i, cmd), d.cmd("f%d" % i, cmd)
        assert got[0] == want[0], (cmd, got, want)
        assert imapc.status_of(got[1]) == imapc.status_of(want[1]) == "OK", (got, want)
    first = ok(c, "g", "FETCH 1 (BINARY.PEEK[1])")
    assert b"BINARY[1] ~{7}\r\n\x00\x01\x02\x03\x00\x00\xff)" in b"".join(first), first
    if server.kind == "cyrus":
        # Cyrus keeps the NUL and sends BODY[] as a binary literal.
        got = b"".join(ok(c, "h", "FETCH 2 BODY.PEEK[]"))
        assert b"BODY[] ~{%d}\r\n%s)" % (len(raw), raw) in got, got
    ok(c, "n", "NOOP")
    logout(c)
    d.close()


# ---------------------------------------------------------------------------
# pass-through extensions, their effect checked on the store


def test_move(make_mux, server, ca_ctx):
    user = "heidi"
    d = reset_inbox(server, user, ["keep", "move"])
    mailbox(d, "Dest")
    m = start(make_mux, server)
    c, caps = login(m, ca_ctx, user)
    assert "MOVE" in caps
    ok(c, "s", "SELECT INBOX")
    untagged = ok(c, "m", "MOVE 2 Dest")
    assert any(b"COPYUID" in u for u in untagged), untagged
    assert b"* 2 EXPUNGE\r\n" in untagged, untagged
    ok(d, "s1", "EXAMINE INBOX")
    assert b"Subject: keep" in body_of(d, 1)
    n = int(re.search(rb"\* (\d+) EXISTS", b"".join(ok(d, "s2", "EXAMINE Dest"))).group(1))
    assert n == 1 and b"Subject: move" in body_of(d, 1, "b3")
    n = int(re.search(rb"\* (\d+) EXISTS", b"".join(ok(d, "s3", "EXAMINE INBOX"))).group(1))
    assert n == 1
    logout(c)
    d.close()


def test_special_use(make_mux, server, ca_ctx):
    """LIST RETURN (SPECIAL-USE) and LIST (SPECIAL-USE) through imapmux
    answer what they answer directly; on Cyrus (CREATE-SPECIAL-USE), CREATE
    ... (USE (\\Archive)) through imapmux gives the mailbox its use."""
    user = "ivan"
    m = start(make_mux, server)
    c, caps = login(m, ca_ctx, user)
    d, _ = direct_caps(server, user)
    assert "SPECIAL-USE" in caps, caps
    if "CREATE-SPECIAL-USE" in caps:
        name = "Arch%d" % (time.monotonic_ns() % 100000)
        ok(c, "c", "CREATE %s (USE (\\Archive))" % name)
        lst = ok(d, "l0", 'LIST (SPECIAL-USE) "" "*"')
        assert any(u.endswith(b" %s\r\n" % name.encode()) and b"\\Archive" in u
                   for u in lst), lst
    for cmd in ['LIST "" "*" RETURN (SPECIAL-USE)', 'LIST (SPECIAL-USE) "" "*"']:
        got, want = c.cmd("l", cmd), d.cmd("l", cmd)
        assert sorted(got[0]) == sorted(want[0]) and got[1][:5] == want[1][:5], (got, want)
        assert any(b"\\Sent" in u or b"\\Archive" in u for u in got[0]), got
    logout(c)
    d.close()


def test_metadata(make_mux, server, ca_ctx):
    """SETMETADATA through imapmux, the value a literal ({n+}) with a CRLF
    in it: GETMETADATA directly returns it; GETMETADATA through imapmux
    answers as directly (the value comes back as a literal)."""
    user = "judy"
    m = start(make_mux, server)
    c, caps = login(m, ca_ctx, user)
    assert "METADATA" in caps, caps
    value = b"first line\r\nsecond %d" % time.monotonic_ns()
    c.send(b"sm SETMETADATA INBOX (/private/comment {%d+}\r\n" % len(value) + value + b")\r\n")
    _, t = c.read_until_tagged("sm")
    assert t.startswith(b"sm OK"), t
    d, _ = direct_caps(server, user)
    got = b"".join(ok(d, "g", "GETMETADATA INBOX /private/comment"))
    assert value in got, got
    cmd = "GETMETADATA INBOX (/private/comment /private/nothing)"
    assert c.cmd("g2", cmd)[0] == d.cmd("g2", cmd)[0]
    ok(c, "n", "NOOP")
    logout(c)
    d.close()


def test_catenate(make_mux, server, ca_ctx):
    """APPEND ... CATENATE (URL ... TEXT {n+}) through imapmux: the stored
    message is the first one's header and the new text."""
    user = "viewer"
    d = reset_inbox(server, user, ["source"])
    st = b"".join(ok(d, "st", "STATUS INBOX (UIDVALIDITY)"))
    uidvalidity = int(re.search(rb"UIDVALIDITY (\d+)", st).group(1))
    uid = int(re.search(rb"UID (\d+)", b"".join(ok(d, "u", "FETCH 1 (UID)"))).group(1))
    header = b"".join(ok(d, "h", "FETCH 1 (BODY.PEEK[HEADER])"))
    header = header[header.index(b"}\r\n") + 3:header.rindex(b")")]
    m = start(make_mux, server)
    c, caps = login(m, ca_ctx, user)
    assert "CATENATE" in caps, caps
    text = b"catenated text %d\r\n" % time.monotonic_ns()
    c.send(b'ca APPEND INBOX CATENATE (URL "/INBOX;UIDVALIDITY=%d/;UID=%d/;SECTION=HEADER" '
           b'TEXT {%d+}\r\n' % (uidvalidity, uid, len(text)) + text + b")\r\n")
    _, t = c.read_until_tagged("ca")
    assert t.startswith(b"ca OK"), t
    ok(d, "s2", "SELECT INBOX")
    assert body_of(d, 2) == header + text
    logout(c)
    d.close()


def test_notify(make_mux, server, ca_ctx):
    """NOTIFY (RFC 5465) through imapmux: mail delivered to another mailbox
    reaches the client as `* STATUS`; such a session is not reused."""
    user = "viewer2"
    m = start(make_mux, server)
    c, caps = login(m, ca_ctx, user)
    if "NOTIFY" not in caps:
        logout(c)
        pytest.skip("%s offers no NOTIFY (Cyrus 3.6 has none)" % server.kind)
    d = direct(server, user)
    mailbox(d, "Other")
    ok(c, "s", "SELECT INBOX")
    ok(c, "no", "NOTIFY SET (selected (MessageNew MessageExpunge)) "
                "(personal (MessageNew MessageExpunge))")
    append(d, "ap", "notified", "Other")
    line = data(c)
    assert line.startswith(b"* STATUS Other ("), line
    ok(c, "n", "NOOP")
    logout(c)
    before = counts(m)
    c, _ = login(m, ca_ctx, user)
    assert counts(m)[0] == before[0], "a session with NOTIFY was reused"
    logout(c)
    d.close()
