"""fleetd.units.model (validation into driver config) and fleetd.units.timespan."""

from __future__ import annotations

import hashlib
import math
import signal

import pytest

from fleetd.units.model import (
    NAME_MAX,
    UnitName,
    content_hash,
    load,
    parse_name,
)
from fleetd.units.parser import UnitError
from fleetd.units.service import DEFAULT_TIMEOUT_S as DEFAULT_TIMEOUT_STOP_S
from fleetd.units.timespan import TimespanError, format_timespan, parse_timespan
from fleetd.units.xfleet import Requirements

WEB = """\
[Unit]
Description=Web server %n

[Service]
Type=simple
ExecStart=/usr/bin/web --name %p --port 80 "two words"
Environment=A=1 "B=x y"
Environment=C=3
WorkingDirectory=/srv/web
KillSignal=SIGINT
TimeoutStopSec=1min 30s
Restart=always
"""


def _cmd(*words: str, **flags: bool) -> dict[str, object]:
    base = {"ignore_failure": False, "argv0_given": False, "no_expand": False,
            "privileged": False}
    return {"words": list(words), **base, **flags}  # as on the wire (JSON has lists)


# --- a valid unit -------------------------------------------------------------------


def test_load_valid_unit_gives_driver_config() -> None:
    unit = load("web.service", WEB, "units/web.service")
    assert unit.name == "web.service"
    assert unit.text == WEB
    assert unit.hash == hashlib.sha256(WEB.encode()).hexdigest() == content_hash(WEB)
    assert unit.description == "Web server web.service"
    assert unit.driver == "exec"
    config = unit.config
    assert {k: config[k] for k in ("type", "commands", "environment", "working_directory",
                                   "kill_signal", "timeout_stop_s")} == {
        "type": "simple",
        "commands": [
            _cmd("/usr/bin/web", "--name", "web", "--port", "80", "two words"),
        ],
        "environment": {"A": "1", "B": "x y", "C": "3"},
        "working_directory": "/srv/web",
        "kill_signal": int(signal.SIGINT),
        "timeout_stop_s": 90.0,
    }
    assert config["restart"] == "always"
    assert config["pre"] == config["post"] == config["stop"] == []
    # options fleetd does not interpret are kept for pass-through
    restart = unit.file.last("Service", "Restart")
    assert restart is not None
    assert restart.value == "always"


def test_load_minimal_unit_defaults() -> None:
    unit = load("a.service", "[Service]\nExecStart=/bin/true\n")
    assert unit.description == ""
    assert unit.driver == "exec"
    assert unit.config == {
        "type": "simple",
        "commands": [_cmd("/bin/true")],
        "pre": [], "post": [], "stop": [],
        "environment": {},
        "environment_files": [],
        "working_directory": None,
        "user": None, "group": None, "umask": None,
        "rlimits": {}, "nice": None, "oom_score_adjust": None,
        "kill_signal": int(signal.SIGTERM),
        "timeout_start_s": DEFAULT_TIMEOUT_STOP_S,
        "timeout_stop_s": DEFAULT_TIMEOUT_STOP_S,
        "restart": "no",
        "restart_s": 0.1,
        "restart_steps": 0,
        "restart_max_delay_s": None,
        "start_limit_burst": 5,
        "start_limit_interval_s": 10.0,
        "success_exit_status": {"codes": [], "signals": []},
        "limits": {"memory_max": None, "memory_max_percent": None, "cpu_quota": None,
                   "cpu_weight": None, "tasks_max": None, "tasks_max_percent": None,
                   "nofile": None},
        "check": None,
    }
    assert unit.requirements == Requirements()


def test_spec_is_what_the_agent_receives() -> None:
    unit = load("a.service", "[Service]\nExecStart=/bin/true\n")
    assert unit.spec("running") == {
        "name": "a.service",
        "hash": unit.hash,
        "want": "running",
        "driver": "exec",
        "config": unit.config,
        "generation": 0,
    }


def test_oneshot_may_have_several_exec_start_lines() -> None:
    text = "[Service]\nType=oneshot\nExecStart=/bin/a\nExecStart=-/bin/b x\n"
    unit = load("job.service", text)
    assert unit.config["type"] == "oneshot"
    assert unit.config["commands"] == [_cmd("/bin/a"), _cmd("/bin/b", "x", ignore_failure=True)]


def test_empty_exec_start_resets_earlier_ones() -> None:
    text = "[Service]\nExecStart=/bin/old\nExecStart=\nExecStart=/bin/new\n"
    assert load("a.service", text).config["commands"] == [_cmd("/bin/new")]


