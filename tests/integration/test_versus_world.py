"""bench/versus.py's world still works (issue #14): its Dovecot (mail written
straight into the Maildirs, the big message as the last UID) and its nginx
mail proxy, started by the very functions the benchmark uses
(bench/versuslib.py), with a login through nginx over TLS 1.3 with the
world's ECDSA certificate. A benchmark is never a test: nothing here is timed;
this only makes CI notice when the benchmark's peer breaks (a package update,
a config directive nginx no longer takes, an `openssl speed` output the
crypto floor's parser no longer reads)."""

import imaplib
import os
import ssl
import sys
import tempfile

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(REPO, "bench"))

import lab  # noqa: E402  (conftest put deploy/ on the path)
import versus  # noqa: E402
import versuslib  # noqa: E402

# imapmux is not involved: nothing a sanitizer would see.
pytestmark = pytest.mark.nosan

BIG = 300 * 1000  # the world's 20 MB would only slow the test down


@pytest.fixture(scope="module")
def world(labdir):
    # Under conftest's labdir (mode 755): Dovecot's auth and nginx's workers
    # run unprivileged and must traverse the path.
    d = tempfile.mkdtemp(prefix="versus-", dir=labdir)
    os.chmod(d, 0o755)
    cert, key = lab.make_cert(os.path.join(d, "tls"), "cert", key_type="ec")
    dv = ng = None
    try:
        dv = versuslib.start_dovecot(os.path.join(d, "dovecot"), cert, key, big_bytes=BIG,
                                     users={"bench00": versuslib.PASSWORD,
                                            "bench01": versuslib.PASSWORD})
        ng = versuslib.start_nginx(os.path.join(d, "nginx"), cert, key, dv.port)
        yield {"cert": cert, "dv": dv, "nginx": ng}
    finally:
        if ng is not None:
            ng.stop()
        if dv is not None:
            dv.cleanup()


def tls13_context(cert):
    ctx = lab.client_context(cert)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    return ctx


def test_big_message_is_exact():
    m = versuslib.big_message(BIG)
    assert len(m) == BIG
    assert m.endswith(b"\r\n") and b"\r\n\r\n" in m


def test_nginx_processes(world):
    ng = world["nginx"]
    assert ng.alive()
    assert len(ng.worker_pids()) == 2, ng.log_tail_text()
    with open(os.path.join(ng.dir, "nginx.pid")) as f:
        assert int(f.read()) == ng.pid


def test_login_through_nginx(world):
    dv, ng = world["dv"], world["nginx"]
    c = imaplib.IMAP4_SSL("127.0.0.1", ng.port, ssl_context=tls13_context(world["cert"]),
                          timeout=10)
    try:
        assert c.sock.version() == "TLSv1.3"
        # The server's certificate is the world's ECDSA one (checked
        # against it as the only CA, hostname included).
        assert c.sock.getpeercert()["subject"] == ((("commonName", "localhost"),),)
        # nginx's own pre-login capabilities, as configured.
        assert "LITERAL+" in c.capabilities and "STARTTLS" not in c.capabilities
        typ, _ = c.login("bench00", versuslib.PASSWORD)
        assert typ == "OK"
        typ, data = c.select("INBOX")
        assert (typ, data) == ("OK", [b"%d" % (versuslib.SMALL_MESSAGES + 1)])
        typ, data = c.uid("FETCH", "1:*", "(RFC822.SIZE)")
        assert typ == "OK"
        sizes = [int(x.split(b"RFC822.SIZE ")[1].rstrip(b")")) for x in data]
        assert sizes[-1] == BIG and max(sizes[:-1]) < 1000
        typ, data = c.uid("FETCH", str(versuslib.BIG_UID), "(BODY.PEEK[])")
        assert typ == "OK" and data[0][1] == versuslib.big_message(BIG)
        typ, _ = c.logout()
        assert typ == "BYE"
    finally:
        if c.state != "LOGOUT":
            c.shutdown()
    # Dovecot saw the login, from nginx, on its plain port.
    assert "user=<bench00>" in dv.log_text()


def test_wrong_password_is_refused_by_dovecot(world):
    """auth_http says OK to everything: the password is Dovecot's to check."""
    c = imaplib.IMAP4_SSL("127.0.0.1", world["nginx"].port,
                          ssl_context=tls13_context(world["cert"]), timeout=10)
    try:
        with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
            c.login("bench01", "not-" + versuslib.PASSWORD)
    finally:
        c.shutdown()


def test_crypto_floor_is_read_from_openssl_speed():
    """versus.py reads `openssl speed -mr`'s machine-readable lines: this
    notices when OpenSSL's output changes (the parser raises then). Only
    that numbers were found, never how fast they are."""
    f = versus.openssl_speed(1)
    assert f["sign_s"] > 0 and f["derive_s"] > 0 and f["aes_gcm_Bps"] > 0
    assert f["handshake_us"] == pytest.approx(1e6 / f["sign_s"] + 1e6 / f["derive_s"])
    assert f["aes_ms_per_mb"] == pytest.approx(1e9 / f["aes_gcm_Bps"])
