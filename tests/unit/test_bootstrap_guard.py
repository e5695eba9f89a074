"""``machine remove --purge`` removes what the install made and nothing else.

Two guards: the paths themselves (``Target.check``: absolute and normal, two levels deep,
no system directory), and the install's record (``<prefix>/install-record``): a purge
removes only what the first install recorded making, for exactly the paths the machine's
agent command names - which the caller may have written (``--agent-command``).

Real installs on this machine through an in-process SSH server (as in
test_bootstrap_install), prefix and state directory in tmp."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Iterator, List

import pytest
from bootstrapkit import ENV, agent_pid, target_in
from inproc_ssh import ssh_server

from fleetd.bootstrap.install import Installed, install
from fleetd.bootstrap.record import RECORD
from fleetd.bootstrap.target import BootstrapError, Target, parse_agent_command
from fleetd.bootstrap.uninstall import Removed, uninstall
from fleetd.testing.waiting import alive

# --- the paths ----------------------------------------------------------------------------
HOSTILE = [
    "/", "//", "/var/./lib", "/opt/../etc", "/opt/fleetd-agent/../..", "/opt/fleetd-agent/",
    "//opt/fleetd-agent", "/opt//fleetd-agent", "/opt/./fleetd-agent", "opt/fleetd-agent",
    "./fleetd-agent", "", ".", "/opt", "/var/lib", "/usr/local", "/home", "/opt/a b",
    "/opt/$(reboot)", "/opt/a;b", "/opt/fleet\nagent", "~/fleetd-agent",
]
ACCEPTED = ["/opt/fleetd-agent", "/var/lib/fleet-agent", "/srv/fleet/agent-2.1",
            "/home/x"]  # /home/x: a path of its own; a purge still needs the record


@pytest.mark.parametrize("path", HOSTILE)
@pytest.mark.parametrize("what", ["prefix", "state directory"])
def test_hostile_paths_are_refused(what: str, path: str) -> None:
    target = Target(prefix=path) if what == "prefix" else Target(state_dir=path)
    with pytest.raises(BootstrapError) as err:
        target.check()
    assert str(err.value).startswith(f"{what} {path!r}: ")


@pytest.mark.parametrize("path", HOSTILE)
def test_a_purge_of_a_hostile_agent_command_removes_nothing(path: str) -> None:
    """The paths come from the machine's agent command; refused before the host is
    reached (no shell: the call would fail if one were used)."""
    found = parse_agent_command(f"{path}/current/bin/fleet-agent attach --state-dir {path}")
    target = found[0] if found else Target(prefix=path, state_dir=path)
    with pytest.raises(BootstrapError):
        asyncio.run(uninstall(None, "root@test", target, purge=True))  # type: ignore[arg-type]


@pytest.mark.parametrize("path", ACCEPTED)
def test_accepted_paths(path: str) -> None:
    Target(prefix=path, state_dir=path + "-state").check()


@pytest.mark.parametrize("service", [
    "-x.service", ".x.service", "a\\x2d.service", "a b.service", "a;reboot.service",
    "$(reboot).service", "a@b@c.service", "x.socket", "fleet-agent", "a" * 250 + ".service"])
def test_hostile_service_names_are_refused(service: str) -> None:
    """The service name comes from the machine's agent command (``--systemd-service``),
    which the caller may have written; it must pass the one rule for a unit's name."""
    with pytest.raises(BootstrapError, match="is not a unit name"):
        Target(service=service).check()


@pytest.mark.parametrize("service", ["fleet-agent.service", "fleet-agent@blue.service",
                                     "fleet_agent2.service"])
def test_accepted_service_names(service: str) -> None:
    Target(service=service).check()


# --- the record -----------------------------------------------------------------------
@pytest.fixture
def target(tmp_path: Path) -> Iterator[Target]:
    yield from target_in(tmp_path)


def installed(tmp_path: Path, target: Target, suffix: str = "guard") -> Installed:
    async def go() -> Installed:
        async with ssh_server(str(tmp_path), env=ENV) as shell:
            return await install(shell, "root@test", target, suffix=suffix)
    return asyncio.run(go())


def purge(tmp_path: Path, target: Target) -> Removed:
    async def go() -> Removed:
        async with ssh_server(str(tmp_path), env=ENV) as shell:
            return await uninstall(shell, "root@test", target, purge=True)
    return asyncio.run(go())


