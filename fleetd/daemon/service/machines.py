"""Machines: list, add (installing fleetd's agent first, where asked), remove, upgrade,
drain and undrain. Refusals are domain errors (errors.py); no HTTP here.

Work on a host (install, upgrade, removal) is guarded by ``installing``: machine names
and (address, port)s whose agent is being installed right now, one install at a time
each, and none registered twice meanwhile. A machine's session (its connection to the
agent) is the composition root's: opened and closed through the two callables given.
"""

from __future__ import annotations

import dataclasses
import os
import re
import time
from typing import Any, Awaitable, Callable, Dict, Mapping, Optional, Sequence, Set, Tuple

from fleetd.bootstrap import machines as bootstrap
from fleetd.daemon import drain
from fleetd.daemon.changes import Changes
from fleetd.daemon.service import metadata
from fleetd.daemon.service.errors import (
    Conflict,
    Following,
    HostFailed,
    Invalid,
    NotFound,
    NotLeading,
)
from fleetd.daemon.service.views import machine_row
from fleetd.daemon.session import MachineSession
from fleetd.registry.base import MachineRecord, Registry
from fleetd.transport.base import TransportError
from fleetd.wire import numbers

MACHINE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_META = re.compile(r"[A-Za-z0-9_.-]+")
REMOVE_DRAIN_S = 30.0  # how long machine removal waits for the host to stop its units
UPGRADE_RECONNECT_S = 20.0  # how long an upgrade waits for the session to reconnect


@dataclasses.dataclass(frozen=True)
class NewMachine:
    """A machine to add, its fields checked one by one (the ``check_*`` functions)."""

    name: str
    address: str
    port: int
    user: str
    identity: Optional[str]
    known_hosts: Optional[str]
    metadata: Dict[str, str]
    agent_command: Optional[str]  # None: fleetd installs its agent under ``target``
    target: bootstrap.Target


# --- a new machine's fields, checked in the order a request names them ---------------------
def check_address(address: Optional[str]) -> str:
    if not address or address.strip() != address or not address.isprintable():
        raise Invalid("address", "required (USER@HOST[:PORT] is split by fleetctl)")
    return address


def check_name(name: str) -> str:
    if not MACHINE_NAME.fullmatch(name):
        raise Invalid("name", f"{name[:80]!r} is not a valid machine name "
                              "(letters, digits, _ . -; at most 63)")
    return name


def check_port(port: object) -> int:
    try:
        return numbers.json_int(port, 1, 65535)
    except numbers.NumberError as exc:
        raise Invalid("port", str(exc)) from None


def check_metadata(metadata: object) -> Dict[str, str]:
    if not isinstance(metadata, dict) or not all(
        isinstance(k, str) and _META.fullmatch(k) and isinstance(v, str)
        for k, v in metadata.items()
    ):
        raise Invalid("metadata", "want key=value pairs of letters, digits, _ . -")
    return {str(k): str(v) for k, v in metadata.items()}


def check_file(key: str, path: Optional[str]) -> Optional[str]:
    """An SSH file (``identity``, ``known_hosts``) on the fleetd host, when given."""
    if path is not None and not os.path.isfile(path):
        raise Invalid(key, f"{path!r} is not a readable file on the fleetd host")
    return path


def check_target(prefix: Optional[str], agent_command: Optional[str]) -> bootstrap.Target:
    """Where fleetd installs the agent (checked only when it will: no agent_command)."""
    target = bootstrap.Target(prefix=prefix or bootstrap.DEFAULT_PREFIX)
    if not agent_command:
        try:
            target.check()
        except bootstrap.BootstrapError as exc:
            raise Invalid("prefix", str(exc)) from None
    return target


