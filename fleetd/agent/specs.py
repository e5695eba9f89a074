"""What the agent accepts from a client: every unit spec and request field, checked.

fleetd validates unit files, but the agent does not take that on trust: a spec is also
read back from ``desired.json`` at start, may come from an older or newer fleetd, or
from anyone who reaches the socket. A field of the wrong type used to surface deep in
the supervisor - a spec without ``hash`` raised KeyError in every converge, at every
agent start; a name like ``../../x`` became a path outside the state directory. So a
spec is checked here, whole, before the agent keeps it: the name by the one rule
(fleetd.wire.names), numbers by the one reader (fleetd.wire.numbers), and every config
field the drivers read by its type. An invalid spec is refused with a message naming
the unit and the field; the rest of the set is taken.

Unknown config fields are allowed (a newer fleetd may send more than this agent
reads); known ones must have the type the drivers expect. Standard library only,
Python 3.9+ (agent side).
"""

from __future__ import annotations

import re
from typing import Any, Callable, List, Mapping, Tuple, cast

from fleetd import protocol
from fleetd.agent import logfile
from fleetd.cgroups.limits import MAX_BYTES, MAX_WEIGHT
from fleetd.wire import messages, names, numbers
from fleetd.wire.unitspec import RLIMITS, UnitSpec

DRIVERS = ("exec", "java", "systemd")
GENERATION_MAX = 2 ** 63 - 1
MAX_RLIMIT = 2 ** 63 - 1  # the largest finite rlimit (rlim_t as the kernel keeps it)
_HASH = re.compile(r"[0-9a-f]{1,128}")
# hello's heartbeat: a sleep between heartbeats, so 0 (or NaN) would be a busy loop
HEARTBEAT_MIN_S, HEARTBEAT_MAX_S = 0.05, 3600.0
REQUEST_ID_MAX = 2 ** 53  # what a JSON number holds exactly in every peer's reader
TAIL_LINES_MAX = logfile.TAIL_MAX_LINES  # what a tail reads back at most
SECONDS_MAX = 10.0 ** 9  # about 31 years: longer is no timeout anyone means
DESIRED_MAX_UNITS = 100000  # a desired set in parts: more than this is no host's set
ERROR_MAX = 64 * 1024  # characters of an error message back to the client


class SpecError(ValueError):
    """A spec or request field that the agent refuses; the message says which and why."""


Check = Callable[[object, str], None]  # (value, where) -> None, or raise SpecError


def _fail(where: str, why: str) -> SpecError:
    return SpecError(f"{where}: {why}")


def _type(kind: type, what: str) -> Check:
    def check(value: object, where: str) -> None:
        if (isinstance(value, bool) and kind is not bool) or not isinstance(value, kind):
            raise _fail(where, f"want {what}, not {type(value).__name__}")
    return check


_str = _type(str, "a string")
_bool = _type(bool, "true or false")


def _int(lo: int, hi: int) -> Check:
    def check(value: object, where: str) -> None:
        try:
            numbers.json_int(value, lo, hi)
        except numbers.NumberError as exc:
            raise _fail(where, str(exc)) from None
    return check


def _float(lo: float, hi: float) -> Check:
    def check(value: object, where: str) -> None:
        try:
            numbers.json_float(value, lo, hi)
        except numbers.NumberError as exc:
            raise _fail(where, str(exc)) from None
    return check


_seconds = _float(0.0, SECONDS_MAX)
_percent = _float(0.0, 100.0 * 1024)  # CPUQuota= may be many CPUs


def _optional(check: Check) -> Check:
    def optional(value: object, where: str) -> None:
        if value is not None:
            check(value, where)
    return optional


def _list(item: Check) -> Check:
    def check(value: object, where: str) -> None:
        if not isinstance(value, list):
            raise _fail(where, f"want a list, not {type(value).__name__}")
        for index, element in enumerate(value):
            item(element, f"{where}[{index}]")
    return check


def _str_map(value: object, where: str) -> None:
    if not isinstance(value, dict):
        raise _fail(where, f"want an object, not {type(value).__name__}")
    for key, element in value.items():
        _str(element, f"{where}.{key}")


