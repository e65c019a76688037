"""OAuth 2.0 bearer-token logins (issue #13, the SASL part): XOAUTH2 and
OAUTHBEARER (RFC 7628) at a real Dovecot 2.3 whose `passdb { driver = oauth2 }`
checks each token at the introspection endpoint of conftest_oauth (nothing
of Dovecot's is mocked: the endpoint only says which tokens are active), first
directly, then through imapmux with `oauth = yes`.

What Dovecot 2.3.19 sends, byte for byte (the proxy relays or handles these):

  greeting / CAPABILITY   ... AUTH=PLAIN AUTH=LOGIN AUTH=XOAUTH2 AUTH=OAUTHBEARER
  good token (either)     `TAG OK ... Logged in`, the post-login capabilities
                          either as a `* CAPABILITY` line before it or as a
                          `[CAPABILITY ...]` code in it (both seen); the tests
                          only rely on `TAG OK`
  XOAUTH2, refused        `+ eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiYmVhcmVyIiwic2NvcGUiOiJtYWlsIn0=`
                          = base64 of {"status":"401","schemes":"bearer","scope":"mail"};
                          the client must answer (an empty line), then
                          `TAG NO [AUTHENTICATIONFAILED] Authentication failed.`
  OAUTHBEARER, refused    `+ eyJzdGF0dXMiOiJpbnZhbGlkX3Rva2VuIn0=`
                          = base64 of {"status":"invalid_token"} (no schemes or
                          scope, unlike RFC 7628's example); the client answers
                          "AQ==" (base64 of %x01), then the same tagged NO
  no initial response     `+ ` (plus, space, CRLF: an empty challenge), then the
                          client's base64 message on a line of its own
  `*` on a `+` line       `TAG BAD Authentication aborted by client.`
  no user / malformed     `TAG NO [AUTHENTICATIONFAILED] Authentication failed.`
                          at once (no challenge, the endpoint is not asked)

The token is refused the same way whether the endpoint does not know it
(401 {"active": false}) or knows it for another user (Dovecot compares the
user in the message with the endpoint's "username"; a mismatch fails).
"""

import base64
import json
import os
import uuid

import pytest

import imapc
from conftest import backend_section, dovecot_login_line, password

pytest.register_assert_rewrite("conftest_oauth")
from conftest_oauth import OAUTH_TOKENS, oauthbearer_ir, xoauth2_ir  # noqa: E402

# The fixtures oauth_server and oauth_dovecot.
pytest_plugins = ["conftest_oauth"]

ALICE_TOKEN = "tok-alice-Vq81"
BOB_TOKEN = "tok-bob-Wd27"
SASL_TOKEN = "tok-sasl-Xe55"
assert OAUTH_TOKENS[ALICE_TOKEN] == "alice" and OAUTH_TOKENS[BOB_TOKEN] == "bob"

XOAUTH2_FAILURE = b"+ eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiYmVhcmVyIiwic2NvcGUiOiJtYWlsIn0=\r\n"
OAUTHBEARER_FAILURE = b"+ eyJzdGF0dXMiOiJpbnZhbGlkX3Rva2VuIn0=\r\n"
AUTH_FAILED = b"NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"


def challenge_json(line):
    assert line.startswith(b"+ ") and line.endswith(b"\r\n"), line
    return json.loads(base64.b64decode(line[2:-2]))


@pytest.fixture
def direct(oauth_dovecot):
    """Plain-TCP clients straight to the oauth Dovecot (greeting read)."""
    clients = []

    def make():
        c = imapc.Client(oauth_dovecot.port, timeout=8)
        clients.append(c)
        c.greeting()
        return c
    yield make
    for c in clients:
        c.close()


# ---------------------------------------------------------------------------
# directly at Dovecot

def test_capability_lists_both_mechanisms(oauth_dovecot):
    with imapc.Client(oauth_dovecot.port, timeout=8) as c:
        caps = imapc.caps_of(c.greeting())
        assert {"AUTH=XOAUTH2", "AUTH=OAUTHBEARER", "AUTH=PLAIN", "SASL-IR"} <= caps, caps
        untagged, tagged = c.cmd("c", "CAPABILITY")
        assert tagged.startswith(b"c OK")
        assert {"AUTH=XOAUTH2", "AUTH=OAUTHBEARER"} <= imapc.caps_of(untagged[0])


