"""fleetctl's API client: request() and stream() read fleetd's answers the same way."""

from __future__ import annotations

import http.server
import os
import socketserver
import threading
from typing import Any, Iterator

import pytest

from fleetd.client import ApiError, Client

ANSWERS = {  # path -> status, body
    "/ok": (200, b'{"units": []}'),
    "/lines": (200, b"one\ntwo\n"),
    "/missing": (404, b'{"error": "unit a.service does not exist"}'),
    "/broken": (500, b"Traceback: not JSON"),
    "/bare": (503, b""),
}


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status, body = ANSWERS[self.path]
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self) -> str:
        return "unix"  # a Unix socket's peer has no host to print

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def client(tmp_path: Any) -> Iterator[Client]:
    path = os.path.join(str(tmp_path), "api.sock")
    server = _Server(path, _Handler)
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield Client(f"unix://{path}")
    finally:
        server.shutdown()
        server.server_close()


def _refusal(call: Any) -> ApiError:
    with pytest.raises(ApiError) as info:
        call()
    return info.value


def test_answers(client: Client) -> None:
    assert client.get("/ok") == {"units": []}
    assert list(client.stream("/lines")) == [b"one\n", b"two\n"]


@pytest.mark.parametrize(("path", "status", "message"), [
    ("/missing", 404, "unit a.service does not exist"),
    ("/broken", 500, "Traceback: not JSON"),
    ("/bare", 503, "Service Unavailable"),
])
def test_refusals_read_the_same_from_request_and_stream(
    client: Client, path: str, status: int, message: str
) -> None:
    for call in (lambda: client.get(path), lambda: list(client.stream(path))):
        err = _refusal(call)
        assert (err.status, str(err)) == (status, message)


def test_an_absent_fleetd_reads_the_same_from_request_and_stream(tmp_path: Any) -> None:
    gone = Client(f"unix://{tmp_path}/nobody.sock")
    for call in (lambda: gone.get("/ok"), lambda: list(gone.stream("/ok"))):
        err = _refusal(call)
        assert err.status == 0
        assert str(err) == (f"cannot reach fleetd at unix://{tmp_path}/nobody.sock: No such "
                            "file or directory (is fleetd running? `fleetctl lab up` starts one)")
