"""parkmodel -- a client's view of its selected mailbox, built only from what
the server sent that client, and a driver that keeps one up to date over an
imapc connection (for test_park_model.py).

    server bytes --> ModelClient (imapc.Client: IDLE, DONE, commands)
                       |  every untagged response, in order
                       v
                     MailboxModel: seq -> (UID, flags, MODSEQ), UIDVALIDITY,
                     HIGHESTMODSEQ; refuses what breaks RFC 3501/7162

The model knows nothing the client was not told: a message announced by
EXISTS has no UID (None) until a FETCH names it; flags and MODSEQ likewise.
It is strict: anything a correct server may not send this client (a seq out
of range, an EXISTS that shrinks, a UID that changes or breaks the order, a
MODSEQ that goes down, MODSEQ/VANISHED/HIGHESTMODSEQ to a client that did
not enable them, EXPUNGE to a QRESYNC client, BYE, untagged NO/BAD, any
response it does not know) raises ModelError, whose message carries the
client's last lines.

Compared with the store as a list of (UID, flags, MODSEQ) in UID order
(read by another connection with UID FETCH 1:* (UID FLAGS MODSEQ)).
\\Recent is session state and never compared.
"""

import re
import time

import imapc


class ModelError(AssertionError):
    """The server sent something a correct server could not have sent
    this client, or the client's view cannot be followed any more."""


RECENT = "\\recent"


def parse_list(text, i=0):
    """Parse an IMAP parenthesized list body starting at text[i] (just past
    the opening parenthesis). Returns (items, index past the closing one).
    Items: str atoms (NIL included), str quoted strings, nested lists.
    Literals are refused (nothing the model asks for has one)."""
    items = []
    n = len(text)
    while i < n:
        c = text[i]
        if c == " ":
            i += 1
        elif c == "(":
            sub, i = parse_list(text, i + 1)
            items.append(sub)
        elif c == ")":
            return items, i + 1
        elif c == '"':
            j, out = i + 1, []
            while j < n and text[j] != '"':
                if text[j] == "\\":
                    j += 1
                out.append(text[j])
                j += 1
            if j >= n:
                raise ModelError("unterminated quoted string in %r" % text)
            items.append("".join(out))
            i = j + 1
        elif c == "{":
            raise ModelError("a literal where none was asked for: %r" % text)
        else:
            j = i
            while j < n and text[j] not in " ()":
                # a section like BODY[HEADER.FIELDS (A B)] is not expected
                j += 1
            items.append(text[i:j])
            i = j
    raise ModelError("unbalanced parentheses in %r" % text)


def parse_uid_set(s):
    """'3:5,9' -> [(3, 5), (9, 9)] (each range low to high)."""
    out = []
    for part in s.split(","):
        if ":" in part:
            a, b = part.split(":", 1)
            a, b = int(a), int(b)
            out.append((min(a, b), max(a, b)))
        else:
            out.append((int(part), int(part)))
        if out[-1][0] == 0:
            raise ModelError("UID 0 in a uid-set: %r" % s)
    return out


def in_set(uid, ranges):
    return any(lo <= uid <= hi for lo, hi in ranges)


class Msg:
    __slots__ = ("uid", "flags", "modseq")

    def __init__(self, uid=None, flags=None, modseq=None):
        self.uid, self.flags, self.modseq = uid, flags, modseq

    def __repr__(self):
        return "Msg(%s, %s, %s)" % (self.uid, sorted(self.flags) if self.flags is not None
                                    else None, self.modseq)


_OK_CODE = re.compile(r"\[([A-Za-z0-9-]+)(?: ([^\]]*))?\]")
_NUM_RESP = re.compile(r"(\d+) ([A-Za-z]+)(?: (.*))?$")