def test_xoauth2_good_token_is_alices_session(direct, oauth_dovecot, oauth_server):
    since = len(oauth_dovecot.log_text())
    before = oauth_server.count()
    c = direct()
    _, t = c.cmd("a", "AUTHENTICATE XOAUTH2 " + xoauth2_ir("alice", ALICE_TOKEN))
    assert t.startswith(b"a OK") and t.endswith(b"Logged in\r\n"), t
    # Dovecot itself asked the endpoint about exactly this token.
    assert oauth_server.count() == before + 1
    assert oauth_server.asked[-1] == ALICE_TOKEN
    line = dovecot_login_line(oauth_dovecot, "alice", since)
    assert "method=XOAUTH2" in line, line
    # The session is alice's: a message appended in it lands in her maildir.
    mid = "<oauth-%s@imapmux.test>" % uuid.uuid4().hex
    msg = ("Message-ID: %s\r\nSubject: oauth\r\n\r\nbody\r\n" % mid).encode()
    c.send(b"p APPEND INBOX {%d+}\r\n" % len(msg) + msg + b"\r\n")
    _, t = c.read_until_tagged("p")
    assert t.startswith(b"p OK"), t
    new = os.path.join(oauth_dovecot.mail_root, "alice", "Maildir", "new")
    assert any(mid.encode() in open(os.path.join(new, f), "rb").read()
               for f in os.listdir(new))
    _, t = c.cmd("s", "SELECT INBOX")
    assert t.startswith(b"s OK"), t


def test_xoauth2_bad_token_challenge_then_no(direct, oauth_server):
    before = oauth_server.count()
    c = direct()
    c.cmd_send("b", "AUTHENTICATE XOAUTH2 " + xoauth2_ir("alice", "no-such-token"))
    line = c.readline()
    assert line == XOAUTH2_FAILURE
    assert challenge_json(line) == {"status": "401", "schemes": "bearer", "scope": "mail"}
    assert oauth_server.count() == before + 1
    c.send(b"\r\n")                       # the dummy response RFC 7628 asks for
    _, t = c.read_until_tagged("b")
    assert t == b"b " + AUTH_FAILED
    # The connection is still usable: another try with a good token works.
    _, t = c.cmd("g", "AUTHENTICATE XOAUTH2 " + xoauth2_ir("alice", ALICE_TOKEN))
    assert t.startswith(b"g OK"), t


def test_xoauth2_token_of_another_user_refused(direct):
    c = direct()
    c.cmd_send("b", "AUTHENTICATE XOAUTH2 " + xoauth2_ir("alice", BOB_TOKEN))
    assert c.readline() == XOAUTH2_FAILURE
    c.send(b"\r\n")
    assert c.read_until_tagged("b")[1] == b"b " + AUTH_FAILED


def test_xoauth2_without_initial_response(direct):
    c = direct()
    c.send(b"a AUTHENTICATE XOAUTH2\r\n")
    assert c.readline() == b"+ \r\n"
    c.send(xoauth2_ir("alice", ALICE_TOKEN) + "\r\n")
    _, t = c.read_until_tagged("a")
    assert t.startswith(b"a OK"), t


def test_oauthbearer_good_token(direct, oauth_dovecot, oauth_server):
    since = len(oauth_dovecot.log_text())
    c = direct()
    _, t = c.cmd("o", "AUTHENTICATE OAUTHBEARER " + oauthbearer_ir("alice", ALICE_TOKEN))
    assert t.startswith(b"o OK"), t
    assert oauth_server.asked[-1] == ALICE_TOKEN
    assert "method=OAUTHBEARER" in dovecot_login_line(oauth_dovecot, "alice", since)
    _, t = c.cmd("s", "SELECT INBOX")
    assert t.startswith(b"s OK"), t


