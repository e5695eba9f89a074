"""Issue 10 against the real agent: its real socket and ``fleet-agent attach`` relay,
and fleetd's real MachineSession over real SSH (asyncssh, to an SSH server in the
test's loop that runs the real attach command). Hostile or oversized messages between
the two never take a machine offline, never wedge the agent, and never make it write
outside its state directory; a fuzzer then throws generated messages at the agent's
socket and checks after each that it still answers correctly."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Dict, Iterator, List, Optional, Set, Tuple

import pytest
from agentkit import Attached, agent_pid, clean, kill_agent, spec, until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from labkit import Fleet, alive, wait_for

from fleetd import protocol
from fleetd.agent import specs
from fleetd.daemon.delivery import SPEC_MAX
from fleetd.daemon.session import MachineSession
from fleetd.lab.netns import Lab
from fleetd.registry.base import MachineRecord, ObservedRecord
from fleetd.registry.sqlite import SqliteRegistry

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from inproc_ssh import ssh_server  # the SSH server of the unit tests

MARK = "agent-hostile"
SLEEPER = "[Service]\nExecStart=/bin/sleep 1000\n"


@pytest.fixture
def state_dir(tmp_path: Path) -> Iterator[str]:
    d = str(tmp_path / "agent")
    os.makedirs(os.path.join(d, "logs"))
    with open(os.path.join(d, "logs", f"{MARK}.service.log"), "w") as f:
        f.write("line 0\nline 1\nline 2\n")  # what assert_agent_answers' tail reads
    yield d
    clean(d, f"FLEET_UNIT={MARK}".encode())


def unit(name: str = f"{MARK}.service", text: str = SLEEPER) -> Dict[str, Any]:
    return json.loads(json.dumps(spec(name, text)))  # as the wire carries it


def big_log(state_dir: str, name: str, lines: int, width: int) -> List[str]:
    """A unit's log as the agent keeps it, written before the agent starts."""
    content = [f"{i:06d} " + "x" * (width - 7) for i in range(lines)]
    with open(os.path.join(state_dir, "logs", name + ".log"), "w") as f:
        f.write("\n".join(content) + "\n")
    return content


# --- fleetd's session, over SSH, to the real agent -----------------------------------------


class Session:
    def __init__(self, session: MachineSession, registry: SqliteRegistry) -> None:
        self.session = session
        self.registry = registry
        self.connects = 0

    def observed(self) -> Dict[str, ObservedRecord]:
        return {o.unit: o for o in self.registry.list_observed()}

    def machine_state(self) -> str:
        record = self.registry.get_machine("h1")
        assert record is not None
        return f"{record.state} {record.error or ''}".strip()


@pytest.fixture
def session_to(tmp_path: Path, state_dir: str) -> Callable[[], Any]:
    """An async context: a MachineSession connected over SSH to the real agent of
    ``state_dir`` (its ``connects`` counts the channels it opened)."""
    @contextlib.asynccontextmanager
    async def connect(heartbeat_s: float = 0.5, wait: bool = True) -> AsyncIterator[Session]:
        async with ssh_server(str(tmp_path)) as transport:
            registry = SqliteRegistry(str(tmp_path / "registry.db"))
            await registry.add_machine(MachineRecord(
                name="h1", address="127.0.0.1", port=22, user="root", identity=None,
                known_hosts=None, metadata={},
                agent_command=f"{sys.executable} -m fleetd.agent attach "
                              f"--state-dir {state_dir}"))
            machine = registry.get_machine("h1")
            assert machine is not None
            session = MachineSession(machine, registry, lambda m: transport,
                                     lambda relevant: None, heartbeat_s=heartbeat_s)
            handle = Session(session, registry)
            opened = transport.open

            async def counting_open(command: str) -> Any:
                handle.connects += 1
                return await opened(command)

            transport.open = counting_open  # type: ignore[method-assign]
            session.start()
            try:
                if wait:
                    await until("the session to connect", lambda: session.connected)
                yield handle
            finally:
                await session.stop()
                await registry.close()
    return connect


