"""GET /sessions on the stats port (issue #12): each worker lists its own
sessions (proxy/sessions_api.c, session_snapshot), the stats thread answers
one JSON document.

Real Dovecots (two, with master users), a real Redis (routes, the events a
parked session waits on) and real TLS clients: one still before login, two
logged in as different users on different backends, one of them in IDLE and
parked. What is checked: exactly those sessions with their users, backends,
states and addresses; ?user= as imapmux names users (username_case = fold);
a user name with a quote, a backslash and a non-ASCII letter comes out as
valid JSON; a bad query gets 400 and says why; a worker that cannot answer
(it left its loop in a drain) is named after the 2s deadline, other requests
are answered meanwhile, and at most 4 such requests wait at once (503). The
caps (rows, bytes) are tested in tests/unit/test_sessions_api.c.
"""

import json
import select
import signal
import socket
import time
import urllib.error
import urllib.request

import pytest

import lab
from conftest import scrape_metrics, wait_until

pytest.register_assert_rewrite("conftest_redis")
from conftest_redis import (  # noqa: E402
    backend, connect, dv_password, login_cmd, redis_section, set_route, start_rdovecot,
    wait_subscribed)

pytest_plugins = ["conftest_redis"]

# Passes through IMAP quoting, Redis keys and JSON escaping: a double quote,
# a backslash, a space and a UTF-8 letter (Dovecot: auth_username_chars
# emptied by RDovecot; passwd-file key escaped there). Lower case: fold
# keeps it as it is.
ODD_USER = 'q"uo\\te j\u00fcrgen'


@pytest.fixture(scope="module")
def rdv_odd():
    d = start_rdovecot("rdovecot-odd", weird=[ODD_USER])
    yield d
    d.cleanup()


def sessions_mux(make_mux, redis, prefix, dv_a, dv_b, workers=2, shutdown_timeout=5):
    """imapmux in front of dv_a (backend a) and dv_b (b), routes from Redis,
    parking after 1s of quiet (events from Redis: no watcher connections),
    /sessions on m.stats_port."""
    port = lab.free_port()
    m = make_mux(backends=[("a", backend(dv_a, watch="events")),
                           ("b", backend(dv_b, watch="events"))],
                 routing={"lookup": "redis", "fallback": "a", "cache_ttl": 60},
                 redis=redis_section(redis, prefix),
                 imapmux={"workers": workers, "auth": "backend", "park_idle_after": "1s",
                          "stats_listen": "127.0.0.1:%d" % port,
                          "shutdown_timeout": shutdown_timeout})
    m.stats_port = port
    wait_subscribed(redis, prefix, workers)
    return m


def get(port, path):
    """(status, body text) of GET path on the stats port."""
    try:
        with urllib.request.urlopen("http://127.0.0.1:%d%s" % (port, path), timeout=10) as r:
            return r.status, r.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8")


def sessions(port, query=""):
    status, body = get(port, "/sessions" + query)
    assert status == 200, (status, body)
    doc = json.loads(body)
    assert doc["truncated"] is False and doc["instance"]["unanswered"] == [], doc
    return doc


def logged_in(m, ca_ctx, user, password=None):
    c = connect(m.imaps_port, ca_ctx)
    _, tagged = c.cmd("l", login_cmd(user, password or dv_password(user)))
    assert tagged.startswith(b"l OK"), tagged
    return c


def addr(c):
    host, port = c.sock.getsockname()[:2]
    return "%s:%d" % (host, port)


