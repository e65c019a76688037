"""A logged-in session through imapmux: pipelining, IDLE, real clients (curl)."""

import imaplib
import subprocess
import time

import pytest

import imapc
from conftest import password

KINDS = [b"NOOP", b"SELECT INBOX", b"FETCH 1:* FLAGS", b"UID SEARCH ALL"]
NCMDS = 50
PIPELINE = b"".join(b"p%02d %s\r\n" % (i, KINDS[i % len(KINDS)]) for i in range(NCMDS))


def check_pipeline_order(client, timeout=20):
    """Read the completions of PIPELINE (sent in one write): all 50 tags
    exactly once, all OK, and each SELECT a barrier (every earlier command
    completed before it, every later one after it). Returns the tag order."""
    deadline = time.monotonic() + timeout
    order = []
    status = {}
    while len(order) < NCMDS:
        r = client.read_response(max(0.01, deadline - time.monotonic()))
        if r.startswith(b"p"):
            tag = r.split(b" ", 1)[0]
            n = int(tag[1:])
            assert n not in status, "tag %r completed twice: %r" % (tag, r)
            status[n] = r
            order.append(n)
        else:
            assert r.startswith(b"* "), "unexpected line in pipelined output: %r" % r
    bad = {n: r for n, r in status.items() if imapc.status_of(r) != "OK"}
    assert not bad, "pipelined commands failed: %r" % bad
    assert sorted(order) == list(range(NCMDS))
    pos = {n: i for i, n in enumerate(order)}
    for k in range(NCMDS):
        if KINDS[k % len(KINDS)] == b"SELECT INBOX":
            assert all(pos[j] < pos[k] for j in range(k)), "SELECT p%02d overtaken: %r" % (k, order)
            assert all(pos[j] > pos[k] for j in range(k + 1, NCMDS)), \
                "command completed before the SELECT p%02d preceding it: %r" % (k, order)
    return order


def test_pipelined_50_commands(mux, dovecot, ca_ctx):
    for i in range(3):
        dovecot.append("piper", b"Subject: pipe %d\r\n\r\nbody %d\r\n" % (i, i))
    with imapc.Client(mux.imaps_port, tls=ca_ctx) as c:
        c.greeting()
        c.login("piper", password("piper"))
        c.send(PIPELINE)
        check_pipeline_order(c)
        # and the session is still in step afterwards
        _, tagged = c.cmd("z", "NOOP")
        assert tagged.startswith(b"z OK")


def test_pipelined_login_and_commands(mux, dovecot, ca_ctx):
    """LOGIN and the first commands after it in one write: nothing is lost
    while the proxy attaches the backend."""
    dovecot.append("pipe2", b"Subject: pipelined\r\n\r\nbody\r\n")
    with imapc.Client(mux.imaps_port, tls=ca_ctx) as c:
        c.greeting()
        c.send(b"l LOGIN pipe2 %s\r\ns SELECT INBOX\r\nf FETCH 1 (FLAGS)\r\nn NOOP\r\n"
               % password("pipe2").encode())
        for tag in ("l", "s", "f", "n"):
            _, tagged = c.read_until_tagged(tag)
            assert imapc.status_of(tagged) == "OK", tagged


def _exists_count(untagged):
    for r in untagged:
        parts = r.split()
        if len(parts) == 3 and parts[2].upper() == b"EXISTS":
            return int(parts[1])
    return None


@pytest.mark.parametrize("via", ["direct", "proxy"])
def test_idle_sees_new_message(mux, dovecot, ca_ctx, via):
    user = "idler"
    with imapc.Client(mux.imaps_port, tls=ca_ctx) as a:
        a.greeting()
        a.login(user, password(user))
        untagged, tagged = a.cmd("s", "SELECT INBOX")
        assert tagged.startswith(b"s OK"), tagged
        n = _exists_count(untagged)
        assert n is not None, untagged
        a.cmd_send("t", "IDLE")
        cont = a.readline()
        assert cont.startswith(b"+"), cont
        msg = b"Subject: for IDLE\r\n\r\nnew mail\r\n"
        if via == "direct":
            dovecot.append(user, msg)
        else:
            b = imaplib.IMAP4_SSL("127.0.0.1", mux.imaps_port, ssl_context=ca_ctx, timeout=10)
            try:
                b.login(user, password(user))
                assert b.append("INBOX", None, None, msg)[0] == "OK"
            finally:
                b.logout()
        want = b"* %d EXISTS\r\n" % (n + 1)
        deadline = time.monotonic() + 5
        seen = []
        while want not in seen:
            seen.append(a.readline(max(0.01, deadline - time.monotonic())))
        a.send(b"DONE\r\n")
        _, tagged = a.read_until_tagged("t")
        assert tagged.startswith(b"t OK"), tagged
        _, tagged = a.cmd("u", "NOOP")
        assert tagged.startswith(b"u OK")


