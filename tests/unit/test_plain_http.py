"""fleetd.endpoints.PlainConnection's reading of an answer (issue 14): every way an
HTTP/1.1 answer may say where its body ends (Content-Length, chunked, the close), and
the ways one may be broken, read from bytes; and the connection's close letting go of
the socket while its answer is still referenced."""

from __future__ import annotations

import io
import socket

import pytest

from fleetd.endpoints import BadAnswer, Endpoint, PlainConnection, PlainResponse


def answer(raw: bytes) -> PlainResponse:
    return PlainResponse(io.BytesIO(raw))


def test_a_body_of_content_length_is_read_and_no_more() -> None:
    r = answer(b"HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}trailing")
    assert (r.status, r.reason, r.headers["content-length"]) == (404, "Not Found", "2")
    assert r.read() == b"{}"


def test_a_chunked_body_is_joined_past_extensions_and_trailers() -> None:
    r = answer(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
               b"4;ext=1\r\n{\"a\"\r\n3\r\n: 1\r\nA\r\n, \"b\": 22}\r\n0\r\nX-Trailer: y\r\n\r\n")
    assert r.read() == b'{"a": 1, "b": 22}'


def test_a_body_without_a_length_runs_to_the_close() -> None:
    r = answer(b"HTTP/1.0 200\r\nContent-Type: application/json\r\n\r\n[1, 2]")
    assert (r.status, r.reason) == (200, "")
    assert r.read() == b"[1, 2]"


@pytest.mark.parametrize("raw, error, says", [
    (b"", ConnectionResetError, "without answering"),
    (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", BadAnswer, "not an HTTP answer"),
    (b"HTTP/1.1 2000 OK\r\n\r\n", BadAnswer, "not an HTTP answer"),
])
def test_what_is_no_answer_is_said(raw: bytes, error: type, says: str) -> None:
    with pytest.raises(error, match=says):
        answer(raw)


@pytest.mark.parametrize("raw, error, says", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}", ConnectionResetError,
     "after 2 of 10 bytes"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", BadAnswer, "bad Content-Length"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{}", ConnectionResetError,
     "after 2 of 4 bytes"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n", BadAnswer,
     "bad chunk size"),  # cut before the last chunk
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", BadAnswer,
     "bad chunk size"),
])
def test_a_body_cut_short_or_garbled_is_an_error(raw: bytes, error: type, says: str
                                                 ) -> None:
    with pytest.raises(error, match=says):
        answer(raw).read()


def test_too_many_or_too_long_headers_are_refused() -> None:
    with pytest.raises(BadAnswer, match="more than 100 headers"):
        answer(b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"\r\n")
    with pytest.raises(BadAnswer, match="longer than 64 KiB"):
        answer(b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70000 + b"\r\n\r\n")


def test_close_lets_go_of_the_socket_while_the_answer_is_kept() -> None:
    """fleetd sees the end of the connection at close, not when the answer is collected."""
    ours, theirs = socket.socketpair()
    with theirs:
        conn = PlainConnection(Endpoint("unix:///x", path="/x"), 5.0)
        conn.sock = ours
        theirs.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}")
        resp = conn.getresponse()
        assert resp.read() == b"{}"
        conn.close()
        theirs.settimeout(5.0)
        assert theirs.recv(1) == b""  # the peer's end: the descriptor is closed
        assert resp.status == 200


def test_a_line_break_in_a_header_is_refused_not_sent() -> None:
    """A token (FLEETCTL_TOKEN) with a line break would add headers of its own, as
    http.client refuses to send."""
    ours, theirs = socket.socketpair()
    with theirs:
        conn = PlainConnection(Endpoint("unix:///x", path="/x"), 5.0)
        conn.sock = ours
        for headers, path in (({"Authorization": "Bearer t\r\nX-Role: admin"}, "/v1/units"),
                              ({}, "/v1/units HTTP/1.1\r\nX-Role: admin\r\nX:")):
            with pytest.raises(ValueError, match="line break"):
                conn.request("GET", path, headers=headers)
        conn.close()
        theirs.settimeout(5.0)
        assert theirs.recv(100) == b""  # nothing was sent
