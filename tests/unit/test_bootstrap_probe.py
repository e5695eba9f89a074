"""The host probe's output -> HostReport -> the problems a user reads; the payload and its
version id; the choice of a psutil wheel."""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Dict, List

import pytest

from fleetd.bootstrap import bundle, probe
from fleetd.bootstrap.install import unit_file
from fleetd.bootstrap.target import BootstrapError, Target, parse_agent_command

WHERE = "root@10.0.0.5"
PREFIX, STATE = "/opt/fleetd-agent", "/var/lib/fleet-agent"
GOOD = """\
probe=1
uid=0
user=root
arch=x86_64
kernel=6.1.0-18-amd64
pid1=systemd
run_systemd=1
cgroup_fs=cgroup2fs
python=/usr/bin/python3 3.11.2 5.9.4 glibc:2.36
prefix_existing=/opt
prefix_writable=1
prefix_free_kb=9000000
prefix_mount=/
state_existing=/var/lib
state_writable=1
state_free_kb=9000000
state_mount=/
units_existing=/etc/systemd/system
units_writable=1
units_free_kb=9000000
units_mount=/
service_active=inactive
java=/usr/lib/jvm/java-17-openjdk-amd64 17.0.9
probe_end=1
"""


def report(text: str = GOOD, **changes: str) -> probe.HostReport:
    lines = dict(line.split("=", 1) for line in text.splitlines() if not
                 line.startswith(("python=", "java=")))
    extra = [line for line in text.splitlines() if line.startswith(("python=", "java="))]
    for key, value in changes.items():
        if key == "python":
            extra = [line for line in extra if not line.startswith("python=")]
            extra += [f"python={v}" for v in value.split("|") if v]
        elif value == "":
            lines.pop(key, None)
        else:
            lines[key] = value
    out = "\n".join(f"{k}={v}" for k, v in lines.items() if k != "probe_end")
    return probe.parse(WHERE, out + "\n" + "\n".join(extra) + "\nprobe_end=1\n", PREFIX, STATE)


def problems(r: probe.HostReport, wheel: bool = False) -> List[str]:
    return r.problems(4096, 8192, wheel, "/srv/wheels")


def test_a_good_host() -> None:
    r = report()
    assert r.systemd and r.cgroups == "v2" and r.arch == "x86_64"
    assert r.python is not None and r.python.version == (3, 11, 2) and r.python.psutil_usable
    assert r.python.libc == ("glibc", "2.36")
    assert r.javas == (("/usr/lib/jvm/java-17-openjdk-amd64", "17.0.9"),)
    assert r.installed is None and not r.agent_running
    assert problems(r) == []
    assert r.summary() == {"arch": "x86_64", "kernel": "6.1.0-18-amd64", "systemd": True,
                           "cgroups": "v2", "python": "3.11.2 (/usr/bin/python3)",
                           "psutil": "5.9.4", "java": ["17.0.9"]}


def test_cgroup_layouts_and_systemd_need_both_signs() -> None:
    assert report(cgroup_fs="tmpfs").cgroups == "v1"
    assert report(cgroup_fs="tmpfs", cgroup_unified="1").cgroups == "hybrid"
    assert report(cgroup_fs="").cgroups == "none"
    assert not report(pid1="init").systemd
    assert not report(run_systemd="").systemd


def test_no_python() -> None:
    assert problems(report(python="")) == ["no python3 (needs Python 3.9+)"]
    # a python3 that would not even run counts as none
    assert problems(report(python="/usr/bin/python3 ? - -:-")) == \
        ["no python3 (needs Python 3.9+)"]


def test_too_old_python_and_a_newer_one_beside_it() -> None:
    old = "/usr/bin/python3 3.7.3 - glibc:2.28"
    assert problems(report(python=old)) == \
        ["Python 3.7.3 (/usr/bin/python3) is too old (needs 3.9+)"]
    r = report(python=f"{old}|/usr/bin/python3.9 3.9.16 5.9.0 glibc:2.28")
    assert r.python is not None and r.python.path == "/usr/bin/python3.9"
    assert problems(r) == []


