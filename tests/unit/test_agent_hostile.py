"""Issue 10 on the agent's side, as pure logic and single drivers: what the agent takes
from a client (fleetd.agent.specs), messages in parts under the one size limit
(protocol.chunks), files read for a unit (EnvironmentFile=, a Java's release file),
``systemctl`` argument lists and JavaHome= probing as the unit's User=. The real agent
and the real session are in tests/integration/test_agent_wire_hostile.py."""

from __future__ import annotations

import asyncio
import json
import os
import pwd
import re
import shutil
import stat
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

from fleetd import protocol
from fleetd.agent import specs
from fleetd.daemon.session import MachineSession
from fleetd.drivers import envfile, files, java
from fleetd.drivers.base import Handle, StartContext
from fleetd.drivers.systemd import SystemdDriver
from fleetd.registry.base import MachineRecord
from fleetd.registry.sqlite import SqliteRegistry
from fleetd.testing.registry import at_once
from fleetd.testing.transport import FakeChannel, FakeTransport
from fleetd.units.model import load

ROOT = Path(__file__).resolve().parents[2]
SLEEPER = "[Service]\nExecStart=/bin/sleep 1000\nEnvironment=A=1\nUser=nobody\n"


def wire(spec: Dict[str, Any]) -> Dict[str, Any]:
    """``spec`` as the agent receives it: through JSON (tuples become lists)."""
    return dict(json.loads(json.dumps(spec)))


def good_spec(**changes: Any) -> Dict[str, Any]:
    spec = wire(load("ok.service", SLEEPER).spec(protocol.WANT_RUNNING))
    spec.update(changes)
    return spec


# --- specs --------------------------------------------------------------------------------
def test_specs_of_real_unit_files_pass() -> None:
    for path in sorted((ROOT / "units").glob("*.service")):
        name = path.name.replace("@.", "@1.")
        spec = wire(load(name, path.read_text()).spec(protocol.WANT_RUNNING, 3))
        assert specs.check_spec(spec) is spec


@pytest.mark.parametrize(("change", "says"), [
    ({"name": "../../x"}, "invalid unit name '../../x'"),
    ({"name": "../../x.service"}, "invalid unit name"),
    ({"name": ".hidden.service"}, "invalid unit name"),
    ({"name": "a" * 250 + ".service"}, "(258 characters)"),
    ({"name": ["a.service"]}, "a unit name is a string, not list"),
    ({"name": "web@.service"}, "a template is never run itself"),
    ({"hash": None}, "hash: want a hex string, not None"),
    ({"hash": "../x"}, "hash: want a hex string"),
    ({"hash": 7}, "hash: want a hex string, not 7"),
    ({"want": "launched"}, "want: want 'running' or 'stopped', not 'launched'"),
    ({"driver": "../../bin/sh"}, "driver: want one of exec, java, systemd"),
    ({"generation": True}, "generation: want a whole number"),
    ({"generation": "1"}, "generation: want a whole number"),
    ({"generation": -1}, "generation: want a whole number from 0"),
    ({"generation": 1.5}, "generation: want a whole number"),
    ({"config": []}, "config: want an object, not list"),
    # found by the agent's fuzz test: an exec unit with nothing to run was kept, and its
    # start was an internal error in the agent
    ({"config": {}}, "config: commands: an exec unit runs at least one ExecStart="),
    ({"config": {"commands": []}}, "an exec unit runs at least one ExecStart="),
])
def test_a_bad_spec_field_is_refused_naming_it(change: Dict[str, Any], says: str) -> None:
    with pytest.raises(specs.SpecError, match=re.escape(says)):
        specs.check_spec(good_spec(**change))


def test_a_spec_without_hash_is_refused() -> None:
    spec = good_spec()
    del spec["hash"]
    with pytest.raises(specs.SpecError, match=re.escape("unit ok.service: hash")):
        specs.check_spec(spec)


