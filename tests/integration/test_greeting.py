"""Greeting, capabilities, STARTTLS and the pre-auth commands (SPEC: "IMAP
behaviour")."""

import time

import pytest

import imapc
from conftest import password


def _greeting_caps(c):
    g = c.greeting()
    assert g.startswith(b"* OK [CAPABILITY "), g
    return imapc.caps_of(g)


def _capability(c, tag="c"):
    untagged, tagged = c.cmd(tag, "CAPABILITY")
    assert tagged.startswith(tag.encode() + b" OK"), tagged
    lines = [u for u in untagged if u.upper().startswith(b"* CAPABILITY ")]
    assert len(lines) == 1, untagged
    return imapc.caps_of(lines[0])


def test_implicit_tls_greeting(mux, ca_ctx):
    with imapc.Client(mux.imaps_port, tls=ca_ctx) as c:
        caps = _greeting_caps(c)
        assert {"IMAP4REV1", "AUTH=PLAIN", "SASL-IR"} <= caps, caps
        assert "STARTTLS" not in caps and "LOGINDISABLED" not in caps, caps
        assert _capability(c) == caps


def test_starttls_listener_before_tls(mux):
    with imapc.Client(mux.imap_port) as c:
        caps = _greeting_caps(c)
        assert {"IMAP4REV1", "STARTTLS", "LOGINDISABLED"} <= caps, caps
        assert not [x for x in caps if x.startswith("AUTH=")], caps
        assert _capability(c) == caps


def test_starttls_then_capabilities_and_login(mux, ca_ctx):
    with imapc.Client(mux.imap_port) as c:
        c.greeting()
        _, tagged = c.cmd("s", "STARTTLS")
        assert tagged.startswith(b"s OK"), tagged
        c.starttls(ca_ctx)
        caps = _capability(c)
        assert "STARTTLS" not in caps and "LOGINDISABLED" not in caps, caps
        assert {"AUTH=PLAIN", "IMAP4REV1"} <= caps, caps
        c.login("alice", password("alice"))
        _, tagged = c.cmd("x", "SELECT INBOX")
        assert tagged.startswith(b"x OK"), tagged


def test_starttls_twice_is_refused(mux, ca_ctx):
    with imapc.Client(mux.imap_port) as c:
        c.greeting()
        c.cmd("s", "STARTTLS")
        c.starttls(ca_ctx)
        _, tagged = c.cmd("t", "STARTTLS")
        assert imapc.status_of(tagged) in ("BAD", "NO"), tagged
        _, tagged = c.cmd("n", "NOOP")
        assert tagged.startswith(b"n OK")


def test_starttls_on_implicit_listener_is_refused(mux, ca_ctx):
    with imapc.Client(mux.imaps_port, tls=ca_ctx) as c:
        c.greeting()
        _, tagged = c.cmd("s", "STARTTLS")
        assert imapc.status_of(tagged) in ("BAD", "NO"), tagged


def test_login_refused_before_starttls(mux, ca_ctx):
    with imapc.Client(mux.imap_port) as c:
        c.greeting()
        _, tagged = c.cmd("l", "LOGIN alice %s" % password("alice"))
        assert imapc.status_of(tagged) in ("NO", "BAD"), tagged
        _, tagged = c.cmd("a", "AUTHENTICATE PLAIN " + imapc.plain_ir("alice", password("alice")))
        assert imapc.status_of(tagged) in ("NO", "BAD"), tagged
        # The same connection can still upgrade and log in.
        _, tagged = c.cmd("s", "STARTTLS")
        assert tagged.startswith(b"s OK"), tagged
        c.starttls(ca_ctx)
        c.login("alice", password("alice"))


def test_plaintext_auth_allowed(make_mux):
    m = make_mux(plaintext_auth=True)
    with imapc.Client(m.imap_port) as c:
        caps = _greeting_caps(c)
        assert "LOGINDISABLED" not in caps, caps
        assert "STARTTLS" in caps, caps
        c.login("bob", password("bob"))
        _, tagged = c.cmd("x", "SELECT INBOX")
        assert tagged.startswith(b"x OK"), tagged


