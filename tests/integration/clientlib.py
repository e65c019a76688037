"""Helpers for test_clients.py: real IMAP clients (from Debian packages) run
through imapmux, and the store's truth read straight from the backend.

Each client runs as a subprocess with a hard timeout, an environment of its
own (HOME in the test's tmp_path, so no user configuration is read; no
proxy or certificate variables) and is told to trust only the test
certificate (conftest's cert, self-signed, CN and SAN localhost, SAN
127.0.0.1).

Run as a program, it prints README's "Client compatibility" table rows
from dpkg-query (the versions installed here).
"""

import email
import email.policy
import os
import re
import signal
import subprocess
import sys

# client name (as in README's table and the test names, test_<name>_...):
# (Debian package, backends, what the tests make it do). Order is the table's.
CLIENTS = {
    "imaplib": ("libpython3.11-stdlib", "Dovecot, Cyrus",
                "IMAP4_SSL, and IMAP4 + starttls(): LOGIN, SELECT, SEARCH, FETCH (BODY[] "
                "byte-exact), STORE, EXPUNGE, APPEND, LOGOUT"),
    "curl": ("curl", "Dovecot, Cyrus",
             "imaps:// LIST, SEARCH and FETCH by UID (byte-exact), APPEND (-T), STORE (-X); "
             "imap:// with --ssl-reqd (STARTTLS); refused without it, and with another CA"),
    "mbsync": ("isync", "Dovecot, Cyrus",
               "a Channel INBOX <-> Maildir (Sync All, Expunge Both): pull over IMAPS, then a "
               "flag change, a deletion and a new message pushed (and one pulled) over "
               "STARTTLS; refuses another CA"),
    "fetchmail": ("fetchmail", "Dovecot, Cyrus",
                  "--mda into a Maildir, sslcertck + sslcertfile: --keep over IMAPS, delete "
                  "after delivery over STARTTLS, then --flush"),
    "offlineimap": ("offlineimap3", "Dovecot, Cyrus",
                    "one-shot (-o) INBOX <-> Maildir sync over IMAPS, twice: pull, then a "
                    "deletion and a new message pushed and one pulled"),
    "neomutt": ("neomutt", "Dovecot, Cyrus",
                "push'd keys under script(1) (it needs a terminal): a flag set over STARTTLS, "
                "then every message saved to a local mbox and deleted over IMAPS"),
}

DPKG_QUERY = "/usr/bin/dpkg-query"
CLIENT_TIMEOUT = 20.0


def package_version(pkg):
    r = subprocess.run([DPKG_QUERY, "-W", "-f=${Version}", pkg], capture_output=True,
                       text=True, timeout=10)
    return r.stdout.strip() if r.returncode == 0 else None


def client_env(home, **extra):
    """A bare environment: PATH, HOME (made if missing) and a UTF-8 locale."""
    os.makedirs(home, exist_ok=True)
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
           "LC_ALL": "C.UTF-8"}
    env.update(extra)
    return env


class Ran:
    """What a client run left: returncode, raw (stdout bytes), out and err
    (text)."""

    def __init__(self, argv, returncode, raw, err):
        self.argv, self.returncode, self.raw = argv, returncode, raw
        self.out = raw.decode("utf-8", "replace")
        self.err = err.decode("utf-8", "replace")

    def __repr__(self):
        return "%s exited %d\n--- stdout\n%s\n--- stderr\n%s" % (
            self.argv[0], self.returncode, self.out[-4000:], self.err[-4000:])


def run(argv, home, timeout=CLIENT_TIMEOUT, check=True, **env):
    """Run a client in a session of its own, stdin /dev/null; a Ran.
    check: fail unless it exits 0. After timeout seconds its whole process
    group is killed and the test fails: no client can hang a test."""
    p = subprocess.Popen(argv, env=client_env(home, **env), stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=str(home),
                         start_new_session=True)
    try:
        raw, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        raw, err = p.communicate()
        raise AssertionError("%r did not finish within %.0fs" % (Ran(argv, -9, raw, err),
                                                                  timeout))
    r = Ran(argv, p.returncode, raw, err)
    if check and r.returncode != 0:
        raise AssertionError(repr(r))
    return r


def message(subject, body=None):
    """A small RFC 5322 message (bytes, CRLF)."""
    body = body if body is not None else "the body of %s\r\nsecond line\r\n" % subject
    return ("From: Lab <lab@localhost>\r\nTo: User <user@localhost>\r\n"
            "Subject: %s\r\nMessage-ID: <%s@imapmux-lab>\r\n"
            "Date: Mon, 07 Dec 2026 10:00:00 +0000\r\n\r\n%s"
            % (subject, subject.replace(" ", "-"), body)).encode()


def subject_of(raw):
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    return msg.get("Subject")


# ---------------------------------------------------------------------------
# the backend's truth, read without imapmux

def reset(server, user, subjects=()):
    """Empty user's INBOX on server (lab.Dovecot or lab.Cyrus), then append
    one message per subject; returns the messages (bytes) in order."""
    c = server.imap(user)
    try:
        c.select("INBOX")
        typ, data = c.search(None, "ALL")
        if data and data[0]:
            c.store("1:*", "+FLAGS.SILENT", "(\\Deleted)")
            c.expunge()
        msgs = []
        for s in subjects:
            m = message(s)
            typ, data = c.append("INBOX", None, None, m)
            assert typ == "OK", data
            msgs.append(m)
        return msgs
    finally:
        c.logout()


_UID = re.compile(rb"\bUID (\d+)")
_FLAGS = re.compile(rb"\bFLAGS \(([^)]*)\)")


