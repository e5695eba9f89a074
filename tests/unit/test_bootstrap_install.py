"""fleetd.bootstrap.install end to end on this machine, through an in-process SSH server
whose commands run here: prefix and state directory in tmp, the agent started detached
(PID 1 here is not systemd), python3 = this venv's (it has psutil).

What it pins: a fresh install, the no-op re-install, an upgrade (a new agent process, the
old version kept as previous), a failed upgrade that leaves the running version alone and
no staged files, a failed fresh install that leaves nothing, and a purge."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Dict, Iterator, List

import pytest
from bootstrapkit import ENV, agent_pid, target_in
from inproc_ssh import ssh_server

from fleetd.bootstrap import bundle
from fleetd.bootstrap.install import Installed, install
from fleetd.bootstrap.remote import STOP_TIMEOUT_S
from fleetd.bootstrap.target import BootstrapError, Target
from fleetd.bootstrap.uninstall import uninstall
from fleetd.testing.waiting import alive, until


def tree(root: Path) -> List[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def answers(state: Path) -> bool:
    with socket.socket(socket.AF_UNIX) as s:
        try:
            s.connect(str(state / "agent.sock"))
            return True
        except OSError:
            return False


@pytest.fixture
def where(tmp_path: Path) -> Iterator[Target]:
    yield from target_in(tmp_path)


def run(tmp_path: Path, target: Target, **kwargs: object) -> Installed:
    async def go() -> Installed:
        async with ssh_server(str(tmp_path), env=ENV) as shell:
            return await install(shell, "root@test", target, **kwargs)  # type: ignore[arg-type]
    return asyncio.run(go())


def test_install_upgrade_and_purge(tmp_path: Path, where: Target) -> None:
    prefix, state = Path(where.prefix), Path(where.state_dir)
    first = run(tmp_path, where, suffix="a")
    assert first.changed and not first.systemd and first.previous is None
    assert first.psutil.startswith("host ")
    assert first.agent_command == f"{prefix}/current/bin/fleet-agent attach --state-dir {state}"
    assert os.readlink(prefix / "current") == f"versions/{first.version}"
    assert os.listdir(prefix / "versions") == [first.version]
    # the version directory holds the unpacked payload, not the uploaded zip
    files = tree(prefix / "versions" / first.version)
    assert {"VERSION", "bin/fleet-agent", "fleetd/agent/main.py"} <= set(files)
    assert "agent.zip" not in files
    pid = agent_pid(state)
    assert alive(pid) and answers(state)
    with open(f"/proc/{pid}/cmdline", "rb") as f:  # the launcher of that very version
        assert f"versions/{first.version}/bin/fleet-agent".encode() in f.read()
    assert set(first.steps) >= {"probe", "stage", "upload", "unpack", "activate", "start",
                                "ready"}

    again = run(tmp_path, where, suffix="a")
    assert not again.changed and agent_pid(state) == pid

    second = run(tmp_path, where, suffix="b")
    assert second.changed and second.previous == first.version != second.version
    new_pid = agent_pid(state)
    assert new_pid != pid and not alive(pid) and alive(new_pid) and answers(state)
    assert sorted(os.listdir(prefix / "versions")) == sorted([first.version, second.version])

    broken: Dict[str, bytes] = bundle.agent_files()
    broken["fleetd/agent/daemon.py"] = b"raise ImportError('this agent is broken')\n"
    with pytest.raises(BootstrapError) as err:
        run(tmp_path, where, suffix="c", files=broken)
    message = str(err.value)
    assert message.startswith("root@test: unpacking and importing the agent in ")
    assert "this agent is broken" in message
    # the running version is untouched, nothing staged is left
    assert os.readlink(prefix / "current") == f"versions/{second.version}"
    assert agent_pid(state) == new_pid and alive(new_pid)
    assert sorted(os.listdir(prefix / "versions")) == sorted([first.version, second.version])

    third = run(tmp_path, where, suffix="d")  # keeps current and previous only
    assert sorted(os.listdir(prefix / "versions")) == sorted([second.version, third.version])

    last = agent_pid(state)

    async def purge() -> None:
        async with ssh_server(str(tmp_path), env=ENV) as shell:
            removed = await uninstall(shell, "root@test", where, purge=True)
            assert removed.stopped and removed.purged and removed.left_running == []
        await until(lambda: not alive(last), timeout=5.0)
    asyncio.run(purge())
    assert not prefix.exists() and not state.exists()
    # the install made opt/ (the prefix's parent) and the agent made state/: the purge
    # removes what the install made
    assert not (tmp_path / "opt").exists() and os.listdir(tmp_path / "state") == []


def test_a_failed_fresh_install_leaves_nothing(tmp_path: Path, where: Target) -> None:
    broken = bundle.agent_files()
    broken["fleetd/drivers/exec.py"] = b"import no_such_module_here\n"
    with pytest.raises(BootstrapError) as err:
        run(tmp_path, where, suffix="x", files=broken)
    assert "No module named 'no_such_module_here'" in str(err.value)
    assert not (tmp_path / "opt").exists()  # the attempt made it, the undo removed it
    assert not (tmp_path / "state").exists()


def test_a_host_problem_is_refused_before_anything_is_written(tmp_path: Path,
                                                              where: Target) -> None:
    (tmp_path / "opt").mkdir()
    (tmp_path / "opt").chmod(0o500)
    if os.geteuid() == 0:  # root writes through the mode bits: make it unusable otherwise
        (tmp_path / "opt").chmod(0o755)
        (tmp_path / "opt" / "fleetd-agent").write_text("a file where a directory belongs")
    with pytest.raises(BootstrapError) as err:
        run(tmp_path, where)
    assert str(err.value).startswith("root@test: cannot write under ")
    assert err.value.problems and err.value.report is not None
    assert not (tmp_path / "state").exists()
    assert os.listdir(tmp_path / "opt") == (["fleetd-agent"] if os.geteuid() == 0 else [])


def test_uninstall_leaves_a_process_that_reused_the_agents_pid_alone(
        tmp_path: Path, where: Target) -> None:
    """The pid file names a live process that is not an agent (the agent died, its pid was
    reused): nothing is signalled, and nothing waits for that process to end."""
    state = Path(where.state_dir)
    state.mkdir(parents=True)
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        (state / "agent.pid").write_text(f"{stranger.pid}\n")

        async def stop() -> None:
            async with ssh_server(str(tmp_path), env=ENV) as shell:
                removed = await uninstall(shell, "root@test", where, purge=False)
                assert not removed.stopped and not removed.purged
        began = time.monotonic()
        asyncio.run(stop())
        assert time.monotonic() - began < STOP_TIMEOUT_S  # it did not wait on the stranger
        assert stranger.poll() is None
    finally:
        (state / "agent.pid").unlink()  # the fixture's teardown kills what it names
        stranger.kill()
        stranger.wait()
