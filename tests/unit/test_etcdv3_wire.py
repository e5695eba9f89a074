"""The etcd v3 client's pure parts (the gateway's encoding, transaction parts, how an
answer is classified, the errors' wording) and its failures with no etcd at all: closed
ports, and a port that accepts but never answers. Real etcd: tests/integration/
test_etcd_client.py."""

from __future__ import annotations

import asyncio
import base64
import socket
from typing import Iterator, List

import pytest

from fleetd.registry.etcdv3 import EtcdClient, gateway_error, parse_url
from fleetd.registry.etcdv3_types import (
    Compare,
    Delete,
    EtcdQuorumLost,
    EtcdUnavailable,
    Event,
    Get,
    Put,
    error_kind,
    key_range,
    prefix_end,
)


def b64(s: bytes) -> str:
    return base64.b64encode(s).decode()


@pytest.mark.parametrize(("prefix", "end"), [
    (b"a", b"b"), (b"units/", b"units0"), (b"a\xff", b"b"), (b"a\xfe\xff", b"a\xff"),
    (b"\xff\xff", b"\0"), (b"", b"\0"),
])
def test_prefix_end(prefix: bytes, end: bytes) -> None:
    assert prefix_end(prefix) == end


def test_key_range() -> None:
    assert key_range("k", False) == {"key": b64(b"k")}
    assert key_range("k/", True) == {"key": b64(b"k/"), "range_end": b64(b"k0")}
    assert key_range("", True) == {"key": b64(b"\0"), "range_end": b64(b"\0")}  # every key


def test_transaction_parts_on_the_wire() -> None:
    assert Compare.create("lock", "==", 0).to_json() == {
        "key": b64(b"lock"), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}
    assert Compare.value(b"k", "!=", b"\x00").to_json() == {
        "key": b64(b"k"), "target": "VALUE", "result": "NOT_EQUAL", "value": b64(b"\x00")}
    assert Compare.mod("p/", "<", 7, prefix=True).to_json() == {
        "key": b64(b"p/"), "range_end": b64(b"p0"), "target": "MOD", "result": "LESS",
        "mod_revision": "7"}
    assert Compare.version("k", ">", 1).to_json()["version"] == "1"
    with pytest.raises(ValueError):
        Compare.version("k", "<=", 1)
    assert Put("k", "v", lease=12).to_json() == {
        "request_put": {"key": b64(b"k"), "value": b64(b"v"), "lease": "12"}}
    assert Get("p/", prefix=True).to_json() == {
        "request_range": {"key": b64(b"p/"), "range_end": b64(b"p0")}}
    assert Delete("k").to_json() == {"request_delete_range": {"key": b64(b"k")}}


def test_a_delete_event_has_zero_fields_left_out() -> None:
    e = Event.from_json({"type": "DELETE", "kv": {"key": b64(b"k"), "mod_revision": "9"}})
    assert (e.type, e.kv.key, e.kv.value, e.kv.mod_revision, e.kv.version) == \
        ("DELETE", b"k", b"", 9, 0)
    assert Event.from_json({"kv": {"key": b64(b"k")}}).type == "PUT"


def test_answers_classified() -> None:
    assert error_kind(14, "etcdserver: no leader") == "no-leader"
    for m in ("etcdserver: request timed out",
              "etcdserver: request timed out, possibly due to previous leader failure",
              "context deadline exceeded"):
        assert error_kind(14, m) == "timed-out"
    assert error_kind(14, "grpc: the connection is unavailable") == "unavailable"
    assert error_kind(3, "etcdserver: duplicate key given in txn request") == "refused"
    assert gateway_error({"error": "x", "message": "etcdserver: no leader", "code": 14}) == \
        (14, "etcdserver: no leader")
    assert gateway_error({"error": {"grpc_code": 14, "message": "m"}}) == (14, "m")
    assert gateway_error({"header": {}}) is None


def test_errors_name_every_endpoint_and_why() -> None:
    e = EtcdUnavailable([("10.0.0.1:2379", "connection refused"), ("10.0.0.2:2379", "timed out")])
    assert str(e) == ("no etcd endpoint answered: 10.0.0.1:2379 connection refused; "
                      "10.0.0.2:2379 timed out")
    q = EtcdQuorumLost([("a:1", "etcdserver: no leader")], maybe_applied=True)
    assert isinstance(q, EtcdUnavailable) and q.maybe_applied
    assert str(q) == ("etcd has lost its quorum (no leader): a:1 etcdserver: no leader "
                      "(the write may have been applied)")


@pytest.fixture
def closed_ports() -> Iterator[List[str]]:
    """Two loopback ports nothing listens on (bound, never listened: refused)."""
    socks = [socket.socket() for _ in range(2)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    yield [f"127.0.0.1:{s.getsockname()[1]}" for s in socks]
    for s in socks:
        s.close()


@pytest.fixture
def silent_port() -> Iterator[str]:
    """A port that accepts connections (the kernel's backlog) and never answers."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield f"127.0.0.1:{s.getsockname()[1]}"
    s.close()


def test_no_endpoint_answers(closed_ports: List[str]) -> None:
    async def go() -> EtcdUnavailable:
        async with EtcdClient(closed_ports) as c:
            with pytest.raises(EtcdUnavailable) as e:
                await c.put("k", "v")
            return e.value
    e = asyncio.run(go())
    assert type(e) is EtcdUnavailable and not e.maybe_applied  # never sent
    assert e.tried == [(ep, "connection refused") for ep in closed_ports]
    assert str(e) == "no etcd endpoint answered: " + "; ".join(
        f"{ep} connection refused" for ep in closed_ports)


def test_a_member_that_never_answers(silent_port: str, closed_ports: List[str]) -> None:
    """A read goes on to the next endpoint; a write that was sent is not repeated
    elsewhere and says it may have been applied."""
    async def go() -> None:
        async with EtcdClient([silent_port, closed_ports[0]], timeout=0.2) as c:
            with pytest.raises(EtcdUnavailable) as e:
                await c.get("k")
            assert e.value.tried == [(silent_port, "timed out"),
                                     (closed_ports[0], "connection refused")]
            assert not e.value.maybe_applied
            with pytest.raises(EtcdUnavailable) as e:
                await c.put("k", "v")
            assert e.value.tried == [(silent_port, "timed out")]
            assert e.value.maybe_applied
    asyncio.run(go())


def test_registry_urls() -> None:
    assert parse_url("etcd://10.0.0.1:2379,10.0.0.2, [fd00::3]:2380/") == (
        ["10.0.0.1:2379", "10.0.0.2:2379", "[fd00::3]:2380"], False)
    assert parse_url("etcds://etcd-1.example.org") == (["etcd-1.example.org:2379"], True)
    with pytest.raises(ValueError, match="not an etcd URL"):
        parse_url("http://10.0.0.1:2379")
    for bad in ("etcd://", "etcd://a,,b", "etcd://a:port", "etcd://a:0", "etcd://::1",
                "etcd://user@a:1", "etcd://a/path", "etcd://a b:1",
                # a port is read as every number is (fleetd.wire.numbers): ASCII digits only
                "etcd://a:\uff12\uff13\uff17\uff19", "etcd://a:99999999999999999999999"):
        with pytest.raises(ValueError, match="bad etcd endpoint"):
            parse_url(bad)
