"""Issue 10, the API's side: hostile numbers, bodies, headers and connections against the
real aiohttp app of a real Daemon (real SQLite registry) on real sockets (apikit). Each
answer is a clear JSON error naming where the request is wrong, never a 500, and a bad
request never stops anything else."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import stat
import threading
import time
import types
import urllib.parse
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
from apikit import Served, connect, exchange, http, post, served

from fleetd.bootstrap import machines as bootstrap
from fleetd.client import ApiError, Client
from fleetd.daemon.http import errors as http_errors
from fleetd.daemon.service import units as unit_service
from fleetd.registry.sqlite import SqliteRegistry
from fleetd.testing.registry import at_once

UNIT = "[Service]\nExecStart=/bin/sleep 1000\n"
TOKEN = "a-token-of-more-than-16-bytes"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def fleetd(tmp_path: Path) -> Iterator[Served]:
    with served(tmp_path) as s:
        yield s


def sock(s: Served) -> str:
    return s.config.socket


def submit(s: Served, name: str = "a.service", text: str = UNIT,
           desired: str = "launched") -> Dict[str, Any]:
    status, answer = post(sock(s), "/v1/units", {"units": [{"name": name, "text": text}],
                                                 "desired": desired})
    assert status == 200, answer
    return dict(answer)


def refused(answer: Any, status: int, expected_status: int, *words: str) -> None:
    assert status == expected_status, (status, answer)
    assert isinstance(answer, dict) and set(answer) >= {"error"}, answer
    for word in words:
        assert word in answer["error"], answer


# --- numbers (class 1) ------------------------------------------------------------------------
@pytest.mark.parametrize("value", ["nan", "NaN", "inf", "-inf", "1e999", "-1", "\u00b2",
                                   "", "0x10", "1_000", " ", "true"])
@pytest.mark.parametrize("path", ["/v1/units/a.service/wait?timeout=",
                                  "/v1/machines?after=0&timeout="])
def test_a_timeout_that_is_no_number_of_seconds_is_refused(fleetd: Served, path: str,
                                                          value: str) -> None:
    status, answer = http(sock(fleetd), "GET", path + urllib.parse.quote(value))
    refused(answer, status, 400, "timeout: want a number of at least 0")


def test_after_a_nan_timeout_every_other_wait_still_ends(fleetd: Served) -> None:
    """NaN in asyncio's timer heap stopped every later timer: a wait of 0.3 s never
    ended (and machines never reconnected, SIGTERM took 65 s)."""
    submit(fleetd)  # launched, never placed (no machines): a wait runs to its timeout
    result: Dict[str, Any] = {}

    def nan_wait() -> None:
        result["nan"] = http(sock(fleetd), "GET", "/v1/units/a.service/wait?timeout=nan",
                             timeout=60)

    waiter = threading.Thread(target=nan_wait, daemon=True)
    waiter.start()
    time.sleep(0.2)  # the NaN wait first, if it is taken
    status, answer = http(sock(fleetd), "GET", "/v1/units/a.service/wait?timeout=0.3",
                          timeout=20)
    assert (status, answer["timeout"], answer["reached"]) == (200, True, False)
    waiter.join(20)
    status, answer = result["nan"]
    refused(answer, status, 400, "timeout")


@pytest.mark.parametrize("value", ["nan", "-1", "10001", "1.5", "\u00b2", "99999999999999999999"])
def test_lines_must_be_a_whole_number_up_to_the_limit(fleetd: Served, value: str) -> None:
    submit(fleetd)
    for what in ("status", "journal"):
        status, answer = http(sock(fleetd), "GET",
                              f"/v1/units/a.service/{what}?lines={urllib.parse.quote(value)}")
        refused(answer, status, 400, "lines: want a whole number from 0 to 10000")


@pytest.mark.parametrize("value", ["x", "-1", "1.5", "nan"])
def test_after_must_be_a_version(fleetd: Served, value: str) -> None:
    status, answer = http(sock(fleetd), "GET", f"/v1/machines?after={value}&timeout=0")
    refused(answer, status, 400, "after: want a whole number")


def add_machine(s: Served, **fields: Any) -> Any:
    body = {"address": "10.9.9.9", "name": "m1", "agent_command": "true", **fields}
    return post(sock(s), "/v1/machines", body)


@pytest.mark.parametrize("port", [True, False, "22", 0, 65536, 22.5, -1, None, [22]])
def test_a_machine_port_is_a_tcp_port(fleetd: Served, port: Any) -> None:
    """``"port": true`` was stored as port 1."""
    status, answer = add_machine(fleetd, port=port)
    refused(answer, status, 400, "port: want a whole number from 1 to 65535")
    assert fleetd.daemon.registry.list_machines() == []


@pytest.mark.parametrize("deadline", [True, "60", -1, 1e300, [1], {"s": 1}])
def test_a_drain_deadline_is_a_number_of_seconds(fleetd: Served, deadline: Any) -> None:
    assert add_machine(fleetd)[0] == 201
    status, answer = post(sock(fleetd), "/v1/machines/m1/drain", {"deadline_s": deadline})
    refused(answer, status, 400, "deadline_s: want a number from 0 to ")
    assert fleetd.daemon.registry.get_machine("m1").draining is None


@pytest.mark.parametrize("raw", [b'{"deadline_s": NaN}', b'{"deadline_s": Infinity}',
                                 b'{"deadline_s": 1e999}'])
def test_json_nan_and_infinity_are_refused(fleetd: Served, raw: bytes) -> None:
    """Python's json reads NaN and Infinity (and 1e999 as inf); JSON has neither."""
    assert add_machine(fleetd)[0] == 201
    status, answer = http(sock(fleetd), "POST", "/v1/machines/m1/drain", raw)
    assert status == 400 and ("not a JSON number" in answer["error"]
                              or "deadline_s: want" in answer["error"]), answer


