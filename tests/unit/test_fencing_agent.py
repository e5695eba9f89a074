"""Fencing, without a network: the pure timer (fleetd.agent.fencing), the supervisor
stopping a unit fleetd has been silent on and keeping it stopped until the next desired
set, the agent accepting ``ping`` silently (and counting only fleetd's messages), and
the session pinging while connected and answering a fenced report with its desired set.
(A real partition: tests/integration/test_fencing.py.)"""

from __future__ import annotations

import asyncio
import math
import os
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from fleetd import protocol
from fleetd.agent import daemon as agent_daemon
from fleetd.agent import fencing
from fleetd.agent.state import AgentState
from fleetd.cgroups.none import NoneBackend
from fleetd.daemon.session import MachineSession
from fleetd.registry.base import MachineRecord
from fleetd.registry.sqlite import SqliteRegistry
from fleetd.testing.driver import FakeDriver
from fleetd.testing.registry import at_once
from fleetd.testing.systemd import Supervised
from fleetd.testing.transport import FakeTransport
from fleetd.testing.waiting import until

# --- the timer ----------------------------------------------------------------------


@pytest.mark.parametrize(("config", "limit"), [
    ({}, None),
    ({"fence_after_s": None}, None),
    ({"fence_after_s": 10}, 10.0),
    ({"fence_after_s": 2.5}, 2.5),
    ({"fence_after_s": math.inf}, None),  # infinity: never
    ({"fence_after_s": 0}, None),
    ({"fence_after_s": True}, None),
    ({"fence_after_s": "soon"}, None),
])
def test_fence_after_from_config(config: Dict[str, Any], limit: Optional[float]) -> None:
    assert fencing.fence_after(config) == limit


def test_reason_names_the_silence_and_the_option() -> None:
    assert fencing.reason(12.34, 10.0) == (
        "fenced: no word from fleetd for 12.3s (FenceAfterSec=10s)")
    assert fencing.reason(95.0, 90.0).endswith("(FenceAfterSec=1min 30s)")
    assert fencing.reason(1.0, 0.5).startswith(protocol.FENCED)


@pytest.mark.parametrize(("limits", "silent", "due", "wait"), [
    ({}, 100.0, [], 1.0),  # nothing to fence: look again later
    ({"a": 10.0}, 0.0, [], 1.0),  # far ahead: at most ``most``
    ({"a": 10.0}, 9.8, [], 0.2 + fencing.EPSILON_S),  # just past its deadline
    ({"a": 10.0}, 10.0, [], fencing.EPSILON_S),  # on it is not past it
    ({"a": 10.0}, 10.5, ["a"], 1.0),
    ({"b": 2.0, "a": 1.0, "c": 30.0}, 2.5, ["a", "b"], 1.0),
    ({"a": 1.0, "b": 3.0}, 2.9, ["a"], 0.1 + fencing.EPSILON_S),  # the next one ahead
])
def test_plan(limits: Dict[str, float], silent: float, due: List[str], wait: float) -> None:
    got, sleep = fencing.plan(limits, last_heard=1000.0, now=1000.0 + silent, most=1.0)
    assert [name for name, _ in got] == due
    assert all(why == fencing.reason(silent, limits[name]) for name, why in got)
    assert sleep == pytest.approx(wait)


def test_plan_with_a_clock_that_stepped_back_is_not_silence() -> None:
    assert fencing.plan({"a": 1.0}, last_heard=1000.0, now=990.0)[0] == []


# --- the supervisor ----------------------------------------------------------------------

def unit(name: str, fence: Optional[float]) -> Dict[str, Any]:
    config: Dict[str, Any] = {"unit_text": "[Service]\nExecStart=/bin/true\n"}
    if fence is not None:
        config["fence_after_s"] = fence
    return protocol.unit_spec(name, "h" * 64, protocol.WANT_RUNNING, "systemd", config)


FENCED, FREE = unit("fenced.service", 0.3), unit("free.service", None)


class Harness(Supervised):
    def __init__(self, root: str) -> None:
        super().__init__(root, fence_check_s=0.05)

    async def fleetd_talks(self) -> None:
        """fleetd's pings, as the agent daemon passes them on."""
        while True:
            self.sup.heard()
            await asyncio.sleep(0.05)