@pytest.mark.parametrize(("field", "value", "says"), [
    ("commands", "rm -rf /", "config.commands: want a list, not str"),
    ("commands", [{"words": "x"}], "config.commands[0].words: want a list"),
    ("commands", [{"argv0_given": True}], "config.commands[0]: no 'words'"),
    ("environment", {"A": 1}, "config.environment.A: want a string, not int"),
    ("environment_files", "/etc/x", "config.environment_files: want a list"),
    ("user", 0, "config.user: want a string, not int"),
    ("kill_signal", 0, "config.kill_signal: want a whole number from 1 to 64"),
    ("kill_signal", float("nan"), "config.kill_signal: want a whole number"),
    ("timeout_stop_s", float("nan"), "config.timeout_stop_s: want a number"),
    ("timeout_stop_s", -1, "config.timeout_stop_s: want a number from 0"),
    ("restart_s", float("inf"), "config.restart_s: want a number"),
    ("start_limit_burst", True, "config.start_limit_burst: want a whole number"),
    ("limits", {"memory_max": "1G"}, "config.limits.memory_max: want a whole number"),
    ("limits", {"nofile": [1, "x"]}, "config.limits.nofile[1]: want a whole number"),
    ("check", {"type": "tcp", "port": 70000}, "config.check.port: want a whole number"),
    ("java", {"java_home": 3}, "config.java.java_home: want a string"),
    ("fence_after_s", "10", "config.fence_after_s: want a number"),
])
def test_config_fields_have_the_types_the_drivers_read(field: str, value: Any,
                                                       says: str) -> None:
    spec = good_spec()
    spec["config"] = {**spec["config"], field: value}
    with pytest.raises(specs.SpecError, match=re.escape(f"unit ok.service: {says}")):
        specs.check_spec(spec)


def test_a_set_keeps_its_good_specs_and_says_why_each_other_went() -> None:
    good, refused = specs.check_specs([good_spec(), {"name": "../../x"}, 3, good_spec()])
    assert [s["name"] for s in good] == ["ok.service"]
    assert len(refused) == 3
    assert "invalid unit name '../../x'" in refused[0]
    assert "a unit spec is an object, not int" in refused[1]
    assert "given twice" in refused[2]


@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf"), True, "1", 1e9])
def test_hello_heartbeat_out_of_range_is_refused(value: Any) -> None:
    with pytest.raises(specs.SpecError, match=re.escape(
            "hello: heartbeat_s: want a number from 0.05 to 3600")):
        specs.heartbeat({"type": "hello", "heartbeat_s": value})


@pytest.mark.parametrize(("msg", "says"), [
    ({"id": 1, "unit": "../../etc/passwd"}, "tail: unit: invalid unit name"),
    ({"id": 1, "unit": ".hidden.service"}, "tail: unit: invalid unit name"),
    ({"id": 1, "unit": "a.service", "lines": "10"}, "tail: lines: want a whole number"),
    ({"id": 1, "unit": "a.service", "lines": 10 ** 9}, "tail: lines: want a whole number"),
    ({"id": "x", "unit": "a.service"}, "tail: id: want a whole number"),
    ({"id": True, "unit": "a.service"}, "tail: id: want a whole number"),
])
def test_log_requests_are_checked(msg: Dict[str, Any], says: str) -> None:
    with pytest.raises(specs.SpecError, match=re.escape(says)):
        specs.log_request({"type": "tail", **msg})


# --- messages in parts --------------------------------------------------------------------
def test_chunks_keep_every_line_under_the_limit_and_the_items_in_order() -> None:
    items = [f"{i:05d}" + "x" * 1000 for i in range(300)]
    lines = protocol.chunks("reply", "lines", items, limit=20000, id=7)
    assert len(lines) > 1
    assert all(len(line) <= 20000 for line in lines)
    msgs = [protocol.decode(line) for line in lines]
    assert [protocol.more(m) for m in msgs] == [True] * (len(msgs) - 1) + [False]
    assert all(m["id"] == 7 for m in msgs)
    assert [x for m in msgs for x in m["lines"]] == items