def test_empty_environment_resets_earlier_ones() -> None:
    text = "[Service]\nExecStart=/bin/true\nEnvironment=A=1\nEnvironment=\nEnvironment=B=2\n"
    assert load("a.service", text).config["environment"] == {"B": "2"}


def test_later_environment_assignment_wins() -> None:
    text = "[Service]\nExecStart=/bin/true\nEnvironment=A=1 A=2\nEnvironment=A=3\n"
    assert load("a.service", text).config["environment"] == {"A": "3"}


def test_environment_value_may_be_empty_or_contain_equals() -> None:
    text = "[Service]\nExecStart=/bin/true\nEnvironment=EMPTY= URL=a=b\n"
    assert load("a.service", text).config["environment"] == {"EMPTY": "", "URL": "a=b"}


@pytest.mark.parametrize("type_", ["simple", "exec", "oneshot"])
def test_supported_service_types(type_: str) -> None:
    text = f"[Service]\nType={type_}\nExecStart=/bin/true\n"
    assert load("a.service", text).config["type"] == type_


@pytest.mark.parametrize("workdir", ["/", "/srv/app", "-/maybe/missing", "~", "-~"])
def test_working_directory_absolute_or_home(workdir: str) -> None:
    text = f"[Service]\nExecStart=/bin/true\nWorkingDirectory={workdir}\n"
    assert load("a.service", text).config["working_directory"] == workdir


@pytest.mark.parametrize(
    ("value", "number"),
    [
        ("SIGTERM", signal.SIGTERM),
        ("TERM", signal.SIGTERM),
        ("SIGKILL", signal.SIGKILL),
        ("HUP", signal.SIGHUP),
        ("SIGUSR1", signal.SIGUSR1),
        ("2", 2),
        ("15", 15),
    ],
)
def test_kill_signal(value: str, number: int) -> None:
    text = f"[Service]\nExecStart=/bin/true\nKillSignal={value}\n"
    assert load("a.service", text).config["kill_signal"] == int(number)


@pytest.mark.parametrize(
    ("value", "seconds"),
    # no timeout (infinity, and 0 as in systemd) travels as None: JSON has no infinity
    [("5", 5.0), ("5s", 5.0), ("2min", 120.0), ("500ms", 0.5), ("infinity", None), ("0", None)],
)
def test_timeout_stop_sec(value: str, seconds: float) -> None:
    text = f"[Service]\nExecStart=/bin/true\nTimeoutStopSec={value}\n"
    assert load("a.service", text).config["timeout_stop_s"] == seconds


def test_explicit_exec_driver() -> None:
    text = "[Service]\nExecStart=/bin/true\n[X-Fleet]\nDriver=exec\n"
    assert load("a.service", text).driver == "exec"


# --- names and specifiers ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "prefix", "instance"),
    [
        ("web.service", "web", None),
        ("web@3.service", "web", "3"),
        ("web@.service", "web", ""),
        ("a.b-c_d:e.service", "a.b-c_d:e", None),
        ("dev-sda\\x2d1@x.y.service", "dev-sda\\x2d1", "x.y"),
    ],
)
def test_parse_name(name: str, prefix: str, instance: str | None) -> None:
    assert parse_name(name) == UnitName(full=name, prefix=prefix, instance=instance,
                                        suffix="service")
    assert parse_name(name).is_template == (instance == "")


@pytest.mark.parametrize(
    "name",
    [
        "",
        "web",
        "web.socket",
        "web.timer",
        ".service",
        "@3.service",
        "web@a@b.service",
        "web service.service",
        "web/evil.service",
        "wéb.service",
        "web.service.bak",
        "a" * 248 + ".service",  # 256 characters: over systemd's limit too
    ],
)
def test_invalid_unit_names(name: str) -> None:
    with pytest.raises(UnitError, match="invalid unit name"):
        load(name, "[Service]\nExecStart=/bin/true\n")


def test_longest_valid_name() -> None:
    name = "a" * (NAME_MAX - len(".service")) + ".service"
    assert len(name) == NAME_MAX == 200  # room for the agent's files derived from it
    assert parse_name(name).prefix == name[:-len(".service")]
    with pytest.raises(UnitError, match=r"invalid unit name \(201 characters\)"):
        parse_name("a" + name)


