"""AUTHENTICATE XOAUTH2 and OAUTHBEARER (RFC 7628) with oauth = yes: what
imapmux decides itself, before any backend sees the message (the greeting,
the user a message names, cancel, a backend without the mechanism, the
configuration check). Against Dovecot's own oauth2 passdb: test_oauth_lab.py
(branch oauthtest, next)."""
import base64
import subprocess

import imapc
import lab
from conftest import password


def b64(b):
    return base64.b64encode(b).decode()


XO = b"user=alice\x01auth=Bearer t0ken\x01\x01"
OB = b"n,a=alice,\x01host=127.0.0.1\x01port=993\x01auth=Bearer t0ken\x01\x01"


def test_offered_only_with_oauth_yes(make_mux, ca_ctx):
    for on, want in (("no", False), ("yes", True)):
        m = make_mux(imapmux={"oauth": on})
        c = imapc.Client(m.imaps_port, tls=ca_ctx)
        caps = imapc.caps_of(c.greeting())
        assert ("AUTH=XOAUTH2" in caps and "AUTH=OAUTHBEARER" in caps) == want, (on, caps)
        _, t = c.cmd("a", "AUTHENTICATE XOAUTH2 " + b64(XO))
        assert t.startswith(b"a NO"), t
        if not want:
            assert b"Unsupported" in t, t
        c.close()


def test_a_backend_without_the_mechanism_refuses(make_mux, ca_ctx):
    """The lab's default Dovecot offers PLAIN and LOGIN only: the login fails
    there (AUTHENTICATIONFAILED, logged), and the session goes on."""
    m = make_mux(imapmux={"oauth": "yes", "auth_fail_delay": "0"})
    c = imapc.Client(m.imaps_port, tls=ca_ctx)
    c.greeting()
    for tag, mech, msg in (("a", "XOAUTH2", XO), ("b", "OAUTHBEARER", OB)):
        _, t = c.cmd(tag, "AUTHENTICATE %s %s" % (mech, b64(msg)))
        assert t.startswith(tag.encode() + b" NO [AUTHENTICATIONFAILED]"), t
    assert "backend does not offer the SASL mechanism" in m.log_text()
    assert "t0ken" not in m.log_text() and b64(XO) not in m.log_text()
    c.login("alice", password("alice"))


def test_messages_naming_no_user_and_cancel(make_mux, ca_ctx):
    m = make_mux(imapmux={"oauth": "yes", "auth_fail_delay": "0"})
    c = imapc.Client(m.imaps_port, tls=ca_ctx)
    c.greeting()
    for tag, mech, msg in (("a", "OAUTHBEARER", b"n,,\x01auth=Bearer t\x01\x01"),
                           ("b", "XOAUTH2", b"auth=Bearer t\x01\x01"),
                           ("c", "OAUTHBEARER", b"n,a=bad=escape,\x01auth=Bearer t\x01\x01")):
        _, t = c.cmd(tag, "AUTHENTICATE %s %s" % (mech, b64(msg)))
        assert t.startswith(tag.encode() + b" NO [AUTHENTICATIONFAILED]"), (msg, t)
    assert m.log_text().count("OAuth message names no user") == 3
    # without an initial response: "+ ", then the message or "*"
    for mech in ("XOAUTH2", "OAUTHBEARER"):
        c.send(b"d AUTHENTICATE %s\r\n" % mech.encode())
        assert c.readline() == b"+ \r\n"
        c.send(b"*\r\n")
        _, t = c.read_until_tagged("d")
        assert t.startswith(b"d BAD"), t
    c.send(b"e AUTHENTICATE OAUTHBEARER\r\n")
    assert c.readline() == b"+ \r\n"
    c.send(b"!!\r\n")
    _, t = c.read_until_tagged("e")
    assert t.startswith(b"e BAD"), t
    c.login("alice", password("alice"))


def test_oauth_needs_auth_backend(tmp_path, make_mux):
    path, _, _ = make_mux.conf(imapmux={"oauth": "yes"})
    r = subprocess.run([lab.IMAPMUX, "-t", "-c", path], capture_output=True, text=True,
                       timeout=10)
    assert r.returncode == 0, r.stderr
    with open(path) as f:
        text = f.read()
    bad = tmp_path / "bad.conf"
    bad.write_text(text.replace("[imapmux]\n", "[imapmux]\nauth = redis\n", 1)
                   + "\n[redis]\naddress = 127.0.0.1:1\n")
    r = subprocess.run([lab.IMAPMUX, "-t", "-c", str(bad)], capture_output=True, text=True,
                       timeout=10)
    assert r.returncode != 0 and "oauth = yes needs auth = backend" in r.stderr, r.stderr
