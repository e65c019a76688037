"""Real IMAP clients, from Debian packages, through imapmux (README "Client
compatibility"; issue #13): Python's imaplib, curl, mbsync (isync),
fetchmail, offlineimap3 and neomutt, each a scripted session through
imapmux against the module's real Dovecot and again against its real Cyrus
(the `server` fixture), on imapmux's implicit-TLS port and, where the
client can, STARTTLS on its plain port.

Every check is of the outcome, not of the exit status alone: what the
backend holds afterwards, read straight from it (clientlib.inbox: subjects,
flags, bytes), against what the client's local store holds; and imapmux's
own session_end log line for the user (listener, TLS version), which shows
the session went through the proxy, on the listener meant. Clients trust
only the test certificate and check it (curl and mbsync are also shown to
refuse another one); HOME is in tmp_path, so no user configuration is read.
"""

import imaplib
import inspect
import os
import re
import shutil

import pytest

import clientlib
from clientlib import CLIENTS, inbox, maildir_file, maildir_messages, message, reset, run, subjects
from conftest import REPO, backend_section, password, wait_until

TIMEOUT = 10.0


@pytest.fixture(params=["dovecot", "cyrus"])
def server(request):
    """The backend: the module's Dovecot or its Cyrus."""
    return request.getfixturevalue(request.param)


@pytest.fixture
def home(tmp_path):
    h = tmp_path / "home"
    h.mkdir()
    (h / "empty-ca-dir").mkdir()
    return h


def start(make_mux, server):
    return make_mux(backends=[("a", backend_section(server))])


def binary(name):
    path = shutil.which(name, path="/usr/bin:/bin")
    if path is None:
        pytest.fail("%s is not installed (deploy/deps.sh installs it)" % name)
    return path


def through_mux(m, user, listeners):
    """imapmux's session_end lines for user: one per entry of listeners
    ("imaps" or "imap", in any order), each over TLS. Returns them."""
    def ended():
        got = clientlib.session_ends(m.log_text(), user)
        return got if len(got) >= len(listeners) else None
    got = wait_until(ended, 5, lambda: "%d session_end line(s) for %s in %s"
                     % (len(listeners), user, m.log_tail_text(20)))
    assert sorted(s["listener"] for s in got) == sorted(listeners), got
    for s in got:
        assert s["tls"].startswith("TLSv1."), s
    return got


# ---------------------------------------------------------------------------
# Python's imaplib

