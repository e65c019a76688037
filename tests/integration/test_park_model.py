"""Parked IDLE against a model (issue #11): several parked clients beside a
reference client held directly on Dovecot, while another connection appends,
expunges and changes flags at random; each client's view, kept only from
what it was sent (tests/integration/parkmodel.py), must equal the store's
after every step: count, UIDs in order, flags, and for CONDSTORE/QRESYNC
clients MODSEQ.

    mutator (Dovecot, plain) --APPEND/STORE/EXPUNGE--> store
    reference (Dovecot, IDLE)          sees the store as Dovecot tells it
    3 clients in IDLE + 1 quiet one    through imapmux (TLS), parked
    (polling with NOOP)                between steps

One step: every imapmux client parked (imapmux_sessions_parked, same scrape
as the wake counters); 1-3 random operations; sometimes one client catches
up at once: SELECTs the mailbox again (QRESYNC clients resume from their
view) or asks for what changed (UID FETCH ... CHANGEDSINCE); then
each client reads until its view is the store's, fetching only the UIDs
of new messages (which wakes a parked session; it parks again). Each case
(client mode x watch mode) runs STEPS steps, seeded: the seed is printed,
IMAPMUX_MODEL_SEED=n replays one, IMAPMUX_MODEL_STEPS=n sets the length.
"""

import os
import random
import re
import time

import pytest

import imapc
import lab
from conftest import backend_section, password, scrape_metrics, wait_until
import parkmodel
from parkmodel import ModelClient, ModelError

pytest.register_assert_rewrite("conftest_redis")
from conftest_redis import publish, redis_section, wait_subscribed  # noqa: E402

pytest_plugins = ["conftest_redis"]

STEPS = int(os.environ.get("IMAPMUX_MODEL_STEPS", "12"))
# watch = events: announce every operation, so that wakes race the next
# ones, instead of once a step. Off by default: a wake racing an APPEND
# ends the session (test_wake_racing_an_append).
RACE = os.environ.get("IMAPMUX_MODEL_RACE") == "1"
# Messages in INBOX at the start, and imapmux's workers (sessions spread
# over them: a watcher and a kept session per worker).
START = int(os.environ.get("IMAPMUX_MODEL_START", "6"))
WORKERS = int(os.environ.get("IMAPMUX_MODEL_WORKERS", "1"))
# The share of steps after which the next starts without waiting for the
# sessions to park again.
EAGER = float(os.environ.get("IMAPMUX_MODEL_EAGER", "0"))
SETTLE = 10.0          # Dovecot's IDLE notices a change about 0.5 s late
PARK_WAIT = 10.0
PARK_AFTER = "300ms"   # park_idle_after: a woken client parks again soon
RACE_ATTEMPTS = 25
N_IDLE = 3             # imapmux clients in IDLE; one more polls with NOOP
# The flags STORE picks from; IMAPMUX_MODEL_KEYWORDS="$Label2 Work" adds more.
FLAGS = ["\\Seen", "\\Flagged", "\\Answered", "$Label1"] + os.environ.get(
    "IMAPMUX_MODEL_KEYWORDS", "").split()
MODES = ["plain", "condstore", "qresync", "mixed"]
MIXED = ["plain", "condstore", "qresync"]
WATCHES = ["events", "idle", "notify"]


@pytest.fixture(scope="module")
def dovecot(cert, key):
    """conftest's Dovecot with mailbox_list_index = yes (Dovecot offers NOTIFY
    only then)."""
    from conftest import MASTER_PASSWORD, USERS
    d = lab.Dovecot(USERS, tls=True, cert=cert, key=key, master_password=MASTER_PASSWORD,
                    name="dovecot-park-model", extra_conf="mailbox_list_index = yes\n")
    d.start()
    yield d
    d.cleanup()


def _seed():
    env = os.environ.get("IMAPMUX_MODEL_SEED")
    if env:
        return int(env)
    return random.SystemRandom().randrange(1, 2 ** 31)


