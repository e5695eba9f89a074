"""fleetctl's endpoint list (issue 12): how ``--endpoint A,B,C`` is read, and the rule
for moving on to the next endpoint, against real HTTP servers on real Unix sockets
(fake fleetds that answer what each test scripts; the real fleetds are in
tests/integration/test_endpoints.py)."""

from __future__ import annotations

import http.server
import json
import os
import socket
import socketserver
import threading
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
from click.testing import CliRunner

from fleetd import client
from fleetd.cli.main import cli
from fleetd.client import (
    ApiError,
    Client,
    EndpointError,
    may_resend,
    not_ready,
    parse_endpoints,
    resumed,
)

HINT = "(is fleetd running? `fleetctl lab up` starts one)"


# --- reading the list ----------------------------------------------------------------------
def test_one_endpoint_reads_as_before() -> None:
    (e,) = parse_endpoints("unix:///run/fleetd/fleetd.sock")
    assert (e.text, e.path) == ("unix:///run/fleetd/fleetd.sock", "/run/fleetd/fleetd.sock")
    (h,) = parse_endpoints("http://127.0.0.1:7070")
    assert (h.host, h.port, h.path) == ("127.0.0.1", 7070, None)
    (d,) = parse_endpoints("http://fleetd.example/")
    assert (d.host, d.port) == ("fleetd.example", 80)
    (s,) = parse_endpoints("https://fleetd.example")
    assert (s.host, s.port, s.tls, h.tls) == ("fleetd.example", 443, True, False)


def test_a_list_is_read_in_order() -> None:
    got = parse_endpoints("unix:///a/one.sock, http://[::1]:7070 ,http://10.0.0.3:7071")
    assert [(e.text, e.path, e.host, e.port) for e in got] == [
        ("unix:///a/one.sock", "/a/one.sock", "", 0),
        ("http://[::1]:7070", None, "::1", 7070),
        ("http://10.0.0.3:7071", None, "10.0.0.3", 7071)]


def test_a_socket_path_is_taken_as_written() -> None:
    """Everything after unix:// is the path: a ? or # in it is no query or fragment."""
    (e,) = parse_endpoints("unix:///tmp/a?b#c.sock")
    assert e.path == "/tmp/a?b#c.sock"


@pytest.mark.parametrize(("text", "says"), [
    ("", "an empty endpoint"),
    ("unix:///a.sock,,unix:///b.sock", "an empty endpoint"),
    ("unix:///a.sock,", "an empty endpoint"),
    ("unix://relative.sock", "want unix:///ABSOLUTE/PATH"),
    ("https://10.0.0.1:99999", "bad port"),
    ("ftp://10.0.0.1", "want unix:///PATH, http://HOST:PORT or https://HOST:PORT"),
    ("/run/fleetd/fleetd.sock", "want unix:///PATH, http://HOST:PORT or https://HOST:PORT"),
    ("http://10.0.0.1:99999", "bad port"),
    ("http://10.0.0.1:x", "bad port"),
    ("http://:7070", "no host"),
    ("http://10.0.0.1:7070/v1", "nothing else"),
    ("http://u@10.0.0.1:7070", "nothing else"),
    ("unix:///a.sock,unix:///a.sock", "given twice"),
    ("http://127.0.0.1:7070,http://127.0.0.1:7070/", "given twice"),
])
def test_what_is_refused_says_which(text: str, says: str) -> None:
    with pytest.raises(EndpointError) as err:
        parse_endpoints(text)
    assert says in str(err.value)


def test_fleetctl_names_the_option_for_a_list_it_cannot_read() -> None:
    result = CliRunner().invoke(cli, ["--endpoint", "unix:///a.sock,,unix:///b.sock",
                                      "list-units"])
    assert result.exit_code == 2, result.output
    assert "--endpoint" in result.output and "an empty endpoint" in result.output