def test_oauthbearer_bad_token_challenge_then_no(direct, oauth_server):
    before = oauth_server.count()
    c = direct()
    c.cmd_send("o", "AUTHENTICATE OAUTHBEARER " + oauthbearer_ir("alice", "no-such-token"))
    line = c.readline()
    assert line == OAUTHBEARER_FAILURE
    assert challenge_json(line) == {"status": "invalid_token"}
    assert oauth_server.count() == before + 1
    c.send(b"AQ==\r\n")                   # base64 of %x01 (RFC 7628 section 3.2.3)
    assert c.read_until_tagged("o")[1] == b"o " + AUTH_FAILED


def test_oauthbearer_without_initial_response(direct):
    c = direct()
    c.send(b"o AUTHENTICATE OAUTHBEARER\r\n")
    assert c.readline() == b"+ \r\n"
    c.send(oauthbearer_ir("bob", BOB_TOKEN) + "\r\n")
    _, t = c.read_until_tagged("o")
    assert t.startswith(b"o OK"), t


def test_malformed_messages_fail_at_once(direct, oauth_server):
    # No user (OAUTHBEARER's GS2 header without a=, "n,,") or no
    # user=/auth= fields at all: Dovecot answers the tagged NO straight away,
    # with no error challenge, and never asks the endpoint (its log says
    # "Missing username or token" / "Username or token missing").
    before = oauth_server.count()
    c = direct()
    c.cmd_send("n", "AUTHENTICATE OAUTHBEARER " + oauthbearer_ir(None, ALICE_TOKEN))
    assert c.readline() == b"n " + AUTH_FAILED
    c.cmd_send("m", "AUTHENTICATE XOAUTH2 " + imapc.b64("garbage"))
    assert c.readline() == b"m " + AUTH_FAILED
    assert oauth_server.count() == before


def test_cancel_on_continuation_is_bad(direct):
    c = direct()
    c.send(b"x AUTHENTICATE XOAUTH2\r\n")
    assert c.readline() == b"+ \r\n"
    c.send(b"*\r\n")
    _, t = c.read_until_tagged("x")
    assert t == b"x BAD Authentication aborted by client.\r\n"


def test_plain_login_still_works_and_token_is_no_password(direct, oauth_server):
    c = direct()
    assert c.login("alice", password("alice")).startswith(b"L1 OK")
    before = oauth_server.count()
    c2 = direct()
    # A token as a LOGIN password: only the passwd-file passdb sees it (the
    # oauth2 one is for XOAUTH2/OAUTHBEARER only), and it does not match.
    _, t = c2.cmd("l", "LOGIN alice %s" % ALICE_TOKEN)
    assert imapc.status_of(t) == "NO", t
    assert oauth_server.count() == before


# ---------------------------------------------------------------------------
# through imapmux (oauth = yes, auth = backend): what the lead is building



@pytest.fixture
def oauth_mux(make_mux, oauth_dovecot):
    return make_mux(imapmux={"workers": 1, "auth": "backend", "oauth": "yes",
                             "auth_fail_delay": 0},
                    backends=[("a", backend_section(oauth_dovecot))])


@pytest.fixture
def via(oauth_mux, ca_ctx):
    """Implicit-TLS clients to oauth_mux; returns (client, greeting)."""
    clients = []

    def make():
        c = imapc.Client(oauth_mux.imaps_port, tls=ca_ctx, timeout=8)
        clients.append(c)
        return c, c.greeting()
    yield make
    for c in clients:
        c.close()


def test_mux_greeting_lists_oauth_mechanisms(via):
    c, g = via()
    caps = imapc.caps_of(g)
    assert {"AUTH=XOAUTH2", "AUTH=OAUTHBEARER", "AUTH=PLAIN", "SASL-IR"} <= caps, caps
    untagged, t = c.cmd("c", "CAPABILITY")
    assert t.startswith(b"c OK")
    assert {"AUTH=XOAUTH2", "AUTH=OAUTHBEARER"} <= imapc.caps_of(untagged[0])