def test_name_with_trailing_newline_is_invalid() -> None:
    with pytest.raises(UnitError, match="invalid unit name"):
        parse_name("web.service\n")


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("web@3.service", "web@3.service|web@3|web|3|3|%"),
        ("web.service", "web.service|web|web|||%"),
        ("my-app@srv-data-x.service", "my-app@srv-data-x.service|my-app@srv-data-x|my-app"
                                      "|srv-data-x|srv/data/x|%"),
    ],
)
def test_specifiers(name: str, expected: str) -> None:
    text = "[Unit]\nDescription=%n|%N|%p|%i|%I|%%\n[Service]\nExecStart=/bin/true\n"
    assert load(name, text).description == expected


def test_specifiers_in_exec_start_and_environment() -> None:
    text = (
        "[Service]\n"
        "ExecStart=/usr/bin/worker --id %i --unit %n --pct 100%%\n"
        "Environment=SHARD=%i NAME=%p\n"
        "WorkingDirectory=/srv/%p/%i\n"
    )
    unit = load("worker@7.service", text)
    assert unit.config["commands"] == [
        _cmd("/usr/bin/worker", "--id", "7", "--unit", "worker@7.service", "--pct", "100%"),
    ]
    assert unit.config["environment"] == {"SHARD": "7", "NAME": "worker"}
    assert unit.config["working_directory"] == "/srv/worker/7"


def test_percent_percent_is_not_expanded_again() -> None:
    text = "[Unit]\nDescription=%%n\n[Service]\nExecStart=/bin/true\n"
    assert load("web.service", text).description == "%n"


def test_unescaped_instance_undoes_hex_escapes() -> None:
    text = "[Unit]\nDescription=%I\n[Service]\nExecStart=/bin/true\n"
    assert load("web@a\\x2db-c.service", text).description == "a-b/c"


# --- errors -------------------------------------------------------------------------------


def _unit_error(text: str, name: str = "web.service") -> UnitError:
    with pytest.raises(UnitError) as info:
        load(name, text, "units/web.service")
    return info.value


@pytest.mark.parametrize(
    ("text", "line", "fragments"),
    [
        (
            "[Service]\nExecStart=/bin/a\nExecStart=/bin/b\n",
            3,
            ["ExecStart=:", "more than one ExecStart=", "Type=oneshot", "first at line 2"],
        ),
        (
            "[Service]\nType=forking\nExecStart=/bin/a\n",
            2,
            ["Type=:", "Type=forking is not supported"],
        ),
        (
            "[Service]\nExecStart=/bin/a\nEnvironment=A=1 oops\n",
            3,
            ["Environment=:", "'oops' is not a VAR=value assignment"],
        ),
        (
            "[Service]\nExecStart=/bin/a\nEnvironment=1A=x\n",
            3,
            ["Environment=:", "'1A=x'"],
        ),
        (
            "[Service]\nExecStart=/bin/a\nEnvironment=\"A=1\n",
            3,
            ["Environment=:", "unbalanced quote"],
        ),
        (
            "[Service]\nExecStart=/bin/a\nWorkingDirectory=srv/app\n",
            3,
            ["WorkingDirectory=:", "'srv/app' is not an absolute path"],
        ),
        (
            "[Service]\nExecStart=/bin/a\nWorkingDirectory=-rel\n",
            3,
            ["WorkingDirectory=:", "'-rel'"],
        ),
        (
            "[Service]\nExecStart=/bin/a\nKillSignal=SIGNOPE\n",
            3,
            ["KillSignal=:", "unknown signal 'SIGNOPE'"],
        ),
        (
            "[Service]\nExecStart=/bin/a\nKillSignal=0\n",
            3,
            ["KillSignal=:", "unknown signal '0'"],
        ),
        (
            "[Service]\nExecStart=/bin/a\nKillSignal=999\n",
            3,
            ["KillSignal=:", "unknown signal '999'"],
        ),
        (
            "[Service]\nExecStart=/bin/a\nTimeoutStopSec=soon\n",
            3,
            ["TimeoutStopSec=:", "'soon'"],
        ),
        (
            "[Service]\nExecStart=/bin/a\nTimeoutStopSec=5 fortnights\n",
            3,
            ["TimeoutStopSec=:", "unknown time unit 'fortnights'"],
        ),
        (
            "[Service]\nExecStart=/bin/echo %H\n",
            2,
            ["ExecStart=:", "specifier %H is not supported"],
        ),
        (
            "[Unit]\nDescription=on %H\n[Service]\nExecStart=/bin/a\n",
            2,
            ["Description=:", "specifier %H"],
        ),
        (
            "[Service]\nExecStart=/bin/a\n[X-Fleet]\nDriver=nope\n",
            4,
            ["Driver=:", "Driver=nope is not available", "exec"],
        ),
        (
            "[Service]\nExecStart=/bin/echo \"unbalanced\n",
            2,
            ["ExecStart=:", "unbalanced quote"],
        ),
        (
            "[Service]\n\nExecStart=\n",
            None,
            ["[Service] has no ExecStart="],
        ),
        (
            "[Service]\nExecStart=/bin/echo a ; /bin/echo b\n",
            2,
            ["ExecStart=:", "lone ';'"],
        ),
        (
            "[Service]\nExecStart=--/bin/a\n",
            2,
            ["ExecStart=:", "neither a valid executable name nor an absolute path"],
        ),
    ],
)
def test_errors_name_source_line_and_option(
    text: str, line: int | None, fragments: list[str]
) -> None:
    err = _unit_error(text)
    prefix = f"units/web.service:{line}: " if line else "units/web.service: "
    assert str(err).startswith(prefix), str(err)
    assert err.line == line
    for fragment in fragments:
        assert fragment in str(err)