class MailboxModel:
    """One client's view of its selected mailbox.

    mode: "plain", "condstore" or "qresync" (QRESYNC implies CONDSTORE).
    Call begin_select() before a SELECT is sent, end_select() on its tagged
    OK; feed() every untagged response in the order it came."""

    def __init__(self, mode, name="client"):
        assert mode in ("plain", "condstore", "qresync")
        self.mode = mode
        self.name = name
        self.condstore = mode in ("condstore", "qresync")
        self.qresync = mode == "qresync"
        self.msgs = []
        self.uidvalidity = None
        self.highestmodseq = None
        self.selected = False
        # SELECT in progress: None, "old" (a mailbox was selected: lines are
        # still the old mailbox's until [CLOSED]), "new".
        self.sel = None
        self.sel_qresync = False   # SELECT ... (QRESYNC ...): resolve from the cache
        self.cache = None          # {uid: Msg} the QRESYNC SELECT starts from
        self.sel_fetched = {}      # uid -> (seq, Msg) told during a QRESYNC SELECT
        self.sel_vanished = []     # ranges told as VANISHED (EARLIER)
        self.sel_hms = None        # the SELECT's HIGHESTMODSEQ
        self.lines = []            # every line fed, for error messages
        # responses applied, by kind (the test prints them)
        self.stats = {"exists": 0, "expunge": 0, "vanished": 0, "fetch": 0, "hms": 0}

    # -- errors
    def fail(self, why):
        raise ModelError("%s (%s model): %s; model (last 12) %r; last lines %r"
                         % (self.name, self.mode, why, self.msgs[-12:], self.lines[-12:]))

    # -- SELECT
    def begin_select(self, qresync_cache=False):
        """A SELECT/EXAMINE is about to be sent. qresync_cache: it carries
        the QRESYNC parameter, built from this model's UIDVALIDITY and
        HIGHESTMODSEQ: the model's known messages are the cache it resumes."""
        self.sel = "old" if self.selected else "new"
        self.sel_qresync = qresync_cache
        self.cache = None
        self.sel_fetched = {}
        self.sel_vanished = []
        if self.sel == "new":
            self._open_new()

    def _open_new(self):
        if self.sel_qresync:
            self.cache = {m.uid: m for m in self.msgs if m.uid is not None}
        self.sel = "new"
        self.msgs = []
        self.selected = False
        self.sel_hms = None

    def end_select(self, tagged):
        if imapc.status_of(tagged) != "OK":
            self.fail("SELECT failed: %r" % tagged)
        if self.sel == "old":
            self.fail("SELECT of a mailbox replacing another answered without [CLOSED] "
                      "(RFC 7162 3.2.11)")
        if self.sel_qresync:
            self._resolve_qresync()
        if self.sel_hms is not None:
            if self.highestmodseq is not None and self.sel_hms < self.highestmodseq:
                self.fail("SELECT's HIGHESTMODSEQ %d below %d told before"
                          % (self.sel_hms, self.highestmodseq))
            self.highestmodseq = self.sel_hms
        self.sel = None
        self.selected = True

    def _resolve_qresync(self):
        """The QRESYNC SELECT's view: the cache less what VANISHED (EARLIER)
        named, with what its FETCHes told, in UID order, must be exactly as
        many messages as its EXISTS."""
        entries = {}
        for uid, m in self.cache.items():
            if not in_set(uid, self.sel_vanished):
                entries[uid] = Msg(uid, m.flags, m.modseq)
        for uid, (seq, m) in self.sel_fetched.items():
            old = entries.get(uid)
            entries[uid] = Msg(uid, m.flags if m.flags is not None else (old and old.flags),
                               m.modseq if m.modseq is not None else (old and old.modseq))
        order = sorted(entries)
        if len(order) != len(self.msgs):
            self.fail("QRESYNC SELECT: EXISTS %d but the cache less VANISHED (EARLIER) plus "
                      "the FETCHes make %d messages (%r)" % (len(self.msgs), len(order), order))
        for uid, (seq, m) in self.sel_fetched.items():
            if order.index(uid) + 1 != seq:
                self.fail("QRESYNC SELECT: FETCH of UID %d at %d, its place is %d"
                          % (uid, seq, order.index(uid) + 1))
        self.msgs = [entries[u] for u in order]
        self.cache = None

    # -- the lines
    def feed(self, resp):
        """One whole untagged response (bytes, with its CRLF)."""
        line = resp.decode("utf-8", "replace").rstrip("\r\n")
        self.lines.append(line)
        if not line.startswith("* "):
            self.fail("not an untagged response: %r" % line)
        body = line[2:]
        word = body.split(" ", 1)[0].upper()
        if word == "BYE":
            self.fail("BYE")
        if word in ("NO", "BAD"):
            self.fail("untagged %s" % word)
        if word in ("OK", "PREAUTH"):
            return self._ok(body)
        if word in ("FLAGS", "CAPABILITY", "ENABLED"):
            return
        if word == "VANISHED":
            return self._vanished(body[9:])
        m = _NUM_RESP.match(body)
        if not m:
            self.fail("unexpected response %r" % line)
        num, what, rest = int(m.group(1)), m.group(2).upper(), m.group(3)
        if what == "EXISTS":
            self._exists(num)
        elif what == "RECENT":
            pass   # \Recent is session state: not modelled
        elif what == "EXPUNGE":
            self._expunge(num)
        elif what == "FETCH":
            if not rest or not rest.startswith("(") or not rest.endswith(")"):
                self.fail("malformed FETCH")
            items, end = parse_list(rest, 1)
            if end != len(rest):
                self.fail("trailing bytes after FETCH")
            self._fetch(num, items)
        else:
            self.fail("unexpected response %r" % line)

    def _ok(self, body):
        m = _OK_CODE.search(body)
        if not m:
            return    # "* OK Still here" and the like
        code, arg = m.group(1).upper(), m.group(2)
        if code == "CLOSED":
            if self.sel != "old":
                self.fail("[CLOSED] with no SELECT replacing a mailbox")
            self._open_new()
        elif code == "UIDVALIDITY":
            v = int(arg)
            if self.sel is None:
                self.fail("UIDVALIDITY outside a SELECT")
            if self.uidvalidity is not None and v != self.uidvalidity:
                self.fail("UIDVALIDITY changed %d -> %d" % (self.uidvalidity, v))
            self.uidvalidity = v
        elif code == "HIGHESTMODSEQ":
            h = int(arg)
            if self.sel == "new":
                self.sel_hms = h
                return
            if not self.condstore:
                self.fail("HIGHESTMODSEQ to a client without CONDSTORE")
            if self.highestmodseq is not None and h < self.highestmodseq:
                self.fail("HIGHESTMODSEQ went down %d -> %d" % (self.highestmodseq, h))
            self.highestmodseq = h
            self.stats["hms"] += 1
        elif code == "NOMODSEQ":
            self.fail("NOMODSEQ (the store keeps MODSEQs)")
        # UIDNEXT, UNSEEN, PERMANENTFLAGS, READ-WRITE...: not modelled

    def _exists(self, n):
        if n < len(self.msgs):
            self.fail("EXISTS %d below the %d messages held" % (n, len(self.msgs)))
        self.msgs.extend(Msg() for _ in range(n - len(self.msgs)))
        self.stats["exists"] += 1

    def _expunge(self, seq):
        if self.qresync:
            self.fail("EXPUNGE to a QRESYNC client (RFC 7162 3.2.10: VANISHED)")
        if not 1 <= seq <= len(self.msgs):
            self.fail("EXPUNGE %d of %d messages" % (seq, len(self.msgs)))
        del self.msgs[seq - 1]
        self.stats["expunge"] += 1

    def _vanished(self, rest):
        if not self.qresync:
            self.fail("VANISHED to a client without QRESYNC")
        earlier = rest.upper().startswith("(EARLIER) ")
        ranges = parse_uid_set(rest[10:] if earlier else rest)
        if earlier:
            if self.sel == "new" and self.sel_qresync:
                self.sel_vanished += ranges
                return
            # Outside a resuming SELECT: UIDs already gone; naming one the
            # view holds is a contradiction.
            held = [m.uid for m in self.msgs if m.uid is not None and in_set(m.uid, ranges)]
            if held:
                self.fail("VANISHED (EARLIER) names UIDs still held: %r" % held)
            return
        if self.sel == "new":
            self.fail("VANISHED without EARLIER in a SELECT's answer")
        known = [m.uid for m in self.msgs if m.uid is not None]
        top = max(known) if known else 0
        if any(m.uid is None for m in self.msgs) and any(hi > top for lo, hi in ranges):
            # A new message of unknown UID may be among them: which one
            # cannot be told (the test never expunges messages of its step).
            self.fail("VANISHED %s may name a message of unknown UID" % rest)
        before = len(self.msgs)
        self.msgs = [m for m in self.msgs if m.uid is None or not in_set(m.uid, ranges)]
        if len(self.msgs) == before:
            pass   # RFC 7162 allows UIDs already gone
        self.stats["vanished"] += 1

    def _fetch(self, seq, items):
        if len(items) % 2:
            self.fail("odd FETCH item list %r" % items)
        att = {}
        for k in range(0, len(items), 2):
            name = items[k].upper() if isinstance(items[k], str) else None
            if name is None:
                self.fail("FETCH item name %r" % (items[k],))
            att[name] = items[k + 1]
        uid = int(att["UID"]) if "UID" in att else None
        flags = None
        if "FLAGS" in att:
            if not isinstance(att["FLAGS"], list):
                self.fail("FLAGS not a list")
            flags = frozenset(f for f in att["FLAGS"] if f.lower() != RECENT)
        modseq = None
        if "MODSEQ" in att:
            if not self.condstore:
                self.fail("MODSEQ to a client without CONDSTORE")
            v = att["MODSEQ"]
            if not isinstance(v, list) or len(v) != 1:
                self.fail("MODSEQ not (n)")
            modseq = int(v[0])
        if self.qresync and uid is None:
            self.fail("FETCH without UID to a QRESYNC client (RFC 7162 3.2.4)")
        if self.condstore and flags is not None and modseq is None:
            self.fail("FLAGS without MODSEQ to a CONDSTORE client (RFC 7162 3.1.4.1)")
        if not 1 <= seq <= len(self.msgs):
            self.fail("FETCH %d of %d messages" % (seq, len(self.msgs)))
        if self.sel == "new" and self.sel_qresync:
            # seq is in the new numbering; placed once the SELECT is over.
            if uid is None:
                self.fail("FETCH without UID in a QRESYNC SELECT")
            self.sel_fetched[uid] = (seq, Msg(uid, flags, modseq))
            self._raise_hms(modseq)
            return
        m = self.msgs[seq - 1]
        if uid is not None:
            if m.uid is not None and m.uid != uid:
                self.fail("message %d has UID %d, FETCH says %d" % (seq, m.uid, uid))
            self._check_order(seq, uid)
            m.uid = uid
        if modseq is not None:
            if m.modseq is not None and modseq < m.modseq:
                self.fail("MODSEQ of message %d went down %d -> %d" % (seq, m.modseq, modseq))
            m.modseq = modseq
            self._raise_hms(modseq)
        if flags is not None:
            m.flags = flags
        self.stats["fetch"] += 1

    def _raise_hms(self, modseq):
        if modseq is not None and self.sel != "new" and (
                self.highestmodseq is None or modseq > self.highestmodseq):
            self.highestmodseq = modseq

    def _check_order(self, seq, uid):
        """Known UIDs ascend with room for the messages between."""
        for k, m in enumerate(self.msgs):
            if m.uid is None or k == seq - 1:
                continue
            gap = (seq - 1) - k
            if (gap > 0 and uid - m.uid < gap) or (gap < 0 and m.uid - uid < -gap):
                self.fail("UID %d at %d breaks the order (UID %d at %d)"
                          % (uid, seq, m.uid, k + 1))

    # -- questions
    def count(self):
        return len(self.msgs)

    def first_unknown(self):
        """Sequence number of the first message of unknown UID, or None."""
        for k, m in enumerate(self.msgs):
            if m.uid is None:
                return k + 1
        return None

    def uid_floor(self):
        """The UID of the message before the first of unknown UID (0 when
        that is the first): every unknown UID is above it."""
        k = self.first_unknown()
        if k is None:
            return self.max_uid()
        return self.msgs[k - 2].uid if k > 1 else 0

    def max_uid(self):
        known = [m.uid for m in self.msgs if m.uid is not None]
        return max(known) if known else 0

    def view(self):
        return [(m.uid, m.flags, m.modseq) for m in self.msgs]

    def differs(self, store, check_modseq=True):
        """None when the view is the store's (count, UIDs in order, flags,
        and MODSEQ for CONDSTORE clients), else what differs (str). store:
        [(uid, frozenset flags, modseq)] in UID order."""
        if len(self.msgs) != len(store):
            return "count %d, store %d" % (len(self.msgs), len(store))
        for k, (m, (uid, flags, modseq)) in enumerate(zip(self.msgs, store)):
            if m.uid != uid:
                return "message %d: UID %s, store %d" % (k + 1, m.uid, uid)
            if m.flags is None:
                return "message %d (UID %d): flags never told, store %s" % (
                    k + 1, uid, sorted(flags))
            if m.flags != flags:
                return "message %d (UID %d): flags %s, store %s" % (
                    k + 1, uid, sorted(m.flags), sorted(flags))
            if self.condstore and check_modseq and m.modseq != modseq:
                return "message %d (UID %d): MODSEQ %s, store %d" % (k + 1, uid, m.modseq,
                                                                     modseq)
        return None


