"""The agent's state directory: what it must remember across its own restarts.

  machine-id           this host's identity, made once
  desired.json         the last desired set fleetd sent (so the agent keeps supervising
                       the right programs while nobody talks to it)
  epoch                the highest epoch a fleetd hello has brought (a deposed fleetd's
                       lower one is refused, after a restart too)
  units/NAME.json      one record per started program: driver handle + content hash,
                       the evidence a restarted agent re-adopts it by
  logs/NAME.log        the program's stdout and stderr
  secrets/NAME.json    a unit's secret values (mode 0400, in a 0700 directory), the only
                       place they are kept: the specs above hold the file's path
                       (fleetd/agent/secretfiles.py)
  agent.sock           where ``fleet-agent attach`` finds the daemon (mode 0600)
  agent.lock, agent.pid, agent.log

Every file is replaced atomically (write, rename): a crash leaves the old version or the
new one, never half of one. Files that must outlive a reboot (machine-id, desired.json, epoch)
are also fsynced, with their directory. Unit records are not: a record only matters in
the boot that wrote it (a restarted agent discards records of an earlier boot), and an
agent's crash does not lose the page cache - so the fsync, milliseconds on a restart's
path, would buy nothing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import uuid
from typing import Any, Dict, List, TypedDict

from fleetd.agent import specs
from fleetd.drivers.base import HandleRecord
from fleetd.wire import messages, names, numbers, paths
from fleetd.wire.unitspec import UnitSpec

log = logging.getLogger("fleet-agent")

DEFAULT_STATE_DIR = paths.DEFAULT_STATE_DIR


class UnitRecord(TypedDict):
    """``units/NAME.json``: the evidence a restarted agent re-adopts a program by."""

    spec: UnitSpec
    handle: HandleRecord
    boot_id: str  # a record from an earlier boot proves nothing
    restarts: int
    streak: int


def atomic_write(path: str, data: bytes, mode: int = 0o600, durable: bool = True) -> None:
    """Replace ``path`` with ``data`` atomically; ``durable``: also across a power loss."""
    directory = os.path.dirname(path)
    tmp = f"{path}.tmp.{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, mode)
    try:
        os.write(fd, data)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    if not durable:
        return
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class AgentState:
    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.units_dir = os.path.join(self.root, "units")
        self.logs_dir = os.path.join(self.root, "logs")
        for d in (self.root, self.units_dir, self.logs_dir):
            os.makedirs(d, mode=0o700, exist_ok=True)

    @property
    def socket_path(self) -> str:
        return paths.agent_socket(self.root)

    @property
    def lock_path(self) -> str:
        return os.path.join(self.root, "agent.lock")

    @property
    def pid_path(self) -> str:
        return os.path.join(self.root, "agent.pid")

    @property
    def log_path(self) -> str:
        return os.path.join(self.root, "agent.log")

    def unit_log(self, unit: str) -> str:
        return _unit_file(self.logs_dir, unit, ".log")

    def machine_id(self) -> str:
        path = os.path.join(self.root, "machine-id")
        try:
            with open(path) as f:
                value = f.read().strip()
            if value:
                return value
        except FileNotFoundError:
            pass
        value = uuid.uuid4().hex
        atomic_write(path, (value + "\n").encode(), 0o644)
        return value

    def load_desired(self) -> List[UnitSpec]:
        """The last desired set, checked as a set from fleetd is: a spec the agent
        cannot run (written by an older agent, or by hand) is left out and logged, so
        it cannot stop the agent at every start. An unreadable file is an empty set
        until fleetd sends one."""
        path = os.path.join(self.root, "desired.json")
        try:
            with open(path) as f:
                units = json.load(f)
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            log.warning("%s: cannot read it (%s); no desired set until fleetd sends one",
                        path, exc)
            return []
        if not isinstance(units, list):
            log.warning("%s: not a list of unit specs; ignored", path)
            return []
        good, refused = specs.check_specs(units)
        for why in refused:
            log.warning("%s: left out: %s", path, why)
        return good

    def save_desired(self, units: List[UnitSpec]) -> None:
        atomic_write(os.path.join(self.root, "desired.json"), json.dumps(units).encode())

    def load_epoch(self) -> int:
        """The highest fleetd epoch this host has seen (0: none yet). A file that is not
        one - only a hand could make it: it is written durably and atomically - is
        logged and read as 0; the next fleetd hello writes it again."""
        path = os.path.join(self.root, "epoch")
        try:
            with open(path) as f:
                text = f.read(64)
            return numbers.parse_int(text, 0, messages.EPOCH_MAX)
        except FileNotFoundError:
            return messages.EPOCH
        except (OSError, ValueError) as exc:  # numbers.NumberError is a ValueError
            log.warning("%s: cannot read it (%s); epoch 0 until fleetd says hello", path, exc)
            return messages.EPOCH

    def save_epoch(self, epoch: int) -> None:
        """Durably, before the agent acts on it: a crash right after must not forget it."""
        atomic_write(os.path.join(self.root, "epoch"), f"{epoch}\n".encode(), 0o644)

    def load_records(self) -> Dict[str, Dict[str, Any]]:
        """Every record on disk, as read: untrusted (the supervisor checks each field
        before it adopts by one)."""
        records: Dict[str, Dict[str, Any]] = {}
        for entry in os.listdir(self.units_dir):
            if not entry.endswith(".json") or not names.is_valid(entry[:-5]):
                continue  # not a record of ours (a unit's name is never another)
            try:
                with open(os.path.join(self.units_dir, entry)) as f:
                    records[entry[:-5]] = json.load(f)
            except (OSError, ValueError):
                continue  # a record we cannot read proves nothing: do not adopt by it
        return records

    def save_record(self, unit: str, record: UnitRecord) -> None:
        atomic_write(_unit_file(self.units_dir, unit, ".json"), json.dumps(record).encode(),
                     durable=False)

    def delete_record(self, unit: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(_unit_file(self.units_dir, unit, ".json"))


def _unit_file(directory: str, unit: str, suffix: str) -> str:
    """``directory/UNIT.suffix``; ValueError for a name that is not a unit's, which
    could lead out of ``directory`` (specs are checked before, this is the last line)."""
    return os.path.join(directory, specs.unit_name(unit) + suffix)
