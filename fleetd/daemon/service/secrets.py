"""Secrets: ``fleetctl secret set/list/rm``, and where the engine gets their values.

A value is sealed (daemon/secrets.py) before the registry stores it, and opened only by
``lookup``, which the engine calls while it builds the desired set of the machine a
unit runs on (fleetd.units.secrets.seal). What the API answers about secrets is names,
versions, times and the units that use them (``rows``), never a value, sealed or not;
nothing here logs one, and no error quotes one.

Removing a secret that a unit uses is refused (Conflict, naming the units): a unit
whose secret is gone could not start again, so the choice is the user's, made by
changing or destroying those units first.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Optional, Tuple

from fleetd.daemon.secrets import SecretKeyError, load_key, open_sealed, seal
from fleetd.daemon.service.errors import Conflict, Invalid, NotFound
from fleetd.registry.base import Registry, SecretRecord
from fleetd.units import secrets as unit_secrets
from fleetd.units.compiled import CompiledUnits
from fleetd.units.compiled import Invalid as Unreadable

log = logging.getLogger("fleetd.secrets")


def check_name(name: object) -> str:
    """A secret's name, or Invalid naming the field ``name``."""
    try:
        return unit_secrets.check_name(name)
    except unit_secrets.SecretNameError as exc:
        raise Invalid("name", str(exc)) from None


class Secrets:
    """``fleetctl secret``'s service, and the engine's SecretSource."""

    def __init__(self, registry: Registry, key_path: str, changed: Callable[[], None],
                 compiled: Optional[CompiledUnits] = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.key_path = key_path
        self.changed = changed  # wakes the engine: units using a new version roll
        self.compiled = compiled if compiled is not None else CompiledUnits()
        self.clock = clock
        self._key: Optional[bytes] = None
        self._opened: Dict[str, Tuple[str, str]] = {}  # name -> (version, value)
        self._lock = threading.Lock()

    def _the_key(self, create: bool) -> Optional[bytes]:
        if self._key is None:
            self._key = load_key(self.key_path, create)
        return self._key

    # --- the API's ---------------------------------------------------------------------
    async def set(self, name: str, value: object) -> Dict[str, Any]:
        """Seal and store ``value`` as the secret ``name``; units that use it roll."""
        check_name(name)
        if not isinstance(value, str):
            raise Invalid("value", f"want a string, not {type(value).__name__}")
        try:
            unit_secrets.check_value(value)
        except ValueError as exc:
            raise Invalid("value", str(exc)) from None
        try:
            key = self._the_key(create=True)
        except SecretKeyError as exc:
            raise Conflict(str(exc)) from None
        assert key is not None  # made if it was missing
        record = SecretRecord(name, seal(key, name, value), uuid.uuid4().hex[:16],
                              self.clock())
        await self.registry.put_secret(record)
        users = self.users(name)
        log.info("secret %s set (version %s); units using it: %s", name, record.version,
                 " ".join(users) or "none")
        self.changed()
        return self._row(record, users)

    def rows(self) -> List[Dict[str, Any]]:
        """Every secret's name, version, when it was set and the units that use it."""
        return [self._row(s, self.users(s.name)) for s in self.registry.list_secrets()]

    @staticmethod
    def _row(s: SecretRecord, users: List[str]) -> Dict[str, Any]:
        return {"name": s.name, "version": s.version, "set_at": s.set_at, "units": users}

    async def remove(self, name: str) -> Dict[str, Any]:
        """Forget a secret; refused while a unit uses it (the module's docstring)."""
        check_name(name)
        if self.registry.get_secret(name) is None:
            raise NotFound(f"secret {name} does not exist")
        users = self.users(name)
        if users:
            raise Conflict(f"secret {name} is used by {', '.join(users)}: change or destroy "
                           "those units first (they could not start again without it)",
                           units=users)
        await self.registry.delete_secret(name)
        log.info("secret %s removed", name)
        self.changed()
        return {"name": name, "removed": True}

    def users(self, name: str) -> List[str]:
        """The units whose SecretEnvironment= names ``name`` (templates included), as
        their content reads before any machine is chosen."""
        out = []
        for u in self.registry.list_units():
            probed = self.compiled.probed(u.name, u.hash, u.vars, self.registry.unit_text)
            if isinstance(probed, Unreadable):
                continue
            if name in (probed.config.get("secret_environment") or {}).values():
                out.append(u.name)
        return out

    # --- the engine's (SecretSource) -------------------------------------------------
    def lookup(self, name: str) -> Optional[Tuple[str, str]]:
        """(version, value) of ``name``, None if it is not set; LookupError (saying why,
        never the value) when it is set but does not open. One opened value is kept
        per name, for the engine's passes; a new version replaces it."""
        record = self.registry.get_secret(name)
        if record is None:
            self._opened.pop(name, None)  # removed: its value is not held any longer
            return None
        cached = self._opened.get(name)
        if cached is not None and cached[0] == record.version:
            return cached
        try:
            key = self._the_key(create=False)
        except SecretKeyError as exc:
            raise LookupError(str(exc)) from None
        if key is None:
            raise LookupError(f"no secrets key at {self.key_path} (with several fleetd, "
                              "copy the key file of the one that set it to each)")
        found = (record.version, open_sealed(key, name, record.sealed))
        with self._lock:
            self._opened[name] = found
        return found
