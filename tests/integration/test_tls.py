"""TLS policy (README.md, "TLS policy"): protocol versions, ciphers,
ciphersuites, curves, renegotiation and compression, toward clients (both
kinds of listener) and toward backends (real Dovecot); and how a bad value is
refused: `imapmux -t`, start-up, SIGHUP reload.

The clients are real ones, Python's ssl and `openssl s_client`. A refusal
proves something only if the client really asked for what was refused, so:
  - the TLS 1.0/1.1 clients run at @SECLEVEL=0 (at its default level OpenSSL 3
    would not even offer those versions), and each such test checks the
    ClientHello that went out (Python's message callback, `s_client -msg`)
    and that the server answered with a protocol_version alert;
  - cipher tests check the cipher list in the ClientHello that went out, and
    every "refused" case has an "accepted" twin that differs only in the one
    thing the server should object to;
  - renegotiation is probed with s_client's "R" command, and the same probe
    is shown to renegotiate with `openssl s_server` under a permissive
    openssl.cnf;
  - some cases run imapmux under that openssl.cnf (MinProtocol = TLSv1,
    SECLEVEL=0, client renegotiation allowed), so that only imapmux's own
    settings stand between the client and success. The same Python client is
    shown to get TLS 1.0 from `openssl s_server` under it.

Compression: Debian 12's libssl is built without zlib, so no server linked
with it can negotiate compression whatever its options; test_no_compression
shows the offer is declined, and would catch a missing SSL_OP_NO_COMPRESSION
only on a libssl built with zlib.
"""

import contextlib
import os
import re
import select
import signal
import socket
import ssl
import struct
import subprocess
import time
import warnings

import pytest

import imapc
import lab
from conftest import MASTER_PASSWORD, USERS, backend_section, password, wait_until

# Dovecot logs the protocol and cipher of each login (%k).
LOGIN_FMT = ("login_log_format_elements = user=<%u> method=%m rip=%r lip=%l mpid=%e %c "
             "tls=<%k> session=<%{session}>\n")

# Everything OpenSSL lets a configuration file loosen, for the process that reads it.
PERMISSIVE_CNF = """\
openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
MinProtocol = TLSv1
CipherString = DEFAULT@SECLEVEL=0
Options = ClientRenegotiation
"""

# A backend that cannot do TLS 1.3 (an older server, or one held back).
TLS12_ONLY_CNF = """\
openssl_conf = openssl_init
[openssl_init]
ssl_conf = ssl_sect
[ssl_sect]
system_default = system_default_sect
[system_default_sect]
MaxProtocol = TLSv1.2
"""

# TLS record content types, handshake message types, alerts.
HANDSHAKE, ALERT = 22, 21
CLIENT_HELLO, SERVER_HELLO = 1, 2
FATAL, PROTOCOL_VERSION, HANDSHAKE_FAILURE = 2, 70, 40
SCSV = {0x00FF, 0x5600}  # renegotiation_info and fallback signalling values

VERSIONS = {
    "TLSv1": (ssl.TLSVersion.TLSv1, b"\x03\x01", "-tls1", "03 01"),
    "TLSv1.1": (ssl.TLSVersion.TLSv1_1, b"\x03\x02", "-tls1_1", "03 02"),
}


# ---------------------------------------------------------------------------
# fixtures

@pytest.fixture(scope="module")
def dovecot(cert, key):
    """This module's Dovecot (conftest's, plus the TLS protocol and cipher
    of every login in its log)."""
    d = lab.Dovecot(USERS, tls=True, cert=cert, key=key, master_password=MASTER_PASSWORD,
                    name="dovecot-tls", extra_conf=LOGIN_FMT)
    d.start()
    yield d
    d.cleanup()


def _write(path, text):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, 0o644)
    return path


@pytest.fixture(scope="module")
def dovecot_tls12(cert, key, labdir):
    """A Dovecot held at TLS 1.2 (by its OpenSSL configuration) with one
    cipher: ECDHE-RSA-AES256-GCM-SHA384."""
    cnf = _write(os.path.join(labdir, "openssl-tls12-only.cnf"), TLS12_ONLY_CNF)
    d = lab.Dovecot(USERS, tls=True, cert=cert, key=key, master_password=MASTER_PASSWORD,
                    name="dovecot-tls12",
                    extra_conf=LOGIN_FMT + "ssl_cipher_list = ECDHE-RSA-AES256-GCM-SHA384\n"
                    "import_environment = TZ CORE_OUTOFMEM CORE_ERROR OPENSSL_CONF=%s\n" % cnf)
    d.start()
    yield d
    d.cleanup()


@pytest.fixture(scope="module")
def permissive_cnf(labdir):
    return _write(os.path.join(labdir, "openssl-permissive.cnf"), PERMISSIVE_CNF)


@contextlib.contextmanager
def _env(name, value):
    """os.environ[name] = value while starting a child (it copies the environment)."""
    old = os.environ.get(name)
    os.environ[name] = value
    try:
        yield
    finally:
        if old is None:
            del os.environ[name]
        else:
            os.environ[name] = old


