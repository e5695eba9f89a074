"""Limit*=, Nice= and OOMScoreAdjust= (issue 14 §1): read with systemd 252's syntax
(fleetd.units.process), refused with file:line otherwise, checked by the agent, and set
on the exec driver's program (fleetd.drivers.procsetup) - shown against a real systemd in
tests/integration/test_same_process.py. Before, the exec driver silently ignored them."""

from __future__ import annotations

import resource
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from fleetd.agent.specs import SpecError, check_spec
from fleetd.drivers import procsetup, spare
from fleetd.units import process
from fleetd.units.model import load
from fleetd.units.parser import UnitError
from fleetd.wire.unitspec import RLIMITS

SERVICE = "[Service]\nExecStart=/bin/true\n"


def config(*lines: str) -> Dict[str, Any]:
    return dict(load("a.service", SERVICE + "".join(f"{x}\n" for x in lines),
                     "a.service").config)


def test_every_limit_option_has_its_key_on_the_wire() -> None:
    assert sorted(o[len("Limit"):].upper() for o in process.RLIMITS) == sorted(RLIMITS)


@pytest.mark.parametrize("line, key, pair", [
    ("LimitCORE=1M:2M", "CORE", [1 << 20, 2 << 20]),
    ("LimitCORE=infinity", "CORE", [None, None]),
    ("LimitCORE=0", "CORE", [0, 0]),
    ("LimitAS=1.5G:infinity", "AS", [3 << 29, None]),
    ("LimitNPROC=300:400", "NPROC", [300, 400]),
    ("LimitLOCKS=5000", "LOCKS", [5000, 5000]),
    ("LimitCPU=1h:infinity", "CPU", [3600, None]),
    ("LimitCPU=1.5", "CPU", [2, 2]),  # seconds, rounded up as systemd does
    ("LimitRTTIME=2s", "RTTIME", [2_000_000, 2_000_000]),
    ("LimitRTTIME=500", "RTTIME", [500, 500]),  # a bare number is microseconds
    ("LimitNICE=-5", "NICE", [25, 25]),  # a nice level: stored as 20 - level
    ("LimitNICE=+19", "NICE", [1, 1]),
    ("LimitNICE=40", "NICE", [40, 40]),  # the raw limit
])
def test_limits_are_read_as_systemd_reads_them(line: str, key: str, pair: List[Any]) -> None:
    assert config(line)["rlimits"] == {key: pair}


@pytest.mark.parametrize("line, why", [
    ("LimitCORE=1Q", "is not a size"),
    ("LimitCORE=2M:1M", "the soft limit is above the hard one"),
    ("LimitCPU=infinity:5", "the soft limit is above the hard one"),
    ("LimitNPROC=a", "want a whole number"),
    ("LimitNPROC=²", "want a whole number"),
    ("LimitRTTIME=1:2:3", "want N, SOFT:HARD or infinity"),
    ("LimitRTTIME=1:", "want N, SOFT:HARD or infinity"),
    ("LimitNICE=41", "from 0 to 40"),
    ("LimitNICE=-21", "from 0 to 20"),
    ("LimitCPU=1e999", "time"),
    ("LimitFSIZE=9999999E", "more than 8E"),
    ("Nice=20", "want a whole number from -20 to 19"),
    ("Nice=-21", "want a whole number from -20 to 19"),
    ("Nice=x", "want a whole number from -20 to 19"),
    ("OOMScoreAdjust=1001", "want a whole number from -1000 to 1000"),
    ("OOMScoreAdjust=٣", "want a whole number from -1000 to 1000"),
])
def test_bad_values_are_refused_naming_the_line(line: str, why: str) -> None:
    option = line.split("=", 1)[0]
    with pytest.raises(UnitError) as info:
        config(line)
    assert str(info.value).startswith(f"a.service:3: {option}=: "), str(info.value)
    assert why in str(info.value)


def test_nice_and_oom_score() -> None:
    got = config("Nice=-5", "OOMScoreAdjust=+300")
    assert (got["nice"], got["oom_score_adjust"]) == (-5, 300)
    assert (config()["nice"], config()["oom_score_adjust"], config()["rlimits"]) == \
        (None, None, {})


@pytest.mark.parametrize("field, value, ok", [
    ("rlimits", {"CORE": [1, 2]}, True), ("rlimits", {"CORE": [None, None]}, True),
    ("rlimits", {"NOFILE": [1, 2]}, False), ("rlimits", {"CORE": [-1, 2]}, False),
    ("rlimits", [], False), ("nice", -20, True), ("nice", 20, False),
    ("oom_score_adjust", 1000, True), ("oom_score_adjust", -1001, False),
])
def test_the_agent_checks_what_it_is_sent(field: str, value: Any, ok: bool) -> None:
    spec = {"name": "a.service", "hash": "ab", "want": "running", "driver": "exec",
            "config": {"commands": [{"words": ["/bin/true"]}], field: value}}
    if ok:
        check_spec(spec)
    else:
        with pytest.raises(SpecError, match=field):
            check_spec(spec)


def test_locks_is_known_where_python_does_not_name_it() -> None:
    assert procsetup.rlimits({"rlimits": {"LOCKS": [5, None]}}) == \
        [(10, (5, resource.RLIM_INFINITY))]


@pytest.mark.parametrize("oom, shown", [(250, "250"), (None, None)])
def test_a_prepared_process_takes_the_units_oom_score(tmp_path: Path, oom: Optional[int],
                                                      shown: Optional[str]) -> None:
    script = spare.script("/bin/cat", ["/bin/cat", "/proc/self/oom_score_adj"], {},
                          str(tmp_path), str(tmp_path / "unit.log"), None, oom_score_adj=oom)
    assert script is not None
    subprocess.run([spare.SH], input=script, env={}, cwd="/", check=True, timeout=20)
    with open("/proc/self/oom_score_adj") as f:
        agent = f.read().strip()
    assert (tmp_path / "unit.log").read_text().strip() == (shown or agent)


def test_a_spare_waits_at_its_own_oom_score_not_the_units() -> None:
    """The spare path's step leaves OOMScoreAdjust= to the script: set in the spare's
    preexec it would overwrite the -1000 the spare waits at (spare.prepare)."""
    config: Any = {"oom_score_adjust": 300}
    prepared = spare.prepare(procsetup.step(config, oom_score=False), "run0")
    try:
        with open(f"/proc/{prepared.pid}/oom_score_adj") as f:
            assert f.read().strip() != "300"
    finally:
        prepared.discard()
