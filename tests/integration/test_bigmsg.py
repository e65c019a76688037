"""A 20 MB message through imapmux: APPEND (sync and non-sync literals) and
FETCH, compared byte for byte with what Dovecot stored."""

import base64
import imaplib
import random
import re
import time

import pytest

import imapc
from conftest import links_asan, password, proc_status_kib

SIZE = 20 * 1024 * 1024


def make_message(size=SIZE, seed=1):
    """A valid RFC 5322 message of about size bytes: random bytes, base64."""
    rnd = random.Random(seed)
    head = ("From: Big Sender <big@localhost>\r\n"
            "To: big@localhost\r\n"
            "Subject: 20 MB of random bytes (seed %d)\r\n"
            "Date: Sat, 01 Jan 2022 00:00:00 +0000\r\n"
            "Message-ID: <big-%d-%d@imapmux.test>\r\n"
            "MIME-Version: 1.0\r\n"
            "Content-Type: application/octet-stream\r\n"
            "Content-Transfer-Encoding: base64\r\n"
            "\r\n" % (seed, seed, time.time_ns())).encode()
    raw = rnd.randbytes((size - len(head)) * 57 // 78)
    b = base64.b64encode(raw)
    body = b"\r\n".join(b[i:i + 76] for i in range(0, len(b), 76)) + b"\r\n"
    return head + body


def _appenduid(tagged):
    m = re.search(rb"\[APPENDUID (\d+) (\d+)\]", tagged)
    assert m, tagged
    return int(m.group(2))


def _fetch_imaplib(conn, uid):
    typ, data = conn.uid("FETCH", str(uid), "(BODY.PEEK[])")
    assert typ == "OK", data
    parts = [d for d in data if isinstance(d, tuple)]
    assert len(parts) == 1, [type(d) for d in data]
    return parts[0][1]


def _fetch_direct(dovecot, user, uid):
    d = dovecot.imap(user, timeout=60)
    try:
        d.select("INBOX", readonly=True)
        return _fetch_imaplib(d, uid)
    finally:
        d.logout()


def _fetch_raw(c, uid, tag="f"):
    """UID FETCH uid BODY.PEEK[] on a raw client; the literal's bytes."""
    untagged, tagged = c.cmd(tag, "UID FETCH %d (BODY.PEEK[])" % uid, timeout=120)
    assert tagged.startswith(tag.encode() + b" OK"), tagged
    fetches = [r for r in untagged if b" FETCH " in r[:30]]
    assert len(fetches) == 1, [r[:100] for r in untagged]
    r = fetches[0]
    m = re.search(rb"BODY\[\] \{(\d+)\}\r\n", r)
    assert m, r[:200]
    start = m.end()
    n = int(m.group(1))
    return r[start:start + n]


def test_append_and_fetch_20mb_imaplib(mux, dovecot, ca_ctx):
    msg = make_message(seed=1)
    assert len(msg) > 19 * 1024 * 1024
    c = imaplib.IMAP4_SSL("127.0.0.1", mux.imaps_port, ssl_context=ca_ctx, timeout=120)
    try:
        c.login("big", password("big"))
        typ, data = c.append("INBOX", None, None, msg)  # sync literal: waits for +
        assert typ == "OK", data
        uid = _appenduid(data[0])
        c.select("INBOX")
        via_proxy = _fetch_imaplib(c, uid)
    finally:
        try:
            c.logout()
        except Exception:
            pass
    assert len(via_proxy) == len(msg)
    assert via_proxy == msg
    direct = _fetch_direct(dovecot, "big", uid)
    assert direct == via_proxy


def test_append_20mb_nonsync_literal_raw(mux, dovecot, ca_ctx):
    msg = make_message(seed=2)
    with imapc.Client(mux.imaps_port, tls=ca_ctx, timeout=120) as c:
        c.greeting()
        c.login("big", password("big"))
        # One write: command, non-synchronizing literal, CRLF; no waiting for +.
        c.send(b"a APPEND INBOX (\\Seen) {%d+}\r\n" % len(msg) + msg + b"\r\n")
        untagged, tagged = c.read_until_tagged("a", timeout=120)
        assert not [u for u in untagged if u.startswith(b"+")], untagged
        assert tagged.startswith(b"a OK"), tagged
        uid = _appenduid(tagged)
        _, tagged = c.cmd("s", "SELECT INBOX")
        assert tagged.startswith(b"s OK"), tagged
        via_proxy = _fetch_raw(c, uid)
        assert via_proxy == msg
        _, tagged = c.cmd("n", "NOOP")
        assert tagged.startswith(b"n OK"), tagged
    assert _fetch_direct(dovecot, "big", uid) == msg


def test_append_20mb_sync_literal_raw(mux, dovecot, ca_ctx):
    msg = make_message(seed=3)
    with imapc.Client(mux.imaps_port, tls=ca_ctx, timeout=120) as c:
        c.greeting()
        c.login("big", password("big"))
        c.send(b"a APPEND INBOX {%d}\r\n" % len(msg))
        cont = c.readline()
        assert cont.startswith(b"+"), cont
        # In pieces, as a slow client would.
        step = len(msg) // 7 + 1
        for i in range(0, len(msg), step):
            c.send(msg[i:i + step])
        c.send(b"\r\n")
        _, tagged = c.read_until_tagged("a", timeout=120)
        assert tagged.startswith(b"a OK"), tagged
        uid = _appenduid(tagged)
    assert _fetch_direct(dovecot, "big", uid) == msg


def test_50mb_append_and_fetch_bounded_memory(mux, dovecot, ca_ctx):
    """A 50 MB APPEND and FETCH pass through imapmux without it ever holding
    the message: its peak RSS grows by far less than the message size."""
    if links_asan(mux.pid):
        pytest.skip("AddressSanitizer's quarantine makes RSS meaningless")
    msg = make_message(size=50 * 1024 * 1024, seed=5)
    before = proc_status_kib(mux.pid, "VmHWM")
    with imapc.Client(mux.imaps_port, tls=ca_ctx, timeout=180) as c:
        c.greeting()
        c.login("big", password("big"))
        c.send(b"a APPEND INBOX {%d+}\r\n" % len(msg) + msg + b"\r\n")
        _, tagged = c.read_until_tagged("a", timeout=180)
        assert tagged.startswith(b"a OK"), tagged
        uid = _appenduid(tagged)
        _, tagged = c.cmd("s", "SELECT INBOX")
        assert tagged.startswith(b"s OK"), tagged
        assert _fetch_raw(c, uid) == msg
    grown_mib = (proc_status_kib(mux.pid, "VmHWM") - before) / 1024
    # Buffers are 16-32 KiB per direction; allow generous slack for OpenSSL
    # and malloc arenas, but well under the 50 MB a whole-message copy costs.
    assert grown_mib < 12, "imapmux peak RSS grew by %.1f MiB" % grown_mib
