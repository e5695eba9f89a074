"""Issue 10's fuzzing of the API: hypothesis-made bodies, names and query strings for
every route against the real aiohttp app of a real Daemon with a real SQLite registry
(apikit). Whatever comes, the answer is JSON, a refusal is ``{"error": ...}`` and never
a 500; and after any run of accepted and refused calls the registry passes SQLite's
integrity check and holds exactly what was acknowledged. Bounded: a few seconds."""

from __future__ import annotations

import json
import socket
import sqlite3
import tempfile
import urllib.parse
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
from apikit import Served, http, served
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

UNIT = "[Service]\nExecStart=/bin/sleep 1000\n"

# --- what a hostile client sends ---------------------------------------------------------------
surrogates = st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF)
texts = st.one_of(st.text(max_size=40), st.text(st.one_of(st.characters(), surrogates),
                                                max_size=10))
unit_names = st.one_of(
    st.sampled_from(["a.service", "b.service", "web@.service", "web@1.service",
                     ".hidden.service", "-x.service", "../../x.service", "a" * 250 + ".service",
                     "caf\u00e9.service", "\ud800.service", ""]),
    texts)
numbers = st.one_of(
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e999, True, False, None,
                     "nan", "1", "\u00b2", 2**64, -1, 0, 22, 65535, 1.5]),
    st.integers(), st.floats(), st.text(max_size=5))
json_values = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), texts, unit_names),
    lambda inner: st.one_of(st.lists(inner, max_size=4),
                            st.dictionaries(texts, inner, max_size=4)),
    max_leaves=12)
anything = st.one_of(json_values, numbers, unit_names)
unit_texts = st.one_of(st.just(UNIT), st.just(UNIT + "CPUQuota=nan%\n"),
                       st.just("[Service]\nExecStart=/bin/true {{ vars.x }}\n"),
                       st.just("[Service]\nExecStart=/bin/true\nStartLimitBurst=\u00b2\n"),
                       st.just("[Service\n"), texts, anything)
unit_items = st.one_of(
    st.fixed_dictionaries({"name": unit_names}, optional={
        "text": unit_texts, "vars": anything, "source": anything,
        "template_text": unit_texts}),
    anything)
bodies: Dict[str, Any] = {
    "POST /v1/machines": st.fixed_dictionaries({}, optional={
        "address": st.one_of(st.just("10.9.9.9"), anything), "name": anything,
        "port": numbers, "user": anything, "metadata": anything, "identity": anything,
        "known_hosts": anything, "agent_command": st.one_of(st.just("true"), anything),
        "prefix": anything}),
    "POST /v1/machines/{name}/upgrade": st.fixed_dictionaries({}, optional={
        "force": anything}),
    "POST /v1/machines/{name}/drain": st.fixed_dictionaries({}, optional={
        "deadline_s": numbers}),
    "POST /v1/machines/{name}/undrain": st.just({}),
    "POST /v1/units": st.fixed_dictionaries({}, optional={
        "units": st.one_of(st.lists(unit_items, max_size=3), anything),
        "desired": st.one_of(st.sampled_from(["inactive", "loaded", "launched"]), anything),
        "replace": anything}),
    "POST /v1/units/state": st.fixed_dictionaries({}, optional={
        "names": st.one_of(st.lists(unit_names, max_size=3), anything),
        "desired": st.one_of(st.sampled_from(["inactive", "loaded", "launched"]), anything)}),
    "POST /v1/units/destroy": st.fixed_dictionaries({}, optional={
        "names": st.one_of(st.lists(unit_names, max_size=3), anything)}),
    "POST /v1/units/restart": st.fixed_dictionaries({}, optional={
        "names": st.one_of(st.lists(unit_names, max_size=3), anything)}),
}
# a long poll's timeout: every kind of text, but none that waits more than 0.05 s
short_seconds = st.one_of(
    st.sampled_from(["nan", "inf", "-inf", "1e999", "-1", "\u00b2", "", "0x1", "0", "0.01"]),
    st.text(alphabet="nanifNI\u00b2-+eE.xX_ \u0660", max_size=8),
    st.floats(max_value=0.05).map(repr))