# --- the retry rule, as functions ------------------------------------------------------------
@pytest.mark.parametrize(("method", "path", "again"), [
    ("GET", "/v1/units", True),
    ("GET", "/v1/units/a.service/wait?until=running&timeout=30", True),
    ("GET", "/v1/machines?after=3&timeout=60", True),
    ("POST", "/v1/units", True),                  # same name, same content: no change
    ("POST", "/v1/units/state", True),            # a desired state is set, not toggled
    ("POST", "/v1/machines/h1/undrain", True),
    ("POST", "/v1/units/restart", False),         # each one is another generation
    ("POST", "/v1/units/destroy", False),         # the second: "does not exist"
    ("POST", "/v1/machines", False),              # installs; the second: "already exists"
    ("DELETE", "/v1/machines/h1", False),
    ("POST", "/v1/machines/h1/upgrade", False),
    ("POST", "/v1/machines/h1/drain", False),     # its deadline counts from each one
    ("POST", "/v1/machines/undrain", False),      # no such route: not the undrain
    ("PUT", "/v1/units", False),
])
def test_what_may_be_sent_again_after_a_broken_connection(method: str, path: str,
                                                          again: bool) -> None:
    assert may_resend(method, path) is again


def test_a_resent_long_poll_has_what_is_left_of_its_time() -> None:
    assert resumed("/v1/units/a.service/wait?until=running&timeout=30.000", 12.5, False) \
        == "/v1/units/a.service/wait?until=running&timeout=17.500"
    assert resumed("/v1/units/a.service/wait?until=running&timeout=3", 10.0, False) \
        == "/v1/units/a.service/wait?until=running&timeout=0.000"
    assert resumed("/v1/units", 5.0, False) == "/v1/units"


def test_a_resent_machines_poll_forgets_the_version_of_another_fleetd() -> None:
    """after=V numbers the changes one fleetd saw: another answers at once without it."""
    assert resumed("/v1/machines?after=7&timeout=60", 20.0, False) \
        == "/v1/machines?timeout=40.000"
    assert resumed("/v1/machines?after=7&timeout=60", 20.0, True) \
        == "/v1/machines?after=7&timeout=40.000"


def test_only_a_fleetd_that_says_so_is_not_ready() -> None:
    assert not_ready(503, {"error": "no registry yet", "ready": False})
    assert not not_ready(503, {"error": "machine h1: agent unreachable"})  # its answer
    assert not not_ready(503, {"ready": "false"})
    assert not not_ready(500, {"ready": False})


