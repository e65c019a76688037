"""Long backend capability lists (review finding).

Dovecot with `imap_capability = +...` appends words to its capability lists
(pre- and post-login; it takes lists of tens of KiB), and puts the post-login
list in its LOGIN's tagged OK and its CAPABILITY answer. imapmux passes the
list on, less what it does not carry (STARTTLS, LOGINDISABLED, SASL-IR,
UNAUTHENTICATE, AUTH=*, COMPRESS=*: common/caps.h). Before the fix:

  - the client's login OK was cut at about 1 KiB (a 1,024-byte reply
    buffer), without its closing "]", in the middle of a word;
  - the list was kept in 2 KiB, so a longer one lost its tail;
  - a `* CAPABILITY` answer over 4 KiB reaches imapmux in fragments and was
    not filtered at all: STARTTLS, AUTH=PLAIN, COMPRESS=DEFLATE, ... reached
    the client.

After it: the whole list up to 8,192 bytes (the proxy's documented maximum),
filtered, in the login OK and in `* CAPABILITY`; a longer one makes the
login fail cleanly with NO [UNAVAILABLE].

Each test has a Dovecot of its own, started with the list it needs, plain
IMAP only: Dovecot 2.3.19 cannot greet over implicit TLS with a greeting of
more than about 4 KiB (its login process drops the connection during the
handshake, "TLS handshaking: Broken pipe"), and the pre-login list is in
the greeting too.
"""

import re

import pytest

import imapc
import lab
from conftest import MASTER_PASSWORD, USERS, backend_section, password

TIMEOUT = 8.0
HIDDEN = ["STARTTLS", "AUTH=PLAIN", "COMPRESS=DEFLATE", "UNAUTHENTICATE", "LOGINDISABLED"]


def hidden(cap):
    cap = cap.upper()
    return (cap in ("STARTTLS", "LOGINDISABLED", "SASL-IR", "UNAUTHENTICATE")
            or cap.startswith("AUTH=") or cap.startswith("COMPRESS="))


def xwords(nbytes, tag="XLONG"):
    """Capability words of about nbytes in all (with their spaces)."""
    words, n, i = [], 0, 0
    while n < nbytes:
        w = "%s%05d" % (tag, i)
        words.append(w)
        n += len(w) + 1
        i += 1
    return words


@pytest.fixture
def caps_dovecot(request):
    started = []

    def start(words):
        d = lab.Dovecot(USERS, master_password=MASTER_PASSWORD, name="dovecot-caps",
                        extra_conf="imap_capability = +%s\n" % " ".join(words))
        started.append(d)
        d.start()
        return d
    yield start
    rep = getattr(request.node, "rep_call", None)
    for d in started:
        if rep is None or rep.failed:
            print(d.log_tail_text(20))
        d.cleanup()


def start_mux(make_mux, dv):
    bk = backend_section(dv, tls="none", check_interval=0, reuse_ttl=0)
    # compress = no: the lists are exactly the backend's, filtered (imapmux's own
    # COMPRESS=DEFLATE is test_compress.py's)
    return make_mux(backends=[("a", bk)],
                    imapmux={"workers": 1, "auth_fail_delay": 0, "compress": "no"})


def direct_caps(dv, user):
    """Dovecot's own post-login list for user: (login OK's words, the
    `* CAPABILITY` line's length)."""
    with imapc.Client(dv.port, timeout=TIMEOUT) as c:
        c.greeting()
        _, t = c.cmd("l", "LOGIN %s %s" % (user, imapc.quote(password(user))))
        assert t.startswith(b"l OK [CAPABILITY "), t[:200]
        untagged, t2 = c.cmd("c", "CAPABILITY")
        assert t2.startswith(b"c OK"), t2
        lines = [x for x in untagged if x.startswith(b"* CAPABILITY ")]
        assert len(lines) == 1, untagged
        return t.decode().split("[CAPABILITY ", 1)[1].split("]", 1)[0].split(), len(lines[0])


def login_through(m, ca_ctx, user):
    c = imapc.Client(m.imaps_port, tls=ca_ctx, timeout=TIMEOUT)
    c.greeting()
    _, t = c.cmd("l", "LOGIN %s %s" % (user, imapc.quote(password(user))))
    return c, t


LOGIN_OK = re.compile(rb"^l OK \[CAPABILITY ([^\]\r\n]*)\] [^\r\n]*\S[^\r\n]*\r\n$")


def ok_words(tagged):
    mo = LOGIN_OK.match(tagged)
    assert mo, ("login OK without its whole [CAPABILITY ...] and text after it: %d bytes, "
                "ends %r" % (len(tagged), tagged[-120:]))
    return mo.group(1).decode().split()


