"""stats_listen: Prometheus text at GET /metrics (SPEC: proxy.conf)."""

import re
import socket

import imapc
import lab
from conftest import password

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (-?[0-9.eE+-]+|NaN|[+-]Inf)( -?\d+)?$")


def _get(port, path):
    """(status, headers text, body) of a plain HTTP/1.0 GET."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" % path.encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    return status, head.decode("latin-1"), body.decode()


def _samples(body):
    out = {}
    for line in body.splitlines():
        if not line or line.startswith("#"):
            continue
        m = _SAMPLE.match(line)
        assert m, "not Prometheus text: %r" % line
        out[m.group(1) + (m.group(2) or "")] = float(m.group(3))
    return out


def test_metrics_endpoint(make_mux, ca_ctx):
    port = lab.free_port()
    m = make_mux(imapmux={"stats_listen": "127.0.0.1:%d" % port})
    lab.wait_listening(port, timeout=3, proc=m.proc)
    status, head, body = _get(port, "/metrics")
    assert status == 200, head
    assert re.search(r"(?im)^content-type: text/plain", head), head
    before = _samples(body)
    assert before and all(k.startswith("imapmux_") or k.startswith("process_") for k in before), \
        sorted(before)
    with imapc.Client(m.imaps_port, tls=ca_ctx) as c:
        c.greeting()
        c.login("alice", password("alice"))
        c.cmd("o", "LOGOUT")
    status, _, body = _get(port, "/metrics")
    after = _samples(body)
    grew = [k for k in after if "login" in k and after[k] > before.get(k, 0)]
    assert grew, "no login counter moved after a login: %r" % {
        k: v for k, v in after.items() if "login" in k}
    assert _get(port, "/nope")[0] == 404
