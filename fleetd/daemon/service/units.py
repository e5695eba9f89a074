"""Units: what fleetctl asks of them (submit, desired state, restart, destroy, listings,
status, logs, waits), against the registry, the engine's placement and the machines'
sessions. Refusals are domain errors (errors.py); no HTTP here.

Writes are validated whole, stored durably, and only then answered; a refusal leaves
the registry as it was.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Callable, Dict, List, Mapping, Optional, Union

from fleetd.daemon import submit, usage
from fleetd.daemon.changes import Changes
from fleetd.daemon.failures import reschedule_info
from fleetd.daemon.service import views, waits
from fleetd.daemon.service.errors import (
    AgentRefused,
    AgentUnreachable,
    Conflict,
    Following,
    Invalid,
    NotFound,
    NotLeading,
    TooLarge,
    shown,
)
from fleetd.daemon.service.placement import Source, targets
from fleetd.daemon.session import MachineSession
from fleetd.registry.base import DESIRED_STATES, INACTIVE, Registry, UnitInput, UnitRecord
from fleetd.transport.base import TransportError
from fleetd.units.compiled import CompiledUnits
from fleetd.units.compiled import Invalid as Unreadable
from fleetd.units.model import Unit
from fleetd.units.secrets import masked
from fleetd.wire.names import is_template

MIB = 1024 * 1024
MAX_UNIT_TEXT = 1 * MIB  # one unit file; a 50 MB "unit" is not a unit


class Units:
    def __init__(self, registry: Registry, placement: Source, changes: Changes,
                 changed: Callable[[], None], sessions: Mapping[str, MachineSession],
                 compiled: CompiledUnits) -> None:
        self.registry = registry
        self.compiled = compiled  # the cache of unit files the engine reads too
        self.placement = placement  # the engine's last pass: one snapshot per answer
        self.changes = changes
        self._changed = changed  # placements may move: wakes waiters and the engine
        self.sessions = sessions
        self.following: Following = lambda: None  # the Daemon's, when it can follow

    # --- reading ------------------------------------------------------------------------
    def rows(self) -> List[Dict[str, Any]]:
        """``list-units``: a row per unit per machine, with its machine's address."""
        addresses = {m.name: m.address for m in self.registry.list_machines()}
        return views.unit_rows(self.placement.snapshot(), self.registry.list_units(),
                               self.registry.list_observed(), addresses)

    async def rows_with_usage(self) -> List[Dict[str, Any]]:
        """``rows``, each with its ``usage`` as its agent reads it now (None: no answer,
        or no counters; fleetd/daemon/usage.py)."""
        rows = self.rows()
        found = await usage.gather(self.sessions)
        for row in rows:
            use = found.get((row["unit"], row["machine"]))
            row["usage"] = use.to_json() if use is not None else None
        return rows

    def files(self) -> List[Dict[str, Any]]:
        """``list-unit-files``: a row per unit."""
        observed = {(o.unit, o.machine): o for o in self.registry.list_observed()}
        failures = self.registry.list_failures()
        now = time.time()
        placement = self.placement.snapshot()
        return [{**views.unit_file_row(placement, u, observed, failures, now),
                 "description": _described(self._probed(u)),
                 "global": getattr(placement.requirements_of(u), "is_global", False)}
                for u in self.registry.list_units()]

    def file(self, name: str) -> Dict[str, Any]:
        """One unit's row and its text."""
        u = self.registry.get_unit(name)
        if u is None:
            raise NotFound(f"unit {name} does not exist")
        observed = {(o.unit, o.machine): o for o in self.registry.list_observed(name)}
        return {**views.unit_file_row(self.placement.snapshot(), u, observed,
                                      self.registry.list_failures(name), time.time()),
                "text": self.registry.unit_text(u.hash)}

    async def status(self, name: str, lines: int) -> Dict[str, Any]:
        """Everything about one unit: desired state, placement and why, each copy's
        state, and the last ``lines`` of its log, asked from the agent of the machine it
        is placed on."""
        u = self.registry.get_unit(name)
        if u is None:
            raise NotFound(f"unit {name} does not exist")
        placement = self.placement.snapshot()
        expected = placement.expected()
        copies = []
        observed = self.registry.list_observed(name)
        found = await usage.gather({o.machine: self.sessions[o.machine] for o in observed
                                    if o.machine in self.sessions})
        for o in observed:
            row = views.observed_row(o)
            row["current"] = waits.is_current(u, o, expected)
            use = found.get((o.unit, o.machine))
            row["usage"] = use.to_json() if use is not None else None
            copies.append(row)
        probed = self._probed(u)
        description = _described(probed)
        result: Dict[str, Any] = {
            "unit": name, "description": description, "desired": u.desired,
            "machine": u.machine, "reason": u.reason, "hash": u.hash,
            "generation": u.generation, "vars": u.vars, "copies": copies, "log": None,
            "handoff": u.handoff,
            # SecretEnvironment=: each variable as *** and its secret's name, no value
            "secrets": masked(probed.config.get("secret_environment") or {})
            if isinstance(probed, Unit) else {},
            "reschedule": reschedule_info(u, placement.requirements_of(u),
                                          self.registry.list_failures(name).get(name, ()),
                                          time.time())}
        where = targets(placement, u)  # a Global unit's log: its first machine's
        session = self.sessions.get(where[0]) if where else None
        if lines and session is not None:
            try:
                reply = await session.request("tail", unit=name, lines=lines)
                if "error" in reply:
                    result["log_error"] = str(reply["error"])
                else:
                    result["log"] = [str(x) for x in reply.get("lines", [])]
            except TransportError as exc:
                result["log_error"] = str(exc)
        return result

    def log_of(self, name: str) -> UnitLog:
        """Where the unit's log is read: the agent of the (first) machine it is placed
        on. NotFound, or Conflict when it is placed nowhere with a session."""
        u = self.registry.get_unit(name)
        if u is None:
            raise NotFound(f"unit {name} does not exist")
        where = targets(self.placement.snapshot(), u)  # a Global unit's: its first machine's
        session = self.sessions.get(where[0]) if where else None
        leader = self.following()
        if session is None and where and leader is not None:
            raise NotLeading(f"the log of {name}", leader or None)
        if session is None:
            raise Conflict(f"unit {name} is not placed on any machine")
        return UnitLog(name, where[0], session)

    # --- waiting ------------------------------------------------------------------------
    def verdict(self, name: str, until: str) -> waits.Verdict:
        """The wait verdict on ``name`` as the registry and the engine say now."""
        u = self.registry.get_unit(name)
        copies = self.registry.list_observed(name)
        placement = self.placement.snapshot()
        where = targets(placement, u) if u is not None else []
        check = _check_config(self._probed(u)) \
            if u is not None and waits.needs_check(until, u) else None
        return waits.wait_verdict(name, until, u, copies, where, placement.expected(),
                                  check)

    async def wait(self, name: str, until: str, timeout: float) -> Dict[str, Any]:
        """Until the unit reaches ``until`` (or cannot), or ``timeout`` seconds pass."""
        deadline = time.monotonic() + timeout
        while True:
            verdict, why = self.verdict(name, until)
            if verdict is not None:
                return {"unit": name, "reached": verdict, "why": why}
            left = deadline - time.monotonic()
            if left <= 0:
                return {"unit": name, "reached": False, "timeout": True, "why": why}
            await self.changes.wait(left)

    def _probed(self, u: UnitRecord) -> Union[Unit, Unreadable]:
        """The unit as it reads on any machine (or why it cannot be read), from the
        cache the engine reads too: read once per content and variables."""
        return self.compiled.probed(u.name, u.hash, u.vars, self.registry.unit_text)

    # --- writing ------------------------------------------------------------------------
    async def resolve(self, items: List[Dict[str, Any]], desired: Optional[str]
                      ) -> List[UnitInput]:
        """A submit's units (``items``: see ``submit_items``), resolved and validated
        whole (``submit.py``, which refuses with Invalid listing every invalid unit in
        ``errors``, or NotFound)."""
        names = [i["name"] for i in items]
        if len(set(names)) != len(names):
            raise Invalid("units", "the same unit name is given twice")
        if desired not in (None, INACTIVE):
            for name in names:
                if isinstance(name, str) and is_template(name):
                    raise Invalid(None, f"{name} is a template; start an instance such as "
                                        f"{name.replace('@.', '@1.')}")
        plan = submit.gather(self.registry, items)  # the registry is read on its thread
        # templates render in a worker
        return await asyncio.to_thread(submit.check, plan, self.compiled)

    async def store(self, inputs: List[UnitInput], desired: Optional[str], replace: bool,
                    via: str = "", options: Optional[Dict[str, Any]] = None
                    ) -> Dict[str, Any]:
        """Store resolved units all or none (the registry's Conflict: other content
        exists, and ``replace`` was not asked). A template's new content changes the
        template alone: the engine rolls its instances over (engine/rollout.py).
        ``via``: who submitted it, for the units' versions (``fleetctl history``), with
        ``options`` (how their rollout goes: service/versions.py)."""
        # None: each unit keeps its desired state (a new one: inactive), as SQLite reads it
        changed = await self.registry.put_units(inputs, desired, replace=replace,
                                                follow=False, via=via, options=options)
        self._changed()
        return {"units": [{"name": u.name, "hash": u.hash} for u in inputs],
                "changed": changed}

    def woken(self) -> None:
        """A record the engine reads changed outside these methods (a version's options:
        ``fleetctl promote``): it looks again, and waiters too."""
        self._changed()

    async def set_desired(self, names: List[str], desired: object) -> Dict[str, Any]:
        if desired not in DESIRED_STATES:
            raise Invalid("desired", f"{shown(desired)} is not one of "
                                     f"{', '.join(DESIRED_STATES)}")
        assert isinstance(desired, str)
        await self.registry.set_desired(names, desired)
        self._changed()
        return {"names": names, "desired": desired}

    async def restart(self, names: List[str]) -> Dict[str, Any]:
        for name in names:  # restarting would make it launched, and a template never runs
            if is_template(name):
                raise Invalid(None, f"{name} is a template; restart its instances, such "
                                    f"as '{name.replace('@.', '@*.')}'")
        await self.registry.restart(names)
        self._changed()
        return {"restarted": names}

    async def destroy(self, names: List[str]) -> Dict[str, Any]:
        await self.registry.delete_units(names)
        self._changed()
        return {"destroyed": names}