def test_a_journal_larger_than_a_message_reaches_fleetd_whole(
        session_to: Callable[[], Any], state_dir: str) -> None:
    """``journal -n 10000`` of a 6 MB log: today one 6 MB reply line, which asyncssh
    hands over torn at its 2 MiB window - "agent spoke nonsense", the session down. Now
    the reply comes in parts under protocol.MAX_LINE and fleetd joins them."""
    expected = big_log(state_dir, f"{MARK}.service", 10000, 600)
    assert sum(len(line) + 1 for line in expected) > protocol.MAX_LINE

    async def scenario() -> None:
        async with session_to() as s:
            reply = await s.session.request("tail", timeout=60, unit=f"{MARK}.service",
                                            lines=10000)
            assert "error" not in reply
            assert reply["lines"] == expected
            assert s.session.connected and s.connects == 1
            assert s.machine_state() == "up"

    asyncio.run(scenario())


def test_a_unit_over_the_message_limit_is_not_sent_and_the_machine_stays_up(
        session_to: Callable[[], Any], state_dir: str) -> None:
    """A 17 MiB Environment=: today the desired set is one line the agent cannot read,
    it drops the connection, and every reconnect sends the same line - the machine is
    offline, and none of its units is delivered, until that unit is destroyed. Now that
    unit is reported failed, not deliverable, and the rest of the set goes."""
    small = unit()
    huge = unit(f"{MARK}-huge.service")
    huge["config"]["environment"] = {"BIG": "x" * (17 * 1024 * 1024)}
    # each fits a message, together they do not: the set goes in parts, taken whole
    # (1.5 MiB of environment each, in pieces execve takes: 128 KiB a string at most)
    large = [unit(f"{MARK}-large{i}.service") for i in range(3)]
    for u in large:
        u["config"]["environment"] = {f"LARGE{k}": "y" * 100_000 for k in range(16)}
    assert sum(map(protocol.item_size, large)) > protocol.MAX_LINE
    delivered = [small, *large]
    s: Any = None

    def running() -> bool:
        seen = s.observed()
        return all(u["name"] in seen and seen[u["name"]].state == protocol.RUNNING
                   for u in delivered) and huge["name"] in seen

    async def scenario() -> None:
        nonlocal s
        async with session_to() as s:
            s.session.push([small, huge, *large])
            await until("the others running and the huge one refused", running)
            refused = s.observed()[huge["name"]]
            assert refused.state == protocol.FAILED
            assert refused.error is not None and "not deliverable to machine h1" in \
                refused.error and f"over the {SPEC_MAX}-byte limit" in refused.error
            await asyncio.sleep(1.5)  # three heartbeats: a torn session would show
            assert s.session.connected and s.connects == 1
            assert s.machine_state() == "up"

    asyncio.run(scenario())


def test_an_agent_that_refuses_the_hello_says_why_in_the_machines_error(
        session_to: Callable[[], Any]) -> None:
    """fleetd's heartbeat is the agent's too: one out of the agent's range is refused,
    and the machine's error says so (not a busy loop on the host)."""
    async def scenario() -> None:
        async with session_to(heartbeat_s=0.01, wait=False) as s:
            await until("the machine in error", lambda: "refused" in s.machine_state())
            assert s.machine_state() == (
                "error agent spoke nonsense: the agent refused: hello: heartbeat_s: want "
                "a number from 0.05 to 3600, not 0.01")

    asyncio.run(scenario())


# --- the agent refuses what it cannot take ------------------------------------------------
def test_bad_specs_are_refused_by_name_and_the_rest_of_the_set_runs(
        state_dir: str, tmp_path: Path) -> None:
    """``../../x`` would have been written as units/../../x.json, outside the state
    directory; a spec without ``hash`` raised in every converge and every snapshot."""
    a = Attached(state_dir)
    good = unit()
    no_hash = unit(f"{MARK}-nohash.service")
    del no_hash["hash"]
    escape = {**unit(), "name": "../../x"}
    typo = {**unit(f"{MARK}-typo.service"), "generation": "1"}
    a.desire(good, no_hash, escape, typo)
    error = a.read_until(lambda m: m["type"] == "error")["message"]
    assert f"unit {MARK}-nohash.service: hash: want a hex string, not None" in error
    assert "name: invalid unit name '../../x'" in error
    assert f"unit {MARK}-typo.service: generation: want a whole number" in error
    a.wait_state(good["name"], "running")
    assert set(a.units) == {good["name"]}
    assert not list(tmp_path.glob("x*")) and not (tmp_path / "x.json").exists()
    a.close()
    b = Attached(state_dir)  # a second client gets a snapshot: nothing wedged
    assert set(b.units) == {good["name"]}
    b.close()


