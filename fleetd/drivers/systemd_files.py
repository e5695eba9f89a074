"""The files the systemd driver installs: a runtime unit and its drop-in, under /run.

A Driver=systemd unit is installed as /run/systemd/system/NAME (gone at reboot) exactly
as the user wrote it, plus one drop-in, NAME.d/50-fleetd.conf, putting FLEET_UNIT and
FLEET_MACHINE_ID in its environment. The drop-in also marks the unit as this agent's:
``installed`` lists the units that carry it. Files are written atomically (systemd never
reads half a file) and only when their content changes, so the driver knows when systemd
must reload. Nothing here calls systemd (fleetd.drivers.systemctl does).

The unit name becomes a file name, so every name passes ``check_name`` first: a service
unit's name, never a path, never a template. Standard library only (agent side).
"""

from __future__ import annotations

import contextlib
import os
import shutil
from typing import List

from fleetd.drivers.base import DriverError
from fleetd.wire import names

UNIT_DIR = "/run/systemd/system"
DROPIN = "50-fleetd.conf"


def check_name(name: str) -> str:
    """A service unit name, never a path: it becomes a file name under /run."""
    why = names.problem(name)
    if why is None and names.is_template(name):
        why = f"{name}: a template is never run itself"
    if why is not None:
        raise DriverError(why)
    return name


def dropin_text(name: str, machine_id: str) -> str:
    """The drop-in's content: which fleetd unit and machine this is, in the environment."""
    def quote(word: str) -> str:  # systemd's quoting, and % is a specifier there
        return '"' + word.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%") + '"'

    return ("# written by fleet-agent: which fleetd unit and machine this is\n"
            "[Service]\n"
            f"Environment={quote('FLEET_UNIT=' + name)} "
            f"{quote('FLEET_MACHINE_ID=' + machine_id)}\n")


def write_atomic(path: str, text: str) -> bool:
    """Write atomically (systemd must never read half a file); False if unchanged."""
    try:
        with open(path) as f:
            if f.read() == text:
                return False
    except OSError:
        pass
    directory = os.path.dirname(path)
    try:
        os.makedirs(directory, mode=0o755, exist_ok=True)
        tmp = os.path.join(directory, f".{os.path.basename(path)}.fleetd-tmp")
        with open(tmp, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        raise DriverError(f"cannot install {path}: {exc.strerror}") from None
    return True


class UnitFiles:
    """The runtime units in ``unit_dir`` (/run/systemd/system) and their drop-ins.
    Names given here have passed ``check_name``."""

    def __init__(self, unit_dir: str = UNIT_DIR) -> None:
        self.unit_dir = unit_dir

    def unit_path(self, name: str) -> str:
        return os.path.join(self.unit_dir, name)

    def dropin_dir(self, name: str) -> str:
        return os.path.join(self.unit_dir, name + ".d")

    def writable(self) -> bool:
        """Can runtime units be installed here?"""
        return os.path.isdir(self.unit_dir) and os.access(self.unit_dir, os.W_OK)

    def has(self, name: str) -> bool:
        """Is the unit file there? (A reboot removes it.)"""
        return os.path.exists(self.unit_path(name))

    def install(self, name: str, text: str, machine_id: str) -> bool:
        """Write the unit file and its drop-in; True if either changed (systemd must
        reload)."""
        changed = write_atomic(self.unit_path(name), text)
        changed |= write_atomic(os.path.join(self.dropin_dir(name), DROPIN),
                                dropin_text(name, machine_id))
        return changed

    def remove(self, name: str) -> bool:
        """Remove the unit file and its drop-ins; True if anything was there."""
        removed = False
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.unit_path(name))
            removed = True
        if os.path.isdir(self.dropin_dir(name)):
            shutil.rmtree(self.dropin_dir(name), ignore_errors=True)
            removed = True
        return removed

    def installed(self) -> List[str]:
        """Every unit here that carries our drop-in, sorted."""
        try:
            entries = os.listdir(self.unit_dir)
        except OSError:
            return []
        return sorted(e for e in entries if names.is_valid(e)
                      and os.path.exists(os.path.join(self.dropin_dir(e), DROPIN)))
