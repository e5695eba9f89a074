"""Epoch fencing at the real agent (issue 12): its real socket, its real ``fleet-agent
attach`` relay, its state directory on disk, and fleetd's real MachineSession over real
SSH (an SSH server in the test's loop). Two fleetd are played by two attached clients
that say hello as fleetd with different epochs: once the newer one has spoken, the
older one starts and stops nothing on the host - not by a desired set, not after the
agent is killed and started again, not by saying hello again - and its pings no longer
keep the agent from fencing."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any, AsyncIterator, Dict, Iterator, List

import pytest
from agentkit import Attached, clean, kill_agent, spec, until

from fleetd import protocol
from fleetd.daemon.session import BACKOFF_MAX_S, MachineSession
from fleetd.registry.base import MachineRecord
from fleetd.registry.sqlite import SqliteRegistry
from fleetd.testing.waiting import alive

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from inproc_ssh import ssh_server  # the SSH server of the unit tests

MARK = "agent-epoch"
SLEEPER = "[Service]\nExecStart=/bin/sleep 1000\n"
FENCED = ("[Service]\nExecStart=/bin/sleep 1000\nTimeoutStopSec=2s\n"
          "[X-Fleet]\nFenceAfterSec=3s\n")


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[str]:
    d = str(tmp_path / "agent")
    yield d
    clean(d, f"FLEET_UNIT={MARK}".encode())


@pytest.fixture
def clients() -> Iterator[List[Attached]]:
    """Every client a test attaches, closed after it."""
    attached: List[Attached] = []
    yield attached
    for client in attached:
        with contextlib.suppress(Exception):
            client.proc.kill()
            client.proc.wait(5)


def fleetd(state_dir: str, epoch: int, clients: List[Attached]) -> Attached:
    """A client that says hello as fleetd with ``epoch``."""
    client = Attached(state_dir, daemon="fleetd", epoch=epoch)
    clients.append(client)
    return client


def unit(n: int, text: str = SLEEPER) -> Dict[str, Any]:
    return spec(f"{MARK}-{n}.service", text)


def refused_hello(state_dir: str, epoch: int) -> List[Dict[str, Any]]:
    """What the agent answers a fleetd hello with ``epoch`` before it closes the
    connection (the test fails if it does not close it: the timer bounds a hang)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "fleetd.agent", "attach", "--state-dir", state_dir],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    hang = threading.Timer(20, proc.kill)
    hang.start()
    try:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(protocol.encode("hello", daemon="fleetd", heartbeat_s=0.2,
                                         epoch=epoch))
        proc.stdin.flush()  # stdin stays open: the agent, not the client, closes
        answers = [protocol.decode(line) for line in proc.stdout]
        assert proc.wait() == 0, "the agent did not close the connection"
        return answers
    finally:
        hang.cancel()
        with contextlib.suppress(BrokenPipeError):
            assert proc.stdin is not None
            proc.stdin.close()
        proc.wait(5)


def epoch_on_disk(state_dir: str) -> str:
    with open(os.path.join(state_dir, "epoch")) as f:
        return f.read()


def refusal(theirs: int, ours: int) -> Dict[str, Any]:
    return {"v": 1, "type": "error", "epoch": ours,
            "message": f"epoch {theirs} is older than {ours}: a newer fleetd leads this host"}


def test_a_deposed_fleetd_changes_nothing_after_the_new_one_spoke(
        state_dir: str, clients: List[Attached]) -> None:
    a = fleetd(state_dir, 5, clients)
    assert a.hello["epoch"] == 5 and epoch_on_disk(state_dir) == "5\n"
    a.desire(unit(1))
    pid = a.wait_state(f"{MARK}-1.service", "running")["pid"]

    b = fleetd(state_dir, 6, clients)
    assert b.hello["epoch"] == 6 and epoch_on_disk(state_dir) == "6\n"
    assert b.units[f"{MARK}-1.service"]["pid"] == pid

    # A's set would stop unit 1 and start unit 2: refused, nothing of it applied
    a.desire(unit(2))
    assert a.read_until(lambda m: m["type"] == "error") == refusal(5, 6)
    # A may still read: its tail is answered
    a.send("tail", id=1, unit=f"{MARK}-1.service", lines=5)
    reply = a.read_until(lambda m: m["type"] == "reply")
    assert reply["id"] == 1 and "error" not in reply, reply

    # B's set applies (sent after A's refusal was read: the agent took A's first)
    b.desire(unit(1), unit(3))
    b.wait_state(f"{MARK}-3.service", "running")
    assert b.units[f"{MARK}-1.service"]["pid"] == pid and alive(pid)
    assert f"{MARK}-2.service" not in b.units
    assert [u["state"] for u in b.history if u["name"] == f"{MARK}-1.service"] == []

    # kill -9 the agent and start it again: it still knows epoch 6
    kill_agent(state_dir)
    for client in (a, b):
        client.proc.wait(10)  # the relay ends with the agent's socket
    assert refused_hello(state_dir, 5) == [refusal(5, 6)]
    assert refused_hello(state_dir, 4) == [refusal(4, 6)]
    c = fleetd(state_dir, 6, clients)  # the leader itself still gets in
    assert c.hello["epoch"] == 6
    assert c.units[f"{MARK}-1.service"]["pid"] == pid and alive(pid)
    assert f"{MARK}-2.service" not in c.units


