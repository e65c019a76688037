"""Brute-force limits under concurrency (review finding), auth = backend.

auth_fail_limit bounds how many password guesses reach the backend per user
and per client address within auth_fail_window. Before the fix the count was
only read before a login (MGET) and raised after its failure: guesses sent
at once all read 0, and every one of them reached Dovecot. After the fix an
attempt takes its place in the budget before it goes to the backend, so that
at most auth_fail_limit guesses ever reach it, however many arrive at once
and on however many imapmux instances sharing the Redis; a successful login
gives its place back.

Counted from /metrics: imapmux_backend_logins_total (logins sent to
backends). Every attempt is written before any answer is read. Client
addresses are loopback ones (127.0.0.x) so that the per-user and
per-address budgets can be told apart; every test has a Redis prefix of its
own (fixture prefix), so no two tests share a counter.
"""

import pytest

import lab

pytest.register_assert_rewrite("conftest_redis")
from conftest_redis import (  # noqa: E402
    backend, connect, dv_password, login_cmd, redis_section)
from conftest import scrape_metrics  # noqa: E402

# The fixtures prefix, rdv_a, rdv_b.
pytest_plugins = ["conftest_redis"]

LIMIT = 10
TIMEOUT = 15.0


def start(make_mux, redis, prefix, dv):
    stats_port = lab.free_port()
    m = make_mux(backends=[("a", backend(dv, reuse_ttl=0))],
                 routing={"lookup": "static", "fallback": "a"},
                 redis=redis_section(redis, prefix),
                 imapmux={"workers": 2, "auth": "backend", "auth_fail_limit": LIMIT,
                          "auth_fail_delay": "200ms",
                          "stats_listen": "127.0.0.1:%d" % stats_port})
    lab.wait_listening(stats_port, timeout=10, proc=m.proc)
    m.stats_port = stats_port
    return m


def backend_logins(m):
    return int(scrape_metrics(m.stats_port)["imapmux_backend_logins_total"])


def burst(m, ca_ctx, attempts):
    """attempts: [(user, password, source address)]. Connect all (greetings
    read), then write every LOGIN, then read every answer. Returns the
    tagged answers in order."""
    clients = []
    try:
        for _, _, src in attempts:
            clients.append(connect(m.imaps_port, ca_ctx, source=src, timeout=TIMEOUT))
        for i, (c, (user, pw, _)) in enumerate(zip(clients, attempts)):
            c.cmd_send("g%d" % i, login_cmd(user, pw))
        answers = []
        for i, c in enumerate(clients):
            _, tagged = c.read_until_tagged("g%d" % i, timeout=TIMEOUT)
            answers.append(tagged)
        return answers
    finally:
        for c in clients:
            c.close()


def one_login(m, ca_ctx, user, pw, src):
    with connect(m.imaps_port, ca_ctx, source=src, timeout=TIMEOUT) as c:
        _, tagged = c.cmd("l", login_cmd(user, pw), timeout=TIMEOUT)
        return tagged


def wrong(user):
    return "wrong-" + dv_password(user)


def sources(first, n):
    return ["127.0.0.%d" % (first + i) for i in range(n)]


def assert_all_no(answers):
    bad = [(i, a) for i, a in enumerate(answers) if not a.startswith(b"g%d NO" % i)]
    assert not bad, "attempts not answered NO: %r" % bad[:5]


def test_concurrent_guesses_for_one_user(make_mux, redis, prefix, rdv_a, ca_ctx):
    user = "rfail"
    m = start(make_mux, redis, prefix, rdv_a)
    base = backend_logins(m)
    # 30 guesses at once, each from an address of its own: only the user's
    # budget applies.
    answers = burst(m, ca_ctx, [(user, wrong(user), s) for s in sources(100, 30)])
    assert_all_no(answers)
    reached = backend_logins(m) - base
    assert reached <= LIMIT, (
        "%d of 30 concurrent guesses for one user reached the backend (limit %d)"
        % (reached, LIMIT))
    tagged = one_login(m, ca_ctx, user, dv_password(user), "127.0.0.140")
    assert tagged.startswith(b"l NO [AUTHENTICATIONFAILED]"), (
        "right password accepted after 30 guesses", tagged)


def test_concurrent_guesses_from_one_address(make_mux, redis, prefix, rdv_a, ca_ctx):
    m = start(make_mux, redis, prefix, rdv_a)
    base = backend_logins(m)
    src = "127.0.0.150"
    users = ["r%02d" % i for i in range(30)]
    answers = burst(m, ca_ctx, [(u, wrong(u), src) for u in users])
    assert_all_no(answers)
    reached = backend_logins(m) - base
    assert reached <= LIMIT, (
        "%d of 30 concurrent guesses from one address reached the backend (limit %d)"
        % (reached, LIMIT))
    tagged = one_login(m, ca_ctx, "r30", dv_password("r30"), src)
    assert tagged.startswith(b"l NO [AUTHENTICATIONFAILED]"), (
        "a login from the address accepted after 30 guesses", tagged)


def test_concurrent_guesses_on_two_instances(make_mux, redis, prefix, rdv_a, ca_ctx):
    user = "rfail2"
    m1 = start(make_mux, redis, prefix, rdv_a)
    m2 = start(make_mux, redis, prefix, rdv_a)
    base1, base2 = backend_logins(m1), backend_logins(m2)
    srcs = sources(160, 30)
    clients = []
    try:
        # Both instances' guesses in flight together: connect all, write all.
        for i, src in enumerate(srcs):
            m = m1 if i % 2 == 0 else m2
            clients.append(connect(m.imaps_port, ca_ctx, source=src, timeout=TIMEOUT))
        for i, c in enumerate(clients):
            c.cmd_send("g%d" % i, login_cmd(user, wrong(user)))
        answers = [c.read_until_tagged("g%d" % i, timeout=TIMEOUT)[1]
                   for i, c in enumerate(clients)]
    finally:
        for c in clients:
            c.close()
    assert_all_no(answers)
    r1, r2 = backend_logins(m1) - base1, backend_logins(m2) - base2
    assert r1 + r2 <= LIMIT, (
        "%d + %d of 2 x 15 concurrent guesses on two instances reached the backend "
        "(limit %d)" % (r1, r2, LIMIT))
    for m in (m1, m2):
        tagged = one_login(m, ca_ctx, user, dv_password(user), "127.0.0.200")
        assert tagged.startswith(b"l NO [AUTHENTICATIONFAILED]"), tagged


def test_successes_give_their_place_back(make_mux, redis, prefix, rdv_a, ca_ctx):
    user = "rok"
    m = start(make_mux, redis, prefix, rdv_a)
    src = "127.0.0.210"
    for i in range(25):
        tagged = one_login(m, ca_ctx, user, dv_password(user), src)
        assert tagged.startswith(b"l OK"), ("login %d of 25 in a row" % (i + 1), tagged)
    answers = burst(m, ca_ctx, [(user, dv_password(user), src)] * 12)
    bad = [(i, a) for i, a in enumerate(answers) if not a.startswith(b"g%d OK" % i)]
    assert not bad, "of 12 concurrent right-password logins (limit %d): %r" % (LIMIT, bad)
    tagged = one_login(m, ca_ctx, user, dv_password(user), src)
    assert tagged.startswith(b"l OK"), tagged

