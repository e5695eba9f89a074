"""An asyncio client for etcd v3, over etcd's JSON gateway (HTTP/1.1 + JSON, aiohttp).

Why the gateway and not gRPC: every etcd since 3.3 serves it on its client port
(``/v3/...``; 3.4, Debian's, serves ``/v3/`` and ``/v3beta/``, 3.5 only ``/v3/``, and
this client speaks ``/v3/``), so it needs nothing fleetd does not already have: aiohttp
is the daemon's HTTP server's dependency. ``aetcd``, the maintained asyncio client,
needs grpcio and protobuf (large native wheels) and Python >= 3.10; python-etcd3 is
synchronous and unmaintained. What the gateway lacks is bidirectional streams: a watch
is one streaming POST per watched range (etcdv3_watch.py) and a lease keep-alive one
request per renewal, which is all fleetd needs (one leader lease, a few watches).

Endpoints: a request goes to the endpoint that answered last, and on to the next when
it could not be sent (connection refused, connect timeout) or when the member said it
has no leader (with the ``hasleader`` metadata this client sends, etcd says so at once
and proposes nothing). A request that reached a member but got no answer is retried
elsewhere only when it is a read; a write raises ``EtcdUnavailable(maybe_applied=True)``.
While members say they have no leader the request is tried again for ``election_wait``
(an election after a leader's death); then ``EtcdQuorumLost``, or at once when a member
timed out proposing a write (etcd's "request timed out": it may still commit). When no
member answered at all: ``EtcdUnavailable``. Both name every endpoint tried and why.
Reads with ``serializable=True`` are answered by any member, leader or not (possibly
stale): what the API still serves while the quorum is lost.

Measured on loopback (etcd 3.4 defaults: 1 s election timeout): 2 of 3 members stopped,
writes get ``EtcdQuorumLost`` ~8 s later (the first write waits out ``timeout`` on the
member left, which has not yet noticed; then its "no leader" for
``election_wait``). The leader killed, the first writes through a follower wait out
``timeout`` too (the follower forwards them to the dead leader) and raise
``EtcdUnavailable(maybe_applied=True)``: a caller with a tighter deadline passes a
smaller ``timeout``, and makes its writes transactions it can recognise when repeated.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import re
import ssl
from typing import Any, Iterator, List, Optional, Sequence, Tuple

import aiohttp

from fleetd.registry.etcdv3_types import (
    Bytes,
    Compare,
    DeleteResult,
    EndpointStatus,
    EtcdLeaseNotFound,
    EtcdQuorumLost,
    EtcdUnavailable,
    Json,
    LeaseTTL,
    Member,
    Op,
    RangeResult,
    TxnResult,
    b64,
    error_kind,
    key_range,
    num,
    op_result,
    raw,
    refusal,
    unb64,
)
from fleetd.registry.etcdv3_watch import Watch
from fleetd.wire import numbers

DEFAULT_TIMEOUT = 5.0  # s, per request and endpoint
CONNECT_TIMEOUT = 1.0  # s: a member that does not accept by then is skipped
# s: how long members may say "no leader" before it is a lost quorum (etcd's default
# election timeout is 1 s; a new leader is usually elected within 2)
ELECTION_WAIT = 2.0
# gRPC metadata through the gateway: a member without a leader refuses at once
HAS_LEADER = {"Grpc-Metadata-hasleader": "true"}


DEFAULT_PORT = 2379
_HOST = re.compile(r"\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9._-]+")  # a name, IPv4, or [IPv6]


def parse_url(url: str) -> Tuple[List[str], bool]:
    """The endpoints of a registry URL, and whether it asks for TLS:
    "etcd://10.0.0.1:2379,10.0.0.2,[fd00::3]:2379" (2379 when no port is given), or
    "etcds://..." for TLS. ValueError saying what is wrong."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("etcd", "etcds"):
        raise ValueError(f"not an etcd URL (etcd://host:port,host:port,...): {url!r}")
    endpoints = []
    for part in rest.rstrip("/").split(","):
        part = part.strip()
        host, _, port = part.rpartition(":") if part.rfind(":") > part.find("]") else (
            part, "", str(DEFAULT_PORT))
        try:
            number = numbers.parse_int(port, 1, 65535)
        except numbers.NumberError:
            number = 0
        if not _HOST.fullmatch(host) or not number:
            raise ValueError(f"bad etcd endpoint {part!r} in {url!r} (host:port)")
        endpoints.append(f"{host}:{number}")
    return endpoints, scheme == "etcds"