# --- bodies (class 4) ---------------------------------------------------------------------
@pytest.mark.parametrize("path, body", [
    ("/v1/units", {"units": [{"name": ["a.service"], "text": UNIT}]}),
    ("/v1/units", {"units": [{"name": {"a": 1}, "text": UNIT}, {"name": {"a": 1}}]}),
    ("/v1/units", {"units": [{"name": "a.service", "text": UNIT}], "replace": "no"}),
    ("/v1/units/state", {"names": [["a.service"]], "desired": "launched"}),
    ("/v1/units/state", {"names": ["a.service"], "desired": ["launched"]}),
    ("/v1/units/destroy", {"names": "a.service"}),
    ("/v1/units/restart", {"names": [None]}),
    ("/v1/machines", {"address": ["10.0.0.1"], "agent_command": "true"}),
    ("/v1/machines", {"address": "10.0.0.1", "name": ["m"], "agent_command": "true"}),
    ("/v1/machines", {"address": "10.0.0.1", "user": ["root"], "agent_command": "true"}),
    ("/v1/machines", {"address": "10.0.0.1", "agent_command": ["true"]}),
    ("/v1/machines", {"address": "10.0.0.1", "agent_command": "true", "identity": [1]}),
    ("/v1/machines", {"address": "10.0.0.1\nx", "agent_command": "true"}),
])
def test_fields_of_the_wrong_kind_are_refused(fleetd: Served, path: str,
                                             body: Dict[str, Any]) -> None:
    """A name given as a list answered 500 (``set()`` of unhashable names)."""
    status, answer = post(sock(fleetd), path, body)
    assert 400 <= status < 500 and "error" in answer, (status, answer)
    assert fleetd.daemon.registry.list_units() == []
    assert fleetd.daemon.registry.list_machines() == []


@pytest.mark.parametrize("raw, words", [
    (b"[" * 100_000 + b"]" * 100_000, "nested deeper than"),
    (b'{"names": ' + b"[" * 20 + b"]" * 20 + b"}", "nested deeper than"),
    (b'{"names": ["\\ud800.service"], "desired": "launched"}', "lone surrogate"),
    (b'{"names": ["caf\xe9.service"], "desired": "launched"}', "not UTF-8"),
    (b'{"names": ', "not JSON"),
    (b"[]", "not a JSON object"),
    (b"", "not JSON"),
])
def test_bodies_that_are_no_json_object_of_text_are_refused(fleetd: Served, raw: bytes,
                                                            words: str) -> None:
    for path in ("/v1/units/state", "/v1/units", "/v1/machines", "/v1/units/destroy"):
        status, answer = http(sock(fleetd), "POST", path, raw)
        refused(answer, status, 400, words)