def _metrics(m):
    return scrape_metrics(m.stats_port)


def _wakes(mx, cause):
    return mx.get('imapmux_wakes_total{cause="%s"}' % cause, 0)


def _login(port, user, tls=None):
    c = imapc.Client(port, tls=tls, timeout=10.0)
    c.greeting()
    c.login(user, password(user), tag="l")
    return c


class Mutator:
    """The connection that changes the store, and reads it."""

    def __init__(self, dovecot, user, announce):
        self.c = _login(dovecot.port, user)
        self.announce = announce
        self.n = 0
        self.appended = 0
        self.step_new = []   # UIDs the current step APPENDed
        self.ok("SELECT INBOX")
        self.log = []

    def ok(self, text):
        self.n += 1
        tag = "m%d" % self.n
        untagged, t = self.c.cmd(tag, text)
        assert imapc.status_of(t) == "OK", (text, t)
        return untagged, t

    def append(self, flags, subject):
        msg = b"Subject: %s\r\n\r\nbody\r\n" % subject.encode()
        self.n += 1
        tag = "m%d" % self.n
        fl = "(%s) " % " ".join(flags) if flags else ""
        self.c.send(b"%s APPEND INBOX %s{%d}\r\n" % (tag.encode(), fl.encode(), len(msg)))
        assert self.c.readline().startswith(b"+")
        self.c.send(msg + b"\r\n")
        _, t = self.c.read_until_tagged(tag)
        assert imapc.status_of(t) == "OK", t
        m = re.search(rb"APPENDUID \d+ (\d+)", t)
        return int(m.group(1))

    @staticmethod
    def store_of(c, tag="st"):
        """[(uid, frozenset flags, modseq)] in UID order, read on c (a
        connection with INBOX selected)."""
        untagged, t = c.cmd(tag, "UID FETCH 1:* (UID FLAGS MODSEQ)")
        assert imapc.status_of(t) == "OK", t
        out = []
        for u in untagged:
            line = u.decode()
            if " FETCH " not in line:
                continue
            uid = int(re.search(r"UID (\d+)", line).group(1))
            fl = re.search(r"FLAGS \(([^)]*)\)", line).group(1).split()
            ms = int(re.search(r"MODSEQ \((\d+)\)", line).group(1))
            out.append((uid, frozenset(f for f in fl if f.lower() != "\\recent"), ms))
        out.sort()
        return out

    def store(self):
        """[(uid, frozenset flags, modseq)] in UID order, and HIGHESTMODSEQ."""
        self.n += 1
        out = self.store_of(self.c, "m%d" % self.n)
        untagged, _ = self.ok("STATUS INBOX (HIGHESTMODSEQ)")
        hms = int(re.search(rb"HIGHESTMODSEQ (\d+)", b"".join(untagged)).group(1))
        return out, hms

    def run(self, op):
        """One operation (see _ops); what it did, for the log."""
        kind = op[0]
        if kind == "append":
            uids = []
            for fl in op[1]:
                self.appended += 1
                uids.append(self.append(fl, "new %d" % self.appended))
            self.step_new += uids
            self.log.append("APPEND %d %r -> UIDs %s" % (len(op[1]), op[1], uids))
        elif kind == "flags":
            _, sign, flags, uids = op
            if uids == "new":
                uids = self.step_new   # the step's APPENDs (known here by APPENDUID)
            if uids:
                text = "UID STORE %s %sFLAGS%s (%s)" % (_set(uids), sign, _silent(uids),
                                                       " ".join(flags))
                self.ok(text)
                self.log.append(text)
        elif kind == "delete":
            text = "UID STORE %s +FLAGS (\\Deleted)" % _set(op[1])
            self.ok(text)
            self.log.append(text)
        elif kind == "uid_expunge":
            self.ok("UID STORE %s +FLAGS.SILENT (\\Deleted)" % _set(op[1]))
            self.ok("UID EXPUNGE %s" % _set(op[1]))
            self.log.append("UID STORE+EXPUNGE %s" % _set(op[1]))
        elif kind == "expunge":
            if op[1]:
                self.ok("UID STORE %s +FLAGS.SILENT (\\Deleted)" % _set(op[1]))
            self.ok("EXPUNGE")
            self.log.append("STORE %s \\Deleted + EXPUNGE (all \\Deleted)" % _set(op[1]))
        if RACE:
            self.announce()