def _map(keys: Tuple[str, ...], item: Check) -> Check:
    """An object whose keys are among ``keys``, each value an ``item``."""
    def check(value: object, where: str) -> None:
        if not isinstance(value, dict):
            raise _fail(where, f"want an object, not {type(value).__name__}")
        for key, element in value.items():
            if key not in keys:
                raise _fail(where, f"{numbers.show(key)} is none of {', '.join(keys)}")
            item(element, f"{where}.{key}")
    return check


def _fields(schema: Mapping[str, Check], required: Tuple[str, ...] = ()) -> Check:
    """An object whose known fields have their types (unknown ones pass)."""
    def check(value: object, where: str) -> None:
        if not isinstance(value, dict):
            raise _fail(where, f"want an object, not {type(value).__name__}")
        for key in required:
            if key not in value:
                raise _fail(where, f"no {key!r}")
        for key, field_check in schema.items():
            if key in value:
                field_check(value[key], f"{where}.{key}")
    return check


_SIGNAL = _int(1, 64)
_COMMAND = _fields({"words": _list(_str), "ignore_failure": _bool, "argv0_given": _bool,
                    "no_expand": _bool, "privileged": _bool}, required=("words",))
_COMMANDS = _optional(_list(_COMMAND))
_COUNT = _int(0, 2 ** 31 - 1)
_LIMITS = _fields({
    "memory_max": _optional(_int(0, MAX_BYTES)),
    "memory_max_percent": _optional(_percent),
    "cpu_quota": _optional(_percent),
    "cpu_weight": _optional(_int(0, MAX_WEIGHT)),
    "tasks_max": _optional(_int(0, MAX_BYTES)),
    "tasks_max_percent": _optional(_percent),
    "nofile": _optional(_list(_optional(_int(0, MAX_BYTES)))),
})
_CHECK = _fields({
    "type": _str, "host": _str, "path": _str, "url": _str, "host_header": _str,
    "port": _optional(_int(1, 65535)), "command": _COMMAND,
    "expect_status": _list(_list(_int(100, 999))),
    "interval_s": _seconds, "timeout_s": _seconds, "start_grace_s": _seconds,
    "failure_threshold": _COUNT, "success_threshold": _COUNT, "on_failure": _str,
}, required=("type",))
_JAVA = _fields({
    "jar": _optional(_str), "main_class": _optional(_str), "class_path": _list(_str),
    "jvm_options": _list(_str), "args": _list(_str), "java_home": _optional(_str),
    "min_version": _optional(_int(0, 1000)),
})
_CONFIG = _fields({
    "type": _str, "commands": _COMMANDS, "pre": _COMMANDS, "post": _COMMANDS,
    "stop": _COMMANDS, "reload": _COMMANDS, "on_peers_change": _str,
    "environment": _optional(_str_map),
    "environment_files": _optional(_list(_str)), "working_directory": _optional(_str),
    "user": _optional(_str), "group": _optional(_str), "umask": _optional(_int(0, 0o7777)),
    "rlimits": _map(RLIMITS, _list(_optional(_int(0, MAX_RLIMIT)))),
    "nice": _optional(_int(-20, 19)), "oom_score_adjust": _optional(_int(-1000, 1000)),
    "kill_signal": _SIGNAL,
    "timeout_start_s": _optional(_seconds), "timeout_stop_s": _optional(_seconds),
    "restart": _str, "restart_s": _seconds, "restart_steps": _COUNT,
    "restart_max_delay_s": _optional(_seconds), "start_limit_burst": _COUNT,
    "start_limit_interval_s": _seconds,
    "success_exit_status": _optional(_fields({"codes": _list(_int(0, 255)),
                                              "signals": _list(_SIGNAL)})),
    "limits": _optional(_LIMITS), "check": _optional(_CHECK),
    "fence_after_s": _optional(_seconds), "java": _JAVA, "unit_text": _str,
    "secret_environment": _str_map, "secret_file": _str,
})


def unit_name(value: object, where: str = "unit") -> str:
    """A unit name by the one rule; SpecError (naming ``where``) otherwise."""
    why = names.problem(value)
    if why is not None:
        raise _fail(where, why)
    assert isinstance(value, str)
    return value


