"""Hostile unit files: every number an option holds is read one way (ASCII digits,
finite, in range) and every refusal names ``file:line: Option=:``; one rule for names;
and one bad unit in the registry never stops the engine from placing the others."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Dict, List

import pytest

from fleetd.cgroups.limits import Limits
from fleetd.engine.loop import Engine
from fleetd.registry.base import INACTIVE, LAUNCHED, MachineRecord, UnitInput
from fleetd.registry.sqlite import SqliteRegistry
from fleetd.testing.registry import at_once
from fleetd.units.model import content_hash, load, parse_name
from fleetd.units.parser import UnitError
from fleetd.units.timespan import TimespanError, parse_timespan
from fleetd.units.validate import validate

SRC = "/units/a.service"
SERVICE = "[Service]\nExecStart=/bin/true\n"
# text before the hostile line, and that line's number, for each section's options
BEFORE = {
    "Service": (SERVICE, 3),
    "Unit": ("[Unit]\n", 2),
    "X-Fleet": (SERVICE + "[X-Fleet]\n", 4),
    "X-Check": (SERVICE + "[X-Check]\nType=tcp\nAddress=127.0.0.1:80\n", 6),
}
TOO_MANY_DIGITS = "9" * 5000  # int() refuses more than 4300 digits with a ValueError


def refusal(section: str, line: str) -> str:
    before, at = BEFORE[section]
    text = before + line + "\n" + (SERVICE if section == "Unit" else "")
    with pytest.raises(UnitError) as info:
        load("a.service", text, SRC)
    message = str(info.value)
    option = line.split("=", 1)[0]
    assert message.startswith(f"{SRC}:{at}: {option}=: "), message
    return message


# --- numbers --------------------------------------------------------------------------

HOSTILE_WHOLE = ["²", "٣", "nan", "inf", "1e3", "0x10", "1_000", TOO_MANY_DIGITS, "-1"]


@pytest.mark.parametrize("section, option", [
    ("Unit", "StartLimitBurst"), ("Service", "StartLimitBurst"),
    ("Service", "RestartSteps"), ("Service", "CPUWeight"), ("Service", "TasksMax"),
    ("Service", "LimitNOFILE"), ("X-Fleet", "RescheduleAttempts"),
    ("X-Check", "FailureThreshold"), ("X-Check", "SuccessThreshold"),
])
@pytest.mark.parametrize("value", HOSTILE_WHOLE, ids=lambda v: v[:8])
def test_whole_numbers_are_ascii_digits_in_range(section: str, option: str, value: str
                                                 ) -> None:
    """``isdigit()`` took ``²`` and ``int()`` then refused it: an answer 500."""
    message = refusal(section, f"{option}={value}")
    assert "want" in message or "not" in message


@pytest.mark.parametrize("line, why", [
    ("CPUQuota=nan%", "want a number from 0 to 1000000, not 'nan'"),
    ("CPUQuota=inf%", "not 'inf'"),
    ("CPUQuota=1e999%", "not '1e999'"),
    ("CPUQuota=٣%", "not '٣'"),
    ("CPUQuota=2000000%", "from 0 to 1000000"),
    ("MemoryMax=nan%", "not 'nan'"),
    ("MemoryMax=1e999%", "not '1e999'"),
    ("MemoryMax=" + "9" * 400, "want a number of at least 0"),
    ("MemoryMax=9999999E", "more than 8E"),
    ("MemoryMax=²", "is not a size"),
    ("TasksMax=nan%", "not 'nan'"),
    ("TasksMax=5000000", "from 1 to 4194304"),
    ("CPUWeight=10001", "from 1 to 10000"),
    ("LimitNOFILE=1:²", "want N, SOFT:HARD or infinity"),
    ("LimitNOFILE=" + TOO_MANY_DIGITS, "want a whole number"),
    ("SuccessExitStatus=0 ²", "'²' is neither an exit status"),
    ("SuccessExitStatus=" + TOO_MANY_DIGITS, "is not an exit status (0-255)"),
    ("SuccessExitStatus=256", "is not an exit status (0-255)"),
    ("KillSignal=" + TOO_MANY_DIGITS, "unknown signal"),
    ("RestartSec=infinity", "must be a finite time span"),
    ("StartLimitIntervalSec=infinity", "must be a finite time span (0 turns the start"),
    ("RestartSec=٣s", "invalid time span"),
    ("TimeoutStopSec=" + "9" * 400, "invalid time span"),
    ("TimeoutStopSec=100000w", "longer than 87600h (ten years)"),
    ("RestartSteps=10001", "from 0 to 10000"),
])
def test_service_numbers_are_finite_and_in_range(line: str, why: str) -> None:
    """NaN and 1e999 reached the scheduler (every engine pass failed) or overflowed."""
    assert why in refusal("Service", line)


@pytest.mark.parametrize("section, line, why", [
    ("X-Check", "Port=²", "the port: want a whole number from 1 to 65535, not '²'"),
    ("X-Check", "Interval=" + "9" * 400, "invalid time span"),
    ("X-Check", "StartGrace=٣", "invalid time span"),
    ("X-Fleet", "RescheduleAttempts=²", "from 0 to 10000, not '²'"),
    ("X-Fleet", "RescheduleDelaySec=1e999", "unknown time unit 'e'"),
    ("X-Fleet", "FenceAfterSec=" + "9" * 400 + "s", "invalid time span"),
])
def test_fleet_and_check_numbers_are_finite_and_in_range(section: str, line: str, why: str
                                                         ) -> None:
    assert why in refusal(section, line)


def test_a_port_in_a_url_is_read_the_same_way() -> None:
    text = SERVICE + "[X-Check]\nType=http\nURL=http://127.0.0.1:٣/\n"
    with pytest.raises(UnitError, match=r":5: URL=: the port: want a whole number"):
        load("a.service", text, SRC)


@pytest.mark.parametrize("line, key, value", [
    ("CPUQuota=1e3%", "cpu_quota", 10.0),
    ("CPUWeight=10000", "cpu_weight", 10000),
    ("TasksMax=4194304", "tasks_max", 4194304),
    ("MemoryMax=1.5G", "memory_max", 3 << 29),
    ("LimitNOFILE=1024:4096", "nofile", [1024, 4096]),
])
def test_numbers_in_range_still_pass(line: str, key: str, value: object) -> None:
    assert load("a.service", SERVICE + line + "\n").config["limits"][key] == value


@pytest.mark.parametrize("text", ["٣s", "1٣min", "1e3", "nan", "9" * 31])
def test_time_spans_take_ascii_digits_only(text: str) -> None:
    with pytest.raises(TimespanError):
        parse_timespan(text)


def test_time_spans_up_to_ten_years_and_infinity_pass() -> None:
    assert parse_timespan("520w") == 520 * 604800
    assert parse_timespan("infinity") == float("inf")
    with pytest.raises(TimespanError, match="say infinity for none"):
        parse_timespan("600w")


@pytest.mark.parametrize("limits", [
    {"cpu_quota": float("nan")}, {"cpu_quota": float("inf")}, {"cpu_quota": "0.5"},
    {"cpu_weight": True}, {"memory_max": 1.5}, {"tasks_max_percent": float("nan")},
])
def test_the_agent_refuses_limits_that_are_no_numbers(limits: Dict[str, Any]) -> None:
    """A spec from a fleetd that let ``nan`` through must not reach cgroup files."""
    with pytest.raises(ValueError):
        Limits.from_config(limits)


@pytest.mark.parametrize("value", ["nan", "inf", "1e999", "²", "0"])
def test_fleetctl_waits_only_a_finite_time(value: str) -> None:
    """click's FloatRange took ``--timeout nan``: a NaN deadline, and fleetd asked to
    wait ``timeout=nan``."""
    from click.testing import CliRunner

    from fleetd.cli.main import cli

    result = CliRunner().invoke(cli, ["--endpoint", "unix:///nonexistent", "start",
                                      "--timeout", value, "a.service"])
    assert result.exit_code == 2, result.output
    assert "Invalid value for '--timeout': want a number from 0.1 to" in result.output


# --- names ----------------------------------------------------------------------------

@pytest.mark.parametrize("name, why", [
    (".hidden.service", "not beginning with . or -"),
    ("-x.service", "not beginning with . or -"),
    ("a" * 237 + ".service", "invalid unit name (245 characters)"),
])
def test_names_follow_the_one_rule_at_submit(name: str, why: str) -> None:
    with pytest.raises(UnitError) as info:
        validate(name, SERVICE, {}, "units/" + name[:20])
    assert why in str(info.value)
    with pytest.raises(UnitError, match="invalid unit name"):
        parse_name(name)


def test_a_refused_name_is_shown_short_and_escaped() -> None:
    """The name began its own error as typed: 5000 characters, or a terminal escape."""
    for name in ("a" * 5000 + ".service", "x\x1b[2J.service"):
        with pytest.raises(UnitError) as info:
            parse_name(name)
        assert "\x1b" not in str(info.value) and len(str(info.value)) < 300


@pytest.mark.parametrize("line", [
    "MachineOf=.hidden.service", "Replaces=" + "b" * 237 + ".service",
    "Conflicts=.hidden.service", "MachineOf=web@*.service",
])
def test_names_in_x_fleet_follow_the_rule(line: str) -> None:
    assert "invalid unit name" in refusal("X-Fleet", line)


def test_conflicts_still_take_globs() -> None:
    unit = load("web@1.service", SERVICE + "[X-Fleet]\nConflicts=web@*.service db?.service\n")
    assert unit.requirements.conflicts == ("web@*.service", "db?.service")


# --- text ---------------------------------------------------------------------------

def test_a_lone_surrogate_is_refused_naming_its_line() -> None:
    """JSON carries "\\ud800", a file cannot: hashing it raised UnicodeEncodeError."""
    with pytest.raises(UnitError, match=r"^/units/a.service:3: not UTF-8 text: a lone "
                                        r"surrogate U\+D800$"):
        validate("a.service", SERVICE + "Description=\ud800\n", {}, SRC)


@pytest.mark.parametrize("separator", ["\u2028", "\x0c", "\x85", "\x1e"])
def test_lines_end_where_systemd_ends_them(separator: str) -> None:
    """str.splitlines() broke a value at U+2028 and friends, and numbered lines
    differently from the user's editor; systemd breaks at \\n and \\r only."""
    unit = load("a.service", f"[Unit]\nDescription=a{separator}b\n" + SERVICE)
    assert unit.description == f"a{separator}b"
    with pytest.raises(UnitError, match=r":5: expected 'Key=Value'"):
        load("a.service", f"[Unit]\nDescription=a{separator}b\n" + SERVICE + "oops\n")


