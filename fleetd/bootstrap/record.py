"""The install record: ``<prefix>/install-record``, what the first install on a host made.

Written by the first successful install and kept by every later one (scripts/record.sh):
the paths it installed to, the directories it made, and whether the state directory was
its own (absent or empty before). A purge removes what the record says and nothing else,
and only for a record of exactly the machine's paths.
"""

from __future__ import annotations

import dataclasses
import posixpath
from typing import Dict, List, Tuple

from fleetd.bootstrap.target import BootstrapError, Target

RECORD = "install-record"  # in the prefix


def facts(out: str) -> Dict[str, List[str]]:
    """A script's ``key=value`` lines (the record's too), each key's values in order."""
    found: Dict[str, List[str]] = {}
    for line in out.splitlines():
        key, eq, value = line.partition("=")
        if eq:
            found.setdefault(key, []).append(value)
    return found


@dataclasses.dataclass(frozen=True)
class InstallRecord:
    """What the first successful install on a host made, as ``<prefix>/install-record``
    says (``key=value`` lines); a purge removes that and nothing else."""

    target: Target
    created: Tuple[str, ...]  # directories it made, outermost first (removed if empty)
    own_state: bool  # the state directory was absent or empty before it

    def text(self) -> str:
        t = self.target
        return "".join(f"{line}\n" for line in (
            f"prefix={t.prefix}", f"state={t.state_dir}", f"service={t.service}",
            *(f"created={d}" for d in self.created), f"own_state={int(self.own_state)}"))

    @classmethod
    def parse(cls, text: str, target: Target) -> InstallRecord:
        """The record, if it is one of an install of ``target``; else BootstrapError
        saying what does not match (the caller adds where)."""
        found = facts(text)
        recorded = {key: found.get(key, []) for key in ("prefix", "state", "service")}
        wanted = {"prefix": target.prefix, "state": target.state_dir,
                  "service": target.service}
        for key, value in wanted.items():
            if recorded[key] != [value]:
                raise BootstrapError(f"it records {key} {recorded[key] or 'none'}, not "
                                     f"{value}")
        created = tuple(found.get("created", []))
        mine = {target.prefix, f"{target.prefix}/versions"}
        for d in created:
            normal = d.startswith("/") and posixpath.normpath(d) == d
            if not normal or not (d in mine or target.prefix.startswith(d + "/")):
                raise BootstrapError(f"it records making {d!r}, which is not the prefix, "
                                     "one of its parents or its versions directory")
        return cls(target, created, found.get("own_state") == ["1"])
