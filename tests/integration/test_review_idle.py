"""IDLE and DONE in one write (review finding).

A client that sends `t IDLE\\r\\nDONE\\r\\n` before reading anything (the
continuation request has not come yet) must still get its `+` and `t OK`,
and the session must go on normally: DONE ends IDLE, it is not a command
of its own. Before the fix imapmux counted DONE as a command in flight that
never gets an answer, so the next LOGOUT (which imapmux answers once every
earlier command is answered) hung until a timeout (about 30 s).

Every read here has a deadline of a few seconds, so the test fails fast.
"""

import pytest

import imapc
from conftest import password

TIMEOUT = 3.0


def logged_in(client_tls, user):
    c = client_tls(timeout=TIMEOUT)
    c.greeting()
    _, t = c.cmd("l", "LOGIN %s %s" % (imapc.quote(user), imapc.quote(password(user))))
    assert t.startswith(b"l OK"), t
    return c


def read_tagged(c, tag, what):
    try:
        return c.read_until_tagged(tag, timeout=TIMEOUT)
    except (imapc.Timeout, imapc.Closed) as e:
        pytest.fail("%s: no `%s` answer within %.0f s: %s" % (what, tag, TIMEOUT, e),
                    pytrace=False)


def logout_within(c, seconds=TIMEOUT):
    c.send(b"u LOGOUT\r\n")
    try:
        got = c.expect_closed(seconds)
    except imapc.Timeout as e:
        pytest.fail("LOGOUT not answered and closed within %.0f s: %s" % (seconds, e),
                    pytrace=False)
    lines = got.split(b"\r\n")
    assert any(x.startswith(b"* BYE") for x in lines), got
    assert any(x.startswith(b"u OK") for x in lines), got


@pytest.mark.parametrize("selected", [False, True], ids=["authenticated", "selected"])
def test_idle_done_in_one_write_then_logout(client_tls, selected):
    c = logged_in(client_tls, "idler")
    if selected:
        _, t = c.cmd("s", "SELECT INBOX")
        assert t.startswith(b"s OK"), t
    c.send(b"t IDLE\r\nDONE\r\n")
    untagged, tagged = read_tagged(c, "t", "IDLE + DONE in one write")
    assert tagged.startswith(b"t OK"), tagged
    assert any(x.startswith(b"+") for x in untagged), untagged
    logout_within(c)


def test_idle_done_noop_in_one_write_then_logout(client_tls):
    c = logged_in(client_tls, "idler2")
    c.send(b"t IDLE\r\nDONE\r\nv NOOP\r\n")
    untagged, tagged = read_tagged(c, "t", "IDLE + DONE + NOOP in one write")
    assert tagged.startswith(b"t OK"), tagged
    assert any(x.startswith(b"+") for x in untagged), untagged
    _, tagged = read_tagged(c, "v", "NOOP after IDLE + DONE")
    assert tagged.startswith(b"v OK"), tagged
    # A command after that is answered as usual.
    _, tagged = c.cmd("w", "NOOP", timeout=TIMEOUT)
    assert tagged.startswith(b"w OK"), tagged
    logout_within(c)
