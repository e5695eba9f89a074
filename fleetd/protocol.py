"""Messages between fleetd and fleet-agent: versioned JSON, one object per line.

Both sides import this module, so it uses only the standard library and runs on
Python 3.9+. Every message carries ``v`` (the protocol's major version) and ``type``.
A peer that receives a different major version answers with an ``error`` message and
closes: mixing versions silently is how orchestrators lose units.

Daemon -> agent:
  hello     {daemon, heartbeat_s, epoch}    first message on every attach
  desired   {units: [UnitSpec]}             the host's whole desired set (idempotent)
  tail      {id, unit, lines}               the last lines of a unit's log
  follow    {id, unit, lines}               the last lines, then new ones as they come
  unfollow  {id}                            stop a follow
  bye       {}                              the daemon is detaching on purpose
  ping      {seq}                           every heartbeat while attached: fleetd is
                                            there (no reply; any message from fleetd
                                            counts, ping makes silence mean a cut)

A set, a snapshot or a reply larger than one line (MAX_LINE) comes in several
messages of its kind, each with ``more: true`` but the last (``chunks``): ``desired``
and ``status`` are taken once whole, a ``reply``'s ``lines`` are joined, and each
``log`` message stands alone.

Agent -> daemon:
  hello     {machine_id, hostname, agent_version, facts, fenced, epoch}
  status    {units: [UnitStatus]}           full snapshot: what the agent runs now
  unit      {unit: UnitStatus}              one unit changed state
  removed   {name}                          the agent forgot a unit (it was undesired)
  reply     {id, ...}                       the answer to a request with that id
  log       {id, lines}                     lines for a follow with that id
  heartbeat {seq, time}
  error     {message}                       (an epoch refusal adds {epoch})

Fencing: a unit whose config has ``fence_after_s`` (FenceAfterSec=) is stopped by the
agent once it has heard nothing from fleetd for that long. It is reported ``stopped``
with an error starting ``fenced:`` (``FENCED``), and stays stopped - no Restart= - until
the next ``desired`` message; fleetd answers such a report by sending its desired set
again (the session may have survived the cut, with nothing new to send). The agent's
``hello`` lists the units it keeps fenced (``fenced``: names), so that after a reconnect
fleetd sends a desired set computed since, not one from before the cut.

Epochs: each leadership term of fleetd has an epoch, a whole number 0..2**63-1 (with
etcd, the leader key's create revision; one fleetd on SQLite is always 0), and fleetd's
``hello`` carries it (absent: 0, a fleetd older than epochs). The agent keeps the highest
epoch a fleetd hello has brought, on disk, and says it in its own hello. A fleetd hello
with a lower epoch is answered with an ``error`` carrying ``epoch`` (the newer one) and
the connection is closed; a connection whose epoch has since been overtaken by another
fleetd's hello gets each ``desired`` refused the same way (nothing of it applied, the
connection stays: ``tail``/``follow`` are still answered), and its messages no longer
count as fleetd's word for fencing. So a deposed fleetd, cut off from the store but not
from the hosts, changes nothing on a host after the new one has said hello there. Only
hellos that say ``daemon: "fleetd"`` carry an epoch that counts; tools are not fenced.

Each message's shape (a TypedDict), its type's name and a function that builds it are in
fleetd.wire.messages (write ``protocol.dump(messages.ping(seq))``); the shape of a unit
spec, its config and a unit status, and the defaults both sides assume for an absent
field, in fleetd.wire.unitspec. mypy checks writers and readers against them.
"""

from __future__ import annotations

import json
from typing import Any, Dict, List, Mapping, Optional, Sequence

# The shapes of the messages and of what they carry (TypedDicts), the message type names
# and the defaults both sides share are in fleetd.wire.messages and fleetd.wire.unitspec.
from fleetd.wire import messages
from fleetd.wire.messages import Message
from fleetd.wire.unitspec import GENERATION, HEALTH_UNKNOWN, UnitConfig, UnitSpec, UnitStatus

VERSION = messages.VERSION

# Unit states the agent reports. ``starting`` and ``stopping`` are transitional;
# ``exited`` is a clean end (status 0 or a success status), ``failed`` anything else.
STARTING = "starting"
RUNNING = "running"
STOPPING = "stopping"
STOPPED = "stopped"
EXITED = "exited"
FAILED = "failed"
UNIT_STATES = (STARTING, RUNNING, STOPPING, STOPPED, EXITED, FAILED)

# The error of a unit the agent stopped because fleetd was silent past its FenceAfterSec=:
# "fenced: no word from fleetd for 12.3s (FenceAfterSec=10s)".
FENCED = "fenced:"

# What the daemon wants of a unit on a host (fleet's model, seen from one host):
# ``launched`` -> running, ``loaded`` -> present but stopped.
WANT_RUNNING = "running"
WANT_STOPPED = "stopped"