def tls_context(ca: Optional[str] = None, cert: Optional[str] = None,
                key: Optional[str] = None) -> ssl.SSLContext:
    """A client TLS context: verify the members against ``ca`` (the system's CAs when
    None) and present ``cert``/``key`` when etcd asks for client certificates."""
    ctx = ssl.create_default_context(cafile=ca)
    if cert:
        ctx.load_cert_chain(cert, key)
    return ctx


def _why(e: BaseException) -> str:
    """A short reason for an endpoint's failure: "connection refused", "timed out"."""
    if isinstance(e, aiohttp.ClientConnectorCertificateError):
        return f"TLS certificate refused ({e.certificate_error})"
    if isinstance(e, aiohttp.ClientConnectorError):
        err = e.os_error
        if isinstance(err, ssl.SSLError):
            return f"TLS failed ({err.reason or err})"
        if err.errno:
            return os.strerror(err.errno).lower()
        return str(err) or type(err).__name__
    if isinstance(e, TimeoutError):
        return "timed out"
    if isinstance(e, aiohttp.ServerDisconnectedError):
        return "closed the connection"
    if isinstance(e, OSError) and e.errno:
        return os.strerror(e.errno).lower() if e.errno != errno.ETIMEDOUT else "timed out"
    return str(e) or type(e).__name__


def _not_sent(e: BaseException) -> bool:
    """True when the request cannot have reached etcd (safe to send elsewhere)."""
    return isinstance(e, (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError))


def gateway_error(j: Any) -> Optional[Tuple[Optional[int], str]]:
    """(code, message) of an error answer: a unary one's ``error``/``message``/``code``,
    a stream's ``{"error": {"grpc_code", "message"}}``; None for a good answer."""
    if not isinstance(j, dict) or "error" not in j:
        return None
    e = j["error"]
    if isinstance(e, dict):
        return e.get("grpc_code"), str(e.get("message") or e)
    return j.get("code"), str(j.get("message") or e)


