"""What the etcd v3 client speaks in, without the network: results, transaction parts,
errors, and the JSON gateway's encoding (pure; ``etcdv3.py`` does the talking).

On the gateway's wire, keys and values are base64 strings and every int64 is a decimal
string (proto3 JSON); fields at their zero value are left out (a failed transaction has
no ``succeeded``, a key's first version no ``version`` in a DELETE event). Here keys and
values go in as ``bytes`` or ``str`` (UTF-8) and come back as ``bytes``.
"""

from __future__ import annotations

import base64
import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

Bytes = Union[bytes, str]
Json = Dict[str, Any]

# gRPC status codes etcd answers with (the gateway's ``code``)
NOT_FOUND = 5
FAILED_PRECONDITION = 9
UNAVAILABLE = 14


def raw(b: Bytes) -> bytes:
    return b.encode() if isinstance(b, str) else bytes(b)


def b64(b: Bytes) -> str:
    return base64.b64encode(raw(b)).decode("ascii")


def unb64(s: Optional[str]) -> bytes:
    return base64.b64decode(s) if s else b""


def num(j: Mapping[str, Any], field: str) -> int:
    """An int64 field of a gateway answer (a string; absent when 0)."""
    return int(j.get(field) or 0)


def prefix_end(prefix: Bytes) -> bytes:
    """The ``range_end`` that makes ``[prefix, end)`` every key starting with ``prefix``:
    the prefix with its last byte below 0xff incremented and what follows dropped; b"\\0"
    (every key from ``prefix`` on) when there is no such byte, as for the empty prefix."""
    p = bytearray(raw(prefix))
    while p and p[-1] == 0xFF:
        p.pop()
    if not p:
        return b"\0"
    p[-1] += 1
    return bytes(p)


def key_range(key: Bytes, prefix: bool) -> Json:
    """``key`` (and ``range_end`` when ``prefix``) for a request; the empty prefix is
    every key (etcd refuses an empty key, so it becomes ``\\0`` .. ``\\0``)."""
    k = raw(key)
    if not prefix:
        return {"key": b64(k)}
    return {"key": b64(k or b"\0"), "range_end": b64(prefix_end(k))}


@dataclasses.dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    version: int
    lease: int

    @classmethod
    def from_json(cls, j: Mapping[str, Any]) -> KeyValue:
        return cls(unb64(j.get("key")), unb64(j.get("value")), num(j, "create_revision"),
                   num(j, "mod_revision"), num(j, "version"), num(j, "lease"))


@dataclasses.dataclass(frozen=True)
class RangeResult:
    revision: int  # the store's revision the read saw
    kvs: Tuple[KeyValue, ...]
    count: int  # keys in the range (more than ``kvs`` when limited)
    more: bool

    @classmethod
    def from_json(cls, j: Mapping[str, Any], revision: int) -> RangeResult:
        kvs = tuple(KeyValue.from_json(kv) for kv in j.get("kvs") or ())
        return cls(revision, kvs, num(j, "count"), bool(j.get("more")))


@dataclasses.dataclass(frozen=True)
class PutResult:
    revision: int


@dataclasses.dataclass(frozen=True)
class DeleteResult:
    revision: int
    deleted: int


OpResult = Union[RangeResult, PutResult, DeleteResult]


@dataclasses.dataclass(frozen=True)
class TxnResult:
    succeeded: bool
    revision: int  # the store's revision after the transaction
    responses: Tuple[OpResult, ...]  # one per op of the branch taken


# -- a transaction's parts ------------------------------------------------------------

_RESULTS = {"==": "EQUAL", "!=": "NOT_EQUAL", ">": "GREATER", "<": "LESS"}
_TARGETS = {"version": ("VERSION", "version"), "create": ("CREATE", "create_revision"),
            "mod": ("MOD", "mod_revision"), "value": ("VALUE", "value")}


@dataclasses.dataclass(frozen=True)
class Compare:
    """One compare of a transaction: ``key``'s ``target`` ``op`` ``against``, where target
    is "value", "version", "create" (create_revision) or "mod" (mod_revision) and op one
    of ==, !=, >, <. An absent key has version, create and mod revision 0, so
    ``Compare.create(k, "==", 0)`` is "k does not exist" (create-if-absent)."""

    key: bytes
    target: str
    op: str
    against: Union[int, bytes]
    prefix: bool = False  # compare every key under ``key``

    def __post_init__(self) -> None:
        if self.target not in _TARGETS or self.op not in _RESULTS:
            raise ValueError(f"bad compare: {self.target} {self.op}")

    @classmethod
    def value(cls, key: Bytes, op: str, v: Bytes, prefix: bool = False) -> Compare:
        return cls(raw(key), "value", op, raw(v), prefix)

    @classmethod
    def version(cls, key: Bytes, op: str, v: int, prefix: bool = False) -> Compare:
        return cls(raw(key), "version", op, v, prefix)

    @classmethod
    def create(cls, key: Bytes, op: str, rev: int, prefix: bool = False) -> Compare:
        return cls(raw(key), "create", op, rev, prefix)

    @classmethod
    def mod(cls, key: Bytes, op: str, rev: int, prefix: bool = False) -> Compare:
        return cls(raw(key), "mod", op, rev, prefix)

    def to_json(self) -> Json:
        target, field = _TARGETS[self.target]
        v = self.against
        j = {**key_range(self.key, self.prefix), "target": target,
             "result": _RESULTS[self.op],
             field: b64(v) if isinstance(v, bytes) else str(v)}
        return j


