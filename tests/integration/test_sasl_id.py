"""Pre-login ID at the sizes RFC 2971 allows, and the SASL mechanisms
imapmux takes itself (issue #13): AUTHENTICATE PLAIN and LOGIN, with and
without an initial response, cancelled at every step, and UTF-8 user names
and passwords, each through imapmux to the real Dovecot.

RFC 2971 section 3.3: at most 30 field/value pairs, fields of at most 30
octets, values of at most 1,024. Before login every other line part stays
bounded at 8,192 bytes (PREAUTH_MAX_LINE) and every command at 16 KiB."""
import base64
import json
import select

import imapc
from conftest import UTF8_PASSWORD, UTF8_USER, UTF8PW_USER, password, wait_until


def b64(s):
    return base64.b64encode(s.encode() if isinstance(s, str) else s).decode()


def sasl_login(c, user, pw, tag="l"):
    """AUTHENTICATE LOGIN without an initial response: the challenges are
    "Username:" and "Password:" (base64); the tagged answer."""
    c.send(tag.encode() + b" AUTHENTICATE LOGIN\r\n")
    assert c.readline() == b"+ VXNlcm5hbWU6\r\n"
    c.send(b64(user) + "\r\n")
    assert c.readline() == b"+ UGFzc3dvcmQ6\r\n"
    c.send(b64(pw) + "\r\n")
    return c.read_until_tagged(tag)[1]


def id_pairs(n, vlen, value_char="v"):
    """n pairs of 30-octet fields (name and version first) and vlen values."""
    pairs = [("name", "Compliance-Client"), ("version", "9.8.7")]
    for i in range(len(pairs), n):
        pairs.append(("x-field-%022d" % i, (value_char * vlen)[:vlen]))
    return pairs


def quoted_id(pairs):
    return "ID (" + " ".join("%s %s" % (imapc.quote(f), imapc.quote(v)) for f, v in pairs) + ")"


def session_id(m):
    """The "client id" log line's fields (text format: key=value)."""
    line = wait_until(lambda: next((l for l in m.log_text().splitlines()
                                    if "event=client_id" in l), None), 5, "the client id line")
    return line


def test_rfc2971_sized_id_is_answered_and_logged(client_tls, mux):
    """30 pairs, 1,024-octet values, quoted: ~31 KiB on one line, past the
    8 KiB line bound every other command has."""
    c = client_tls()
    c.greeting()
    pairs = id_pairs(30, 1024)
    cmd = quoted_id(pairs)
    assert len(cmd) > 29000
    untagged, tagged = c.cmd("i", cmd)
    assert tagged.startswith(b"i OK"), tagged
    assert untagged[0].startswith(b'* ID ("name" "imapmux"'), untagged
    line = session_id(mux)
    assert 'name=Compliance-Client' in line and "version=9.8.7" in line, line
    # The session goes on: a login works after it.
    c.login("alice", password("alice"))


def test_id_with_escaped_values_near_64k(client_tls):
    """Values of backslashes and quotes double on the wire (RFC 3501
    quoted-specials): 30 such values are ~62 KiB, still taken."""
    c = client_tls()
    c.greeting()
    pairs = id_pairs(30, 1024, value_char='\\"')
    cmd = quoted_id(pairs)
    assert len(cmd) > 56000
    untagged, tagged = c.cmd("i", cmd)
    assert tagged.startswith(b"i OK"), tagged
    # And the next, ordinary, command is bounded as before.
    _, tagged = c.cmd("n", "NOOP")
    assert tagged.startswith(b"n OK"), tagged


def test_id_values_as_literals(client_tls):
    """Values sent as synchronizing literals: a command of ~31 KiB in parts."""
    c = client_tls()
    c.greeting()
    pairs = id_pairs(30, 1024)
    c.send(b"i ID (")
    for k, (f, v) in enumerate(pairs):
        c.send(b"%s%s {%d}\r\n" % (b" " if k else b"", imapc.quote(f).encode(), len(v)))
        assert c.readline().startswith(b"+ "), f
        c.send(v.encode())
    c.send(b")\r\n")
    untagged, tagged = c.read_until_tagged("i")
    assert tagged.startswith(b"i OK"), tagged


def test_id_past_its_bound_and_other_long_lines_are_refused(client_tls):
    """The widening is for ID alone: a 9 KiB NOOP line, or an ID line past
    ~65 KiB, ends the session with a BYE, nothing allocated beyond."""
    c = client_tls()
    c.greeting()
    c.send(b"n NOOP " + b"x" * 9000 + b"\r\n")
    assert c.readline().startswith(b"* BYE line too long"), "9 KiB NOOP"
    assert c.expect_closed(5) == b""
    # As soon as the excess byte is there, without waiting for a line end
    # (or for a whole 4 KiB fragment of the line).
    for n in (8300, 12300):
        c = client_tls()
        c.greeting()
        c.send(b"n NOOP " + b"x" * n)
        assert c.readline(timeout=5).startswith(b"* BYE line too long"), n
        assert c.expect_closed(5) == b""
    c = client_tls()
    c.greeting()
    c.send(b'i ID ("name" "' + b"v" * 70000 + b'")\r\n')
    assert c.readline().startswith(b"* BYE line too long"), "70 KiB ID"
    assert c.expect_closed(5) == b""


