"""The machine simulator (fleetd.lab.sim*): its fake driver, its wire's levers, and one
simulated machine reached the way fleetd reaches a host - fleetd's own SSH transport,
strict host keys - answered by the real agent. All in the test's own event loop."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any, Awaitable, Callable, Dict, Optional, Set, Tuple

import pytest

from fleetd import protocol
from fleetd.drivers.base import StartContext
from fleetd.lab import sim, sim_control, sim_host, sim_net
from fleetd.lab.sim_driver import SimDriver
from fleetd.transport.base import TransportError
from fleetd.transport.ssh import SshTransport
from fleetd.wire import messages
from fleetd.wire.unitspec import UnitConfig


def ctx(unit: str) -> StartContext:
    return StartContext(unit=unit, machine_id="m", log_path="/dev/null", invocation_id="i")


# --- the driver -----------------------------------------------------------------------
def test_driver_counts_starts_and_stops_and_fails_on_demand() -> None:
    d = SimDriver()
    h1 = d.start(UnitConfig(), ctx("a.service"))
    d.start(UnitConfig(), ctx("b.service"))
    assert d.statuses(["a.service", "c.service"]) == {
        "a.service": d.status("a.service"), "c.service": d.status("c.service")}
    assert d.status("a.service")["state"] == "running"
    assert d.status("c.service")["state"] == "stopped"
    assert d.fail("a.service", 3)
    failed = d.status("a.service")
    assert (failed["state"], failed["exit_status"]) == ("failed", 3)
    assert not d.fail("a.service")  # not running: nothing to fail
    assert d.recover(h1.to_record()) is None  # a failed program is not re-adopted
    d.stop("b.service")
    d.stop("b.service")  # stopping a stopped unit counts nothing
    h2 = d.start(UnitConfig(), ctx("a.service"))
    assert h2.pid != h1.pid  # a restart shows a new pid
    assert d.recover(h2.to_record()) == h2
    assert d.starts == {"a.service": 2, "b.service": 1}
    assert d.stops == {"b.service": 1}
    assert d.running() == ["a.service"]
    d.forget("a.service")
    assert d.installed() == ["b.service"] and d.stops["a.service"] == 1


# --- the wire -------------------------------------------------------------------------
async def _echo_wire() -> Tuple[sim_net.Wire, asyncio.Server, int]:
    """A wire in front of an echo server (standing in for the SSH server)."""
    wire = sim_net.Wire()
    held: Set[asyncio.Future[None]] = set()

    def echo(sock: socket.socket) -> None:
        async def run() -> None:
            reader, writer = await asyncio.open_connection(sock=sock)
            while data := await reader.read(1024):
                writer.write(data)
            writer.close()
        task = asyncio.ensure_future(run())
        held.add(task)
        task.add_done_callback(held.discard)

    server = await sim_net.serve("127.0.0.1", 0, wire, echo)
    return wire, server, server.sockets[0].getsockname()[1]


def run(coro: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(coro(), 30))


def test_a_cut_wire_is_silent_not_closed_and_heals_without_loss() -> None:
    async def go() -> None:
        wire, server, port = await _echo_wire()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"one\n")
        assert await reader.readline() == b"one\n"
        wire.set_cut(True)
        writer.write(b"two\n")
        with pytest.raises(asyncio.TimeoutError):  # nothing comes back, not even EOF
            await asyncio.wait_for(reader.readline(), 0.5)
        assert not reader.at_eof()
        wire.set_cut(False)
        assert await asyncio.wait_for(reader.readline(), 5) == b"two\n"
        writer.close()
        server.close()
    run(go)


def test_a_connection_made_while_cut_hears_nothing() -> None:
    async def go() -> None:
        wire, server, port = await _echo_wire()
        wire.set_cut(True)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # the backlog
        writer.write(b"x\n")
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(reader.readline(), 0.5)
        wire.set_cut(False)
        assert await asyncio.wait_for(reader.readline(), 5) == b"x\n"
        writer.close()
        server.close()
    run(go)


def test_a_slow_wire_delivers_late_and_in_order() -> None:
    async def go() -> None:
        wire, server, port = await _echo_wire()
        wire.delay = 0.3
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        writer.write(b"a\n")
        writer.write(b"b\n")
        assert await reader.readline() == b"a\n"
        assert await reader.readline() == b"b\n"
        assert loop.time() - t0 >= 0.55  # 0.3 s each way
        writer.close()
        server.close()
    run(go)


# --- a machine, as fleetd reaches it --------------------------------------------------
async def _hello(transport: SshTransport, command: str) -> Any:
    channel = await transport.open(command)
    channel.write(protocol.dump(messages.daemon_hello(1.0)))
    await channel.drain()
    answer = protocol.decode(await asyncio.wait_for(channel.readline(), 10))
    channel.close()
    return answer


def _transport(m: Dict[str, Any], known_hosts: Optional[str] = None) -> SshTransport:
    return SshTransport(m["address"], m["port"], m["user"], m["identity"],
                        known_hosts or m["known_hosts"], machine=m["name"])


def test_a_machine_answers_fleetds_transport_with_the_real_agent(tmp_path: Any) -> None:
    async def go() -> None:
        asyncio.get_running_loop().set_task_factory(sim_host.task_factory)
        s = sim.Simulator(str(tmp_path), sim.machine_names("t", 2))
        await s.start()
        listing = s.listing()
        with open(tmp_path / sim_control.MACHINES) as f:
            assert json.load(f) == listing
        one, two = listing
        t = _transport(one)
        hello = await _hello(t, one["agent_command"])
        assert hello["type"] == messages.HELLO and hello["machine_id"]
        assert t.link == "forwarded"  # sshd's stream-local forwarding, as on a host
        # the relay (an agent command fleetd cannot read a socket off) reaches it too
        relayed = await _hello(t, "fleet-agent attach --state-dir "
                                  + s.machines[one["name"]].plan.agent_dir)
        assert relayed["machine_id"] == hello["machine_id"]
        result = await t.run("uname -a", timeout=10)
        assert result.exit_status == sim_host.NOT_HERE and "runs only its agent" in \
            result.stderr
        await t.close()
        # strict host keys: machine two's key is not machine one's
        with pytest.raises(TransportError) as caught:
            await _transport(two, known_hosts=one["known_hosts"]).open(two["agent_command"])
        assert caught.value.kind == "hostkey"
        # kill: the session ends, and nothing answers until revived
        t = _transport(one)
        await t.open(one["agent_command"])
        s.machines[one["name"]].kill()
        with pytest.raises(TransportError):
            await _transport(one).open(one["agent_command"])
        await sim_control.apply(s, {"op": "revive", "machines": [one["name"]]})
        t2 = _transport(one)
        assert (await _hello(t2, one["agent_command"]))["machine_id"] == hello["machine_id"]
        await t2.close()
        await t.close()
        await s.stop()
    run(go)


@pytest.mark.parametrize("request_, error", [
    ({"op": "explode"}, "op: 'explode' is not one of"),
    ({"op": "cut", "machines": ["nope"]}, "no such machine nope"),
    ({"op": "cut"}, "machines: a list"),
    ({"op": "slow", "machines": ["c1"], "delay": float("nan")}, "delay: seconds"),
    ({"op": "fail", "machines": ["c1"], "units": "x"}, "units: a list"),
    (["op"], "a request is"),
])
def test_bad_control_requests_are_refused_naming_the_field(
        tmp_path: Any, request_: Any, error: str) -> None:
    async def go() -> None:
        s = sim.Simulator(str(tmp_path), ["c1"])
        with pytest.raises(sim_control.ControlError, match=error):
            await sim_control.apply(s, request_)
        assert s.machines["c1"].wire.delay == 0
    run(go)


def test_levers_through_the_control_socket(tmp_path: Any) -> None:
    async def go() -> None:
        s = sim.Simulator(str(tmp_path), ["c1", "c2"])
        await s.start()
        c = sim_control.SimControl(str(tmp_path))
        loop = asyncio.get_running_loop()

        def call(*args: Any, **kw: Any) -> Any:
            return loop.run_in_executor(None, lambda: c.lever(*args, **kw))
        await call("cut", ["c1"])
        await call("slow", ["c2"], delay=0.5)
        states = await loop.run_in_executor(None, c.machines)
        assert (states["c1"]["state"], states["c2"]["state"]) == ("cut", "slow")
        s.machines["c2"].driver.start(UnitConfig(), ctx("u.service"))
        failed = await call("fail", ["c1", "c2"], units=["u.service"])
        assert failed["failed"] == ["c2/u.service"]
        with pytest.raises(sim_control.ControlError, match="no such machine c3"):
            await call("heal", ["c3"])
        await s.stop()
    run(go)


def test_names_and_known_hosts_lines() -> None:
    assert sim.machine_names("sim", 3) == ["sim0001", "sim0002", "sim0003"]
    assert sim.machine_names("s", 12000)[-1] == "s12000"
    assert sim.known_hosts_line("127.0.0.1", 2201, "ssh-ed25519 AAAA comment") == \
        "[127.0.0.1]:2201 ssh-ed25519 AAAA\n"


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def test_a_restarted_simulator_listens_where_fleetd_was_told(tmp_path: Any) -> None:
    async def go() -> None:
        s = sim.Simulator(str(tmp_path), ["c1"])
        await s.start()
        port = s.machines["c1"].port
        key = _read(s.machines["c1"].plan.host_key)
        await s.stop()
        again = sim.Simulator(str(tmp_path), ["c1"])
        await again.start()
        assert again.machines["c1"].port == port
        assert _read(again.machines["c1"].plan.host_key) == key
        await again.stop()
    run(go)


def test_bad_arguments_name_the_option(capsys: Any) -> None:
    for argv, said in ((["--dir", "d", "--machines", "0"], "--machines: 0"),
                       (["--dir", "d", "--machines", "1", "--metadata", "x"], "--metadata")):
        with pytest.raises(SystemExit):
            sim.parse_args(argv)
        assert said in capsys.readouterr().err


def test_a_stalled_simulator_loop_is_counted_and_reported(tmp_path: Any) -> None:
    """All of a process's machines fall silent together while its loop is stalled: the
    simulator says so, so that fleetd is not blamed for it."""
    async def go() -> None:
        s = sim.Simulator(str(tmp_path), ["c1"])
        watch = asyncio.ensure_future(sim.watch_stalls(s))
        await asyncio.sleep(0.3)
        time.sleep(sim.STALL_S + 0.3)  # the loop, blocked
        await asyncio.sleep(0.3)
        watch.cancel()
        answer = await sim_control.apply(s, {"op": "machines"})
        assert answer["stalls"] == 1 and answer["worst_stall_s"] > sim.STALL_S
    run(go)