def test_a_spec_without_hash_in_desired_json_does_not_wedge_a_restart(
        state_dir: str) -> None:
    """desired.json is read at every start: a spec there that the agent cannot run is
    left out (and logged), the others run, and every client gets its snapshot."""
    good = unit()
    bad = unit(f"{MARK}-nohash.service")
    del bad["hash"]
    with open(os.path.join(state_dir, "desired.json"), "w") as f:
        json.dump([bad, good, "nonsense"], f)
    a = Attached(state_dir)
    a.wait_state(good["name"], "running")
    assert set(a.units) == {good["name"]}
    with open(os.path.join(state_dir, "agent.log")) as f:
        log = f.read()
    assert f"left out: unit {MARK}-nohash.service: hash" in log
    a.close()


def test_a_unit_record_with_counts_that_are_no_numbers_does_not_stop_the_agent(
        state_dir: str) -> None:
    """A unit's record is read at every start: ``"restarts": "x"`` (another version, a
    damaged disk) made int() raise and the agent died at each start. The program is still
    adopted, same pid, its counts read as 0."""
    good = unit()
    a = Attached(state_dir)
    a.send("desired", units=[good])
    pid = a.wait_state(good["name"], "running")["pid"]
    a.close()
    kill_agent(state_dir)
    path = os.path.join(state_dir, "units", good["name"] + ".json")
    with open(path) as f:
        record = json.load(f)
    record.update(restarts="x", streak=[1])
    with open(path, "w") as f:
        json.dump(record, f)
    b = Attached(state_dir)
    assert b.wait_state(good["name"], "running")["pid"] == pid
    assert b.units[good["name"]]["restarts"] == 0
    b.close()


@pytest.mark.parametrize("heartbeat", [0, -1, "NaN", "true", "1e9"])
def test_a_hello_with_a_heartbeat_out_of_range_is_refused(state_dir: str,
                                                          heartbeat: str) -> None:
    """``heartbeat_s: 0`` was a sleep(0) loop: the agent spun a core for every such
    client. Now the hello is refused, naming the field, and the connection closes."""
    Attached(state_dir).close()  # the agent runs
    with connect(state_dir) as c:
        c.sendall(b'{"v":1,"type":"hello","daemon":"test","heartbeat_s":%s}\n'
                  % str(heartbeat).encode())
        answers = read_all(c)
    assert [m["type"] for m in answers] == ["error"]
    assert "heartbeat_s: want a number from 0.05 to 3600" in answers[0]["message"]
    assert_agent_answers(state_dir)


@pytest.mark.parametrize(("request_fields", "says"), [
    ({"id": 5, "unit": "../../agent.log"}, "invalid unit name"),
    ({"id": 5, "unit": ".hidden.service"}, "invalid unit name"),
    ({"id": 5, "unit": "a.service", "lines": "all"}, "lines: want a whole number"),
    ({"id": 5, "unit": "a.service", "lines": 10 ** 12}, "lines: want a whole number"),
])
def test_log_requests_with_bad_fields_get_an_error_reply(
        state_dir: str, request_fields: Dict[str, Any], says: str) -> None:
    a = Attached(state_dir)
    for kind in ("tail", "follow"):
        a.send(kind, **request_fields)
        reply = a.read_until(lambda m: m["type"] == "reply")
        assert reply["id"] == 5 and says in reply["error"], reply
    a.send("unfollow", id="x")
    assert "id: want a whole number" in a.read_until(lambda m: m["type"] == "error")[
        "message"]
    a.close()
    assert_agent_answers(state_dir)