def test_mux_xoauth2_good_token_then_select(via, oauth_dovecot, oauth_server):
    since = len(oauth_dovecot.log_text())
    c, _ = via()
    _, t = c.cmd("a", "AUTHENTICATE XOAUTH2 " + xoauth2_ir("alice", ALICE_TOKEN))
    assert t.startswith(b"a OK"), t
    # The backend (Dovecot) checked the token, not imapmux.
    assert oauth_server.asked[-1] == ALICE_TOKEN
    assert "method=XOAUTH2" in dovecot_login_line(oauth_dovecot, "alice", since)
    _, t = c.cmd("s", "SELECT INBOX")
    assert t.startswith(b"s OK"), t


def test_mux_xoauth2_bad_token_is_no(via, oauth_server):
    before = oauth_server.count()
    c, _ = via()
    c.cmd_send("b", "AUTHENTICATE XOAUTH2 " + xoauth2_ir("alice", "no-such-token"))
    # imapmux answers Dovecot's error challenge itself: the client sees no
    # '+' line, only the tagged NO.
    line = c.readline()
    assert line.startswith(b"b NO [AUTHENTICATIONFAILED]"), line
    assert oauth_server.count() >= before + 1
    # Still not logged in; a good token afterwards works.
    _, t = c.cmd("g", "AUTHENTICATE XOAUTH2 " + xoauth2_ir("alice", ALICE_TOKEN))
    assert t.startswith(b"g OK"), t


def test_mux_oauthbearer_good_token_then_select(via, oauth_dovecot):
    since = len(oauth_dovecot.log_text())
    c, _ = via()
    _, t = c.cmd("o", "AUTHENTICATE OAUTHBEARER " + oauthbearer_ir("bob", BOB_TOKEN))
    assert t.startswith(b"o OK"), t
    assert "method=OAUTHBEARER" in dovecot_login_line(oauth_dovecot, "bob", since)
    _, t = c.cmd("s", "SELECT INBOX")
    assert t.startswith(b"s OK"), t


def test_mux_oauthbearer_bad_token_is_no(via):
    c, _ = via()
    c.cmd_send("o", "AUTHENTICATE OAUTHBEARER " + oauthbearer_ir("bob", ALICE_TOKEN))
    line = c.readline()
    assert line.startswith(b"o NO [AUTHENTICATIONFAILED]"), line


def test_mux_xoauth2_without_initial_response(via):
    c, _ = via()
    c.send(b"a AUTHENTICATE XOAUTH2\r\n")
    line = c.readline()
    assert line in (b"+ \r\n", b"+\r\n"), line
    c.send(xoauth2_ir("sasl", SASL_TOKEN) + "\r\n")
    _, t = c.read_until_tagged("a")
    assert t.startswith(b"a OK"), t
    _, t = c.cmd("s", "SELECT INBOX")
    assert t.startswith(b"s OK"), t


def test_mux_oauthbearer_without_user_is_no(via, oauth_server):
    # No a= in the GS2 header: imapmux has no user to route by.
    c, _ = via()
    _, t = c.cmd("o", "AUTHENTICATE OAUTHBEARER " + oauthbearer_ir(None, ALICE_TOKEN))
    assert imapc.status_of(t) == "NO", t
    # ... and not for want of the mechanism: with a= the same session logs in.
    _, t = c.cmd("g", "AUTHENTICATE OAUTHBEARER " + oauthbearer_ir("alice", ALICE_TOKEN))
    assert t.startswith(b"g OK"), t


def test_mux_cancel_is_bad(via):
    c, _ = via()
    c.send(b"x AUTHENTICATE XOAUTH2\r\n")
    line = c.readline()
    assert line.startswith(b"+"), line
    c.send(b"*\r\n")
    _, t = c.read_until_tagged("x")
    assert imapc.status_of(t) == "BAD", t
    # The session goes on: a good token afterwards works.
    _, t = c.cmd("g", "AUTHENTICATE XOAUTH2 " + xoauth2_ir("alice", ALICE_TOKEN))
    assert t.startswith(b"g OK"), t