def test_chunks_of_nothing_is_one_message() -> None:
    (line,) = protocol.chunks("log", "lines", [], id=1)
    assert protocol.decode(line)["lines"] == [] and not protocol.more(protocol.decode(line))


def test_an_item_larger_than_a_message_is_named() -> None:
    with pytest.raises(protocol.TooLarge, match="desired item 1 is"):
        protocol.chunks("desired", "units", ["a", "x" * 5000], limit=4096)


# --- files read for a unit ----------------------------------------------------------------
def _in_thread(call: Any, unblock: Any) -> Any:
    """``call()`` on a thread; if it is still running after 5 s (blocked: the bug),
    ``unblock()`` frees it and the test fails."""
    result: List[Any] = []

    def run() -> None:
        try:
            result.append(call())
        except (OSError, envfile.EnvironmentFileError) as exc:  # handed back to the test
            result.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(5)
    if thread.is_alive():
        unblock()
        thread.join(5)
        pytest.fail("reading the file blocked")
    return result[0]


def _open_writer(path: str) -> None:
    os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))


def test_an_environment_file_that_is_a_fifo_fails_at_once_naming_it(tmp_path: Path) -> None:
    fifo = str(tmp_path / "env")
    os.mkfifo(fifo)
    got = _in_thread(lambda: envfile.load([fifo]), lambda: _open_writer(fifo))
    assert isinstance(got, envfile.EnvironmentFileError)
    assert str(got) == f"EnvironmentFile={fifo}: not a regular file (a FIFO)"
    assert envfile.load(["-" + fifo]) == {}  # optional: skipped, as unreadable ones are


def test_an_environment_file_that_is_a_device_is_refused() -> None:
    with pytest.raises(envfile.EnvironmentFileError,
                       match="EnvironmentFile=/dev/zero: not a regular file "
                             r"\(a character device\)"):
        envfile.load(["/dev/zero"])


def test_an_environment_file_is_read_up_to_a_bound(tmp_path: Path) -> None:
    big = tmp_path / "big.env"
    big.write_bytes(b"A=" + b"x" * files.MAX_BYTES + b"\n")
    with pytest.raises(envfile.EnvironmentFileError,
                       match=f"EnvironmentFile={big}: larger than {files.MAX_BYTES} bytes"):
        envfile.load([str(big)])
    fits = tmp_path / "fits.env"
    fits.write_bytes(b"A=" + b"x" * (files.MAX_BYTES - 3) + b"\n")
    assert len(envfile.load([str(fits)])["A"]) == files.MAX_BYTES - 3


def test_a_release_file_that_is_a_fifo_does_not_block(tmp_path: Path) -> None:
    home = tmp_path / "jdk"
    (home / "bin").mkdir(parents=True)
    (home / "bin" / "java").write_text("#!/bin/sh\necho 'version \"17.0.2\"'\n")
    (home / "bin" / "java").chmod(0o755)
    os.mkfifo(home / "release")
    got = _in_thread(lambda: java.inspect_home(str(home)),
                     lambda: _open_writer(str(home / "release")))
    assert isinstance(got, java.JavaInstall) and got.version == "17.0.2"  # by probing


# --- systemctl ----------------------------------------------------------------------------
FAKE_SYSTEMCTL = """#!{python}
import json, sys
with open({log!r}, "a") as f:
    f.write(json.dumps(sys.argv[1:]) + "\\n")
args = sys.argv[1:]
if args[:1] == ["show"]:
    names = args[args.index("--") + 1:] if "--" in args else []
    print("\\n\\n".join("Id=%s\\nLoadState=loaded\\nActiveState=inactive\\nSubState=dead\\n"
                        "MainPID=0\\nResult=success" % n for n in names))
"""