def test_a_tail_of_one_huge_log_line_comes_in_pieces_under_the_limit(state_dir: str) -> None:
    """A program that writes 10 MB without a newline: its tail is that line in pieces
    (as ``follow`` shows it), each reply under protocol.MAX_LINE, and the agent goes on."""
    with open(os.path.join(state_dir, "logs", f"{MARK}-huge.service.log"), "wb") as f:
        f.write(b"y" * (10 * 1024 * 1024) + b"\n")
    a = Attached(state_dir)
    a.send("tail", id=9, unit=f"{MARK}-huge.service", lines=100)
    assert a.proc.stdout is not None
    lines: List[str] = []
    while True:
        raw = a.proc.stdout.readline()
        assert len(raw) <= protocol.MAX_LINE
        msg = protocol.decode(raw)
        if msg["type"] == "reply":
            lines += msg["lines"]
            if not protocol.more(msg):
                break
    assert len(lines) == 100 and all(line == "y" * 65536 for line in lines)
    a.send("tail", id=10, unit=f"{MARK}.service", lines=1)
    assert a.read_until(lambda m: m["type"] == "reply")["lines"] == ["line 2"]
    a.close()


def test_a_line_over_the_limit_is_refused_and_the_agent_carries_on(state_dir: str) -> None:
    """The agent reads at most protocol.MAX_LINE of a line: past it, an error naming the
    limit and the connection ends; the agent and its other clients carry on."""
    a = Attached(state_dir)
    answers = exchange(state_dir, [OVER_LIMIT])
    assert any(f"over {protocol.MAX_LINE} bytes" in m.get("message", "")
               for m in answers), answers
    a.send("tail", id=1, unit=f"{MARK}.service", lines=1)
    assert a.read_until(lambda m: m["type"] == "reply")["id"] == 1
    a.close()


# --- the fuzzer ---------------------------------------------------------------------------
def connect(state_dir: str) -> socket.socket:
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    c.settimeout(10)
    c.connect(os.path.join(state_dir, "agent.sock"))
    return c


def read_all(c: socket.socket) -> List[Dict[str, Any]]:
    """Every message until the agent closes the connection (after our EOF)."""
    with contextlib.suppress(OSError):
        c.shutdown(socket.SHUT_WR)
    data = b""
    with contextlib.suppress(ConnectionResetError):  # it closed with our bytes unread
        while chunk := c.recv(1 << 20):
            data += chunk
    return [json.loads(line) for line in data.splitlines()]


def exchange(state_dir: str, lines: List[bytes]) -> List[Dict[str, Any]]:
    """A hello, then ``lines``, then a valid tail: everything the agent answered (it
    may close the connection early, on a line it refuses)."""
    with connect(state_dir) as c:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            c.sendall(protocol.encode("hello", daemon="fuzz", heartbeat_s=60))
            for line in lines:
                c.sendall(line)
            c.sendall(protocol.encode("tail", id=424242, unit=f"{MARK}.service", lines=2))
        return read_all(c)


def runnable(lines: List[bytes]) -> Set[Tuple[str, str]]:
    """(name, hash) of each unit spec in ``lines``' desired sets that the agent may run:
    what check_spec accepts. A status lists nothing else."""
    found = set()
    for line in lines:
        try:
            msg = json.loads(line)
        except (ValueError, RecursionError):  # not JSON, or too deep for Python's parser
            continue
        if not isinstance(msg, dict) or msg.get("type") != "desired":
            continue
        for u in msg.get("units") if isinstance(msg.get("units"), list) else []:
            try:
                good = specs.check_spec(u)
            except specs.SpecError:
                continue
            found.add((good["name"], good["hash"]))
    return found


def assert_agent_answers(state_dir: str, pid: Optional[int] = None,
                         sent: Optional[Set[Tuple[str, str]]] = None) -> None:
    """A fresh client gets hello, a status snapshot with the known unit, and a correct
    tail; the agent is the same process."""
    answers = exchange(state_dir, [])
    kinds = [m["type"] for m in answers]
    assert kinds[:2] == ["hello", "status"], answers
    for status in answers[1]["units"]:  # only what it may run: never a refused spec
        assert (status["name"], status["hash"]) in (sent or set()), (status, sent)
    tail = [m for m in answers if m["type"] == "reply" and m.get("id") == 424242]
    assert len(tail) == 1 and tail[0]["lines"] == ["line 1", "line 2"], answers
    if pid is not None:
        assert agent_pid(state_dir) == pid and alive(pid)


OVER_LIMIT = b'{"v":1,"type":"ping","x":"' + b"y" * protocol.MAX_LINE + b'"}\n'
JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4),
    max_leaves=12)
