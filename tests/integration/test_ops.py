"""The command line, signals and logs (SPEC: "Command line"; "Credentials
never appear in logs")."""

import base64
import re
import signal
import subprocess
import time

import pytest

import imapc
import lab
from conftest import CANARY_PASSWORD, CANARY_USER, password


# ---------------------------------------------------------------------------
# credentials never in logs

def _secret_forms(user, pw):
    forms = {pw}
    for authzid in ("", user):
        forms.add(base64.b64encode(("%s\0%s\0%s" % (authzid, user, pw)).encode()).decode())
    forms.add(base64.b64encode(pw.encode()).decode())
    forms.add(pw.encode().hex())
    return forms


def test_credentials_never_in_logs(make_mux, ca_ctx):
    m = make_mux(imapmux={"log_level": "debug"}, plaintext_auth=True)
    wrong = CANARY_PASSWORD[::-1] + "-Wrong"
    secrets = _secret_forms(CANARY_USER, CANARY_PASSWORD) | _secret_forms(CANARY_USER, wrong)

    def session(port, tls, steps):
        with imapc.Client(port, tls=tls) as c:
            c.greeting()
            for i, (kind, pw) in enumerate(steps):
                tag = "t%d" % i
                if kind == "login":
                    _, tagged = c.cmd(tag, "LOGIN %s %s" % (CANARY_USER, imapc.quote(pw)))
                elif kind == "literal":
                    raw = pw.encode()
                    c.send(b"%s LOGIN %s {%d+}\r\n%s\r\n" % (tag.encode(), CANARY_USER.encode(),
                                                             len(raw), raw))
                    _, tagged = c.read_until_tagged(tag)
                elif kind == "ir":
                    _, tagged = c.cmd(tag, "AUTHENTICATE PLAIN " + imapc.plain_ir(CANARY_USER, pw))
                else:  # continuation
                    c.send(b"%s AUTHENTICATE PLAIN\r\n" % tag.encode())
                    assert c.readline().startswith(b"+")
                    c.send(imapc.plain_ir(CANARY_USER, pw).encode() + b"\r\n")
                    _, tagged = c.read_until_tagged(tag)
                want = b"OK" if pw == CANARY_PASSWORD else b"NO"
                assert tagged.split()[1] == want, (kind, tagged)
                if want == b"OK":
                    c.cmd("x", "SELECT INBOX")
                    return

    for kind in ("login", "literal", "ir", "cont"):
        session(m.imaps_port, ca_ctx, [(kind, wrong), (kind, CANARY_PASSWORD)])
    # plaintext listener (allow_plaintext_auth = yes) too
    session(m.imap_port, None, [("login", wrong), ("login", CANARY_PASSWORD)])
    time.sleep(0.3)
    m.signal(signal.SIGTERM)
    m.expect_exit = True
    m.wait(10)
    log = m.log_text()
    assert log.strip(), "imapmux wrote no log at log_level = debug"
    leaked = sorted(s for s in secrets if s in log)
    assert not leaked, "credentials in the log: %r" % leaked


# ---------------------------------------------------------------------------
# signals

def test_sigterm_drains(make_mux, ca_ctx):
    m = make_mux(imapmux={"shutdown_timeout": "3s"})
    with imapc.Client(m.imaps_port, tls=ca_ctx) as idle, \
            imapc.Client(m.imaps_port, tls=ca_ctx) as idling, \
            imapc.Client(m.imaps_port, tls=ca_ctx) as pre:
        for c in (idle, idling, pre):
            c.greeting()
        idle.login("draining", password("draining"))
        idle.cmd("s", "SELECT INBOX")
        idling.login("draining", password("draining"))
        idling.cmd("s", "SELECT INBOX")
        idling.cmd_send("t", "IDLE")
        assert idling.readline().startswith(b"+")
        m.expect_exit = True
        t0 = time.monotonic()
        m.signal(signal.SIGTERM)
        for c in (idle, idling):
            rest = c.expect_closed(6)
            assert [x for x in rest.split(b"\r\n") if x.startswith(b"* BYE")], rest
        rc = m.wait(6)
        elapsed = time.monotonic() - t0
        assert rc is not None, "imapmux still running %.1fs after SIGTERM" % elapsed
        assert elapsed < 3 + 2, elapsed
        assert rc >= 0, "imapmux died by signal %d" % -rc
        # it stopped accepting
        lab.wait_closed(m.imaps_port, 2)