def visible_change(old, new):
    """Did the store change in what a plain client sees?"""
    return [(u, f) for u, f, _ in old] != [(u, f) for u, f, _ in new]


def _silent(uids):
    return ".SILENT" if len(uids) % 2 else ""


def _set(uids):
    return ",".join(str(u) for u in sorted(uids))


def _ops(rng, uids, deleted):
    """1-3 random operations on a store holding uids (those in deleted
    marked \\Deleted), updating deleted. Expunges only take messages older
    than the step (every client knows their UIDs: a VANISHED naming a
    message a QRESYNC client knows by number only could not be followed);
    flag changes may also take the step's new messages ("new": whatever
    the step APPENDed so far), which clients know by number only."""
    ops = []
    have = list(uids)
    for _ in range(rng.choice([1, 1, 2, 2, 3])):
        n = len(have)
        weights = {"append": 3 if n < 14 else 1, "flags": 4 if n else 0,
                   "delete": 1 if n else 0, "uid_expunge": (3 if n > 10 else 1) if n else 0,
                   "expunge": (2 if n > 10 else 1) if n else 0}
        kinds = [k for k, w in weights.items() for _ in range(w)]
        kind = rng.choice(kinds)
        if kind == "append":
            ops.append(("append", [rng.sample(FLAGS[:2], rng.randint(0, 1))
                                   for _ in range(rng.randint(1, 3))]))
        elif kind == "flags":
            ops.append(("flags", rng.choice("+-"), rng.sample(FLAGS, rng.randint(1, 2)),
                        "new" if any(o[0] == "append" for o in ops) and rng.random() < 0.5 else
                        rng.sample(have, rng.randint(1, min(4, n)))))
        elif kind == "delete":
            pick = rng.sample(have, 1)
            deleted |= set(pick)
            ops.append(("delete", pick))
        else:
            pick = rng.sample(have, rng.randint(1, min(3, n)))
            if kind == "expunge":
                pick = sorted(set(pick) | (deleted & set(have)))
            have = [u for u in have if u not in pick]
            deleted -= set(pick)
            ops.append((kind, pick))
    return ops


def _reset_inbox(dovecot, user, n, rng):
    c = _login(dovecot.port, user)
    _, t = c.cmd("s", "SELECT INBOX")
    c.cmd("d", "STORE 1:* +FLAGS.SILENT (\\Deleted)")
    c.cmd("x", "EXPUNGE")
    for i in range(n):
        msg = b"Subject: start %d\r\n\r\nbody\r\n" % i
        fl = rng.choice(["", "(\\Seen) ", "(\\Flagged $Label1) "])
        c.send(b"a%d APPEND INBOX %s{%d}\r\n" % (i, fl.encode(), len(msg)))
        assert c.readline().startswith(b"+")
        c.send(msg + b"\r\n")
        _, t = c.read_until_tagged("a%d" % i)
        assert t.startswith(b"a%d OK" % i), t
    c.cmd("z", "LOGOUT")
    c.close()


def _open(conn, mode, name, k, idle):
    """A ModelClient in mode, INBOX selected, every UID learned."""
    mc = ModelClient(conn, mode, name, idle=idle)
    if mode == "condstore" and k % 2 == 1:
        mc.select("SELECT INBOX (CONDSTORE)")
    else:
        if mode != "plain":
            mc.command("ENABLE %s" % mode.upper())
        mc.select("SELECT INBOX")
    mc.command("UID FETCH 1:* %s" % mc.fetch_spec())
    if idle:
        mc.idle_start()
    return mc


