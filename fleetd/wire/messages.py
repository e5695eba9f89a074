"""Every message between fleetd and fleet-agent, as a TypedDict, and its type's name.

fleetd.protocol says what each message means and encodes/decodes the lines; this
module is the shape of each, so that mypy holds the writer and the reader to the same
fields. A TypedDict is a plain dict at run time: what goes over the wire is unchanged.
A decoded message is only a ``Message`` (``v`` and ``type``) until its reader has
checked its fields (fleetd.agent.specs on the agent, fleetd.daemon.session on fleetd).
Standard library only, Python 3.9+ (agent side).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, TypedDict

from fleetd.wire.unitspec import UnitSpec, UnitStatus

VERSION = 1  # the protocol's major version: every message carries it as ``v``

# --- message types ----------------------------------------------------------------------------
# both ways
HELLO = "hello"
ERROR = "error"
# fleetd -> agent
DESIRED = "desired"
TAIL = "tail"
FOLLOW = "follow"
UNFOLLOW = "unfollow"
BYE = "bye"
PING = "ping"
USAGE = "usage"  # each unit's cgroup usage now: a reply with ``usage`` (metrics, status)
# agent -> fleetd
STATUS = "status"
UNIT = "unit"
REMOVED = "removed"
REPLY = "reply"
LOG = "log"
HEARTBEAT = "heartbeat"

DAEMON_NAME = "fleetd"  # what fleetd says it is in its hello (only its messages count)
HEARTBEAT_S = 1.0  # hello's heartbeat_s when absent
EPOCH = 0  # hello's epoch when absent (a fleetd older than epochs), and one fleetd's on SQLite
EPOCH_MAX = 2 ** 63 - 1  # the largest epoch (etcd's revisions are int64)
TAIL_LINES = 10  # a tail or follow's lines when absent


class Message(TypedDict):
    """What every message has (fleetd.protocol.decode checks both)."""

    v: int
    type: str


class _Parts(Message, total=False):
    more: bool  # another part follows (protocol.chunks)


# --- fleetd -> agent --------------------------------------------------------------------------
class _DaemonHelloBase(Message):
    daemon: str  # DAEMON_NAME for fleetd; tools say something else
    heartbeat_s: float


class DaemonHello(_DaemonHelloBase, total=False):
    epoch: int  # the sender's leadership term; absent from a fleetd older than epochs: 0


class Desired(_Parts):
    units: List[UnitSpec]


class _Request(Message):
    id: int


class LogRequest(_Request):
    """``tail`` and ``follow``."""

    unit: str
    lines: int


class Unfollow(_Request):
    pass


class Ping(Message):
    seq: int


# --- agent -> fleetd --------------------------------------------------------------------------
class _AgentHelloBase(Message):
    machine_id: str
    hostname: str
    agent_version: str
    facts: Dict[str, Any]  # fleetd.agent.facts: free-form, read by fleetd's scheduler


class AgentHello(_AgentHelloBase, total=False):
    fenced: List[str]  # absent from agents older than fencing
    epoch: int  # the highest fleetd epoch it has seen; absent from agents older than epochs


class Status(_Parts):
    units: List[UnitStatus]


class UnitChanged(Message):
    """``unit``: one unit changed state."""

    unit: UnitStatus


class Removed(Message):
    name: str


class _ReplyBase(_Parts):
    id: int


class Reply(_ReplyBase, total=False):
    lines: List[str]
    error: str
    # USAGE's: unit -> the counters the agent read of its cgroup (cgroups.base's
    # stats(): memory_bytes, cpu_usage_usec, ...; and oom_kills); none where it has none
    usage: Dict[str, Dict[str, int]]


class Log(_Parts):
    id: int
    lines: List[str]


class Heartbeat(Message):
    seq: int
    time: float


class _ErrorBase(Message):
    message: str


class Error(_ErrorBase, total=False):
    epoch: int  # only in an epoch refusal: the newer epoch that leads the host


# --- building one: what a writer calls, so that mypy checks the fields ----------------------
def daemon_hello(heartbeat_s: float, daemon: str = DAEMON_NAME, epoch: int = EPOCH
                 ) -> DaemonHello:
    return {"v": VERSION, "type": HELLO, "daemon": daemon, "heartbeat_s": heartbeat_s,
            "epoch": epoch}


def agent_hello(machine_id: str, hostname: str, agent_version: str, facts: Dict[str, Any],
                fenced: List[str], epoch: Optional[int] = None) -> AgentHello:
    """``epoch``: the agent's (None leaves it out, as an agent older than epochs)."""
    hello: AgentHello = {"v": VERSION, "type": HELLO, "machine_id": machine_id,
                         "hostname": hostname, "agent_version": agent_version,
                         "facts": facts, "fenced": fenced}
    if epoch is not None:
        hello["epoch"] = epoch
    return hello


def log_request(kind: str, ident: int, unit: str, lines: int) -> LogRequest:
    """A ``tail`` or ``follow`` (``kind``) of ``unit``'s last ``lines``."""
    assert kind in (TAIL, FOLLOW), kind
    return {"v": VERSION, "type": kind, "id": ident, "unit": unit, "lines": lines}


def unfollow(ident: int) -> Unfollow:
    return {"v": VERSION, "type": UNFOLLOW, "id": ident}


def ping(seq: int) -> Ping:
    return {"v": VERSION, "type": PING, "seq": seq}


def bye() -> Message:
    return {"v": VERSION, "type": BYE}


def unit_changed(unit: UnitStatus) -> UnitChanged:
    return {"v": VERSION, "type": UNIT, "unit": unit}


def removed(name: str) -> Removed:
    return {"v": VERSION, "type": REMOVED, "name": name}


def usage_reply(ident: int, usage: Dict[str, Dict[str, int]]) -> Reply:
    return {"v": VERSION, "type": REPLY, "id": ident, "usage": usage}


def reply_error(ident: int, error: str) -> Reply:
    return {"v": VERSION, "type": REPLY, "id": ident, "error": error}


def heartbeat(seq: int, time: float) -> Heartbeat:
    return {"v": VERSION, "type": HEARTBEAT, "seq": seq, "time": time}


def error(message: str) -> Error:
    return {"v": VERSION, "type": ERROR, "message": message}


def epoch_refused(theirs: int, ours: int) -> Error:
    """The agent to a fleetd whose epoch (``theirs``) is older than the one that leads
    the host now (``ours``): what it sent is refused, nothing of it applied."""
    return {"v": VERSION, "type": ERROR, "epoch": ours,
            "message": f"epoch {theirs} is older than {ours}: a newer fleetd leads this host"}
