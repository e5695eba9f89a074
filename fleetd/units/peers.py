"""``units('web@*.service')`` in a unit's template: where other units are placed.

A unit may render from other units' placements, e.g. an nginx upstream list::

    {% for w in units('web@*.service') %}server {{ w.address }}:{{ w.port }};{% endfor %}

Each peer is ``name``, ``instance``, ``machine``, ``address`` (the machine's, as fleetd
reaches it), ``port`` (its first ``Ports=`` number, or None) and ``ports`` (all of them,
numbers), in the order of unit name then machine. A peer is a unit desired running
(launched) and placed; a Global unit is one peer per machine. A unit never sees itself
(its own name is left out of every answer, so reading its own glob cannot feed on its
own render).

Why re-renders cannot loop: a render reads only placements (machine, address, ports),
never a peer's content or state; a re-render changes only the reader's content, which
moves no unit. And a render is re-done only when what it read changed: the render
records the patterns it asked (``Reader.asked``), and the cache keys the rendered unit
by the answers to exactly those (``Placements.digest``). Since a render is a function
of its text, variables, machine and those answers, the same answers to the same
questions give the same unit (a pattern computed from an earlier answer is asked again
in the same order only if that answer is the same).

Pure: the engine builds ``Placements`` from its pass (fleetd/engine/desired.py).
"""

from __future__ import annotations

import dataclasses
import fnmatch
import hashlib
import json
from typing import Any, Dict, List, Sequence, Tuple

from fleetd.wire import names

MAX_PATTERN = 256  # a glob of unit names is short; a longer one is a mistake


@dataclasses.dataclass(frozen=True, order=True)
class Peer:
    """One unit placed on one machine, as another unit's template sees it."""

    name: str
    machine: str
    address: str
    ports: Tuple[int, ...] = ()

    def view(self) -> Dict[str, Any]:
        return {"name": self.name, "instance": names.split(self.name).instance or "",
                "machine": self.machine, "address": self.address,
                "port": self.ports[0] if self.ports else None, "ports": list(self.ports)}


class Placements:
    """Every peer of one engine pass, for templates to ask (``Reader``)."""

    def __init__(self, peers: Sequence[Peer] = ()) -> None:
        self.peers = tuple(sorted(peers))

    def matching(self, pattern: str, me: str) -> List[Peer]:
        """The peers whose name matches the glob ``pattern``, never ``me``."""
        return [p for p in self.peers if p.name != me and fnmatch.fnmatchcase(p.name, pattern)]

    def digest(self, asked: Sequence[str], me: str) -> str:
        """What a render that asked ``asked`` (in that order) was told, as one hash:
        the render cache's key for it."""
        told = [[dataclasses.astuple(p) for p in self.matching(a, me)] for a in asked]
        return hashlib.sha256(json.dumps([list(asked), told]).encode()).hexdigest()[:32]


NOWHERE = Placements()  # what submit's probe renders with: no peer is placed yet


class Reader:
    """The ``units`` a template calls, for one render of unit ``me``: answers from
    ``placements`` and remembers what was asked."""

    def __init__(self, placements: Placements, me: str) -> None:
        self.placements = placements
        self._me = me
        self.asked: List[str] = []

    def __call__(self, pattern: Any) -> List[Dict[str, Any]]:
        if not isinstance(pattern, str) or not pattern or len(pattern) > MAX_PATTERN:
            raise ValueError(f"units() takes a glob of unit names such as "
                             f"'web@*.service', not {str(pattern)[:40]!r}")
        self.asked.append(pattern)
        return [p.view() for p in self.placements.matching(pattern, self._me)]