class Machines:
    def __init__(self, registry: Registry, changes: Changes,
                 changed: Callable[[], None], sessions: Mapping[str, MachineSession],
                 open_session: Callable[[MachineRecord], None],
                 close_session: Callable[[str], Awaitable[None]]) -> None:
        self.registry = registry
        self.changes = changes
        self._changed = changed
        self.sessions = sessions
        self._open_session = open_session
        self._close_session = close_session
        self.installing: Set[object] = set()
        self.following: Following = lambda: None  # the Daemon's, when it can follow

    async def list(self, after: Optional[int], timeout: float) -> Dict[str, Any]:
        """Every machine. With ``after`` (the ``version`` of an earlier answer) it
        answers once something has changed since, or after ``timeout`` seconds."""
        if after is not None:
            deadline = time.monotonic() + timeout
            while self.changes.version <= after and time.monotonic() < deadline:
                await self.changes.wait(deadline - time.monotonic())
        counts: Dict[str, int] = {}
        units = self.registry.list_units()
        for u in units:
            if u.machine:
                counts[u.machine] = counts.get(u.machine, 0) + 1
        rows = []
        for m in self.registry.list_machines():
            session = self.sessions.get(m.name)
            rows.append(machine_row(m, counts.get(m.name, 0),
                                    session.last_seen if session else m.last_seen,
                                    drain.progress(m, units),
                                    session.link if session else None))
        return {"machines": rows, "version": self.changes.version}

    def existing(self, name: str) -> MachineRecord:
        machine = self.registry.get_machine(name)
        if machine is None:
            raise NotFound(f"machine {name} does not exist")
        return machine

    # --- adding ---------------------------------------------------------------------------
    async def add(self, new: NewMachine) -> Dict[str, Any]:
        """Install the agent (unless an agent_command is given), then register the
        machine and open its session. Refused before anything touches the host: a name
        or address already taken, or being added right now."""
        name, address, port = new.name, new.address, new.port
        record = MachineRecord(
            name=name, address=address, port=port, user=new.user, identity=new.identity,
            known_hosts=new.known_hosts,
            agent_command=str(new.agent_command or new.target.agent_command(False)),
            metadata=new.metadata,
        )
        if self.registry.get_machine(name) is not None or name in self.installing:
            raise Conflict(f"machine {name} already exists" + (
                " (fleetctl machine upgrade NAME updates the agent fleetd installed there)"
                if not new.agent_command else ""))
        for m in self.registry.list_machines():
            if (m.address, m.port) == (address, port):
                raise Conflict(f"{address}:{port} is already machine {m.name}")
        if (address, port) in self.installing:
            raise Conflict(f"{address}:{port} is being added right now")
        installed: Optional[bootstrap.Installed] = None
        if not new.agent_command:  # fleetd installs the agent first, registers after
            self.installing.update((name, (address, port)))
            try:
                installed = await bootstrap.install_on(record, new.target)
            except bootstrap.BootstrapError as exc:
                raise HostFailed(str(exc), problems=exc.problems,
                                 host=exc.report.summary() if exc.report else None) from None
            except TransportError as exc:
                raise HostFailed(str(exc), kind=exc.kind) from None
            finally:
                self.installing.difference_update((name, (address, port)))
            record = dataclasses.replace(record, agent_command=installed.agent_command)
        await self.registry.add_machine(record)
        self._open_session(record)
        self._changed()
        return {"machine": machine_row(record, 0, None),
                **({"agent": installed.to_json()} if installed else {})}

    # --- upgrading ------------------------------------------------------------------------
    def upgradable(self, name: str) -> Tuple[MachineRecord, Tuple[bootstrap.Target, bool]]:
        """The machine and where fleetd installed its agent; refused for one added with
        --agent-command, or being installed right now."""
        machine = self.existing(name)
        found = bootstrap.installed_by_fleetd(machine)
        if found is None:
            raise Conflict(f"machine {name} was added with --agent-command: fleetd did not "
                           "install its agent and does not upgrade it")
        if name in self.installing:
            raise Conflict(f"machine {name} is being installed right now")
        return machine, found

    async def upgrade(self, machine: MachineRecord, found: Tuple[bootstrap.Target, bool],
                      force: bool) -> Dict[str, Any]:
        """Install this fleetd's agent where fleetd installed an older one (``found``:
        ``upgradable``'s), in place: its units keep running (the new agent re-adopts
        them); the machine's session reconnects to the new agent by itself."""
        name = machine.name
        self.installing.add(name)
        try:
            installed = await bootstrap.install_on(machine, found[0], force=force,
                                                   systemd=found[1])
        except bootstrap.BootstrapError as exc:
            raise HostFailed(str(exc), problems=exc.problems) from None
        except TransportError as exc:
            raise HostFailed(str(exc), kind=exc.kind) from None
        finally:
            self.installing.discard(name)
        session = self.sessions.get(name)
        deadline = time.monotonic() + UPGRADE_RECONNECT_S
        while session is not None and not session.connected and time.monotonic() < deadline:
            await self.changes.wait(0.1)
        current = self.registry.get_machine(name) or machine
        return {"agent": installed.to_json(), "state": current.state, "error": current.error}

    # --- removing ------------------------------------------------------------------------
    async def remove(self, machine: MachineRecord, purge: bool) -> Dict[str, Any]:
        """Stop the host's units (its desired set becomes empty), then forget it. Where
        fleetd installed the agent (fleetd.bootstrap), it then stops the agent there -
        after the session, which would start it again - and with ``purge`` removes what
        it installed. A host that cannot be reached is forgotten all the same: the answer
        says what was left there."""
        name = machine.name
        leader = self.following()
        if leader is not None:  # its units are stopped through the leader's session
            raise NotLeading(f"removing machine {name}", leader or None)
        if purge and bootstrap.installed_by_fleetd(machine) is None:
            raise Invalid(None, f"machine {name} was added with --agent-command: fleetd did "
                                "not install its agent and removes nothing there (no --purge)")
        current = self.registry.get_machine(name)  # as it is now, after the checks
        session = self.sessions.get(name)
        if session is not None and session.connected:
            session.push([])
            deadline = time.monotonic() + REMOVE_DRAIN_S
            while time.monotonic() < deadline and any(
                o.machine == name for o in self.registry.list_observed()
            ):
                await self.changes.wait(1.0)
        left = sorted(o.unit for o in self.registry.list_observed() if o.machine == name)
        await self.registry.remove_machine(name)
        await self._close_session(name)
        self._changed()
        result: Dict[str, Any] = {"removed": name}
        if left:
            result["units_left"] = left
        if current is None or bootstrap.installed_by_fleetd(current) is None:
            return result
        try:
            removed = await bootstrap.uninstall_from(current, purge)
        except TransportError as exc:
            result["warning"] = (f"the agent on {bootstrap.where(current)} may still run"
                                 f"{' and its files remain' if purge else ''}: {exc}")
            return result
        except bootstrap.BootstrapError as exc:
            result["warning"] = str(exc)
            return result
        result.update(agent_stopped=removed.stopped, purged=removed.purged)
        if removed.left_running:
            result["units_left"] = sorted({*left, *removed.left_running})
        return result

    # --- draining -------------------------------------------------------------------------
    async def drain(self, name: str, deadline_s: object) -> Dict[str, Any]:
        """Start (or extend) a drain (drain.py): the engine moves the machine's units
        off, one at a time; ``deadline_s`` (None: none) bounds how long it may take."""
        m = self.existing(name)
        deadline = None
        if deadline_s is not None:
            try:  # a year at most: a later time is no deadline, and may not even print
                deadline = numbers.json_float(deadline_s, 0, drain.MAX_DEADLINE_S)
            except numbers.NumberError as exc:
                raise Invalid("deadline_s", str(exc)) from None
        now = time.time()
        since = m.draining if m.draining is not None else now
        await self.registry.update_machine(name, draining=since,
                                           drain_deadline=None if deadline is None
                                           else now + deadline)
        self._changed()
        m = self.registry.get_machine(name) or m
        return {"machine": name, "drain": drain.progress(m, self.registry.list_units())}

    # --- metadata (service/metadata.py) ----------------------------------------------------
    async def set_metadata(self, name: str, set_: Mapping[str, str],
                           unset: Sequence[str]) -> Dict[str, Any]:
        """Change the machine's stored metadata (checked: ``metadata.check``); the
        engine then hands over what no longer matches. The answer has the new mapping
        and the one before."""
        m = self.existing(name)
        new = metadata.changed(m.metadata, set_, unset)
        if new != m.metadata:
            await self.registry.update_machine(name, metadata=new)
            self._changed()
        return {"machine": name, "metadata": new, "previous": m.metadata}

    async def undrain(self, name: str) -> Dict[str, Any]:
        self.existing(name)
        await self.registry.update_machine(name, draining=None, drain_deadline=None)
        self._changed()
        return {"machine": name, "drain": None}