def _imaplib_session(c, user):
    """LOGIN, SELECT, SEARCH, FETCH, STORE, EXPUNGE, APPEND, LOGOUT on a
    connected imaplib client; returns the FETCHed body of message 2."""
    typ, data = c.login(user, password(user))
    assert typ == "OK", data
    typ, data = c.select("INBOX")
    assert (typ, data) == ("OK", [b"3"])
    typ, data = c.search(None, "SUBJECT", '"i-two"')
    assert (typ, data) == ("OK", [b"2"])
    typ, data = c.fetch("1:3", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
    assert typ == "OK", data
    assert [clientlib.subject_of(d[1]) for d in data if isinstance(d, tuple)] == \
        ["i-one", "i-two", "i-three"]
    typ, data = c.fetch("2", "(BODY.PEEK[])")
    assert typ == "OK", data
    body = data[0][1]
    typ, data = c.store("1", "+FLAGS", "(\\Flagged)")
    assert typ == "OK" and b"\\Flagged" in data[0], data
    typ, data = c.store("3", "+FLAGS", "(\\Deleted)")
    assert typ == "OK", data
    typ, data = c.expunge()
    assert (typ, data) == ("OK", [b"3"])
    typ, data = c.append("INBOX", "(\\Seen)", None, message("i-four"))
    assert typ == "OK", data
    typ, data = c.logout()
    assert typ == "BYE", data
    return body


@pytest.mark.parametrize("tls", ["implicit", "starttls"])
def test_imaplib_session(make_mux, server, ca_ctx, tls):
    user = "alice" if tls == "implicit" else "bob"
    msgs = reset(server, user, ["i-one", "i-two", "i-three"])
    m = start(make_mux, server)
    if tls == "implicit":
        c = imaplib.IMAP4_SSL("127.0.0.1", m.imaps_port, ssl_context=ca_ctx, timeout=TIMEOUT)
    else:
        c = imaplib.IMAP4("127.0.0.1", m.imap_port, timeout=TIMEOUT)
        typ, data = c.starttls(ssl_context=ca_ctx)
        assert typ == "OK", data
    body = _imaplib_session(c, user)
    assert body == msgs[1]
    rows = inbox(server, user)
    assert [(r[1], r[2]) for r in rows] == [
        ("i-one", {"\\Flagged"}), ("i-two", set()), ("i-four", {"\\Seen"})], rows
    assert rows[2][3] == message("i-four")
    through_mux(m, user, ["imaps" if tls == "implicit" else "imap"])


# ---------------------------------------------------------------------------
# curl

def test_curl_list_search_fetch_append_store(make_mux, server, cert, other_cert, home):
    user = "carol"
    msgs = reset(server, user, ["c-one", "c-two", "c-three"])
    d = server.imap(user)
    try:
        typ, _ = d.list('""', "Archive")
        if not [x for x in _ if x]:
            typ, data = d.create("Archive")
            assert typ == "OK", data
        typ, direct_list = d.list()
        d.select("INBOX", readonly=True)
        typ, direct_search = d.search(None, "ALL")
    finally:
        d.logout()
    uids = [r[0] for r in inbox(server, user)]
    m = start(make_mux, server)
    curl = binary("curl")
    base = [curl, "-sS", "--max-time", "15", "--cacert", cert, "--capath",
            str(home / "empty-ca-dir"), "-u", "%s:%s" % (user, password(user))]
    imaps = "imaps://127.0.0.1:%d/" % m.imaps_port
    imap = "imap://127.0.0.1:%d/" % m.imap_port

    # LIST, as Dovecot or Cyrus answer it directly
    r = run(base + [imaps], home)
    assert sorted(r.raw.rstrip(b"\r\n").split(b"\r\n")) == \
        sorted(b"* LIST " + x for x in direct_list), r
    # SEARCH ALL
    r = run(base + [imaps + "INBOX?ALL"], home)
    assert r.raw == b"* SEARCH " + direct_search[0] + b"\r\n", r
    # FETCH by UID, byte for byte (implicit TLS, then STARTTLS)
    assert run(base + [imaps + "INBOX;UID=%d" % uids[1]], home).raw == msgs[1]
    assert run(base + ["--ssl-reqd", imap + "INBOX;UID=%d" % uids[2]], home).raw == msgs[2]
    # without --ssl-reqd curl logs in in clear text, which imapmux refuses
    r = run(base + [imap + "INBOX;UID=%d" % uids[2]], home, check=False)
    assert r.returncode == 67 and "Login denied" in r.err, r
    # another CA: the certificate check is real
    r = run([curl, "-sS", "--max-time", "15", "--cacert", other_cert, "--capath",
             str(home / "empty-ca-dir"), "-u", "%s:%s" % (user, password(user)), imaps], home,
            check=False)
    assert r.returncode == 60, r
    # APPEND (-T) and STORE (-X)
    up = home / "up.eml"
    up.write_bytes(message("c-four"))
    run(base + ["-T", str(up), imaps + "INBOX"], home)
    r = run(base + ["-X", "UID STORE %d +FLAGS (\\Flagged)" % uids[0], imaps + "INBOX"], home)
    assert b"\\Flagged" in r.raw, r

    rows = inbox(server, user)
    assert [(r[1], r[2]) for r in rows] == [
        ("c-one", {"\\Flagged"}), ("c-two", {"\\Seen"}), ("c-three", {"\\Seen"}),
        ("c-four", {"\\Seen"})], rows   # curl FETCHes BODY[] and APPENDs with \Seen
    assert rows[3][3] == message("c-four")
    # the refused clear-text login ends a session without a user; the
    # certificate failure never gets one
    through_mux(m, user, ["imaps"] * 5 + ["imap"])


# ---------------------------------------------------------------------------
# mbsync (isync)

def _mbsync_conf(path, port, ssltype, user, cafile, near):
    path.write_text(
        "IMAPAccount mux\nHost localhost\nPort %d\nUser %s\nPass \"%s\"\nSSLType %s\n"
        "CertificateFile %s\nSystemCertificates no\nTimeout 10\n\n"
        "IMAPStore far\nAccount mux\n\n"
        "MaildirStore near\nPath %s/\nInbox %s/INBOX\n\n"
        "Channel inbox\nFar :far:INBOX\nNear :near:INBOX\nSync All\nCreate Near\n"
        "Expunge Both\nSyncState *\n"
        % (port, user, password(user), ssltype, cafile, near, near))
    return str(path)


def test_mbsync_pull_and_push(make_mux, server, cert, other_cert, home):
    """mbsync resolves localhost (it checks DNS names only, not IP SANs)."""
    user = "dave"
    reset(server, user, ["m-one", "m-two", "m-three"])
    m = start(make_mux, server)
    mbsync = binary("mbsync")
    near = home / "Mail"
    near.mkdir()
    folder = str(near / "INBOX")
    bad = _mbsync_conf(home / "bad.rc", m.imaps_port, "IMAPS", user, other_cert, near)
    r = run([mbsync, "-c", bad, "-a"], home, check=False)
    assert r.returncode != 0 and "certificate" in (r.out + r.err).lower(), r

    rc1 = _mbsync_conf(home / "imaps.rc", m.imaps_port, "IMAPS", user, cert, near)
    run([mbsync, "-c", rc1, "-a"], home)
    assert maildir_messages(folder) == {"m-one": "", "m-two": "", "m-three": ""}

    # near side: m-one flagged and seen, m-two deleted, m-local new;
    # far side: m-far new
    one = maildir_file(folder, "m-one")
    os.rename(one, os.path.join(folder, "cur", os.path.basename(one).split(":2,")[0] + ":2,FS"))
    os.unlink(maildir_file(folder, "m-two"))
    with open(os.path.join(folder, "new", "1.local.lab"), "wb") as f:
        f.write(message("m-local"))
    clientlib.age_dirs(folder)
    server.append(user, message("m-far"))

    rc2 = _mbsync_conf(home / "starttls.rc", m.imap_port, "STARTTLS", user, cert, near)
    run([mbsync, "-c", rc2, "-a"], home)
    rows = inbox(server, user)
    assert [(r[1], r[2]) for r in rows] == [
        ("m-one", {"\\Flagged", "\\Seen"}), ("m-three", set()), ("m-far", set()),
        ("m-local", set())], rows
    # mbsync adds an X-TUID header to what it uploads (directly on Dovecot too)
    assert re.sub(rb"X-TUID: \S+\r\n", b"", rows[3][3]) == message("m-local"), rows[3][3]
    assert maildir_messages(folder) == {"m-one": "FS", "m-three": "", "m-far": "",
                                        "m-local": ""}
    clientlib.assert_copies(clientlib.maildir_copies(folder), rows[:3])    # those pulled
    through_mux(m, user, ["imaps", "imap"])


# ---------------------------------------------------------------------------
# fetchmail

def _fetchmail_rc(path, port, tls, user, cafile, home, mda):
    ssl = "ssl" if tls == "implicit" else 'sslproto "TLS1.2+"'
    path.write_text(
        'poll localhost service %d protocol IMAP timeout 10\n'
        '  user "%s" password "%s"\n'
        '  %s sslcertck sslcertfile "%s" sslcertpath "%s"\n'
        '  mda "%s"\n' % (port, user, password(user), ssl, cafile, home / "empty-ca-dir", mda))
    os.chmod(path, 0o600)
    return str(path)


def test_fetchmail_keep_delete_flush(make_mux, server, cert, home):
    """fetchmail's exit status 1 means "no mail"."""
    user = "erin"
    reset(server, user, ["f-one", "f-two"])
    m = start(make_mux, server)
    fetchmail = binary("fetchmail")
    box = home / "Maildir"
    for sub in ("tmp", "new", "cur"):
        (box / sub).mkdir(parents=True)
    mda = home / "deliver"
    mda.write_text('#!/bin/sh\nset -e\nn=$$.lab\ncat > "%s/tmp/$n"\nmv "%s/tmp/$n" "%s/new/$n"\n'
                   % (box, box, box))
    os.chmod(mda, 0o755)
    common = [fetchmail, "--nosyslog", "--nodetach", "--pidfile", str(home / "fm.pid"),
              "--idfile", str(home / "fm.ids")]
    rc1 = _fetchmail_rc(home / "imaps.rc", m.imaps_port, "implicit", user, cert, home, mda)
    rc2 = _fetchmail_rc(home / "starttls.rc", m.imap_port, "starttls", user, cert, home, mda)

    run(common + ["-f", rc1, "--keep"], home)
    assert maildir_messages(str(box)) == {"f-one": "", "f-two": ""}
    clientlib.assert_copies(clientlib.maildir_copies(str(box)), inbox(server, user))
    assert [(r[1], r[2]) for r in inbox(server, user)] == [
        ("f-one", {"\\Seen"}), ("f-two", {"\\Seen"})]

    server.append(user, message("f-three"))
    three = inbox(server, user)[2:]
    run(common + ["-f", rc2], home)       # new mail only, deleted once delivered
    clientlib.assert_copies(clientlib.maildir_copies(str(box)), three)
    assert sorted(maildir_messages(str(box))) == ["f-one", "f-three", "f-two"]
    assert subjects(inbox(server, user)) == ["f-one", "f-two"]

    r = run(common + ["-f", rc2, "--flush"], home, check=False)
    assert r.returncode == 1, r           # nothing new; the old ones flushed
    assert inbox(server, user) == []
    assert sorted(maildir_messages(str(box))) == ["f-one", "f-three", "f-two"]
    through_mux(m, user, ["imaps", "imap", "imap"])


# ---------------------------------------------------------------------------
# offlineimap3

def _offlineimap_conf(path, port, user, cafile, home):
    path.write_text(
        "[general]\naccounts = lab\nmetadata = %s/oi-meta\n\n"
        "[Account lab]\nlocalrepository = near\nremoterepository = far\n\n"
        "[Repository near]\ntype = Maildir\nlocalfolders = %s/oi\n\n"
        "[Repository far]\ntype = IMAP\nremotehost = localhost\nremoteport = %d\n"
        "remoteuser = %s\nremotepass = %s\nssl = yes\nsslcacertfile = %s\n"
        "folderfilter = lambda f: f == 'INBOX'\n"
        % (home, home, port, user, password(user), cafile))
    return str(path)


def test_offlineimap_one_shot_sync(make_mux, server, cert, home):
    """Implicit TLS only: offlineimap3's imaplib2 (0.0~git20211018) hangs in
    about one STARTTLS session in twenty, straight on Dovecot as through
    imapmux (after `tag OK Begin TLS negotiation now.` and the handshake,
    its first command is never answered or never sent; README "Client
    compatibility")."""
    user = "frank"
    reset(server, user, ["o-one", "o-two", "o-three"])
    m = start(make_mux, server)
    oi = binary("offlineimap")
    folder = str(home / "oi" / "INBOX")
    rc = _offlineimap_conf(home / "offlineimaprc", m.imaps_port, user, cert, home)
    run([oi, "-c", rc, "-o", "-u", "basic"], home)
    assert maildir_messages(folder) == {"o-one": "", "o-two": "", "o-three": ""}

    os.unlink(maildir_file(folder, "o-two"))
    with open(os.path.join(folder, "new", "1.local.lab:2,S"), "wb") as f:
        f.write(message("o-local"))
    server.append(user, message("o-far"))
    run([oi, "-c", rc, "-o", "-u", "basic"], home)
    rows = inbox(server, user)
    assert [(r[1], r[2]) for r in rows] == [
        ("o-one", set()), ("o-three", set()), ("o-far", set()), ("o-local", {"\\Seen"})], rows
    assert rows[3][3] == message("o-local")
    assert maildir_messages(folder) == {"o-one": "", "o-three": "", "o-far": "",
                                        "o-local": "S"}
    clientlib.assert_copies(clientlib.maildir_copies(folder), rows)
    through_mux(m, user, ["imaps", "imaps"])


# ---------------------------------------------------------------------------
# neomutt

def _neomutt_rc(path, user, cafile, home):
    path.write_text(
        "set imap_user = %s\nset imap_pass = \"%s\"\n"
        "set ssl_ca_certificates_file = %s\nset ssl_use_system_certs = no\n"
        "set certificate_file = %s/neomutt-certs\n"
        "set ssl_force_tls = yes\nset ssl_starttls = yes\n"
        "set header_cache = \"\"\nset message_cachedir = \"\"\n"
        "set folder = %s/mail\nset mbox_type = mbox\nset sort = mailbox-order\n"
        "set confirmcreate = no\nset confirmappend = no\nset delete = yes\nset move = no\n"
        "set quit = yes\nset mark_old = no\nset sleep_time = 0\nset mail_check_stats = no\n"
        "set timeout = 5\nset imap_keepalive = 30\n"
        % (user, password(user), cafile, home, home))
    return str(path)


def _neomutt(home, rc, url, keys):
    """neomutt needs a terminal even when its keys come from `push`: it runs
    under script(1), which gives it a pty (TERM=vt100)."""
    cmd = "neomutt -n -F %s -f %s -e 'push \"%s\"'" % (rc, url, keys)
    return run([binary("script"), "-qec", cmd, "/dev/null"], home, TERM="vt100")


def test_neomutt_batch_flag_save_delete(make_mux, server, cert, home):
    user = "grace"
    binary("neomutt")
    reset(server, user, ["n-one", "n-two", "n-three"])
    m = start(make_mux, server)
    (home / "mail").mkdir()
    rc = _neomutt_rc(home / "muttrc", user, cert, home)

    _neomutt(home, rc, "imap://localhost:%d/INBOX" % m.imap_port,
             "<tag-pattern>~s n-two<enter><tag-prefix><flag-message><sync-mailbox><quit>")
    assert [(r[1], r[2]) for r in inbox(server, user)] == [
        ("n-one", set()), ("n-two", {"\\Flagged"}), ("n-three", set())]

    saved = home / "mail" / "saved"
    before = inbox(server, user)
    _neomutt(home, rc, "imaps://localhost:%d/INBOX" % m.imaps_port,
             "<tag-pattern>~A<enter><tag-prefix><save-message>%s<enter><quit>" % saved)
    assert clientlib.mbox_subjects(str(saved)) == ["n-one", "n-two", "n-three"]
    clientlib.assert_copies(clientlib.mbox_copies(str(saved)), before)
    assert inbox(server, user) == []
    through_mux(m, user, ["imap", "imaps"])


# ---------------------------------------------------------------------------
# README's matrix and this file cannot drift apart

def test_readme_matrix_lists_every_client_tested():
    with open(os.path.join(REPO, "README.md")) as f:
        rows = clientlib.readme_rows(f.read())
    assert list(rows) == list(CLIENTS), (list(rows), list(CLIENTS))
    for name, (pkg, _, _) in CLIENTS.items():
        assert rows[name][1].startswith("`%s` " % pkg), rows[name]
        assert len(rows[name][1].split()) == 2, rows[name]     # package and a version
    # every client has tests, on the backends the table names
    backends = {}
    for n, f in globals().items():
        if n.startswith("test_") and not n.startswith("test_readme_"):
            params = inspect.signature(f).parameters
            b = "Dovecot, Cyrus" if "server" in params else "Dovecot"
            backends.setdefault(n[len("test_"):].split("_")[0], set()).add(b)
    assert set(backends) == set(CLIENTS), backends
    for name, (_, b, _) in CLIENTS.items():
        assert backends[name] == {b}, (name, backends[name])
        assert rows[name][2] == b, rows[name]