def test_a_lone_surrogate_in_a_unit_is_refused_and_nothing_is_stored(fleetd: Served) -> None:
    body = json.dumps({"units": [{"name": "a.service", "text": UNIT + "Description=\ud800\n"}],
                       "desired": "launched"})  # json.dumps writes it as \ud800
    status, answer = http(sock(fleetd), "POST", "/v1/units", body.encode())
    refused(answer, status, 400, "lone surrogate")
    assert fleetd.daemon.registry.list_units() == []


def test_a_unit_over_a_mebibyte_is_refused(fleetd: Served) -> None:
    big = UNIT + "# " + "x" * unit_service.MAX_UNIT_TEXT + "\n"
    status, answer = post(sock(fleetd), "/v1/units",
                          {"units": [{"name": "big.service", "text": big}]})
    refused(answer, status, 413, "big.service: text is", "at most 1 MiB")
    assert fleetd.daemon.registry.list_units() == []


def test_a_request_over_the_body_limit_is_refused(fleetd: Served) -> None:
    """A 50 MB unit was stored; now aiohttp stops reading at MAX_BODY."""
    big = UNIT + "# " + "x" * (http_errors.MAX_BODY + 1) + "\n"
    try:
        status, answer = post(sock(fleetd), "/v1/units",
                              {"units": [{"name": "big.service", "text": big}]})
    except (BrokenPipeError, ConnectionResetError):
        pass  # fleetd answered and closed before all of it was sent; the registry shows
    else:
        refused(answer, status, 413, "POST /v1/units: request body over 4 MiB")
    assert fleetd.daemon.registry.list_units() == []


def test_unknown_routes_and_methods_answer_json(fleetd: Served) -> None:
    status, answer = http(sock(fleetd), "GET", "/v2/nothing")
    refused(answer, status, 404, "no such route: GET /v2/nothing")
    status, answer = http(sock(fleetd), "PUT", "/v1/units")
    refused(answer, status, 405, "PUT is not allowed on /v1/units")


@pytest.mark.parametrize("query", ["follow=maybe", "follow=1&lines=x"])
def test_journal_flags_are_yes_or_no(fleetd: Served, query: str) -> None:
    submit(fleetd)
    status, answer = http(sock(fleetd), "GET", f"/v1/units/a.service/journal?{query}")
    assert status == 400 and "error" in answer, answer


def test_purge_is_yes_or_no(fleetd: Served) -> None:
    assert add_machine(fleetd)[0] == 201
    status, answer = http(sock(fleetd), "DELETE", "/v1/machines/m1?purge=please")
    refused(answer, status, 400, "purge: want one of")
    assert fleetd.daemon.registry.get_machine("m1") is not None


