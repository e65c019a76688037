"""Static routing over two real backends: fallback = NAME and fallback = hash."""

import re
import time

import pytest

import imapc
from conftest import _start_dovecot, backend_section, password

HASH_USERS = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi", "ivan",
              "judy", "piper", "curly"]


@pytest.fixture(scope="module")
def dovecot_b(cert, key):
    d = _start_dovecot(cert, key, "dovecot-b")
    yield d
    d.cleanup()


def _logins(dv, user):
    return len(re.findall(r"imap-login: Info: Login: user=<%s>" % re.escape(user), dv.log_text()))


def _backend_of(mux, ca_ctx, user, backends):
    """Log user in through mux; the name of the Dovecot that saw the login."""
    before = {name: _logins(dv, user) for name, dv in backends.items()}
    with imapc.Client(mux.imaps_port, tls=ca_ctx) as c:
        c.greeting()
        c.login(user, password(user))
        _, tagged = c.cmd("s", "SELECT INBOX")
        assert tagged.startswith(b"s OK"), tagged
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        grew = [name for name, dv in backends.items() if _logins(dv, user) > before[name]]
        if grew:
            assert len(grew) == 1, grew
            return grew[0]
        time.sleep(0.05)
    raise AssertionError("no backend logged %s in" % user)


def test_fallback_names_a_backend(make_mux, dovecot, dovecot_b, ca_ctx):
    m = make_mux(backends=[("a", backend_section(dovecot)), ("b", backend_section(dovecot_b))],
                 routing={"lookup": "static", "fallback": "b"})
    backends = {"a": dovecot, "b": dovecot_b}
    for user in ("alice", "bob"):
        assert _backend_of(m, ca_ctx, user, backends) == "b"


def test_fallback_hash_spreads_and_is_stable(make_mux, dovecot, dovecot_b, ca_ctx):
    m = make_mux(backends=[("a", backend_section(dovecot)), ("b", backend_section(dovecot_b))],
                 routing={"lookup": "static", "fallback": "hash"})
    backends = {"a": dovecot, "b": dovecot_b}
    first = {u: _backend_of(m, ca_ctx, u, backends) for u in HASH_USERS}
    assert set(first.values()) == {"a", "b"}, first
    for u in HASH_USERS[:4]:
        assert _backend_of(m, ca_ctx, u, backends) == first[u], u
    # A second imapmux with the same backends agrees (stateless instances).
    m2 = make_mux(backends=[("a", backend_section(dovecot)), ("b", backend_section(dovecot_b))],
                  routing={"lookup": "static", "fallback": "hash"})
    for u in HASH_USERS[:4]:
        assert _backend_of(m2, ca_ctx, u, backends) == first[u], u


def test_fallback_hash_avoids_a_dead_backend(make_mux, dovecot, fresh_dovecot, ca_ctx):
    """hash is over *healthy* backends: with b down, every login still works."""
    m = make_mux(backends=[("a", backend_section(dovecot)),
                           ("b", backend_section(fresh_dovecot, connect_timeout="1s",
                                                 check_interval="0.5s", check_fall=2))],
                 routing={"lookup": "static", "fallback": "hash"})
    backends = {"a": dovecot, "b": fresh_dovecot}
    first = {u: _backend_of(m, ca_ctx, u, backends) for u in HASH_USERS}
    on_b = [u for u, b in first.items() if b == "b"]
    assert on_b, first
    fresh_dovecot.stop()
    deadline = time.monotonic() + 8
    for u in on_b:
        while True:
            with imapc.Client(m.imaps_port, tls=ca_ctx, timeout=15) as c:
                c.greeting()
                _, tagged = c.cmd("l", "LOGIN %s %s" % (u, password(u)))
            if tagged.startswith(b"l OK") or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert tagged.startswith(b"l OK"), (u, tagged)