def test_systemctl_gets_double_dash_before_every_unit_name(tmp_path: Path) -> None:
    log = tmp_path / "calls"
    fake = tmp_path / "systemctl"
    fake.write_text(FAKE_SYSTEMCTL.format(python=sys.executable, log=str(log)))
    fake.chmod(0o755)
    unit_dir = tmp_path / "run"
    unit_dir.mkdir()
    sd = SystemdDriver(unit_dir=str(unit_dir), systemctl=str(fake))
    ctx = StartContext(unit="a.service", machine_id="m", log_path="/dev/null",
                       invocation_id="i")
    sd.start({"unit_text": "[Service]\nExecStart=/bin/true\n", "type": "oneshot"}, ctx)
    sd.stop("a.service")
    sd.forget("a.service")
    sd.signal(Handle("systemd", 1, 0.0, 0.0, "i", unit="a.service"), 15)
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    named = [c for c in calls if "a.service" in c]
    assert {c[0] for c in named} >= {"start", "stop", "reset-failed", "show", "kill"}
    for call in named:
        assert "--" in call and call.index("--") < call.index("a.service"), call


# --- JavaHome= as the unit's User= --------------------------------------------------------
@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A directory another user can reach (pytest's tmp_path is root's alone)."""
    d = Path(tempfile.mkdtemp(prefix="fleetd-java-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d)


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_java_home_is_probed_as_the_units_user(shared_dir: Path) -> None:
    """A user's JavaHome= holds a ``java`` of the user's making: the agent runs it (to ask
    its version) as the unit's User=, never as root, and reads its release file as that
    user too (root's 0600 file there is not read)."""
    nobody = pwd.getpwnam("nobody")
    home = shared_dir / "jdk"
    (home / "bin").mkdir(parents=True)
    out = shared_dir / "ran-as"
    out.touch()
    out.chmod(0o666)
    (home / "bin" / "java").write_text(
        f"#!/bin/sh\nid -u >> {out}\necho 'openjdk version \"17.0.9\"'\n")
    (home / "bin" / "java").chmod(0o755)
    (home / "release").write_text('JAVA_VERSION="99"\n')
    (home / "release").chmod(0o600)  # root's: nobody cannot read it
    config = {"user": "nobody", "java": {"java_home": str(home), "jar": None,
                                         "main_class": "M", "class_path": ["/x"]}}
    cfg = java.JavaDriver().exec_config(config)
    assert cfg["environment"]["JAVA_HOME"] == str(home)
    assert out.read_text().split() == [str(nobody.pw_uid)]
    # readable by the user: the release file answers and nothing is run
    (home / "release").chmod(0o644)
    assert java.choose_java(config["java"], creds=java.identity.resolve("nobody", None)
                            ).version == "99"
    assert out.read_text().split() == [str(nobody.pw_uid)]
    assert stat.S_IMODE(os.stat(home / "release").st_mode) == 0o644



# --- fleetd's session reading a hostile agent ---------------------------------------------
def session_for(tmp_path: Path) -> Tuple[MachineSession, SqliteRegistry, FakeTransport]:
    registry = SqliteRegistry(str(tmp_path / "registry.db"))
    at_once(registry.add_machine(MachineRecord(name="h1", address="10.0.0.1", port=22, user="root",
                                       identity=None, known_hosts=None,
                                       agent_command="agent", metadata={})))
    machine = registry.get_machine("h1")
    assert machine is not None
    transport = FakeTransport()
    session = MachineSession(machine, registry, lambda m: transport, lambda r: None,
                             heartbeat_s=60)
    return session, registry, transport


async def _until(predicate: Any) -> None:
    for _ in range(500):
        if predicate():
            return
        await asyncio.sleep(0.01)
    pytest.fail("not within 5s")


def run_session(tmp_path: Path, body: Any) -> None:
    """``body(session, registry, channel)`` against a connected session, stopped after
    it whatever happens."""
    async def scenario() -> None:
        session, registry, transport = session_for(tmp_path)
        session.start()
        try:
            await _until(lambda: session.connected)
            await body(session, registry, transport.channel)
        finally:
            await session.stop()

    asyncio.run(scenario())


@pytest.mark.parametrize(("status", "says"), [
    ({"name": "../x"}, "unit status: invalid unit name '../x'"),
    ({"name": "a.service", "restarts": "many"},
     "unit status of a.service: want a whole number"),
    ({"name": "a.service", "pid": True}, "unit status of a.service: want a whole number"),
    ("a.service", "status message without a list of units"),
])
def test_a_bad_report_from_an_agent_is_named_in_the_machines_error(
        tmp_path: Path, status: Any, says: str) -> None:
    """Not "internal error" (a KeyError or int() deep in the session), not a bad row in
    the registry: the agent spoke nonsense, and the error says what."""
    async def body(session: MachineSession, registry: SqliteRegistry,
                   channel: FakeChannel) -> None:
        channel.incoming.put_nowait(protocol.encode("status", units=[status]))

        def error() -> str:
            record = registry.get_machine("h1")
            return (record.error if record is not None else None) or ""

        await _until(lambda: "nonsense" in error())
        assert error().startswith("agent spoke nonsense: ") and says in error(), error()
        assert registry.list_observed() == []

    run_session(tmp_path, body)


def test_a_reply_in_parts_is_joined(tmp_path: Path) -> None:
    async def body(session: MachineSession, registry: SqliteRegistry,
                   channel: FakeChannel) -> None:
        asking = asyncio.ensure_future(session.request("tail", unit="a.service", lines=5))
        await _until(lambda: any(m["type"] == "tail" for m in channel.written))
        lines = [f"line {i} " + "x" * 40 for i in range(5)]
        parts = protocol.chunks("reply", "lines", lines, limit=150,
                                id=channel.written[-1]["id"])
        assert len(parts) == 5
        for part in parts:
            channel.incoming.put_nowait(part)
        reply = await asking
        assert reply["lines"] == lines

    run_session(tmp_path, body)


def test_a_unit_too_large_to_send_stays_reported_over_the_agents_snapshot(
        tmp_path: Path) -> None:
    """The set goes out, minus the unit too large for a message, which is reported
    failed here; the agent's snapshot (which never knew it) does not erase that."""
    small = good_spec(name="small.service")
    huge = good_spec(name="huge.service")
    huge["config"] = {**huge["config"], "environment": {"BIG": "x" * protocol.MAX_LINE}}

    async def body(session: MachineSession, registry: SqliteRegistry,
                   channel: FakeChannel) -> None:
        session.push([small, huge])
        sent = [m for m in channel.written if m["type"] == "desired"]
        assert [[u["name"] for u in m["units"]] for m in sent] == [["small.service"]]
        channel.incoming.put_nowait(protocol.encode("status", units=[protocol.unit_status(
            "small.service", small["hash"], protocol.RUNNING, pid=42)]))
        await _until(lambda: len(registry.list_observed()) == 2)
        await asyncio.sleep(0.05)
        rows = {o.unit: o for o in registry.list_observed()}
        assert rows["small.service"].state == protocol.RUNNING
        assert rows["huge.service"].state == protocol.FAILED
        assert "not deliverable to machine h1" in (rows["huge.service"].error or "")

    run_session(tmp_path, body)


def test_a_units_error_is_reported_bounded() -> None:
    """An error may quote the unit's own settings (PATH= in "command not found"): a
    report stays far under the message limit however large they are."""
    status = protocol.unit_status("a.service", "ab", protocol.FAILED,
                                  error="x: not found in PATH=" + "/p:" * 10 ** 6)
    assert len(status["error"]) == protocol.ERROR_MAX
    assert status["error"].startswith("x: not found in PATH=/p:")
    assert status["error"].endswith("...")
    assert protocol.unit_status("a.service", "ab", protocol.FAILED, error="short")[
        "error"] == "short"