def test_a_fault_in_fleetd_answers_500_naming_the_route_without_a_traceback(
        fleetd: Served, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken() -> List[Any]:
        raise KeyError("a bug")

    monkeypatch.setattr(fleetd.daemon.registry, "list_observed", lambda *a: broken())
    with caplog.at_level(logging.ERROR, "fleetd.api"):
        status, answer = http(sock(fleetd), "GET", "/v1/units")
    assert (status, answer) == (500, {
        "error": "GET /v1/units: internal error in fleetd (logged there)"})
    assert "KeyError: 'a bug'" in caplog.text  # the traceback is in fleetd's log
    assert http(sock(fleetd), "GET", "/v1/health")[0] == 200


def test_a_long_poll_whose_client_went_away_ends_at_once(fleetd: Served) -> None:
    """An abandoned ``fleetctl start`` (Ctrl-C) left its wait running for up to an hour:
    a task, and on TCP a connection counted against max_connections."""
    submit(fleetd)  # launched, never placed: a wait runs to its timeout

    async def handlers() -> int:
        """aiohttp's tasks: one per connection, which runs its requests' handlers."""
        return sum(getattr(t.get_coro(), "__qualname__", "") == "RequestHandler.start"
                   for t in asyncio.all_tasks())

    idle = fleetd.call(handlers())
    clients = [connect(sock(fleetd)) for _ in range(5)]
    for c in clients:
        c.sendall(b"GET /v1/units/a.service/wait?timeout=3600 HTTP/1.1\r\nHost: x\r\n\r\n")
    deadline = time.monotonic() + 10
    while fleetd.call(handlers()) < idle + 5:
        assert time.monotonic() < deadline, "the waits never began"
        time.sleep(0.02)
    for c in clients:
        c.close()
    while fleetd.call(handlers()) > idle:
        assert time.monotonic() < deadline + 10, "the waits outlived their clients"
        time.sleep(0.02)


def test_a_machine_add_whose_client_went_away_still_registers_the_machine(
        fleetd: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    """fleetd cancels a gone client's handler (an abandoned wait or journal -f ends), but
    not an install under way: that would leave an agent on a host fleetd does not know."""
    started, release = threading.Event(), threading.Event()

    async def slow_install(machine: Any, target: Any, **kwargs: Any) -> Any:
        started.set()
        while not release.is_set():
            await asyncio.sleep(0.01)
        return types.SimpleNamespace(agent_command="/opt/fleetd/bin/fleet-agent attach",
                                     to_json=dict)

    monkeypatch.setattr(bootstrap, "install_on", slow_install)
    body = json.dumps({"address": "10.9.9.9", "name": "m1"}).encode()
    with connect(sock(fleetd)) as s:
        s.sendall(b"POST /v1/machines HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%s"
                  % (len(body), body))
        assert started.wait(10)
    release.set()  # the client is gone; the install ends after it
    deadline = time.monotonic() + 10
    while not http(sock(fleetd), "GET", "/v1/machines")[1]["machines"]:
        assert time.monotonic() < deadline, "the machine was never registered"
        time.sleep(0.02)


# --- the token (class 8) and connections (class 4) over TCP -------------------------------
@pytest.fixture
def tcp(tmp_path: Path) -> Iterator[Served]:
    with served(tmp_path, listen=f"127.0.0.1:{free_port()}", token=TOKEN) as s:
        yield s


@pytest.fixture
def bounded(tmp_path: Path) -> Iterator[Served]:
    with served(tmp_path, listen=f"127.0.0.1:{free_port()}", token=TOKEN,
                idle_timeout_s=0.5, max_connections=3) as s:
        yield s


def tcp_where(s: Served) -> Any:
    return s.config.listen_host_port


@pytest.mark.parametrize("header, status", [
    (b"Bearer " + TOKEN.encode(), 200),
    (b"bearer " + TOKEN.encode(), 200),
    (b"BEARER  " + TOKEN.encode(), 200),
    (b"Basic " + TOKEN.encode(), 401),
    (b"Bearer " + TOKEN.encode() + b"x", 401),
    (b"Bearer \xff\xfe" + TOKEN.encode(), 401),
    (b"Bearer caf\xc3\xa9", 401),
    (b"\xe9", 401),
    (b"", 401),
])
def test_bearer_is_case_insensitive_and_raw_bytes_are_a_wrong_token(
        tcp: Served, header: bytes, status: int) -> None:
    got, answer = http(tcp_where(tcp), "GET", "/v1/units",
                       headers={"Authorization": header})
    assert got == status, answer
    if status == 401:
        assert answer == {"error": "missing or wrong bearer token"}


def test_idle_and_half_sent_connections_are_closed(bounded: Served) -> None:
    """aiohttp kept a silent connection for an hour (3630 s); a half-sent body held its
    handler for ever."""
    for where in (tcp_where(bounded), sock(bounded)):
        for sent in (b"", b"GET /v1/health HTTP/1.1\r\nHost:"):
            with connect(where) as s:
                s.sendall(sent)
                assert s.recv(100) == b""  # closed by fleetd (the socket's timeout is 10 s)
        head = (b"POST /v1/units/state HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                b"Authorization: Bearer " + TOKEN.encode() + b"\r\n\r\n{\"names\"")
        with connect(where) as s:
            s.sendall(head)
            answer = s.recv(65536)
        assert answer.startswith(b"HTTP/1.1 408 "), answer
        assert b"request body: not all of it arrived within 0.5s" in answer


def test_the_tcp_listener_holds_at_most_max_connections(bounded: Served) -> None:
    held = [connect(tcp_where(bounded)) for _ in range(3)]
    try:
        for s in held:  # a request in flight, so that they are not idle
            s.sendall(b"GET /v1/health HTTP/1.1\r\nHost:")
        status, body = exchange(tcp_where(bounded), b"GET /v1/health HTTP/1.1\r\n\r\n")
        assert status == 503
        assert json.loads(body) == {
            "error": "fleetd holds its maximum of 3 API connections; try again later"}
    finally:
        for s in held:
            s.close()
    auth = {"Authorization": b"Bearer " + TOKEN.encode()}
    deadline = time.monotonic() + 10
    while http(tcp_where(bounded), "GET", "/v1/health", headers=auth)[0] != 200:
        assert time.monotonic() < deadline, "connections never freed"
        time.sleep(0.05)
    # the Unix socket is root's and not bounded by it
    assert http(sock(bounded), "GET", "/v1/health")[0] == 200


# --- the registry's file (class 8) ---------------------------------------------------------
def test_the_registry_is_0600_whatever_the_umask_and_directory(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    os.chmod(state, 0o777)
    old = os.umask(0)
    try:
        registry = SqliteRegistry(str(state / "registry.db"))
        registry.list_units()
        files = sorted(p.name for p in state.iterdir())
        assert files == ["registry.db", "registry.db-shm", "registry.db-wal"]
        for p in state.iterdir():
            assert stat.S_IMODE(p.stat().st_mode) == 0o600, p
        at_once(registry.close())
        for p in state.iterdir():  # one an older fleetd left open to all is closed
            os.chmod(p, 0o644)
        at_once(SqliteRegistry(str(state / "registry.db")).close())
        assert {stat.S_IMODE(p.stat().st_mode) for p in state.iterdir()} <= {0o600}
    finally:
        os.umask(old)


# --- fleetctl's client (class 4) ------------------------------------------------------------
@pytest.mark.parametrize("name", ["caf\u00e9.service", "a b.service", "a\nb.service",
                                  "a#b.service", "\udcff.service"])
def test_the_client_sends_any_name_and_gets_fleetds_answer(fleetd: Served, name: str) -> None:
    """http.client refused non-ASCII (UnicodeEncodeError: a traceback) and control
    characters (InvalidURL, shown as 'cannot reach fleetd')."""
    with pytest.raises(ApiError) as err:
        Client(f"unix://{sock(fleetd)}").get(f"/v1/units/{name}")
    assert err.value.status == 404, err.value
    if "\udcff" not in name:  # a byte that is not UTF-8 comes back percent-encoded
        assert str(err.value) == f"unit {name} does not exist"


def test_an_error_never_echoes_a_huge_value(fleetd: Served) -> None:
    submit(fleetd)
    status, answer = post(sock(fleetd), "/v1/units/state",
                          {"names": ["a.service"], "desired": "x" * 100_000})
    refused(answer, status, 400, 'desired: "xxx', "is not one of")
    assert len(answer["error"]) < 200


def test_a_client_gone_mid_body_is_logged_in_one_line_without_a_traceback(
        fleetd: Served, caplog: pytest.LogCaptureFixture) -> None:
    """A POST whose client closes after half its body: nothing to answer, nothing
    stored, and fleetd's log says so in one line (it logged "POST /v1/units failed"
    with a ConnectionResetError traceback, as if fleetd had a bug)."""
    with caplog.at_level(logging.INFO, "fleetd.api"):
        with connect(sock(fleetd)) as c:
            c.sendall(b"POST /v1/units HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                      b"\r\nContent-Length: 1000\r\n\r\n{\"units\": [")
            time.sleep(0.2)
        deadline = time.monotonic() + 10
        while "went away" not in caplog.text:
            assert time.monotonic() < deadline, f"nothing logged: {caplog.text!r}"
            time.sleep(0.02)
    assert "Traceback" not in caplog.text and "failed" not in caplog.text
    assert [r.levelno for r in caplog.records if "went away" in r.getMessage()] == [
        logging.INFO]
    assert http(sock(fleetd), "GET", "/v1/units")[1] == {"units": []}