def users_dir(path: Path) -> List[str]:
    """A directory that holds someone's files: what no purge may touch."""
    path.mkdir(parents=True, exist_ok=True)
    (path / ".bashrc").write_text("# mine\n")
    (path / "work").mkdir(exist_ok=True)
    return sorted(os.listdir(path))


def test_the_record_says_what_the_first_install_made(tmp_path: Path, target: Target) -> None:
    installed(tmp_path, target)
    record = (Path(target.prefix) / RECORD).read_text().splitlines()
    assert record == [f"prefix={target.prefix}", f"state={target.state_dir}",
                      "service=fleet-agent.service", f"created={tmp_path}/opt",
                      f"created={target.prefix}", f"created={target.prefix}/versions",
                      "own_state=1"]


def test_an_agent_command_naming_someones_directory_purges_nothing(
        tmp_path: Path, target: Target) -> None:
    """``machine add --agent-command '/home/x/current/bin/fleet-agent attach --state-dir
    /home/x'``, then ``remove --purge``: no record there, nothing removed."""
    home = tmp_path / "home" / "x"
    before = users_dir(home)
    found = parse_agent_command(f"{home}/current/bin/fleet-agent attach --state-dir {home}")
    assert found is not None
    with pytest.raises(BootstrapError) as err:
        purge(tmp_path, found[0])
    assert str(err.value) == (
        f"root@test: nothing was removed: {home}/{RECORD}, which "
        "fleetd's install leaves, is not there: fleetd removes only what its install "
        "recorded making")
    assert sorted(os.listdir(home)) == before


def test_a_record_of_other_paths_purges_nothing(tmp_path: Path, target: Target) -> None:
    """The prefix holds a record, but of another state directory than the one named."""
    installed(tmp_path, target)
    pid = agent_pid(Path(target.state_dir))
    home = tmp_path / "home" / "x"
    before = users_dir(home)
    other = Target(prefix=target.prefix, state_dir=str(home))
    with pytest.raises(BootstrapError) as err:
        purge(tmp_path, other)
    assert f"is not the record of this install: it records state ['{target.state_dir}'], " \
           f"not {home}" in str(err.value)
    assert sorted(os.listdir(home)) == before
    assert (Path(target.prefix) / "current").exists() and alive(pid)


def test_a_state_directory_that_held_files_is_left(tmp_path: Path, target: Target) -> None:
    """Installed with --state-dir pointing at a directory with someone's files: the purge
    removes the agent's install and says it kept that directory."""
    state = Path(target.state_dir)
    users_dir(state)
    installed(tmp_path, target)
    assert "own_state=0" in (Path(target.prefix) / RECORD).read_text()
    with pytest.raises(BootstrapError) as err:
        purge(tmp_path, target)
    assert str(err.value) == (f"root@test: removed what fleetd installed, but not {state}: "
                              "it held files already when the install began")
    assert (state / ".bashrc").read_text() == "# mine\n" and (state / "work").is_dir()
    assert not Path(target.prefix).exists()


def test_a_prefix_that_became_a_symlink_is_not_followed(tmp_path: Path,
                                                        target: Target) -> None:
    installed(tmp_path, target)
    prefix = Path(target.prefix)
    elsewhere = tmp_path / "elsewhere"
    prefix.rename(elsewhere)
    prefix.symlink_to(elsewhere)
    with pytest.raises(BootstrapError) as err:
        purge(tmp_path, target)
    assert str(err.value) == (f"root@test: nothing was removed: "
                              f"{prefix} is a symlink now, not the directory installed to")
    assert (elsewhere / "versions").is_dir() and (elsewhere / RECORD).exists()


def test_a_purge_with_its_record_removes_all_it_made(tmp_path: Path, target: Target) -> None:
    installed(tmp_path, target)
    record = (Path(target.prefix) / RECORD).read_text()
    assert installed(tmp_path, target, suffix="upgrade").previous is not None
    assert (Path(target.prefix) / RECORD).read_text() == record  # the first one's stays
    removed = purge(tmp_path, target)
    assert removed.purged
    assert not (tmp_path / "opt").exists() and not Path(target.state_dir).exists()
