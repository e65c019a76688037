"""Redis keys built from a long [redis] prefix and long user names (review
finding).

Every key is prefix + kind + id: "<prefix>authfail:user:<user>",
"<prefix>route:<user>", "<prefix>user:<user>", "<prefix>authfail:ip:<ip>",
and the channel "<prefix>events". imapmux built them in fixed stack buffers
(user name bound + 128 bytes; 128 for the address key) without checking the
prefix's length: a prefix of about 120 bytes and a 255-byte user name wrote
past the buffer and crashed it. The fix bounds the prefix to 64 bytes in the
configuration (`imapmux -t` exits 1 with "file:line: ..." past it) and
builds every key with bounds from its inputs.

With the longest prefix allowed, the longest user name (255 bytes) must get
a tagged NO through every path that builds a key (brute-force counters,
routing lookup, auth = redis hash lookup) and imapmux must go on serving; a
256-byte name is refused as over-long; a kick event naming 255 bytes is
harmless.
"""

import re

import pytest

import imapc
import lab

pytest.register_assert_rewrite("conftest_redis")
from conftest_redis import (  # noqa: E402
    backend, connect, crypt_hash, dv_password, login_cmd, publish, rd_password,
    redis_section, set_password, wait_subscribed)

# The fixtures rdv_a (Dovecot with USERS_R).
pytest_plugins = ["conftest_redis"]

TIMEOUT = 8.0
LONG_USER = b"u" * 255
TOO_LONG_USER = b"v" * 256


def long_prefix(n):
    """A prefix of exactly n bytes, unique to this run (keys never shared)."""
    import uuid
    head = "it-long-%s-" % uuid.uuid4().hex[:8]
    p = head + "p" * (n - len(head) - 1) + ":"
    assert len(p) == n
    return p


def conf_with_prefix(make_mux, redis, prefix):
    path, _, _ = make_mux.conf(redis=redis_section(redis, prefix),
                               routing={"lookup": "redis", "fallback": "a"})
    return path


def prefix_line(path):
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if line.startswith("prefix = "):
                return i
    raise AssertionError("no prefix line in %s" % path)


@pytest.mark.parametrize("n", [0, 1, 63, 64])
def test_prefix_up_to_64_bytes_accepted(make_mux, redis, n):
    prefix = long_prefix(n) if n >= 20 else "x" * n
    path = conf_with_prefix(make_mux, redis, prefix)
    r = lab.check_config(path)
    assert r.returncode == 0, (n, r.stdout, r.stderr)


@pytest.mark.parametrize("n", [65, 120, 200])
def test_prefix_over_64_bytes_refused(make_mux, redis, n):
    path = conf_with_prefix(make_mux, redis, long_prefix(n))
    r = lab.check_config(path)
    assert r.returncode == 1, (n, r.returncode, r.stdout, r.stderr)
    assert re.search(r"%s:%d: " % (re.escape(path), prefix_line(path)), r.stderr), r.stderr


def start(make_mux, redis, prefix, dv, **im):
    conf = {"workers": 1, "auth_fail_limit": 10, "auth_fail_delay": "100ms"}
    conf.update(im)
    m = make_mux(backends=[("a", backend(dv))], redis=redis_section(redis, prefix),
                 routing={"lookup": "redis", "fallback": "a"}, imapmux=conf)
    wait_subscribed(redis, prefix, 1)
    return m


def attempt(m, ca_ctx, user, pw, tag="l"):
    """The tagged answer, or what happened instead."""
    try:
        with connect(m.imaps_port, ca_ctx, timeout=TIMEOUT) as c:
            _, tagged = c.cmd(tag, login_cmd(user, pw), timeout=TIMEOUT)
            return tagged
    except (imapc.Closed, imapc.Timeout, OSError) as e:
        return ("no answer: %s" % e).encode()


def still_serving(m, ca_ctx, user, pw):
    assert m.alive(), "imapmux died (status %s)" % m.returncode
    tagged = attempt(m, ca_ctx, user, pw, tag="ok")
    assert tagged.startswith(b"ok OK"), tagged
    assert m.alive()


@pytest.mark.parametrize("auth", ["backend", "redis"])
def test_longest_user_with_longest_prefix(make_mux, redis, rdv_a, ca_ctx, auth):
    prefix = long_prefix(64)
    user = "rauth" if auth == "redis" else "rok"
    if auth == "redis":
        set_password(redis, prefix, user, crypt_hash(rd_password(user)))
        set_password(redis, prefix, LONG_USER, crypt_hash(rd_password(user)))
        pw = rd_password(user)
    else:
        pw = dv_password(user)
    m = start(make_mux, redis, prefix, rdv_a, auth=auth)
    for i in range(3):
        tagged = attempt(m, ca_ctx, LONG_USER, "wrong-password", tag="w%d" % i)
        assert tagged.startswith(b"w%d NO" % i), tagged
        assert m.alive(), "imapmux died on a 255-byte user name (status %s)" % m.returncode
    tagged = attempt(m, ca_ctx, TOO_LONG_USER, "wrong-password", tag="x")
    assert tagged.startswith(b"x NO"), tagged
    still_serving(m, ca_ctx, user, pw)


def test_kick_of_longest_name(make_mux, redis, rdv_a, ca_ctx):
    prefix = long_prefix(64)
    m = start(make_mux, redis, prefix, rdv_a, auth="backend")
    for name in (LONG_USER, TOO_LONG_USER, b"k" * 1000):
        assert publish(redis, prefix, b"kick " + name) >= 1
    still_serving(m, ca_ctx, "rok", dv_password("rok"))


def test_200_byte_prefix_never_runs(make_mux, redis, rdv_a, ca_ctx):
    """A 200-byte prefix is refused by the configuration; a build that takes
    it must then at least survive the longest user name (builds before the
    fix crashed here: keys written past a stack buffer)."""
    prefix = long_prefix(200)
    path = conf_with_prefix(make_mux, redis, prefix)
    r = lab.check_config(path)
    if r.returncode == 1:
        assert re.search(r"%s:%d: " % (re.escape(path), prefix_line(path)), r.stderr), r.stderr
        return
    assert r.returncode == 0, (r.returncode, r.stderr)
    m = start(make_mux, redis, prefix, rdv_a, auth="backend")
    tagged = attempt(m, ca_ctx, LONG_USER, "wrong-password", tag="w")
    m.expect_exit = not m.alive()
    assert m.alive(), ("a 200-byte prefix was accepted, and a 255-byte user name "
                       "killed imapmux (status %s, answer %r)" % (m.returncode, tagged))
    pytest.fail("a 200-byte [redis] prefix was accepted by `imapmux -t`", pytrace=False)