def test_sessions_lists_each_session_with_its_user_backend_and_state(
        make_mux, redis, prefix, rdv_a, rdv_b, ca_ctx):
    m = sessions_mux(make_mux, redis, prefix, rdv_a, rdv_b)
    set_route(redis, prefix, "r30", "a")
    set_route(redis, prefix, "r31", "b")
    t0 = time.time()
    pre = connect(m.imaps_port, ca_ctx)             # greeted, no login
    busy = logged_in(m, ca_ctx, "R30", dv_password("r30"))            # typed in upper case: named r30
    idler = logged_in(m, ca_ctx, "r31")
    _, t = idler.cmd("s", "SELECT INBOX")
    assert t.startswith(b"s OK"), t
    idler.send(b"i IDLE\r\n")
    assert idler.readline().startswith(b"+")
    wait_until(lambda: scrape_metrics(m.stats_port).get("imapmux_sessions_parked", 0) >= 1, 10,
               "the IDLE session parked")
    _, t = busy.cmd("n", "NOOP")                    # activity after the IDLE
    assert t.startswith(b"n OK"), t

    doc = sessions(m.stats_port)
    inst = doc["instance"]
    assert inst["pid"] == m.proc.pid and inst["workers"] == 2 and inst["answered"] == 2, inst
    rows = {r["client"]: r for r in doc["sessions"]}
    assert set(rows) == {addr(pre), addr(busy), addr(idler)}, doc["sessions"]
    assert [r["id"] for r in doc["sessions"]] == sorted(
        (r["id"] for r in doc["sessions"]), key=lambda i: int(i[2:])), "sorted by id"

    p, b, i = rows[addr(pre)], rows[addr(busy)], rows[addr(idler)]
    assert (p["state"], p["user"], p["backend"], p["in_idle"]) == ("preauth", None, None, False), p
    assert (b["state"], b["user"], b["backend"], b["in_idle"]) == ("logged_in", "r30", "a", False), b
    assert (i["state"], i["user"], i["backend"], i["in_idle"]) == ("parked", "r31", "b", True), i
    for r in (p, b, i):
        assert r["listener"] == "imaps" and r["tls"] == "TLSv1.3", r
        assert r["id"].startswith("S-") and r["worker"] in (0, 1), r
        assert t0 - 1 <= r["since"] <= time.time() + 1, r
        assert 0 <= r["idle"] <= time.time() - t0 + 1, r
    assert b["idle"] <= i["idle"], (b, i)  # busy sent NOOP after the idler's IDLE

    # Gone sessions leave the list; the ids are the log's.
    pre.close()
    busy.close()
    wait_until(lambda: len(sessions(m.stats_port)["sessions"]) == 1, 5, "two sessions gone")
    assert sessions(m.stats_port)["sessions"][0]["client"] == addr(idler)
    wait_until(lambda: "session=%s " % b["id"] in m.log_text(), 5, "the summary line of " + b["id"])


def test_user_filter_names_users_as_imapmux_does(make_mux, redis, prefix, rdv_a, rdv_b, ca_ctx):
    m = sessions_mux(make_mux, redis, prefix, rdv_a, rdv_b)
    pre = connect(m.imaps_port, ca_ctx)            # pre-auth: never matches a filter
    one = [logged_in(m, ca_ctx, "r32"), logged_in(m, ca_ctx, "R32", dv_password("r32"))]
    other = logged_in(m, ca_ctx, "r33")

    def clients(query):
        return sorted(r["client"] for r in sessions(m.stats_port, query)["sessions"])

    assert clients("?user=r32") == sorted(addr(c) for c in one)
    assert clients("?user=R32") == clients("?user=r32")        # username_case = fold
    assert clients("?user=%52%33%32") == clients("?user=r32")  # percent-encoded
    assert clients("?user=r33") == [addr(other)]
    assert clients("?user=r3") == []                            # whole names only
    assert clients("?user=nobody") == []
    assert len(clients("")) == 4 and addr(pre) in clients("")


def test_odd_user_name_is_valid_json(make_mux, redis, prefix, rdv_odd, rdv_b, ca_ctx):
    m = sessions_mux(make_mux, redis, prefix, rdv_odd, rdv_b, workers=1)
    c = logged_in(m, ca_ctx, ODD_USER.encode(), dv_password("weird"))
    status, body = get(m.stats_port, "/sessions")
    assert status == 200, body
    assert '\\"' in body and "\\\\" in body, body      # escaped in the text itself
    rows = json.loads(body)["sessions"]
    assert [(r["user"], r["client"]) for r in rows] == [(ODD_USER, addr(c))], rows
    q = urllib.request.quote(ODD_USER.encode("utf-8"), safe="")
    assert [r["user"] for r in sessions(m.stats_port, "?user=" + q)["sessions"]] == [ODD_USER]


