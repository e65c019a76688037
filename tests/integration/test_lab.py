"""The harness itself, against the real servers and without imapmux: if these
fail, the imapmux tests prove nothing."""

import imaplib
import os
import socket
import ssl
import subprocess
import time
import warnings

import pytest

import imapc
import lab
from conftest import (CANARY_PASSWORD, CANARY_USER, MASTER_PASSWORD, QUOTED_PASSWORD,
                      QUOTED_USER, password)


def test_free_ports_are_distinct_and_bindable():
    ports = [lab.free_port() for _ in range(20)]
    assert len(set(ports)) == 20
    for p in ports[:3]:
        s = socket.socket()
        s.bind(("127.0.0.1", p))
        s.close()


def test_cert_is_for_localhost_and_127_0_0_1(cert, ca_ctx, key):
    text = subprocess.run(["openssl", "x509", "-in", cert, "-noout", "-text"],
                          capture_output=True, text=True, timeout=30).stdout
    assert "CN = localhost" in text
    assert "DNS:localhost" in text and "IP Address:127.0.0.1" in text
    # A TLS server with it is verified by ca_ctx under both names.
    srv_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    srv_ctx.load_cert_chain(cert, key)
    for name in ("127.0.0.1", "localhost"):
        ls = socket.create_server(("127.0.0.1", 0))
        port = ls.getsockname()[1]
        import threading

        def serve():
            c, _ = ls.accept()
            try:
                srv_ctx.wrap_socket(c, server_side=True).close()
            except (ssl.SSLError, OSError):
                c.close()
        t = threading.Thread(target=serve, daemon=True)
        t.start()
        s = ca_ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5),
                               server_hostname=name)
        s.close()
        t.join(5)
        ls.close()


def test_dovecot_plain_login_and_caps(dovecot):
    c = imaplib.IMAP4("127.0.0.1", dovecot.port, timeout=10)
    try:
        assert "STARTTLS" in c.capabilities
        typ, data = c.login("alice", password("alice"))
        assert typ == "OK"
        typ, data = c.capability()
        caps = data[0].decode().upper().split()
        # What the proxy must filter out is really there at the backend:
        # the capability-filter tests can fail.
        assert "SASL-IR" in caps and "COMPRESS=DEFLATE" in caps and "IDLE" in caps
        assert c.select("INBOX")[0] == "OK"
    finally:
        c.logout()


def test_dovecot_wrong_password(dovecot):
    c = imaplib.IMAP4("127.0.0.1", dovecot.port, timeout=10)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        c.login("alice", "wrong")
    c.shutdown()


def test_dovecot_starttls_and_implicit_tls(dovecot, ca_ctx):
    c = imaplib.IMAP4("127.0.0.1", dovecot.port, timeout=10)
    c.starttls(ca_ctx)
    assert c.login(QUOTED_USER, QUOTED_PASSWORD)[0] == "OK"
    c.logout()
    c = imaplib.IMAP4_SSL("127.0.0.1", dovecot.imaps_port, ssl_context=ca_ctx, timeout=10)
    assert c.login("crypt", password("crypt"))[0] == "OK"
    c.logout()
    assert ", TLS," in dovecot.log_text()


def test_dovecot_master_user(dovecot):
    c = imaplib.IMAP4("127.0.0.1", dovecot.port, timeout=10)
    assert c.login("alice*" + lab.MASTER_USER, MASTER_PASSWORD)[0] == "OK"
    c.logout()
    # and with SASL PLAIN authzid
    with imapc.Client(dovecot.port) as r:
        r.greeting()
        _, tagged = r.cmd("a", "AUTHENTICATE PLAIN " +
                          imapc.plain_ir(lab.MASTER_USER, MASTER_PASSWORD, authzid="bob"))
        assert tagged.startswith(b"a OK")
    c = imaplib.IMAP4("127.0.0.1", dovecot.port, timeout=10)
    with pytest.raises(imaplib.IMAP4.error):
        c.login("alice*" + lab.MASTER_USER, "not-the-master-password")
    c.shutdown()


def test_dovecot_sasl_ir_login_canary(dovecot):
    with imapc.Client(dovecot.port) as r:
        r.greeting()
        _, tagged = r.cmd("a", "AUTHENTICATE PLAIN " + imapc.plain_ir(CANARY_USER, CANARY_PASSWORD))
        assert tagged.startswith(b"a OK")


def test_dovecot_mail_is_owned_by_unprivileged_user(dovecot):
    dovecot.append("erin", b"Subject: owner\r\n\r\nx\r\n")
    uid, gid = lab.mail_owner()
    assert uid != 0
    st = os.stat(dovecot.maildir("erin"))
    assert (st.st_uid, st.st_gid) == (uid, gid)


