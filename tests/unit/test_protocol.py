"""fleetd.protocol: versioned JSON lines between fleetd and fleet-agent."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetd import protocol
from fleetd.protocol import ProtocolError, decode, encode, spec_list, unit_spec, unit_status


def test_encode_is_one_compact_sorted_json_line() -> None:
    line = encode("hello", daemon="fleetd", heartbeat_s=1.0)
    assert line == b'{"daemon":"fleetd","heartbeat_s":1.0,"type":"hello","v":1}\n'
    assert line.count(b"\n") == 1


def test_encode_escapes_newlines_inside_values() -> None:
    line = encode("error", message="two\nlines")
    assert line.count(b"\n") == 1
    assert decode(line)["message"] == "two\nlines"


@pytest.mark.parametrize(
    ("kind", "fields"),
    [
        ("bye", {}),
        ("hello", {"machine_id": "m1", "hostname": "h", "agent_version": "0.1",
                   "facts": {"cpus": 4, "tags": ["a", "b"]}}),
        ("desired", {"units": [unit_spec("a.service", "h", protocol.WANT_RUNNING, "exec",
                                         {"commands": [], "environment": {"A": "é"}})]}),
        ("status", {"units": [unit_status("a.service", "h", protocol.RUNNING, pid=42,
                                          started_at=1.5)]}),
        ("unit", {"unit": unit_status("a.service", "h", protocol.FAILED, exit_status=1,
                                      restarts=2, error="boom")}),
        ("removed", {"name": "a.service"}),
        ("heartbeat", {"seq": 7, "time": 12.25}),
    ],
)
def test_round_trip(kind: str, fields: dict[str, Any]) -> None:
    msg = decode(encode(kind, **fields))
    assert msg == {"v": protocol.VERSION, "type": kind, **fields}


def test_decode_accepts_surrounding_whitespace() -> None:
    assert decode(b'  {"v": 1, "type": "bye"}\r\n') == {"v": 1, "type": "bye"}


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10)
    | st.floats(allow_nan=False, allow_infinity=False),
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=10,
)


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=12),
       st.dictionaries(st.text(max_size=8).filter(lambda k: k not in ("v", "type", "kind")), _json,
                       max_size=5))
def test_round_trip_property(kind: str, fields: dict[str, Any]) -> None:
    assert decode(encode(kind, **fields)) == {"v": protocol.VERSION, "type": kind, **fields}


@pytest.mark.parametrize(
    ("line", "fragment"),
    [
        (b"", "not a JSON line"),
        (b"not json\n", "not a JSON line"),
        (b'{"v": 1, "type": "bye"', "not a JSON line"),
        (b"\xff\xfe{}", "not a JSON line"),
        (b"[1, 2]\n", "not a JSON object"),
        (b'"hello"\n', "not a JSON object"),
        (b"null\n", "not a JSON object"),
        (b"1\n", "not a JSON object"),
        (b'{"type": "bye"}\n', "protocol version None is not supported"),
        (b'{"v": 2, "type": "bye"}\n', "protocol version 2 is not supported"),
        (b'{"v": 0, "type": "bye"}\n', "protocol version 0"),
        (b'{"v": "1", "type": "bye"}\n', "protocol version '1'"),
        (b'{"v": true, "type": "bye"}\n', "protocol version True"),  # JSON true == 1
        (b'{"v": 1}\n', "message without a type"),
        (b'{"v": 1, "type": 5}\n', "message without a type"),
        (b'{"v": 1, "type": null}\n', "message without a type"),
    ],
)
def test_decode_errors(line: bytes, fragment: str) -> None:
    with pytest.raises(ProtocolError) as info:
        decode(line)
    assert fragment in str(info.value)


def test_decode_error_quotes_only_the_start_of_a_long_line() -> None:
    line = b"x" * 10_000
    with pytest.raises(ProtocolError) as info:
        decode(line)
    assert len(str(info.value)) < 300


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=60))
def test_decode_only_raises_protocol_error(line: bytes) -> None:
    try:
        msg = decode(line)
    except ProtocolError:
        return
    assert isinstance(msg, dict)
    assert isinstance(msg["type"], str)


# --- message helpers ----------------------------------------------------------------


def test_unit_spec_shape() -> None:
    assert unit_spec("a.service", "h", "running", "exec", {"x": 1}) == {
        "name": "a.service", "hash": "h", "want": "running", "driver": "exec",
        "config": {"x": 1}, "generation": 0,
    }


def test_unit_status_defaults() -> None:
    assert unit_status("a.service", "h", protocol.STOPPED) == {
        "name": "a.service", "hash": "h", "state": "stopped", "pid": None,
        "started_at": None, "exit_status": None, "restarts": 0, "error": None,
        "generation": 0, "health": "unknown",
    }


def test_unit_states() -> None:
    assert protocol.UNIT_STATES == (
        "starting", "running", "stopping", "stopped", "exited", "failed"
    )


@pytest.mark.parametrize(
    "units",
    [
        [],
        [{"name": "a.service"}],
        [unit_spec("a.service", "h", "running", "exec", {}),
         unit_status("b.service", "h", "running")],
    ],
)
def test_spec_list_returns_the_units(units: list[dict[str, Any]]) -> None:
    msg = decode(encode("desired", units=units))
    assert spec_list(msg) == units
    assert spec_list(msg) is msg["units"]


@pytest.mark.parametrize(
    "msg",
    [
        {"v": 1, "type": "desired"},
        {"v": 1, "type": "desired", "units": None},
        {"v": 1, "type": "desired", "units": {"name": "a.service"}},
        {"v": 1, "type": "desired", "units": "a.service"},
        {"v": 1, "type": "desired", "units": ["a.service"]},
        {"v": 1, "type": "desired", "units": [{"hash": "h"}]},
        {"v": 1, "type": "desired", "units": [{"name": "a"}, None]},
    ],
)
def test_spec_list_shape_errors(msg: dict[str, Any]) -> None:
    with pytest.raises(ProtocolError, match="desired message without a list of units"):
        spec_list(msg)


def test_spec_list_error_names_the_message_type() -> None:
    with pytest.raises(ProtocolError, match=r"^status message"):
        spec_list({"v": 1, "type": "status", "units": 3})


def test_max_line_fits_a_large_desired_set() -> None:
    units = [unit_spec(f"u{i}.service", "h" * 64, "running", "exec",
                       {"commands": [{"words": ["/bin/true"]}]}) for i in range(5000)]
    assert len(encode("desired", units=units)) < protocol.MAX_LINE
    assert json.loads(encode("desired", units=units))["units"][0]["name"] == "u0.service"