def _resync(mc, rng):
    """Catch up the way a client of mc's mode would after a while away:
    SELECT again, or (CONDSTORE, QRESYNC) ask for what changed since the
    HIGHESTMODSEQ it holds: UID FETCH ... (CHANGEDSINCE m [VANISHED]), whose
    VANISHED (EARLIER) may only name UIDs the client no longer holds."""
    md = mc.model
    if mc.mode == "plain" or rng.random() < 0.5:
        return "SELECT", _reselect(mc)
    mc.command("UID FETCH 1:* %s (CHANGEDSINCE %d%s)" % (
        mc.fetch_spec(), md.highestmodseq, " VANISHED" if mc.mode == "qresync" else ""))
    return "CHANGEDSINCE", None


def _reselect(mc):
    """SELECT the mailbox again, the way a client of mc's mode would."""
    md = mc.model
    if mc.mode == "qresync" and md.highestmodseq is not None:
        mc.select("SELECT INBOX (QRESYNC (%d %d))" % (md.uidvalidity, md.highestmodseq),
                  qresync_cache=True)
    else:
        mc.select("SELECT INBOX (CONDSTORE)" if mc.mode == "condstore" else "SELECT INBOX")
        mc.command("UID FETCH 1:* %s" % mc.fetch_spec())


def _settle(clients, mutator, store, step, timeout=SETTLE):
    """Read until every client's view is the store's; fetch the UIDs of new
    messages once a client holds as many messages as the store. The quiet
    client polls with NOOP. Returns {name: seconds to settle}."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    pending = list(clients)
    took = {}
    last_noop = {}
    while pending:
        for mc in list(pending):
            mc.pump(0.01)
            md = mc.model
            if md.differs(store) is None:
                pending.remove(mc)
                took[mc.name] = time.monotonic() - t0
                continue
            if md.first_unknown() is not None and md.count() == len(store):
                mc.learn_new()
                continue
            if not mc.idle and time.monotonic() - last_noop.get(mc.name, 0) > 0.2:
                last_noop[mc.name] = time.monotonic()
                mc.command("NOOP")
        if pending and time.monotonic() > deadline:
            raise AssertionError(
                "step %d: not settled after %.1fs:\n%s\nstore %r\nsteps %s" % (
                    step, timeout,
                    "\n".join("  %s: %s; view %r; last lines %r" % (
                        mc.name, mc.model.differs(store), mc.model.view(),
                        mc.model.lines[-10:]) for mc in pending),
                    store, mutator.log[-8:]))
    return took


class Case:
    """One run: the imapmux, the mutator, the clients, the step loop."""

    def __init__(self, make_mux, dovecot, redis, prefix, ca_ctx, mode, watch, seed):
        self.mode, self.watch, self.seed = mode, watch, seed
        self.rng = random.Random(seed)
        self.user = "model%d" % (MODES.index(mode) * len(WATCHES) + WATCHES.index(watch) + 1)
        self.redis, self.prefix = redis, prefix
        _reset_inbox(dovecot, self.user, START, self.rng)
        port = lab.free_port()
        kv = backend_section(dovecot, watch=watch)
        self.m = make_mux(backends=[("a", kv)], redis=redis_section(redis, prefix),
                          imapmux={"workers": WORKERS, "park_idle_after": PARK_AFTER,
                                   "log_level": "debug", "stats_listen": "127.0.0.1:%d" % port})
        self.m.stats_port = port
        wait_subscribed(redis, prefix, 1)
        self.mutator = Mutator(dovecot, self.user, self.announce)
        def mode_of(k):
            # mixed: one of each beside the others (the user's kept backend
            # session is per ENABLE state: a plain client's wake must never
            # get a CONDSTORE one).
            return MIXED[k % len(MIXED)] if mode == "mixed" else mode
        self.ref = _open(_login(dovecot.port, self.user), mode_of(0), "ref", 0, idle=True)
        self.muxed = [_open(_login(self.m.imaps_port, self.user, tls=ca_ctx), mode_of(k),
                            "c%d" % k, k, idle=True) for k in range(N_IDLE)]
        self.muxed.append(_open(_login(self.m.imaps_port, self.user, tls=ca_ctx),
                                mode_of(N_IDLE), "quiet", N_IDLE, idle=False))
        self.everyone = [self.ref] + self.muxed
        self.step = 0
        self.deleted = set()   # UIDs marked \Deleted and not expunged yet

    def announce(self):
        """What Dovecot's push script would publish (watch = events); with
        a watcher nothing is published."""
        if self.watch == "events":
            assert publish(self.redis, self.prefix, "mbox %s INBOX" % self.user) >= 1

    def parked_scrape(self):
        """One scrape with every imapmux client parked (and, with watchers,
        every watcher up), else None."""
        mx = _metrics(self.m)
        if mx.get("imapmux_sessions_parked", 0) != len(self.muxed):
            return None
        if self.watch != "events" and not (mx.get("imapmux_watchers_up", 0) >=
                                           mx.get("imapmux_watchers", 0) > 0):
            return None
        return mx

    def wait_parked(self):
        def ok():
            # A last wake's lines may still come: read them meanwhile.
            for mc in self.everyone:
                mc.pump(0.005)
            return self.parked_scrape()
        return wait_until(ok, PARK_WAIT, lambda: "step %d: %d sessions parked (have %s)" % (
            self.step, len(self.muxed), _metrics(self.m).get("imapmux_sessions_parked")))

    def start(self):
        self.wait_parked()
        if self.watch != "events":
            # A watcher's first IDLE makes the sessions parked before it
            # read the store once: let that catch-up wake pass.
            time.sleep(0.3)
            self.wait_parked()
        self.store, self.hms = self.mutator.store()
        _settle(self.everyone, self.mutator, self.store, 0)
        self.first = self.mx = self.wait_parked()

    def one_step(self):
        """Operations, maybe a client's SELECT, settle, parked again.
        Returns (visible change?, seconds to settle)."""
        self.step += 1
        before, old_store = self.mx, self.store
        uids = [u for u, _, _ in self.store]
        self.deleted &= set(uids)
        ops = _ops(self.rng, uids, self.deleted)
        reselect = self.rng.choice(self.everyone) if self.rng.random() < 0.3 else None
        self.mutator.log.append("-- step %d" % self.step)
        self.mutator.step_new = []
        for op in ops:
            self.mutator.run(op)
        if not RACE:
            self.announce()
        if reselect is not None:
            how, _ = _resync(reselect, self.rng)
            self.mutator.log.append("(%s catches up: %s)" % (reselect.name, how))
        self.store, self.hms = self.mutator.store()
        took = _settle(self.everyone, self.mutator, self.store, self.step)
        for mc in self.everyone:
            md = mc.model
            if md.condstore:
                assert md.highestmodseq is not None and md.highestmodseq <= self.hms, (
                    self.step, mc.name, md.highestmodseq, self.hms)
        if self.rng.random() < EAGER:
            # The next step starts at once: its changes meet sessions still
            # attached, settling or waking. Nothing to count on for it.
            self.mx = None
            return visible_change(old_store, self.store), max(took.values())
        self.mx = self.wait_parked()
        visible = visible_change(old_store, self.store)
        if before is None:
            # Sessions were attached when the changes came: told by Dovecot
            # (which sends no HIGHESTMODSEQ after EXPUNGEs to a CONDSTORE
            # client), not by a wake.
            return visible, max(took.values())
        # Parked, a CONDSTORE client also learns through the wake the
        # HIGHESTMODSEQ that expunges raised (`* OK [HIGHESTMODSEQ h]`).
        for mc in self.muxed:
            if mc.model.condstore:
                assert mc.model.highestmodseq == self.hms, (
                    "step %d: %s holds HIGHESTMODSEQ %s, the store %d"
                    % (self.step, mc.name, mc.model.highestmodseq, self.hms))
        # Every client in IDLE was parked when the store changed: if it
        # changed in what a plain client sees (a -FLAGS may find nothing to
        # take, a +FLAGS then -FLAGS leaves only a MODSEQ behind, which a
        # watcher may not hear of), the clients can only have learned of
        # it through a wake for that change (or for their own SELECT).
        woke = _wakes(self.mx, "change") - _wakes(before, "change")
        want = N_IDLE - (1 if reselect in self.muxed[:N_IDLE] else 0) if visible else 0
        assert woke >= want, ("step %d: %d change wakes for %d parked clients in IDLE"
                              % (self.step, woke, want))
        return visible, max(took.values())

    def finish(self):
        """Nothing more comes (a late wrong line would show here), and the
        quiet client's NOOP has nothing left to tell."""
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            for mc in self.everyone:
                mc.pump(0.05)
        for mc in self.muxed:
            mc.command("NOOP")
        store, _ = self.mutator.store()
        for mc in self.everyone:
            assert mc.model.differs(store) is None, (mc.name, mc.model.differs(store))
        for mc in self.everyone:
            if mc.idling:
                mc.idle_done()
            mc.c.close()

    def dump(self):
        """What a failure needs to be reproduced and reduced."""
        print("\n=== IMAPMUX_MODEL_SEED=%d %s-%s failed at step %d" % (
            self.seed, self.mode, self.watch, self.step))
        print("mutator:\n  " + "\n  ".join(self.mutator.log))
        print("store at the last read: %r" % (self.store,))
        for mc in self.everyone:
            print("%s (%s): view %r\n  last lines:\n    %s" % (
                mc.name, mc.mode, mc.model.view(), "\n    ".join(mc.model.lines[-40:])))