@pytest.mark.parametrize(
    "text",
    [
        "[Unit]\nDescription=x\n",
        "",
        "[ServiceX]\nExecStart=/bin/true\n",
        "[Service]\n\n[Unit]\nDescription=x\n",  # a header alone holds no options
    ],
)
def test_missing_service_section(text: str) -> None:
    err = _unit_error(text)
    assert str(err).startswith("units/web.service: [Service] has no ExecStart=")


def test_no_exec_start() -> None:
    err = _unit_error("[Service]\nType=simple\n")
    assert str(err) == ("units/web.service: [Service] has no ExecStart=: "
                        "fleetd needs a program to run")


def test_parser_errors_come_through_with_the_source() -> None:
    err = _unit_error("[Service]\nExecStart /bin/true\n")
    assert str(err).startswith("units/web.service:2: expected 'Key=Value'")


def test_source_defaults_to_the_unit_name() -> None:
    with pytest.raises(UnitError) as info:
        load("web.service", "[Service]\nType=forking\nExecStart=/bin/a\n")
    assert str(info.value).startswith("web.service:2: Type=:")


def test_template_cannot_be_started() -> None:
    err = _unit_error("[Service]\nExecStart=/bin/true\n", name="web@.service")
    assert "web@.service is a template" in str(err)
    assert "web@1.service" in str(err)
    assert str(err).startswith("units/web.service: ")


def test_invalid_name_error_names_the_name() -> None:
    with pytest.raises(UnitError) as info:
        load("bad name.service", "[Service]\nExecStart=/bin/true\n", "file.service")
    assert str(info.value).startswith("bad name.service: invalid unit name")


@pytest.mark.parametrize(
    "line",
    [
        # chr() ValueError and OverflowError (in a command line such escapes stay as
        # written, as systemd keeps them: test_execline)
        "ExecStart=/bin/true\nEnvironment=A=\\U00110000",
        "ExecStart=/bin/true\nEnvironment=A=\\UFFFFFFFF",
        "ExecStart=/bin/true\nKillSignal=\u00b2",  # '²'.isdigit() but int('²') fails
    ],
)
def test_bad_values_raise_only_unit_error(line: str) -> None:
    with pytest.raises(UnitError):
        load("a.service", f"[Service]\n{line}\n")


# --- timespan ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("5s", 5.0),
        ("5 s", 5.0),
        ("5sec", 5.0),
        ("1second", 1.0),
        ("3seconds", 3.0),
        ("1min 30s", 90.0),
        ("1min30s", 90.0),
        ("2m", 120.0),
        ("500ms", 0.5),
        ("250msec", 0.25),
        ("1500us", 0.0015),
        ("1h", 3600.0),
        ("1hr 1min 1s", 3661.0),
        ("2 hours", 7200.0),
        ("1d", 86400.0),
        ("1w", 604800.0),
        ("  7s  ", 7.0),
        ("1 2", 3.0),
        ("infinity", math.inf),
        ("  infinity ", math.inf),
    ],
)
def test_parse_timespan(text: str, seconds: float) -> None:
    assert parse_timespan(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty time span"),
        ("   ", "empty time span"),
        ("s", "invalid time span"),
        ("-5", "invalid time span"),
        ("5x", "unknown time unit 'x'"),
        ("5 years", "unknown time unit 'years'"),
        ("5S", "invalid time span"),
        ("1min x", "invalid time span"),
        ("Infinity", "invalid time span"),
        ("inf", "invalid time span"),
        ("1,5s", "invalid time span"),
    ],
)
def test_parse_timespan_errors(text: str, fragment: str) -> None:
    with pytest.raises(TimespanError) as info:
        parse_timespan(text)
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0.2, "0.2s"), (90.0, "90s"), (60.0, "1min"), (600.0, "10min"), (3600.0, "1h"),
     (5400.0, "90min"), (7200.0, "2h"), (math.inf, "infinity")],
)
def test_format_timespan_reads_back(seconds: float, text: str) -> None:
    assert format_timespan(seconds) == text
    assert parse_timespan(text) == seconds


