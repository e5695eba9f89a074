"""EtcdRegistry's key layout and value checks (fleetd/registry/etcd_keys.py), and the
plans its writes make from a cache (etcd_writes.py): pure, no etcd."""

from __future__ import annotations

import json

import pytest

from fleetd.registry.base import FAILURES_KEPT, FailureRecord
from fleetd.registry.etcd_cache import Cache
from fleetd.registry.etcd_keys import BadValue, check_prefix, decode, encode, key, parse_key
from fleetd.registry.etcd_writes import chunks, record_failure, update_machine
from fleetd.registry.etcdv3_types import KeyValue, Put


def test_names_in_keys_cannot_make_other_keys() -> None:
    k = key("/fleetd", "observed", "m/1", "a%2F.service")
    assert k == "/fleetd/observed/m%2F1/a%252F.service"
    assert parse_key("/fleetd", k.encode()) == ("observed", ("m/1", "a%2F.service"))
    assert parse_key("/fleetd", b"/fleetd/leader") is None
    assert parse_key("/fleetd", b"/fleetd/units/a/b") is None  # one name for units
    assert parse_key("/fleetd", b"/fleetd2/units/a") is None
    assert parse_key("/fleetd", b"/fleetd/other/a") is None
    assert parse_key("/fleetd", b"/fleetd/units/\xff") is None


@pytest.mark.parametrize("value, why", [
    (b"\xff", "not JSON"),
    (b"[1]", "not a JSON object"),
    (b'{"address": "a"}', "no 'port'"),
    (b'{"address": "a", "port": 70000}', "'port' not a port"),
    (b'{"address": "a", "port": true}', "'port' not an integer"),
    (b'{"address": "a", "port": 22, "user": "r", "identity": null, "known_hosts": null,'
     b' "agent_command": "x", "metadata": {"k": 1}, "draining": null,'
     b' "drain_deadline": null}', "'metadata' not an object of strings"),
    (b'{"address": "a", "port": 22, "user": "r", "identity": null, "known_hosts": null,'
     b' "agent_command": "x", "metadata": {}, "draining": Infinity,'
     b' "drain_deadline": null}', "Infinity is not JSON"),
])
def test_a_value_fleetd_did_not_write_is_refused_naming_the_key(value: bytes, why: str) -> None:
    with pytest.raises(BadValue) as e:
        decode("machines", b"/fleetd/machines/m1", value)
    assert str(e.value).startswith("etcd key /fleetd/machines/m1: ")
    assert why in str(e.value)


def test_documents_round_trip() -> None:
    doc = {"hash": "h", "vars": {"x": "1"}, "desired": "launched", "generation": 2,
           "updated_at": 1.5, "versions": [[1, "h", 1.5, "alice", {"canary": 1}]]}
    assert decode("units", b"k", encode(doc)) == doc
    four = {**doc, "versions": [[1, "h", 1.5, "alice"]]}  # before versions had options
    assert decode("units", b"k", encode(four))["versions"] == [[1, "h", 1.5, "alice", {}]]
    # a unit written by a fleetd before versions: it has none
    older = {k: v for k, v in doc.items() if k != "versions"}
    assert decode("units", b"k", encode(older)) == {**older, "versions": []}
    with pytest.raises(BadValue, match="'versions' not a list of"):
        decode("units", b"k", encode({**doc, "versions": [[1, "h", 1.5, "a", []]]}))
    with pytest.raises(BadValue, match="'versions' not a list of"):
        decode("units", b"k", encode({**doc, "versions": [[1, "h"]]}))
    with pytest.raises(BadValue, match="'desired' not one of"):
        decode("units", b"k", encode({**doc, "desired": "running"}))


@pytest.mark.parametrize("bad", ["fleetd", "", "/", "//", "/a\nb"])
def test_a_bad_prefix_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="etcd prefix"):
        check_prefix(bad)
    assert check_prefix("/fleetd/") == "/fleetd"


def _kv(k: str, doc: object, rev: int = 5) -> KeyValue:
    return KeyValue(k.encode(), json.dumps(doc).encode(), rev, rev, 1, 0)


def test_only_last_seen_is_not_written() -> None:
    cache = Cache("/f")
    cache.put(_kv("/f/machines/m1", {
        "address": "a", "port": 22, "user": "r", "identity": None, "known_hosts": None,
        "agent_command": "x", "metadata": {}, "draining": None, "drain_deadline": None}))
    assert update_machine(cache, "m1", {"last_seen": 5.0}) is None
    m = cache.machine("m1")
    assert m is not None and m.last_seen == 5.0
    plan = update_machine(cache, "m1", {"state": "up", "facts": {"t": (1, 2)}})
    assert plan is not None
    (put,) = plan.ops
    assert isinstance(put, Put) and b'"last_seen":5.0' in put.value
    assert update_machine(cache, "gone", {"state": "up"}) is None
    with pytest.raises(ValueError, match="address"):
        update_machine(cache, "m1", {"address": "b"})


def test_failures_past_the_kept_number_are_dropped() -> None:
    cache = Cache("/f")
    for i in range(FAILURES_KEPT):
        cache.put(_kv(f"/f/failures/a.service/{i:04d}",
                      {"hash": "h", "machine": "m", "at": float(i + 1), "reason": "r"}))
    plan = record_failure(cache, FailureRecord("a.service", "h", "m", 500.0, "new"))
    assert [type(o).__name__ for o in plan.ops] == ["Put", "Delete"]
    assert plan.ops[1].key == "/f/failures/a.service/0000"
    older = record_failure(cache, FailureRecord("a.service", "h", "m", 0.5, "old"))
    assert [type(o).__name__ for o in older.ops] == []  # older than every kept one


def test_chunks_fit_etcds_limits() -> None:
    from fleetd.registry.etcd_writes import Plan
    plans = [(str(i), Plan([], [Put(f"k{i}", "v")])) for i in range(300)]
    got = chunks(128, 10**6, plans)
    assert [len(c) for c in got] == [126, 126, 48]
    small = chunks(128, 1000, plans)
    assert all(sum(64 + 2 + 1 + len(n) for n, _ in c) <= 1000 for c in small)
    assert sum(len(c) for c in small) == 300
