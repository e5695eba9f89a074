"""The server roster: which fleetd run against this etcd cluster, who leads, and how
etcd's members are (the data of ``fleetctl list-servers``).

Each fleetd, leader or not, keeps ``<prefix>/servers/<name>`` under a lease of its own
(``Roster``): the key goes when the fleetd dies, so the roster lists the living ones
without anybody cleaning up. It is separate from the leader lock on purpose: a
follower has no lock to show, and a leader whose roster entry lapsed still leads.

``list_servers`` reads the three sources (the roster, the leader key, each member's
status); ``server_rows`` is the pure part that turns them into rows, one per fleetd and
one per etcd member, so the rows can be tested without etcd. A source that cannot be
read is a row saying so, not an exception: ``list-servers`` is what an operator runs
when something is wrong.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import os
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

from fleetd import __version__
from fleetd.engine.etcd_lock import LeaderInfo, leader_info, leader_key
from fleetd.registry.etcdv3 import EtcdClient
from fleetd.registry.etcdv3_types import (
    Compare,
    EndpointStatus,
    EtcdError,
    EtcdLeaseNotFound,
    Get,
    KeyValue,
    Member,
    Put,
    RangeResult,
)

log = logging.getLogger("fleetd.roster")

ROSTER_TTL = 10  # s: a dead fleetd leaves the list this long after; nothing waits on it
FLEETD = "fleetd"
ETCD = "etcd"


def servers_prefix(prefix: str) -> str:
    return f"{prefix.rstrip('/')}/servers/"


@dataclasses.dataclass(frozen=True)
class ServerRecord:
    """What a fleetd says of itself in the roster."""

    name: str
    api: Tuple[str, ...]
    pid: int
    started_at: float
    version: str

    def to_json(self) -> bytes:
        return json.dumps({"name": self.name, "api": list(self.api), "pid": self.pid,
                           "started_at": self.started_at, "version": self.version},
                          sort_keys=True).encode()


def parse_record(kv: KeyValue) -> ServerRecord:
    """A roster entry as read; ValueError naming the key and what is wrong."""
    where = kv.key.decode("utf-8", "replace")
    try:
        j = json.loads(kv.value.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{where}: not JSON ({e})") from None
    if not isinstance(j, dict):
        raise ValueError(f"{where}: not a JSON object")
    name, api, pid = j.get("name"), j.get("api"), j.get("pid")
    started, version = j.get("started_at"), j.get("version")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{where}: 'name' is not a string")
    if not isinstance(api, list) or not all(isinstance(a, str) for a in api):
        raise ValueError(f"{where}: 'api' is not a list of strings")
    if not isinstance(pid, int) or isinstance(pid, bool):
        raise ValueError(f"{where}: 'pid' is not a number")
    if not isinstance(started, (int, float)) or isinstance(started, bool) \
            or not math.isfinite(started):
        raise ValueError(f"{where}: 'started_at' is not a time")
    if not isinstance(version, str):
        raise ValueError(f"{where}: 'version' is not a string")
    return ServerRecord(name, tuple(api), pid, float(started), version)


@dataclasses.dataclass(frozen=True)
class ServerInfo:
    """One row of ``list-servers``: a fleetd (``kind`` "fleetd") or an etcd member
    ("etcd"). ``leader``: this fleetd holds the leader lock (then ``since`` and ``epoch``
    are its term's), or this member is etcd's raft leader. ``healthy`` False with
    ``detail`` saying why: an unreachable member, an unreadable roster entry, a leader
    missing from the roster."""

    kind: str
    name: str
    addresses: Tuple[str, ...]
    leader: bool = False
    healthy: bool = True
    detail: str = ""
    pid: int = 0
    version: str = ""
    started_at: Optional[float] = None
    since: Optional[float] = None
    epoch: Optional[int] = None
    raft_term: int = 0
    raft_index: int = 0
    db_size: int = 0

    def to_json(self) -> Dict[str, Any]:
        j = dataclasses.asdict(self)
        j["addresses"] = list(self.addresses)
        return j


def _fleetd_rows(roster: Sequence[KeyValue], leader: Optional[LeaderInfo]) -> List[ServerInfo]:
    rows: List[ServerInfo] = []
    led = False
    for kv in roster:
        try:
            r = parse_record(kv)
        except ValueError as e:
            name = kv.key.decode("utf-8", "replace").rsplit("/", 1)[-1]
            rows.append(ServerInfo(FLEETD, name, (), healthy=False, detail=str(e)))
            continue
        leads = leader is not None and not leader.error and leader.name == r.name
        led = led or leads
        rows.append(ServerInfo(
            FLEETD, r.name, r.api, leader=leads, pid=r.pid, version=r.version,
            started_at=r.started_at, since=leader.since if leads and leader else None,
            epoch=leader.epoch if leads and leader else None))
    if leader is not None and not led:
        rows.append(ServerInfo(
            FLEETD, leader.name, tuple(leader.api), leader=True, healthy=False, pid=leader.pid,
            since=leader.since if not leader.error else None, epoch=leader.epoch,
            detail=leader.describe() if leader.error else "holds the leader lock but is "
                                                          "not in the roster"))
    rows.sort(key=lambda row: (not row.leader, row.name))
    return rows


def _bare(url: str) -> str:
    return url.split("://", 1)[-1].rstrip("/")


def _member_rows(members: Optional[Sequence[Member]], statuses: Sequence[EndpointStatus],
                 members_error: str) -> List[ServerInfo]:
    by_id = {s.member_id: s for s in statuses if s.member_id}
    by_endpoint = {s.endpoint: s for s in statuses}
    rows: List[ServerInfo] = []
    seen = set()
    for m in members or ():
        urls = tuple(_bare(u) for u in m.client_urls)
        st = by_id.get(m.id) or next((by_endpoint[u] for u in urls if u in by_endpoint), None)
        name = m.name or f"{m.id:x} (not started)"
        if st is None:
            rows.append(ServerInfo(ETCD, name, urls, healthy=False,
                                   detail="not among this fleetd's endpoints"))
            continue
        seen.add(st.endpoint)
        rows.append(_member_row(name, urls, st, m.is_learner))
    for st in statuses:  # endpoints no member lists: the list failed, or a stranger
        if st.endpoint not in seen:
            detail = st.error or ("" if members is None else "not a member of the cluster")
            if members is None and members_error:
                detail = "; ".join(x for x in (detail, f"member list: {members_error}") if x)
            rows.append(dataclasses.replace(_member_row(st.endpoint, (st.endpoint,), st,
                                                        False), detail=detail))
    return rows


def _member_row(name: str, urls: Tuple[str, ...], st: EndpointStatus,
                learner: bool) -> ServerInfo:
    detail = st.error or ("learner" if learner else "")
    return ServerInfo(ETCD, name, urls, leader=st.is_leader, healthy=st.healthy,
                      detail=detail, version=st.version, raft_term=st.raft_term,
                      raft_index=st.raft_index, db_size=st.db_size)


def server_rows(roster: Sequence[KeyValue], leader: Optional[LeaderInfo],
                members: Optional[Sequence[Member]], statuses: Sequence[EndpointStatus],
                members_error: str = "") -> List[ServerInfo]:
    """The rows of ``list-servers``: every fleetd of the roster (the leader first, with
    its term's start and epoch; a lock holder missing from the roster gets a row of its
    own), then every etcd member with what its status said (``members`` None when the
    member list could not be read, ``members_error`` why: then one row per endpoint)."""
    return _fleetd_rows(roster, leader) + _member_rows(members, statuses, members_error)


async def list_servers(client: EtcdClient, prefix: str) -> List[ServerInfo]:
    """Read the roster, the leader key and the members' health, concurrently; a read
    that fails becomes a row saying so. The roster and the leader key come from one
    quorum read each: with the quorum lost they fall back to a serializable read."""

    async def keys(key: str, prefix_read: bool) -> Tuple[Sequence[KeyValue], str]:
        try:
            return (await client.range(key, prefix=prefix_read)).kvs, ""
        except EtcdError as e:
            try:
                got = await client.range(key, prefix=prefix_read, serializable=True)
            except EtcdError:
                return (), str(e)
            return got.kvs, f"possibly stale: {e}"

    async def members() -> Tuple[Optional[Sequence[Member]], str]:
        try:
            return await client.members(), ""
        except EtcdError as e:
            return None, str(e)

    (roster, roster_error), (lead, lead_error), (ms, ms_error), statuses = \
        await asyncio.gather(keys(servers_prefix(prefix), True),
                             keys(leader_key(prefix), False), members(), client.statuses())
    leader = leader_info(lead[0]) if lead else None
    rows = server_rows(roster, leader, ms, statuses, ms_error)
    trouble = "; ".join(x for x in (roster_error and f"roster: {roster_error}",
                                    lead_error and f"leader key: {lead_error}") if x)
    if trouble:
        rows.insert(0, ServerInfo(FLEETD, "?", (), healthy=False, detail=trouble))
    return rows


class NameInUse(ValueError):
    """Another living fleetd, at other API addresses, is registered under this name:
    two fleetd configured with one name would hide each other in ``list-servers``."""


def check_name(name: str) -> str:
    """A fleetd's name as a roster key's last part; ValueError saying why not."""
    if not name or len(name) > 200 or "/" in name or not name.isprintable() \
            or name != name.strip():
        raise ValueError(f"fleetd name {name!r}: give 1-200 printable characters, no '/' "
                         "and no spaces around")
    return name


class Roster:
    """Keeps this fleetd's entry in the roster while ``run`` runs: a lease of ``ttl``
    seconds renewed every ttl/3, granted again (and the entry written again) when etcd
    says it is gone. ``close`` removes the entry at once (a stop, not a crash).

    An entry of the same name at the same API addresses is this fleetd's earlier life
    (a restart within the TTL) and is replaced; at other addresses it is another fleetd:
    ``run`` ends with ``NameInUse``."""

    def __init__(self, client: EtcdClient, prefix: str, name: str, api: Sequence[str] = (),
                 ttl: int = ROSTER_TTL, *, retry_s: float = 1.0) -> None:
        check_name(name)
        self.client = client
        self.key = servers_prefix(prefix) + name
        self.record = ServerRecord(name, tuple(api), os.getpid(), time.time(), __version__)
        self.ttl = ttl
        self.retry_s = retry_s
        self.lease = 0

    async def register(self) -> None:
        """A fresh lease and the entry on it (a lease whose entry could not be written
        is left to expire); NameInUse when another fleetd has the name."""
        lease = await self.client.grant(self.ttl)
        value = self.record.to_json()
        compare = Compare.create(self.key, "==", 0)
        for _ in range(3):
            r = await self.client.txn([compare], [Put(self.key, value, lease)],
                                      [Get(self.key)])
            if r.succeeded:
                self.lease = lease
                return
            got = r.responses[0]
            assert isinstance(got, RangeResult)
            if not got.kvs:
                compare = Compare.create(self.key, "==", 0)
                continue
            kv = got.kvs[0]
            try:
                other: Optional[ServerRecord] = parse_record(kv)
            except ValueError:
                other = None  # unreadable: not a fleetd's, replace it
            if other is not None and other.api != self.record.api:
                with contextlib.suppress(EtcdError):
                    await self.client.revoke(lease)
                raise NameInUse(
                    f"fleetd name {self.record.name!r} is already registered at "
                    f"{self.key} by pid {other.pid} at {', '.join(other.api) or 'no address'}"
                    f" (this one: {', '.join(self.record.api) or 'no address'}): give "
                    "each fleetd a name of its own")
            compare = Compare.mod(self.key, "==", kv.mod_revision)
        raise EtcdError(f"{self.key}: the entry kept changing while this fleetd registered")

    async def run(self) -> None:
        """Register, then renew until cancelled; errors are logged and retried (the
        roster is for people to read, never worth stopping fleetd for)."""
        while True:
            try:
                if not self.lease:
                    await self.register()
                await self.client.keepalive_once(self.lease)
                await asyncio.sleep(self.ttl / 3)
            except EtcdLeaseNotFound:
                self.lease = 0
            except EtcdError as e:
                log.warning("roster %s: %s", self.key, e)
                await asyncio.sleep(self.retry_s)

    async def close(self) -> None:
        """Revoke the lease (deleting the entry); best-effort: it expires anyway."""
        lease, self.lease = self.lease, 0
        if lease:
            with contextlib.suppress(EtcdError):
                await self.client.revoke(lease)
