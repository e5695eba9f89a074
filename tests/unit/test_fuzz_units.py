"""Fuzzing the unit validator: whatever a unit file holds, fleetd either accepts it or
refuses it with an error that names the file (and the line, when one is to blame).

Files are built from the options fleetd really reads, with values a hostile or careless
user writes: unicode digits, nan and inf, huge numbers, empty values, quotes, control
characters, specifiers and template markup. Anything but a Unit or a UnitError (which
the API turns into a 400 naming ``file:line``) would be an answer 500; and a Unit that
is accepted holds no NaN, the scheduler can place it (``CPUQuota=nan%`` was accepted,
and failed every engine pass) and the agent takes its spec (the two ends agree).

What it found beyond the issue's examples is pinned below with ``@example``: a lone
surrogate in the text (UnicodeEncodeError while hashing it), an integer literal of
5000 digits in template markup (ValueError from Jinja's lexer, Python's int() limit),
and StartLimitIntervalSec=infinity, which fleetd accepted and the agent refuses.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Iterator, List, Tuple

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fleetd import protocol
from fleetd.agent import specs
from fleetd.engine.reconciler import reconcile
from fleetd.engine.views import MachineView, UnitView
from fleetd.registry.base import LAUNCHED
from fleetd.units import xcheck, xfleet, xjava
from fleetd.units.context import ALIASES
from fleetd.units.parser import UnitError
from fleetd.units.validate import validate

SOURCE = "units/fuzz.service"
MACHINES = [MachineView(name=f"h{i}", machine_id=f"{i}" * 8, up=True, metadata={"role": "web"},
                        cpus=4.0, memory_bytes=8 << 30, capabilities=frozenset({"systemd"}))
            for i in range(2)]
SERVICE_OPTIONS = (
    "Type", "ExecStart", "ExecStartPre", "ExecStartPost", "ExecStop", "Environment",
    "EnvironmentFile", "WorkingDirectory", "User", "Group", "KillSignal", "TimeoutSec",
    "TimeoutStartSec", "TimeoutStopSec", "Restart", "RestartSec", "RestartSteps",
    "RestartMaxDelaySec", "StartLimitBurst", "StartLimitIntervalSec", "StartLimitInterval",
    "SuccessExitStatus", "MemoryMax", "CPUQuota", "CPUWeight", "TasksMax", "LimitNOFILE",
)
OPTIONS = {
    "Unit": ("Description", "StartLimitBurst", "StartLimitIntervalSec"),
    "Service": SERVICE_OPTIONS,
    "X-Fleet": (*xfleet.KNOWN, *ALIASES["X-Fleet"]),
    "X-Check": xcheck.KNOWN,
    "X-Java": xjava.KNOWN,
}
# numbers as people and attackers write them
NUMBERS = (
    "0", "1", "-1", "+5", "80", "65535", "65536", "4194304", "10001", "255", "256",
    "²", "٣", "\uff11", "1٣", "nan", "NaN", "inf", "-inf", "infinity", "1e999", "1e3", "0x10",
    "1_000", "9" * 40, "9" * 400, "9" * 5000, "0.5", ".5", "5.", "1e-9",
)
# what follows a number
UNITS = ("", "%", "s", "ms", "min", "µs", "w", "K", "M", "G", "E", ":1", "g")
WORDS = (
    *NUMBERS, *UNITS, "idle", "SIG", "TERM",
    # values of the options' own kinds
    "simple", "oneshot", "forking", "always", "on-failure", "http", "tcp", "exec", "java",
    "systemd", "restart", "none", "constant", "yes", "no", "/bin/true", "/opt/app.jar",
    "com.example.Main", "-Xmx512m", "-jar", "17+", "1.8", "web@*.service", "a.service",
    ".hidden.service", "web@.service", "127.0.0.1", "[::1]", "localhost",
    "http://127.0.0.1:8080/health", "http://[::1]:٣/", "127.0.0.1:80", "200-399", "A=b",
    "role=web", "-/etc/env", "~",
    # syntax at the edges
    "", " ", "\"", "'", "\\", "\\x", "\\U00110000", "$", "${", "%n", "%i", "%x", "%%",
    "{{", "}}", "{{ machine.address }}", "{{ vars.x }}", "{%", "@machine.address@",
    "\x01", "\x7f", "\u2028", "\ud800", "\t",
)


def _value() -> st.SearchStrategy[str]:
    word = st.sampled_from(WORDS)
    number = st.tuples(st.sampled_from(NUMBERS), st.sampled_from(UNITS)).map("".join)
    return st.one_of(
        number,
        number,
        word,
        st.lists(word, min_size=2, max_size=4).map("".join),
        st.lists(word, min_size=2, max_size=3).map(" ".join),
        st.text(max_size=12),
    )


@st.composite
def unit_files(draw: st.DrawFn) -> str:
    """A unit file: a [Service] with a program most of the time, then random options
    of random sections (with now and then an odd section or key), in random order."""
    lines: List[str] = []
    if draw(st.integers(0, 9)):
        lines += ["[Service]", "ExecStart=/bin/true"]
    entries: List[Tuple[str, str, str]] = draw(st.lists(
        st.sampled_from(["Service", "Service", *sorted(OPTIONS)]).flatmap(
            lambda s: st.tuples(st.just(s), st.sampled_from(OPTIONS[s]), _value())),
        max_size=5))
    for section, key, value in entries:
        lines += [f"[{section}]", f"{key}={value}"]
    if draw(st.integers(0, 9)) == 0:
        lines.insert(draw(st.integers(0, len(lines))), draw(st.text(max_size=10)))
    return "\n".join(lines) + "\n"


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(text="[Service]\nExecStart=/bin/true\n[Unit]\nDescription=\ud800\n",
         name="fuzz.service")
@example(text="[Service]\nExecStart=/bin/true\n[Unit]\nDescription={{" + "9" * 5000 + "}}\n",
         name="fuzz.service")
@example(text="[Unit]\nStartLimitIntervalSec=infinity\n[Service]\nExecStart=/bin/true\n",
         name="fuzz.service")
@given(text=unit_files(), name=st.sampled_from(["fuzz.service", "fuzz@1.service",
                                                "fuzz@.service"]))
def test_a_unit_file_is_accepted_or_refused_naming_where(text: str, name: str) -> None:
    try:
        unit = validate(name, text, {}, SOURCE)
    except UnitError as exc:
        assert re.match(rf"{re.escape(SOURCE)}(:[0-9]+)?: \S", str(exc)), str(exc)
        return
    assert unit.name == name
    nan = [path for path, x in _numbers((unit.config, dataclasses.asdict(unit.requirements)))
           if math.isnan(x)]
    assert not nan, nan
    reconcile([UnitView(name, LAUNCHED, None, "", unit.requirements)], MACHINES, 1000.0)
    if not unit.name.endswith("@.service"):  # a template never reaches an agent
        wire = protocol.decode(protocol.encode("desired", units=[unit.spec("running")]))
        specs.check_spec(wire["units"][0])


def _numbers(value: object, path: str = "") -> Iterator[Tuple[str, float]]:
    """Every number in a unit's config and requirements, with where it is."""
    if isinstance(value, float):
        yield path, value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _numbers(item, f"{path}.{key}")
    elif isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            yield from _numbers(item, f"{path}[{i}]")
