"""Events and metrics at fleet size: what publishing, resuming and a /metrics scrape cost.

    .venv/bin/python bench/events_metrics.py [--units 10000] [--machines 1000]

In-process, no lab (what is measured is fleetd's own work, not a host's):
- the bus: publishing 100,000 events into the bounded history (10,000 held), each
  counted by the metrics as fleetd counts them; reading back from an id 5,000 behind
  the last, whole and through a unit glob;
- a scrape: rendering /metrics for N units on M machines, each unit with an observed
  copy and its agent's usage (the families fleetd reads at each scrape), and its size.
Prints the figures and writes bench/results/events_metrics.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Callable, Dict, List

from benchkit import save

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT]

from fleetd import protocol  # noqa: E402
from fleetd.daemon.metrics import FleetState, Metrics, Usage  # noqa: E402
from fleetd.engine.events import Bus, Draft, Filter  # noqa: E402
from fleetd.registry.base import (  # noqa: E402
    LAUNCHED,
    MachineRecord,
    ObservedRecord,
    UnitRecord,
)


def timed(fn: Callable[[], object], runs: int = 5) -> float:
    """The median of ``runs`` runs, in seconds."""
    took: List[float] = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        took.append(time.perf_counter() - t0)
    return statistics.median(took)


def bus_figures(events: int) -> Dict[str, float]:
    bus = Bus()
    metrics = Metrics()
    bus.listeners.append(metrics.event)
    t0 = time.perf_counter()
    for i in range(events):
        bus.publish(Draft("restarted", f"restarted by its Restart= policy (restart {i})",
                          f"web@{i % 500}.service", f"m{i % 50}", {"restarts": i}))
    publish_s = time.perf_counter() - t0
    last = bus.history.last
    whole = timed(lambda: bus.history.after(last - 5000))
    glob = timed(lambda: bus.history.after(last - 5000, Filter(unit="web@1*.service")))
    return {"events": events, "publish_us_per_event": publish_s / events * 1e6,
            "resume_5000_ms": whole * 1e3, "resume_5000_glob_ms": glob * 1e3}


def scrape_figures(units: int, machines: int) -> Dict[str, float]:
    names = [f"web@{i}.service" for i in range(units)]
    state = FleetState(
        [UnitRecord(n, "h", LAUNCHED, f"m{i % machines}", "least loaded", 0.0)
         for i, n in enumerate(names)],
        [ObservedRecord(n, f"m{i % machines}", "h", protocol.RUNNING, 1000 + i, 0.0, None,
                        i % 3, None, 0.0, health="passing") for i, n in enumerate(names)],
        [MachineRecord(f"m{i}", f"10.0.{i // 250}.{i % 250}", 22, "root", None, None,
                       "agent", {}, state="up") for i in range(machines)],
        {(n, f"m{i % machines}"): Usage(50 << 20, 12.5, 0) for i, n in enumerate(names)})
    metrics = Metrics()
    metrics.watch(lambda: state)
    size = len(metrics.render())
    return {"units": units, "machines": machines, "scrape_ms": timed(metrics.render) * 1e3,
            "scrape_bytes": size}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=int, default=10000)
    parser.add_argument("--machines", type=int, default=1000)
    parser.add_argument("--events", type=int, default=100000)
    args = parser.parse_args()
    bus = bus_figures(args.events)
    print(f"bus: {bus['publish_us_per_event']:.1f} us to publish and count an event; "
          f"resuming 5,000 behind: {bus['resume_5000_ms']:.2f} ms, through a unit glob "
          f"{bus['resume_5000_glob_ms']:.2f} ms")
    scrape = scrape_figures(args.units, args.machines)
    print(f"/metrics for {args.units} units on {args.machines} machines: "
          f"{scrape['scrape_ms']:.0f} ms to render, {scrape['scrape_bytes'] / 1e6:.1f} MB")
    print("saved", save("events_metrics", {"bus": bus, "scrape": scrape}))


if __name__ == "__main__":
    main()