class ModelClient:
    """An imapc.Client whose every untagged response goes to its model.

    idle: the client sits in IDLE between commands (else it is quiet and
    polls with NOOP). Every read is bounded by a deadline."""

    def __init__(self, conn, mode, name, idle=True):
        self.c = conn
        self.model = MailboxModel(mode, name)
        self.name = name
        self.mode = mode
        self.idle = idle
        self.idling = False
        self.n = 0

    def _tag(self):
        self.n += 1
        return "%s%d" % (self.name[:1], self.n)

    def _feed_until(self, tag, timeout):
        """Feed untagged responses until tag's completion (returned)."""
        deadline = time.monotonic() + timeout
        prefix = tag.encode() + b" "
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ModelError("%s: no answer to %s within %.1fs; last %r"
                                 % (self.name, tag, timeout, self.c.transcript[-8:]))
            try:
                r = self.c.read_response(left)
            except imapc.Closed as e:
                raise ModelError("%s: connection closed: %s" % (self.name, e))
            if r.startswith(prefix):
                return r
            if r.startswith(b"+"):
                raise ModelError("%s: unexpected continuation %r" % (self.name, r))
            self.model.feed(r)

    def command(self, text, timeout=10.0, ok=True):
        """Run one command (out of IDLE, then back in when idle); returns
        its tagged line."""
        was = self.idling
        if was:
            self.idle_done(timeout)
        tag = self._tag()
        self.c.cmd_send(tag, text)
        t = self._feed_until(tag, timeout)
        if ok and imapc.status_of(t) != "OK":
            raise ModelError("%s: %s -> %r" % (self.name, text, t))
        if was:
            self.idle_start(timeout)
        return t

    def select(self, text, qresync_cache=False, timeout=10.0):
        was = self.idling
        if was:
            self.idle_done(timeout)
        self.model.begin_select(qresync_cache)
        tag = self._tag()
        self.c.cmd_send(tag, text)
        t = self._feed_until(tag, timeout)
        self.model.end_select(t)
        if was:
            self.idle_start(timeout)
        return t

    def idle_start(self, timeout=10.0):
        assert not self.idling
        self.idle_tag = self._tag()
        self.c.cmd_send(self.idle_tag, "IDLE")
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise ModelError("%s: no continuation for IDLE" % self.name)
            try:
                r = self.c.read_response(left)
            except imapc.Closed as e:
                raise ModelError("%s: connection closed: %s" % (self.name, e))
            if r.startswith(b"+"):
                break
            if r.startswith(self.idle_tag.encode() + b" "):
                raise ModelError("%s: IDLE refused: %r" % (self.name, r))
            self.model.feed(r)
        self.idling = True

    def idle_done(self, timeout=10.0):
        assert self.idling
        self.c.send(b"DONE\r\n")
        self.idling = False
        t = self._feed_until(self.idle_tag, timeout)
        if imapc.status_of(t) != "OK":
            raise ModelError("%s: IDLE ended with %r" % (self.name, t))

    def pump(self, timeout):
        """Feed whatever arrives within timeout (in IDLE: unsolicited data).
        Returns the number of responses fed."""
        n = 0
        wait = timeout
        end = time.monotonic() + timeout + 2.0   # a server that never stops
        while time.monotonic() < end:
            try:
                r = self.c.read_response(wait)
            except imapc.Timeout:
                return n
            except imapc.Closed as e:
                raise ModelError("%s: connection closed: %s" % (self.name, e))
            if r.startswith(b"+") or not r.startswith(b"* "):
                raise ModelError("%s: unexpected %r" % (self.name, r))
            self.model.feed(r)
            n += 1
            wait = 0.002
        raise ModelError("%s: still sending after %.1fs (%d responses)" % (self.name, timeout + 2,
                                                                          n))

    def fetch_spec(self):
        return "(UID FLAGS MODSEQ)" if self.model.condstore else "(UID FLAGS)"

    def learn_new(self, timeout=10.0):
        """UID FETCH the messages whose UID the client does not know: new
        ones, last, above the UID of the message before the first of them
        (a later one may be known already: a QRESYNC client's FETCH carries
        the UID)."""
        self.command("UID FETCH %d:* %s" % (self.model.uid_floor() + 1, self.fetch_spec()),
                     timeout)
