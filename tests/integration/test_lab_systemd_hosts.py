"""Systemd hosts in the local lab: ``Lab.up(n, systemd=m)`` and ``fleetctl lab up --systemd``.

A systemd host is a machine of its own: the cached Debian rootfs booted with systemd as
PID 1 in the host's namespace, reached only over SSH by its own sshd, with a file system
that is not this machine's. These tests reach it the way fleetd and a user do (the real
``ssh`` client and asyncssh, strict host-key checking against the lab's known_hosts),
check that it is what the bootstrap will find (python3, psutil or not, SFTP), and that
``lab down`` leaves no namespace, process, mount or cgroup behind.

One lab serves the module (prefix ``fw``, 10.85.0.0/24): h1 a plain host, h2 a systemd
host with python3-psutil, h3 one without. The CLI test makes its own (``fv``, 10.86.0).
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import subprocess
import time
from typing import Any, Dict, Iterator, List

import asyncssh
import pytest
from labkit import FLEETCTL, ROOT, alive, wait_for

from fleetd.lab import systemd_host
from fleetd.lab.daemon import machine_add_argv, metadata
from fleetd.lab.netns import Host, Lab, LabError

TIMINGS: Dict[str, float] = {}


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.fail("the lab's systemd hosts need root (namespaces, mounts, cgroups)")
    began = time.monotonic()
    try:
        systemd_host.rootfs()  # built once (~40 s), then cached
    except systemd_host.SystemdHostError as exc:
        pytest.fail(f"cannot build the systemd hosts' rootfs: {exc}")
    TIMINGS["rootfs (cached or built)"] = time.monotonic() - began
    the_lab = Lab(str(tmp_path_factory.mktemp("sdlab")), prefix="fw", subnet="10.85.0")
    the_lab.down()  # what a crashed earlier run left behind
    devices = machine_devices()
    try:
        began = time.monotonic()
        the_lab.up(3, systemd=2, without_psutil=1)
        TIMINGS["Lab.up(3, systemd=2)"] = time.monotonic() - began
        for name, guest in the_lab.info()["guests"].items():
            TIMINGS[f"{name} boot"] = guest["boot_seconds"]
        yield the_lab
    finally:
        guests = the_lab.info().get("guests", {}).values()
        began = time.monotonic()
        the_lab.down()
        TIMINGS["Lab.down"] = time.monotonic() - began
        print("\nlab systemd host timings: " +
              ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in TIMINGS.items()))
    # powered off by the Lab that booted them (their launchers reaped): nothing is left
    assert [g["pid1"] for g in guests if alive(g["pid1"])] == []
    assert [c for g in guests for c in g["cgroups"] if os.path.exists(c)] == []
    assert mounts_mentioning(the_lab.dir) == []
    # the guests' systemd chowned its console, once the machine's /dev/null (root:tty 0620)
    assert machine_devices() == devices


DEVICES = ("null", "zero", "full", "random", "urandom", "tty", "console")


def machine_devices() -> Dict[str, Any]:
    """Mode, owner and change time of the machine's own device nodes."""
    found = {}
    for d in DEVICES:
        with contextlib.suppress(FileNotFoundError):
            st = os.stat(f"/dev/{d}")
            found[d] = (oct(st.st_mode), st.st_uid, st.st_gid, st.st_ctime_ns)
    return found


def by_name(lab: Lab) -> Dict[str, Host]:
    return {h.name: h for h in lab.hosts()}


def ssh(lab: Lab, h: Host, command: str, known_hosts: str = "") -> subprocess.CompletedProcess[str]:
    """The real OpenSSH client, as a user would run it: the lab's key, strict checking."""
    return subprocess.run(
        ["ssh", "-F", "/dev/null", "-i", lab.identity, "-o", "BatchMode=yes",
         "-o", "StrictHostKeyChecking=yes",
         "-o", f"UserKnownHostsFile={known_hosts or lab.known_hosts}",
         "-o", "ConnectTimeout=5", f"root@{h.address}", command],
        capture_output=True, text=True, timeout=30)