def test_empty_assignment_resets_single_options_to_their_default() -> None:
    text = ("[Service]\nExecStart=/bin/true\nKillSignal=SIGINT\nKillSignal=\n"
            "WorkingDirectory=/tmp\nWorkingDirectory=\nType=oneshot\nType=\n")
    config = load("a.service", text).config
    assert config["kill_signal"] == signal.SIGTERM
    assert config["working_directory"] is None
    assert config["type"] == "simple"


@pytest.mark.parametrize(("text", "line", "fragment"), [
    ("[Service]\nExecStart=/bin/a\n[X-Fleet]\nMachineMetdata=role=web\n", 4,
     "unknown option MachineMetdata= in [X-Fleet]; did you mean MachineMetadata=?"),
    ("[Service]\nExecStart=/bin/a\n[X-Fleet]\nConflict=web*\n", 4,
     "did you mean Conflicts=?"),
    # a difference of case alone, which the similarity test misses
    ("[Service]\nExecStart=/bin/a\n[X-Fleet]\nGLOBAL=true\n", 4,
     "unknown option GLOBAL= in [X-Fleet]; did you mean Global=? (option names are "
     "case-sensitive)"),
    ("[Service]\nExecStart=/bin/a\n[X-Fleet]\nMachineMetadata=role=\n", 4,
     "role= has no value"),
    ("[Service]\nExecStart=/bin/a\n[X-Fleet]\nGlobal=true\nMachineID=abc\n", 5,
     "MachineID= cannot be combined with Global=true"),
    ("[Service]\nExecStart=/bin/a\n[X-Fleet]\nGlobal=maybe\n", 4, "is not a boolean"),
    # a bad quote is the unit's error, located, not a crash of the submit
    ("[Service]\nExecStart=/bin/a\n[X-Fleet]\nMachineMetadata=\"role=web\n", 4,
     "MachineMetadata=: unbalanced quote"),
    # the assignment that holds the bad name is blamed, not the last one
    ("[Service]\nExecStart=/bin/a\n[X-Fleet]\nMachineOf=db@x\nMachineOf=b.service\n", 4,
     "MachineOf=: invalid unit name 'db@x': want NAME.service"),
    ("[Service]\nExecStart=/bin/a\n[X-Fleet]\nReplaces=a.service\nReplaces=b.service\n", 4,
     "a unit cannot name itself in Replaces="),
])
def test_x_fleet_errors_name_line_and_suggest(text: str, line: int, fragment: str) -> None:
    with pytest.raises(UnitError) as err:
        load("a.service", text, "units/a.service")
    assert str(err.value).startswith(f"units/a.service:{line}: ")
    assert fragment in str(err.value)


def test_unknown_systemd_options_are_kept_for_the_systemd_driver() -> None:
    text = "[Unit]\nAfter=network.target\n[Service]\nExecStart=/bin/a\nProtectSystem=strict\n"
    unit = load("a.service", text)
    assert [(e.key, e.value) for e in unit.file.entries if e.key == "ProtectSystem"] == [
        ("ProtectSystem", "strict")]


def test_fleet_spellings_of_x_fleet_options_still_work() -> None:
    text = ("[Service]\nExecStart=/bin/a\n[X-Fleet]\nX-ConditionMachineOf=db.service\n"
            "X-Conflicts=web*.service\n")
    req = load("a.service", text).requirements
    assert req.machine_of == ("db.service",) and req.conflicts == ("web*.service",)


def test_oneshot_has_no_start_timeout_by_default_and_refuses_restart_always() -> None:
    one = load("a.service", "[Service]\nType=oneshot\nExecStart=/bin/a\n")
    assert one.config["timeout_start_s"] is None
    bounded = load("a.service", "[Service]\nType=oneshot\nExecStart=/bin/a\n"
                                "TimeoutStartSec=5\n")
    assert bounded.config["timeout_start_s"] == 5.0
    with pytest.raises(UnitError, match="not allowed with Type=oneshot"):
        load("a.service", "[Service]\nType=oneshot\nExecStart=/bin/a\nRestart=always\n")
