"""The lease that makes one fleetd the engine for a registry, even when it runs alone.

With SQLite the lease is an flock next to the database: a second fleetd on the same
state directory refuses to start instead of fighting the first over the same hosts.
An etcd registry will hold the same role with an etcd lease.
"""

from __future__ import annotations

import fcntl
import os


class LeaseHeld(Exception):
    pass


class FileLease:
    def __init__(self, path: str) -> None:
        self.path = path
        self._fd = -1

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            with open(self.path) as f:
                holder = f.read().strip() or "another process"
            raise LeaseHeld(f"{self.path} is held by fleetd pid {holder}") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