def check_desired(desired: object) -> Optional[str]:
    """A submit's ``desired``: absent, or one of DESIRED_STATES."""
    if desired is not None and desired not in DESIRED_STATES:
        raise Invalid("desired", f"{desired!r} is not one of {', '.join(DESIRED_STATES)}")
    return desired if isinstance(desired, str) else None


def submit_items(items: object) -> List[Dict[str, Any]]:
    """A submit's ``units``: objects, each with a string ``name`` and texts of at most
    MAX_UNIT_TEXT bytes (TooLarge past it)."""
    if not isinstance(items, list) or not items or not all(
            isinstance(i, dict) and isinstance(i.get("name"), str) for i in items):
        raise Invalid("units", "want a non-empty list of {name, text?, source?, vars?} "
                               "with name a string")
    for item in items:
        for key in ("text", "template_text"):
            text = item.get(key)
            size = len(text.encode()) if isinstance(text, str) else 0
            if size > MAX_UNIT_TEXT:
                raise TooLarge(None, f"{item['name'][:80]}: {key} is {size:,} bytes; "
                                     f"a unit has at most {MAX_UNIT_TEXT // MIB} MiB")
    return items


def check_until(until: str) -> str:
    if until not in waits.WAIT_UNTIL:
        raise Invalid("until", f"{until!r} is not one of {', '.join(waits.WAIT_UNTIL)}")
    return until