@pytest.mark.parametrize("watch", WATCHES)
@pytest.mark.parametrize("mode", MODES)
def test_parked_views_follow_the_store(make_mux, dovecot, redis, prefix, ca_ctx, mode, watch):
    seed = _seed()
    print("IMAPMUX_MODEL_SEED=%d (%s-%s, %d steps)" % (seed, mode, watch, STEPS))
    case = Case(make_mux, dovecot, redis, prefix, ca_ctx, mode, watch, seed)
    t0 = time.monotonic()
    changed, settle_max = 0, 0.0
    try:
        case.start()
        for _ in range(STEPS):
            visible, took = case.one_step()
            changed += visible
            settle_max = max(settle_max, took)
        case.finish()
    except BaseException:
        case.dump()
        raise
    mx, first = _metrics(case.m), case.first

    def delta(name):
        return mx.get(name, 0) - first.get(name, 0)
    change = _wakes(mx, "change") - _wakes(first, "change")
    client = _wakes(mx, "client") - _wakes(first, "client")
    assert mx.get("imapmux_wake_failures_total", 0) == 0
    assert change >= changed * (N_IDLE - 1)
    assert client >= 1
    assert delta("imapmux_parks_total") >= STEPS
    told = {}
    for mc in case.muxed:
        for k, v in mc.model.stats.items():
            told[k] = told.get(k, 0) + v
    print("%s-%s: %d steps (%d visible changes) in %.1fs, settle max %.2fs, wakes: change %d, "
          "client %d; parks %d; told through imapmux: %s" % (
              mode, watch, STEPS, changed, time.monotonic() - t0, settle_max, change, client,
              delta("imapmux_parks_total"),
              " ".join("%s %d" % kv for kv in sorted(told.items()))))


