"""vagrant/Vagrantfile checked by the real Vagrant, and ``fleetctl machine add --vagrant``
bringing machines up through real sshd and agents.

``vagrant up`` cannot run here (no box can be downloaded, and this KVM cannot run a stock
guest kernel), so:

- the Vagrantfile is checked by ``vagrant validate`` (Debian's vagrant package); once
  with no hypervisor at all (``--ignore-provider``, what a bare CI machine can do), and
  once with a stand-in ``VBoxManage`` that only answers ``--version``, so that Vagrant
  takes VirtualBox as usable and validates the provider blocks too: the virtualbox block
  for real, the libvirt block ignored when the vagrant-libvirt plugin is absent. The
  Vagrantfile's key trigger runs for real through ``vagrant provision`` (which, on a
  machine not created, runs its triggers and moves on);
- ``fleetctl machine add --vagrant`` meets the netns lab: a stub ``vagrant``
  (``FLEETCTL_VAGRANT``) prints ``status --machine-readable`` and ``ssh-config`` in
  Vagrant's exact format for the lab's hosts. That stands in for Vagrant's own output
  only; ssh-keyscan, sshd, the agents and fleetd after it are real.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Dict, List, Optional

import pytest
from labkit import ROOT, Fleet

from fleetd.lab.daemon import agent_command
from fleetd.lab.netns import Host, Lab

VAGRANT_DIR = os.path.join(ROOT, "vagrant")
AGENTS = {"agent1": "192.168.56.11", "agent2": "192.168.56.12", "agent3": "192.168.56.13"}


def need_vagrant() -> str:
    path = shutil.which("vagrant")
    if path is None:
        pytest.skip("vagrant is not installed (./run.sh setup installs Debian's: "
                    "apt-get install --no-install-recommends vagrant)")
    return path


def vagrant(cwd: str, tmp: Path, *args: str, fake_virtualbox: bool = False,
            servers: Optional[str] = None) -> subprocess.CompletedProcess[str]:
    """The real vagrant, with its home and its per-project state in ``tmp`` (so nothing
    lands in ~/.vagrant.d or vagrant/.vagrant); ``servers``: FLEETD_SERVERS (unset by
    default, whatever this process has)."""
    env = dict(os.environ, VAGRANT_HOME=str(tmp / "vagrant.d"),
               VAGRANT_DOTFILE_PATH=str(tmp / "dotfile"), VAGRANT_CHECKPOINT_DISABLE="1")
    env.pop("FLEETD_SERVERS", None)
    if servers is not None:
        env["FLEETD_SERVERS"] = servers
    if fake_virtualbox:
        bin_dir = tmp / "fakevbox"
        bin_dir.mkdir(exist_ok=True)
        script = bin_dir / "VBoxManage"
        script.write_text("#!/bin/sh\n[ \"$1\" = --version ] && echo 7.0.14r161095\nexit 0\n")
        script.chmod(0o755)
        env["PATH"] = f"{bin_dir}:{env['PATH']}"
    return subprocess.run([need_vagrant(), *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120)


def copy_project(tmp: Path) -> str:
    """The vagrant/ directory, copied to DIR/vagrant (its synced folder is DIR)."""
    dest = tmp / "project" / "vagrant"
    shutil.copytree(VAGRANT_DIR, dest, ignore=shutil.ignore_patterns(".vagrant", ".keys"))
    return str(dest)


# --- the Vagrantfile ----------------------------------------------------------------------
def test_vagrant_validate_passes_without_any_hypervisor(tmp_path: Path) -> None:
    proc = vagrant(VAGRANT_DIR, tmp_path, "validate", "--ignore-provider")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Vagrantfile validated successfully." in proc.stdout
    for name in ("fleetd", *AGENTS):
        assert f"==> {name}: Ignoring provider config" in proc.stdout


def test_vagrant_validate_checks_provider_blocks_and_ignores_libvirt_without_plugin(
        tmp_path: Path) -> None:
    """Debian's vagrant Recommends vagrant-libvirt; installed without recommends (as
    run.sh does) it has no libvirt provider, and the libvirt block must do no harm."""
    plugins = vagrant(VAGRANT_DIR, tmp_path, "plugin", "list").stdout
    proc = vagrant(VAGRANT_DIR, tmp_path, "validate", fake_virtualbox=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Vagrantfile validated successfully." in proc.stdout

    # not vacuous: a wrong VirtualBox setting fails the same command
    project = copy_project(tmp_path)
    vagrantfile = Path(project) / "Vagrantfile"
    text = vagrantfile.read_text()
    assert "    vb.cpus = 1\n" in text
    vagrantfile.write_text(text.replace("    vb.cpus = 1\n", "    vb.cpus = 1\n    vb.cpu = 2\n"))
    bad = vagrant(project, tmp_path, "validate", fake_virtualbox=True)
    assert bad.returncode == 1
    assert "The following settings shouldn't exist: cpu" in bad.stderr
    if "vagrant-libvirt" in plugins:
        pytest.skip("vagrant-libvirt is installed: validate passed, but the case without "
                    "the plugin was not what ran")


def test_vagrant_status_lists_the_four_machines(tmp_path: Path) -> None:
    from fleetd.cli.vagrant import parse_status

    proc = vagrant(VAGRANT_DIR, tmp_path, "status", "--machine-readable", fake_virtualbox=True)
    assert proc.returncode == 0, proc.stderr
    assert parse_status(proc.stdout) == dict.fromkeys(["fleetd", *AGENTS], "not_created")


def test_fleetd_servers_3_validates_with_three_control_vms(tmp_path: Path) -> None:
    """FLEETD_SERVERS=3: fleetd1..3 (each an etcd member and a fleetd on etcd) and the
    agents; what each one's provisioning is given: tests/unit/test_vagrant_config.py."""
    from fleetd.cli.vagrant import parse_status

    proc = vagrant(VAGRANT_DIR, tmp_path, "validate", fake_virtualbox=True, servers="3")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Vagrantfile validated successfully." in proc.stdout
    status = vagrant(VAGRANT_DIR, tmp_path, "status", "--machine-readable",
                     fake_virtualbox=True, servers="3")
    assert status.returncode == 0, status.stderr
    assert parse_status(status.stdout) == dict.fromkeys(
        ["fleetd1", "fleetd2", "fleetd3", *AGENTS], "not_created")


