"""``fleetctl lab up/status/down`` as a user runs them: the demo's path, end to end."""

from __future__ import annotations

import glob
import os
import subprocess

from click.testing import CliRunner
from labkit import FLEETCTL, ROOT, alive, wait_for

from fleetd.cli.main import cli
from fleetd.lab import netns


def run(*args: str, env: dict, user: str = "") -> subprocess.CompletedProcess[str]:
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"] if user else []
    return subprocess.run([*prefix, FLEETCTL, *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=120)


def leftovers(prefix: str, lab_dir: str) -> list:
    found = []
    netns_list = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found += [n for n in netns_list.split() if n.startswith(f"{prefix}-")]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    found += [ln.split(":")[1].strip() for ln in links.splitlines()
              if ln.split(":")[1].strip().startswith(f"{prefix}-")]
    for path in glob.glob("/proc/[0-9]*/mountinfo"):
        try:
            with open(path) as f:
                if lab_dir in f.read():
                    found.append(path)
        except OSError:
            continue
    return found


def test_lab_up_starts_fleetd_registers_hosts_and_down_leaves_nothing(tmp_path) -> None:
    lab_dir = str(tmp_path / "lab")
    env = dict(os.environ, FLEETCTL_ENDPOINT=f"unix://{tmp_path}/fleetd.sock",
               FLEET_LAB_DIR=lab_dir)
    up = run("lab", "up", "--hosts", "2", "--prefix", "fx", "--subnet", "10.79.0", env=env)
    try:
        assert up.returncode == 0, up.stderr
        assert "Started fleetd" in up.stdout and "all up" in up.stdout
        machines = run("list-machines", env=env).stdout
        assert [ln.split()[:3] for ln in machines.splitlines()[1:]] == [
            ["h1", "10.79.0.11", "up"], ["h2", "10.79.0.12", "up"]]
        status = run("lab", "status", env=env).stdout
        assert "fx-h1" in status and "fx-h2" in status and "down" not in status
        # a host resolves its neighbours by name without DNS, as on a VM network
        sshd = netns.Lab(lab_dir).sshd_pid(netns.Lab(lab_dir).host(1))
        names = subprocess.run(["nsenter", "-t", str(sshd), "-m", "-u", "getent", "hosts",
                                "h2"], capture_output=True, text=True, timeout=10).stdout
        assert names.split()[:2] == ["10.79.0.12", "h2"]

        start = run("start", os.path.join(ROOT, "units", "hello.service"), env=env)
        assert start.returncode == 0, start.stderr
        pid = int(run("list-units", env=env).stdout.splitlines()[1].split()[3])
        fleetd_pid = netns.Lab(lab_dir).info()["fleetd_pid"]
        assert alive(pid) and alive(fleetd_pid)
        # the agents' cgroups, in the machine's own hierarchies (a plain host shares its
        # kernel): hello.service's among them
        agent_cgroups = [d for h in netns.Lab(lab_dir).hosts()
                         for d in glob.glob(f"/sys/fs/cgroup/*/fleet/{machine_id(h)}")]
        assert any(os.path.isdir(os.path.join(d, "hello.service")) for d in agent_cgroups)
    finally:
        down = run("lab", "down", env=env)
    assert down.returncode == 0, down.stderr
    wait_for("the unit's program to die with its host", lambda: not alive(pid))
    assert not alive(fleetd_pid)
    assert leftovers("fx", lab_dir) == []
    assert [d for d in agent_cgroups if os.path.exists(d)] == []


def machine_id(h: netns.Host) -> str:
    with open(os.path.join(h.state_dir, "machine-id")) as f:
        return f.read().strip()


def test_lab_needs_root_and_says_so(tmp_path) -> None:
    env = dict(os.environ, FLEET_LAB_DIR=str(tmp_path))
    out = run("lab", "up", "--hosts", "1", "--prefix", "fy", env=env, user="nobody")
    assert out.returncode != 0
    assert "the lab needs root" in out.stderr
    assert leftovers("fy", str(tmp_path)) == []


def test_lab_without_sshd_says_what_to_install(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(netns, "SSHD", str(tmp_path / "no-sshd-here"))
    result = CliRunner().invoke(cli, ["lab", "up", "--hosts", "1", "--prefix", "fz",
                                      "--lab-dir", str(tmp_path)])
    assert result.exit_code != 0
    assert "install openssh-server" in result.output
    assert leftovers("fz", str(tmp_path)) == []
