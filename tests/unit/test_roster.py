"""server_rows, the pure part of ``list-servers`` (fleetd.engine.roster): the roster,
the leader key and etcd's members turned into rows, whatever state they are in."""

from __future__ import annotations

import json
from typing import Any

import pytest

from fleetd.engine.etcd_lock import leader_info
from fleetd.engine.roster import (
    ETCD,
    FLEETD,
    ServerRecord,
    check_name,
    parse_record,
    server_rows,
)
from fleetd.registry.etcdv3_types import EndpointStatus, KeyValue, Member


def kv(key: str, value: Any, create: int = 10, lease: int = 7) -> KeyValue:
    raw = value if isinstance(value, bytes) else json.dumps(value).encode()
    return KeyValue(key.encode(), raw, create, create, 1, lease)


def entry(name: str, pid: int = 100) -> KeyValue:
    return kv(f"/f/servers/{name}", ServerRecord(name, (f"{name}:8080",), pid, 1000.0,
                                                 "0.1.0").to_json())


def lead(name: str, epoch: int = 42) -> KeyValue:
    return kv("/f/leader", {"name": name, "api": [f"{name}:8080"], "pid": 1,
                            "since": 2000.0}, create=epoch)


def status(ep: str, member: int, leader: int = 1, **kw: Any) -> EndpointStatus:
    return EndpointStatus(ep, True, "", member, "3.4.23", leader, 2, 99, 4096, **kw)


MEMBERS = [Member(1, "m1", ("http://a:1",), ("http://127.0.0.1:1",), False),
           Member(2, "m2", ("http://a:2",), ("http://127.0.0.1:2",), False),
           Member(3, "m3", ("http://a:3",), ("http://127.0.0.1:3",), False)]


def test_the_leader_first_with_its_term() -> None:
    rows = server_rows([entry("beta"), entry("alpha")], leader_info(lead("beta")), [], [])
    assert [(r.name, r.leader, r.epoch, r.since) for r in rows] == [
        ("beta", True, 42, 2000.0), ("alpha", False, None, None)]
    assert rows[0].addresses == ("beta:8080",) and rows[0].version == "0.1.0"
    assert all(r.kind == FLEETD and r.healthy for r in rows)


def test_no_leader() -> None:
    rows = server_rows([entry("alpha")], None, [], [])
    assert [(r.name, r.leader) for r in rows] == [("alpha", False)]


def test_a_leader_missing_from_the_roster_gets_a_row_saying_so() -> None:
    rows = server_rows([entry("alpha")], leader_info(lead("gamma", 50)), [], [])
    gamma = next(r for r in rows if r.name == "gamma")
    assert gamma.leader and gamma.epoch == 50 and not gamma.healthy
    assert "not in the roster" in gamma.detail
    assert rows[0] is gamma


@pytest.mark.parametrize("value, why", [
    (b"\xff\xfe", "not JSON"),
    (b"[1]", "not a JSON object"),
    ({"name": "x", "api": "a:1", "pid": 1, "started_at": 1, "version": ""}, "'api'"),
    ({"name": "x", "api": [], "pid": "1", "started_at": 1, "version": ""}, "'pid'"),
    ({"name": "x", "api": [], "pid": 1, "started_at": "now", "version": ""}, "'started_at'"),
    ({"name": "x", "api": [], "pid": 1, "started_at": 1e999, "version": ""}, "'started_at'"),
    ({"name": "", "api": [], "pid": 1, "started_at": 1, "version": ""}, "'name'"),
])
def test_an_unreadable_entry_is_a_row_naming_its_key(value: Any, why: str) -> None:
    bad = kv("/f/servers/odd", value)
    with pytest.raises(ValueError, match=why):
        parse_record(bad)
    rows = server_rows([bad, entry("alpha")], None, [], [])
    odd = next(r for r in rows if r.name == "odd")
    assert not odd.healthy and "/f/servers/odd" in odd.detail and why in odd.detail


def test_an_unreadable_leader_key_is_shown_not_raised() -> None:
    info = leader_info(kv("/f/leader", b"garbage", create=60))
    assert info.error and info.epoch == 60
    rows = server_rows([entry("alpha")], info, [], [])
    row = next(r for r in rows if r.leader)
    assert row.name == "?" and row.epoch == 60 and "unreadable" in row.detail
    assert not next(r for r in rows if r.name == "alpha").leader


def test_members_with_their_health() -> None:
    statuses = [status("127.0.0.1:1", 1), status("127.0.0.1:2", 2),
                EndpointStatus("127.0.0.1:3", False, "connection refused")]
    rows = [r for r in server_rows([], None, MEMBERS, statuses) if r.kind == ETCD]
    assert [(r.name, r.leader, r.healthy, r.detail) for r in rows] == [
        ("m1", True, True, ""), ("m2", False, True, ""),
        ("m3", False, False, "connection refused")]
    assert rows[0].raft_index == 99 and rows[0].addresses == ("127.0.0.1:1",)


def test_a_member_not_among_the_endpoints_and_an_endpoint_not_a_member() -> None:
    statuses = [status("127.0.0.1:1", 1), status("127.0.0.1:9", 9, leader=9)]
    rows = [r for r in server_rows([], None, MEMBERS, statuses) if r.kind == ETCD]
    by = {r.name: r for r in rows}
    assert not by["m2"].healthy and "not among" in by["m2"].detail
    assert by["127.0.0.1:9"].detail == "not a member of the cluster"


def test_without_the_member_list_one_row_per_endpoint() -> None:
    statuses = [status("127.0.0.1:1", 1),
                EndpointStatus("127.0.0.1:2", False, "connection refused")]
    rows = server_rows([], None, None, statuses, "no etcd endpoint answered")
    assert [(r.name, r.healthy) for r in rows] == [("127.0.0.1:1", True),
                                                  ("127.0.0.1:2", False)]
    assert "member list: no etcd endpoint answered" in rows[0].detail
    assert rows[1].detail.startswith("connection refused")


def test_rows_are_json() -> None:
    rows = server_rows([entry("alpha")], leader_info(lead("alpha")), MEMBERS,
                       [status("127.0.0.1:1", 1)])
    text = json.dumps([r.to_json() for r in rows])
    assert json.loads(text)[0]["addresses"] == ["alpha:8080"]


@pytest.mark.parametrize("name", ["", "a/b", " a", "a\n", "x" * 201])
def test_a_name_that_cannot_be_a_roster_key_is_refused_naming_it(name: str) -> None:
    with pytest.raises(ValueError, match="fleetd name"):
        check_name(name)
    assert check_name("fleetd-1.example") == "fleetd-1.example"