def test_sigterm_waits_for_busy_session_at_most_shutdown_timeout(make_mux, ca_ctx, dovecot):
    """A session in the middle of a command is not idle: imapmux waits for it
    but not past shutdown_timeout."""
    m = make_mux(imapmux={"shutdown_timeout": "2s"})
    with imapc.Client(m.imaps_port, tls=ca_ctx) as c:
        c.greeting()
        c.login("draining", password("draining"))
        # A sync APPEND whose literal never comes keeps the session busy.
        c.send(b"a APPEND INBOX {100}\r\n")
        assert c.readline().startswith(b"+")
        m.expect_exit = True
        t0 = time.monotonic()
        m.signal(signal.SIGTERM)
        rest = c.expect_closed(6)
        assert [x for x in rest.split(b"\r\n") if x.startswith(b"* BYE")], rest
        rc = m.wait(8)
        elapsed = time.monotonic() - t0
        assert rc is not None, "imapmux still running 8s after SIGTERM (shutdown_timeout 2s)"
        assert elapsed < 2 + 2, elapsed
        assert elapsed > 1.5, "a busy session was cut before shutdown_timeout (%.1fs)" % elapsed


def test_sigint_exits_at_once(make_mux, ca_ctx):
    m = make_mux(imapmux={"shutdown_timeout": "30s"})
    with imapc.Client(m.imaps_port, tls=ca_ctx) as c:
        c.greeting()
        c.login("draining", password("draining"))
        m.expect_exit = True
        m.allow_leaks = True
        m.signal(signal.SIGINT)
        assert m.wait(3) is not None, "imapmux still running 3s after SIGINT"
        c.expect_closed(3)


def _dovecot_logins(dv, user):
    return len(re.findall(r"Login: user=<%s>" % re.escape(user), dv.log_text()))


def test_sighup_reloads_backends_for_new_sessions(make_mux, dovecot, fresh_dovecot, ca_ctx):
    """README: new sessions use the new configuration, open ones keep theirs."""
    from conftest import backend_section
    m = make_mux(backends=[("a", backend_section(dovecot))])
    with imapc.Client(m.imaps_port, tls=ca_ctx) as old:
        old.greeting()
        old.login("bob", password("bob"))
        old.cmd("s", "SELECT INBOX")
        make_mux.rewrite(m, backends=[("a", backend_section(fresh_dovecot))])
        m.signal(signal.SIGHUP)
        deadline = time.monotonic() + 5
        while True:
            with imapc.Client(m.imaps_port, tls=ca_ctx) as new:
                new.greeting()
                new.login("heidi", password("heidi"))
            time.sleep(0.1)
            if _dovecot_logins(fresh_dovecot, "heidi") or time.monotonic() > deadline:
                break
        assert _dovecot_logins(fresh_dovecot, "heidi"), "new sessions still go to the old backend"
        _, tagged = old.cmd("n", "NOOP")
        assert tagged.startswith(b"n OK"), tagged


def test_sighup_with_a_broken_config_keeps_running(make_mux, ca_ctx):
    m = make_mux()
    with open(m.conf_path, "a") as f:
        f.write("\n[imapmux]\nthis is not valid\n")
    m.signal(signal.SIGHUP)
    time.sleep(0.5)
    assert m.alive(), "imapmux exited on a reload with a broken config"
    with imapc.Client(m.imaps_port, tls=ca_ctx) as c:
        c.greeting()
        c.login("bob", password("bob"))


def test_sighup_reloads_certificates(make_mux, ca_ctx, cert_pair, other_cert_pair, tmp_path):
    import shutil
    import ssl
    cert, key = str(tmp_path / "live-cert.pem"), str(tmp_path / "live-key.pem")
    shutil.copy(cert_pair[0], cert)
    shutil.copy(cert_pair[1], key)
    m = make_mux(cert=cert, key=key)
    other_ctx = lab.client_context(other_cert_pair[0])
    with imapc.Client(m.imaps_port, tls=ca_ctx) as c:
        c.greeting()
        shutil.copy(other_cert_pair[0], cert)
        shutil.copy(other_cert_pair[1], key)
        m.signal(signal.SIGHUP)
        time.sleep(0.5)
        # The open session is untouched ...
        _, tagged = c.cmd("n", "NOOP")
        assert tagged.startswith(b"n OK"), tagged
    # ... and new handshakes present the new certificate.
    with imapc.Client(m.imaps_port, tls=other_ctx) as c:
        c.greeting()
    with pytest.raises(ssl.SSLCertVerificationError):
        imapc.Client(m.imaps_port, tls=ca_ctx)


