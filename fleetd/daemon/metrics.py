"""fleetd's metrics in Prometheus' text format (``GET /metrics``, with prometheus-client).

Two kinds, in one CollectorRegistry per fleetd (not the library's global one: a test
runs several daemons in one process):

- counted as they happen: engine passes (by how each ended) and their duration; the
  event bus's events (fleetd/engine/events.py) by kind, and from them placements (by
  kind: placed, rescheduled, handoff, retried), refusals (units left unplaced),
  reschedules and SSH session reconnects (a machine up again after it was down); API
  requests by route, method and status, with a latency histogram by route;
- read at each scrape (``fleet_families``, pure): units by desired state, unit copies by
  the state their agents report, machines by state, and per unit and machine the
  restarts and health their agents report, with the usage the agents read from each
  unit's cgroup when asked (fleetd/daemon/usage.py: memory charged to it, CPU seconds,
  OOM kills) where the host keeps those counters.

Several fleetd on etcd: each serves the records it reads (the same units and machines);
only the leader runs passes, places units and holds sessions, so the counters that come
from those, and the agents' usage, are the leader's (a follower shows them at zero or
without usage).
"""

from __future__ import annotations

import dataclasses
from typing import (
    Awaitable,
    Callable,
    Dict,
    Iterable,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
)

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from fleetd import protocol
from fleetd.engine.events import Event
from fleetd.registry.base import (
    INACTIVE,
    LAUNCHED,
    LOADED,
    MachineRecord,
    ObservedRecord,
    UnitRecord,
)

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
DESIRED = (INACTIVE, LOADED, LAUNCHED)
MACHINE_STATES = ("new", "up", "unreachable", "lost", "error")
HEALTH = ("passing", "failing", "unknown")
PLACING = ("placed", "rescheduled", "handoff", "retried")
DOWN = ("machine-unreachable", "machine-error", "machine-lost")
API_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60)
PASS_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10)


@dataclasses.dataclass(frozen=True)
class Usage:
    """What an agent read of one unit's cgroup (None: it could not say)."""

    memory_bytes: Optional[int] = None  # memory.current (v2), memory.usage_in_bytes (v1)
    cpu_seconds: Optional[float] = None
    oom_kills: Optional[int] = None

    def to_json(self) -> Dict[str, Optional[float]]:
        """As the API shows it (status, list-units ?usage=1)."""
        return {"memory_bytes": self.memory_bytes, "cpu_seconds": self.cpu_seconds,
                "oom_kills": self.oom_kills}


@dataclasses.dataclass(frozen=True)
class FleetState:
    units: Sequence[UnitRecord]
    observed: Sequence[ObservedRecord]
    machines: Sequence[MachineRecord]
    # (unit, machine) -> its usage, as the agents said at this scrape
    usage: Mapping[Tuple[str, str], Usage] = dataclasses.field(default_factory=dict)


def fleet_families(s: FleetState) -> List[Metric]:
    """The gauges and per-unit series of one scrape, from the records as they are."""
    desired = GaugeMetricFamily("fleetd_units", "Units by desired state.",
                                labels=["desired"])
    for d, n in _count((u.desired for u in s.units), DESIRED).items():
        desired.add_metric([d], n)
    copies = GaugeMetricFamily("fleetd_unit_copies",
                               "Unit copies by the state their agent reports.",
                               labels=["state"])
    for st, n in _count((o.state for o in s.observed), protocol.UNIT_STATES).items():
        copies.add_metric([st], n)
    machines = GaugeMetricFamily("fleetd_machines", "Machines by state.", labels=["state"])
    for st, n in _count((m.state for m in s.machines), MACHINE_STATES).items():
        machines.add_metric([st], n)
    key = ["unit", "machine"]
    restarts = CounterMetricFamily("fleetd_unit_restarts",
                                   "Automatic restarts of the unit on the machine "
                                   "(Restart=), as its agent reports.", labels=key)
    health = GaugeMetricFamily("fleetd_unit_health",
                               "1 for the unit's health check state on the machine.",
                               labels=[*key, "health"])
    memory = GaugeMetricFamily("fleetd_unit_memory_bytes",
                               "Memory charged to the unit's cgroup (its processes' RSS "
                               "and page cache), read by its agent.", labels=key)
    cpu = CounterMetricFamily("fleetd_unit_cpu_seconds",
                              "CPU time of the unit's cgroup, read by its agent.",
                              labels=key)
    oom = CounterMetricFamily("fleetd_unit_oom_kills",
                              "OOM kills in the unit's cgroup, read by its agent.",
                              labels=key)
    for o in sorted(s.observed, key=lambda o: (o.unit, o.machine)):
        labels = [o.unit, o.machine]
        restarts.add_metric(labels, o.restarts)
        for h in HEALTH:
            health.add_metric([*labels, h], 1.0 if o.health == h else 0.0)
        use = s.usage.get((o.unit, o.machine))
        if use is None:
            continue
        if use.memory_bytes is not None:
            memory.add_metric(labels, use.memory_bytes)
        if use.cpu_seconds is not None:
            cpu.add_metric(labels, use.cpu_seconds)
        if use.oom_kills is not None:
            oom.add_metric(labels, use.oom_kills)
    return [desired, copies, machines, restarts, health, memory, cpu, oom]