def test_python3_is_preferred_when_new_enough() -> None:
    r = report(python="/usr/bin/python3 3.9.2 5.9.1 glibc:2.31|"
                      "/usr/local/bin/python3.12 3.12.1 - glibc:2.31")
    assert r.python is not None and r.python.path == "/usr/bin/python3"


def test_psutil_missing_or_old_needs_a_wheel() -> None:
    none = report(python="/usr/bin/python3 3.11.2 - glibc:2.36", arch="aarch64")
    assert problems(none) == ["no psutil on the host and no psutil wheel for aarch64 "
                              "(glibc 2.36) in the wheelhouse /srv/wheels"]
    assert problems(none, wheel=True) == []
    old = report(python="/usr/bin/python3 3.9.2 5.7.3 glibc:2.31")
    assert problems(old) == ["psutil 5.7.3 on the host is older than 5.9 and no psutil "
                             "wheel for x86_64 (glibc 2.31) in the wheelhouse /srv/wheels"]
    musl = report(python="/usr/bin/python3 3.11.6 - -:-")
    assert "no psutil wheel for x86_64 (a C library pip has no manylinux wheels for)" \
        in problems(musl)[0]


def test_read_only_no_space_and_small_space() -> None:
    ro = report(prefix_writable="0", prefix_existing="/opt", prefix_mount="/opt",
                prefix_error="mktemp: failed to create directory via template "
                             "'/opt/.fleetd-probe.XXXXXX': Read-only file system")
    assert problems(ro) == ["/opt is read-only"]
    ro_below = report(prefix_writable="0", prefix_existing="/opt/fleetd-agent",
                      prefix_mount="/opt", prefix_error="x: Read-only file system")
    assert problems(ro_below) == \
        ["/opt/fleetd-agent is read-only (on the file system mounted at /opt)"]
    full = report(prefix_writable="0", prefix_error="mktemp: No space left on device")
    assert problems(full) == ["no space left under /opt (needs 4 MiB)"]
    small = report(prefix_free_kb="2100")
    assert problems(small) == ["only 2 MiB free under /opt (needs 4 MiB)"]
    denied = report(state_writable="0", state_error="mktemp: Permission denied")
    assert problems(denied) == ["cannot write under /var/lib: mktemp: Permission denied"]


def test_every_problem_at_once_and_not_root() -> None:
    r = report(uid="1000", user="bob", python="", prefix_free_kb="10")
    assert problems(r) == [
        "installing the agent needs root, and bob is uid 1000 (add the machine as root@...)",
        "no python3 (needs Python 3.9+)",
        "only 0 MiB free under /opt (needs 4 MiB)",
    ]


def test_installed_version_and_a_running_agent() -> None:
    r = report(installed="0.1.0-abc", versions="0.1.0-abc 0.1.0-def ",
               agent_pid="77", agent_cmdline="/usr/bin/python3 -I /opt/fleetd-agent/current/"
                                             "bin/fleet-agent daemon --state-dir /x",
               service_file="1", service_active="active")
    assert r.installed == "0.1.0-abc" and r.versions == ("0.1.0-abc", "0.1.0-def")
    assert r.agent_running and r.service_file and r.service_active == "active"
    assert not report(agent_pid="77", agent_cmdline="/usr/sbin/nginx").agent_running


def test_output_that_is_not_the_probe_is_an_error() -> None:
    with pytest.raises(probe.ProbeError, match="did not run to its end"):
        probe.parse(WHERE, "probe=1\nuid=0\n", PREFIX, STATE)
    with pytest.raises(probe.ProbeError):
        probe.parse(WHERE, "sh: 1: Syntax error\n", PREFIX, STATE)


