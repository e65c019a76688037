"""Post-login capabilities: learned per backend, refreshed on change, and
UNAUTHENTICATE kept from clients (README "Backend connections").

Dovecot puts its post-login capabilities in every LOGIN's tagged OK, so
these tests watch the cache learn and follow a change: Dovecot restarted on
the same port with `imap_capability = +X...` must show in the very next
login's OK, be counted on /metrics and be logged. The cache standing in for
an OK without capabilities is shown against Cyrus in test_unauth.py.
"""

import pytest

import imapc
from conftest import backend_section, password, scrape_metrics, wait_until
import lab

TIMEOUT = 8.0


def start(make_mux, dv, cert, **bk):
    stats_port = lab.free_port()
    kv = {"check_interval": 0, "reuse_ttl": 0}
    kv.update(bk)
    backends = [("a", backend_section(dv, tls="implicit", ca=cert, **kv))]
    m = make_mux(backends=backends,
                 imapmux={"workers": 1, "stats_listen": "127.0.0.1:%d" % stats_port,
                          "auth_fail_delay": 0, "log_level": "debug"})
    lab.wait_listening(stats_port, timeout=10, proc=m.proc)
    m.stats_port = stats_port
    return m


def login_caps(m, ca_ctx, user):
    """Log in through m; returns (client, capabilities of the tagged OK)."""
    c = imapc.Client(m.imaps_port, tls=ca_ctx, timeout=TIMEOUT)
    c.greeting()
    _, tagged = c.cmd("l", "LOGIN %s %s" % (imapc.quote(user), imapc.quote(password(user))))
    assert tagged.startswith(b"l OK [CAPABILITY "), tagged
    return c, imapc.caps_of(tagged)


def logout(c):
    _, t = c.cmd("o", "LOGOUT")
    assert t.startswith(b"o OK"), t
    c.close()


def test_changed_backend_capabilities_reach_the_next_login(make_mux, fresh_dovecot, cert,
                                                           ca_ctx):
    dv = fresh_dovecot
    m = start(make_mux, dv, cert, pool_min_idle=0)

    c, caps1 = login_caps(m, ca_ctx, "alice")
    assert "IDLE" in caps1 and "XIMAPMUXNEW" not in caps1, caps1
    logout(c)
    s = scrape_metrics(m.stats_port)
    assert s["imapmux_backend_capability_changes_total"] == 0, s
    assert s["imapmux_backend_capability_queries_total"] == 0, s

    # The same backend, restarted with one more post-login capability.
    dv.stop()
    lab.wait_closed(dv.imaps_port, timeout=5)
    dv.extra_conf = "imap_capability = +XIMAPMUXNEW\n"
    dv.start()

    c, caps2 = login_caps(m, ca_ctx, "bob")
    assert caps2 - caps1 == {"XIMAPMUXNEW"} and caps1 <= caps2, (caps1, caps2)
    untagged, t = c.cmd("c", "CAPABILITY")
    assert t.startswith(b"c OK"), t
    assert [imapc.caps_of(x) for x in untagged] == [caps2], untagged
    logout(c)

    s = scrape_metrics(m.stats_port)
    assert s["imapmux_backend_capability_changes_total"] == 1, s
    # Dovecot's OK always carries them: never asked separately.
    assert s["imapmux_backend_capability_queries_total"] == 0, s
    wait_until(lambda: "backend a: post-login capabilities changed: +XIMAPMUXNEW\n"
               in m.log_text(), 5, "the change logged")

    # Unchanged capabilities are not a change.
    c, caps3 = login_caps(m, ca_ctx, "alice")
    assert caps3 == caps2
    logout(c)
    assert scrape_metrics(m.stats_port)["imapmux_backend_capability_changes_total"] == 1


@pytest.mark.parametrize("how", ["plain", "selected"])
def test_client_unauthenticate_is_refused_by_the_proxy(make_mux, dovecot, cert, ca_ctx, how):
    """A logged-in client must not reach not-authenticated state on the
    backend (it could then log in as anybody past imapmux's checks): the
    proxy answers the command itself, and the session goes on."""
    m = start(make_mux, dovecot, cert)
    c, caps = login_caps(m, ca_ctx, "alice")
    assert "UNAUTHENTICATE" not in caps
    if how == "selected":
        _, t = c.cmd("s", "SELECT INBOX")
        assert t.startswith(b"s OK"), t
    untagged, t = c.cmd("u", "UNAUTHENTICATE")
    # Dovecot's own answer would be "u BAD Error in IMAP command ...".
    assert t == b"u BAD Unknown command.\r\n", t
    assert untagged == [], untagged
    # Still alice, still logged in.
    untagged, t = c.cmd("n", "NAMESPACE")
    assert t.startswith(b"n OK"), t
    _, t = c.cmd("l2", "LOGIN bob %s" % imapc.quote(password("bob")))
    assert t.startswith(b"l2 BAD") or t.startswith(b"l2 NO"), t
    logout(c)