def _listens(cert, key, ports, **extra):
    """The usual implicit and STARTTLS listeners on ports, both with extra keys."""
    kv = {"cert": cert, "key": key}
    kv.update(extra)
    return [("imaps", dict(address="127.0.0.1:%d" % ports[0], tls="implicit", **kv)),
            ("imap", dict(address="127.0.0.1:%d" % ports[1], tls="starttls", **kv))]


def _mux(make_mux, openssl_conf=None, imapmux=None, backends=None, **listen_keys):
    """make_mux with listen_keys (ciphers=..., curves=...) on both listeners;
    openssl_conf: OPENSSL_CONF for this imapmux."""
    ports = (lab.free_port(), lab.free_port())
    listens = _listens(make_mux.cert, make_mux.key, ports, **listen_keys)
    if openssl_conf is None:
        return make_mux(listens=listens, ports=ports, imapmux=imapmux, backends=backends)
    with _env("OPENSSL_CONF", openssl_conf):
        return make_mux(listens=listens, ports=ports, imapmux=imapmux, backends=backends)


# ---------------------------------------------------------------------------
# Python clients

class Hellos:
    """Records, through ctx's message callback, the ClientHellos sent and the
    alerts received (CPython's _msg_callback: not public, but the only way to
    see what the client really put on the wire)."""

    def __init__(self, ctx):
        self.sent = []
        self.alerts = []
        ctx._msg_callback = self._cb

    def _cb(self, conn, direction, version, content_type, msg_type, data):
        if direction == "write" and content_type == HANDSHAKE and msg_type == CLIENT_HELLO:
            self.sent.append(bytes(data))
        elif direction == "read" and content_type == ALERT:
            self.alerts.append(tuple(bytes(data)[:2]))

    def legacy_versions(self):
        """legacy_version of each ClientHello sent (handshake header is 4 bytes)."""
        return [h[4:6] for h in self.sent]

    def ciphers(self):
        """Cipher suite ids of the last ClientHello, less signalling values."""
        h = self.sent[-1]
        i = 4 + 2 + 32
        i += 1 + h[i]
        (n,) = struct.unpack("!H", h[i:i + 2])
        ids = struct.unpack("!%dH" % (n // 2), h[i + 2:i + 2 + n])
        return [x for x in ids if x not in SCSV]


def _ctx(cert, version=None, ciphers=None):
    """A client context trusting cert; version: min = max = it; ciphers:
    OpenSSL cipher string for TLS 1.2 and below."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # TLS 1.0/1.1 are deprecated
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(cert)
        if version is not None:
            ctx.minimum_version = version
            ctx.maximum_version = version
        if ciphers is not None:
            ctx.set_ciphers(ciphers)
    return ctx


def _old_ctx(cert, name):
    """A client that offers exactly TLS 1.0 or 1.1, at the security level
    where OpenSSL 3 still does (and with every cipher those can use)."""
    return _ctx(cert, VERSIONS[name][0], "DEFAULT@SECLEVEL=0")


def _cipher_id(ctx, name):
    for c in ctx.get_ciphers():
        if c["name"] == name:
            return c["id"] & 0xFFFF
    raise AssertionError("%s unknown to this client" % name)


def _connect(port, kind, ctx):
    """An imapc.Client over TLS made with ctx, on an implicit listener or
    after STARTTLS on a starttls one; the greeting (or the STARTTLS answer)
    is read. Raises ssl.SSLError when the handshake fails."""
    c = imapc.Client(port)
    try:
        if kind == "starttls":
            c.greeting()
            _, tagged = c.cmd("s", "STARTTLS")
            assert tagged.startswith(b"s OK"), tagged
            c.starttls(ctx, server_hostname="localhost")
        else:
            c.sock = ctx.wrap_socket(c.sock, server_hostname="localhost")
            c.greeting()
        return c
    except BaseException:
        c.close()
        raise


def _port(m, kind):
    return m.imaps_port if kind == "implicit" else m.imap_port


def _works(m, kind, ctx):
    """Handshake, then a command answered over TLS; returns
    (TLS version, cipher name)."""
    with _connect(_port(m, kind), kind, ctx) as c:
        _, tagged = c.cmd("n", "NOOP")
        assert tagged.startswith(b"n OK"), tagged
        return c.sock.version(), c.sock.cipher()[0]


def _refused(m, kind, ctx):
    """The handshake fails; returns the SSLError."""
    with pytest.raises(ssl.SSLError) as ei:
        _connect(_port(m, kind), kind, ctx).close()
    return ei.value


# ---------------------------------------------------------------------------
# openssl s_client / s_server

class SClient:
    def __init__(self, argv, rc, out):
        self.argv, self.rc, self.out = argv, rc, out

    def __repr__(self):
        return "s_client %s (exit %s):\n%s" % (" ".join(self.argv[2:]), self.rc, self.out[-3000:])

    @property
    def session(self):
        """(protocol, cipher) of the session s_client reports; ("(NONE)",
        "(NONE)") when there is none."""
        m = re.search(r"^New, (\S+), Cipher is (\S+)$", self.out, re.M)
        assert m, self
        return m.group(1), m.group(2)

    @property
    def logged_out(self):
        """The proxy answered a command over the TLS session."""
        return "a OK Logout completed." in self.out

    def hello_version(self):
        """legacy_version of the ClientHello sent, as hex ("03 01"), from -msg."""
        m = re.search(r"ClientHello\n\s+01 00 [0-9a-f]{2} [0-9a-f]{2} (03 0[0-4])", self.out)
        return m.group(1) if m else None

    def received_fatal(self, alert):
        """s_client -msg shows a fatal alert of that name from the server."""
        return re.search(r"^<<< [^\n]*Alert \[length 0002\], fatal %s$" % alert, self.out,
                         re.M) is not None


def s_client(cert, port, *args, starttls=False, stdin=b"a LOGOUT\r\n", timeout=20):
    """openssl s_client to 127.0.0.1:port with args; sends stdin once the
    session is up and waits for the server to close."""
    argv = [lab.OPENSSL, "s_client", "-connect", "127.0.0.1:%d" % port, "-servername",
            "localhost", "-CAfile", cert, "-verify_return_error", "-ign_eof"]
    if starttls:
        argv += ["-starttls", "imap"]
    argv += list(args)
    r = subprocess.run(argv, input=stdin, capture_output=True, timeout=timeout)
    return SClient(argv, r.returncode, (r.stdout + r.stderr).decode("utf-8", "replace"))


def _read_until(proc, marker, timeout):
    """Read proc's stdout until marker (bytes) appears, EOF or timeout;
    returns what was read."""
    out = b""
    deadline = time.monotonic() + timeout
    fd = proc.stdout.fileno()
    while marker is None or marker not in out:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        r, _, _ = select.select([fd], [], [], left)
        if not r:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        out += chunk
    return out


def _renegotiate(cert, port, ready, starttls=False, after=b"a NOOP\r\n"):
    """Connect with s_client at TLS 1.2, wait for `ready` in its output, type
    "R" (renegotiate), then send `after`. Returns (output, renegotiated):
    renegotiated when a second handshake verified the certificate again and
    the connection still carried data."""
    argv = [lab.OPENSSL, "s_client", "-connect", "127.0.0.1:%d" % port, "-CAfile", cert,
            "-tls1_2", "-msg"]
    if starttls:
        argv += ["-starttls", "imap"]
    p = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                         stderr=subprocess.STDOUT)
    try:
        out = _read_until(p, ready, 10)
        assert ready in out, out.decode(errors="replace")[-2000:]
        before = out.count(b"verify return:1")
        p.stdin.write(b"R\n")
        p.stdin.flush()
        out += _read_until(p, None, 3)  # the second handshake, or the refusal
        again = out.count(b"verify return:1") > before
        alive = p.poll() is None
        if alive:
            try:
                p.stdin.write(after)
                p.stdin.flush()
            except BrokenPipeError:
                alive = False
            out += _read_until(p, None, 2)
        return out.decode("utf-8", "replace"), again and alive and p.poll() is None
    finally:
        p.kill()
        p.wait(5)


class SServer:
    """openssl s_server on a free port for one connection, with env."""

    def __init__(self, cert, key, *args, env=None):
        self.port = lab.free_port()
        argv = [lab.OPENSSL, "s_server", "-accept", "127.0.0.1:%d" % self.port, "-cert", cert,
                "-key", key, "-naccept", "1", *args]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, env=env)
        self.out = _read_until(self.proc, b"ACCEPT", 10)
        assert b"ACCEPT" in self.out, self.out

    def close(self):
        self.proc.kill()
        self.proc.wait(5)
        self.proc.stdout.close()
        self.proc.stdin.close()


# ---------------------------------------------------------------------------
# protocol versions

@pytest.mark.parametrize("kind", ["implicit", "starttls"])
@pytest.mark.parametrize("version", ["TLSv1", "TLSv1.1"])
def test_old_versions_refused_python(make_mux, cert, kind, version):
    m = _mux(make_mux)
    ctx = _old_ctx(cert, version)
    hellos = Hellos(ctx)
    err = _refused(m, kind, ctx)
    assert hellos.legacy_versions() == [VERSIONS[version][1]], hellos.sent
    assert (FATAL, PROTOCOL_VERSION) in hellos.alerts, (hellos.alerts, err)
    assert err.reason == "TLSV1_ALERT_PROTOCOL_VERSION", err


@pytest.mark.parametrize("kind", ["implicit", "starttls"])
@pytest.mark.parametrize("version", ["TLSv1", "TLSv1.1"])
def test_old_versions_refused_s_client(make_mux, cert, kind, version):
    m = _mux(make_mux)
    r = s_client(cert, _port(m, kind), VERSIONS[version][2], "-cipher", "DEFAULT@SECLEVEL=0",
                 "-msg", starttls=kind == "starttls")
    assert r.hello_version() == VERSIONS[version][3], r
    assert r.received_fatal("protocol_version"), r
    assert r.session == ("(NONE)", "(NONE)") and not r.logged_out, r


@pytest.mark.parametrize("kind", ["implicit", "starttls"])
@pytest.mark.parametrize("version", ["TLSv1", "TLSv1.1"])
def test_old_versions_refused_even_when_openssl_cnf_and_ciphers_allow_them(
        make_mux, cert, permissive_cnf, kind, version):
    """Under an openssl.cnf with MinProtocol = TLSv1 and SECLEVEL=0, and with
    `ciphers` that TLS 1.0 can use, only imapmux's own floor is left."""
    m = _mux(make_mux, openssl_conf=permissive_cnf, ciphers="DEFAULT@SECLEVEL=0")
    ctx = _old_ctx(cert, version)
    hellos = Hellos(ctx)
    err = _refused(m, kind, ctx)
    assert hellos.legacy_versions() == [VERSIONS[version][1]], hellos.sent
    assert (FATAL, PROTOCOL_VERSION) in hellos.alerts, (hellos.alerts, err)
    # ... while TLS 1.2 with a cipher outside the default policy gets in:
    # the loosened ciphers are in force, the version is what is refused.
    assert _works(m, kind, _ctx(cert, ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-AES128-SHA")) == \
        ("TLSv1.2", "ECDHE-RSA-AES128-SHA")


def test_old_version_client_can_connect_where_allowed(cert, key, permissive_cnf):
    """Control: the TLS 1.0 client of these tests gets a session from a
    server that allows it (openssl s_server under the permissive openssl.cnf)."""
    srv = SServer(cert, key, env=dict(os.environ, OPENSSL_CONF=permissive_cnf))
    try:
        ctx = _old_ctx(cert, "TLSv1")
        with socket.create_connection(("127.0.0.1", srv.port), timeout=10) as s:
            with ctx.wrap_socket(s, server_hostname="localhost") as t:
                assert t.version() == "TLSv1"
    finally:
        srv.close()


@pytest.mark.parametrize("kind", ["implicit", "starttls"])
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls12_and_tls13_accepted(make_mux, cert, kind, version):
    m = _mux(make_mux)
    got, _ = _works(m, kind, _ctx(cert, version))
    assert got == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]


@pytest.mark.parametrize("flag,want", [("-tls1_2", "TLSv1.2"), ("-tls1_3", "TLSv1.3")])
def test_tls12_and_tls13_accepted_s_client_starttls(make_mux, cert, flag, want):
    m = _mux(make_mux)
    r = s_client(cert, m.imap_port, flag, starttls=True)
    assert r.session[0] == want and r.logged_out, r


# ---------------------------------------------------------------------------
# TLS 1.2 ciphers

@pytest.mark.parametrize("cipher,ok", [
    ("ECDHE-RSA-AES128-GCM-SHA256", True),
    ("ECDHE-RSA-AES256-GCM-SHA384", True),
    ("ECDHE-RSA-CHACHA20-POLY1305", True),
    ("ECDHE-RSA-AES128-SHA", False),       # CBC
    ("ECDHE-RSA-AES256-SHA384", False),    # CBC
    ("AES128-GCM-SHA256", False),          # RSA key exchange: no forward secrecy
    ("DHE-RSA-AES128-GCM-SHA256", False),  # finite-field DH (and no DH parameters anyway)
])
def test_default_ciphers(make_mux, cert, cipher, ok):
    """The default TLS 1.2 list is ECDHE + AEAD only. OpenSSL's own default
    would take every one of these."""
    m = _mux(make_mux)
    ctx = _ctx(cert, ssl.TLSVersion.TLSv1_2, cipher)
    hellos = Hellos(ctx)
    if ok:
        assert _works(m, "implicit", ctx) == ("TLSv1.2", cipher)
    else:
        err = _refused(m, "implicit", ctx)
        assert (FATAL, HANDSHAKE_FAILURE) in hellos.alerts, (hellos.alerts, err)
    assert hellos.ciphers() == [_cipher_id(ctx, cipher)]


@pytest.mark.parametrize("kind", ["implicit", "starttls"])
def test_ciphers_honoured(make_mux, cert, kind):
    m = _mux(make_mux, ciphers="ECDHE-RSA-AES256-GCM-SHA384")
    # Outside the list (though in the default one): refused.
    ctx = _ctx(cert, ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-CHACHA20-POLY1305")
    hellos = Hellos(ctx)
    _refused(m, kind, ctx)
    assert hellos.ciphers() == [_cipher_id(ctx, "ECDHE-RSA-CHACHA20-POLY1305")]
    assert (FATAL, HANDSHAKE_FAILURE) in hellos.alerts, hellos.alerts
    # Inside: accepted, and it is the cipher in use.
    ctx = _ctx(cert, ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-AES256-GCM-SHA384")
    assert _works(m, kind, ctx) == ("TLSv1.2", "ECDHE-RSA-AES256-GCM-SHA384")
    # TLS 1.3 is not governed by ciphers: still there.
    assert _works(m, kind, _ctx(cert, ssl.TLSVersion.TLSv1_3))[0] == "TLSv1.3"


def test_server_cipher_preference(make_mux, cert):
    """The client prefers AES-128-GCM, the listener ChaCha20: the listener's
    order wins (SSL_OP_CIPHER_SERVER_PREFERENCE)."""
    m = _mux(make_mux, ciphers="ECDHE-RSA-CHACHA20-POLY1305:ECDHE-RSA-AES128-GCM-SHA256")
    ctx = _ctx(cert, ssl.TLSVersion.TLSv1_2,
               "ECDHE-RSA-AES128-GCM-SHA256:ECDHE-RSA-CHACHA20-POLY1305")
    hellos = Hellos(ctx)
    assert _works(m, "implicit", ctx) == ("TLSv1.2", "ECDHE-RSA-CHACHA20-POLY1305")
    assert hellos.ciphers() == [_cipher_id(ctx, "ECDHE-RSA-AES128-GCM-SHA256"),
                                _cipher_id(ctx, "ECDHE-RSA-CHACHA20-POLY1305")]


def test_ciphers_from_imapmux_section(make_mux, cert):
    """[imapmux] ciphers applies to listeners that set none."""
    m = _mux(make_mux, imapmux={"ciphers": "ECDHE-RSA-AES256-GCM-SHA384"})
    _refused(m, "implicit", _ctx(cert, ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-CHACHA20-POLY1305"))
    assert _works(m, "implicit", _ctx(cert, ssl.TLSVersion.TLSv1_2,
                                      "ECDHE-RSA-AES256-GCM-SHA384"))[1] == \
        "ECDHE-RSA-AES256-GCM-SHA384"


# ---------------------------------------------------------------------------
# TLS 1.3 ciphersuites

@pytest.mark.parametrize("kind", ["implicit", "starttls"])
def test_ciphersuites_honoured(make_mux, cert, kind):
    m = _mux(make_mux, ciphersuites="TLS_CHACHA20_POLY1305_SHA256")
    starttls = kind == "starttls"
    r = s_client(cert, _port(m, kind), "-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384",
                 "-msg", starttls=starttls)
    assert r.session == ("(NONE)", "(NONE)") and not r.logged_out, r
    assert r.received_fatal("handshake_failure"), r
    r = s_client(cert, _port(m, kind), "-tls1_3", "-ciphersuites",
                 "TLS_CHACHA20_POLY1305_SHA256", starttls=starttls)
    assert r.session == ("TLSv1.3", "TLS_CHACHA20_POLY1305_SHA256") and r.logged_out, r
    # A client offering OpenSSL's three default suites (AES-256-GCM first) gets ChaCha20.
    assert _works(m, kind, _ctx(cert, ssl.TLSVersion.TLSv1_3)) == \
        ("TLSv1.3", "TLS_CHACHA20_POLY1305_SHA256")


def test_default_ciphersuites(make_mux, cert):
    """Unset: OpenSSL's TLS 1.3 default (no CCM suites)."""
    m = _mux(make_mux)
    for suite in ("TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256",
                  "TLS_AES_128_GCM_SHA256"):
        r = s_client(cert, m.imaps_port, "-tls1_3", "-ciphersuites", suite)
        assert r.session == ("TLSv1.3", suite) and r.logged_out, r
    r = s_client(cert, m.imaps_port, "-tls1_3", "-ciphersuites", "TLS_AES_128_CCM_SHA256")
    assert r.session == ("(NONE)", "(NONE)"), r


# ---------------------------------------------------------------------------
# curves (groups)

@pytest.mark.parametrize("group,ok", [
    ("X25519", True), ("P-256", True), ("P-384", True),
    ("X448", False), ("P-521", False), ("ffdhe2048", False),
])
def test_default_curves(make_mux, cert, group, ok):
    """Default X25519:P-256:P-384; OpenSSL's own default would also take
    X448, P-521 and the ffdhe groups."""
    m = _mux(make_mux)
    r = s_client(cert, m.imaps_port, "-tls1_3", "-groups", group, "-msg")
    if ok:
        assert r.session[0] == "TLSv1.3" and r.logged_out, r
    else:
        assert r.session == ("(NONE)", "(NONE)") and r.received_fatal("handshake_failure"), r


@pytest.mark.parametrize("kind", ["implicit", "starttls"])
def test_curves_honoured(make_mux, cert, kind):
    m = _mux(make_mux, curves="P-384")
    starttls = kind == "starttls"
    for flag in ("-tls1_3", "-tls1_2"):
        r = s_client(cert, _port(m, kind), flag, "-groups", "X25519", "-msg", starttls=starttls)
        assert r.session == ("(NONE)", "(NONE)") and r.received_fatal("handshake_failure"), r
        r = s_client(cert, _port(m, kind), flag, "-groups", "P-384", starttls=starttls)
        assert r.logged_out and "Server Temp Key: ECDH, secp384r1, 384 bits" in r.out, r


# ---------------------------------------------------------------------------
# renegotiation and compression

# When to type "R": once the session is quiet. On an implicit listener that is
# after the greeting: application data arriving in the middle of the
# client's own renegotiation handshake makes s_client give up with
# "unexpected record", which would prove nothing. After STARTTLS (which
# s_client does itself) and with s_server, nothing comes unasked.
READY = {"implicit": b"* OK [CAPABILITY ", "starttls": b"Verify return code"}


@pytest.mark.parametrize("kind", ["implicit", "starttls"])
def test_client_renegotiation_refused(make_mux, cert, kind):
    m = _mux(make_mux)
    out, renegotiated = _renegotiate(cert, _port(m, kind), READY[kind],
                                     starttls=kind == "starttls")
    assert "RENEGOTIATING" in out, out[-3000:]
    assert not renegotiated, out[-3000:]
    # The server's answer: a no_renegotiation alert, which s_client makes fatal.
    assert re.search(r"<<< TLS 1.2, Alert \[length 0002\], warning no_renegotiation", out), \
        out[-3000:]
    assert "no renegotiation" in out, out[-3000:]
    # The proxy is unharmed.
    assert _works(m, kind, _ctx(cert))[0] == "TLSv1.3"


def test_client_renegotiation_refused_even_when_openssl_cnf_allows_it(make_mux, cert,
                                                                       permissive_cnf):
    """openssl.cnf turns client renegotiation back on; imapmux's
    SSL_OP_NO_RENEGOTIATION still refuses it."""
    m = _mux(make_mux, openssl_conf=permissive_cnf)
    out, renegotiated = _renegotiate(cert, m.imaps_port, READY["implicit"])
    assert "RENEGOTIATING" in out and not renegotiated, out[-3000:]
    assert "no renegotiation" in out, out[-3000:]


def test_renegotiation_probe_renegotiates_where_allowed(cert, key, permissive_cnf):
    """Control: the probe above does renegotiate with openssl s_server under
    the same openssl.cnf, and data flows afterwards."""
    srv = SServer(cert, key, "-tls1_2", env=dict(os.environ, OPENSSL_CONF=permissive_cnf))
    try:
        out, renegotiated = _renegotiate(cert, srv.port, b"Verify return code",
                                         after=b"after-renegotiation\n")
        assert "RENEGOTIATING" in out and renegotiated, out[-3000:]
        assert "no renegotiation" not in out, out[-3000:]
        assert b"after-renegotiation" in _read_until(srv.proc, b"after-renegotiation", 5)
    finally:
        srv.close()


def _client_hello_tls12(compression_methods):
    """A TLS 1.2 ClientHello offering ECDHE-RSA AES-GCM and ChaCha20, groups
    X25519/P-256/P-384, and the given compression methods."""
    ciphers = [0xC02F, 0xC030, 0xCCA8, 0x00FF]
    groups = struct.pack("!3H", 29, 23, 24)
    sigalgs = struct.pack("!4H", 0x0804, 0x0401, 0x0805, 0x0501)
    ext = (struct.pack("!HHH", 10, len(groups) + 2, len(groups)) + groups
           + struct.pack("!HHB", 11, 2, 1) + b"\x00"
           + struct.pack("!HHH", 13, len(sigalgs) + 2, len(sigalgs)) + sigalgs)
    body = (b"\x03\x03" + os.urandom(32) + b"\x00"
            + struct.pack("!H", 2 * len(ciphers)) + struct.pack("!%dH" % len(ciphers), *ciphers)
            + bytes([len(compression_methods)]) + bytes(compression_methods)
            + struct.pack("!H", len(ext)) + ext)
    msg = bytes([CLIENT_HELLO]) + struct.pack("!I", len(body))[1:] + body
    return bytes([HANDSHAKE]) + b"\x03\x01" + struct.pack("!H", len(msg)) + msg


def _server_hello(sock):
    """(version, cipher, compression method) of the ServerHello, read raw."""
    buf = b""
    deadline = time.monotonic() + 10
    while len(buf) < 5 or len(buf) < 5 + struct.unpack("!H", buf[3:5])[0]:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        chunk = sock.recv(65536)
        assert chunk, "closed before the ServerHello: %r" % buf
        buf += chunk
    assert buf[0] == HANDSHAKE and buf[5] == SERVER_HELLO, buf[:16]
    h = buf[9:]
    version, i = h[:2], 2 + 32
    i += 1 + h[i]
    cipher, compression = struct.unpack("!H", h[i:i + 2])[0], h[i + 2]
    return version, cipher, compression


def test_no_compression(make_mux, cert):
    """A ClientHello offering DEFLATE (1) before null (0) gets null."""
    m = _mux(make_mux)
    with socket.create_connection(("127.0.0.1", m.imaps_port), timeout=10) as s:
        s.sendall(_client_hello_tls12([1, 0]))
        version, cipher, compression = _server_hello(s)
    assert version == b"\x03\x03" and cipher in (0xC02F, 0xC030, 0xCCA8), (version, cipher)
    assert compression == 0
    # And s_client agrees.
    r = s_client(cert, m.imaps_port, "-tls1_2", "-comp")
    assert "Compression: NONE" in r.out and r.logged_out, r


# ---------------------------------------------------------------------------
# bad values: -t, start-up, SIGHUP

def _bad_conf(make_mux, section, key, value):
    """Write a config with key = value in section ("imapmux", "listen" = the
    implicit listener, "backend" = a TLS backend, "backend-none" = a
    tls = none backend); returns (path, line of the key)."""
    ports = (lab.free_port(), lab.free_port())
    listen_kv, imapmux = {}, {}
    backend = {"address": "127.0.0.1:%d" % lab.free_port(), "tls": "implicit"}
    if section == "imapmux":
        imapmux[key] = value
    elif section == "listen":
        listen_kv[key] = value
    else:
        backend[key] = value
        if section == "backend-none":
            backend["tls"] = "none"
    listens = _listens(make_mux.cert, make_mux.key, ports)
    listens[0][1].update(listen_kv)
    path, _, _ = make_mux.conf(listens=listens, ports=ports, imapmux=imapmux,
                               backends=[("a", backend)])
    with open(path) as f:
        lines = f.read().splitlines()
    return path, lines.index("%s = %s" % (key, value)) + 1


BAD = [
    ("listen", "ciphers", "NOPE:ECDHE+AESGCM", "[listen imaps]",
     "'NOPE' matches no TLS 1.2 cipher"),
    ("listen", "ciphers", "ECDHE+AESGCM:TLS_AES_128_GCM_SHA256", "[listen imaps]",
     "'TLS_AES_128_GCM_SHA256' matches no TLS 1.2 cipher (TLS 1.3 suites belong in "
     "ciphersuites)"),
    ("listen", "ciphers", "ECDHE+AESGCM:@BOGUS", "[listen imaps]", "invalid command"),
    ("listen", "ciphersuites", "TLS_AES_128_GCM_SHA256:TLS_AES_256_GCM_SHA348",
     "[listen imaps]", "'TLS_AES_256_GCM_SHA348' is not a TLS 1.3 ciphersuite"),
    ("backend", "ciphersuites", "ECDHE-RSA-AES128-GCM-SHA256", "[backend a]",
     "'ECDHE-RSA-AES128-GCM-SHA256' is not a TLS 1.3 ciphersuite (TLS 1.2 ciphers belong "
     "in ciphers)"),
    ("backend", "curves", "X25519:P-256:X9999", "[backend a]", "unknown group 'X9999'"),
    ("backend", "curves", "P-256:prime256v1", "[backend a]", "a group is listed twice"),
    ("backend-none", "ciphers", "HIGH:NOPE", "[backend a]", "'NOPE' matches no TLS 1.2 cipher"),
    ("imapmux", "curves", "X25519:NOPE", "[imapmux]", "unknown group 'NOPE'"),
]


# (Not "key": that name is conftest's fixture, which parametrizing would replace.)
@pytest.mark.parametrize("section,knob,value,label,why", BAD,
                         ids=["%s-%s-%d" % (b[0], b[1], i) for i, b in enumerate(BAD)])
def test_bad_list_refused_by_check_and_at_start(make_mux, section, knob, value, label, why):
    path, line = _bad_conf(make_mux, section, knob, value)
    want = "%s:%d: bad %s '%s' in %s: %s" % (path, line, knob, value, label, why)
    r = lab.check_config(path)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert r.stderr.startswith(want), (r.stderr, want)
    # Start-up: the same message, and no listener.
    r = subprocess.run([lab.IMAPMUX, "-c", path], capture_output=True, text=True, timeout=10,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 1 and r.stderr.startswith(want), (r.returncode, r.stderr)


def test_good_lists_pass_check(make_mux):
    ports = (lab.free_port(), lab.free_port())
    listens = _listens(make_mux.cert, make_mux.key, ports, ciphers="ECDHE+AESGCM:!SHA1:@STRENGTH",
                       ciphersuites="TLS_AES_128_GCM_SHA256 : TLS_CHACHA20_POLY1305_SHA256",
                       curves="X25519:secp384r1")
    path, _, _ = make_mux.conf(
        listens=listens, ports=ports,
        imapmux={"ciphers": "ECDHE+CHACHA20", "ciphersuites": "TLS_AES_256_GCM_SHA384",
                 "curves": "P-256"},
        backends=[("a", {"address": "127.0.0.1:%d" % lab.free_port(), "tls": "implicit",
                         "ciphers": "DEFAULT@SECLEVEL=1:!aNULL:!EXPORT", "curves": "P-521"})])
    r = lab.check_config(path)
    assert r.returncode == 0, r.stderr


def test_sighup_with_a_bad_list_keeps_the_running_policy(make_mux, cert):
    ports = (lab.free_port(), lab.free_port())
    mk = make_mux

    def listens(**kv):
        return _listens(mk.cert, mk.key, ports, **kv)

    chacha = _ctx(cert, ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-CHACHA20-POLY1305")
    m = make_mux(listens=listens(), ports=ports)
    assert _works(m, "implicit", chacha)[1] == "ECDHE-RSA-CHACHA20-POLY1305"

    # A new file with a valid restriction and a bad curves value: refused whole.
    make_mux.rewrite(m, listens=listens(ciphers="ECDHE-RSA-AES256-GCM-SHA384",
                                        curves="P-384:NOPE"))
    with open(m.conf_path) as f:
        line = f.read().splitlines().index("curves = P-384:NOPE") + 1
    m.signal(signal.SIGHUP)
    want = ("reload failed, keeping the running configuration: %s:%d: bad curves 'P-384:NOPE' "
            "in [listen imaps]: unknown group 'NOPE'" % (m.conf_path, line))
    wait_until(lambda: want in m.log_text(), 5, lambda: "no %r in log:\n%s"
               % (want, m.log_tail_text()))
    assert m.alive()
    for kind in ("implicit", "starttls"):
        assert _works(m, kind, chacha)[1] == "ECDHE-RSA-CHACHA20-POLY1305"
    r = s_client(cert, m.imaps_port, "-tls1_3", "-groups", "X25519")
    assert r.logged_out, r

    # The valid restriction alone: applied to new handshakes.
    make_mux.rewrite(m, listens=listens(ciphers="ECDHE-RSA-AES256-GCM-SHA384"))
    m.signal(signal.SIGHUP)
    wait_until(lambda: "configuration reloaded" in m.log_text(), 5, "reload")
    for kind in ("implicit", "starttls"):
        _refused(m, kind, chacha)


# ---------------------------------------------------------------------------
# toward the backend (real Dovecot)

def _login(m, ca_ctx, user):
    with imapc.Client(m.imaps_port, tls=ca_ctx) as c:
        c.greeting()
        tagged = c.cmd("l", "LOGIN %s %s" % (user, password(user)), timeout=15)[1]
        if tagged.startswith(b"l OK"):
            return tagged
        # A refused backend leaves the client session usable.
        _, t = c.cmd("n", "NOOP")
        assert t.startswith(b"n OK"), t
        return tagged


def _dovecot_tls_of(dv, user):
    """The tls=<...> of user's logins in dv's log (Dovecot logs asynchronously)."""
    pat = re.compile(r"Login: user=<%s>.* tls=<([^>]*)>" % re.escape(user))
    found = []

    def seen():
        found[:] = pat.findall(dv.log_text())
        return found
    wait_until(seen, 5, lambda: "no login of %s in %s" % (user, dv.log_tail_text()))
    return found


# What imapmux logs when a backend's handshake fails on the policy: Dovecot
# hangs up without an alert; a server that sends one gets its name logged.
BACKEND_TLS_FAILED = re.compile(r'event=login_failed .* result=unavailable .*reason="backend a: '
                                r'(TLS handshake: closed by the peer|sslv3 alert handshake failure)')


def _backend_refused(m, dv, ca_ctx, user, why):
    tagged = _login(m, ca_ctx, user)
    assert tagged.startswith(b"l NO [UNAVAILABLE]"), tagged
    wait_until(lambda: why in dv.log_text(), 5,
               lambda: "Dovecot did not log %r:%s" % (why, dv.log_tail_text()))
    assert not re.search(r"Login: user=<%s>" % user, dv.log_text())
    assert BACKEND_TLS_FAILED.search(m.log_text()), m.log_tail_text()


@pytest.mark.parametrize("tls,user", [("implicit", "alice"), ("starttls", "bob")])
def test_backend_ciphersuites_dovecot_cannot_meet(make_mux, dovecot, ca_ctx, cert, tls, user):
    """Dovecot offers OpenSSL's default TLS 1.3 suites, none of them CCM."""
    m = make_mux(backends=[("a", backend_section(dovecot, tls=tls, ca=cert,
                                                 ciphersuites="TLS_AES_128_CCM_SHA256"))])
    _backend_refused(m, dovecot, ca_ctx, user, "no shared cipher")


@pytest.mark.parametrize("tls,user", [("implicit", "tlsimpl"), ("starttls", "tlsstart")])
def test_backend_ciphersuites_dovecot_can_meet(make_mux, dovecot, ca_ctx, cert, tls, user):
    m = make_mux(backends=[("a", backend_section(dovecot, tls=tls, ca=cert,
                                                 ciphersuites="TLS_CHACHA20_POLY1305_SHA256"))])
    assert _login(m, ca_ctx, user).startswith(b"l OK [CAPABILITY "), user
    tls_of = _dovecot_tls_of(dovecot, user)
    assert tls_of and all(t.startswith("TLSv1.3 with cipher TLS_CHACHA20_POLY1305_SHA256")
                          for t in tls_of), tls_of


@pytest.mark.parametrize("tls,user", [("implicit", "carol"), ("starttls", "dave")])
def test_backend_ciphers_tls12_dovecot_cannot_meet(make_mux, dovecot_tls12, ca_ctx, cert, tls,
                                                   user):
    m = make_mux(backends=[("a", backend_section(dovecot_tls12, tls=tls, ca=cert,
                                                 ciphers="ECDHE-RSA-AES128-GCM-SHA256"))])
    _backend_refused(m, dovecot_tls12, ca_ctx, user, "no shared cipher")


@pytest.mark.parametrize("tls,user,ciphers", [
    ("implicit", "erin", "ECDHE-RSA-AES256-GCM-SHA384"),
    ("starttls", "frank", "ECDHE-RSA-AES256-GCM-SHA384"),
    ("implicit", "grace", None),  # the default list includes it
])
def test_backend_ciphers_tls12_dovecot_can_meet(make_mux, dovecot_tls12, ca_ctx, cert, tls,
                                                user, ciphers):
    m = make_mux(backends=[("a", backend_section(dovecot_tls12, tls=tls, ca=cert,
                                                 ciphers=ciphers))])
    assert _login(m, ca_ctx, user).startswith(b"l OK [CAPABILITY "), user
    tls_of = _dovecot_tls_of(dovecot_tls12, user)
    assert tls_of and all(t.startswith("TLSv1.2 with cipher ECDHE-RSA-AES256-GCM-SHA384")
                          for t in tls_of), tls_of