# --- the engine -----------------------------------------------------------------------

def _engine(tmp_path: Path) -> tuple[SqliteRegistry, Engine, Dict[str, List[Dict[str, Any]]]]:
    registry = SqliteRegistry(str(tmp_path / "registry.db"))
    at_once(registry.add_machine(MachineRecord(name="h1", address="10.0.0.1", port=22, user="root",
                                       identity=None, known_hosts=None,
                                       agent_command="fleet-agent", metadata={})))
    at_once(registry.update_machine("h1", state="up", facts={"cpus": 4, "memory_bytes": 1 << 33}))
    pushed: Dict[str, List[Dict[str, Any]]] = {}
    engine = Engine(registry, lambda m, specs: pushed.__setitem__(m, specs), lambda: None)
    return registry, engine, pushed


def _store(registry: SqliteRegistry, name: str, text: str) -> None:
    """As an older fleetd stored it: straight into the registry, never validated."""
    at_once(registry.put_units([UnitInput(name, text, content_hash(text))], LAUNCHED))


@pytest.mark.parametrize("poison", [
    "CPUQuota=nan%", "CPUQuota=1e999%", "StartLimitBurst=²", "MemoryMax=" + "9" * 400,
])
def test_one_poisoned_unit_never_stops_the_others(tmp_path: Path, poison: str) -> None:
    registry, engine, pushed = _engine(tmp_path)
    _store(registry, "bad.service", SERVICE + poison + "\n")
    _store(registry, "good.service", SERVICE)
    asyncio.run(_pass(engine))
    good, bad = registry.get_unit("good.service"), registry.get_unit("bad.service")
    assert good is not None and good.machine == "h1"
    assert [s["name"] for s in pushed["h1"]] == ["good.service"]
    assert bad is not None and bad.machine is None
    assert bad.reason.startswith("invalid: bad.service:3: ") and poison.split("=")[0] in \
        bad.reason