def test_starttls_command_injection(mux, ca_ctx):
    """Bytes pipelined after STARTTLS in plaintext must be discarded, never
    executed inside the TLS session (CVE-2011-0411 class)."""
    with imapc.Client(mux.imap_port) as c:
        c.greeting()
        c.send(b"a STARTTLS\r\nb CAPABILITY\r\n")
        untagged, tagged = c.read_until_tagged("a")
        assert tagged.startswith(b"a OK"), tagged
        assert not untagged, untagged
        c.starttls(ca_ctx)  # fails if a plaintext answer to b followed the OK
        c.send(b"c NOOP\r\n")
        untagged, tagged = c.read_until_tagged("c")
        assert tagged.startswith(b"c OK"), tagged
        assert not [r for r in untagged if r.startswith(b"b ")], untagged
        assert not [r for r in untagged if r.upper().startswith(b"* CAPABILITY")], untagged
        # Nothing for b even later.
        c.send(b"d NOOP\r\n")
        untagged, tagged = c.read_until_tagged("d")
        assert not [r for r in untagged if r.startswith(b"b ")], untagged


# ---------------------------------------------------------------------------
# pre-auth commands

def test_preauth_noop_and_capability(client_tls):
    c = client_tls()
    c.greeting()
    untagged, tagged = c.cmd("n1", "NOOP")
    assert tagged.startswith(b"n1 OK") and not untagged, (untagged, tagged)
    untagged, tagged = c.cmd("c1", "capability")  # command names are case-insensitive
    assert tagged.startswith(b"c1 OK") and imapc.caps_of(untagged[0]), (untagged, tagged)


def test_preauth_id(client_tls):
    c = client_tls()
    c.greeting()
    untagged, tagged = c.cmd("i", 'ID ("name" "imapmux-tests" "version" "1")')
    assert tagged.startswith(b"i OK"), tagged
    assert len(untagged) == 1 and (untagged[0].startswith(b"* ID (")
                                   or untagged[0] == b"* ID NIL\r\n"), untagged
    untagged, tagged = c.cmd("j", "ID NIL")
    assert tagged.startswith(b"j OK") and untagged[0].startswith(b"* ID "), (untagged, tagged)


def test_preauth_logout(client_tls):
    c = client_tls()
    c.greeting()
    untagged, tagged = c.cmd("o", "LOGOUT")
    assert [u[:6] for u in untagged] == [b"* BYE "], untagged
    assert tagged.startswith(b"o OK"), tagged
    assert c.expect_closed(5) == b""


def test_preauth_unknown_command(client_tls):
    c = client_tls()
    c.greeting()
    _, tagged = c.cmd("u", "XYZZY foo bar")
    assert tagged.startswith(b"u BAD"), tagged
    _, tagged = c.cmd("n", "NOOP")
    assert tagged.startswith(b"n OK"), tagged


@pytest.mark.parametrize("command", ["SELECT INBOX", "FETCH 1:* FLAGS", "IDLE", "ENABLE QRESYNC",
                                     "LIST \"\" *", "UNAUTHENTICATE"])
def test_preauth_commands_needing_login(client_tls, command):
    c = client_tls()
    c.greeting()
    untagged, tagged = c.cmd("s", command)
    assert imapc.status_of(tagged) in ("BAD", "NO"), tagged
    assert not [u for u in untagged if not u.startswith(b"* ")], untagged
    _, tagged = c.cmd("n", "NOOP")
    assert tagged.startswith(b"n OK"), tagged


def test_preauth_garbage_lines(client_tls):
    """Lines that are not commands get BAD (untagged or with a tag) and the
    connection stays usable."""
    c = client_tls()
    c.greeting()
    for junk in (b"onlytag\r\n", b"\x01\x02 \x03\r\n"):
        c.send(junk)
        r = c.read_response()
        assert b"BAD" in r.split(b" ", 2)[:2] or r.startswith(b"* BAD"), (junk, r)
    _, tagged = c.cmd("n", "NOOP")
    assert tagged.startswith(b"n OK"), tagged


def test_preauth_split_writes(client_tls):
    """A command delivered one byte at a time is still one command."""
    c = client_tls()
    c.greeting()
    for ch in b"n1 NOOP\r\n":
        c.send(bytes([ch]))
        time.sleep(0.005)
    _, tagged = c.read_until_tagged("n1")
    assert tagged.startswith(b"n1 OK"), tagged