def _count(values: Iterable[str], known: Sequence[str]) -> Dict[str, int]:
    """How many of each value: every known one (0 if none), then any other seen."""
    out = {k: 0 for k in known}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out


class _Fleet(Collector):
    def __init__(self, read: Callable[[], FleetState]) -> None:
        self.read = read

    def collect(self) -> Iterable[Metric]:
        return fleet_families(self.read())


class Metrics:
    """One fleetd's metrics: the counters its parts update, and ``render`` for a scrape."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.passes = Counter("fleetd_engine_passes", "Engine passes, by how they ended.",
                              ["outcome"], registry=r)
        self.pass_seconds = Histogram("fleetd_engine_pass_seconds",
                                      "How long an engine pass took.",
                                      buckets=PASS_BUCKETS, registry=r)
        self.events = Counter("fleetd_events", "Events published, by kind "
                              "(fleetctl events).", ["kind"], registry=r)
        self.placements = Counter("fleetd_placements", "Units put on a machine, by kind.",
                                  ["kind"], registry=r)
        self.refusals = Counter("fleetd_placement_refusals",
                                "Units left unplaced (no machine fits, or unreadable).",
                                registry=r)
        self.reschedules = Counter("fleetd_reschedules",
                                   "Units moved from one machine to another.", registry=r)
        self.reconnects = Counter("fleetd_session_reconnects",
                                  "SSH sessions to an agent made again after the machine "
                                  "was down.", ["machine"], registry=r)
        self.requests = Counter("fleetd_api_requests", "API requests, by route, method "
                                "and status.", ["route", "method", "status"], registry=r)
        self.latency = Histogram("fleetd_api_request_seconds", "API request latency.",
                                 ["route", "method"], buckets=API_BUCKETS, registry=r)
        self._usage_of: Optional[Callable[[], Awaitable[Mapping[Tuple[str, str],
                                                              Usage]]]] = None
        self._usage: Mapping[Tuple[str, str], Usage] = {}
        for outcome in ("done", "not written", "failed"):
            self.passes.labels(outcome)
        for kind in PLACING:
            self.placements.labels(kind)

    def watch(self, read: Callable[[], FleetState],
              usage: Optional[Callable[[], Awaitable[Mapping[Tuple[str, str], Usage]]]] = None
              ) -> None:
        """Read the fleet's state with ``read`` at each scrape (once per Metrics), and
        the agents' usage with ``usage`` (``scrape`` asks it first)."""
        self._usage_of = usage
        self.registry.register(_Fleet(read if usage is None else lambda: dataclasses.replace(
            read(), usage=self._usage)))

    def engine_pass(self, seconds: float, outcome: str) -> None:
        self.passes.labels(outcome).inc()
        self.pass_seconds.observe(seconds)

    def event(self, e: Event) -> None:
        self.events.labels(e.kind).inc()
        if e.kind in PLACING:
            self.placements.labels(e.kind).inc()
        if e.kind == "unplaced":
            self.refusals.inc()
        if e.kind == "rescheduled":
            self.reschedules.inc()
        if e.kind == "machine-up" and e.machine and e.fields.get("was") in \
                ("unreachable", "error", "lost"):
            self.reconnects.labels(e.machine).inc()

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route, method).observe(seconds)

    async def scrape(self) -> bytes:
        """A scrape: the agents' usage now, then every family."""
        if self._usage_of is not None:
            self._usage = await self._usage_of()
        return self.render()

    def render(self) -> bytes:
        return generate_latest(self.registry)