def _append_many(d, tag, n):
    """n APPENDs on d, pipelined (LITERAL+): Dovecot commits them one by one."""
    out = b""
    for j in range(n):
        msg = b"Subject: %s%d\r\n\r\nbody\r\n" % (tag.encode(), j)
        out += b"%s%d APPEND INBOX {%d+}\r\n%s\r\n" % (tag.encode(), j, len(msg), msg)
    d.send(out)
    for j in range(n):
        _, t = d.read_until_tagged("%s%d" % (tag, j))
        assert t.startswith(b"%s%d OK" % (tag.encode(), j)), t


def test_wake_racing_an_append(make_mux, dovecot, redis, prefix, ca_ctx):
    """Mail that arrives while a wake reads the store (after its SELECT,
    before its UID FETCH 1:* is answered) must be told like any other: the
    client gets `* n EXISTS`, not a BYE. The mailbox holds a few hundred
    messages (the wake's UID FETCH 1:* takes milliseconds); each attempt
    announces a change and at once APPENDs 10 messages, pipelined: Dovecot
    commits them one by one, so that one lands inside the wake's window."""
    user = "model13"
    _reset_inbox(dovecot, user, 0, random.Random(1))
    d = _login(dovecot.port, user)
    d.cmd("s", "SELECT INBOX")
    # A few hundred messages: the wake's UID FETCH 1:* takes milliseconds.
    count, burst = 300, 10
    _append_many(d, "fill", count)
    port = lab.free_port()
    m = make_mux(backends=[("a", backend_section(dovecot, watch="events"))],
                 redis=redis_section(redis, prefix),
                 imapmux={"workers": 1, "park_idle_after": PARK_AFTER, "log_level": "debug",
                          "stats_listen": "127.0.0.1:%d" % port})
    m.stats_port = port
    wait_subscribed(redis, prefix, 1)
    mc = _open(_login(m.imaps_port, user, tls=ca_ctx), "plain", "c", 0, idle=True)

    def parked():
        return _metrics(m).get("imapmux_sessions_parked", 0) == 1
    for k in range(RACE_ATTEMPTS):
        wait_until(parked, PARK_WAIT, "parked before attempt %d" % k)
        assert publish(redis, prefix, "mbox %s INBOX" % user) >= 1
        _append_many(d, "r%d." % k, burst)
        count += burst
        # Announced again after the burst: told by this wake or the next.
        assert publish(redis, prefix, "mbox %s INBOX" % user) >= 1

        def told():
            mc.pump(0.02)
            return mc.model.count() == count
        try:
            wait_until(told, SETTLE, "EXISTS %d" % count)
        except ModelError as e:
            raise AssertionError("attempt %d: %s" % (k, e))
        mc.learn_new()
        store = [(u, f) for u, f, _ in Mutator.store_of(d)]
        assert [(u, f) for u, f, _ in mc.model.view()] == store
    assert _metrics(m).get("imapmux_wake_failures_total", 0) == 0


