"""One cache of compiled units, shared by the engine and the API.

A unit file is read in two ways between submit and push:

* **probed**: rendered with its variables and no machine (``validate``: ``machine.*``
  left as placeholders), then loaded. What submit checks, what the scheduler reads
  ([X-Fleet] must not depend on the machine it would pick) and what the API shows
  (description, health check). Keyed by (name, content hash, variables).
* **rendered** for one machine, then loaded: what that machine's agent runs. Content
  without markup reads the same everywhere, so its key has no machine; otherwise the
  key adds what a template may read of the machine (name, address, id, metadata, facts),
  and for a template that asked ``units(...)`` what it was told (fleetd.units.peers):
  when those placements change, the unit renders again, to a new hash.

Each is computed once per key, errors included (a unit that cannot be read stays that
way until its content, variables or machine change), and dropped when the engine says
the key is no longer in use (``retain``). Keys are plain strings and tuples; texts come
from the caller (the registry's ``unit_text``), so this module knows no storage.

Threads: the engine and the API call from the event loop, submit's ``check`` from a
worker thread (``asyncio.to_thread``: a template that runs to its budget stalls nobody)
at the same time. Every change to the cache (an entry stored, ``retain`` rebuilding the
maps and starting a new ``_fresh`` set, ``forget``, the parse counter) is made holding
one lock, and no text is rendered or parsed while it is held, so neither side waits on
the other's work. Lookups take no lock: one ``dict.get`` is atomic (under the GIL, and
per dict in free-threaded builds), the maps are changed only under the lock, and
``retain`` builds its new maps aside and publishes each with one assignment; a lookup
sees an entry whole or not at all, and a miss only means reading it again.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import threading
from typing import Callable, Dict, Iterable, Mapping, Optional, Set, Tuple, Union

from fleetd.units import render
from fleetd.units.model import Unit, load, parse_name
from fleetd.units.parser import UnitError
from fleetd.units.peers import NOWHERE, Placements, Reader
from fleetd.units.validate import validate

log = logging.getLogger("fleetd.units")

ContentKey = Tuple[str, str, str]  # name, content hash, variables (JSON, keys sorted)
RenderKey = Tuple[str, str, str, str]  # ... and the machine ("" for content without markup)
TextFn = Callable[[str], Optional[str]]  # content hash -> text (None: missing)


@dataclasses.dataclass(frozen=True)
class Invalid:
    """Why a unit cannot be read, in the words its reason shows."""

    why: str


def vars_key(variables: Mapping[str, str]) -> str:
    return json.dumps(variables, sort_keys=True) if variables else "{}"


def content_key(name: str, content_hash: str, variables: Mapping[str, str]) -> ContentKey:
    return (name, content_hash, vars_key(variables))


def machine_key(machine: render.MachineContext) -> str:
    return json.dumps([machine.name, machine.address, machine.id, machine.metadata,
                       machine.facts], sort_keys=True)


@dataclasses.dataclass(frozen=True)
class Machine:
    """A machine to render for, with its key computed once (a pass renders thousands
    of units for the same machine)."""

    context: render.MachineContext
    key: str

    @classmethod
    def of(cls, context: render.MachineContext) -> Machine:
        return cls(context, machine_key(context))


def _told(key: RenderKey, digest: str) -> RenderKey:
    """The key of a render that read placements: its machine part and what it was told."""
    return (key[0], key[1], key[2], f"{key[3]}\n{digest}")


def _base(key: RenderKey) -> RenderKey:
    return (key[0], key[1], key[2], key[3].split("\n", 1)[0])


def peers_base(key: RenderKey, secrets: Mapping[str, str]) -> Optional[str]:
    """For a unit rendered from other units' placements (its key says what it was told):
    a hash of everything its render depends on but those placements (content, variables,
    machine, and the secret values its spec carries), so that two renders with the same
    base differ only by where the units it reads are (the agent may then reload it,
    OnPeersChange=). None for a unit that read none."""
    if "\n" not in key[3]:
        return None
    told = json.dumps([list(_base(key)), sorted(secrets.items())])
    return hashlib.sha256(told.encode()).hexdigest()


def error_text(exc: BaseException) -> str:
    """An unforeseen error in a unit's reason: its kind and its text, on one line."""
    return f"{type(exc).__name__}: {exc}".replace("\n", " ")[:300]


