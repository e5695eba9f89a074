"""What an agent reports, as fleetd's session reads it: a unit's status checked field by
field into a registry row, a message's request id, an epoch refusal, and the parts of a
message that comes in several (protocol.chunks) gathered until it is whole.

A report is untrusted input (it comes from a host): a field of the wrong type is the
agent speaking nonsense - a ProtocolError naming it, which ends the session - never a
bad registry row. Names by the one rule (fleetd.wire.names), numbers by the one reader
(fleetd.wire.numbers).
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, TypeVar

from fleetd import protocol
from fleetd.registry.base import ObservedRecord
from fleetd.wire import messages, names, numbers
from fleetd.wire.unitspec import HEALTH_UNKNOWN

PARTS_MAX = 100000  # items of a message in parts (a reply, a status) fleetd gathers


class Parts:
    """The items so far of each message that comes in parts, by its type and id."""

    def __init__(self) -> None:
        self._items: Dict[Tuple[str, int], List[Any]] = {}

    def whole(self, msg: Mapping[str, Any], key: str, ident: int = 0) -> Optional[List[Any]]:
        """The items under ``key`` of a message sent in parts, once its last part is
        here; None before. At most PARTS_MAX items are kept."""
        items = msg.get(key)
        if not isinstance(items, list):
            raise protocol.ProtocolError(f"{msg['type']} message: {key} is not a list")
        gathered = self._items.pop((msg["type"], ident), [])
        gathered.extend(items[:max(PARTS_MAX - len(gathered), 0)])
        if protocol.more(msg):
            self._items[(msg["type"], ident)] = gathered
            return None
        return gathered

    def clear(self) -> None:
        self._items.clear()


def observed(u: object, machine: str) -> ObservedRecord:
    """One unit's status (a protocol UnitStatus) from the agent on ``machine``, checked."""
    if not isinstance(u, dict):
        raise protocol.ProtocolError(f"a unit status is an object, not {u!r:.40}")
    name = u.get("name")
    why = names.problem(name)
    if why is not None:
        raise protocol.ProtocolError(f"unit status: {why}")
    try:
        return ObservedRecord(
            unit=str(name), machine=machine, hash=str(u.get("hash", "")),
            state=str(u.get("state", "")),
            pid=_optional(numbers.json_int, u.get("pid"), 0, 2 ** 31),
            started_at=_optional(numbers.json_float, u.get("started_at"), 0.0, None),
            exit_status=_optional(numbers.json_int, u.get("exit_status"), -255, 255),
            restarts=numbers.json_int(u.get("restarts") or 0, 0, None),
            error=_optional_str(u.get("error")), updated_at=time.time(),
            generation=numbers.json_int(u.get("generation") or 0, 0, None),
            health=str(u.get("health") or HEALTH_UNKNOWN),
        )
    except numbers.NumberError as exc:
        raise protocol.ProtocolError(f"unit status of {name}: {exc}") from None


class Overtaken(Exception):
    """The agent refused this fleetd: a fleetd with a newer epoch leads the host."""

    def __init__(self, epoch: int) -> None:
        super().__init__(f"refused by the agent: a newer fleetd (epoch {epoch}) leads "
                         "this host")
        self.epoch = epoch


def overtaken(msg: Mapping[str, Any]) -> Optional[Overtaken]:
    """An agent's ``error`` message read as an epoch refusal (it names the epoch that
    leads: ``messages.epoch_refused``), or None for any other error."""
    if "epoch" not in msg:
        return None
    try:
        return Overtaken(numbers.json_int(msg["epoch"], 0, messages.EPOCH_MAX))
    except numbers.NumberError as exc:
        raise protocol.ProtocolError(f"error message: epoch: {exc}") from None


def message_id(msg: Mapping[str, Any]) -> int:
    """The request id a reply or log message answers (-1: none of ours)."""
    try:
        return numbers.json_int(msg.get("id"), 0, None)
    except numbers.NumberError:
        return -1


N = TypeVar("N", int, float)


def _optional(read: Callable[[object, Optional[N], Optional[N]], N], value: object,
              lo: Optional[N], hi: Optional[N]) -> Optional[N]:
    return None if value is None else read(value, lo, hi)


def _optional_str(value: object) -> Optional[str]:
    return None if value is None else str(value)
