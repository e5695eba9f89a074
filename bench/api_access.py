"""What access control costs a request: one real fleetd (no machines) answering
GET /v1/health and a write (POST /v1/units/state for a unit that does not exist: the
role check, the audit record, a 404) through fleetd.client, one connection a request as
fleetctl makes them, over

- the Unix socket (root: no token),
- TCP on 127.0.0.1 in clear with a token from the store,
- TCP with TLS (a certificate from fleetd/lab/certs.py) and the same token,

and, in this process, a token lookup in a store of 1,000 tokens, an audit record
written, and the audit read back whole at its bound (4 MiB). Prints p50/p99 in ms (µs
for the in-process ones) and writes bench/results/api_access.json.

    .venv/bin/python bench/api_access.py [--requests 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import socket
import sys
import tempfile
import time
from typing import Callable, Dict, List, Optional, Tuple

from benchkit import pct, save

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests", "integration")]

from labkit import Fleet  # noqa: E402

from fleetd.client import ApiError, Client  # noqa: E402
from fleetd.daemon.audit import MAX_BYTES, AuditLog  # noqa: E402
from fleetd.daemon.tokens import TokenStore  # noqa: E402
from fleetd.endpoints import TlsFiles  # noqa: E402
from fleetd.lab import certs  # noqa: E402

WRITE = {"names": ["nothere.service"], "desired": "launched"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def samples(fn: Callable[[], object], n: int) -> List[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def write(client: Client) -> None:
    try:
        client.post("/v1/units/state", WRITE)
    except ApiError as exc:
        assert exc.status == 404, exc


def fleetd(work: str, tls: Optional[certs.Pair]) -> Tuple[Fleet, str]:
    os.makedirs(work)
    port = free_port()
    config = os.path.join(work, "fleetd.toml")
    with open(config, "w") as f:
        f.write(f'[api]\nlisten = "127.0.0.1:{port}"\n')
        if tls:
            f.write(f'tls_cert = "{tls.cert}"\ntls_key = "{tls.key}"\n')
    fleet = Fleet(None, work, config, args=["--log-level", "warning"])
    fleet.start()
    return fleet, f"{'https' if tls else 'http'}://127.0.0.1:{port}"


def over_the_api(work: str, n: int) -> Dict[str, float]:
    ca = certs.make_ca(work)
    server = certs.issue(ca, work, "api", ["127.0.0.1"])
    result: Dict[str, float] = {}
    for kind, tls in (("plain", None), ("tls", server)):
        fleet, url = fleetd(os.path.join(work, kind), tls)
        try:
            token = fleet.ctl("token", "create", "--name", "bench", "--role", "operate"
                              ).stdout.strip()
            clients = {"unix": fleet.api,
                       kind: Client(url, token, TlsFiles(ca.cert))}
            for name, client in clients.items():
                if name == "unix" and kind == "tls":
                    continue  # measured once
                for what, fn in (("GET", lambda c=client: c.get("/v1/health")),
                                 ("POST", lambda c=client: write(c))):
                    fn()  # warm
                    s = samples(fn, n)
                    result[f"{name} {what} p50 ms"] = pct(s, 50) * 1000
                    result[f"{name} {what} p99 ms"] = pct(s, 99) * 1000
        finally:
            fleet.stop()
    return result


def in_process(work: str) -> Dict[str, float]:
    store = TokenStore(os.path.join(work, "tokens.json"))
    tokens = [asyncio.run(store.create(f"t{i}", "read")) for i in range(1000)]
    lookups = samples(lambda: store.lookup(tokens[500]), 2000)
    audit = AuditLog(os.path.join(work, "audit.jsonl"))
    entry = {"who": "bench", "role": "operate", "method": "POST", "route": "/v1/units/state",
             "path": "/v1/units/state", "target": "web.service", "from": "127.0.0.1",
             "status": 200}
    records = samples(lambda: audit.record(entry), 2000)
    while os.path.getsize(audit.path) < MAX_BYTES - 1000:  # a full file, then read it
        audit.record(entry)
    reads = samples(audit.records, 5)
    return {"token lookup (1000 tokens) p50 us": pct(lookups, 50) * 1e6,
            "audit record p50 us": pct(records, 50) * 1e6,
            "audit record p99 us": pct(records, 99) * 1e6,
            f"audit read ({len(audit.records())} records) p50 ms": pct(reads, 50) * 1000}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="fleet-bench-access-")
    try:
        result = {**over_the_api(work, args.requests), **in_process(work)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"{'measure':<44}{'value':>10}")
    for key, value in result.items():
        print(f"{key:<44}{value:>10.2f}")
    print(f"-> {save('api_access', result)}")


if __name__ == "__main__":
    main()
