"""imapc -- a byte-exact IMAP client for the integration tests.

Reads server output as it comes (CRLF lines, server literals {n} followed by
n bytes) with a deadline on every read, so that no test can hang. Keeps a
transcript of what it read for assertion messages.
"""

import base64
import re
import socket
import ssl
import time

DEFAULT_TIMEOUT = 10.0

_LITERAL_AT_END = re.compile(rb"\{(\d+)\+?\}\r\n$")


class Closed(Exception):
    """The server closed the connection."""


class Timeout(Exception):
    """Nothing (or not enough) arrived before the deadline."""


def b64(data):
    if isinstance(data, str):
        data = data.encode()
    return base64.b64encode(data).decode()


def plain_ir(user, password, authzid=""):
    """The base64 SASL PLAIN message authzid NUL authcid NUL password."""
    return b64(("%s\0%s\0%s" % (authzid, user, password)).encode())


def quote(s):
    """An IMAP quoted string."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"') + '"'


def caps_of(line):
    """The capability names (upper case) in a `[CAPABILITY ...]` response code
    or a `* CAPABILITY ...` line; None when the line has neither."""
    if isinstance(line, bytes):
        line = line.decode("utf-8", "replace")
    m = re.search(r"\[CAPABILITY ([^\]]*)\]", line, re.I)
    if m:
        return set(m.group(1).upper().split())
    m = re.match(r"\* CAPABILITY (.*)", line.rstrip("\r\n"), re.I)
    if m:
        return set(m.group(1).upper().split())
    return None


def status_of(tagged):
    """'OK', 'NO' or 'BAD' of a tagged line (bytes)."""
    parts = tagged.split(None, 2)
    return parts[1].decode().upper() if len(parts) > 1 else ""


class Client:
    def __init__(self, port, tls=None, host="127.0.0.1", timeout=DEFAULT_TIMEOUT,
                 server_hostname=None, connect=True):
        self.host = host
        self.port = port
        self.timeout = timeout
        self.buf = bytearray()
        self.transcript = []
        self.sock = None
        self.closed = False
        if connect:
            self.sock = socket.create_connection((host, port), timeout=timeout)
            if tls is not None:
                self.sock = tls.wrap_socket(self.sock, server_hostname=server_hostname or host)

    # -- output
    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.settimeout(self.timeout)
        self.sock.sendall(data)

    def cmd_send(self, tag, text):
        self.send("%s %s\r\n" % (tag, text) if isinstance(text, str)
                  else tag.encode() + b" " + text + b"\r\n")

    # -- input
    def _fill(self, deadline):
        """Read more into buf. False on EOF; Timeout past the deadline."""
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise Timeout(self._why("timed out"))
        self.sock.settimeout(remaining)
        try:
            data = self.sock.recv(262144)
        except (socket.timeout, TimeoutError):
            raise Timeout(self._why("timed out"))
        except (ConnectionResetError, ssl.SSLEOFError, ssl.SSLZeroReturnError, BrokenPipeError):
            data = b""
        if not data:
            self.closed = True
            return False
        self.buf += data
        return True

    def _why(self, what):
        tail = b"".join(self.transcript[-8:])
        return "%s; last lines read: %r; unread: %r" % (what, tail[-2000:],
                                                         bytes(self.buf[:300]))

    def readline(self, timeout=None):
        """One CRLF-terminated line (with its CRLF)."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                line = bytes(self.buf[:i + 2])
                del self.buf[:i + 2]
                self.transcript.append(line)
                return line
            if not self._fill(deadline):
                raise Closed(self._why("connection closed"))

    def read_exact(self, n, timeout=None):
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        while len(self.buf) < n:
            if not self._fill(deadline):
                raise Closed(self._why("connection closed inside a literal"))
        data = bytes(self.buf[:n])
        del self.buf[:n]
        return data

    def read_response(self, timeout=None):
        """One whole response: a line, plus any literals it announces and
        the rest of the line after each literal."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        out = b""
        while True:
            line = self.readline(max(0.001, deadline - time.monotonic()))
            out += line
            m = _LITERAL_AT_END.search(line)
            if not m or line.startswith(b"+"):
                return out
            out += self.read_exact(int(m.group(1)), max(0.001, deadline - time.monotonic()))

    def read_until_tagged(self, tag, timeout=None):
        """(untagged responses, tagged line) up to `tag OK|NO|BAD`."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        prefix = tag.encode() + b" " if isinstance(tag, str) else tag + b" "
        untagged = []
        while True:
            r = self.read_response(max(0.001, deadline - time.monotonic()))
            if r.startswith(prefix):
                return untagged, r
            untagged.append(r)

    def cmd(self, tag, text, timeout=None):
        self.cmd_send(tag, text)
        return self.read_until_tagged(tag, timeout)

    def expect_closed(self, timeout=5.0):
        """Read until the server closes; returns what arrived meanwhile.
        Timeout if it is still open after timeout seconds."""
        deadline = time.monotonic() + timeout
        got = bytearray(self.buf)
        self.buf = bytearray()
        while True:
            if not self._fill(deadline):
                return bytes(got)
            got += self.buf
            self.buf = bytearray()

    def wait_closed_or_timeout(self, timeout):
        """True if the server closed within timeout (data read is kept in
        self.transcript), False if still open."""
        try:
            data = self.expect_closed(timeout)
            self.transcript.append(data)
            return True
        except Timeout:
            return False

    # -- TLS
    def starttls(self, ctx, server_hostname=None):
        if self.buf:
            raise AssertionError("plaintext bytes after the STARTTLS OK: %r" % bytes(self.buf))
        self.sock.settimeout(self.timeout)
        self.sock = ctx.wrap_socket(self.sock, server_hostname=server_hostname or self.host)

    def close(self):
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    # -- conveniences
    def greeting(self, timeout=None):
        g = self.read_response(timeout)
        if not g.startswith(b"* OK"):
            raise AssertionError("bad greeting %r" % g)
        return g

    def login(self, user, password, tag="L1", timeout=None):
        untagged, tagged = self.cmd(tag, "LOGIN %s %s" % (quote(user), quote(password)),
                                    timeout)
        if status_of(tagged) != "OK":
            raise AssertionError("LOGIN %s failed: %r" % (user, tagged))
        return tagged
