"""What the exec driver gives a program, the way systemd 252 gives it (issue 14 §1, shown
against a real systemd in tests/integration/test_same_process.py): UMask= (read with
systemd's syntax, refused with file:line otherwise; systemd's 0022 when unset, not the
agent's own), and $HOME/$SHELL as systemd's USER_CREDS_CLEAN keeps them."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fleetd.agent.specs import SpecError, check_spec
from fleetd.drivers import identity, spare
from fleetd.drivers.base import StartContext
from fleetd.drivers.exec import ExecDriver, base_environment
from fleetd.units.model import load
from fleetd.units.parser import UnitError
from fleetd.wire.unitspec import UnitConfig

SERVICE = "[Service]\nExecStart=/bin/true\n"


@pytest.mark.parametrize("value, mode", [("0027", 0o027), ("27", 0o027), ("0", 0),
                                         ("7777", 0o7777), (" 0077 ", 0o077),
                                         ("00022", 0o022)])
def test_umask_is_read_as_systemd_reads_it(value: str, mode: int) -> None:
    assert load("a.service", SERVICE + f"UMask={value}\n", "a.service").config["umask"] == mode


def test_no_umask_leaves_the_drivers_default() -> None:
    assert load("a.service", SERVICE, "a.service").config["umask"] is None


@pytest.mark.parametrize("value", ["08", "17777", "0x1f", "-22", "u=rwx", "²"])
def test_a_umask_that_is_no_octal_mode_is_refused_naming_the_line(value: str) -> None:
    with pytest.raises(UnitError, match=r"^a\.service:3: UMask=: .* is not an octal mode"):
        load("a.service", SERVICE + f"UMask={value}\n", "a.service")


@pytest.mark.parametrize("umask, ok", [(0o027, True), (0o7777, True), (0o10000, False),
                                       (-1, False), ("0027", False)])
def test_the_agent_checks_the_umask_it_is_sent(umask: Any, ok: bool) -> None:
    spec = {"name": "a.service", "hash": "ab", "want": "running", "driver": "exec",
            "config": {"commands": [{"words": ["/bin/true"]}], "umask": umask}}
    if ok:
        check_spec(spec)
    else:
        with pytest.raises(SpecError, match="umask"):
            check_spec(spec)


def _run(tmp_path: Path, config: UnitConfig) -> str:
    """What /bin/sh started by the exec driver prints (no cgroup backend)."""
    log = tmp_path / "unit.log"
    ctx = StartContext(unit="u.service", machine_id="m", log_path=str(log),
                       invocation_id="i1")
    handle = ExecDriver().start(config, ctx)
    deadline = time.monotonic() + 10
    while os.waitpid(handle.pid, os.WNOHANG) == (0, 0):
        assert time.monotonic() < deadline, "the program did not end"
        time.sleep(0.01)
    return log.read_text()


@pytest.mark.parametrize("umask, shown", [(0o027, "0027"), (0o077, "0077"), (None, "0022")])
def test_the_program_runs_with_the_units_umask(tmp_path: Path, umask: Any, shown: str
                                               ) -> None:
    """None: systemd's 0022 for services, whatever the agent's own umask is."""
    old = os.umask(0o002)
    try:
        out = _run(tmp_path, {"commands": [{"words": ["/bin/sh", "-c", "umask"]}],
                              "umask": umask})
    finally:
        os.umask(old)
    assert out.strip() == shown


def test_a_prepared_process_takes_the_units_umask(tmp_path: Path) -> None:
    script = spare.script("/bin/sh", ["/bin/sh", "-c", "umask"], {}, str(tmp_path),
                          str(tmp_path / "unit.log"), None, umask=0o027)
    assert script is not None
    subprocess.run([spare.SH], input=script, env={}, cwd="/", check=True, timeout=20)
    assert (tmp_path / "unit.log").read_text().strip() == "0027"


@pytest.mark.skipif(os.geteuid() != 0, reason="systemd's rule for an agent run as root")
def test_no_home_without_user_from_an_agent_run_as_root() -> None:
    ctx = StartContext(unit="u.service", machine_id="m", log_path="/dev/null",
                       invocation_id="i1")
    assert "HOME" not in base_environment(ctx)


@pytest.mark.parametrize("home, kept", [("/usr/sbin", "/usr/sbin"), ("/", None), ("", None),
                                        ("relative", None), ("//", None),
                                        ("/nonexistent", "/nonexistent")])
def test_home_is_kept_as_systemd_keeps_it(home: str, kept: Any) -> None:
    assert identity.clean_home(home) == kept


@pytest.mark.parametrize("shell, kept", [("/bin/bash", "/bin/bash"), ("/bin/sh", "/bin/sh"),
                                         ("/usr/sbin/nologin", None), ("/sbin/nologin", None),
                                         ("/bin/false", None), ("/usr/bin/true", None),
                                         ("", None), ("sh", None)])
def test_shell_is_kept_as_systemd_keeps_it(shell: str, kept: Any) -> None:
    assert identity.clean_shell(shell) == kept


def test_a_user_without_home_or_shell_gets_neither_variable() -> None:
    creds = identity.Credentials(uid=1, gid=1, groups=(1,), user="daemon")
    assert creds.environment() == {"USER": "daemon", "LOGNAME": "daemon"}
    creds = identity.Credentials(uid=1, gid=1, groups=(1,), user="u", home="/h",
                                 shell="/bin/sh")
    assert creds.environment() == {"USER": "u", "LOGNAME": "u", "HOME": "/h",
                                   "SHELL": "/bin/sh"}


# --- Limit*=, Nice=, OOMScoreAdjust= (parsed: tests/unit/test_process_settings.py) ---------

REPORT = ("import os, resource; "
          "print(resource.getrlimit(resource.RLIMIT_CORE), "
          "resource.getrlimit(resource.RLIMIT_NPROC), os.nice(0), "
          "open('/proc/self/oom_score_adj').read().strip())")


def test_the_program_gets_its_limits_nice_and_oom_score(tmp_path: Path) -> None:
    cfg: UnitConfig = {"commands": [{"words": [sys.executable, "-c", REPORT]}],
                       "rlimits": {"CORE": [4096, 8192], "NPROC": [300, 400]},
                       "nice": 7, "oom_score_adjust": 345}
    assert _run(tmp_path, cfg).strip() == "(4096, 8192) (300, 400) 7 345"


def test_without_them_the_program_keeps_the_agents(tmp_path: Path) -> None:
    cfg: UnitConfig = {"commands": [{"words": [sys.executable, "-c", REPORT]}]}
    with open("/proc/self/oom_score_adj") as f:
        oom = f.read().strip()
    core, nproc = (resource.getrlimit(r) for r in (resource.RLIMIT_CORE, resource.RLIMIT_NPROC))
    assert _run(tmp_path, cfg).strip() == f"{core} {nproc} {os.nice(0)} {oom}"