def check_spec(spec: object) -> UnitSpec:
    """``spec`` if it is a unit spec the agent can run; SpecError naming the unit (if it
    has a name) and the field otherwise."""
    if not isinstance(spec, dict):
        raise SpecError(f"a unit spec is an object, not {type(spec).__name__}")
    name = unit_name(spec.get("name"), "name")
    where = f"unit {name}"
    if names.is_template(name):
        raise _fail(where, "a template is never run itself, only its instances")
    content_hash = spec.get("hash")
    if not isinstance(content_hash, str) or not _HASH.fullmatch(content_hash):
        raise _fail(where, f"hash: want a hex string, not {numbers.show(content_hash)}")
    if spec.get("want") not in (protocol.WANT_RUNNING, protocol.WANT_STOPPED):
        raise _fail(where, f"want: want {protocol.WANT_RUNNING!r} or "
                           f"{protocol.WANT_STOPPED!r}, not {numbers.show(spec.get('want'))}")
    if spec.get("driver") not in DRIVERS:
        raise _fail(where, f"driver: want one of {', '.join(DRIVERS)}, not "
                           f"{numbers.show(spec.get('driver'))}")
    _int(0, GENERATION_MAX)(spec.get("generation", 0), f"{where}: generation")
    base = spec.get("base", "")
    if not isinstance(base, str) or (base and not _HASH.fullmatch(base)):
        raise _fail(where, f"base: want a hex string, not {numbers.show(base)}")
    _bool(spec.get("reload", False), f"{where}: reload")
    config = spec.get("config", {})
    _CONFIG(config, f"{where}: config")
    if "secrets" in spec:  # the values are never shown: _str_map names only the key
        _str_map(spec["secrets"], f"{where}: secrets")
    if spec["driver"] == "exec" and not config.get("commands"):
        raise _fail(where, "config: commands: an exec unit runs at least one ExecStart=")
    return cast(UnitSpec, spec)  # every field it has, checked: from here on typed


def check_specs(specs: List[object]) -> Tuple[List[UnitSpec], List[str]]:
    """The valid specs of a desired set, and why each other one was refused. A name
    given twice is refused the second time: one unit, one spec."""
    good: List[UnitSpec] = []
    refused: List[str] = []
    seen = set()
    for spec in specs:
        try:
            checked = check_spec(spec)
        except SpecError as exc:
            refused.append(str(exc))
            continue
        if checked["name"] in seen:
            refused.append(f"unit {checked['name']}: given twice in one desired set")
            continue
        seen.add(checked["name"])
        good.append(checked)
    return good, refused


def heartbeat(msg: Mapping[str, Any]) -> float:
    """hello's ``heartbeat_s`` (1 s if absent), within HEARTBEAT_MIN_S..HEARTBEAT_MAX_S."""
    try:
        return numbers.json_float(msg.get("heartbeat_s", messages.HEARTBEAT_S), HEARTBEAT_MIN_S,
                                  HEARTBEAT_MAX_S)
    except numbers.NumberError as exc:
        raise SpecError(f"hello: heartbeat_s: {exc}") from None


def epoch(msg: Mapping[str, Any]) -> int:
    """hello's ``epoch`` (0 if absent: a fleetd older than epochs), 0..EPOCH_MAX."""
    try:
        return numbers.json_int(msg.get("epoch", messages.EPOCH), 0, messages.EPOCH_MAX)
    except numbers.NumberError as exc:
        raise SpecError(f"hello: epoch: {exc}") from None


def is_request_id(value: object) -> bool:
    """Can ``value`` be echoed as a request's id (so an error can go to its reply)?"""
    try:
        numbers.json_int(value, 0, REQUEST_ID_MAX)
    except numbers.NumberError:
        return False
    return True


def request_id(msg: Mapping[str, Any]) -> int:
    """A request's ``id``: the number its reply carries back."""
    try:
        return numbers.json_int(msg.get("id"), 0, REQUEST_ID_MAX)
    except numbers.NumberError as exc:
        raise SpecError(f"{msg.get('type')}: id: {exc}") from None


def log_request(msg: Mapping[str, Any]) -> Tuple[int, str, int]:
    """A ``tail``/``follow`` request's id, unit name and number of lines."""
    ident = request_id(msg)
    kind = msg.get("type")
    unit = unit_name(msg.get("unit"), f"{kind}: unit")
    try:
        lines = numbers.json_int(msg.get("lines", messages.TAIL_LINES), 0, TAIL_LINES_MAX)
    except numbers.NumberError as exc:
        raise SpecError(f"{kind}: lines: {exc}") from None
    return ident, unit, lines
