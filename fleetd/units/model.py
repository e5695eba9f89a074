"""A unit as fleetd understands it: a parsed file, validated, with its content hash.

Validation happens here, once, at submit time, so that every error reaches the user as
``file:line: Option=: why`` before anything is stored. Options fleetd does not interpret
are kept (the systemd driver passes them through); options it does interpret are
checked and turned into the driver's config, which is what the agent receives.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import re
import signal
from typing import Any, Dict, List, NoReturn, Optional

from fleetd import protocol
from fleetd.units import execline
from fleetd.units.parser import Entry, UnitError, UnitFile, parse
from fleetd.units.timespan import TimespanError, parse_timespan

# systemd's unit-name rules (unit-name.c), restricted to the types fleetd runs.
_NAME = re.compile(r"([A-Za-z0-9:_.\\-]+)(@([A-Za-z0-9:_.\\-]*))?\.(service)")
NAME_MAX = 255
SERVICE_TYPES = ("simple", "exec", "oneshot")
DRIVERS = ("exec",)
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
DEFAULT_TIMEOUT_STOP_S = 90.0  # systemd's DefaultTimeoutStopSec


@dataclasses.dataclass(frozen=True)
class UnitName:
    """``prefix@instance.service`` split into its parts."""

    full: str
    prefix: str
    instance: Optional[str]  # None: not a template or instance; "": the template itself
    suffix: str

    @property
    def is_template(self) -> bool:
        return self.instance == ""


def parse_name(name: str) -> UnitName:
    """Check a unit name; raise UnitError naming what is wrong with it."""
    m = _NAME.fullmatch(name)
    if not m or len(name) > NAME_MAX:
        raise UnitError(
            name, None,
            "invalid unit name: want NAME.service or NAME@INSTANCE.service "
            "(letters, digits and : _ . \\ - only)",
        )
    return UnitName(full=name, prefix=m.group(1), instance=m.group(3), suffix=m.group(4))


def content_hash(text: str) -> str:
    """The sha256 that identifies a unit's content everywhere (registry, agent)."""
    return hashlib.sha256(text.encode()).hexdigest()


def unescape_instance(text: str) -> str:
    """systemd's unit_name_unescape: ``-`` is ``/`` and ``\\xNN`` is that byte."""
    out = bytearray()
    i = 0
    while i < len(text):
        if text[i] == "-":
            out += b"/"
            i += 1
        elif text[i] == "\\" and re.fullmatch(r"x[0-9a-fA-F]{2}", text[i + 1:i + 4]):
            out.append(int(text[i + 2:i + 4], 16))
            i += 4
        else:
            out += text[i].encode()
            i += 1
    return out.decode(errors="replace")


def expand_specifiers(value: str, name: UnitName, entry: Entry, source: str) -> str:
    """systemd's %-specifiers that depend on the unit name alone."""
    table = {
        "n": name.full,
        "N": name.full[: -len(name.suffix) - 1],
        "p": name.prefix,
        "i": name.instance or "",
        "I": unescape_instance(name.instance or ""),
        "%": "%",
    }

    def sub(m: re.Match[str]) -> str:
        key = m.group(1)
        if key not in table:
            raise UnitError(
                source, entry.line,
                f"{entry.key}=: specifier %{key} is not supported here "
                f"(fleetd expands %n %N %p %i %I %%; for host facts use {{{{ machine.* }}}})",
            )
        return table[key]

    return re.sub(r"%(.)", sub, value)


@dataclasses.dataclass(frozen=True)
class Unit:
    """A validated unit file."""

    name: str
    text: str
    hash: str
    file: UnitFile
    description: str
    driver: str
    config: Dict[str, Any]

    def spec(self, want: str) -> Dict[str, Any]:
        """What the agent receives for this unit."""
        return protocol.unit_spec(self.name, self.hash, want, self.driver, self.config)


def load(name: str, text: str, source: Optional[str] = None) -> Unit:
    """Parse and validate ``text`` as the unit ``name``; ``source`` names the file in errors."""
    src = source or name
    uname = parse_name(name)
    if uname.is_template:
        raise UnitError(src, None, f"{name} is a template; start an instance such as "
                                   f"{uname.prefix}@1.{uname.suffix}")
    unit_file = parse(text, src)
    ctx = _Context(unit_file, uname, src)
    description = ctx.single("Unit", "Description") or ""
    driver = ctx.single("X-Fleet", "Driver") or "exec"
    if driver not in DRIVERS:
        ctx.fail(unit_file.last("X-Fleet", "Driver"),
                 f"Driver={driver} is not available (drivers: {', '.join(DRIVERS)})")
    config = _exec_config(ctx)
    return Unit(name=name, text=text, hash=content_hash(text), file=unit_file,
                description=description, driver=driver, config=config)