# ---------------------------------------------------------------------------
# the model itself: it follows a correct server and refuses what a correct
# server could not send (else the test above could pass on wrong data)

def _fed(mode, lines, select=True):
    md = parkmodel.MailboxModel(mode, "t")
    if select:
        md.begin_select()
        for ln in ["* 3 EXISTS", "* OK [UIDVALIDITY 7] x", "* OK [HIGHESTMODSEQ 5] x"]:
            md.feed(ln.encode() + b"\r\n")
        md.end_select(b"s OK [READ-WRITE] done\r\n")
        ms = " MODSEQ (5)" if mode != "plain" else ""
        for k, uid in enumerate((4, 6, 9)):
            md.feed(b"* %d FETCH (UID %d FLAGS (\\Seen)%s)\r\n" % (k + 1, uid, ms.encode()))
    for ln in lines:
        md.feed(ln.encode() + b"\r\n")
    return md


def test_model_follows_a_correct_server():
    md = _fed("plain", ["* 2 EXPUNGE", "* 3 EXISTS", "* 2 FETCH (FLAGS (\\Flagged))",
                        "* 3 FETCH (FLAGS () UID 12)", "* 1 RECENT", "* OK Still here"])
    assert md.view() == [(4, {"\\Seen"}, None), (9, {"\\Flagged"}, None), (12, set(), None)]
    assert md.differs([(4, frozenset({"\\Seen"}), 1), (9, frozenset({"\\Flagged"}), 1),
                       (12, frozenset(), 1)]) is None
    assert "flags" in md.differs([(4, frozenset(), 1), (9, frozenset({"\\Flagged"}), 1),
                                  (12, frozenset(), 1)])
    md = _fed("qresync", ["* VANISHED 6", "* OK [HIGHESTMODSEQ 8] x",
                          "* 2 FETCH (UID 9 MODSEQ (9) FLAGS ())"])
    assert md.view() == [(4, {"\\Seen"}, 5), (9, set(), 9)] and md.highestmodseq == 9
    # QRESYNC resume: the cache (4, 9) less VANISHED (EARLIER) 4, plus the
    # FETCHes (9 changed, 11 new), are the SELECT's two messages.
    md.begin_select(qresync_cache=True)
    for ln in ["* OK [CLOSED] x", "* 2 EXISTS", "* OK [UIDVALIDITY 7] x",
               "* OK [HIGHESTMODSEQ 12] x", "* VANISHED (EARLIER) 1:4,6",
               "* 1 FETCH (UID 9 FLAGS (\\Seen) MODSEQ (11))",
               "* 2 FETCH (UID 11 FLAGS () MODSEQ (12))"]:
        md.feed(ln.encode() + b"\r\n")
    md.end_select(b"s OK done\r\n")
    assert md.view() == [(9, {"\\Seen"}, 11), (11, set(), 12)]