def test_a_unit_that_breaks_scheduling_alone_is_set_aside(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch
                                                          ) -> None:
    """Whatever a unit holds that no rule foresaw: here the scheduler fails on it."""
    from fleetd.engine import cluster as scheduler

    registry, engine, pushed = _engine(tmp_path)
    _store(registry, "odd.service", SERVICE + "CPUQuota=20%\n")
    _store(registry, "good.service", SERVICE)
    real = scheduler.millicpus

    def millicpus(cpus: float) -> int:
        if cpus == 0.2:
            raise ArithmeticError("a bug only odd.service sets off")
        return real(cpus)

    monkeypatch.setattr(scheduler, "millicpus", millicpus)
    asyncio.run(_pass(engine))
    good, odd = registry.get_unit("good.service"), registry.get_unit("odd.service")
    assert good is not None and good.machine == "h1"
    assert odd is not None and odd.machine is None
    assert "a bug only odd.service sets off" in odd.reason
    assert [s["name"] for s in pushed["h1"]] == ["good.service"]
    asyncio.run(_pass(engine))  # set aside for good, until its content changes
    assert registry.get_unit("good.service").machine == "h1"  # type: ignore[union-attr]


def test_machine_facts_that_are_no_numbers_count_as_unknown(tmp_path: Path) -> None:
    """An agent's NaN among its facts broke every pass, like a unit's NaN did."""
    registry, engine, _ = _engine(tmp_path)
    at_once(registry.update_machine("h1", facts={"cpus": float("nan"), "memory_bytes": "lots"}))
    _store(registry, "good.service", SERVICE)
    _store(registry, "cpu.service", SERVICE + "CPUQuota=20%\n")
    asyncio.run(_pass(engine))
    good, cpu = registry.get_unit("good.service"), registry.get_unit("cpu.service")
    assert good is not None and good.machine == "h1"
    assert cpu is not None and cpu.machine is None and "reports its CPUs" in cpu.reason


def test_templates_are_never_placed(tmp_path: Path) -> None:
    registry, engine, pushed = _engine(tmp_path)
    at_once(registry.put_units([UnitInput("web@.service", SERVICE, content_hash(SERVICE),
                                  desired=INACTIVE)], LAUNCHED))
    _store(registry, "web@1.service", SERVICE)
    asyncio.run(_pass(engine))
    assert [s["name"] for s in pushed["h1"]] == ["web@1.service"]


async def _pass(engine: Engine) -> None:
    await engine.reconcile_once()