BAD_QUERIES = [
    ("?foo=1", "unknown query parameter 'foo'"),
    ("?user=r1&limit=3", "unknown query parameter 'limit'"),
    ("?user", "unknown query parameter 'user'"),
    ("?user=", "user= needs a name"),
    ("?user=a&user=b", "more than once"),
    ("?user=%zz", "percent-encoded"),
    ("?user=a%00b", "without NUL"),
    ("?user=" + "x" * 256, "1 to 255 bytes"),
]


def test_bad_query_is_400_saying_why(make_mux, redis, prefix, rdv_a, rdv_b):
    m = sessions_mux(make_mux, redis, prefix, rdv_a, rdv_b, workers=1)
    for query, why in BAD_QUERIES:
        status, body = get(m.stats_port, "/sessions" + query)
        assert status == 400 and why in body, (query, status, body)
    # ... and the server goes on answering.
    assert get(m.stats_port, "/sessions")[0] == 200
    assert get(m.stats_port, "/sessions?user=" + "x" * 255)[0] == 200


def test_a_worker_that_cannot_answer_is_named_not_waited_for(make_mux, redis, prefix, rdv_a,
                                                              rdv_b, ca_ctx):
    """SIGTERM: a worker without sessions leaves its loop at once, the one
    with a busy session (an APPEND whose literal never comes) stays until
    shutdown_timeout. /sessions then answers after its deadline (2s) with
    the one session and names the worker that did not answer."""
    m = sessions_mux(make_mux, redis, prefix, rdv_a, rdv_b, shutdown_timeout=20)
    c = logged_in(m, ca_ctx, "r34")
    c.send(b"a APPEND INBOX {100}\r\n")
    assert c.readline().startswith(b"+")
    try:
        (row,) = sessions(m.stats_port)["sessions"]
        m.expect_exit = True
        m.signal(signal.SIGTERM)
        wait_until(lambda: get(m.stats_port, "/health")[0] == 503, 3, "draining")
        for _ in range(10):  # the idle worker leaves its loop as soon as it reads the drain
            t0 = time.monotonic()
            status, body = get(m.stats_port, "/sessions")
            waited = time.monotonic() - t0
            assert status == 200, body
            doc = json.loads(body)
            if doc["instance"]["unanswered"]:
                break
            time.sleep(0.05)
        idle_worker = 1 - row["worker"]
        assert doc["instance"]["unanswered"] == [idle_worker], doc["instance"]
        assert doc["instance"]["answered"] == 1, doc["instance"]
        assert [(r["id"], r["user"]) for r in doc["sessions"]] == [(row["id"], "r34")], doc
        assert 1.5 < waited < 8, waited  # the 2s deadline, not the client's 10s timeout
        assert "did not answer" in m.log_text()

        # While requests wait for the worker, the stats thread answers others
        # (a load balancer's /health is not held up), and at most 4 wait at
        # once: one more is told to come back.
        waiting = [raw_request(m.stats_port, "/sessions") for _ in range(5)]
        assert get(m.stats_port, "/health")[0] == 503       # answered (draining) ...
        readable, _, _ = select.select(waiting, [], [], 0)
        assert len(readable) <= 1, "... while the gathers still wait (only the 503 is out)"
        answers = sorted(raw_answer(w) for w in waiting)
        assert [a[:13] for a in answers] == [b"HTTP/1.0 200 "] * 4 + [b"HTTP/1.0 503 "], answers
        for got in answers[:4]:
            doc = json.loads(got.split(b"\r\n\r\n", 1)[1])
            assert doc["instance"]["unanswered"] == [idle_worker], doc
    finally:
        c.close()  # the drain can end


def raw_request(port, path):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"GET %s HTTP/1.0\r\n\r\n" % path.encode())
    return s


def raw_answer(s):
    """Everything up to the server's close."""
    got = b""
    with s:
        while True:
            data = s.recv(65536)
            if not data:
                return got
            got += data
