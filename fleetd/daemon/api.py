"""fleetd's HTTP API (aiohttp): what fleetctl speaks, and nothing else does.

Served on a Unix socket (mode 0600: the socket's permissions are the authentication)
and, if configured, on TCP, where every request must carry the bearer token. Writes are
validated whole, stored durably, and only then answered; a 4xx leaves the registry as
it was. Errors are JSON ``{"error": "..."}`` with text for the user that names the
field, parameter or route (``_answer_errors``; a fault in fleetd is logged and answered
500 without its traceback). What a request may carry is bounded: a body of MAX_BODY
bytes, a unit of MAX_UNIT_TEXT, JSON MAX_DEPTH deep, text that is UTF-8, numbers read by
``fleetd.wire.numbers`` (finite, in range). Connections: ``listeners.py``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hmac
import json
import logging
import os
import re
import time
from typing import (
    TYPE_CHECKING,
    Any,
    Awaitable,
    Callable,
    Dict,
    List,
    Mapping,
    Optional,
    Sequence,
    Tuple,
    TypeVar,
)

from aiohttp import web

from fleetd import __version__, protocol
from fleetd.agent.health import acts_on_failing
from fleetd.bootstrap import machines as bootstrap
from fleetd.daemon import drain, submit
from fleetd.daemon.failures import reschedule_info
from fleetd.registry.base import (
    DESIRED_STATES,
    INACTIVE,
    LAUNCHED,
    Conflict,
    FailureRecord,
    MachineRecord,
    NotFound,
    ObservedRecord,
    RegistryError,
    UnitRecord,
)
from fleetd.transport.base import TransportError
from fleetd.units.parser import UnitError
from fleetd.units.validate import validate
from fleetd.wire import numbers

if TYPE_CHECKING:  # app imports this module to serve it
    from fleetd.daemon.app import Daemon

log = logging.getLogger("fleetd.api")

DAEMON_KEY: web.AppKey[Daemon] = web.AppKey("daemon")
_MACHINE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_META = re.compile(r"[A-Za-z0-9_.-]+")
_SURROGATE = re.compile("[\ud800-\udfff]")  # JSON's "\ud800": no UTF-8 for it, no SQLite
MAX_WAIT_S = 3600.0
MAX_LINES = 10000  # log lines one request asks of an agent
UPGRADE_RECONNECT_S = 20.0  # how long an upgrade waits for the session to reconnect
MIB = 1024 * 1024
MAX_BODY = 4 * MIB  # one request: a few units at their largest
MAX_UNIT_TEXT = 1 * MIB  # one unit file; a 50 MB "unit" is not a unit
MAX_DEPTH = 16  # JSON nesting: fleetctl's bodies are 3 deep

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
N = TypeVar("N", int, float)


class Refused(Exception):
    """A request fleetd will not act on: answered ``status`` with ``message``, which
    names the field, parameter or part of the request that is wrong."""

    def __init__(self, status: int, message: str) -> None:
        self.status = status
        super().__init__(message)


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _daemon(request: web.Request) -> Daemon:
    return request.app[DAEMON_KEY]


def _route(request: web.Request) -> str:
    """``POST /v1/units/{name}/wait``: the route, as errors name it."""
    resource = request.match_info.route.resource
    return f"{request.method} {resource.canonical if resource else request.path}"


# --- what a request carries ---------------------------------------------------------------
async def _read(request: web.Request) -> bytes:
    """The whole body, at most MAX_BODY bytes (aiohttp answers 413 past it), arriving
    within the idle timeout: a client that sends half a body does not hold a handler."""
    try:
        return await asyncio.wait_for(request.read(), _daemon(request).config.idle_timeout_s)
    except asyncio.TimeoutError:
        raise Refused(408, "request body: not all of it arrived within "
                           f"{_daemon(request).config.idle_timeout_s:g}s") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


async def _body(request: web.Request) -> Dict[str, Any]:
    """The body as a JSON object of text fleetd can store: UTF-8, no ``NaN``, no lone
    surrogate, at most MAX_DEPTH deep (100k levels would exhaust the parser's stack)."""
    raw = await _read(request)
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError as exc:
        raise Refused(400, f"request body is not UTF-8 (byte {exc.start})") from None
    except RecursionError:
        raise Refused(400, f"request body: JSON nested deeper than {MAX_DEPTH}") from None
    except ValueError as exc:
        raise Refused(400, f"request body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise Refused(400, "request body is not a JSON object")
    why = _malformed(data)
    if why:
        raise Refused(400, f"request body: {why}")
    return data


def _malformed(data: object) -> Optional[str]:
    """Why decoded JSON cannot be taken (too deep, a lone surrogate), or None. A loop,
    not a recursion: the depth is what is being checked."""
    todo: List[Tuple[object, int]] = [(data, 1)]
    while todo:
        value, depth = todo.pop()
        if depth > MAX_DEPTH:
            return f"JSON nested deeper than {MAX_DEPTH}"
        if isinstance(value, dict):
            todo.extend((k, depth) for k in value)
            todo.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            todo.extend((v, depth + 1) for v in value)
        elif isinstance(value, str) and _SURROGATE.search(value):
            return "a lone surrogate (\\ud800-\\udfff) is not text"
    return None


def _number(where: str, read: Callable[[], N]) -> N:
    """``read()``'s number, or 400 naming ``where`` and what was wanted."""
    try:
        return read()
    except numbers.NumberError as exc:
        raise Refused(400, f"{where}: {exc}") from None


def _query_float(request: web.Request, key: str, default: float, lo: float,
                 hi: Optional[float] = None) -> float:
    text = request.query.get(key)
    if text is None:
        return default
    return _number(key, lambda: numbers.parse_float(text, lo, hi))


def _query_int(request: web.Request, key: str, default: int, lo: int,
               hi: Optional[int] = None) -> int:
    text = request.query.get(key)
    if text is None:
        return default
    return _number(key, lambda: numbers.parse_int(text, lo, hi))


_YES, _NO = ("1", "true", "yes"), ("", "0", "false", "no")


def _query_flag(request: web.Request, key: str) -> bool:
    value = request.query.get(key, "")
    if value not in _YES + _NO:
        raise Refused(400, f"{key}: want one of 1, true, yes, 0, false, no; not {value!r}")
    return value in _YES


def _flag(body: Dict[str, Any], key: str) -> bool:
    """A JSON field that must be true or false (absent: false); ``"no"`` is no false."""
    value = body.get(key, False)
    if value is None or isinstance(value, bool):
        return bool(value)
    raise Refused(400, f"{key}: want true or false, not {_shown(value)}")


def _shown(value: object) -> str:
    """A JSON value as an error quotes it: short (a 4 MiB "name" is not echoed back)."""
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _text(body: Dict[str, Any], key: str) -> Optional[str]:
    """A JSON field that must be a string when given (a list would be stored as its
    repr); None or "" when absent."""
    value = body.get(key)
    if value is None or isinstance(value, str):
        return value
    raise Refused(400, f"{key}: want a string, not {type(value).__name__}")


# --- the two middlewares ----------------------------------------------------------------------
@web.middleware
async def _answer_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every answer that is not a success is JSON ``{"error": ...}`` naming what is wrong
    or the route: a request fleetd refuses (``Refused``, a registry refusal, aiohttp's own
    404/405/413), and a fault in fleetd itself, which is logged with its traceback here
    and answered 500 without it. One bad request never takes anything else down."""
    try:
        if _SURROGATE.search(request.path) or _SURROGATE.search(request.query_string):
            raise Refused(400, "the URL is not UTF-8")
        return await handler(request)
    except Refused as exc:
        return _error(exc.status, str(exc))
    except NotFound as exc:
        return _error(404, str(exc))
    except Conflict as exc:
        return _error(409, str(exc))
    except RegistryError as exc:
        return _error(400, str(exc))
    except web.HTTPException as exc:
        return _error(exc.status, _http_error(request, exc))
    except Exception:  # the one catch-all: a bug answers 500, never a traceback
        log.exception("%s failed", _route(request))
        return _error(500, f"{_route(request)}: internal error in fleetd (logged there)")


def _http_error(request: web.Request, exc: web.HTTPException) -> str:
    if exc.status == 413:
        return f"{_route(request)}: request body over {MAX_BODY // MIB} MiB"
    if exc.status == 404:
        return f"no such route: {request.method} {request.path}"
    if exc.status == 405:
        return f"{request.method} is not allowed on {request.path}"
    return f"{_route(request)}: {exc.reason}"


def authorized(header: str, token: str) -> bool:
    """Does an Authorization header carry ``token``? ``Bearer`` in any case (RFC 7235);
    bytes that are not UTF-8 (aiohttp hands them over escaped) simply do not match."""
    scheme, _, given = header.strip().partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(
        given.strip().encode("utf-8", "surrogatepass"), token.encode("utf-8"))


def _token_middleware(token: Optional[str]) -> Any:
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        if isinstance(sockname, tuple):  # TCP: a token is required, always
            given = request.headers.get("Authorization", "")
            if token is None or not authorized(given, token):
                return _error(401, "missing or wrong bearer token")
        return await handler(request)

    return check


def is_current(d: Daemon, u: Optional[UnitRecord], o: ObservedRecord) -> bool:
    """Is this report about the content and generation fleetd wants on that machine now?
    (The agent reports the hash of the unit as rendered for its machine.)"""
    return (u is not None and o.generation == u.generation
            and o.hash == d.engine.expected.get((u.name, o.machine)))


def targets(d: Daemon, u: UnitRecord) -> List[str]:
    """Where the unit should be: its machine, or every machine of a Global unit."""
    if u.name in d.engine.global_targets:
        return d.engine.global_targets[u.name]
    return [u.machine] if u.machine else []


# --- views ---------------------------------------------------------------------------
def _observed_row(o: ObservedRecord) -> Dict[str, Any]:
    return {"unit": o.unit, "machine": o.machine, "state": o.state, "pid": o.pid,
            "hash": o.hash, "started_at": o.started_at, "exit_status": o.exit_status,
            "restarts": o.restarts, "error": o.error, "health": o.health,
            "generation": o.generation}


def unit_rows(d: Daemon, units: List[UnitRecord], observed: List[ObservedRecord]
              ) -> List[Dict[str, Any]]:
    """One row per unit per machine where it is placed or where a copy still runs."""
    by_key = {(o.unit, o.machine): o for o in observed}
    rows: List[Dict[str, Any]] = []
    seen = set()
    for u in units:
        for machine in targets(d, u):
            o = by_key.get((u.name, machine))
            seen.add((u.name, machine))
            row: Dict[str, Any] = _observed_row(o) if o else {
                "unit": u.name, "machine": machine, "state": "-", "pid": None}
            row["desired"] = u.desired
            row["current"] = o is not None and is_current(d, u, o)
            rows.append(row)
    for key, o in by_key.items():
        if key not in seen:  # a copy the host still has, not (or no longer) placed there
            rows.append({**_observed_row(o), "desired": "-", "current": False})
    rows.sort(key=lambda r: (r["unit"], r["machine"]))
    return rows


def _unit_file_row(d: Daemon, u: UnitRecord,
                   observed: Dict[Tuple[str, str], ObservedRecord],
                   failures: Mapping[str, Sequence[FailureRecord]]) -> Dict[str, Any]:
    where = targets(d, u)
    states = sorted({observed[(u.name, m)].state for m in where if (u.name, m) in observed})
    state = ",".join(states) or ("inactive" if not where else "-")
    machine = u.machine if u.name not in d.engine.global_targets \
        else f"global ({len(where)})"
    return {"unit": u.name, "hash": u.hash, "desired": u.desired, "state": state,
            "machine": machine, "machines": where, "reason": u.reason,
            "handoff": u.handoff,
            "reschedule": reschedule_info(u, d.engine.requirements_of(u),
                                          failures.get(u.name, ()), time.time())}


def _machine_row(m: MachineRecord, units: int, last_seen: Optional[float],
                 drained: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    return {"name": m.name, "address": m.address, "port": m.port, "user": m.user,
            "state": m.state, "error": m.error, "metadata": m.metadata,
            "machine_id": m.machine_id, "units": units, "last_seen": last_seen,
            "facts": m.facts, "drain": drained}


# --- handlers -----------------------------------------------------------------------------
async def health(request: web.Request) -> web.Response:
    d = _daemon(request)
    return web.json_response({"ok": True, "version": __version__, "pid": os.getpid(),
                              "started_at": d.started_at})


async def list_machines(request: web.Request) -> web.Response:
    """Every machine. With ``after=VERSION`` (the ``version`` of an earlier answer) it
    answers once something has changed since, or after ``timeout`` seconds: how the CLI
    waits for machines to come up or a drain to end, without polling."""
    d = _daemon(request)
    if "after" in request.query:
        after = _query_int(request, "after", 0, 0)
        deadline = time.monotonic() + _timeout(request)
        while d.changes.version <= after and time.monotonic() < deadline:
            await d.changes.wait(deadline - time.monotonic())
    counts: Dict[str, int] = {}
    units = d.registry.list_units()
    for u in units:
        if u.machine:
            counts[u.machine] = counts.get(u.machine, 0) + 1
    rows = []
    for m in d.registry.list_machines():
        session = d.sessions.get(m.name)
        rows.append(_machine_row(m, counts.get(m.name, 0),
                                 session.last_seen if session else m.last_seen,
                                 drain.progress(m, units)))
    return web.json_response({"machines": rows, "version": d.changes.version})


def _timeout(request: web.Request) -> float:
    """A long poll's ``timeout`` in seconds (default 30): finite, not negative; past
    MAX_WAIT_S it answers at MAX_WAIT_S (the CLI asks again)."""
    return min(_query_float(request, "timeout", 30.0, 0.0), MAX_WAIT_S)


async def add_machine(request: web.Request) -> web.Response:
    d = _daemon(request)
    body = await _body(request)
    address = _text(body, "address")
    if not address or address.strip() != address or not address.isprintable():
        return _error(400, "address: required (USER@HOST[:PORT] is split by fleetctl)")
    name = _text(body, "name") or address
    if not _MACHINE_NAME.fullmatch(name):
        return _error(400, f"name: {name[:80]!r} is not a valid machine name "
                           "(letters, digits, _ . -; at most 63)")
    port = _number("port", lambda: numbers.json_int(body.get("port", 22), 1, 65535))
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and _META.fullmatch(k) and isinstance(v, str)
        for k, v in metadata.items()
    ):
        return _error(400, "metadata: want key=value pairs of letters, digits, _ . -")
    for key in ("identity", "known_hosts"):
        path = _text(body, key)
        if path is not None and not os.path.isfile(path):
            return _error(400, f"{key}: {path!r} is not a readable file on the fleetd host")
    agent_command = _text(body, "agent_command")
    target = bootstrap.Target(prefix=_text(body, "prefix") or bootstrap.DEFAULT_PREFIX)
    if not agent_command:
        try:
            target.check()
        except bootstrap.BootstrapError as exc:
            return _error(400, f"prefix: {exc}")
    record = MachineRecord(
        name=name, address=address, port=port, user=_text(body, "user") or "root",
        identity=_text(body, "identity"), known_hosts=_text(body, "known_hosts"),
        agent_command=str(agent_command or target.agent_command(False)),
        metadata={str(k): str(v) for k, v in metadata.items()},
    )
    # Refused before anything touches the host: a name or address already taken, or
    # being added right now.
    taken = d.registry.get_machine(name) is not None or name in d.installing
    if taken:
        return _error(409, f"machine {name} already exists" + (
            " (fleetctl machine upgrade NAME updates the agent fleetd installed there)"
            if not agent_command else ""))
    for m in d.registry.list_machines():
        if (m.address, m.port) == (address, port):
            return _error(409, f"{address}:{port} is already machine {m.name}")
    if (address, port) in d.installing:
        return _error(409, f"{address}:{port} is being added right now")
    installed: Optional[bootstrap.Installed] = None
    if not agent_command:  # fleetd installs the agent first, registers the machine after
        d.installing.update((name, (address, port)))
        try:
            installed = await bootstrap.install_on(record, target)
        except bootstrap.BootstrapError as exc:
            return _error(422, str(exc), problems=exc.problems,
                          host=exc.report.summary() if exc.report else None)
        except TransportError as exc:
            return _error(422, str(exc), kind=exc.kind)
        finally:
            d.installing.difference_update((name, (address, port)))
        record = dataclasses.replace(record, agent_command=installed.agent_command)
    d.add_machine(record)
    return web.json_response({"machine": _machine_row(record, 0, None),
                              **({"agent": installed.to_json()} if installed else {})},
                             status=201)


async def drain_machine(request: web.Request) -> web.Response:
    return drain.drain(_daemon(request), request.match_info["name"], await _body(request))


async def undrain_machine(request: web.Request) -> web.Response:
    return drain.undrain(_daemon(request), request.match_info["name"])


async def remove_machine(request: web.Request) -> web.Response:
    d = _daemon(request)
    name = request.match_info["name"]
    machine = d.registry.get_machine(name)
    if machine is None:
        return _error(404, f"machine {name} does not exist")
    purge = _query_flag(request, "purge")
    if purge and bootstrap.installed_by_fleetd(machine) is None:
        return _error(400, f"machine {name} was added with --agent-command: fleetd did not "
                           "install its agent and removes nothing there (no --purge)")
    return web.json_response(await d.remove_machine(name, purge=purge))


async def upgrade_machine(request: web.Request) -> web.Response:
    """Install this fleetd's agent on a machine where fleetd installed an older one, in
    place: its units keep running (the new agent re-adopts them); the machine's session
    reconnects to the new agent by itself."""
    d = _daemon(request)
    name = request.match_info["name"]
    machine = d.registry.get_machine(name)
    if machine is None:
        return _error(404, f"machine {name} does not exist")
    found = bootstrap.installed_by_fleetd(machine)
    if found is None:
        return _error(409, f"machine {name} was added with --agent-command: fleetd did not "
                           "install its agent and does not upgrade it")
    if name in d.installing:
        return _error(409, f"machine {name} is being installed right now")
    body = await _body(request) if request.can_read_body else {}
    d.installing.add(name)
    try:
        installed = await bootstrap.install_on(machine, found[0], force=_flag(body, "force"),
                                               systemd=found[1])
    except bootstrap.BootstrapError as exc:
        return _error(422, str(exc), problems=exc.problems)
    except TransportError as exc:
        return _error(422, str(exc), kind=exc.kind)
    finally:
        d.installing.discard(name)
    session = d.sessions.get(name)
    deadline = time.monotonic() + UPGRADE_RECONNECT_S
    while session is not None and not session.connected and time.monotonic() < deadline:
        await d.changes.wait(0.1)
    current = d.registry.get_machine(name) or machine
    return web.json_response({"agent": installed.to_json(), "state": current.state,
                              "error": current.error})


async def list_units(request: web.Request) -> web.Response:
    d = _daemon(request)
    return web.json_response(
        {"units": unit_rows(d, d.registry.list_units(), d.registry.list_observed())}
    )


async def list_unit_files(request: web.Request) -> web.Response:
    d = _daemon(request)
    observed = {(o.unit, o.machine): o for o in d.registry.list_observed()}
    failures = d.registry.list_failures()
    return web.json_response(
        {"unit_files": [_unit_file_row(d, u, observed, failures)
                        for u in d.registry.list_units()]}
    )


async def get_unit(request: web.Request) -> web.Response:
    d = _daemon(request)
    name = request.match_info["name"]
    u = d.registry.get_unit(name)
    if u is None:
        return _error(404, f"unit {name} does not exist")
    observed = {(o.unit, o.machine): o for o in d.registry.list_observed(name)}
    return web.json_response({**_unit_file_row(d, u, observed, d.registry.list_failures(name)),
                              "text": d.registry.unit_text(u.hash)})


async def submit_units(request: web.Request) -> web.Response:
    """Resolve and validate every unit of the request, then store them all or none."""
    d = _daemon(request)
    body = await _body(request)
    desired = body.get("desired")
    if desired is not None and desired not in DESIRED_STATES:
        return _error(400, f"desired: {desired!r} is not one of {', '.join(DESIRED_STATES)}")
    items = _unit_items(body)
    names = [i["name"] for i in items]
    if len(set(names)) != len(names):
        return _error(400, "units: the same unit name is given twice")
    if desired not in (None, INACTIVE):
        for name in names:
            if isinstance(name, str) and "@." in name:
                return _error(400, f"{name} is a template; start an instance such as "
                                   f"{name.replace('@.', '@1.')}")
    try:  # the registry is read here, on its thread; templates render in a worker
        inputs = await asyncio.to_thread(submit.check, submit.gather(d.registry, items))
    except submit.SubmitError as exc:
        return _error(exc.status, str(exc), errors=exc.errors)
    changed = d.registry.put_units(inputs, desired, replace=_flag(body, "replace"))
    d.changed()
    return web.json_response({"units": [{"name": u.name, "hash": u.hash} for u in inputs],
                              "changed": changed})


def _unit_items(body: Dict[str, Any]) -> List[Dict[str, Any]]:
    """A submit's ``units``: objects, each with a string ``name`` and texts of at most
    MAX_UNIT_TEXT bytes (413 past it)."""
    items = body.get("units")
    if not isinstance(items, list) or not items or not all(
            isinstance(i, dict) and isinstance(i.get("name"), str) for i in items):
        raise Refused(400, "units: want a non-empty list of {name, text?, source?, vars?} "
                           "with name a string")
    for item in items:
        for key in ("text", "template_text"):
            text = item.get(key)
            size = len(text.encode()) if isinstance(text, str) else 0
            if size > MAX_UNIT_TEXT:
                raise Refused(413, f"{item['name'][:80]}: {key} is {size:,} bytes; "
                                   f"a unit has at most {MAX_UNIT_TEXT // MIB} MiB")
    return items


async def set_state(request: web.Request) -> web.Response:
    d = _daemon(request)
    body = await _body(request)
    names, desired = _names(body), body.get("desired")
    if desired not in DESIRED_STATES:
        return _error(400, f"desired: {_shown(desired)} is not one of "
                           f"{', '.join(DESIRED_STATES)}")
    d.registry.set_desired(names, desired)
    d.changed()
    return web.json_response({"names": names, "desired": desired})


async def restart_units(request: web.Request) -> web.Response:
    d = _daemon(request)
    names = _names(await _body(request))
    for name in names:  # restarting would make it launched, and a template never runs
        if "@." in name:
            return _error(400, f"{name} is a template; restart its instances, such as "
                               f"'{name.replace('@.', '@*.')}'")
    d.registry.restart(names)
    d.changed()
    return web.json_response({"restarted": names})


def _names(body: Dict[str, Any]) -> List[str]:
    names = body.get("names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise Refused(400, "names: want a non-empty list of unit names")
    return names


async def destroy_units(request: web.Request) -> web.Response:
    d = _daemon(request)
    names = _names(await _body(request))
    d.registry.delete_units(names)
    d.changed()
    return web.json_response({"destroyed": names})


def _lines(request: web.Request) -> int:
    """The ``lines`` query parameter (how many log lines), 0 to MAX_LINES."""
    return _query_int(request, "lines", 10, 0, MAX_LINES)


async def unit_status(request: web.Request) -> web.Response:
    """Everything about one unit: desired state, placement and why, each copy's state,
    and the last lines of its log, asked from the agent of the machine it is placed on."""
    d = _daemon(request)
    name = request.match_info["name"]
    lines = _lines(request)
    u = d.registry.get_unit(name)
    if u is None:
        return _error(404, f"unit {name} does not exist")
    copies = []
    for o in d.registry.list_observed(name):
        row = _observed_row(o)
        row["current"] = is_current(d, u, o)
        copies.append(row)
    try:  # the description as systemd would show it: specifiers expanded
        description = validate(name, d.registry.unit_text(u.hash) or "", u.vars,
                               name).description
    except UnitError as exc:
        description = f"(invalid: {exc})"
    result: Dict[str, Any] = {"unit": name, "description": description, "desired": u.desired,
                              "machine": u.machine, "reason": u.reason, "hash": u.hash,
                              "generation": u.generation, "vars": u.vars, "copies": copies,
                              "log": None, "handoff": u.handoff,
                              "reschedule": reschedule_info(
                                  u, d.engine.requirements_of(u),
                                  d.registry.list_failures(name).get(name, ()), time.time())}
    where = targets(d, u)  # a Global unit's log: from the first of its machines
    session = d.sessions.get(where[0]) if where else None
    if lines and session is not None:
        try:
            reply = await session.request("tail", unit=name, lines=lines)
            if "error" in reply:
                result["log_error"] = str(reply["error"])
            else:
                result["log"] = [str(x) for x in reply.get("lines", [])]
        except TransportError as exc:
            result["log_error"] = str(exc)
    return web.json_response(result)


async def unit_journal(request: web.Request) -> web.StreamResponse:
    """A unit's log from the machine it is placed on, as plain text lines; with
    ``follow=1`` the response stays open and new lines arrive as the program writes."""
    d = _daemon(request)
    name = request.match_info["name"]
    lines, follow = _lines(request), _query_flag(request, "follow")
    u = d.registry.get_unit(name)
    if u is None:
        return _error(404, f"unit {name} does not exist")
    where = targets(d, u)  # a Global unit's log: from the first of its machines
    session = d.sessions.get(where[0]) if where else None
    if session is None:
        return _error(409, f"unit {name} is not placed on any machine")
    if not follow:
        try:
            reply = await session.request("tail", unit=name, lines=lines)
        except TransportError as exc:
            return _error(503, str(exc))
        if "error" in reply:  # the agent's refusal: a bad gateway, not fleetd's fault
            return _error(502, f"{where[0]}: {reply['error']}")
        text = "".join(f"{line}\n" for line in reply.get("lines", []))
        return web.Response(text=text, content_type="text/plain")
    response = web.StreamResponse(headers={"Content-Type": "text/plain; charset=utf-8"})
    await response.prepare(request)
    try:
        async for msg in session.stream("follow", "unfollow", unit=name, lines=lines):
            chunk = "".join(f"{line}\n" for line in msg.get("lines", []))
            if chunk:
                await response.write(chunk.encode())
    except (TransportError, ConnectionResetError):
        pass
    return response


WAIT_UNTIL = ("running", "healthy", "stopped", "gone", "unplaced")


def _wait_verdict(d: Daemon, name: str, until: str) -> Tuple[Optional[bool], str]:
    """(True: reached, False: will not be reached, None: not yet) and why."""
    u = d.registry.get_unit(name)
    copies = d.registry.list_observed(name)
    if until in ("gone", "unplaced"):
        if (u is None or until == "unplaced") and not copies:
            return True, "gone" if u is None else "unloaded"
        if copies:
            return None, "still on " + ", ".join(f"{o.machine} ({o.state})" for o in copies)
        return None, "still known"
    if u is None:
        return False, f"unit {name} does not exist"
    if until == "healthy" and u.desired != LAUNCHED:
        return False, f"no longer launched (desired state {u.desired})"
    where = targets(d, u)
    if not where:
        return None, f"not placed: {u.reason or 'waiting for the engine'}"
    check = _check_of(d, u) if until == "healthy" else None
    verdicts = [_verdict_on(d, u, m, copies, until, check) for m in where]
    for reached, why in verdicts:
        if reached is False:
            return False, why
    whys = "; ".join(why for _, why in verdicts)
    if all(reached for reached, _ in verdicts):
        return True, whys
    return None, whys


def _verdict_on(d: Daemon, u: UnitRecord, machine: str, copies: List[ObservedRecord],
                until: str, check: Optional[Dict[str, Any]] = None
                ) -> Tuple[Optional[bool], str]:
    here = next((o for o in copies if o.machine == machine), None)
    if here is None or not is_current(d, u, here):
        # a report of an earlier generation (before a restart) or content never counts
        return None, f"placed on {machine}, not reported there yet"
    if until == "running":
        if here.state == protocol.RUNNING:
            return True, f"running on {machine} (pid {here.pid})"
        if here.state in (protocol.FAILED, protocol.EXITED):
            return False, f"{here.state} on {machine}: {here.error or 'exited'}"
        return None, f"{here.state} on {machine}"
    if until == "healthy":
        return healthy_verdict(here, check)
    if until == "stopped":
        done = here.state in (protocol.STOPPED, protocol.EXITED, protocol.FAILED)
        return (True if done else None), f"{here.state} on {machine}"
    return False, f"cannot wait until {until!r}"


def healthy_verdict(o: ObservedRecord, check: Optional[Dict[str, Any]]
                    ) -> Tuple[Optional[bool], str]:
    """Is this current report of a unit (``check``: its [X-Check], None without one)
    healthy: running the program this generation started - no end and restart since -
    with its check passing? A rolling restart goes on only past a healthy unit, so
    anything that shows the new run went wrong is a final no, with the agent's why."""
    machine = o.machine
    pid = f" (pid {o.pid})" if o.pid else ""
    if o.state in (protocol.FAILED, protocol.EXITED):
        return False, f"{o.state} on {machine}: {o.error or 'exited'}"
    if o.state == protocol.STARTING and o.error:  # it ended; Restart= starts it again
        return False, f"ended on {machine} and is being restarted by its policy: {o.error}"
    if o.restarts:
        return False, (f"restarted {o.restarts} time(s) on {machine}{pid} by its policy "
                       "since this restart" + (f": {o.error}" if o.error else ""))
    if o.state != protocol.RUNNING:
        return None, f"{o.state} on {machine}"
    if check is None or o.health == "passing":
        how = "running; no health check" if check is None else "health check passing"
        return True, f"healthy on {machine} ({f'pid {o.pid}, ' if o.pid else ''}{how})"
    if o.health == "failing":
        if acts_on_failing(check):  # the agent is ending the run: its report says why
            return None, f"health check failing on {machine}{pid}; the agent ends it"
        return False, f"health check failing on {machine}{pid}" + (
            f": {o.error}" if o.error else "")
    return None, f"running on {machine}{pid}, health check not passing yet"


def _check_of(d: Daemon, u: UnitRecord) -> Optional[Dict[str, Any]]:
    """The unit's [X-Check] (None without one), as the unit reads on any machine."""
    return _check_config(u.name, d.registry.unit_text(u.hash) or "",
                         tuple(sorted(u.vars.items())))


@functools.lru_cache(maxsize=512)
def _check_config(name: str, text: str, variables: Tuple[Tuple[str, str], ...]
                  ) -> Optional[Dict[str, Any]]:
    try:
        check = validate(name, text, dict(variables), name).config.get("check")
    except UnitError:
        return None  # the engine does not place it: waiters learn why from its reason
    return dict(check) if check else None


async def wait_unit(request: web.Request) -> web.Response:
    """Block until a unit reaches a state (or cannot), for ``fleetctl start`` and friends.
    ``until=healthy``: running the current generation and content, with its [X-Check]
    passing if it has one (``fleetctl restart --rolling`` waits for that)."""
    d = _daemon(request)
    name = request.match_info["name"]
    until = request.query.get("until", "running")
    if until not in WAIT_UNTIL:
        return _error(400, f"until: {until!r} is not one of {', '.join(WAIT_UNTIL)}")
    deadline = time.monotonic() + _timeout(request)
    while True:
        verdict, why = _wait_verdict(d, name, until)
        if verdict is not None:
            return web.json_response({"unit": name, "reached": verdict, "why": why})
        left = deadline - time.monotonic()
        if left <= 0:
            return web.json_response({"unit": name, "reached": False, "timeout": True,
                                      "why": why})
        await d.changes.wait(left)


def _to_the_end(handler: Handler) -> Handler:
    """A handler that works on a host (installs, upgrades, removes its agent) runs to its
    end even if its client goes away: fleetd cancels a gone client's handler (so that
    abandoned waits and ``journal -f`` end at once), and a half-done install would leave
    an agent on a host that fleetd does not know of. What fails after the client went
    away is logged."""
    @functools.wraps(handler)
    async def run(request: web.Request) -> web.StreamResponse:
        task = asyncio.ensure_future(handler(request))
        try:
            return await asyncio.shield(task)
        except asyncio.CancelledError:
            task.add_done_callback(functools.partial(_log_failure, _route(request)))
            raise

    return run


def _log_failure(route: str, task: asyncio.Future[web.StreamResponse]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("%s failed after its client went away", route, exc_info=task.exception())


def make_app(d: Daemon) -> web.Application:
    app = web.Application(middlewares=[_answer_errors, _token_middleware(d.config.token)],
                          client_max_size=MAX_BODY)
    app[DAEMON_KEY] = d
    app.router.add_get("/v1/health", health)
    app.router.add_get("/v1/machines", list_machines)
    app.router.add_post("/v1/machines", _to_the_end(add_machine))
    app.router.add_delete("/v1/machines/{name}", _to_the_end(remove_machine))
    app.router.add_post("/v1/machines/{name}/upgrade", _to_the_end(upgrade_machine))
    app.router.add_post("/v1/machines/{name}/drain", drain_machine)
    app.router.add_post("/v1/machines/{name}/undrain", undrain_machine)
    app.router.add_get("/v1/units", list_units)
    app.router.add_post("/v1/units", submit_units)
    app.router.add_post("/v1/units/state", set_state)
    app.router.add_post("/v1/units/destroy", destroy_units)
    app.router.add_post("/v1/units/restart", restart_units)
    app.router.add_get("/v1/unit-files", list_unit_files)
    app.router.add_get("/v1/units/{name}", get_unit)
    app.router.add_get("/v1/units/{name}/wait", wait_unit)
    app.router.add_get("/v1/units/{name}/status", unit_status)
    app.router.add_get("/v1/units/{name}/journal", unit_journal)
    return app