queries: Dict[str, Any] = {
    "GET /v1/machines": st.fixed_dictionaries({"timeout": short_seconds}, optional={
        "after": st.one_of(st.just("0"), st.just("999999999"), st.text(max_size=8))}),
    "DELETE /v1/machines/{name}": st.fixed_dictionaries({}, optional={"purge": texts}),
    "GET /v1/units/{name}/wait": st.fixed_dictionaries({"timeout": short_seconds}, optional={
        "until": st.one_of(st.sampled_from(["running", "healthy", "stopped", "gone",
                                            "unplaced"]), texts)}),
    "GET /v1/units/{name}/status": st.fixed_dictionaries({}, optional={
        "lines": st.one_of(st.sampled_from(["nan", "-1", "10001", "\u00b2", "5"]),
                           st.text(max_size=6))}),
    "GET /v1/units/{name}/journal": st.fixed_dictionaries({}, optional={
        "lines": st.text(max_size=6), "follow": texts}),
}
ROUTES = ["GET /v1/health", "GET /v1/machines", "POST /v1/machines",
          "DELETE /v1/machines/{name}", "POST /v1/machines/{name}/upgrade",
          "POST /v1/machines/{name}/drain", "POST /v1/machines/{name}/undrain",
          "GET /v1/units", "POST /v1/units", "POST /v1/units/state",
          "POST /v1/units/destroy", "POST /v1/units/restart", "GET /v1/unit-files",
          "GET /v1/units/{name}", "GET /v1/units/{name}/wait", "GET /v1/units/{name}/status",
          "GET /v1/units/{name}/journal"]
raw_bodies = st.one_of(
    st.binary(max_size=64),
    st.integers(1, 3000).map(lambda n: b'{"names": ' + b"[" * n + b"]" * n + b"}"),
    st.integers(1, 3000).map(lambda n: b"{" + b'"a":{' * n + b"}" * (n + 1)),
    st.sampled_from([b'{"names": ["\\ud800"]}', b'{"units": NaN}', b"\xff\xfe", b"null",
                     b'{"units": [{"name": "a.service", "text": "\\udfff"}]}']))


def quote(text: str) -> str:
    """Percent-encoded as a client would, lone surrogates as the bytes they would be."""
    return urllib.parse.quote(text.encode("utf-8", "surrogatepass"), safe="")


@st.composite
def requests(draw: st.DrawFn) -> Tuple[str, str, Optional[bytes]]:
    route = draw(st.sampled_from(ROUTES))
    method, path = route.split(" ")
    path = path.replace("{name}", quote(draw(st.one_of(unit_names, st.just("m1")))) or "x")
    if route in queries:
        params = draw(queries[route])
        if params:
            path += "?" + "&".join(f"{quote(k)}={quote(v)}" for k, v in params.items())
    body: Optional[bytes] = None
    if method == "POST":
        if route in bodies and draw(st.booleans()):
            body = json.dumps(draw(bodies[route])).encode()  # NaN as NaN, \ud800 escaped
        else:
            body = draw(raw_bodies)
    return method, path, body


def answered_well(status: int, answer: Any) -> None:
    assert status != 500 and status < 600, (status, answer)
    assert not isinstance(answer, bytes) or status < 400, (status, answer)
    if status >= 400:
        assert isinstance(answer, dict) and isinstance(answer.get("error"), str), answer
        assert "Traceback" not in answer["error"]


@pytest.fixture(scope="module")
def fleetd() -> Iterator[Served]:
    with tempfile.TemporaryDirectory() as tmp, served(Path(tmp)) as s:
        status, _ = http(s.config.socket, "POST", "/v1/machines", json.dumps(
            {"address": "10.9.9.9", "name": "m1", "agent_command": "true"}).encode())
        assert status == 201
        yield s


@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(request=requests())
def test_every_route_answers_hostile_requests_with_json_never_500(
        fleetd: Served, request: Tuple[str, str, Optional[bytes]]) -> None:
    method, path, body = request
    status, answer = http(fleetd.config.socket, method, path, body)
    if not (status == 400 and isinstance(answer, bytes)):  # aiohttp's parser refused the URL
        answered_well(status, answer)
    assert http(fleetd.config.socket, "GET", "/v1/health")[0] == 200


# --- the property: acknowledged is stored, and the registry stays whole -----------------------
operations = st.one_of(
    st.tuples(st.just("POST /v1/units"), bodies["POST /v1/units"]),
    st.tuples(st.just("POST /v1/units"), st.fixed_dictionaries({
        "units": st.lists(st.fixed_dictionaries({
            "name": st.sampled_from(["a.service", "b.service", "web@.service"]),
            "text": st.one_of(st.sampled_from([UNIT, UNIT + "# 2\n"]), texts)}),
            min_size=1, max_size=2),
        "replace": st.booleans()})),
    st.tuples(st.just("POST /v1/units/destroy"), bodies["POST /v1/units/destroy"]),
    st.tuples(st.just("POST /v1/units/destroy"), st.fixed_dictionaries({
        "names": st.lists(st.sampled_from(["a.service", "b.service", "web@.service"]),
                          min_size=1, max_size=2)})),
    st.tuples(st.just("POST /v1/units/state"), bodies["POST /v1/units/state"]),
    st.tuples(st.just("POST /v1/units/restart"), bodies["POST /v1/units/restart"]),
    st.tuples(st.just("POST /v1/machines"), bodies["POST /v1/machines"]),
    st.tuples(st.just("DELETE /v1/machines/{name}"), unit_names),
    st.tuples(st.sampled_from(["POST /v1/units", "POST /v1/units/destroy"]), raw_bodies),
)