def test_id_bad_arguments(client_tls):
    c = client_tls()
    c.greeting()
    _, tagged = c.cmd("a", quoted_id(id_pairs(31, 4)))      # 31 pairs
    assert tagged.startswith(b"a BAD"), tagged
    _, tagged = c.cmd("b", 'ID ("name")')                   # odd count
    assert tagged.startswith(b"b BAD"), tagged
    _, tagged = c.cmd("c", 'ID ("name" "x" "version" NIL)')
    assert tagged.startswith(b"c OK"), tagged


def test_id_log_line_is_printable_and_bounded(client_tls, mux):
    # a literal value with control bytes: the log shows '?' for each
    c = client_tls()
    c.greeting()
    c.send(b'i ID ("version" "1" "name" {8}\r\n')
    assert c.readline().startswith(b"+ ")
    c.send(b"ab\x01\x1b[2Jx)\r\n")
    untagged, tagged = c.read_until_tagged("i")
    assert tagged.startswith(b"i OK"), tagged
    line = session_id(mux)
    assert "\x1b" not in line and "\x01" not in line, line
    assert "ab??[2Jx" in line, line


def test_json_log_carries_client_name(make_mux, ca_ctx):
    m = make_mux(imapmux={"log_format": "json"})
    c = imapc.Client(m.imaps_port, tls=ca_ctx)
    c.greeting()
    _, tagged = c.cmd("i", 'ID ("name" "Thunder \\"bird\\"" "version" "115.3")')
    assert tagged.startswith(b"i OK"), tagged
    c.close()

    def ev():
        for l in m.log_text().splitlines():
            if l.startswith("{"):
                d = json.loads(l)
                if d.get("event") == "client_id":
                    return d
        return None
    d = wait_until(ev, 5, "the client_id JSON line")
    assert d["name"] == 'Thunder "bird"' and d["version"] == "115.3", d


# ---------------------------------------------------------------------------
# SASL

def test_authenticate_login_without_initial_response(client_tls):
    c = client_tls()
    caps = imapc.caps_of(c.greeting())
    assert "AUTH=LOGIN" in caps and "AUTH=PLAIN" in caps, caps
    tagged = sasl_login(c, "alice", password("alice"), "a")
    assert tagged.startswith(b"a OK"), tagged
    _, tagged = c.cmd("s", "SELECT INBOX")
    assert tagged.startswith(b"s OK"), tagged


def test_authenticate_login_with_initial_response_and_wrong_password(client_tls):
    c = client_tls()
    c.greeting()
    c.send("a AUTHENTICATE LOGIN %s\r\n" % b64("bob"))
    assert c.readline() == b"+ UGFzc3dvcmQ6\r\n"
    c.send(b64("not-the-password") + "\r\n")
    _, tagged = c.read_until_tagged("a")
    assert tagged.startswith(b"a NO [AUTHENTICATIONFAILED]"), tagged
    # Then the right one, on the same connection.
    c.send("b AUTHENTICATE LOGIN %s\r\n" % b64("bob"))
    assert c.readline() == b"+ UGFzc3dvcmQ6\r\n"
    c.send(b64(password("bob")) + "\r\n")
    _, tagged = c.read_until_tagged("b")
    assert tagged.startswith(b"b OK"), tagged


def test_sasl_cancel_at_every_step(client_tls):
    """RFC 9051 6.2.2: "*" cancels; the server answers BAD and the session
    stays usable at the login prompt."""
    c = client_tls()
    c.greeting()
    for tag, start, steps in [("p", "AUTHENTICATE PLAIN", 0),
                              ("u", "AUTHENTICATE LOGIN", 0),
                              ("w", "AUTHENTICATE LOGIN", 1),
                              ("i", "AUTHENTICATE LOGIN " + b64("carol"), 0)]:
        c.send("%s %s\r\n" % (tag, start))
        assert c.readline().startswith(b"+"), start
        for _ in range(steps):
            c.send(b64("carol") + "\r\n")
            assert c.readline().startswith(b"+"), start
        c.send(b"*\r\n")
        _, tagged = c.read_until_tagged(tag)
        assert tagged.startswith(tag.encode() + b" BAD"), (start, tagged)
    c.login("carol", password("carol"))