@dataclasses.dataclass(frozen=True)
class Get:
    key: Bytes
    prefix: bool = False

    def to_json(self) -> Json:
        return {"request_range": key_range(self.key, self.prefix)}


@dataclasses.dataclass(frozen=True)
class Put:
    key: Bytes
    value: Bytes
    lease: int = 0

    def to_json(self) -> Json:
        j: Json = {"key": b64(self.key), "value": b64(self.value)}
        if self.lease:
            j["lease"] = str(self.lease)
        return {"request_put": j}


@dataclasses.dataclass(frozen=True)
class Delete:
    key: Bytes
    prefix: bool = False

    def to_json(self) -> Json:
        return {"request_delete_range": key_range(self.key, self.prefix)}


Op = Union[Get, Put, Delete]


def op_result(j: Mapping[str, Any], revision: int) -> OpResult:
    """One entry of a transaction's ``responses``."""
    if "response_range" in j:
        return RangeResult.from_json(j["response_range"], revision)
    if "response_delete_range" in j:
        return DeleteResult(revision, num(j["response_delete_range"], "deleted"))
    return PutResult(revision)


# -- leases, cluster, watch -----------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LeaseTTL:
    id: int
    ttl: int  # seconds left; -1: the lease has expired or never was
    granted_ttl: int
    keys: Tuple[bytes, ...]


@dataclasses.dataclass(frozen=True)
class Member:
    id: int
    name: str  # empty while a member added has not started
    peer_urls: Tuple[str, ...]
    client_urls: Tuple[str, ...]
    is_learner: bool


@dataclasses.dataclass(frozen=True)
class EndpointStatus:
    """One endpoint as ``list-servers`` shows it: what its member says, or why nothing."""

    endpoint: str
    healthy: bool  # answered, and its member knows a leader
    error: str = ""  # why not healthy ("connection refused", "etcdserver: no leader")
    member_id: int = 0
    version: str = ""
    leader: int = 0  # the leader's member id as this member sees it; 0: none
    raft_term: int = 0
    raft_index: int = 0
    db_size: int = 0

    @property
    def is_leader(self) -> bool:
        return self.healthy and self.leader == self.member_id != 0


@dataclasses.dataclass(frozen=True)
class Event:
    type: str  # "PUT" or "DELETE"
    kv: KeyValue  # after the change; a DELETE's has only key and mod_revision
    prev_kv: Optional[KeyValue] = None  # before it, when the watch asked for prev_kv

    @classmethod
    def from_json(cls, j: Mapping[str, Any]) -> Event:
        prev = j.get("prev_kv")
        return cls(j.get("type") or "PUT", KeyValue.from_json(j.get("kv") or {}),
                   KeyValue.from_json(prev) if prev else None)


# -- errors ---------------------------------------------------------------------------


class EtcdError(Exception):
    """etcd refused a request; ``message`` is etcd's, ``code`` its gRPC status code
    (None when the answer was not etcd's, e.g. a proxy's HTTP error)."""

    def __init__(self, message: str, code: Optional[int] = None) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class EtcdLeaseNotFound(EtcdError):
    """The lease has expired or was revoked (or never was)."""


class EtcdCompacted(EtcdError):
    """A watch asked for revisions etcd has compacted away: re-read, then watch from
    the read's revision + 1."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"etcd compacted its history up to revision {compact_revision}: "
                         "the watch must start over from a fresh read", FAILED_PRECONDITION)
        self.compact_revision = compact_revision


class EtcdUnavailable(EtcdError):
    """No endpoint answered the request. ``tried`` is each endpoint tried and why it
    failed; ``maybe_applied`` is True when a write reached a member that did not answer
    in time, so it may yet have been (or be) applied: read before retrying it."""

    what = "no etcd endpoint answered"

    def __init__(self, tried: Sequence[Tuple[str, str]], maybe_applied: bool = False) -> None:
        why = "; ".join(f"{ep} {reason}" for ep, reason in tried) or "no endpoint configured"
        super().__init__(f"{self.what}: {why}"
                         + (" (the write may have been applied)" if maybe_applied else ""),
                         UNAVAILABLE)
        self.tried: List[Tuple[str, str]] = list(tried)
        self.maybe_applied = maybe_applied


class EtcdQuorumLost(EtcdUnavailable):
    """Members answered but none could commit: there is no leader (a majority of the
    members is down or cut off). Reads with ``serializable=True`` still answer."""

    what = "etcd has lost its quorum (no leader)"


# what etcd answers when it cannot reach a quorum: with the ``hasleader`` metadata the
# client sends, "no leader" at once (nothing was proposed); otherwise, or while an
# election is under way, "request timed out" (the proposal may still commit), and the
# gateway's own "context deadline exceeded" past its deadline.
NO_LEADER = ("etcdserver: no leader",)
TIMED_OUT = ("etcdserver: request timed out", "context deadline exceeded",
             "etcdserver: leader changed")


def error_kind(code: Optional[int], message: str) -> str:
    """"no-leader", "timed-out", "unavailable" (another member may do: try it) or
    "refused" (etcd's answer to this request: raise it)."""
    if message.startswith(NO_LEADER):
        return "no-leader"
    if message.startswith(TIMED_OUT):
        return "timed-out"
    return "unavailable" if code == UNAVAILABLE else "refused"


def refusal(code: Optional[int], message: str) -> EtcdError:
    if message == "etcdserver: requested lease not found":
        return EtcdLeaseNotFound(message, code)
    return EtcdError(message, code)