def test_1651_byte_list_whole_in_the_login_ok(make_mux, caps_dovecot, ca_ctx):
    base = 430    # about Dovecot's own post-login list
    dv = caps_dovecot(xwords(1651 - base))
    user = "alice"
    backend_words, _ = direct_caps(dv, user)
    listed = len(" ".join(backend_words))
    assert 1500 <= listed <= 1800, listed
    m = start_mux(make_mux, dv)
    c, tagged = login_through(m, ca_ctx, user)
    try:
        words = ok_words(tagged)
        want = [w for w in backend_words if not hidden(w)]
        assert words == want, ("login OK list differs from Dovecot's filtered list",
                               sorted(set(want) - set(words))[:10],
                               sorted(set(words) - set(want))[:10])
    finally:
        c.close()


def six_kib_list(caps_dovecot, user):
    """A Dovecot whose post-login list is about 6,000 bytes with the hidden
    words in it three times (a third in, two thirds in, at the end); returns
    (Dovecot, the words the client must see)."""
    xs = xwords(6000)
    third = len(xs) // 3
    dv = caps_dovecot(xs[:third] + HIDDEN + xs[third:2 * third] + HIDDEN + xs[2 * third:]
                      + HIDDEN)
    backend_words, cap_line_len = direct_caps(dv, user)
    assert cap_line_len > 4096, cap_line_len
    for h in HIDDEN:
        assert h in backend_words, (h, "Dovecot did not take the list as given")
    want = [w for w in backend_words if not hidden(w)]
    assert set(xs) <= set(want)
    return dv, want


def test_6000_byte_list_filtered_in_the_login_ok(make_mux, caps_dovecot, ca_ctx):
    user = "bob"
    dv, want = six_kib_list(caps_dovecot, user)
    m = start_mux(make_mux, dv)
    c, tagged = login_through(m, ca_ctx, user)
    try:
        got = ok_words(tagged)
        leaked = sorted(set(w.upper() for w in got) & set(HIDDEN))
        assert not leaked, ("hidden capabilities in the login OK", leaked)
        missing = [w for w in want if w not in got]
        assert not missing, ("%d words missing from the login OK" % len(missing),
                             missing[:5], missing[-5:])
    finally:
        c.close()


def test_6000_byte_list_filtered_in_capability_answer(make_mux, caps_dovecot, ca_ctx):
    user = "dave"
    dv, want = six_kib_list(caps_dovecot, user)
    m = start_mux(make_mux, dv)
    c, tagged = login_through(m, ca_ctx, user)
    try:
        assert tagged.startswith(b"l OK"), tagged[:200]
        untagged, t = c.cmd("c", "CAPABILITY")
        assert t.startswith(b"c OK"), t
        lines = [x for x in untagged if x.startswith(b"* CAPABILITY ")]
        assert len(lines) == 1, [x[:100] for x in untagged]
        line = lines[0]
        assert line.endswith(b"\r\n") and b"\r\n" not in line[:-2], line[-100:]
        cap_words = line[len(b"* CAPABILITY "):-2].decode().split()
        leaked = sorted(set(w.upper() for w in cap_words) & set(HIDDEN))
        assert not leaked, ("hidden capabilities in * CAPABILITY (%d bytes, which imapmux "
                            "forwards in fragments)" % len(line), leaked)
        missing = [w for w in want if w not in cap_words]
        assert not missing, ("%d words missing from * CAPABILITY" % len(missing),
                             missing[:5], missing[-5:])
        # The session goes on.
        _, t = c.cmd("s", "SELECT INBOX")
        assert t.startswith(b"s OK"), t
    finally:
        c.close()


def test_list_over_8192_bytes_fails_the_login_cleanly(make_mux, caps_dovecot, ca_ctx):
    dv = caps_dovecot(xwords(9000))
    user = "carol"
    backend_words, _ = direct_caps(dv, user)
    assert len(" ".join(backend_words)) > 8192
    m = start_mux(make_mux, dv)
    c, tagged = login_through(m, ca_ctx, user)
    try:
        assert tagged.startswith(b"l NO [UNAVAILABLE]"), (
            "login with a %d-byte capability list: %r"
            % (len(" ".join(backend_words)), tagged[:200]))
    finally:
        c.close()
    # imapmux is up and answers the next client.
    assert m.alive()
    c = imapc.Client(m.imaps_port, tls=ca_ctx, timeout=TIMEOUT)
    try:
        c.greeting()
        _, t = c.cmd("n", "NOOP")
        assert t.startswith(b"n OK"), t
        _, t = c.cmd("l2", "LOGIN %s %s" % (user, imapc.quote(password(user))))
        assert t.startswith(b"l2 NO [UNAVAILABLE]"), t[:200]
    finally:
        c.close()
    assert m.alive()