def test_the_last_hosts_are_systemd_hosts_and_say_so(lab: Lab) -> None:
    hosts = lab.hosts()
    assert [(h.name, h.systemd, h.without_psutil) for h in hosts] == [
        ("h1", False, False), ("h2", True, False), ("h3", True, True)]
    assert metadata(lab, hosts[1])["systemd"] == "true"
    assert "systemd" not in metadata(lab, hosts[0])
    argv = machine_add_argv(lab, hosts[2])
    assert argv[:4] == ["fleetctl", "machine", "add", "root@10.85.0.13"]
    assert argv[argv.index("--known-hosts") + 1] == lab.known_hosts
    rows = {r["host"]: r for r in lab.status()}
    assert rows["h1"]["systemd"] is False and rows["h1"]["pid1"] is None
    for name in ("h2", "h3"):
        assert rows[name]["systemd"] is True
        assert rows[name]["pid1"] and rows[name]["sshd"] and rows[name]["netns_up"]


@pytest.mark.parametrize("name", ["h2", "h3"])
def test_ssh_reaches_the_hosts_own_systemd_and_sshd(lab: Lab, name: str) -> None:
    h = by_name(lab)[name]
    out = ssh(lab, h, "cat /proc/1/comm; hostname; systemctl is-active ssh.service; "
                      "systemctl is-system-running")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["systemd", name, "active", "running"]


def test_a_host_stays_running_past_its_units_start_limits(lab: Lab) -> None:
    """systemd fails a unit that restarts 5 times in 10 s (its start limit): a guest
    whose console-getty could not use its null console was "degraded" ~10 s after
    boot, so any check of the host after that failed."""
    h = by_name(lab)["h3"]
    up = int(ssh(lab, h, "ps -o etimes= -p 1").stdout.strip())
    time.sleep(max(0, 15 - up))
    out = ssh(lab, h, "systemctl is-system-running; systemctl --failed --plain --no-legend")
    assert out.stdout.split() == ["running"], out.stdout


def test_the_host_key_is_checked_strictly(lab: Lab, tmp_path: Any) -> None:
    h = by_name(lab)["h2"]
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    out = ssh(lab, h, "true", known_hosts=str(empty))
    assert out.returncode != 0 and "Host key verification failed" in out.stderr
    # the lab's known_hosts lists exactly the key the guest's sshd serves
    scanned = subprocess.run(["ssh-keyscan", "-t", "ed25519", h.address],
                             capture_output=True, text=True, timeout=10).stdout.split()
    with open(lab.known_hosts) as f:
        listed = [ln.split() for ln in f if ln.startswith(h.address + " ")]
    assert listed == [scanned[:3]]


def test_its_file_system_is_the_rootfs_not_the_machines(lab: Lab, tmp_path: Any) -> None:
    h = by_name(lab)["h2"]
    marker = f"/tmp/fleetd-lab-marker-{os.getpid()}"
    with open(marker, "w") as f:
        f.write("machine")
    try:
        out = ssh(lab, h, f"cat /etc/os-release; echo ---; test -e {marker} && echo MARKER; "
                          f"test -e {ROOT} && echo REPO; test -e /opt/fleetd && echo SOURCE; "
                          "cat /.fleetd-lab.json >/dev/null && echo ROOTFS")
    finally:
        os.unlink(marker)
    assert out.returncode == 0, out.stderr
    os_release, _, probes = out.stdout.partition("---\n")
    with open(os.path.join(systemd_host.rootfs(), "etc", "os-release")) as f:
        assert os_release == f.read()
    assert probes.split() == ["ROOTFS"]  # no marker, no repo, no source mount


def test_python3_and_psutil_are_as_built(lab: Lab) -> None:
    hosts = by_name(lab)
    for name, has_psutil in (("h2", True), ("h3", False)):
        out = ssh(lab, hosts[name], "python3 --version; "
                  "python3 -c 'import psutil; print(\"psutil\", psutil.__version__)'; "
                  "dpkg-query -W -f '${db:Status-Status}\\n' python3-psutil")
        assert out.stdout.startswith("Python 3.11."), out
        if has_psutil:
            assert "psutil 5.9" in out.stdout and out.stdout.split()[-1] == "installed"
        else:
            assert "No module named 'psutil'" in out.stderr
            assert "psutil 5" not in out.stdout and "installed" not in out.stdout.split()


def test_fleetds_ssh_library_and_sftp_reach_it(lab: Lab) -> None:
    """What the bootstrap will do: asyncssh, strict known_hosts, an SFTP put, a run."""
    h = by_name(lab)["h3"]

    async def go() -> str:
        async with asyncssh.connect(h.address, username="root", client_keys=[lab.identity],
                                    known_hosts=lab.known_hosts) as conn:
            async with conn.start_sftp_client() as sftp, \
                    sftp.open("/root/hello.py", "w") as f:
                await f.write("import sys; print('hello from', sys.version_info[:2])\n")
            result = await conn.run("python3 /root/hello.py", check=True)
            return str(result.stdout)

    assert asyncio.run(go()).strip() == "hello from (3, 11)"


