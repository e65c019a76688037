"""Fixtures for OAuth 2.0 bearer-token logins (issue #13: XOAUTH2 and
OAUTHBEARER, RFC 7628) against a real Dovecot whose `passdb { driver =
oauth2 }` checks every token itself at a token introspection endpoint
(RFC 7662) served here. Test modules load them with
`pytest_plugins = ["conftest_oauth"]`.

  oauth_server      an HTTP server on 127.0.0.1 (stdlib http.server in a
                    daemon thread; one per module) answering Dovecot's
                    introspection POSTs ("token=TOKEN"): {"active": true,
                    "username": USER} for a token in .tokens, else 401 with
                    {"active": false}; bodies up to MAX_BODY, at most
                    MAX_CONNECTIONS at once. Counts requests (.requests) and keeps
                    the tokens it was asked about (.asked)
  oauth_dovecot     a Dovecot with USERS (passwords still work), the lab
                    certificate, and the oauth2 passdb pointing at
                    oauth_server (one per module)

  OAUTH_TOKENS      {token: user} the server knows from the start
  xoauth2_ir(user, token)      base64 of "user=U^Aauth=Bearer T^A^A"
  oauthbearer_ir(user, token)  base64 of "n,a=U,^Ahost=..^Aport=..^Aauth=Bearer T^A^A"
"""

import base64
import json
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import lab
from conftest import MASTER_PASSWORD, USERS

OAUTH_TOKENS = {
    "tok-alice-Vq81": "alice",
    "tok-bob-Wd27": "bob",
    "tok-sasl-Xe55": "sasl",
}

# The most an introspection request body may be (a token is far shorter),
# and the most connections served at once (Dovecot's auth process keeps one
# or two; each waits at most Handler.timeout for a request).
MAX_BODY = 16384
MAX_CONNECTIONS = 16


def xoauth2_ir(user, token):
    """The base64 XOAUTH2 client message (Google's format)."""
    msg = "user=%s\x01auth=Bearer %s\x01\x01" % (user, token)
    return base64.b64encode(msg.encode()).decode()


def oauthbearer_ir(user, token, host="127.0.0.1", port=143):
    """The base64 OAUTHBEARER client message (RFC 7628 section 3.1), a GS2
    header naming authzid user (none when user is None)."""
    gs2 = "n,a=%s," % user if user is not None else "n,,"
    msg = "%s\x01host=%s\x01port=%d\x01auth=Bearer %s\x01\x01" % (gs2, host, port, token)
    return base64.b64encode(msg.encode()).decode()


class OAuthServer:
    """A token introspection endpoint on 127.0.0.1:port/introspect."""

    def __init__(self, tokens):
        self.tokens = dict(tokens)
        self.lock = threading.Lock()
        self.requests = 0
        self.asked = []
        self.port = lab.free_port()
        self.url = "http://127.0.0.1:%d/introspect" % self.port
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"   # Dovecot's http-client keeps connections
            timeout = 10

            def log_message(self, *a):
                pass

            def _reply(self, code, obj):
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self):
                n = int(self.headers.get("Content-Length") or 0)
                if n < 0 or n > MAX_BODY:
                    self.close_connection = True
                    return self._reply(413, {"error": "too large"})
                form = urllib.parse.parse_qs(self.rfile.read(n).decode("latin-1"))
                token = (form.get("token") or [""])[0]
                self._answer(token)

            def do_GET(self):
                # introspection_mode = get appends the token to the URL.
                q = urllib.parse.urlsplit(self.path).query
                token = (urllib.parse.parse_qs(q).get("token") or [""])[0]
                self._answer(token)

            def _answer(self, token):
                with server.lock:
                    server.requests += 1
                    server.asked.append(token)
                    user = server.tokens.get(token)
                if self.path.split("?")[0] != "/introspect":
                    return self._reply(404, {"error": "not found"})
                if user is None:
                    return self._reply(401, {"active": False})
                self._reply(200, {"active": True, "username": user, "sub": user,
                                  "scope": "imap", "token_type": "Bearer"})

        slots = threading.BoundedSemaphore(MAX_CONNECTIONS)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            block_on_close = False

            def process_request(self, request, client_address):
                # At most MAX_CONNECTIONS at a time: one more is closed at once.
                if not slots.acquire(blocking=False):
                    self.shutdown_request(request)
                    return
                super().process_request(request, client_address)

            def process_request_thread(self, request, client_address):
                try:
                    super().process_request_thread(request, client_address)
                finally:
                    slots.release()

        self.httpd = Server(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever,
                                       kwargs={"poll_interval": 0.1}, daemon=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)

    def count(self):
        with self.lock:
            return self.requests


@pytest.fixture(scope="module")
def oauth_server():
    s = OAuthServer(OAUTH_TOKENS).start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def oauth_dovecot(cert, key, oauth_server):
    d = lab.Dovecot(USERS, tls=True, cert=cert, key=key, master_password=MASTER_PASSWORD,
                    name="dovecot-oauth", oauth2_url=oauth_server.url)
    d.start()
    yield d
    d.cleanup()
