"""Secret values on the host: one 0400 file per unit in a 0700 directory, nowhere else.

fleetd sends a unit's secret values inside its spec (``spec["secrets"]``: variable ->
value, fleetd.units.secrets). The agent keeps specs on disk (``desired.json``, and each
unit's record under ``units/``) and may log them, so the values leave the spec here,
first thing when a desired set arrives: they go to ``secrets/NAME.json`` (mode 0400, in
a directory of mode 0700, under the state directory), and the spec keeps only that
file's path (``config["secret_file"]``), which the exec driver reads at each start
(fleetd.drivers.secretenv) to add the values to the program's environment. A restarted
agent finds the same files from the same specs.

A unit that is no longer in the set, or no longer has secrets, loses its file. A unit
whose secrets change gets a new hash from fleetd (units/secrets.py), so the supervisor
replaces it, and the new program reads the new file. The file is replaced atomically.
Standard library only, Python 3.9+ (agent side).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from typing import Dict, List, Set, cast

from fleetd.wire import names
from fleetd.wire.unitspec import UnitConfig, UnitSpec

log = logging.getLogger("fleet-agent")
DIR = "secrets"
SUFFIX = ".json"


def directory(state_root: str) -> str:
    return os.path.join(state_root, DIR)


def path_of(state_root: str, unit: str) -> str:
    if not names.is_valid(unit):  # specs are checked before: this is the last line
        raise ValueError(f"{unit!r} is not a unit name")
    return os.path.join(directory(state_root), unit + SUFFIX)


def _write(path: str, values: Dict[str, str]) -> None:
    """Replace ``path`` with ``values`` (JSON), mode 0400 from the start (O_CREAT's
    mode, whatever the umask), then renamed over the old one."""
    tmp = f"{path}.tmp.{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)  # a leftover of a crash: 0400, so O_TRUNC could not open it
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o400)
    try:
        os.write(fd, json.dumps(values, sort_keys=True).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def take(state_root: str, specs: List[UnitSpec]) -> List[UnitSpec]:
    """The desired set with every ``secrets`` moved into its unit's file and replaced by
    ``config["secret_file"]`` (a ``secret_file`` that came from elsewhere is dropped:
    the agent reads only files it wrote). Files of units without secrets go. A unit
    whose file cannot be written is kept without it: its start then fails naming the
    file (the driver), and the agent's log says why."""
    root = directory(state_root)
    try:
        os.makedirs(root, mode=0o700, exist_ok=True)
        os.chmod(root, 0o700)  # made earlier with another mode, or by hand
    except OSError as exc:  # each unit's write then fails too, and says so
        log.warning("cannot make %s (mode 0700): %s", root, exc)
    out: List[UnitSpec] = []
    kept: Set[str] = set()
    for spec in specs:
        values = spec.get("secrets")
        config = cast(UnitConfig, dict(spec.get("config") or {}))
        config.pop("secret_file", None)
        clean = cast(UnitSpec, {k: v for k, v in spec.items() if k != "secrets"})
        if values:
            path = path_of(state_root, spec["name"])
            try:
                _write(path, dict(values))
            except OSError as exc:
                log.warning("%s: cannot write its secrets file %s: %s", spec["name"], path,
                            exc)
            config["secret_file"] = path
            kept.add(spec["name"] + SUFFIX)
        if "config" in spec or values:
            clean["config"] = config
        out.append(clean)
    try:
        entries = os.listdir(root)
    except OSError:
        entries = []
    for entry in entries:
        if entry not in kept:
            try:
                os.unlink(os.path.join(root, entry))
            except OSError as exc:
                log.warning("cannot remove %s: %s", os.path.join(root, entry), exc)
    return out