def test_an_older_fleetd_or_one_without_an_epoch_is_refused_at_hello(
        state_dir: str, clients: List[Attached]) -> None:
    """An old fleetd (no epoch in its hello: 0) on a host an etcd leader has spoken to;
    a tool's hello (not fleetd's) is not judged by epochs."""
    fleetd(state_dir, 7, clients)
    assert refused_hello(state_dir, 0) == [refusal(0, 7)]
    tool = Attached(state_dir)  # daemon "test", no epoch
    clients.append(tool)
    assert tool.hello["epoch"] == 7 and epoch_on_disk(state_dir) == "7\n"


def test_a_deposed_fleetds_pings_do_not_hold_off_fencing(
        state_dir: str, clients: List[Attached]) -> None:
    """The new leader (epoch 6) says hello and then nothing (cut off from the host): the
    unit with FenceAfterSec=3s is fenced although the old leader (epoch 5) pings all
    the while. Were its pings counted, the new leader would start the unit elsewhere
    while this copy ran."""
    name = f"{MARK}-1.service"
    a = fleetd(state_dir, 5, clients)
    a.desire(unit(1, FENCED))
    pid = a.wait_state(name, "running")["pid"]
    b = fleetd(state_dir, 6, clients)
    stop = threading.Event()

    def ping() -> None:
        seq = 0
        while not stop.wait(0.05):
            seq += 1
            with contextlib.suppress(BrokenPipeError, ValueError):
                a.send("ping", seq=seq)

    pinger = threading.Thread(target=ping, daemon=True)
    pinger.start()
    try:
        stopped = b.wait_state(name, "stopped", timeout=20)
    finally:
        stop.set()
        pinger.join(5)
    assert (stopped["error"] or "").startswith(protocol.FENCED), stopped
    assert not alive(pid)


# --- fleetd's session, over SSH, to the real agent -----------------------------------------


@contextlib.asynccontextmanager
async def session(tmp_path: Path, state_dir: str, epoch: int
                  ) -> AsyncIterator[MachineSession]:
    """A MachineSession with ``epoch`` over SSH to the real agent of ``state_dir``."""
    async with ssh_server(str(tmp_path)) as transport:
        registry = SqliteRegistry(str(tmp_path / "registry.db"))
        await registry.add_machine(MachineRecord(
            name="h1", address="127.0.0.1", port=22, user="root", identity=None,
            known_hosts=None, metadata={},
            agent_command=f"{sys.executable} -m fleetd.agent attach --state-dir {state_dir}"))
        machine = registry.get_machine("h1")
        assert machine is not None
        s = MachineSession(machine, registry, lambda m: transport, lambda relevant: None,
                           heartbeat_s=0.5, epoch=epoch)
        s.start()
        try:
            yield s
        finally:
            await s.stop()
            await registry.close()


def machine_error(s: MachineSession) -> str:
    record = s.registry.get_machine("h1")
    assert record is not None
    return f"{record.state} {record.error or ''}".strip()


def test_fleetds_session_shows_the_agents_refusal_and_backs_off(
        tmp_path: Path, state_dir: str, clients: List[Attached]) -> None:
    """A session whose desired set the agent refuses (a newer fleetd said hello since)
    ends with the refusal as the machine's error and waits the longest backoff before
    it tries again; the unit it wanted stopped runs on."""
    async def scenario() -> None:
        async with session(tmp_path, state_dir, 5) as s:
            await until("the session to connect", lambda: s.connected)
            s.push([unit(1)])
            await until("unit 1 to run", lambda: any(
                o.unit == f"{MARK}-1.service" and o.state == "running"
                for o in s.registry.list_observed()))
            pid = next(o.pid for o in s.registry.list_observed())
            fleetd(state_dir, 7, clients)  # blocking, but brief: the new leader's hello
            s.push([])  # would stop unit 1
            await until("the refusal", lambda: not s.connected and s.retry_in is not None)
            assert machine_error(s) == ("error refused by the agent: a newer fleetd "
                                        "(epoch 7) leads this host")
            assert s.retry_in == BACKOFF_MAX_S
            assert pid is not None and alive(pid)
            assert clients[-1].units[f"{MARK}-1.service"]["pid"] == pid

    asyncio.run(scenario())
