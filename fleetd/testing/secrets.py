"""MemorySecrets: the engine's SecretSource (fleetd.units.secrets) as a dict, for unit
tests of what the engine does with secrets, without a key file or a registry."""

from __future__ import annotations

import itertools
from typing import Dict, Optional, Set, Tuple


class MemorySecrets:
    """Secrets by name; each ``set`` is a new version, as ``fleetctl secret set`` is."""

    def __init__(self) -> None:
        self.values: Dict[str, Tuple[str, str]] = {}  # name -> (version, value)
        self.unreadable: Set[str] = set()  # names whose lookup fails (another key)
        self.looked_up: Dict[str, int] = {}
        self._versions = itertools.count(1)

    def set(self, name: str, value: str) -> None:
        self.values[name] = (f"v{next(self._versions)}", value)

    def lookup(self, name: str) -> Optional[Tuple[str, str]]:
        self.looked_up[name] = self.looked_up.get(name, 0) + 1
        if name in self.unreadable:
            raise LookupError("does not open with this fleetd's secrets key")
        return self.values.get(name)