def test_silence_fences_only_units_that_ask_and_they_stay_stopped(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = Harness(str(tmp_path))
        talk = asyncio.ensure_future(h.fleetd_talks())
        h.sup.recover()
        h.sup.set_desired([FENCED, FREE])
        await until(lambda: h.starts("fenced.service") == 1 and h.starts("free.service") == 1)
        await asyncio.sleep(0.6)  # twice its FenceAfterSec=, while fleetd talks: nothing
        assert "stop fenced.service" not in h.fake.calls

        talk.cancel()  # the cut
        await until(lambda: h.last("fenced.service").get("state") == "stopped")
        error = h.last("fenced.service")["error"]
        assert error.startswith("fenced: no word from fleetd for ")
        assert error.endswith("s (FenceAfterSec=300ms)")
        assert h.fake.calls.count("stop fenced.service") == 1
        assert h.last("free.service").get("state") == "running"  # no FenceAfterSec=: untouched
        assert "stop free.service" not in h.fake.calls

        # fleetd is heard again, but no desired set yet: still stopped, whatever converges
        talk = asyncio.ensure_future(h.fleetd_talks())
        assert not h.sup.wanted(h.sup.units["fenced.service"])  # Restart= would not
        await h.sup.converge("fenced.service")
        await asyncio.sleep(0.3)
        assert h.starts("fenced.service") == 1

        h.sup.set_desired([FENCED, FREE])  # fleetd's desired set: it runs again
        await until(lambda: h.last("fenced.service").get("state") == "running")
        assert h.starts("fenced.service") == 2 and h.starts("free.service") == 1
        assert h.sup.fenced == {}
        talk.cancel()

    asyncio.run(scenario())


def test_a_desired_set_without_the_fenced_unit_forgets_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = Harness(str(tmp_path))
        h.sup.recover()
        h.sup.set_desired([FENCED])
        await until(lambda: h.last("fenced.service").get("state") == "stopped")  # nobody talks
        h.sup.heard()
        h.sup.set_desired([])  # it moved elsewhere meanwhile
        await until(lambda: "forget fenced.service" in h.fake.calls)
        assert h.starts("fenced.service") == 1

    asyncio.run(scenario())


# --- the agent daemon ----------------------------------------------------------------------

class AgentClient:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    def send(self, kind: str, **fields: Any) -> None:
        self.writer.write(protocol.encode(kind, **fields))

    async def read(self) -> Dict[str, Any]:
        line = await asyncio.wait_for(self.reader.readline(), 5)
        assert line, "the agent closed the connection"
        return protocol.decode(line)


def test_ping_gets_no_answer_and_only_fleetd_counts(tmp_path: Path) -> None:
    state_dir = tmp_path / "a"

    async def scenario() -> None:
        agent = agent_daemon.AgentDaemon(AgentState(str(state_dir)), NoneBackend("test"),
                                         {"systemd": FakeDriver()})
        served = asyncio.ensure_future(agent.serve())
        await until(lambda: os.path.exists(agent.state.socket_path))

        async def attach(daemon: str) -> AgentClient:
            c = AgentClient(*await asyncio.open_unix_connection(agent.state.socket_path))
            c.send("hello", daemon=daemon, heartbeat_s=60)
            assert (await c.read())["type"] == "hello"
            assert (await c.read())["type"] == "status"
            return c

        tool = await attach("test")
        before = agent.supervisor.last_heard
        tool.send("ping", seq=1)
        tool.send("nonsense")
        answer = await tool.read()  # the first answer is to the nonsense, not the ping
        assert answer["type"] == "error" and "'nonsense'" in answer["message"]
        assert agent.supervisor.last_heard == before  # not fleetd: no contact

        agent.supervisor.fenced["x.service"] = fencing.reason(3.0, 2.0)
        c = AgentClient(*await asyncio.open_unix_connection(agent.state.socket_path))
        c.send("hello", daemon="fleetd", heartbeat_s=60)
        assert (await c.read())["fenced"] == ["x.service"]  # fleetd must not send an old set
        c.writer.close()
        agent.supervisor.fenced.clear()

        fleetd = await attach("fleetd")
        heard = agent.supervisor.last_heard
        assert heard > before  # its hello counts
        await asyncio.sleep(0.01)
        fleetd.send("ping", seq=1)
        fleetd.send("nonsense")
        answer = await fleetd.read()
        assert answer["type"] == "error" and "'nonsense'" in answer["message"]
        assert agent.supervisor.last_heard > heard  # the ping counted

        for c in (tool, fleetd):
            c.writer.close()
        agent._stopped.set()
        await asyncio.wait_for(served, 5)

    asyncio.run(scenario())


# --- the session ------------------------------------------------------------------------------

SPEC = protocol.unit_spec("a.service", "h" * 64, protocol.WANT_RUNNING, "exec",
                          {"fence_after_s": 2.0})


def fenced_report(error: Optional[str]) -> bytes:
    return protocol.encode("unit", unit=protocol.unit_status(
        "a.service", "h" * 64, protocol.STOPPED, error=error))


def new_session(tmp_path: Path, transport: FakeTransport,
                engine_set: Optional[List[Dict[str, Any]]] = None
                ) -> tuple[MachineSession, SqliteRegistry]:
    """A session whose ``changed(True)`` (a connect, a report that matters) is answered
    as the engine answers it: a pass that pushes ``engine_set`` (None: no pass)."""
    registry = SqliteRegistry(str(tmp_path / "registry.db"))
    machine = MachineRecord(name="h1", address="10.0.0.1", port=22, user="root",
                            identity=None, known_hosts=None, agent_command="agent",
                            metadata={})
    at_once(registry.add_machine(machine))

    def changed(placement_relevant: bool) -> None:
        if placement_relevant and engine_set is not None:
            asyncio.get_running_loop().call_soon(session.push, list(engine_set))

    session = MachineSession(machine, registry, lambda m: transport, changed,
                             heartbeat_s=0.05)
    return session, registry


def test_session_pings_while_connected_and_resends_on_a_fenced_report(tmp_path: Path) -> None:
    async def scenario() -> None:
        transport = FakeTransport()
        spec = SPEC
        session, registry = new_session(tmp_path, transport, engine_set=[spec])
        session.start()
        await until(lambda: session.connected)
        channel = transport.channels[0]
        await until(lambda: "desired" in channel.kinds())
        assert channel.kinds()[:2] == ["hello", "desired"]
        await until(lambda: channel.kinds().count("ping") >= 3)
        pings = [m["seq"] for m in channel.written if m["type"] == "ping"]
        assert pings == list(range(1, len(pings) + 1))

        # a report of another kind of stop changes nothing; a fenced one brings the set back
        def report(error: Optional[str]) -> None:
            channel.incoming.put_nowait(fenced_report(error))

        report(None)
        await until(lambda: registry.list_observed("a.service"))
        await asyncio.sleep(0.1)
        assert channel.kinds().count("desired") == 1
        report(fencing.reason(2.4, 2.0))
        await until(lambda: channel.kinds().count("desired") == 2)
        assert channel.written[-1]["units"] == [spec]
        assert registry.list_observed("a.service")[0].error == fencing.reason(2.4, 2.0)

        await session.stop()
        sent = len(channel.written)
        await asyncio.sleep(0.2)
        assert len(channel.written) == sent  # the pinger ended with the session
        at_once(registry.close())

    asyncio.run(scenario())


def test_after_a_reconnect_an_agent_with_fenced_units_gets_only_a_fresh_set(
        tmp_path: Path) -> None:
    """The set a session holds dates from before the cut; the unit may run elsewhere by
    now, and any desired set would start it again on this host."""
    async def scenario() -> None:
        transport = FakeTransport(fenced=["a.service"])
        session, registry = new_session(tmp_path, transport)
        session.push([SPEC])  # a set from before the connect: never sent
        session.start()
        await until(lambda: session.connected)
        channel = transport.channels[0]
        channel.incoming.put_nowait(fenced_report(fencing.reason(2.4, 2.0)))
        await until(lambda: registry.list_observed("a.service"))
        await asyncio.sleep(0.1)
        assert "desired" not in channel.kinds()
        session.push([])  # the engine's pass after the connect: it runs elsewhere now
        assert [m["units"] for m in channel.written if m["type"] == "desired"] == [[]]
        await session.stop()
        at_once(registry.close())

    asyncio.run(scenario())


def test_an_agent_older_than_fencing_is_not_pinged(tmp_path: Path) -> None:
    async def scenario() -> None:
        transport = FakeTransport(fenced=None)
        session, registry = new_session(tmp_path, transport, engine_set=[SPEC])
        session.start()
        await until(lambda: session.connected)
        await asyncio.sleep(0.3)  # six heartbeats
        assert transport.channels[0].kinds() == ["hello", "desired"]
        await session.stop()
        at_once(registry.close())

    asyncio.run(scenario())