NAMES = st.sampled_from([f"{MARK}.service", "../../x", ".hidden.service", "-x.service",
                         "a/b.service", "a" * 300 + ".service", "web@.service", "", "x"])
KINDS = st.sampled_from(["hello", "desired", "tail", "follow", "unfollow", "ping", "bye",
                         "status", "nonsense", ""])


@st.composite
def messages(draw: st.DrawFn) -> bytes:
    """One line: mostly well-formed messages with hostile fields, sometimes not JSON,
    deep JSON, a wrong version, or a line far over the limit."""
    shape = draw(st.integers(0, 19))
    if shape == 3:
        return OVER_LIMIT
    if shape == 0:
        return draw(st.binary(max_size=200)).replace(b"\n", b" ") + b"\n"
    if shape == 1:
        depth = draw(st.integers(1000, 100000))
        return b'{"v":1,"type":"tail","id":' + b"[" * depth + b"]" * depth + b"}\n"
    if shape == 2:
        return json.dumps({"v": draw(JSON), "type": draw(KINDS)}).encode() + b"\n"
    fields: Dict[str, Any] = {"v": 1, "type": draw(KINDS)}
    for key in draw(st.lists(st.sampled_from(["id", "unit", "lines", "units", "heartbeat_s",
                                              "daemon", "more", "seq"]), max_size=5)):
        fields[key] = draw(JSON | NAMES)
    if fields["type"] == "desired" and draw(st.booleans()):
        good = unit()
        field = draw(st.sampled_from(["name", "hash", "want", "driver", "generation",
                                      "config"]))
        fields["units"] = [{**good, field: draw(JSON | NAMES)}]
    return json.dumps(fields, allow_nan=True).encode() + b"\n"


def test_fuzzed_messages_leave_the_agent_alive_and_correct(state_dir: str) -> None:
    """Hypothesis-generated lines to the real agent's socket, a few at a time; after
    each batch the agent is the same process and answers hello, status and a tail
    correctly. (A desired set in a batch replaces the one set: the known unit is put
    back after each.)"""
    a = Attached(state_dir)
    a.close()
    pid = agent_pid(state_dir)
    sent: Set[Tuple[str, str]] = set()

    @settings(max_examples=200, deadline=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    @given(st.lists(messages(), min_size=1, max_size=4))
    def one(lines: List[bytes]) -> None:
        sent.update(runnable(lines))  # a set stays until another replaces it: any batch's
        exchange(state_dir, lines)
        assert_agent_answers(state_dir, pid, sent)

    one()
    with open(os.path.join(state_dir, "agent.log")) as f:
        log = f.read()
    assert "Traceback" not in log and "internal error" not in log, log[-3000:]


# --- the whole stack: fleetctl, fleetd, sshd, the agent -----------------------------------
LOUD = """\
[Service]
ExecStart=/usr/bin/python3 -u -c "[print(str(i).zfill(6) + ' ' + 'x' * 600) for i in \
range(10000)]; __import__('time').sleep(100000)"
"""


def test_fleetctl_journal_of_a_log_larger_than_a_message(fleet: Fleet, lab: Lab,
                                                          tmp_path: Path) -> None:
    """The issue's case through every real part: ``journal -n 10000`` of a 6 MB log
    answers all 10000 lines, and the machine stays up (no reconnect)."""
    h = lab.hosts()[0]
    fleet.add(h)
    wait_for("the machine up", lambda: fleet.machines()[h.name]["state"] == "up", 20)
    path = tmp_path / f"{MARK}-loud.service"
    path.write_text(LOUD)
    fleet.ctl("start", str(path))
    wait_for("the last line logged", lambda: "009999 " in fleet.ctl(
        "journal", "-n", "1", path.name).stdout, 30)
    since = fleet.machines()[h.name]["last_seen"]
    out = fleet.ctl("journal", "-n", "10000", path.name).stdout.splitlines()
    assert len(out) == 10000
    assert out[0] == "000000 " + "x" * 600 and out[-1] == "009999 " + "x" * 600
    machine = fleet.machines()[h.name]
    assert machine["state"] == "up" and machine["error"] is None
    assert machine["last_seen"] >= since
    with open(fleet.log) as f:
        assert "spoke nonsense" not in f.read()
