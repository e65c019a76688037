"""auth = redis must not tell, by the time it takes to say NO, whether a user
exists. A wrong password for a known user costs one crypt(3) of the user's
hash; an unknown user (no <prefix>user:USER password) costs a dummy crypt of
the same cost (cryptpool's crypt_verify_dummy, with the setting of the last
real hash verified). Both are then held for auth_fail_delay.

The users' hashes are yescrypt at libxcrypt's default cost (what mkpasswd,
passwd and Python's crypt write on Debian 12: "$y$j9T$"). auth_fail_delay is
small (200 ms) so that the hash cost is a visible share of each answer. The
test measures that cost here (the fastest of a few crypt_r of one of the
hashes), then times N wrong-password logins of known users and N logins of
unknown users, interleaved, each on a fresh TLS connection (only LOGIN ->
tagged NO is timed), and requires the medians to differ by less than 0.4 of
the hash cost. Users whose stored value cannot be verified (locked, too
long) are timed the same way. Before the fix, unknown and unusable users
were answered one hash cost earlier.
"""

import statistics
import time

import pytest

pytest.register_assert_rewrite("conftest_redis")
from conftest_redis import (  # noqa: E402
    backend, connect, crypt_hash, libcrypt_check, login_cmd, rd_password, redis_section,
    set_password)

# timing: the sanitizers' overhead is not the proxy's
pytestmark = pytest.mark.nosan

# The fixtures prefix and rdv_a.
pytest_plugins = ["conftest_redis"]

ROUNDS = 15            # timed logins of each kind
WARMUP = 2             # of each kind, not timed
DELAY = 0.2            # auth_fail_delay, seconds
KNOWN = ["r10", "r11", "r12"]
LOCKED = ["r13", "r14"]
TIME_LIMIT = 60.0      # the whole measurement, seconds


def _mux(make_mux, redis, prefix, dv):
    im = {"workers": 1, "auth": "redis", "auth_fail_limit": 0,
          "auth_fail_delay": "%dms" % int(DELAY * 1000)}
    return make_mux(backends=[("a", backend(dv, check_interval=0))],
                    routing={"lookup": "redis", "fallback": "a"},
                    redis=redis_section(redis, prefix, timeout="2s"), imapmux=im)


def _hash_cost(password, crypt_string, n=9):
    """Seconds of one crypt_r of crypt_string, in this process: the fastest
    of n, since other load on the machine only ever adds time (and a cost
    measured too high would loosen the bound)."""
    times = []
    for _ in range(n):
        t = time.perf_counter()
        assert libcrypt_check(password, crypt_string)
        times.append(time.perf_counter() - t)
    return min(times)


def _timed_fail(m, ca_ctx, user, password, tag):
    """Seconds from sending LOGIN to its tagged answer, which must be the
    authentication failure; the connection is made before the clock starts."""
    with connect(m.imaps_port, ca_ctx) as c:
        t = time.perf_counter()
        _, tagged = c.cmd(tag, login_cmd(user, password))
        elapsed = time.perf_counter() - t
    assert tagged.startswith(tag.encode() + b" NO [AUTHENTICATIONFAILED]"), (user, tagged)
    return elapsed


@pytest.mark.slow
def test_unknown_user_costs_a_wrong_password(make_mux, redis, prefix, rdv_a, ca_ctx):
    hashes = {u: crypt_hash(rd_password(u), "$y$") for u in KNOWN}
    assert all(h.startswith("$y$j9T$") for h in hashes.values()), hashes
    for user, h in hashes.items():
        set_password(redis, prefix, user, h)
    # Users that exist but cannot log in: a locked hash (passwd -l), and a
    # value too long to be a hash. Neither must answer sooner than a wrong
    # password either.
    set_password(redis, prefix, LOCKED[0], "!" + crypt_hash("locked", "$y$"))
    set_password(redis, prefix, LOCKED[1], "$y$" + "x" * 600)
    m = _mux(make_mux, redis, prefix, rdv_a)
    cost = _hash_cost(rd_password(KNOWN[0]), hashes[KNOWN[0]])

    # The right password still logs in (and the pool has seen a real hash).
    with connect(m.imaps_port, ca_ctx) as c:
        _, tagged = c.cmd("ok", login_cmd(KNOWN[0], rd_password(KNOWN[0])))
        assert tagged.startswith(b"ok OK"), tagged

    times = {"known": [], "unknown": [], "unusable": []}
    deadline = time.monotonic() + TIME_LIMIT
    for i in range(WARMUP + ROUNDS):
        assert time.monotonic() < deadline, "measurement took over %.0fs" % TIME_LIMIT
        names = {"known": KNOWN[i % len(KNOWN)],
                 "unknown": "nobody-%s-%d" % (prefix.rstrip(":"), i),
                 "unusable": LOCKED[i % len(LOCKED)]}
        # Same password for all, so that only the user differs; the order
        # rotates, so that no kind always comes first.
        pw = "wrong-password-%d" % i
        kinds = sorted(times)
        kinds = kinds[i % 3:] + kinds[:i % 3]
        for kind in kinds:
            dt = _timed_fail(m, ca_ctx, names[kind], pw, "%s%d" % (kind[0], i))
            if i >= WARMUP:
                times[kind].append(dt)

    med = {k: statistics.median(v) for k, v in times.items()}
    report = "hash cost %.1f ms; medians %s; all %s" % (
        cost * 1e3, {k: round(v * 1e3, 1) for k, v in med.items()},
        {k: [round(x * 1e3, 1) for x in sorted(v)] for k, v in times.items()})
    print(report)
    # All were held for the delay: the measurement is of the right thing.
    assert min(min(v) for v in times.values()) >= DELAY * 0.95, report
    assert abs(med["known"] - med["unknown"]) < 0.4 * cost, report
    assert abs(med["known"] - med["unusable"]) < 0.4 * cost, report

    # The log still tells them apart.
    log = m.log_text()
    assert 'reason="wrong password"' in log
    assert 'reason="unknown user"' in log
    assert 'reason="unusable password hash in Redis"' in log