def test_fleetd_servers_2_is_refused_naming_the_counts(tmp_path: Path) -> None:
    proc = vagrant(VAGRANT_DIR, tmp_path, "validate", "--ignore-provider", servers="2")
    assert proc.returncode == 1
    assert 'FLEETD_SERVERS="2": want 1 (one fleetd on SQLite), 3 or 5' in proc.stderr


def test_provisioning_scripts_parse(tmp_path: Path) -> None:
    for script in ("fleetd.sh", "agent.sh", "etcd.sh"):
        path = os.path.join(VAGRANT_DIR, "provision", script)
        assert os.stat(path).st_mode & stat.S_IXUSR
        proc = subprocess.run(["sh", "-n", path], capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr


def test_the_key_trigger_makes_the_labs_keys_once_before_any_machine(tmp_path: Path) -> None:
    """`vagrant provision` runs the before-provision trigger (then: not created, moves on);
    the keys it makes must be whole, pinned in known_hosts by agent address, and kept."""
    project = copy_project(tmp_path)
    keys = Path(project) / ".keys"
    first = vagrant(project, tmp_path, "provision", "agent2", fake_virtualbox=True)
    assert first.returncode == 0, first.stdout + first.stderr
    assert "fleetd lab: SSH keys in vagrant/.keys" in first.stdout
    made = {p.name: p.read_text() for p in keys.iterdir() if p.name != ".lock"}
    assert set(made) == {"fleetd_ed25519", "fleetd_ed25519.pub", "known_hosts",
                         *(f"host_{a}_ed25519{s}" for a in AGENTS for s in ("", ".pub"))}
    for name in made:
        if name.endswith("_ed25519"):
            assert stat.S_IMODE((keys / name).stat().st_mode) == 0o600
            check = subprocess.run(["ssh-keygen", "-y", "-f", str(keys / name)],
                                   capture_output=True, text=True)
            assert check.stdout.split()[:2] == made[f"{name}.pub"].split()[:2]
    assert made["known_hosts"].splitlines() == [
        f"{ip} {' '.join(made[f'host_{a}_ed25519.pub'].split()[:2])}"
        for a, ip in AGENTS.items()]

    again = vagrant(project, tmp_path, "provision", "fleetd", fake_virtualbox=True)
    assert again.returncode == 0, again.stderr
    assert {p.name: p.read_text() for p in keys.iterdir() if p.name != ".lock"} == made


# --- fleetctl machine add --vagrant, on the lab -------------------------------------------
def ssh_config_block(name: str, hostname: str, user: str, port: int, identity: str) -> str:
    """One machine as `vagrant ssh-config` (2.3.4, templates/commands/ssh_config) prints it."""
    quoted = f'"{identity}"' if " " in identity else identity
    return (f"Host {name}\n  HostName {hostname}\n  User {user}\n  Port {port}\n"
            "  UserKnownHostsFile /dev/null\n  StrictHostKeyChecking no\n"
            f"  PasswordAuthentication no\n  IdentityFile {quoted}\n  IdentitiesOnly yes\n"
            "  LogLevel FATAL\n\n")


def stub_vagrant(tmp: Path, states: Dict[str, str], blocks: Dict[str, str]) -> str:
    """A `vagrant` that answers `status --machine-readable` and `ssh-config NAME...` as
    Vagrant does (an unknown or not-running machine fails ssh-config), logging its calls."""
    stub = tmp / "stub"
    stub.mkdir()
    status = "".join(
        f"1795525310,{n},metadata,provider,libvirt\n" for n in states) + "".join(
        f"1795525310,{n},provider-name,libvirt\n1795525310,{n},state,{s}\n"
        f"1795525310,{n},state-human-short,{s.replace('_', ' ')}\n" for n, s in states.items())
    status += "1795525310,,ui,info,Current machine states:\\n\\n...\n"
    (stub / "status.txt").write_text(status)
    for name, block in blocks.items():
        (stub / f"ssh-config-{name}.txt").write_text(block)
    script = stub / "vagrant"
    script.write_text(f"""#!/bin/sh
echo "$PWD|$*" >> {stub}/calls.log
case "$1" in
  status) cat {stub}/status.txt ;;
  ssh-config) shift
    for m in "$@"; do
      cat "{stub}/ssh-config-$m.txt" 2>/dev/null || {{
        echo "The provider for this Vagrant-managed machine is reporting that it" >&2
        echo "is not yet ready for SSH." >&2; exit 1; }}
    done ;;
  *) echo "stub vagrant: $*" >&2; exit 1 ;;
esac
""")
    script.chmod(0o755)
    return str(script)


def spaced_identity(lab: Lab, tmp: Path) -> str:
    """The lab's key, at a path with a space (Vagrant quotes such paths)."""
    keydir = tmp / "vagrant home" / "machines"
    keydir.mkdir(parents=True)
    key = keydir / "private_key"
    shutil.copy(lab.identity, key)
    key.chmod(0o600)
    return str(key)


def add_vagrant(fleet: Fleet, project: Path, stub: str, *args: str, check: bool = True
                ) -> subprocess.CompletedProcess[str]:
    os.environ["FLEETCTL_VAGRANT"] = stub
    try:
        return fleet.ctl("machine", "add", "--vagrant", str(project),
                         "--agent-command", agent_command(), *args, check=check)
    finally:
        del os.environ["FLEETCTL_VAGRANT"]


def lab_host_keys(lab: Lab, h: Host) -> List[str]:
    with open(lab.known_hosts) as f:
        return [" ".join(ln.split()[1:3]) for ln in f if ln.split()[:1] == [h.address]]


def test_machine_add_vagrant_brings_every_running_agent_up(fleet: Fleet, lab: Lab,
                                                           tmp_path: Path) -> None:
    hosts = lab.hosts()
    identity = spaced_identity(lab, tmp_path)
    states = {"fleetd": "running", **{h.name: "running" for h in hosts}, "spare": "not_created"}
    blocks = {h.name: ssh_config_block(h.name, h.address, "root", 22, identity) for h in hosts}
    blocks["fleetd"] = ssh_config_block("fleetd", "192.0.2.1", "vagrant", 22, identity)
    project = tmp_path / "project"
    project.mkdir()
    stub = stub_vagrant(tmp_path, states, blocks)

    out = add_vagrant(fleet, project, stub, "--metadata", "role=web").stdout
    for h in hosts:
        assert (f"Machine {h.name} added (root@{h.address}, host key from ssh-keyscan, "
                "trusted on first use)") in out
        assert f"Machine {h.name} up ({h.address}, machine id " in out
    assert "fleetd" not in out and "spare" not in out

    machines = fleet.machines()
    assert sorted(machines) == sorted(h.name for h in hosts)  # not fleetd, not spare
    for h in hosts:
        m = machines[h.name]
        assert (m["state"], m["address"], m["port"], m["user"], m["metadata"]) == (
            "up", h.address, 22, "root", {"role": "web"})
        known = project / ".vagrant" / "fleetd" / f"{h.name}.known_hosts"
        # what ssh-keyscan read is the host's real key (the lab made it; sshd serves it)
        scanned = [" ".join(ln.split()[1:3]) for ln in known.read_text().splitlines()]
        assert lab_host_keys(lab, h) and set(lab_host_keys(lab, h)) <= set(scanned)
        assert all(ln.split()[0] == h.address for ln in known.read_text().splitlines())

    calls = (tmp_path / "stub" / "calls.log").read_text().splitlines()
    assert calls == [f"{project}|status --machine-readable",
                     f"{project}|ssh-config {' '.join(h.name for h in hosts)}"]

    again = add_vagrant(fleet, project, stub, "--machine", hosts[0].name).stdout
    assert f"Machine {hosts[0].name} already registered: skipped" in again


def test_machine_add_vagrant_refuses_a_machine_whose_host_key_it_cannot_read(
        fleet: Fleet, lab: Lab, tmp_path: Path) -> None:
    """Every machine is prepared before any is added: one unreachable sshd, none added."""
    h1, h2 = lab.hosts()[:2]
    identity = spaced_identity(lab, tmp_path)
    project = tmp_path / "project"
    project.mkdir()
    stub = stub_vagrant(tmp_path, {h1.name: "running", h2.name: "running"}, {
        h1.name: ssh_config_block(h1.name, h1.address, "root", 22, identity),
        h2.name: ssh_config_block(h2.name, h2.address, "root", 2, identity),  # nothing there
    })
    proc = add_vagrant(fleet, project, stub, check=False)
    assert proc.returncode == 1
    assert f"ssh-keyscan -p 2 {h2.address} got no host key" in proc.stderr
    assert "adds no machine whose key it cannot know" in proc.stderr
    assert fleet.machines() == {}


def test_machine_add_vagrant_names_a_machine_that_is_not_running(
        fleet: Fleet, lab: Lab, tmp_path: Path) -> None:
    project = tmp_path / "project"
    project.mkdir()
    stub = stub_vagrant(tmp_path, {"agent1": "running", "agent2": "poweroff"}, {})
    proc = add_vagrant(fleet, project, stub, "--machine", "agent2", check=False)
    assert proc.returncode == 1
    assert "vagrant machine agent2 is poweroff, not running (vagrant up agent2)" in proc.stderr
    assert fleet.machines() == {}
