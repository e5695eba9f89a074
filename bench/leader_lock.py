"""The etcd leader lock (fleetd.engine.etcd_lock) on a real 3-member etcd cluster on
loopback (Debian's etcd-server 3.4, default election timeout 1 s).

    .venv/bin/python bench/leader_lock.py [--runs 5] [--ttls 1,2,3,5] [--etcd-kills 3]

For each lock TTL asked: what etcd grants; the latency of a won campaign, a lost one and
a renewal; and, with two real leadership loops (fleetd.engine.leader) on two clients,
the time from the leader's death (its loop cancelled without resigning, at a random
point between renewals) to the other's election. Then, per TTL, kill -9 of etcd's raft
leader member while a fleetd leads and another follows: whether the leader stepped down
(a needless failover: its lease is safe, but its renewals stall through etcd's
election, which this prints too) and, when it did, how long no fleetd led. Timing: the
loop's defaults (skew 0.5 s + stop 1 s) where the TTL allows them, else the margin
scaled to 60 % of the TTL (printed).
Prints min/median/max; writes bench/results/leader_lock.json.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from typing import Any, Dict, List, Optional

from benchkit import save

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests", "integration")]

from etcdkit import EtcdCluster, etcd_cluster  # noqa: E402

from fleetd.engine.etcd_lock import EtcdLock  # noqa: E402
from fleetd.engine.leader import Leadership, Timing  # noqa: E402
from fleetd.registry.etcdv3 import EtcdClient  # noqa: E402


def timing_for(ttl: int) -> Timing:
    default = Timing()
    if default.margin < ttl * 2 / 3:
        return default
    margin = ttl * 0.6
    return Timing(skew_s=margin / 3, stop_s=margin * 2 / 3, retry_s=min(0.5, ttl / 6))


def figures(values: List[float]) -> Dict[str, float]:
    return {"n": len(values), "min": min(values), "median": statistics.median(values),
            "max": max(values)}


def show(what: str, values: List[float], unit: str = "ms") -> None:
    scale = 1000 if unit == "ms" else 1
    f = figures(values)
    print(f"  {what:<38} min {f['min'] * scale:8.1f}  median {f['median'] * scale:8.1f}  "
          f"max {f['max'] * scale:8.1f} {unit}  (n={len(values)})")


async def latencies(eps: List[str], ttl: int, runs: int) -> Dict[str, Any]:
    prefix = f"/bench-{uuid.uuid4().hex[:8]}"
    won: List[float] = []
    lost: List[float] = []
    renew: List[float] = []
    async with EtcdClient(eps) as c:
        probe = await c.grant(ttl)
        granted = (await c.time_to_live(probe)).granted_ttl
        await c.revoke(probe)
        a, b = EtcdLock(c, prefix, "a", ttl=ttl), EtcdLock(c, prefix, "b", ttl=ttl)
        for _ in range(runs):
            t = time.monotonic()
            assert (await a.campaign()).epoch is not None
            won.append(time.monotonic() - t)
            t = time.monotonic()
            assert (await b.campaign()).epoch is None
            lost.append(time.monotonic() - t)
            for _ in range(5):
                t = time.monotonic()
                await a.renew()
                renew.append(time.monotonic() - t)
            await a.resign()
    return {"granted_ttl": granted, "campaign_won_s": figures(won),
            "campaign_lost_s": figures(lost), "renew_s": figures(renew),
            "_raw": (won, lost, renew)}


class Side:
    def __init__(self, name: str, client: EtcdClient, prefix: str, ttl: int,
                 events: List[Any]) -> None:
        self.name = name
        self.lock = EtcdLock(client, prefix, name, ttl=ttl)
        self.events = events
        self.loop = Leadership(self.lock, self.elected, self.deposed, timing_for(ttl))
        self.task: Optional[asyncio.Task[None]] = None

    async def elected(self, epoch: int) -> None:
        self.events.append((time.monotonic(), self.name, "elected"))

    async def deposed(self, reason: str) -> None:
        self.events.append((time.monotonic(), self.name, "deposed"))

    def start(self) -> None:
        self.task = asyncio.ensure_future(self.loop.run())

    async def kill(self) -> None:
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


async def wait_for(pred: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise TimeoutError("the bench waited 60 s for an election")
        await asyncio.sleep(0.01)


async def failover(eps: List[str], ttl: int) -> float:
    """Seconds from the leader's death to the other's election."""
    prefix = f"/bench-{uuid.uuid4().hex[:8]}"
    events: List[Any] = []
    async with EtcdClient(eps) as ca, EtcdClient(eps) as cb:
        a, b = Side("a", ca, prefix, ttl, events), Side("b", cb, prefix, ttl, events)
        a.start()
        await wait_for(lambda: events)
        b.start()
        await asyncio.sleep(ttl + random.uniform(0, ttl / 3))  # b follows; a mid-renewal
        await a.kill()
        died = time.monotonic()
        await wait_for(lambda: any(e[1] == "b" and e[2] == "elected" for e in events))
        took = float(next(e[0] for e in events if e[1] == "b")) - died
        await b.kill()
        await b.loop.resign()
        return took


async def etcd_leader_kill(cluster: EtcdCluster, ttl: int) -> Dict[str, float]:
    """kill -9 of etcd's raft leader while fleetd "a" leads and "b" follows: whether a
    kept leading, how long fleetd had no leader when it did not (deposed -> the next
    election, either side), and how long a renewal sent right after the kill took
    (the stall of etcd's election)."""
    prefix = f"/bench-{uuid.uuid4().hex[:8]}"
    events: List[Any] = []
    async with EtcdClient(cluster.endpoints) as ca, EtcdClient(cluster.endpoints) as cb, \
            EtcdClient(cluster.endpoints) as cp:
        a, b = Side("a", ca, prefix, ttl, events), Side("b", cb, prefix, ttl, events)
        a.start()
        await wait_for(lambda: events)
        b.start()
        probe = await cp.grant(30)
        await asyncio.sleep(random.uniform(0, ttl / 3))
        statuses = await ca.statuses()
        victim = next(m for m, s in zip(cluster.members, statuses) if s.is_leader)
        victim.kill()
        killed = time.monotonic()
        await cp.keepalive_once(probe)
        stall = time.monotonic() - killed
        await asyncio.sleep(max(3 * ttl, 8))
        deposed = [e[0] for e in events if e[2] == "deposed"]
        after = [e[0] for e in events if e[2] == "elected" and deposed and e[0] > deposed[0]]
        gap = (after[0] - deposed[0]) if after else (math.inf if deposed else 0.0)
        for side in (a, b):
            await side.kill()
            await side.loop.resign()
        await cp.revoke(probe)
    victim.start()
    await asyncio.get_running_loop().run_in_executor(None, cluster.wait_healthy)
    return {"kept": float(not deposed), "leaderless_s": gap, "stall_s": stall}


async def main_async(cluster: EtcdCluster, ttls: List[int], runs: int,
                     kills: int) -> Dict[str, Any]:
    out: Dict[str, Any] = {}
    for ttl in ttls:
        t = timing_for(ttl)
        lat = await latencies(cluster.endpoints, ttl, runs)
        won, lost, renew = lat.pop("_raw")
        print(f"TTL {ttl} s asked, {lat['granted_ttl']} s granted; timing skew "
              f"{t.skew_s:g} s + stop {t.stop_s:g} s, retry {t.retry_s:g} s")
        show("campaign (won)", won)
        show("campaign (lost)", lost)
        show("renewal", renew)
        fo = [await failover(cluster.endpoints, ttl) for _ in range(runs)]
        show("leader death -> new leader", fo, "s")
        lat["failover_s"] = figures(fo)
        if kills:
            runs_k = [await etcd_leader_kill(cluster, ttl) for _ in range(kills)]
            kept = sum(int(r["kept"]) for r in runs_k)
            print(f"  kill -9 of etcd's raft leader: the fleetd kept leading {kept} of "
                  f"{len(runs_k)} times")
            show("  renewal stalled by etcd's election", [r["stall_s"] for r in runs_k], "s")
            gaps = [r["leaderless_s"] for r in runs_k if not r["kept"]]
            if gaps:
                show("  no fleetd leader for", gaps, "s")
            lat["etcd_leader_kill"] = runs_k
        out[str(ttl)] = lat
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--ttls", default="1,2,3,5")
    ap.add_argument("--etcd-kills", type=int, default=3)
    args = ap.parse_args()
    try:
        ttls = [int(t) for t in args.ttls.split(",")]
    except ValueError:
        ap.error(f"--ttls: not a comma list of whole seconds: {args.ttls!r}")
    with tempfile.TemporaryDirectory(prefix="leader-lock-") as d, \
            etcd_cluster(d, 3) as cluster:
        out = asyncio.run(main_async(cluster, ttls, args.runs, args.etcd_kills))
    print("wrote", save("leader_lock", out))


if __name__ == "__main__":
    main()
