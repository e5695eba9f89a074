"""Desired and observed state behind one small protocol.

Desired state is what users asked for (units, their desired state, machines); observed
state is what agents report. Placements sit between: the engine writes them. Every
write that answers a user is durable before the call returns, and a batch either lands
whole or not at all, so a failed ``fleetctl start a b c`` leaves nothing behind.

Reads are synchronous and writes are coroutines. Reads come from what this process
holds (SQLite's file; etcd's watch-fed cache), so the engine reads a whole pass without
yielding; a write waits for the store (etcd: a quorum), and a fleetd must go on serving
its sessions and API meanwhile, and when the store cannot answer at all.

Fencing: the engine's and sessions' writes say the ``epoch`` (leadership term) they were
made in; a store shared by several fleetd makes such a write only while that term still
leads (etcd: in the same transaction), else it raises ``NotLeader``. A deposed leader
cut off from the others can then write nothing. A store for one fleetd (SQLite, behind
its file lock) has one term at a time and ignores the epoch.
"""

from __future__ import annotations

import dataclasses
from typing import (
    Any,
    Callable,
    Dict,
    Iterable,
    List,
    Mapping,
    NamedTuple,
    Optional,
    Protocol,
    Sequence,
    Tuple,
)

INACTIVE = "inactive"  # known, not placed
LOADED = "loaded"  # placed, not running
LAUNCHED = "launched"  # placed and running
DESIRED_STATES = (INACTIVE, LOADED, LAUNCHED)
FAILURES_KEPT = 100  # per unit, the newest: more than any reschedule policy counts
VERSIONS_KEPT = 10  # per unit, the newest contents it was given: what a rollout goes back to
# the ``via`` of the version a unit stored before versions were kept gets when it changes
# (an older fleetd's registry, or one migrated to etcd): its instances are then known
# to have the template's content, and roll
BEFORE_VERSIONS = "(stored before fleetd kept versions)"


class RegistryError(Exception):
    """A write the registry refused; the message is for the user."""


class Conflict(RegistryError):
    """A write that would overwrite something the user did not mean to replace."""


class NotFound(RegistryError):
    """The unit or machine named does not exist."""


class Unavailable(RegistryError):
    """The store could not make the write now (etcd without a quorum, unreachable): it
    was not made; the message names the store. Reads may still answer (``staleness``)."""


class NotLeader(Unavailable):
    """A write fenced by an ``epoch`` whose term no longer leads: it was not made."""


class Unsure(RegistryError):
    """The store could not say whether the write was made (etcd: the request may have
    reached a member that then went silent, and no quorum answers since). Unlike
    Unavailable, doing it again elsewhere may do it twice: the user must look."""


def check_desired(desired: str) -> None:
    if desired not in DESIRED_STATES:
        raise ValueError(f"desired state {desired!r} is not one of {DESIRED_STATES}")


def put_conflict(name: str, stored: str, given: str, same_hash: bool) -> Conflict:
    """What put_units raises for a unit stored with other content or variables."""
    what = "variables" if same_hash else "content"
    return Conflict(f"{name} already exists with different {what} "
                    f"(stored {stored[:12]}, given {given[:12]}); "
                    "use --replace to update it, or destroy it first")


@dataclasses.dataclass(frozen=True)
class UnitRecord:
    name: str
    hash: str
    desired: str
    machine: Optional[str]  # placement; None while unplaced
    reason: str  # why it is where it is (or why nowhere)
    updated_at: float
    vars: Dict[str, str] = dataclasses.field(default_factory=dict)  # for rendering
    generation: int = 0  # bumped by restart: the agent restarts on a new generation
    placed_at: Optional[float] = None  # when it was put on ``machine``
    handoff: Optional[str] = None  # a drain moves it from here: that copy runs until
    # the one on ``machine`` is healthy


class UnitInput(NamedTuple):
    """A unit to store: its content (stored once per hash) and its render variables."""

    name: str
    text: str
    hash: str
    vars: Dict[str, str] = {}
    desired: Optional[str] = None  # overrides the call's desired state (templates: inactive)