# The one size limit of a line, on both ends: the agent's socket reader, fleetd's SSH
# channel (its receive window is sized from it) and every message either side writes.
# What can be larger - a desired set, a status snapshot, the lines of a journal reply -
# goes in several messages (``chunks``); one unit spec larger than a message is not
# deliverable (fleetd reports it so, and sends the rest of the set).
MAX_LINE = 4 * 1024 * 1024
# A unit's error as reported: it may quote what the unit set (a 3 MiB PATH= in "command
# not found"), and a report over MAX_LINE would end the session at every connect.
ERROR_MAX = 4096


class ProtocolError(Exception):
    """A line that is not a message of this protocol version."""


class TooLarge(ProtocolError):
    """One item that does not fit in a message under MAX_LINE, even alone."""


def encode(kind: str, **fields: Any) -> bytes:
    """One message as a newline-terminated JSON line."""
    msg: Dict[str, Any] = {"v": VERSION, "type": kind}
    msg.update(fields)
    return _json(msg) + b"\n"


def dump(msg: Message) -> bytes:
    """A message built by one of fleetd.wire.messages' functions (``messages.ping(3)``),
    as ``encode`` writes it: mypy has checked its fields."""
    return _json(msg) + b"\n"


def _json(value: Any) -> bytes:
    """``value`` as every line writes it: compact, keys sorted."""
    return json.dumps(value, separators=(",", ":"), sort_keys=True).encode()


def decode(line: bytes) -> Dict[str, Any]:
    """Parse one line; raise ProtocolError naming what is wrong with it."""
    try:
        msg = json.loads(line)
    except ValueError as exc:
        raise ProtocolError(f"not a JSON line: {exc}: {line[:80]!r}") from None
    except RecursionError:  # [[[[...]]]] nested past the parser's stack
        raise ProtocolError(f"JSON nested too deep: {line[:80]!r}") from None
    if not isinstance(msg, dict):
        raise ProtocolError(f"not a JSON object: {line[:80]!r}")
    version = msg.get("v")
    if type(version) is not int or version != VERSION:  # JSON true is not version 1
        raise ProtocolError(
            f"protocol version {version!r} is not supported (this side speaks {VERSION})"
        )
    if not isinstance(msg.get("type"), str):
        raise ProtocolError(f"message without a type: {line[:80]!r}")
    return msg


def unit_spec(name: str, content_hash: str, want: str, driver: str, config: UnitConfig,
              generation: int = GENERATION) -> UnitSpec:
    """What the agent needs to run one unit, already rendered for this host.

    ``config`` is the driver's own settings (argv words, environment, ...): the daemon
    parses and validates unit files so that the agent never has to. ``hash`` is the
    rendered content's; a new ``generation`` with the same hash asks for a restart.
    """
    return {"name": name, "hash": content_hash, "want": want, "driver": driver,
            "config": config, "generation": generation}


def unit_status(
    name: str,
    content_hash: str,
    state: str,
    pid: Optional[int] = None,
    started_at: Optional[float] = None,
    exit_status: Optional[int] = None,
    restarts: int = 0,
    error: Optional[str] = None,
    generation: int = GENERATION,
    health: str = HEALTH_UNKNOWN,
) -> UnitStatus:
    """One unit as the agent sees it. ``health`` is its [X-Check] verdict: unknown
    (no check, or not yet decided), passing or failing."""
    return {
        "name": name,
        "hash": content_hash,
        "generation": generation,
        "health": health,
        "state": state,
        "pid": pid,
        "started_at": started_at,
        "exit_status": exit_status,
        "restarts": restarts,
        "error": error if error is None or len(error) <= ERROR_MAX
        else error[:ERROR_MAX - 3] + "...",
    }


def spec_list(msg: Dict[str, Any]) -> List[Dict[str, Any]]:
    """The unit list of a ``desired`` or ``status`` message, checked for shape."""
    units = msg.get("units")
    if not isinstance(units, list) or not all(isinstance(u, dict) and "name" in u for u in units):
        raise ProtocolError(f"{msg.get('type')} message without a list of units")
    return units


def item_size(item: Any) -> int:
    """The bytes ``item`` takes inside a message's list (with its comma)."""
    return len(_json(item)) + 1


def chunks(kind: str, key: str, items: Sequence[Any], limit: int = MAX_LINE,
           **fields: Any) -> List[bytes]:
    """``kind`` messages that carry ``items`` under ``key`` between them, each line at
    most ``limit`` bytes. Every message but the last says ``more: true``; the reader
    joins the lists until one does not (a single message, as before, when all fit).
    Raise TooLarge, naming the item's index, for one that fits in no message."""
    budget = limit - len(encode(kind, **{key: [], "more": True}, **fields))
    out: List[bytes] = []
    part: List[Any] = []
    used = 0
    for index, item in enumerate(items):
        size = item_size(item)
        if size > budget:
            raise TooLarge(f"{kind} item {index} is {size} bytes, over the {limit}-byte "
                           "message limit")
        if part and used + size > budget:
            out.append(encode(kind, **{key: part, "more": True}, **fields))
            part, used = [], 0
        part.append(item)
        used += size
    out.append(encode(kind, **{key: part}, **fields))
    return out


def more(msg: Mapping[str, Any]) -> bool:
    """Does another part of this message follow (see ``chunks``)?"""
    return msg.get("more") is True