def test_sasl_bad_base64_and_unknown_mechanism(client_tls):
    c = client_tls()
    c.greeting()
    c.send(b"a AUTHENTICATE LOGIN\r\n")
    assert c.readline().startswith(b"+")
    c.send(b"!!!not base64!!!\r\n")
    _, tagged = c.read_until_tagged("a")
    assert tagged.startswith(b"a BAD"), tagged
    _, tagged = c.cmd("b", "AUTHENTICATE CRAM-MD5")
    assert tagged.startswith(b"b NO"), tagged
    c.login("dave", password("dave"))


def test_utf8_user_and_password_every_way(client_tls, dovecot):
    """LOGIN with quoted strings and with literals, AUTHENTICATE PLAIN and
    LOGIN: the UTF-8 name and password reach Dovecot intact (it logs the
    user in under that name)."""
    user, pw = UTF8_USER, UTF8_PASSWORD
    ub, pb = user.encode(), pw.encode()
    ways = {
        "quoted": lambda c: c.cmd("l", "LOGIN %s %s" % (imapc.quote(user), imapc.quote(pw))),
        "literal": None,
        "plain": lambda c: c.cmd("l", "AUTHENTICATE PLAIN " + b64(b"\0" + ub + b"\0" + pb)),
        "login": None,
    }
    for way in ways:
        c = client_tls()
        c.greeting()
        if way == "literal":
            c.send(b"l LOGIN {%d}\r\n" % len(ub))
            assert c.readline().startswith(b"+")
            c.send(ub + b" {%d}\r\n" % len(pb))
            assert c.readline().startswith(b"+")
            c.send(pb + b"\r\n")
            _, tagged = c.read_until_tagged("l")
        elif way == "login":
            tagged = sasl_login(c, ub, pb)
        else:
            _, tagged = ways[way](c)
        assert tagged.startswith(b"l OK"), (way, tagged)
        untagged, tagged = c.cmd("n", "NAMESPACE")
        assert tagged.startswith(b"n OK"), (way, tagged)
        c.close()
    text = dovecot.log_text()
    assert ("user=<%s>" % user) in text, text[-2000:]


def test_utf8_wrong_password_fails(client_tls):
    c = client_tls()
    c.greeting()
    _, tagged = c.cmd("l", "LOGIN %s %s" % (imapc.quote(UTF8_USER), imapc.quote("pässword")))
    assert tagged.startswith(b"l NO [AUTHENTICATIONFAILED]"), tagged


def test_long_ids_at_once_are_bounded_per_worker(make_mux):
    """At most 256 sessions of a worker hold a widened ID buffer at once (16 MiB):
    of 257 clients in the middle of a long ID, exactly one gets a BYE
    [UNAVAILABLE]; once another's ID ends, room is back for a new one."""
    m = make_mux(imapmux={"workers": 1})
    head = b'i ID ("name" "' + b"v" * 21000     # past 16 KiB and one 4 KiB fragment
    clients = []
    try:
        for _ in range(257):
            c = imapc.Client(m.imap_port)
            c.greeting()
            c.send(head)
            clients.append(c)
        ready, _, _ = select.select([c.sock for c in clients], [], [], 10)
        assert len(ready) == 1, "%d clients were answered" % len(ready)
        out = next(c for c in clients if c.sock is ready[0])
        assert out.readline().startswith(b"* BYE [UNAVAILABLE]")
        assert out.expect_closed(5) == b""
        clients.remove(out)
        held = clients[0]
        held.send(b'" "version" "1")\r\n')
        _, tagged = held.read_until_tagged("i")
        assert tagged.startswith(b"i OK"), tagged
        again = imapc.Client(m.imap_port)
        clients.append(again)
        again.greeting()
        again.send(head + b'")\r\n')
        _, tagged = again.read_until_tagged("i")
        assert tagged.startswith(b"i OK"), tagged
    finally:
        for c in clients:
            c.close()


def test_utf8_and_sasl_login_through_to_cyrus(make_mux, cyrus, ca_ctx):
    """The same logins against the second backend kind: Cyrus IMAP takes
    the UTF-8 password and the LOGIN mechanism's result (Cyrus 3.6 refuses
    non-ASCII user names itself, directly too: an ASCII name here)."""
    from conftest import backend_section
    m = make_mux(backends=[("c", backend_section(cyrus))])
    for user, pw in [(UTF8PW_USER, UTF8_PASSWORD), ("alice", password("alice"))]:
        c = imapc.Client(m.imaps_port, tls=ca_ctx)
        c.greeting()
        tagged = sasl_login(c, user, pw)
        assert tagged.startswith(b"l OK"), (user, tagged)
        _, tagged = c.cmd("s", "SELECT INBOX")
        assert tagged.startswith(b"s OK"), (user, tagged)
        c.close()
        c = imapc.Client(m.imaps_port, tls=ca_ctx)
        c.greeting()
        _, tagged = c.cmd("l", "LOGIN %s %s" % (imapc.quote(user), imapc.quote(pw + "x")))
        assert tagged.startswith(b"l NO [AUTHENTICATIONFAILED]"), (user, tagged)
        c.close()