@dataclasses.dataclass(frozen=True)
class MachineRecord:
    name: str
    address: str
    port: int
    user: str
    identity: Optional[str]
    known_hosts: Optional[str]
    agent_command: str
    metadata: Dict[str, str]
    machine_id: Optional[str] = None
    facts: Dict[str, Any] = dataclasses.field(default_factory=dict)
    state: str = "new"  # new, up, unreachable, lost, error
    error: Optional[str] = None
    last_seen: Optional[float] = None
    draining: Optional[float] = None  # since when `fleetctl drain` empties it
    drain_deadline: Optional[float] = None  # after this, what is left moves at once


@dataclasses.dataclass(frozen=True)
class FailureRecord:
    """A unit failed on a machine (start limit hit, or its health check ended it):
    what its reschedule policy counts, and where it avoids going next."""

    unit: str
    hash: str  # the content that failed: new content starts with a clean slate
    machine: str
    at: float
    reason: str


@dataclasses.dataclass(frozen=True)
class ObservedRecord:
    unit: str
    machine: str
    hash: str
    state: str
    pid: Optional[int]
    started_at: Optional[float]
    exit_status: Optional[int]
    restarts: int
    error: Optional[str]
    updated_at: float
    generation: int = 0
    health: str = "unknown"


@dataclasses.dataclass(frozen=True)
class VersionRecord:
    """A content a unit was given (put_units with new content, or its first): the
    rollout's "previous content" and what ``fleetctl history`` lists. Its text is kept
    while the record is (the newest ``VERSIONS_KEPT`` per unit)."""

    unit: str
    version: int  # 1, 2, ... per unit, never reused while the unit exists
    hash: str
    at: float
    via: str  # who submitted it (the API's caller), or why fleetd did (AutoRevert=)
    # how its rollout goes, given on the command line (engine/rollout.py: ``canary``,
    # [X-Update]'s options by their field names); JSON values
    options: Dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class SecretRecord:
    """A secret as stored: never its value in clear. ``sealed`` is the value encrypted
    by fleetd's key (fleetd.daemon.secrets: AES-GCM, bound to ``name``), as base64;
    ``version`` is random per ``secret set`` and goes into the hash of every unit that
    reads it (fleetd.units.secrets), so a new one rolls them."""

    name: str
    sealed: str
    version: str
    set_at: float


