"""The stats endpoint cannot be held by idle connections: with its 64 slots
taken by sockets that send nothing (or a byte a second), and an attacker
reopening them as fast as they are closed, a new GET /metrics is still
answered 200 well within the 5 s per-connection deadline."""

import select
import socket
import threading
import time

import pytest

import lab

STATS_MAX_CONNS = 64  # proxy/stats.c
ANSWER_WITHIN = 2.0  # seconds; STATS_CONN_TIMEOUT is 5
TRICKLE = b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 64 + b"\r\n\r\n"


@pytest.fixture
def stats_port(make_mux):
    """An imapmux with stats_listen on a free port; returns (mux, port)."""
    port = lab.free_port()
    m = make_mux(imapmux={"stats_listen": "127.0.0.1:%d" % port})
    lab.wait_listening(port, timeout=10, proc=m.proc)
    return m, port


class Attacker:
    """Keeps n_idle connections that send nothing and n_trickle that send a
    request head one byte a second, reopening each one the server closes
    (once a TICK: at most (n_idle + n_trickle) / TICK connects a second).
    Runs on a thread; bounded by max_seconds and max_connects, whatever the
    test does, and stopped by stop()."""

    TICK = 0.1

    def __init__(self, port, n_idle, n_trickle, max_seconds=30.0, max_connects=100000):
        self.port = port
        self.n_idle, self.n_trickle = n_idle, n_trickle
        self.max_seconds, self.max_connects = max_seconds, max_connects
        self.connects = 0
        self.reopened = 0
        self.socks = {}  # socket -> bytes of TRICKLE sent, or None for an idle one
        self.next_trickle = 0.0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _open(self, trickle):
        if self.connects >= self.max_connects:
            return
        self.connects += 1
        try:
            s = socket.create_connection(("127.0.0.1", self.port), timeout=2)
        except OSError:
            return  # backlog full for a moment: try again next tick
        s.setblocking(False)
        self.socks[s] = 0 if trickle else None

    def fill(self):
        """Open every connection (on the caller's thread, before start)."""
        for _ in range(self.n_idle):
            self._open(False)
        for _ in range(self.n_trickle):
            self._open(True)

    def start(self):
        self.thread.start()

    def stop(self):
        self.done.set()
        self.thread.join(10)
        for s in list(self.socks):
            s.close()
        self.socks.clear()

    def running(self):
        """Still attacking: the budget not spent, and at least as many
        connections open (as far as this side knows) as the server has
        slots. A snapshot from another thread: one may be mid-reopen."""
        return (self.thread.is_alive() and self.connects < self.max_connects
                and len(self.socks) >= STATS_MAX_CONNS)

    def _run(self):
        t_end = time.monotonic() + self.max_seconds
        while not self.done.is_set() and time.monotonic() < t_end:
            tick_end = time.monotonic() + self.TICK
            socks = list(self.socks)
            readable = select.select(socks, [], [], self.TICK)[0] if socks else []
            gone = []
            for s in readable:
                try:
                    if s.recv(4096) == b"":
                        gone.append(s)
                except BlockingIOError:
                    pass
                except OSError:
                    gone.append(s)
            now = time.monotonic()
            if now >= self.next_trickle:
                self.next_trickle = now + 1.0
                for s, sent in self.socks.items():
                    if sent is None or s in gone or sent >= len(TRICKLE):
                        continue
                    try:
                        s.send(TRICKLE[sent:sent + 1])
                        self.socks[s] = sent + 1
                    except OSError:
                        gone.append(s)
            for s in gone:
                trickle = self.socks.pop(s) is not None
                s.close()
                self.reopened += 1
                self._open(trickle)
            # Keep the counts up after a failed connect.
            idle = sum(1 for v in self.socks.values() if v is None)
            for _ in range(self.n_idle - idle):
                self._open(False)
            for _ in range(self.n_trickle - (len(self.socks) - idle)):
                self._open(True)
            time.sleep(max(0.0, tick_end - time.monotonic()))


def timed_get(port):
    """(status line or the error, seconds) of one GET /metrics read to the
    end; the whole exchange is bounded by ANSWER_WITHIN + 1 s."""
    t0 = time.monotonic()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=ANSWER_WITHIN + 1) as s:
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
            out = b""
            while time.monotonic() - t0 < ANSWER_WITHIN + 1:
                chunk = s.recv(65536)
                if not chunk:
                    break
                out += chunk
    except OSError as e:
        return repr(e), time.monotonic() - t0
    elapsed = time.monotonic() - t0
    head, _, body = out.partition(b"\r\n\r\n")
    status = head.split(b"\r\n", 1)[0].decode("latin-1") or "closed with no answer"
    if status.startswith("HTTP/1.0 200 ") and b"imapmux_up 1\n" not in body:
        status += " (no imapmux_up 1 in the body)"
    return status, elapsed


@pytest.mark.slow
@pytest.mark.parametrize("n_idle", [STATS_MAX_CONNS, 200])
def test_idle_connections_cannot_hold_the_stats_port(stats_port, n_idle):
    mux, port = stats_port
    attacker = Attacker(port, n_idle, n_trickle=4)
    try:
        attacker.fill()
        attacker.start()
        time.sleep(0.5)  # let the server accept them all
        results = []
        for _ in range(6):
            assert attacker.running(), "the attack stopped before the GETs were done"
            results.append(timed_get(port))
            time.sleep(0.5)
        assert attacker.running(), "the attack stopped before the GETs were done"
        assert attacker.reopened > 0, "the server never closed an idle connection"
        bad = [(st, round(dt, 2)) for st, dt in results
               if not st.startswith("HTTP/1.0 200 ") or "no imapmux_up" in st
               or dt >= ANSWER_WITHIN]
        assert not bad, "GET /metrics with %d idle and 4 trickling connections: %r of %r" % (
            n_idle, bad, [(st, round(dt, 2)) for st, dt in results])
    finally:
        attacker.stop()
    assert mux.alive()
    # Once the attacker is gone the port serves as usual.
    status, elapsed = timed_get(port)
    assert status.startswith("HTTP/1.0 200 ") and elapsed < ANSWER_WITHIN, (status, elapsed)