class EtcdClient:
    """One etcd cluster, reached through ``endpoints`` ("host:port", or a URL with
    http:// or https://; https is the default when ``tls`` is given). Use it in
    ``async with`` or call ``close()``."""

    def __init__(self, endpoints: Sequence[str], *, tls: Optional[ssl.SSLContext] = None,
                 timeout: float = DEFAULT_TIMEOUT,
                 election_wait: float = ELECTION_WAIT) -> None:
        if not endpoints:
            raise ValueError("etcd: no endpoint given")
        self.endpoints = list(endpoints)
        scheme = "https" if tls else "http"
        self._urls = [e.rstrip("/") if "://" in e else f"{scheme}://{e}" for e in endpoints]
        self._tls = tls
        self.timeout = timeout
        self.election_wait = election_wait
        self._current = 0
        self._session: Optional[aiohttp.ClientSession] = None

    async def __aenter__(self) -> EtcdClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @property
    def current(self) -> str:
        """The endpoint that answered last (the first one tried next)."""
        return self.endpoints[self._current]

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=self._tls or True))
        return self._session

    def order(self, start: Optional[int] = None) -> Iterator[int]:
        """Endpoint indexes to try: from ``start`` (the last that answered) round."""
        first = self._current if start is None else start
        n = len(self._urls)
        return ((first + i) % n for i in range(n))

    def client_timeout(self, total: Optional[float]) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=total,
                                     sock_connect=min(CONNECT_TIMEOUT, self.timeout))

    async def call(self, path: str, body: Json, *, safe: bool, leader: bool = True) -> Json:
        """POST ``body`` to ``/v3/<path>`` on the endpoints in turn; the answer of the
        first that gives one. ``safe``: the request may be repeated (a read), so it goes
        on to the next endpoint on any failure. ``leader``: refuse unless the member has
        a leader (every request but serializable reads and status). While members say
        they have no leader (an election), it tries again for up to ``election_wait``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.election_wait
        while True:
            answer, tried, no_quorum = await self._once(path, body, safe, leader)
            if answer is not None:
                return answer
            if not no_quorum or loop.time() >= deadline:
                raise (EtcdQuorumLost if no_quorum else EtcdUnavailable)(tried)
            await asyncio.sleep(0.1)

    async def _once(self, path: str, body: Json, safe: bool, leader: bool
                    ) -> Tuple[Optional[Json], List[Tuple[str, str]], bool]:
        """One pass over the endpoints: the answer, or None, why each failed, and whether
        one said it had no leader (nothing applied, else it raises)."""
        tried: List[Tuple[str, str]] = []
        no_quorum = False
        for i in self.order():
            ep = self.endpoints[i]
            try:
                async with self.session().post(
                        f"{self._urls[i]}/v3/{path}", json=body,
                        headers=HAS_LEADER if leader else None,
                        timeout=self.client_timeout(self.timeout)) as resp:
                    status, text = resp.status, await resp.text()
            except (aiohttp.ClientError, TimeoutError) as e:
                tried.append((ep, _why(e)))
                if safe or _not_sent(e):
                    continue
                raise EtcdUnavailable(tried, maybe_applied=True) from e
            try:
                j = json.loads(text.split("\n", 1)[0]) if text else {}
            except ValueError:
                j = {"error": f"HTTP {status}: {text[:200].strip()}", "code": None}
            if status == 200 and "result" in j:  # a stream's answer (lease keep-alive)
                j = j["result"]
            err = gateway_error(j)
            if err is None and status == 200:
                self._current = i
                return dict(j), tried, False
            code, msg = err if err else (None, f"HTTP {status}")
            kind = error_kind(code, msg)
            if kind == "refused":
                self._current = i
                raise refusal(code, msg)
            tried.append((ep, msg))
            if kind == "timed-out" and not safe:  # proposed, not committed in time
                raise EtcdQuorumLost(tried, maybe_applied=True)
            no_quorum = no_quorum or kind != "unavailable"
        return None, tried, no_quorum

    # -- KV -----------------------------------------------------------------------

    async def get(self, key: Bytes, *, serializable: bool = False) -> RangeResult:
        """The key (``kvs`` empty when absent) and the revision of the read."""
        return await self.range(key, prefix=False, serializable=serializable)

    async def range(self, key: Bytes, *, prefix: bool = True, serializable: bool = False,
                    limit: int = 0, keys_only: bool = False, revision: int = 0) -> RangeResult:
        """Every key under the prefix ``key`` (sorted by key), or ``key`` alone.
        ``serializable``: answered by the member asked, without a quorum (may be stale);
        ``revision``: as the store was then (EtcdError once compacted)."""
        body: Json = key_range(key, prefix)
        if limit:
            body["limit"] = str(limit)
        if keys_only:
            body["keys_only"] = True
        if revision:
            body["revision"] = str(revision)
        if serializable:
            body["serializable"] = True
        j = await self.call("kv/range", body, safe=True, leader=not serializable)
        return RangeResult.from_json(j, num(j.get("header", {}), "revision"))

    async def put(self, key: Bytes, value: Bytes, *, lease: int = 0) -> int:
        """Store ``value`` at ``key`` (bound to ``lease``: deleted when it expires);
        the revision of the write."""
        body: Json = {"key": b64(key), "value": b64(value)}
        if lease:
            body["lease"] = str(lease)
        j = await self.call("kv/put", body, safe=False)
        return num(j.get("header", {}), "revision")

    async def delete(self, key: Bytes, *, prefix: bool = False) -> DeleteResult:
        """Delete ``key``, or every key under it when ``prefix``."""
        j = await self.call("kv/deleterange", key_range(key, prefix), safe=False)
        return DeleteResult(num(j.get("header", {}), "revision"), num(j, "deleted"))

    async def txn(self, compare: Sequence[Compare], success: Sequence[Op] = (),
                  failure: Sequence[Op] = ()) -> TxnResult:
        """If every compare holds, the ``success`` ops, else the ``failure`` ones, as one
        atomic write; ``succeeded`` says which, ``responses`` their results in order."""
        body = {"compare": [c.to_json() for c in compare],
                "success": [o.to_json() for o in success],
                "failure": [o.to_json() for o in failure]}
        reads_only = all("request_range" in o for o in body["success"] + body["failure"])
        j = await self.call("kv/txn", body, safe=reads_only)
        rev = num(j.get("header", {}), "revision")
        return TxnResult(bool(j.get("succeeded")), rev,
                         tuple(op_result(r, rev) for r in j.get("responses") or ()))

    async def compact(self, revision: int) -> None:
        """Forget the history before ``revision`` (watches from before it fail)."""
        await self.call("kv/compaction", {"revision": str(revision)}, safe=True)

    # -- leases ---------------------------------------------------------------------

    async def grant(self, ttl: int) -> int:
        """A new lease of ``ttl`` seconds; its id."""
        j = await self.call("lease/grant", {"TTL": str(ttl)}, safe=False)
        return num(j, "ID")

    async def keepalive_once(self, lease: int) -> int:
        """Renew the lease; the seconds it now has left (its granted TTL).
        EtcdLeaseNotFound once it has expired."""
        j = await self.call("lease/keepalive", {"ID": str(lease)}, safe=True)
        ttl = num(j, "TTL")
        if ttl <= 0:
            raise EtcdLeaseNotFound(f"etcd: lease {lease:x} has expired")
        return ttl

    async def revoke(self, lease: int) -> int:
        """End the lease now, deleting its keys; the revision of the deletion."""
        j = await self.call("lease/revoke", {"ID": str(lease)}, safe=False)
        return num(j.get("header", {}), "revision")

    async def time_to_live(self, lease: int, *, keys: bool = False) -> LeaseTTL:
        """The lease's remaining ``ttl`` (-1: expired, or never was)."""
        j = await self.call("lease/timetolive", {"ID": str(lease), "keys": keys}, safe=True)
        return LeaseTTL(lease, int(j.get("TTL") or 0), num(j, "grantedTTL"),
                        tuple(unb64(k) for k in j.get("keys") or ()))

    # -- watch ------------------------------------------------------------------------

    def watch(self, key: Bytes, *, prefix: bool = True, start_revision: int = 0,
              prev_kv: bool = False) -> Watch:
        """The changes under the prefix ``key`` (or to ``key`` alone) from
        ``start_revision`` on (0: from now), as an async iterator of ``Event``s; on an
        endpoint's failure it goes on through another from the next revision.
        EtcdCompacted when ``start_revision`` is no longer in etcd's history."""
        return Watch(self, raw(key), prefix, start_revision, prev_kv)

    def first(self) -> int:
        """The index of the endpoint that answered last."""
        return self._current

    async def open_stream(self, path: str, body: Json, i: int
                          ) -> Tuple[Optional[aiohttp.ClientResponse], str, str]:
        """A streaming POST on endpoint ``i``: the open response, or None, why not and
        its kind (``error_kind``'s, or "unreachable")."""
        try:
            # no read timeout: a quiet watch sends nothing for minutes; but the answer's
            # head (etcd sends it with "created") is bounded
            resp = await asyncio.wait_for(self.session().post(
                f"{self._urls[i]}/v3/{path}", json=body, headers=HAS_LEADER,
                timeout=self.client_timeout(None)), self.timeout)
        except (aiohttp.ClientError, TimeoutError) as e:
            return None, _why(e), "unreachable"
        if resp.status == 200:
            return resp, "", ""
        try:
            text = await asyncio.wait_for(resp.text(), self.timeout)
            err = gateway_error(json.loads(text.split("\n", 1)[0]))
        except (aiohttp.ClientError, TimeoutError, ValueError):
            err = None
        finally:
            resp.release()
        code, msg = err if err else (None, f"HTTP {resp.status}")
        return None, msg, error_kind(code, msg)

    # -- cluster --------------------------------------------------------------------

    async def members(self) -> List[Member]:
        j = await self.call("cluster/member/list", {}, safe=True, leader=False)
        return [Member(num(m, "ID"), m.get("name", ""), tuple(m.get("peerURLs") or ()),
                       tuple(m.get("clientURLs") or ()), bool(m.get("isLearner")))
                for m in j.get("members") or ()]

    async def status(self, endpoint: str) -> EndpointStatus:
        """What the member at ``endpoint`` (one of ours) says of itself, or why nothing."""
        i = self.endpoints.index(endpoint)
        try:
            async with self.session().post(
                    f"{self._urls[i]}/v3/maintenance/status", json={},
                    timeout=self.client_timeout(self.timeout)) as resp:
                status, text = resp.status, await resp.text()
            j = json.loads(text)
        except (aiohttp.ClientError, TimeoutError) as e:
            return EndpointStatus(endpoint, False, _why(e))
        except ValueError:
            return EndpointStatus(endpoint, False, f"HTTP {status}: {text[:200].strip()}")
        err = gateway_error(j)
        if err is not None:
            return EndpointStatus(endpoint, False, err[1])
        errors = "; ".join(j.get("errors") or ())
        leader = num(j, "leader")
        return EndpointStatus(
            endpoint, leader != 0 and not errors, errors or ("" if leader else "no leader"),
            num(j.get("header", {}), "member_id"), j.get("version", ""), leader,
            num(j, "raftTerm"), num(j, "raftIndex"), num(j, "dbSize"))

    async def statuses(self) -> List[EndpointStatus]:
        """Every endpoint's status, in the order given (for ``list-servers``)."""
        return list(await asyncio.gather(*(self.status(ep) for ep in self.endpoints)))