class Registry(Protocol):
    """What fleetd needs of a store. sqlite is the embedded default; etcd is shared by
    several fleetd (registry/etcd.py)."""

    # --- the store itself ----------------------------------------------------------
    def staleness(self) -> Optional[str]:
        """None while reads are current; else why they may be stale (etcd: no quorum
        since when), which the API adds to what it answers."""

    def on_change(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` after a change made by another process (another fleetd on
        the same etcd) is readable here: a follower's waits and the leader's engine wake
        on a user's write through any fleetd. A store with one writer never calls it."""

    async def close(self) -> None: ...

    # --- units -----------------------------------------------------------------
    async def put_units(self, units: Sequence[UnitInput], desired: Optional[str],
                        replace: bool = False, *, follow: bool = True,
                        via: str = "", options: Optional[Dict[str, Any]] = None,
                        epoch: Optional[int] = None) -> List[str]:
        """Store units with ``desired`` state, all or none; return every unit changed.
        ``desired`` None: each unit keeps the state it has (a new one: inactive); a
        unit's own ``UnitInput.desired`` overrides either.

        A unit that exists with other content (or other variables) raises Conflict,
        unless ``replace``: then it takes the new content where it is placed, and a
        template's instances that still had the template's old content take the new one
        too (fleet made you destroy a template to change it: its issue 1691), unless
        not ``follow``: then the template alone changes, and a rollout moves its
        instances over (engine/rollout.py). With the same content only the desired
        state changes. A unit given new content (or its first) gets a version
        (``list_versions``) saying ``via``, with ``options``. ``epoch``: fenced, as the
        engine's writes are (a rollout's steps)."""

    async def restart(self, names: Sequence[str]) -> None:
        """Bump the units' generation and make them launched (NotFound if one is missing);
        their failures are forgotten (a user's restart is a fresh start)."""

    async def set_desired(self, names: Sequence[str], desired: str) -> None:
        """Change the desired state of existing units (NotFound if one is missing)."""

    async def delete_units(self, names: Sequence[str]) -> None:
        """Forget units (NotFound if one is missing); their observed rows stay until
        the agents confirm they stopped them."""

    def get_unit(self, name: str) -> Optional[UnitRecord]: ...

    def list_units(self) -> List[UnitRecord]: ...

    def unit_text(self, content_hash: str) -> Optional[str]: ...

    def list_versions(self, unit: str) -> List[VersionRecord]:
        """The unit's versions, oldest first (the newest ``VERSIONS_KEPT``); a unit
        destroyed forgets them."""

    async def set_version_options(self, unit: str, version: int,
                                  options: Mapping[str, Any]) -> None:
        """Replace the options of ``unit``'s ``version`` (``fleetctl promote``); NotFound
        if the unit or that version is not kept."""

    async def set_placements(self, placements: Iterable[Tuple[str, Optional[str], str]],
                             handoffs: Optional[Mapping[str, Optional[str]]] = None,
                             retry: Sequence[str] = (), *,
                             epoch: Optional[int] = None) -> None:
        """In one transaction: (unit, machine or None, reason) for each unit the engine
        (re)placed (one put on another machine gets a new ``placed_at``); ``handoffs``:
        unit -> the machine whose copy runs until the new one is healthy (None: no
        hand-off); ``retry``: failed units started again where they are (a new generation
        and ``placed_at``; their failures are kept, unlike a user's restart)."""

    async def record_failure(self, failure: FailureRecord, *,
                             epoch: Optional[int] = None) -> None: ...

    def list_failures(self, unit: Optional[str] = None) -> Dict[str, List[FailureRecord]]:
        """Each unit's recorded failures (or one unit's), oldest first (the newest
        ``FAILURES_KEPT`` per unit)."""

    # --- machines --------------------------------------------------------------
    async def add_machine(self, machine: MachineRecord) -> None: ...

    async def remove_machine(self, name: str) -> None: ...

    def get_machine(self, name: str) -> Optional[MachineRecord]: ...

    def list_machines(self) -> List[MachineRecord]: ...

    async def update_machine(self, name: str, *, epoch: Optional[int] = None,
                             **fields: Any) -> None:
        """Record what a session learnt (state, error, facts, machine_id, last_seen) or
        what a user asked of the machine (draining, drain_deadline; ``metadata``, the
        whole new mapping: ``fleetctl machine set-metadata`` replaces what ``machine
        add`` gave, and it stays so until changed again or the machine is removed)."""

    # --- observed state -----------------------------------------------------------
    async def replace_observed(self, machine: str, rows: Sequence[ObservedRecord], *,
                               epoch: Optional[int] = None) -> None:
        """A full snapshot from ``machine``: rows it no longer reports are dropped."""

    async def upsert_observed(self, row: ObservedRecord, *,
                              epoch: Optional[int] = None) -> None: ...

    async def delete_observed(self, machine: str, unit: str, *,
                              epoch: Optional[int] = None) -> None: ...

    def list_observed(self, unit: Optional[str] = None) -> List[ObservedRecord]:
        """Every observed row, or the rows of one unit (one per machine)."""

    # --- secrets (sealed: the registry never sees a value in clear) -------------------
    async def put_secret(self, secret: SecretRecord) -> None:
        """Store ``secret``, replacing one of its name; durable before it returns."""

    async def delete_secret(self, name: str) -> None:
        """Forget the secret ``name`` (NotFound if there is none)."""

    def get_secret(self, name: str) -> Optional[SecretRecord]: ...

    def list_secrets(self) -> List[SecretRecord]:
        """Every secret, by name."""