class UnitLog:
    """A unit's log on the machine it is placed on, through that machine's session."""

    def __init__(self, unit: str, machine: str, session: MachineSession) -> None:
        self.unit, self.machine, self._session = unit, machine, session

    async def tail(self, lines: int) -> str:
        """The last ``lines``, one per line (AgentUnreachable, AgentRefused)."""
        try:
            reply = await self._session.request("tail", unit=self.unit, lines=lines)
        except TransportError as exc:
            raise AgentUnreachable(str(exc)) from None
        if "error" in reply:  # the agent's refusal: a bad gateway, not fleetd's fault
            raise AgentRefused(f"{self.machine}: {reply['error']}")
        return "".join(f"{line}\n" for line in reply.get("lines", []))

    async def follow(self, lines: int) -> AsyncIterator[str]:
        """The last ``lines`` and then new lines as the program writes them, until the
        caller stops or the session drops."""
        try:
            async for msg in self._session.stream("follow", "unfollow", unit=self.unit,
                                                  lines=lines):
                chunk = "".join(f"{line}\n" for line in msg.get("lines", []))
                if chunk:
                    yield chunk
        except TransportError:
            return


def _check_config(unit: Union[Unit, Unreadable]) -> waits.Check:
    """The unit's [X-Check] (None without one), as the unit reads on any machine."""
    if not isinstance(unit, Unit):
        return None  # the engine does not place it: waiters learn why from its reason
    check = unit.config.get("check")
    return check.copy() if check else None


def _described(probed: Union[Unit, Unreadable]) -> str:
    """A unit's Description= as systemd shows it (specifiers expanded), or why it
    cannot be read, in parentheses."""
    return probed.description if isinstance(probed, Unit) else f"({probed.why})"
