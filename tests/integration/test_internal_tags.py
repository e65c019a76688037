"""imapmux's own tags (imapmux.N) cannot be used by a client.

The commands imapmux sends to a backend itself (the logout reset's UNSELECT,
UNAUTHENTICATE, LOGOUT courtesies...) carry tags `imapmux.N`, and the pump
drops the answers to them. A client using such a tag could make imapmux
take the client's answer for its own, or the other way round, so imapmux
answers such a command itself and never forwards it.
"""

import pytest

import imapc
from conftest import password

TIMEOUT = 5.0


def logged_in(client_tls, user):
    c = client_tls(timeout=TIMEOUT)
    c.greeting()
    _, t = c.cmd("l", "LOGIN %s %s" % (imapc.quote(user), imapc.quote(password(user))))
    assert t.startswith(b"l OK"), t
    return c


@pytest.mark.parametrize("tag", ["imapmux.1", "IMAPMUX.7", "imapmux.", "ImApMuX.x9"])
def test_reserved_tag_refused_and_session_goes_on(client_tls, tag):
    c = logged_in(client_tls, "alice")
    _, t = c.cmd(tag, "SELECT INBOX")
    assert t.rstrip() == tag.encode() + b" BAD Tag reserved by the proxy.", t
    # Not forwarded: nothing got selected, so a FETCH is refused by Dovecot.
    _, t = c.cmd("f", "FETCH 1 FLAGS")
    assert t.startswith(b"f BAD") or t.startswith(b"f NO"), t
    _, t = c.cmd("n", "NOOP")
    assert t.startswith(b"n OK"), t


def test_near_tags_are_forwarded(client_tls):
    c = logged_in(client_tls, "alice")
    for tag in ("imapmux", "imapmu.1", "ximapmux.1"):
        _, t = c.cmd(tag, "NOOP")
        assert t.startswith(tag.encode() + b" OK"), t


def test_logout_reset_answer_never_reaches_the_client(client_tls):
    # LOGOUT with a mailbox selected: imapmux answers it, UNSELECTs on its
    # own tag, and keeps the session; the client sees only its own answers.
    c = logged_in(client_tls, "bob")
    _, t = c.cmd("s", "SELECT INBOX")
    assert t.startswith(b"s OK"), t
    c.send(b"z LOGOUT\r\n")
    got = c.expect_closed(TIMEOUT)
    assert b"imapmux." not in got.lower(), got
    lines = [x for x in got.split(b"\r\n") if x]
    assert lines[-1].startswith(b"z OK"), lines
