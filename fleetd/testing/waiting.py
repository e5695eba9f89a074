"""Waiting in tests: for a condition inside an event loop, for a process to be gone.

Shared by unit and integration tests, so that "alive" means one thing everywhere: a
zombie is not alive (this machine's PID 1 may reap late); fleetd.procfs says so.
"""

from __future__ import annotations

import asyncio
from typing import Callable

from fleetd import procfs


async def until(check: Callable[[], object], timeout: float = 3.0) -> None:
    """Poll ``check`` every 10 ms until it is true; fail the test after ``timeout``."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.01)


def alive(pid: int) -> bool:
    """The process exists and is not a zombie."""
    return procfs.alive(pid)