def test_sighup_keeps_sessions(make_mux, ca_ctx):
    m = make_mux()
    with imapc.Client(m.imaps_port, tls=ca_ctx) as c:
        c.greeting()
        c.login("bob", password("bob"))
        c.cmd("s", "SELECT INBOX")
        m.signal(signal.SIGHUP)
        time.sleep(0.5)
        assert m.alive(), "imapmux exited on SIGHUP"
        _, tagged = c.cmd("n", "NOOP")
        assert tagged.startswith(b"n OK"), tagged
    with imapc.Client(m.imaps_port, tls=ca_ctx) as c:
        c.greeting()
        c.login("bob", password("bob"))


# ---------------------------------------------------------------------------
# -t and -V

def test_check_config_good(make_mux):
    path, _, _ = make_mux.conf()
    r = lab.check_config(path)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)


def test_check_config_good_backend_down(make_mux):
    path, _, _ = make_mux.conf(backends=[("a", {"address": "127.0.0.1:%d" % lab.free_port()})])
    r = lab.check_config(path)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)


def _line_of(text, needle):
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError("%r not in config" % needle)


BAD_CASES = {
    # name: (how to break a good config, the line that must be blamed)
    "unknown_key": (lambda t: t.replace("[imapmux]\n", "[imapmux]\nno_such_key = 1\n", 1),
                    "no_such_key"),
    "bad_duration": (lambda t: re.sub(r"preauth_timeout = \S+", "preauth_timeout = 10 parsecs", t),
                     "preauth_timeout"),
    "bad_bool": (lambda t: t.replace("allow_plaintext_auth = no", "allow_plaintext_auth = perhaps"),
                 "allow_plaintext_auth"),
    "bad_enum": (lambda t: t.replace("tls = implicit", "tls = sometimes"), "tls = sometimes"),
    "unknown_section": (lambda t: t + "\n[nonsense]\n", "[nonsense]"),
    "duplicate_key": (lambda t: t.replace("workers = 2\n", "workers = 2\nworkers = 3\n"),
                      "workers = 3"),
    "bad_address": (lambda t: re.sub(r"(\[backend a\]\naddress = )\S+", r"\g<1>127.0.0.1:notaport",
                                     t), "127.0.0.1:notaport"),
    "no_equals": (lambda t: t.replace("[imapmux]\n", "[imapmux]\njust some words\n", 1),
                  "just some words"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_check_config_bad(make_mux, case):
    path, _, _ = make_mux.conf()
    with open(path) as f:
        good = f.read()
    breaker, needle = BAD_CASES[case]
    bad = breaker(good)
    assert bad != good
    with open(path, "w") as f:
        f.write(bad)
    line = _line_of(bad, needle)
    r = lab.check_config(path)
    assert r.returncode == 1, (r.returncode, r.stdout, r.stderr)
    assert re.search(r"^%s:%d: \S" % (re.escape(path), line), r.stderr, re.M), \
        "want %s:%d: reason on stderr, got %r" % (path, line, r.stderr)


def test_check_config_missing_cert(make_mux):
    path, _, _ = make_mux.conf()
    with open(path) as f:
        text = f.read()
    text = text.replace(make_mux.cert, "/nonexistent/cert.pem", 1)
    with open(path, "w") as f:
        f.write(text)
    r = lab.check_config(path)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert re.search(r"^%s:\d+: \S" % re.escape(path), r.stderr, re.M), r.stderr


def test_check_config_missing_file(tmp_path):
    path = str(tmp_path / "nope.conf")
    r = lab.check_config(path)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert path in r.stderr


def test_version():
    r = subprocess.run([lab.IMAPMUX, "-V"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, r
    assert (r.stdout + r.stderr).strip()