def test_dovecot_pipelined_order_is_sane(dovecot):
    """The order check used by the proxy's pipelining test holds at Dovecot."""
    from test_session import PIPELINE, check_pipeline_order
    for i in range(3):
        dovecot.append("pipe2", b"Subject: p%d\r\n\r\nbody\r\n" % i)
    with imapc.Client(dovecot.port) as r:
        r.greeting()
        r.login("pipe2", password("pipe2"))
        r.send(PIPELINE)
        check_pipeline_order(r)


def test_dovecot_idle_sees_append(dovecot):
    """Dovecot notifies IDLE of a new message quickly (the proxy's IDLE test
    relies on it)."""
    with imapc.Client(dovecot.port) as r:
        r.greeting()
        r.login("idler2", password("idler2"))
        r.cmd("s", "SELECT INBOX")
        r.cmd_send("t", "IDLE")
        assert r.readline().startswith(b"+")
        dovecot.append("idler2", b"Subject: wake\r\n\r\nup\r\n")
        deadline = time.monotonic() + 5
        while True:
            line = r.readline(max(0.01, deadline - time.monotonic()))
            if line.endswith(b"EXISTS\r\n"):
                break
        r.send("DONE\r\n")
        _, tagged = r.read_until_tagged("t")
        assert tagged.startswith(b"t OK")


def test_kill_hard_kills_the_whole_group(fresh_dovecot):
    c = fresh_dovecot.imap("killed")
    c.select("INBOX")
    pids = fresh_dovecot.proc.group_pids()
    assert len(pids) >= 3, pids  # master, log, config, login, imap, ...
    fresh_dovecot.kill_hard()
    assert lab.group_pids(fresh_dovecot.proc.pgid) == []
    assert not [p for p in pids if lab.pid_alive(p)]
    with pytest.raises((imaplib.IMAP4.abort, OSError)):
        c.noop()
        c.noop()


def test_stop_leaves_nothing_behind(cert, key):
    d = lab.Dovecot({"x": "y"}, tls=True, cert=cert, key=key).start()
    pgid = d.proc.pgid
    d.imap("x").logout()
    d.cleanup()
    assert lab.group_pids(pgid) == []
    assert not os.path.exists(d.dir)
    lab.wait_closed(d.port, 2)


def test_redis(redis):
    assert redis.command("PING") == "PONG"
    assert redis.command("SET", "imapmux:route:alice", "a") == "OK"
    assert redis.command("GET", "imapmux:route:alice") == "a"
    assert redis.command("DEL", "imapmux:route:alice") == 1


def test_silent_server_times_out_waits():
    with pytest.raises(lab.LabError):
        s = socket.create_server(("127.0.0.1", 0))
        try:
            lab.wait_greeting(s.getsockname()[1], timeout=0.5)
        finally:
            s.close()


def test_imapmux_conf_text_round_trip(tmp_path):
    text = lab.imapmux_conf_text(
        imapmux={"workers": 2, "log_level": "debug"},
        listens=[("imaps", {"address": "127.0.0.1:9993", "tls": "implicit"}),
                 ("imap", {"address": "127.0.0.1:9143", "allow_plaintext_auth": True})],
        backends=[("a", {"address": "127.0.0.1:11143", "ca": None})],
        routing={"lookup": "static", "fallback": "a"})
    assert "[listen imaps]\naddress = 127.0.0.1:9993\n" in text
    assert "allow_plaintext_auth = yes\n" in text
    assert "ca =" not in text
    assert lab.listen_ports_of(text) == [9993, 9143]


def test_tls11_client_works_where_allowed(cert, key):
    """The old-TLS client used by test_limits can really speak TLS 1.1, so a
    refusal by imapmux is imapmux's doing."""
    from test_limits import old_tls_context, tls_handshake_version
    from test_limits import OLD_VERSIONS
    srv = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        srv.minimum_version = OLD_VERSIONS[0]
    srv.set_ciphers("ALL:@SECLEVEL=0")
    srv.load_cert_chain(cert, key)
    ls = socket.create_server(("127.0.0.1", 0))
    port = ls.getsockname()[1]
    import threading

    def serve():
        c, _ = ls.accept()
        try:
            s = srv.wrap_socket(c, server_side=True)
            s.sendall(b"* OK hi\r\n")
            s.close()
        except (ssl.SSLError, OSError):
            c.close()
    t = threading.Thread(target=serve, daemon=True)
    t.start()
    try:
        assert tls_handshake_version(port, old_tls_context(OLD_VERSIONS[1])) == "TLSv1.1"
    finally:
        t.join(5)
        ls.close()