class CompiledUnits:
    """Probed and rendered units by key; one instance per fleetd (engine and API)."""

    def __init__(self) -> None:
        self._probed: Dict[ContentKey, Union[Unit, Invalid]] = {}
        self._rendered: Dict[RenderKey, Unit] = {}
        self._fresh: Set[ContentKey] = set()  # probed since the last retain (a submit's)
        # a render that read placements -> the patterns it asked (fleetd.units.peers)
        self._asked: Dict[RenderKey, Tuple[str, ...]] = {}
        self.parses = 0  # how many times a text was rendered and loaded (tests, benches)
        self._lock = threading.Lock()  # held for every change above, never for a parse

    # --- probed: the unit as it reads on any machine ---------------------------------

    def probed(self, name: str, content_hash: str, variables: Mapping[str, str],
               text: Union[str, TextFn], key: Optional[ContentKey] = None
               ) -> Union[Unit, Invalid]:
        """The unit rendered with its variables and no machine, then loaded; or why it
        cannot be: its content breaks a rule (say which, with its line) or reading it
        failed in a way no rule foresaw (say that, and log it). ``key``: the caller's
        ``content_key`` of the same, if it has one."""
        key = key or content_key(name, content_hash, variables)
        found = self._probed.get(key)
        if found is None:
            body = text(content_hash) if callable(text) else text
            try:
                found = validate(name, body or "", dict(variables), name)
            except UnitError as exc:
                found = Invalid(f"invalid: {exc}")
            except Exception as exc:  # one unit's content never stops a pass
                log.exception("%s: reading its content failed", name)
                found = Invalid(f"invalid: fleetd failed reading it ({error_text(exc)})")
            self._keep(key, found)
        return found

    def check(self, name: str, content_hash: str, variables: Mapping[str, str], text: str,
              source: str) -> Unit:
        """Submit's validation: the probed unit, or UnitError naming ``source`` (the
        user's file) and its line. A unit that passes is kept as ``probed`` keeps it (a
        successful read does not depend on the file's name, which is set to the unit's),
        so the engine does not read it again once it is stored; a refusal is not kept."""
        key = content_key(name, content_hash, variables)
        found = self._probed.get(key)
        if isinstance(found, Unit):
            return found
        unit: Optional[Unit] = None
        try:
            unit = validate(name, text, dict(variables), source)
            if unit.file.source != name:
                unit = dataclasses.replace(unit,
                                           file=dataclasses.replace(unit.file, source=name))
        finally:  # a refusal is counted, not kept
            self._keep(key, unit)
        return unit

    def _keep(self, key: ContentKey, found: Union[Unit, Invalid, None]) -> None:
        """Count a read of a text and store what it gave (None: nothing to keep), until
        the next ``retain``."""
        with self._lock:
            self.parses += 1
            if found is not None:
                self._probed[key] = found
                self._fresh.add(key)

    def known(self, name: str, content_hash: str, variables: Mapping[str, str]
              ) -> Optional[Union[Unit, Invalid]]:
        """The probed unit if it was read already (None: not yet); never reads."""
        return self._probed.get(content_key(name, content_hash, variables))

    # --- rendered: the unit as it runs on one machine -----------------------------------

    def rendered(self, name: str, content_hash: str, variables: Mapping[str, str],
                 machine: Machine, text: TextFn, placements: Placements = NOWHERE
                 ) -> Tuple[Unit, RenderKey]:
        """The unit as it runs on ``machine`` (parsed once per content, variables and
        machine, and for a unit that reads other units' placements (``units()``,
        fleetd.units.peers), once per answer to what it asked of ``placements``), and
        its key. Raises UnitError (its content), LookupError (its content is missing)
        or anything rendering raised, for the caller to turn into a reason.

        Called for every unit and target on every pass: a cached unit costs no read of
        its text."""
        plain: RenderKey = (name, content_hash, "", "")
        unit = self._rendered.get(plain)
        if unit is not None:
            return unit, plain
        key: RenderKey = (name, content_hash, vars_key(variables), machine.key)
        unit = self._rendered.get(key)
        if unit is not None:
            return unit, key
        asked = self._asked.get(key)
        if asked is not None:  # it read placements: the same answers, the same unit
            told = _told(key, placements.digest(asked, name))
            unit = self._rendered.get(told)
            if unit is not None:
                return unit, told
        body = text(content_hash)
        if body is None:
            raise LookupError(f"content {content_hash} of {name} is missing")
        reader = Reader(placements, name)
        if not render.has_markup(body):
            key = plain
        else:
            uname = parse_name(name)
            body = render.for_machine(body, name, uname.prefix, uname.instance,
                                      dict(variables), machine.context, reader)
        base = key
        if reader.asked:
            key = _told(base, placements.digest(reader.asked, name))
        loaded: Optional[Unit] = None
        try:
            loaded = load(name, body)
        finally:
            with self._lock:
                self.parses += 1
                if loaded is not None:
                    self._rendered[key] = loaded
                    if reader.asked:
                        self._asked[base] = tuple(reader.asked)
        return loaded, key

    # --- eviction -------------------------------------------------------------------------

    def retain(self, probed: Iterable[ContentKey], rendered: Iterable[RenderKey]) -> None:
        """Keep only these keys (what the engine's last pass used), and whatever was
        probed since the previous call (a unit submitted but not stored yet)."""
        keep, live = set(probed), set(rendered)
        with self._lock:
            keep |= self._fresh
            self._probed = {k: v for k, v in self._probed.items() if k in keep}
            self._rendered = {k: v for k, v in self._rendered.items() if k in live}
            bases = {_base(k) for k in live}
            self._asked = {k: v for k, v in self._asked.items() if k in bases}
            self._fresh = set()

    def forget(self, keys: Iterable[ContentKey]) -> None:
        """Drop these probed units (read again next time)."""
        with self._lock:
            for k in keys:
                self._probed.pop(k, None)
