"""fleetd's HTTP API (aiohttp): what fleetctl speaks, and nothing else does.

Served on a Unix socket (mode 0600: the socket's permissions are the authentication)
and, if configured, on TCP, where every request must carry the bearer token. Writes are
validated whole, stored durably, and only then answered; a 4xx leaves the registry as
it was. Errors are JSON ``{"error": "..."}`` with text for the user.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import hmac
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

if TYPE_CHECKING:  # app imports this module to serve it
    from fleetd.daemon.app import Daemon

DAEMON_KEY: web.AppKey[Daemon] = web.AppKey("daemon")
_MACHINE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_META = re.compile(r"[A-Za-z0-9_.-]+")
MAX_WAIT_S = 3600.0
UPGRADE_RECONNECT_S = 20.0  # how long an upgrade waits for the session to reconnect

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str, **extra: Any) -> web.Response:
    return web.json_response({"error": message, **extra}, status=status)


def _daemon(request: web.Request) -> Daemon:
    return request.app[DAEMON_KEY]


async def _body(request: web.Request) -> Dict[str, Any]:
    try:
        data = await request.json()
    except ValueError:
        raise web.HTTPBadRequest(text='{"error": "request body is not JSON"}',
                                 content_type="application/json") from None
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(text='{"error": "request body is not a JSON object"}',
                                 content_type="application/json")
    return data


def _token_middleware(token: Optional[str]) -> Any:
    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        if isinstance(sockname, tuple):  # TCP: a token is required, always
            given = request.headers.get("Authorization", "")
            expected = f"Bearer {token}" if token else None
            if expected is None or not hmac.compare_digest(given.encode(), expected.encode()):
                return _error(401, "missing or wrong bearer token")
        try:
            return await handler(request)
        except NotFound as exc:
            return _error(404, str(exc))
        except Conflict as exc:
            return _error(409, str(exc))
        except RegistryError as exc:
            return _error(400, str(exc))

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
        try:
            after = int(request.query["after"])
            timeout = min(float(request.query.get("timeout", "30")), MAX_WAIT_S)
        except ValueError:
            return _error(400, "after: want a version (a number); timeout: want seconds")
        deadline = time.monotonic() + timeout
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


async def add_machine(request: web.Request) -> web.Response:
    d = _daemon(request)
    body = await _body(request)
    address = body.get("address")
    if not isinstance(address, str) or not address:
        return _error(400, "address: required (USER@HOST[:PORT] is split by fleetctl)")
    name = body.get("name") or address
    if not isinstance(name, str) or not _MACHINE_NAME.fullmatch(name):
        return _error(400, f"name: {name!r} is not a valid machine name "
                           "(letters, digits, _ . -; at most 63)")
    port = body.get("port", 22)
    if not isinstance(port, int) or not 0 < port < 65536:
        return _error(400, f"port: {port!r} is not a TCP port")
    metadata = body.get("metadata") or {}
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and _META.fullmatch(k) and isinstance(v, str)
        for k, v in metadata.items()
    ):
        return _error(400, "metadata: want key=value pairs of letters, digits, _ . -")
    for key in ("identity", "known_hosts"):
        path = body.get(key)
        if path is not None and (not isinstance(path, str) or not os.path.isfile(path)):
            return _error(400, f"{key}: {path!r} is not a readable file on the fleetd host")
    agent_command = body.get("agent_command")
    target = bootstrap.Target(prefix=str(body.get("prefix") or bootstrap.DEFAULT_PREFIX))
    if not agent_command:
        try:
            target.check()
        except bootstrap.BootstrapError as exc:
            return _error(400, f"prefix: {exc}")
    record = MachineRecord(
        name=name, address=address, port=port, user=str(body.get("user") or "root"),
        identity=body.get("identity"), known_hosts=body.get("known_hosts"),
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
    purge = request.query.get("purge", "") in ("1", "true", "yes")
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
        installed = await bootstrap.install_on(machine, found[0], force=bool(body.get("force")),
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
    items = body.get("units")
    if not isinstance(items, list) or not items or not all(isinstance(i, dict) for i in items):
        return _error(400, "units: want a non-empty list of {name, text?, source?, vars?}")
    names = [i.get("name") for i in items]
    if len(set(names)) != len(names):
        return _error(400, "units: the same unit name is given twice")
    if desired not in (None, INACTIVE):
        for name in names:
            if isinstance(name, str) and "@." in name:
                return _error(400, f"{name} is a template; start an instance such as "
                                   f"{name.replace('@.', '@1.')}")
    try:
        inputs = submit.resolve(d.registry, items)
    except submit.SubmitError as exc:
        return _error(exc.status, str(exc), errors=exc.errors)
    changed = d.registry.put_units(inputs, desired, replace=bool(body.get("replace")))
    d.changed()
    return web.json_response({"units": [{"name": u.name, "hash": u.hash} for u in inputs],
                              "changed": changed})


async def set_state(request: web.Request) -> web.Response:
    d = _daemon(request)
    body = await _body(request)
    names, desired = _names(body), body.get("desired")
    if desired not in DESIRED_STATES:
        return _error(400, f"desired: {desired!r} is not one of {', '.join(DESIRED_STATES)}")
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
        raise web.HTTPBadRequest(text='{"error": "names: want a non-empty list of unit names"}',
                                 content_type="application/json")
    return names


async def destroy_units(request: web.Request) -> web.Response:
    d = _daemon(request)
    names = _names(await _body(request))
    d.registry.delete_units(names)
    d.changed()
    return web.json_response({"destroyed": names})


def _lines(request: web.Request) -> int:
    """The ``lines`` query parameter (how many log lines), 0 to 10,000."""
    try:
        return max(0, min(int(request.query.get("lines", "10")), 10000))
    except ValueError:
        raise web.HTTPBadRequest(text='{"error": "lines: want a number"}',
                                 content_type="application/json") from None


async def unit_status(request: web.Request) -> web.Response:
    """Everything about one unit: desired state, placement and why, each copy's state,
    and the last lines of its log, asked from the agent of the machine it is placed on."""
    d = _daemon(request)
    name = request.match_info["name"]
    u = d.registry.get_unit(name)
    if u is None:
        return _error(404, f"unit {name} does not exist")
    lines = _lines(request)
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
    u = d.registry.get_unit(name)
    if u is None:
        return _error(404, f"unit {name} does not exist")
    where = targets(d, u)  # a Global unit's log: from the first of its machines
    session = d.sessions.get(where[0]) if where else None
    if session is None:
        return _error(409, f"unit {name} is not placed on any machine")
    lines = _lines(request)
    follow = request.query.get("follow") in ("1", "true", "yes")
    if not follow:
        try:
            reply = await session.request("tail", unit=name, lines=lines)
        except TransportError as exc:
            return _error(503, str(exc))
        if "error" in reply:
            return _error(500, f"{u.machine}: {reply['error']}")
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
    try:
        timeout = min(float(request.query.get("timeout", "30")), MAX_WAIT_S)
    except ValueError:
        return _error(400, "timeout: want seconds")
    deadline = time.monotonic() + timeout
    while True:
        verdict, why = _wait_verdict(d, name, until)
        if verdict is not None:
            return web.json_response({"unit": name, "reached": verdict, "why": why})
        left = deadline - time.monotonic()
        if left <= 0:
            return web.json_response({"unit": name, "reached": False, "timeout": True,
                                      "why": why})
        await d.changes.wait(left)


def make_app(d: Daemon) -> web.Application:
    app = web.Application(middlewares=[_token_middleware(d.config.token)],
                          client_max_size=64 * 1024 * 1024)
    app[DAEMON_KEY] = d
    app.router.add_get("/v1/health", health)
    app.router.add_get("/v1/machines", list_machines)
    app.router.add_post("/v1/machines", add_machine)
    app.router.add_delete("/v1/machines/{name}", remove_machine)
    app.router.add_post("/v1/machines/{name}/upgrade", upgrade_machine)
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


async def serve(d: Daemon) -> web.AppRunner:
    runner = web.AppRunner(make_app(d), access_log=None, handle_signals=False)
    await runner.setup()
    sock_dir = os.path.dirname(d.config.socket)
    os.makedirs(sock_dir, mode=0o755, exist_ok=True)
    if os.path.exists(d.config.socket):
        os.unlink(d.config.socket)  # the lease says no other fleetd owns it
    old = os.umask(0o177)  # the socket is born 0600: no window for other users
    try:
        # a client's connect to a full Unix-socket backlog fails at once (EAGAIN), not
        # waits: aiohttp's 128 refused a third of 500 concurrent submits
        await web.UnixSite(runner, d.config.socket, backlog=1024).start()
    finally:
        os.umask(old)
    os.chmod(d.config.socket, 0o600)
    if d.config.listen:
        host, port = d.config.listen_host_port
        await web.TCPSite(runner, host, port).start()
    await asyncio.sleep(0)
    return runner