class _Context:
    """Looks up options with specifiers expanded and errors located."""

    def __init__(self, unit_file: UnitFile, name: UnitName, source: str) -> None:
        self.file = unit_file
        self.name = name
        self.source = source

    def fail(self, entry: Optional[Entry], why: str) -> NoReturn:
        if entry is None:
            raise UnitError(self.source, None, why)
        raise UnitError(self.source, entry.line, f"{entry.key}=: {why}")

    def expand(self, entry: Entry) -> str:
        return expand_specifiers(entry.value, self.name, entry, self.source)

    def single(self, section: str, key: str) -> Optional[str]:
        """The winning value, or None if unset; an empty assignment resets to the
        default, as in systemd."""
        entry = self.file.last(section, key)
        return None if entry is None or entry.value == "" else self.expand(entry)

    def many(self, section: str, key: str) -> List[Entry]:
        return self.file.values(section, key)


def _exec_config(ctx: _Context) -> Dict[str, Any]:
    service = "Service"
    type_entry = ctx.file.last(service, "Type")
    service_type = ctx.single(service, "Type") or "simple"
    if service_type not in SERVICE_TYPES:
        ctx.fail(type_entry, f"Type={service_type} is not supported by the exec driver "
                             f"(supported: {', '.join(SERVICE_TYPES)}); run the program "
                             "in the foreground")
    starts = ctx.many(service, "ExecStart")
    if not starts:
        ctx.fail(None, "[Service] has no ExecStart=: fleetd needs a program to run")
    if len(starts) > 1 and service_type != "oneshot":
        ctx.fail(starts[1], f"more than one ExecStart= is only allowed with Type=oneshot "
                            f"(first at line {starts[0].line})")
    commands = []
    for entry in starts:
        try:
            commands.append(execline.split(ctx.expand(entry)).to_json())
        except execline.CommandLineError as exc:
            ctx.fail(entry, str(exc))

    environment: Dict[str, str] = {}
    for entry in ctx.many(service, "Environment"):
        try:
            words = execline.split_words(ctx.expand(entry))
        except execline.CommandLineError as exc:
            ctx.fail(entry, str(exc))
        for word in words:
            key, eq, value = word.partition("=")
            if not eq or not _ENV_NAME.fullmatch(key):
                ctx.fail(entry, f"{word!r} is not a VAR=value assignment")
            environment[key] = value

    workdir_entry = ctx.file.last(service, "WorkingDirectory")
    workdir = ctx.single(service, "WorkingDirectory")
    if workdir is not None:
        path = workdir[1:] if workdir.startswith("-") else workdir
        if not (path.startswith("/") or path == "~"):
            ctx.fail(workdir_entry, f"{workdir!r} is not an absolute path or ~")

    kill_entry = ctx.file.last(service, "KillSignal")
    kill_signal = int(signal.SIGTERM)
    if ctx.single(service, "KillSignal") is not None:
        assert kill_entry is not None
        kill_signal = _signal_number(ctx, kill_entry)

    timeout_entry = ctx.file.last(service, "TimeoutStopSec")
    timeout_stop: Optional[float] = DEFAULT_TIMEOUT_STOP_S
    timeout_text = ctx.single(service, "TimeoutStopSec")
    if timeout_text is not None:
        try:
            timeout_stop = parse_timespan(timeout_text)
        except TimespanError as exc:
            ctx.fail(timeout_entry, str(exc))
        if timeout_stop == 0 or math.isinf(timeout_stop):
            timeout_stop = None  # systemd: 0 and infinity both mean "no timeout"

    return {
        "type": service_type,
        "commands": commands,
        "environment": environment,
        "working_directory": workdir,
        "kill_signal": kill_signal,
        "timeout_stop_s": timeout_stop,
    }


def _signal_number(ctx: _Context, entry: Entry) -> int:
    value = ctx.expand(entry)
    if re.fullmatch(r"[0-9]+", value):
        number = int(value)
    else:
        name = value if value.startswith("SIG") else "SIG" + value
        sig = signal.Signals.__members__.get(name)
        if sig is None:
            ctx.fail(entry, f"unknown signal {value!r}")
        number = int(sig)
    if not 1 <= number < signal.NSIG:
        ctx.fail(entry, f"signal {number} is out of range")
    return number