def test_select_counts_match_backend(mux, dovecot, ca_ctx):
    for i in range(2):
        dovecot.append("carol", b"Subject: c%d\r\n\r\nx\r\n" % i)
    direct = dovecot.imap("carol")
    try:
        typ, data = direct.select("INBOX", readonly=True)
        n_direct = int(data[0])
    finally:
        direct.logout()
    c = imaplib.IMAP4_SSL("127.0.0.1", mux.imaps_port, ssl_context=ca_ctx, timeout=10)
    try:
        c.login("carol", password("carol"))
        typ, data = c.select("INBOX", readonly=True)
        assert typ == "OK" and int(data[0]) == n_direct
        typ, data = c.uid("SEARCH", "ALL")
        assert typ == "OK" and len(data[0].split()) == n_direct
    finally:
        c.logout()


def test_capabilities_after_login_are_filtered(mux, ca_ctx):
    """CAPABILITY after login: the backend's list, less what the proxy does
    not carry (the backend offers SASL-IR and COMPRESS=DEFLATE)."""
    from test_login import NOT_CARRIED_EXACT, NOT_CARRIED_PREFIX
    with imapc.Client(mux.imaps_port, tls=ca_ctx) as c:
        c.greeting()
        login_caps = imapc.caps_of(c.login("alice", password("alice")))
        untagged, tagged = c.cmd("c", "CAPABILITY")
        assert tagged.startswith(b"c OK"), tagged
        caps = [imapc.caps_of(u) for u in untagged if imapc.caps_of(u)]
        assert len(caps) == 1, untagged
        caps = caps[0]
        assert {"IMAP4REV1", "IDLE", "UIDPLUS"} <= caps, caps
        assert not caps & NOT_CARRIED_EXACT, caps
        # imapmux's own COMPRESS=DEFLATE stands in for the backend's (test_compress.py)
        assert not [x for x in caps
                    if x.startswith(NOT_CARRIED_PREFIX) and x != "COMPRESS=DEFLATE"], caps
        assert caps == login_caps


def test_compress_answered_by_imapmux(mux, ca_ctx):
    """COMPRESS is imapmux's (test_compress.py has the rest): its OK, not the
    backend's, and compressed from there on."""
    with imapc.Client(mux.imaps_port, tls=ca_ctx) as c:
        c.greeting()
        c.login("alice", password("alice"))
        c.cmd_send("z", "COMPRESS DEFLATE")
        assert c.readline() == b"z OK DEFLATE active\r\n"


def test_logout_after_login(mux, ca_ctx):
    with imapc.Client(mux.imaps_port, tls=ca_ctx) as c:
        c.greeting()
        c.login("alice", password("alice"))
        untagged, tagged = c.cmd("o", "LOGOUT")
        assert [u for u in untagged if u.startswith(b"* BYE")], untagged
        assert tagged.startswith(b"o OK"), tagged
        assert c.expect_closed(5) == b""


# ---------------------------------------------------------------------------
# curl

def _curl(args, timeout=30):
    return subprocess.run(["curl", "-sS", "--max-time", "20"] + args, capture_output=True,
                          timeout=timeout)


@pytest.fixture
def curl_msg(dovecot):
    msg = (b"From: curl test <curl@localhost>\r\nSubject: fetched by curl\r\n"
           b"Message-ID: <curl-%d@test>\r\n\r\nHello from the curl test.\r\n" % time.time_ns())
    uid = dovecot.append("curly", msg)
    assert uid
    return uid, msg


def test_curl_implicit_tls_list_and_fetch(mux, cert, curl_msg):
    uid, msg = curl_msg
    auth = ["-u", "curly:" + password("curly"), "--cacert", cert]
    r = _curl(auth + ["imaps://127.0.0.1:%d/" % mux.imaps_port])
    assert r.returncode == 0, r.stderr
    assert b"INBOX" in r.stdout and r.stdout.startswith(b"* LIST"), r.stdout
    r = _curl(auth + ["imaps://127.0.0.1:%d/INBOX;UID=%d" % (mux.imaps_port, uid)])
    assert r.returncode == 0, r.stderr
    assert r.stdout == msg


def test_curl_starttls_fetch(mux, cert, curl_msg):
    uid, msg = curl_msg
    r = _curl(["--ssl-reqd", "--cacert", cert, "-u", "curly:" + password("curly"),
               "imap://127.0.0.1:%d/INBOX;UID=%d" % (mux.imap_port, uid)])
    assert r.returncode == 0, r.stderr
    assert r.stdout == msg


def test_curl_sasl_ir_and_wrong_password(mux, cert, curl_msg):
    uid, msg = curl_msg
    base = ["--cacert", cert, "imaps://127.0.0.1:%d/INBOX;UID=%d" % (mux.imaps_port, uid)]
    # AUTHENTICATE PLAIN with the initial response on the command line
    r = _curl(["--sasl-ir", "-u", "curly:" + password("curly")] + base)
    assert r.returncode == 0, r.stderr
    assert r.stdout == msg
    r = _curl(["-u", "curly:wrong-password"] + base)
    assert r.returncode == 67, (r.returncode, r.stderr)  # CURLE_LOGIN_DENIED
