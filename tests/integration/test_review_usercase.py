"""User-name case (review finding): Dovecot folds user names (its default
auth_username_format = %Lu), so "frank", "Frank" and "FRANK" are one
mailbox. imapmux must then count them as one user too, or a guesser gets a
fresh brute-force budget per spelling, and a kick of "frank" misses a
session logged in as "FRANK".

[imapmux] username_case = fold (the default) folds ASCII letters for the
proxy's bookkeeping (brute-force counts, kick, kept sessions); keep compares
byte for byte, for backends that tell case apart. Backends inherit it.

auth = backend, Redis for the counters and the events channel, client
addresses 127.0.0.x so that only the per-user budget matters.
"""

import pytest

import imapc
import lab
from conftest import password, scrape_metrics

pytest.register_assert_rewrite("conftest_redis")
from conftest_redis import (  # noqa: E402
    connect, login_cmd, publish, redis_section, wait_subscribed)

# The fixture prefix.
pytest_plugins = ["conftest_redis"]

LIMIT = 3
TIMEOUT = 8.0


def start(make_mux, redis, prefix, **im):
    stats_port = lab.free_port()
    conf = {"workers": 1, "auth": "backend", "auth_fail_limit": LIMIT,
            "auth_fail_delay": "100ms", "stats_listen": "127.0.0.1:%d" % stats_port}
    conf.update(im)
    m = make_mux(redis=redis_section(redis, prefix), imapmux=conf,
                 routing={"lookup": "redis", "fallback": "a"})
    lab.wait_listening(stats_port, timeout=10, proc=m.proc)
    m.stats_port = stats_port
    return m


def counts(m):
    s = scrape_metrics(m.stats_port)
    return int(s["imapmux_sessions_reused_total"]), int(s["imapmux_backend_logins_total"])


def attempt(m, ca_ctx, user, pw, src, tag="l"):
    with connect(m.imaps_port, ca_ctx, source=src, timeout=TIMEOUT) as c:
        _, tagged = c.cmd(tag, login_cmd(user, pw), timeout=TIMEOUT)
        return tagged


def fail_three(m, ca_ctx, name, right):
    for i, src in enumerate(("127.0.0.2", "127.0.0.3", "127.0.0.4")):
        tagged = attempt(m, ca_ctx, name, "wrong-" + right, src, tag="f%d" % i)
        assert tagged.startswith(b"f%d NO [AUTHENTICATIONFAILED]" % i), tagged


@pytest.mark.parametrize("failed_as,then_as", [("frank", "FRANK"), ("GRACE", "grace"),
                                               ("heidi", "HeiDi")])
def test_fail_budget_is_one_per_folded_name(make_mux, dovecot, redis, prefix, ca_ctx,
                                             failed_as, then_as):
    right = password(failed_as.lower())
    m = start(make_mux, redis, prefix)
    fail_three(m, ca_ctx, failed_as, right)
    tagged = attempt(m, ca_ctx, then_as, right, "127.0.0.5")
    assert tagged.startswith(b"l NO [AUTHENTICATIONFAILED]"), (
        "%d failures as %r, then %r with the right password: %r"
        % (LIMIT, failed_as, then_as, tagged))


def test_keep_gives_each_spelling_its_budget(make_mux, dovecot, redis, prefix, ca_ctx):
    right = password("ivan")
    m = start(make_mux, redis, prefix, username_case="keep")
    fail_three(m, ca_ctx, "ivan", right)
    tagged = attempt(m, ca_ctx, "ivan", right, "127.0.0.5")
    assert tagged.startswith(b"l NO [AUTHENTICATIONFAILED]"), tagged
    # Dovecot folds "IVAN" to ivan: the right password logs in.
    tagged = attempt(m, ca_ctx, "IVAN", right, "127.0.0.5")
    assert tagged.startswith(b"l OK"), tagged


def test_kick_lower_case_closes_upper_case_sessions(make_mux, dovecot, redis, prefix,
                                                    ca_ctx):
    user, shown = "judy", "JUDY"
    m = start(make_mux, redis, prefix, auth_fail_limit=0)
    wait_subscribed(redis, prefix, 1)

    def login():
        c = connect(m.imaps_port, ca_ctx, timeout=TIMEOUT)
        _, tagged = c.cmd("l", "LOGIN %s %s" % (shown, imapc.quote(password(user))))
        assert tagged.startswith(b"l OK"), tagged
        _, tagged = c.cmd("s", "SELECT INBOX")
        assert tagged.startswith(b"s OK"), tagged
        return c

    live = login()
    kept = login()
    kept.send(b"o LOGOUT\r\n")
    got = kept.expect_closed(5)
    assert b"o OK" in got, got
    kept.close()
    assert counts(m) == (0, 2)

    assert publish(redis, prefix, "kick %s" % user) >= 1
    try:
        got = live.expect_closed(5)
    except imapc.Timeout:
        pytest.fail("kick %s did not close the session logged in as %s" % (user, shown),
                    pytrace=False)
    finally:
        live.close()
    assert got.startswith(b"* BYE"), got

    c = login()
    assert counts(m) == (0, 3), (
        "the session kept for %s survived kick %s and was reused" % (shown, user))
    c.close()
