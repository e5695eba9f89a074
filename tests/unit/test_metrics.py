"""fleetd's metrics (issue 18): the families a scrape reads from the records, what the
event bus and the engine count, and GET /metrics over a real Daemon, parsed by
prometheus_client's own parser."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
from apikit import free_port, http, post, role_tokens, served
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families
from test_engine_loop import SERVICE

from fleetd import protocol
from fleetd.agent.cgroup_ops import UnitCgroups
from fleetd.cli.main import cli
from fleetd.daemon import usage
from fleetd.daemon.metrics import FleetState, Metrics, Usage
from fleetd.engine.events import Bus, Draft
from fleetd.registry.base import LAUNCHED, LOADED, MachineRecord, ObservedRecord, UnitRecord
from fleetd.transport.base import TransportError

Samples = Dict[Tuple[str, Tuple[Tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in text_string_to_metric_families(text) for s in f.samples}


def one(found: Samples, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


def unit(name: str, desired: str) -> UnitRecord:
    return UnitRecord(name, "h", desired, "m1", "why", 0.0)


def machine(name: str, state: str) -> MachineRecord:
    return MachineRecord(name, "10.0.0.1", 22, "root", None, None, "agent", {}, state=state)


def copy(name: str, state: str, restarts: int, health: str) -> ObservedRecord:
    return ObservedRecord(name, "m1", "h", state, 10, None, None, restarts, None, 0.0,
                          health=health)


def test_a_scrape_counts_units_machines_and_each_copy() -> None:
    m = Metrics()
    m.watch(lambda: FleetState(
        [unit("a.service", LAUNCHED), unit("b.service", LAUNCHED), unit("c.service", LOADED)],
        [copy("a.service", protocol.RUNNING, 3, "passing"),
         copy("b.service", protocol.FAILED, 0, "unknown")],
        [machine("m1", "up"), machine("m2", "lost")],
        {("a.service", "m1"): Usage(memory_bytes=5 << 20, cpu_seconds=1.5, oom_kills=0)}))
    found = samples(m.render().decode())
    assert one(found, "fleetd_units", desired="launched") == 2
    assert one(found, "fleetd_units", desired="loaded") == 1
    assert one(found, "fleetd_units", desired="inactive") == 0
    assert one(found, "fleetd_unit_copies", state="running") == 1
    assert one(found, "fleetd_unit_copies", state="failed") == 1
    assert one(found, "fleetd_machines", state="up") == 1
    assert one(found, "fleetd_machines", state="lost") == 1
    assert one(found, "fleetd_unit_restarts_total", unit="a.service", machine="m1") == 3
    assert one(found, "fleetd_unit_health", unit="a.service", machine="m1",
               health="passing") == 1
    assert one(found, "fleetd_unit_health", unit="a.service", machine="m1",
               health="failing") == 0
    assert one(found, "fleetd_unit_memory_bytes", unit="a.service", machine="m1") \
        == 5 << 20
    assert one(found, "fleetd_unit_cpu_seconds_total", unit="a.service", machine="m1") == 1.5
    assert ("fleetd_unit_memory_bytes", (("machine", "m1"), ("unit", "b.service"))) \
        not in found  # no usage from its agent: no series, rather than a false 0


def test_events_and_passes_are_counted() -> None:
    m = Metrics()
    bus = Bus()
    bus.listeners.append(m.event)
    for d in (Draft("placed", "least loaded", "a.service", "m1"),
              Draft("rescheduled", "m1 lost", "a.service", "m2", {"from": "m1"}),
              Draft("unplaced", "no machine fits", "b.service"),
              Draft("machine-up", "agent answered", None, "m1", {"was": "new"}),
              Draft("machine-up", "agent answered", None, "m1", {"was": "unreachable"})):
        bus.publish(d)
    m.engine_pass(0.003, "done")
    found = samples(m.render().decode())
    assert one(found, "fleetd_placements_total", kind="placed") == 1
    assert one(found, "fleetd_placements_total", kind="rescheduled") == 1
    assert one(found, "fleetd_placements_total", kind="handoff") == 0
    assert one(found, "fleetd_placement_refusals_total") == 1
    assert one(found, "fleetd_reschedules_total") == 1
    assert one(found, "fleetd_session_reconnects_total", machine="m1") == 1
    assert one(found, "fleetd_events_total", kind="machine-up") == 2
    assert one(found, "fleetd_engine_passes_total", outcome="done") == 1
    assert one(found, "fleetd_engine_pass_seconds_count") == 1


def test_get_metrics_with_a_read_token_counts_requests(tmp_path: Path) -> None:
    with served(tmp_path, listen=f"127.0.0.1:{free_port()}") as s:
        sock = s.config.socket
        token = role_tokens(sock)["read"]
        assert post(sock, "/v1/units", {"units": [{"name": "a.service", "text": SERVICE}],
                                        "desired": "launched"})[0] == 200
        assert http(sock, "GET", "/v1/units")[0] == 200
        assert http(sock, "GET", "/v1/no-such-thing")[0] == 404
        where = s.config.listen_host_port
        assert http(where, "GET", "/metrics")[0] == 401
        deadline = time.monotonic() + 10
        while True:
            status, raw = http(where, "GET", "/metrics", headers={"Authorization": token})
            assert status == 200, raw
            found = samples(raw.decode())
            if one(found, "fleetd_engine_passes_total", outcome="done") >= 1 or \
                    time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert one(found, "fleetd_units", desired="launched") == 1
        assert one(found, "fleetd_api_requests_total", route="/v1/units", method="GET",
                   status="200") == 1
        assert one(found, "fleetd_api_requests_total", route="(none)", method="GET",
                   status="404") == 1
        assert one(found, "fleetd_api_requests_total", route="/metrics", method="GET",
                   status="401") == 1
        assert one(found, "fleetd_api_request_seconds_count", route="/v1/units",
                   method="GET") == 1
        assert one(found, "fleetd_engine_passes_total", outcome="done") >= 1
        assert one(found, "fleetd_events_total", kind="submitted") == 1


# --- the agents' usage -------------------------------------------------------------------
class Session:
    """A machine session that answers ``usage`` with ``reply`` (or fails as ``fails``)."""

    def __init__(self, reply: Dict[str, Any], connected: bool = True,
                 fails: Optional[Exception] = None) -> None:
        self.reply, self.connected, self.fails = reply, connected, fails
        self.asked: List[str] = []

    async def request(self, kind: str, timeout: float = 5.0, **fields: Any) -> Any:
        self.asked.append(kind)
        if self.fails is not None:
            raise self.fails
        return self.reply


def test_usage_replies_are_read_and_checked() -> None:
    got = usage.read({"usage": {"a.service": {"memory_bytes": 4096, "cpu_usage_usec": 1500000,
                                              "oom_kills": 1, "tasks": 3}}}, "m1")
    assert got == {("a.service", "m1"): Usage(4096, 1.5, 1)}
    assert usage.read({"usage": {"b.service": {}}}, "m1") == {
        ("b.service", "m1"): Usage(None, None, None)}
    for reply, named in (({"usage": {"a.service": {"memory_bytes": -1}}}, "memory_bytes"),
                         ({"usage": {"a.service": {"cpu_usage_usec": "9"}}},
                          "cpu_usage_usec"),
                         ({"usage": {"../x": {}}}, "invalid unit name"),
                         ({"usage": ["a.service"]}, "usage is not an object"),
                         ({"error": "unknown message type 'usage'"}, "unknown message")):
        with pytest.raises(usage.BadUsage) as err:
            usage.read(reply, "m1")
        assert named in str(err.value) and "machine m1" in str(err.value)


def test_gather_asks_each_connected_machine_and_leaves_out_those_that_fail() -> None:
    sessions = {
        "m1": Session({"usage": {"a.service": {"memory_bytes": 1}}}),
        "m2": Session({}, fails=TransportError("unreachable", "did not answer within 2s")),
        "m3": Session({"usage": {"c.service": {"memory_bytes": "x"}}}),
        "m4": Session({"usage": {"d.service": {"memory_bytes": 1}}}, connected=False),
    }
    got = asyncio.run(usage.gather(sessions))
    assert got == {("a.service", "m1"): Usage(1, None, None)}
    assert [s.asked for s in sessions.values()] == [["usage"], ["usage"], ["usage"], []]


def test_a_scrape_asks_for_usage_first() -> None:
    m = Metrics()

    async def asked() -> Dict[Tuple[str, str], Usage]:
        return {("a.service", "m1"): Usage(memory_bytes=7 << 20, cpu_seconds=0.25)}
    m.watch(lambda: FleetState([unit("a.service", LAUNCHED)],
                               [copy("a.service", protocol.RUNNING, 0, "unknown")],
                               [machine("m1", "up")]), asked)
    found = samples(asyncio.run(m.scrape()).decode())
    assert one(found, "fleetd_unit_memory_bytes", unit="a.service", machine="m1") == 7 << 20
    assert one(found, "fleetd_unit_cpu_seconds_total", unit="a.service", machine="m1") == .25


def test_the_agent_reads_a_units_cgroup_counters() -> None:
    class Cgroup:
        def __init__(self, stats: Dict[str, int]) -> None:
            self._stats = stats

        def stats(self) -> Dict[str, int]:
            return dict(self._stats)

        def oom_kills(self) -> int:
            return 2

    class Backend:
        def unit(self, name: str, pgid: Optional[int] = None) -> Cgroup:
            return Cgroup({"memory_bytes": 123, "cpu_usage_usec": 9} if name == "a.service"
                          else {})

    cgroups = UnitCgroups(Backend())  # type: ignore[arg-type]
    assert cgroups.usage("a.service") == {"memory_bytes": 123, "cpu_usage_usec": 9,
                                          "oom_kills": 2}
    assert cgroups.usage("b.service") == {}  # no counters (no cgroup): nothing made up


class Sessions(Session):
    """A connected machine session as the Daemon keeps it, answering ``usage``."""

    last_seen = None
    retry_in = None

    async def stop(self) -> None:
        pass


def test_list_units_and_status_show_each_copys_usage(tmp_path: Path) -> None:
    with served(tmp_path) as s:
        sock = s.config.socket
        assert post(sock, "/v1/units", {"units": [{"name": "a.service", "text": SERVICE}],
                                        "desired": "launched"})[0] == 200
        s.call(s.daemon.registry.upsert_observed(copy("a.service", protocol.RUNNING, 2,
                                                      "passing")))
        s.daemon.sessions["m1"] = Sessions(  # type: ignore[assignment]
            {"usage": {"a.service": {"memory_bytes": 5 << 20, "cpu_usage_usec": 2500000,
                                     "oom_kills": 0}}})
        status, answer = http(sock, "GET", "/v1/units?usage=1")
        assert status == 200, answer
        row = next(r for r in answer["units"] if r["machine"] == "m1")
        assert row["usage"] == {"memory_bytes": 5 << 20, "cpu_seconds": 2.5, "oom_kills": 0}
        plain = next(r for r in http(sock, "GET", "/v1/units")[1]["units"]
                     if r["machine"] == "m1")
        assert "usage" not in plain  # the agents are asked only when usage is wanted
        status, answer = http(sock, "GET", "/v1/units/a.service/status?lines=0")
        assert status == 200 and answer["copies"][0]["usage"]["cpu_seconds"] == 2.5

        ctl = CliRunner()
        listed = ctl.invoke(cli, ["--endpoint", f"unix://{sock}", "list-units",
                                  "--fields", "unit,machine,cpu,memory"])
        assert listed.exit_code == 0, listed.output
        assert listed.output.splitlines()[0].split() == ["UNIT", "MACHINE", "CPU", "MEMORY"]
        assert "a.service  m1       2.50s  5.0M" in listed.output
        shown = ctl.invoke(cli, ["--endpoint", f"unix://{sock}", "status", "-n", "0",
                                 "a.service"])
        assert shown.exit_code == 0, shown.output
        assert "m1: running, pid 10, restarts 2, health passing, memory 5.0M, cpu 2.50s" \
            in shown.output