class Acknowledged:
    """What fleetd said it stored: unit -> text (None: stored, text not ours to know,
    an instance from its template), and machines."""

    def __init__(self) -> None:
        self.units: Dict[str, Optional[str]] = {}
        self.machines: Dict[str, str] = {}

    def apply(self, route: str, payload: Any, status: int, answer: Any) -> None:
        if route == "POST /v1/units" and status == 200:
            sent = {i["name"]: i.get("text") for i in payload["units"]}
            for unit in answer["units"]:
                text = sent.get(unit["name"])
                self.units[unit["name"]] = text if isinstance(text, str) else None
        elif route == "POST /v1/units/destroy" and status == 200:
            for name in answer["destroyed"]:
                self.units.pop(name, None)
        elif route == "POST /v1/machines" and status == 201:
            self.machines[answer["machine"]["name"]] = answer["machine"]["address"]
        elif route == "DELETE /v1/machines/{name}" and status == 200:
            self.machines.pop(answer["removed"], None)


def call(s: Served, route: str, payload: Any) -> Tuple[int, Any]:
    method, path = route.split(" ")
    if "{name}" in path:
        return http(s.config.socket, method, path.replace("{name}", quote(payload) or "x"))
    raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    return http(s.config.socket, method, path, raw)


def check_registry(s: Served, acked: Acknowledged) -> None:
    db = sqlite3.connect(f"file:{s.daemon.registry.path}?mode=ro", uri=True)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        db.close()
    for name, text in acked.units.items():
        status, unit = http(s.config.socket, "GET", f"/v1/units/{quote(name)}")
        assert status == 200, (name, unit)
        if text is not None:
            assert unit["text"] == text
    listed = {u.name for u in s.daemon.registry.list_units()}
    assert listed == set(acked.units)
    machines = {m.name: m.address for m in s.daemon.registry.list_machines()}
    assert machines == acked.machines


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(steps=st.lists(operations, min_size=1, max_size=12))
def test_after_any_calls_the_registry_is_whole_and_holds_what_was_acknowledged(
        steps: List[Tuple[str, Any]]) -> None:
    with tempfile.TemporaryDirectory() as tmp, served(Path(tmp)) as s:
        acked = Acknowledged()
        for route, payload in steps:
            status, answer = call(s, route, payload)
            answered_well(status, answer)
            acked.apply(route, payload, status, answer)
        check_registry(s, acked)


@pytest.fixture(scope="module")
def tcp_fleetd() -> Iterator[Served]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with tempfile.TemporaryDirectory() as tmp, served(Path(tmp), listen=f"127.0.0.1:{port}",
                                                      token=TOKEN) as s:
        yield s


TOKEN = "a-token-of-more-than-16-bytes"
headers = st.one_of(
    st.binary(max_size=60),
    st.tuples(st.sampled_from([b"Bearer", b"bearer", b"BEARER", b"Basic", b"Bearer\t", b""]),
              st.sampled_from([b" ", b"  ", b""]),
              st.one_of(st.just(TOKEN.encode()), st.binary(max_size=40)),
              ).map(b"".join))


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(header=headers)
def test_any_authorization_header_is_a_token_or_a_401(tcp_fleetd: Served,
                                                     header: bytes) -> None:
    """Raw bytes that are not UTF-8 answered 500 (``str.encode`` of them)."""
    header = header.replace(b"\r", b"").replace(b"\n", b"")  # one header line
    status, answer = http(tcp_fleetd.config.listen_host_port, "GET", "/v1/units",
                          headers={"Authorization": header})
    if status == 400 and isinstance(answer, bytes):
        return  # aiohttp's parser refused a control character in the header
    if status == 200:
        scheme, _, token = header.strip().partition(b" ")
        assert scheme.lower() == b"bearer" and token.strip() == TOKEN.encode(), header
    else:
        assert (status, answer) == (401, {"error": "missing or wrong bearer token"})