def test_the_probe_script_runs_here_and_parses(tmp_path: Path) -> None:
    prefix, state = tmp_path / "opt" / "fleetd-agent", tmp_path / "state"
    out = subprocess.run(probe.command(str(prefix), str(state), "fleet-agent.service"),
                         shell=True, input=probe.SCRIPT, capture_output=True, text=True,
                         check=True)
    r = probe.parse(WHERE, out.stdout, str(prefix), str(state))
    assert r.arch and r.paths["prefix"].existing == str(tmp_path)
    assert r.paths["prefix"].writable and r.paths["prefix"].free_kb
    assert r.pythons  # at least the python3 on PATH
    assert list(tmp_path.iterdir()) == []  # the write test left nothing


# --- the payload ----------------------------------------------------------------------
def test_the_payload_holds_the_agent_side_and_runs_alone(tmp_path: Path) -> None:
    b = bundle.build("/usr/bin/python3", suffix="")
    z = zipfile.ZipFile(io.BytesIO(b.data))
    names = set(z.namelist())
    assert {"VERSION", "bin/fleet-agent", "fleetd/__init__.py", "fleetd/protocol.py",
            "fleetd/agent/main.py", "fleetd/drivers/systemd.py", "fleetd/cgroups/v2.py",
            "fleetd/wire/execline.py"} <= names
    for daemon_side in ("fleetd/daemon/", "fleetd/engine/", "fleetd/cli/", "fleetd/bootstrap/",
                        "fleetd/units/parser.py", "fleetd/lab/"):
        assert not any(n.startswith(daemon_side) for n in names), daemon_side
    assert not any("__pycache__" in n for n in names)
    assert z.read("bin/fleet-agent").startswith(b"#!/usr/bin/python3 -I\n")
    assert z.getinfo("bin/fleet-agent").external_attr >> 16 == 0o755
    assert z.read("VERSION").decode().strip() == b.version
    # unpacked on its own (no fleetd on the path), the agent side imports and runs
    z.extractall(tmp_path)
    psutil_dir = str(Path(__import__("psutil").__file__).parent.parent)
    code = ("import sys; sys.path[:0] = [sys.argv[1], sys.argv[2]];"
            "import fleetd; assert fleetd.__file__.startswith(sys.argv[1]), fleetd.__file__;"
            + "".join(f"import {m};" for m in bundle.VERIFY_MODULES))
    subprocess.run([sys.executable, "-I", "-c", code, str(tmp_path), psutil_dir], check=True)
    out = subprocess.run([sys.executable, "-I", str(tmp_path / "bin" / "fleet-agent"),
                          "version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0.1.0"


def test_version_id_follows_the_code_and_the_suffix() -> None:
    files: Dict[str, bytes] = {"fleetd/__init__.py": b"x", "fleetd/agent/main.py": b"y"}
    same = bundle.version_id(dict(files))
    assert same == bundle.version_id(dict(reversed(list(files.items()))))
    assert same.startswith("0.1.0-") and len(same) == len("0.1.0-") + 12
    assert bundle.version_id({**files, "fleetd/agent/main.py": b"z"}) != same
    assert bundle.version_id(files, "test-2") != same
    # the #! line and a pushed psutil are per host, not part of the id
    a = bundle.build("/usr/bin/python3", suffix="s", files=files)
    b = bundle.build("/usr/local/bin/python3.12", suffix="s", files=files)
    assert a.version == b.version and a.data != b.data


def test_the_suffix_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    files = {"fleetd/__init__.py": b"x"}
    monkeypatch.setenv(bundle.SUFFIX_VARIABLE, "upgrade-1")
    assert bundle.build("/p", files=files).version == bundle.version_id(files, "upgrade-1")


def _wheel(directory: Path, name: str) -> Path:
    path = directory / name
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("psutil/__init__.py", "__version__ = 'w'\n")
        z.writestr("psutil-7.2.2.dist-info/METADATA", "Name: psutil\n")
    return path


def test_wheel_choice(tmp_path: Path) -> None:
    x86 = _wheel(tmp_path, "psutil-7.2.2-cp36-abi3-manylinux2010_x86_64.manylinux_2_12_x86_64."
                           "manylinux_2_28_x86_64.whl")
    old = _wheel(tmp_path, "psutil-5.9.8-cp36-abi3-manylinux_2_17_x86_64.manylinux2014_x86_64"
                           ".whl")
    arm = _wheel(tmp_path, "psutil-7.2.2-cp36-abi3-manylinux2014_aarch64.manylinux_2_17_"
                           "aarch64.manylinux_2_28_aarch64.whl")
    _wheel(tmp_path, "psutil-7.2.2-cp313-cp313t-manylinux2014_x86_64.whl")
    _wheel(tmp_path, "psutil-7.2.2.tar.gz")
    glibc = ("glibc", "2.31")
    assert bundle.pick_wheel(str(tmp_path), "x86_64", glibc, (3, 9, 2)) == \
        bundle.Wheel(str(x86), "7.2.2")
    assert bundle.pick_wheel(str(tmp_path), "aarch64", glibc, (3, 11)) == \
        bundle.Wheel(str(arm), "7.2.2")
    assert bundle.pick_wheel(str(tmp_path), "aarch64", ("glibc", "2.16"), (3, 11)) is None
    assert bundle.pick_wheel(str(tmp_path), "x86_64", ("glibc", "2.16"), (3, 11)) == \
        bundle.Wheel(str(x86), "7.2.2")  # manylinux2010: glibc 2.12
    assert bundle.pick_wheel(str(tmp_path), "x86_64", ("", ""), (3, 11)) is None  # musl
    assert bundle.pick_wheel(str(tmp_path), "riscv64", glibc, (3, 11)) is None
    assert bundle.pick_wheel(str(tmp_path / "missing"), "x86_64", glibc, (3, 11)) is None
    old.unlink()
    b = bundle.build("/usr/bin/python3", bundle.Wheel(str(x86), "7.2.2"), suffix="",
                     files={"fleetd/__init__.py": b""})
    names = zipfile.ZipFile(io.BytesIO(b.data)).namelist()
    assert "lib/psutil/__init__.py" in names
    assert not any("dist-info" in n for n in names)


# --- the registered agent command and the service ----------------------------------------
def test_agent_command_round_trip() -> None:
    t = Target()
    assert t.agent_command(True) == ("/opt/fleetd-agent/current/bin/fleet-agent attach "
                                     "--state-dir /var/lib/fleet-agent "
                                     "--systemd-service fleet-agent.service")
    assert parse_agent_command(t.agent_command(True)) == (t, True)
    other = Target(prefix="/srv/fa", state_dir="/srv/fa-state")
    assert parse_agent_command(other.agent_command(False)) == (other, False)
    assert parse_agent_command("fleet-agent attach") is None
    assert parse_agent_command("env PYTHONPATH=/x python3 -m fleetd.agent attach") is None


def test_unsafe_targets_are_refused() -> None:
    for prefix in ("/opt", "relative/path", "/opt/with space", "/var/lib", "/a/../etc"):
        with pytest.raises(BootstrapError):
            Target(prefix=prefix).check()
    Target(prefix="/opt/fleetd-agent").check()


def test_the_unit_file_never_kills_the_supervised_programs() -> None:
    text = unit_file(Target())
    assert "\nKillMode=process\n" in text
    assert "\nExecStart=/opt/fleetd-agent/current/bin/fleet-agent daemon --state-dir " \
           "/var/lib/fleet-agent\n" in text
    assert "\nWantedBy=multi-user.target\n" in text


def test_numbers_the_host_prints_are_read_as_numbers_or_not_at_all() -> None:
    """The probe's output is the host's word: ``²`` passes str.isdigit() and int() refuses
    it; neither it nor other non-ASCII digits may end the add with a traceback."""
    r = report(uid="²", agent_pid="٣", agent_cmdline="fleet-agent", prefix_free_kb="1e9")
    assert r.uid is None and r.agent_pid is None and r.paths["prefix"].free_kb is None


def test_a_service_file_is_ours_by_its_first_line() -> None:
    assert report(service_file="1", service_ours="1").service_ours
    assert not report(service_file="1").service_ours
    assert unit_file(Target()).startswith(probe.UNIT_MARK + ";")