def test_up_refuses_more_systemd_hosts_than_hosts(tmp_path: Any) -> None:
    for kwargs, words in (({"systemd": 3}, "--systemd 3"),
                          ({"systemd": 1, "without_psutil": 2}, "--without-psutil 2")):
        with pytest.raises(LabError, match=words):
            Lab(str(tmp_path), prefix="fu", subnet="10.87.0").up(2, **kwargs)
    assert not os.path.exists(os.path.join(tmp_path, "lab.json"))


# --- the CLI, end to end ----------------------------------------------------------------
def fleetctl(*args: str, env: Dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FLEETCTL, *args], capture_output=True, text=True, env=env,
                          cwd=ROOT, timeout=180)


def cgroup_dirs(prefix: str) -> List[str]:
    """The lab hosts' cgroup subtrees, a few levels below any hierarchy's root (they hang
    below the cgroup of the process that booted them)."""
    found: List[str] = []
    for depth in range(5):
        found += glob.glob(os.path.join("/sys/fs/cgroup", *["*"] * (depth + 1),
                                        f"fleetd-lab-{prefix}-h*"))
    return found


def mounts_mentioning(path: str) -> List[str]:
    found = []
    for mountinfo in glob.glob("/proc/[0-9]*/mountinfo"):
        try:
            with open(mountinfo) as f:
                if path in f.read():
                    found.append(mountinfo)
        except OSError:
            continue
    return found


def test_cli_up_status_down_leaves_nothing(tmp_path: Any) -> None:
    lab_dir = str(tmp_path / "lab")
    env = dict(os.environ, FLEETCTL_ENDPOINT=f"unix://{tmp_path}/fleetd.sock",
               FLEET_LAB_DIR=lab_dir)
    Lab(lab_dir, prefix="fv", subnet="10.86.0").down()  # a crashed earlier run's
    began = time.monotonic()
    up = fleetctl("lab", "up", "--hosts", "2", "--systemd", "1", "--prefix", "fv",
                  "--subnet", "10.86.0", env=env)
    TIMINGS["fleetctl lab up --hosts 2 --systemd 1 (with fleetd)"] = time.monotonic() - began
    guest_pids: List[int] = []
    cgroups: List[str] = []
    try:
        assert up.returncode == 0, up.stderr
        assert "Registered h1 with fleetd; installed the agent on h2; all up" in up.stdout
        machines = fleetctl("list-machines", env=env).stdout.splitlines()[1:]
        assert [ln.split()[0] for ln in machines] == ["h1", "h2"]  # h2 by bootstrap

        status = fleetctl("lab", "status", env=env)
        assert status.returncode == 0, status.stderr
        rows = {ln.split()[0]: ln for ln in status.stdout.splitlines()[1:] if ln[:1] == "h"}
        the_lab = Lab(lab_dir)
        h2 = the_lab.host(2)
        pid1 = the_lab.pid1(h2)
        assert pid1 and rows["h2"].split()[1:4] == ["systemd", "(pid", f"{pid1})"]
        assert rows["h1"].split()[1] == "netns" and "down" not in status.stdout
        guest_pids = the_lab.pids(h2)
        assert pid1 in guest_pids and len(guest_pids) > 3  # launcher, systemd, sshd, ...
        guest = the_lab.info()["guests"]["h2"]
        assert mounts_mentioning(guest["dir"])  # its overlay, in the guest's namespace
        cgroups = guest["cgroups"]
        assert cgroups and set(cgroups) <= set(cgroup_dirs("fv"))
        out = ssh(the_lab, h2, "cat /proc/1/comm")
        assert out.stdout.strip() == "systemd", out.stderr
    finally:
        began = time.monotonic()
        down = fleetctl("lab", "down", env=env)
        TIMINGS["fleetctl lab down (1 systemd host, fleetd)"] = time.monotonic() - began
    assert down.returncode == 0, down.stderr
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert [n for n in netns.split() if n.startswith("fv-")] == []
    wait_for("the guest's processes to be gone",
             lambda: not [p for p in guest_pids if alive(p)], 10)
    assert mounts_mentioning(lab_dir) == []  # the overlay (upperdir=...) too
    assert [c for c in cgroups if os.path.exists(c)] == [] and cgroup_dirs("fv") == []
    assert not os.path.exists(os.path.join(lab_dir, "hosts"))