@pytest.mark.parametrize("mode,lines,why", [
    ("plain", ["* 4 EXPUNGE"], "EXPUNGE 4 of 3"),
    ("plain", ["* 2 EXISTS"], "EXISTS 2 below"),
    ("plain", ["* 1 FETCH (UID 5 FLAGS ())"], "has UID 4"),
    ("plain", ["* 4 EXISTS", "* 4 FETCH (UID 8 FLAGS ())"], "breaks the order"),
    ("plain", ["* 1 FETCH (MODSEQ (6) FLAGS ())"], "MODSEQ to a client without"),
    ("plain", ["* VANISHED 4"], "VANISHED to a client without"),
    ("plain", ["* OK [HIGHESTMODSEQ 9] x"], "HIGHESTMODSEQ to a client without"),
    ("condstore", ["* 1 FETCH (FLAGS ())"], "FLAGS without MODSEQ"),
    ("condstore", ["* 1 FETCH (MODSEQ (4) FLAGS ())"], "went down"),
    ("condstore", ["* OK [HIGHESTMODSEQ 4] x"], "went down"),
    ("qresync", ["* 1 EXPUNGE"], "EXPUNGE to a QRESYNC client"),
    ("qresync", ["* 1 FETCH (MODSEQ (6) FLAGS ())"], "without UID"),
    ("qresync", ["* VANISHED (EARLIER) 6"], "names UIDs still held"),
    ("qresync", ["* 4 EXISTS", "* VANISHED 10"], "unknown UID"),
    ("plain", ["* BYE [UNAVAILABLE] gone"], "BYE"),
    ("plain", ["* NO [ALERT] x"], "untagged NO"),
    ("plain", ["* 2 SEARCH 1"], "unexpected response"),
])
def test_model_refuses_what_a_server_may_not_send(mode, lines, why):
    with pytest.raises(ModelError, match=re.escape(why)):
        _fed(mode, lines)


def test_model_qresync_resume_missing_a_message_fails():
    md = _fed("qresync", [])
    md.begin_select(qresync_cache=True)
    for ln in ["* OK [CLOSED] x", "* 4 EXISTS", "* OK [UIDVALIDITY 7] x"]:
        md.feed(ln.encode() + b"\r\n")
    with pytest.raises(ModelError, match="EXISTS 4 but"):
        md.end_select(b"s OK done\r\n")
    md = _fed("plain", [])
    md.begin_select()
    md.feed(b"* 3 EXISTS\r\n")
    with pytest.raises(ModelError, match="without \\[CLOSED\\]"):
        md.end_select(b"s OK done\r\n")