# --- the rule against real sockets ---------------------------------------------------------
Script = Dict[str, Tuple[str, int, Dict[str, Any]]]  # route -> (how, status, body)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Fake

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        route = self.path.partition("?")[0]
        self.server.seen.append((self.command, self.path, body))
        how, status, answer = self.server.script.get(route, ("answer", 200, {}))
        if how == "drop":  # fleetd killed while it worked: no answer at all
            self.close_connection = True
            return
        raw = json.dumps({"from": self.server.name, **answer}).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    do_GET = do_POST = do_DELETE = _answer

    def address_string(self) -> str:
        return "unix"

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Fake(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """A fleetd that answers as ``script`` says, and remembers what it was asked."""

    daemon_threads = True

    def __init__(self, path: str, name: str, script: Optional[Script] = None) -> None:
        self.name = name
        self.script: Script = script or {}
        self.seen: List[Tuple[str, str, bytes]] = []
        super().__init__(path, _Handler)
        threading.Thread(target=self.serve_forever, args=(0.02,), daemon=True).start()

    def close(self) -> None:
        self.shutdown()
        self.server_close()


@pytest.fixture
def fakes(tmp_path: Any) -> Iterator[Dict[str, Any]]:
    """Where fleetds may listen: ``at[n]`` (a path), ``start(n, script)`` one there."""
    started: List[_Fake] = []
    paths = {n: os.path.join(str(tmp_path), f"{n}.sock") for n in ("one", "two", "three")}

    def start(name: str, script: Optional[Script] = None) -> _Fake:
        fake = _Fake(paths[name], name, script)
        started.append(fake)
        return fake

    yield {"at": paths, "start": start}
    for fake in started:
        fake.close()


def _client(fakes: Dict[str, Any], *names: str) -> Client:
    return Client(",".join(f"unix://{fakes['at'][n]}" for n in names))


def _stale(path: str) -> None:
    """A socket file with nothing behind it (a fleetd that was killed): refused."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(path)
    s.close()


def test_a_dead_first_endpoint_is_passed_for_a_read_and_a_write(fakes: Dict[str, Any]
                                                                ) -> None:
    _stale(fakes["at"]["one"])  # refused; "three" has no socket at all
    two = fakes["start"]("two")
    c = _client(fakes, "one", "three", "two")
    assert c.get("/v1/units")["from"] == "two"
    assert c.post("/v1/units/restart", {"names": ["a.service"]})["from"] == "two"
    assert [m for m, _, _ in two.seen] == ["GET", "POST"]


def test_requests_start_from_the_endpoint_that_answered_last(fakes: Dict[str, Any]) -> None:
    two = fakes["start"]("two")
    c = _client(fakes, "one", "two")
    assert c.get("/v1/units")["from"] == "two"
    assert c.endpoint == f"unix://{fakes['at']['two']}"
    one = fakes["start"]("one")  # the first comes back: it is not asked while two answers
    assert c.get("/v1/units")["from"] == "two"
    assert (len(one.seen), len(two.seen)) == (0, 2)
    two.close()
    assert c.get("/v1/units")["from"] == "one"  # round the list, back to the first


def test_an_answer_is_the_answer_even_a_refusal(fakes: Dict[str, Any]) -> None:
    """A 4xx or 5xx came from a fleetd that read the request: the next is never asked
    (a 503 too, unless it says the fleetd is not ready)."""
    one = fakes["start"]("one", {
        "/v1/units/a.service": ("answer", 404, {"error": "unit a.service does not exist"}),
        "/v1/units/b.service": ("answer", 500, {"error": "internal error in fleetd"}),
        "/v1/units/c.service": ("answer", 503, {"error": "h1: agent unreachable"})})
    two = fakes["start"]("two")
    c = _client(fakes, "one", "two")
    for name, status in (("a", 404), ("b", 500), ("c", 503)):
        with pytest.raises(ApiError) as err:
            c.get(f"/v1/units/{name}.service")
        assert err.value.status == status
    assert len(one.seen) == 3 and two.seen == []


def test_a_fleetd_that_says_it_is_not_ready_is_passed(fakes: Dict[str, Any]) -> None:
    one = fakes["start"]("one", {"/v1/units": ("answer", 503, {
        "error": "not leading and no registry yet", "ready": False})})
    fakes["start"]("two")
    c = _client(fakes, "one", "two")
    assert c.post("/v1/units", {"units": []})["from"] == "two"
    assert len(one.seen) == 1


def test_when_no_fleetd_can_do_it_the_error_says_why_not_that_none_answered(
        fakes: Dict[str, Any]) -> None:
    """Every fleetd answered 503 ready:false (etcd has lost its quorum): each one's
    reason is the error, and it is not "cannot reach fleetd ... start one"."""
    quorum = {"error": "etcd has lost its quorum (no leader): the write was not made",
              "ready": False}
    for name in ("one", "two"):
        fakes["start"](name, {"/v1/units": ("answer", 503, quorum)})
    c = _client(fakes, "one", "two")
    with pytest.raises(ApiError) as err:
        c.post("/v1/units", {"units": []})
    assert err.value.status == 503
    assert str(err.value).startswith("no fleetd could do it now: at unix://")
    assert str(err.value).count("etcd has lost its quorum") == 2
    assert "cannot reach" not in str(err.value) and HINT not in str(err.value)


def test_a_read_cut_after_it_was_sent_goes_on_through_the_next(fakes: Dict[str, Any]
                                                               ) -> None:
    fakes["start"]("one", {"/v1/units": ("drop", 0, {})})
    two = fakes["start"]("two")
    c = _client(fakes, "one", "two")
    assert c.get("/v1/units")["from"] == "two"
    body = {"units": [{"name": "a.service", "text": "[Service]\nExecStart=/bin/true\n"}],
            "desired": "launched", "replace": False}
    assert c.post("/v1/units", body)["from"] == "two"  # a submit: idempotent by content
    assert [(m, p, json.loads(b or b"null")) for m, p, b in two.seen] == [
        ("GET", "/v1/units", None), ("POST", "/v1/units", body)]


def test_a_write_cut_after_it_was_sent_is_not_sent_again(fakes: Dict[str, Any]) -> None:
    """A restart applied twice is two restarts: the error says it may have been applied
    and the next fleetd is not asked."""
    fakes["start"]("one", {"/v1/units/restart": ("drop", 0, {})})
    two = fakes["start"]("two")
    c = _client(fakes, "one", "two")
    with pytest.raises(ApiError) as err:
        c.post("/v1/units/restart", {"names": ["a.service"]})
    assert err.value.status == 0
    assert str(err.value).startswith(f"lost fleetd at unix://{fakes['at']['one']} after "
                                     "sending POST /v1/units/restart: ")
    assert "it may have been applied" in str(err.value)
    assert two.seen == []


def test_a_cut_long_poll_goes_on_with_the_time_it_has_left(fakes: Dict[str, Any]) -> None:
    fakes["start"]("one", {"/v1/units/a.service/wait": ("drop", 0, {}),
                           "/v1/machines": ("drop", 0, {})})
    two = fakes["start"]("two", {"/v1/units/a.service/wait": ("answer", 200, {
        "unit": "a.service", "reached": True, "why": "running on h2 (pid 7)"})})
    c = _client(fakes, "one", "two")
    res = c.get("/v1/units/a.service/wait?until=running&timeout=30.000", timeout=40)
    assert (res["from"], res["reached"]) == ("two", True)
    _client(fakes, "one", "two").get("/v1/machines?after=12&timeout=60", timeout=90)
    (_, wait, _), (_, machines, _) = two.seen
    route, _, query = wait.partition("?")
    until, timeout = query.split("&")
    assert (route, until) == ("/v1/units/a.service/wait", "until=running")
    assert 0 <= float(timeout.removeprefix("timeout=")) <= 30  # what was left, not 30 more
    assert machines.startswith("/v1/machines?timeout=")  # two's own version: at once


def test_when_none_answers_the_error_names_each_and_why(fakes: Dict[str, Any]) -> None:
    _stale(fakes["at"]["one"])
    closed = socket.socket()  # a TCP port bound and not listening: refused, and no other
    closed.bind(("127.0.0.1", 0))  # process can take it while the test holds it
    port = closed.getsockname()[1]
    try:
        c = Client(f"unix://{fakes['at']['one']},unix://{fakes['at']['two']},"
                   f"http://127.0.0.1:{port}")
        for call in (lambda: c.get("/v1/units"), lambda: list(c.stream("/v1/x"))):
            with pytest.raises(ApiError) as err:
                call()
            assert err.value.status == 0
            assert err.value.tried == [
                (f"unix://{fakes['at']['one']}", "Connection refused"),
                (f"unix://{fakes['at']['two']}", "No such file or directory"),
                (f"http://127.0.0.1:{port}", "Connection refused")]
            assert str(err.value) == (
                f"cannot reach fleetd at unix://{fakes['at']['one']}: Connection refused; "
                f"at unix://{fakes['at']['two']}: No such file or directory; "
                f"at http://127.0.0.1:{port}: Connection refused {HINT}")
    finally:
        closed.close()


def test_a_stream_starts_on_the_first_that_answers(fakes: Dict[str, Any]) -> None:
    fakes["start"]("two")
    c = _client(fakes, "one", "two")
    assert json.loads(b"".join(c.stream("/v1/units/a.service/journal")))["from"] == "two"


def test_a_fleetd_that_never_accepts_is_passed_after_the_connect_timeout(
        fakes: Dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """A listener whose queue is full (a hung fleetd): the connect times out after
    CONNECT_S when there is another endpoint, and the next one answers."""
    monkeypatch.setattr(client, "CONNECT_S", 0.2)
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(0)  # one connection queued, never accepted: the next ones wait
    port = hung.getsockname()[1]
    queued = socket.create_connection(("127.0.0.1", port))
    try:
        fakes["start"]("two")
        c = Client(f"http://127.0.0.1:{port},unix://{fakes['at']['two']}")
        assert c.get("/v1/units", timeout=30)["from"] == "two"
        with pytest.raises(ApiError) as err:
            Client(f"http://127.0.0.1:{port},unix://{fakes['at']['one']}").get("/v1/units")
        assert err.value.tried[0] == (f"http://127.0.0.1:{port}", "timed out")
    finally:
        queued.close()
        hung.close()
