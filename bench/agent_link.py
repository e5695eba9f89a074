"""How fast fleetd reaches an agent over each link: sshd's stream-local forwarding to
the agent's socket, or the ``fleet-agent attach`` relay (where sshd refuses forwarding).

    .venv/bin/python bench/agent_link.py [--opens 50]

A 2-host lab of its own (slot ``fe``, 10.86.0.0/24): h1's sshd as Debian ships it
(forwarding allowed), h2's with ``AllowStreamLocalForwarding no``. For each host, one
SSH connection (fleetd.transport.ssh, as a session uses it): the first open, which
finds no agent and starts it, then N opens with the agent up, each timed from the open
to the agent's hello answer (what a session's reconnect costs). Prints a table; writes
bench/results/agent_link.json.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Dict, List

from benchkit import pct, save

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests", "integration")]

from labkit import lab_slot, reset_host  # noqa: E402

from fleetd import protocol  # noqa: E402
from fleetd.lab import sshd  # noqa: E402
from fleetd.lab.daemon import agent_command  # noqa: E402
from fleetd.lab.netns import Host, Lab  # noqa: E402
from fleetd.transport.ssh import SshTransport  # noqa: E402
from fleetd.wire import messages  # noqa: E402


async def hello(t: SshTransport) -> float:
    """Open the agent's channel and say hello: seconds until the agent's hello."""
    began = time.perf_counter()
    channel = await t.open(agent_command())
    channel.write(protocol.dump(messages.daemon_hello(1.0, epoch=0)))
    line = await channel.readline()
    took = time.perf_counter() - began
    channel.close()
    if protocol.decode(line)["type"] != messages.HELLO:
        raise SystemExit(f"the agent did not say hello: {line!r}")
    return took


async def measure(lab: Lab, h: Host, opens: int) -> Dict[str, Any]:
    t = SshTransport(h.address, 22, "root", lab.identity, lab.known_hosts, machine=h.name)
    try:
        first = await hello(t)
        times: List[float] = [await hello(t) for _ in range(opens)]
        return {"link": t.link, "first_ms": first * 1000,
                "p50_ms": pct(times, 50) * 1000, "p99_ms": pct(times, 99) * 1000,
                "max_ms": max(times) * 1000, "opens": opens}
    finally:
        await t.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--opens", type=int, default=50)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="fleet-bench-link-")
    results: Dict[str, Any] = {}
    try:
        with lab_slot("fe"):
            lab = Lab(os.path.join(work, "lab"), prefix="fe", subnet="10.86.0")
            lab.down()
            try:
                hosts = lab.up(2)
                sshd.configure(hosts[1], AllowStreamLocalForwarding="no")
                for h in hosts:
                    results[h.name] = asyncio.run(measure(lab, h, args.opens))
                    reset_host(lab, h)
            finally:
                lab.down()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"\nopen + hello, one SSH connection per host, {args.opens} opens with the agent up")
    print(f"{'host':5} {'link':46} {'first ms':>9} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7}")
    for name, r in results.items():
        print(f"{name:5} {r['link']:46} {r['first_ms']:9.0f} {r['p50_ms']:7.1f} "
              f"{r['p99_ms']:7.1f} {r['max_ms']:7.1f}")
    print("first: no agent yet (forwarded: the socket does not answer, attach --start-only "
          "starts it; relay: also the probes that find sshd refusing)")
    print(f"wrote {save('agent_link', results)}")


if __name__ == "__main__":
    main()
