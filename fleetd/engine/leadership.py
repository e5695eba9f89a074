"""The lock that makes one fleetd the engine for a registry, even when it runs alone.

``LeaderLock`` is what the leadership loop (engine/leader.py) campaigns for and renews:
an etcd lease on a leader key for several fleetd (issue 12), or ``FileLock`` for one.

With SQLite the lock is an flock next to the database (``FileLease``): a second fleetd
on the same state directory refuses to start instead of fighting the first over the
same hosts. ``FileLock`` is that flock as a ``LeaderLock``: held for the process's life
(its TTL is infinite, so it is never renewed and never expires), each start a new term
whose epoch is a counter kept next to the lease.
"""

from __future__ import annotations

import dataclasses
import fcntl
import math
import os
from typing import Optional, Protocol, runtime_checkable


class LeadershipError(Exception):
    """The lock could not be had, kept or read."""


class LeaseHeld(LeadershipError):
    """Another fleetd holds the lock (``holder`` says who, as the lock knows it)."""

    def __init__(self, message: str, holder: str = "another process") -> None:
        super().__init__(message)
        self.holder = holder


class LockLost(LeadershipError):
    """The store says the lock is no longer this fleetd's: it expired or was taken.
    A renewal that raises this is not retried; the leader steps down at once."""


class EpochUnreadable(LeadershipError):
    """The file that counts terms holds something other than a number: starting a term
    from 0 again could hand out an epoch the agents have already seen."""


@dataclasses.dataclass(frozen=True)
class Campaign:
    """What a campaign found: the epoch of this fleetd's new term when it won, else
    None and who holds the lock (for messages and ``list-servers``; None when the lock
    could not say)."""

    epoch: Optional[int]
    holder: Optional[str] = None


class LeaderLock(Protocol):
    """One lock per registry; whoever holds it leads.

    ``ttl``: seconds the lock outlives its holder's last confirmed renewal (math.inf for
    a lock held for the process's life). ``campaign`` tries to take it; a won lock is
    ours for ``ttl`` counted from when the store received the campaign, and always a
    new term, its epoch larger than any before (a holder campaigning again, after a
    resignation that did not arrive, gets the next term, not its old one). ``renew`` keeps
    it, answering the TTL that remains as the store confirmed it, counted from when the
    store received the renewal; it raises ``LockLost`` when the lock is no longer ours
    and anything else when the store could not be asked. ``resign`` lets it go
    (best-effort: a lock that is not resigned expires).
    """

    @property
    def ttl(self) -> float: ...

    async def campaign(self) -> Campaign: ...

    async def renew(self) -> float: ...

    async def resign(self) -> None: ...



@runtime_checkable
class Vacancy(Protocol):
    """A ``LeaderLock`` that can tell a follower when the lock may have become free, so
    it campaigns then instead of at its next TTL/3 tick (etcd: a watch on the leader
    key sees it deleted). ``vacated`` returns once that happened since the lock's last
    lost campaign; it never raises for a store it cannot watch, it just never returns
    (the follower's timer still campaigns). The loop uses it when the lock has it."""

    async def vacated(self) -> None: ...

class FileLease:
    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = -1

    @property
    def held(self) -> bool:
        return self._fd >= 0

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            with open(self.path) as f:
                holder = f.read().strip() or "another process"
            raise LeaseHeld(f"{self.path} is held by fleetd pid {holder}",
                            holder=f"fleetd pid {holder}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def epoch_path(lease_path: str) -> str:
    """Where the term counter of a lease lives: ``fleetd.lock`` -> ``fleetd.epoch``."""
    return os.path.splitext(lease_path)[0] + ".epoch"


def next_epoch(path: str) -> int:
    """Count one more term in ``path`` and return it (1 for the first). The file is
    replaced whole (written aside, fsynced, renamed), so a crash leaves the old count or
    the new one, never a torn number; the caller holds the lease, so no two starts count
    at once."""
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        text = "0"
    try:
        last = int(text.strip())
    except ValueError:
        raise EpochUnreadable(f"{path}: not a term count: {text[:40]!r}") from None
    if last < 0:
        raise EpochUnreadable(f"{path}: not a term count: {last}")
    epoch = last + 1
    tmp = f"{path}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, f"{epoch}\n".encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    directory = os.open(os.path.dirname(os.path.abspath(path)), os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return epoch


class FileLock:
    """The single-fleetd ``LeaderLock``: the flock of ``FileLease`` on ``path``, held
    until ``resign`` or the process's end; each won campaign is a new term, counted in
    ``epoch_path(path)``. A lost campaign names the pid in the lease file; the loop,
    told not to wait (``Timing(patient=False)``), then raises ``LeaseHeld`` with
    ``FileLease``'s message, so a second fleetd refuses to start as before."""

    def __init__(self, path: str, epoch_file: Optional[str] = None) -> None:
        self.lease = FileLease(path)
        self.epoch_file = epoch_file or epoch_path(path)
        self.epoch: Optional[int] = None

    @property
    def ttl(self) -> float:
        return math.inf

    async def campaign(self) -> Campaign:
        if not self.lease.held:
            try:
                self.lease.acquire()
            except LeaseHeld as held:
                return Campaign(None, held.holder)
        try:
            self.epoch = next_epoch(self.epoch_file)
        except BaseException:
            self.lease.release()
            raise
        return Campaign(self.epoch)

    async def renew(self) -> float:
        if self.epoch is None or not self.lease.held:
            raise LockLost(f"{self.lease.path} is not held by this fleetd")
        return math.inf

    async def resign(self) -> None:
        self.release()

    def release(self) -> None:
        """Let the lease go (what the Daemon's ``Lease`` asks of it)."""
        self.epoch = None
        self.lease.release()