def inbox(server, user):
    """[(uid, subject, {flags}, raw message)] of user's INBOX, in UID order,
    read directly on the backend (\\Recent left out: it says which session
    saw the message first, not what the client did)."""
    c = server.imap(user)
    try:
        c.select("INBOX", readonly=True)
        typ, data = c.uid("FETCH", "1:*", "(UID FLAGS BODY.PEEK[])")
        assert typ == "OK", data
        out = []
        for item in data:
            if not isinstance(item, tuple):
                continue
            uid, flags = _UID.search(item[0]), _FLAGS.search(item[0])
            assert uid and flags, item[0]
            flags = set(flags.group(1).decode().split()) - {"\\Recent"}
            out.append((int(uid.group(1)), subject_of(item[1]), flags, item[1]))
        return sorted(out)
    finally:
        c.logout()


def subjects(rows):
    return [r[1] for r in rows]


_KV = re.compile(r'(\w+)=("[^"]*"|\S+)')


def session_ends(log_text, user):
    """The event=session_end lines of imapmux's log for user, as dicts."""
    out = []
    for line in log_text.splitlines():
        if "event=session_end " in line:
            kv = {k: v.strip('"') for k, v in _KV.findall(line)}
            if kv.get("user") == user:
                out.append(kv)
    return out


# ---------------------------------------------------------------------------
# local stores the clients write

def maildir_messages(folder):
    """{subject: maildir flags (the letters after ':2,')} of a Maildir
    folder's new/ and cur/."""
    out = {}
    for sub in ("new", "cur"):
        d = os.path.join(folder, sub)
        for name in sorted(os.listdir(d)) if os.path.isdir(d) else ():
            with open(os.path.join(d, name), "rb") as f:
                s = subject_of(f.read())
            flags = name.split(":2,", 1)[1] if ":2," in name else ""
            assert s not in out, "two messages with subject %r in %s" % (s, folder)
            out[s] = flags
    return out


def maildir_copies(folder):
    """{subject: bytes} of a Maildir folder's messages."""
    out = {}
    for sub in ("new", "cur"):
        d = os.path.join(folder, sub)
        for name in os.listdir(d) if os.path.isdir(d) else ():
            with open(os.path.join(d, name), "rb") as f:
                raw = f.read()
            out[subject_of(raw)] = raw
    return out


def mbox_copies(path):
    """{subject: bytes} of an mbox file's messages (without the From_ line)."""
    import mailbox
    box = mailbox.mbox(path, create=False)
    try:
        return {m.get("Subject"): box.get_bytes(k) for k, m in box.items()}
    finally:
        box.close()


def same_message(local, raw):
    """Is local (a client's copy) the message raw (the backend's bytes),
    byte for byte up to line endings (CRLF or LF), the client free to add
    header fields (Received:, Status:, X-TUID: ...)?"""
    def lf(b):
        return b.replace(b"\r\n", b"\n")
    lh, sep1, lb = lf(local).partition(b"\n\n")
    rh, sep2, rb = lf(raw).partition(b"\n\n")
    return sep1 == sep2 and lb == rb and set(rh.split(b"\n")) <= set(lh.split(b"\n"))


def assert_copies(copies, rows):
    """Every backend message (inbox rows) has its intact copy in copies
    ({subject: bytes})."""
    for _, subj, _, raw in rows:
        assert subj in copies, (subj, sorted(copies))
        assert same_message(copies[subj], raw), (subj, copies[subj], raw)


def maildir_file(folder, subject):
    """The path of the message with that subject in a Maildir folder."""
    for sub in ("new", "cur"):
        d = os.path.join(folder, sub)
        for name in os.listdir(d):
            p = os.path.join(d, name)
            with open(p, "rb") as f:
                if subject_of(f.read()) == subject:
                    return p
    raise AssertionError("no message %r in %s" % (subject, folder))


def age_dirs(folder, seconds=10):
    """Set a Maildir folder's directories' mtimes seconds into the past
    (mbsync sleeps a second after seeing a directory modified "now")."""
    for sub in ("", "new", "cur", "tmp"):
        p = os.path.join(folder, sub)
        st = os.stat(p)
        os.utime(p, (st.st_atime - seconds, st.st_mtime - seconds))


def mbox_subjects(path):
    """Subjects of the messages in an mbox file, in order."""
    import mailbox
    box = mailbox.mbox(path, create=False)
    try:
        return [m.get("Subject") for m in box]
    finally:
        box.close()


# ---------------------------------------------------------------------------
# README

def readme_rows(readme_text):
    """{client: [cells]} of the table under README's '## Client
    compatibility' heading."""
    m = re.search(r"^## Client compatibility\n(.*?)(?=^## |\Z)", readme_text, re.M | re.S)
    assert m, "README has no '## Client compatibility' section"
    rows = {}
    for line in m.group(1).splitlines():
        if not line.startswith("|") or set(line) <= set("|-: "):
            continue
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0].lower() == "client":
            continue
        rows[cells[0].strip("`")] = cells
    return rows


def table_rows(results=None):
    """README table rows from dpkg-query; results: {client: text}."""
    results = results or {}
    lines = ["| Client | Debian package | Backends | Exercised through imapmux | Result |",
             "|---|---|---|---|---|"]
    for name, (pkg, backends, what) in CLIENTS.items():
        lines.append("| `%s` | `%s` %s | %s | %s | %s |"
                     % (name, pkg, package_version(pkg) or "(not installed)", backends, what,
                        results.get(name, "passes")))
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(table_rows() + "\n")
