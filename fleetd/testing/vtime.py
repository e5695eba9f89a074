"""An asyncio event loop whose clock jumps: simulated minutes run in milliseconds.

``loop.time()`` starts at 0 and moves only when every task waits on a timer: the loop
then jumps to the earliest one instead of sleeping. So ``asyncio.sleep``,
``asyncio.wait_for`` and ``call_later`` run in simulated time, deterministically (the
order of events depends on the simulated times alone), and a test can assert on when
things happened without ever depending on the machine's speed. Nothing here may wait on
real I/O: a loop with no timer left and nothing ready raises ``Deadlock``.
"""

from __future__ import annotations

import asyncio
import selectors
from typing import Any, Coroutine, List, Optional, Tuple, TypeVar

T = TypeVar("T")


class Deadlock(RuntimeError):
    pass


class _Jumping(selectors.DefaultSelector):
    def __init__(self) -> None:
        super().__init__()
        self.now = 0.0

    def select(self, timeout: Optional[float] = None
               ) -> List[Tuple[selectors.SelectorKey, int]]:
        ready = super().select(0)
        if ready or timeout == 0:
            return ready
        if timeout is None:
            raise Deadlock("every task waits and no timer is set")
        self.now += timeout
        return []


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    def __init__(self) -> None:
        self._jumping = _Jumping()
        super().__init__(self._jumping)

    def time(self) -> float:
        return self._jumping.now


def run(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` to its end on a fresh VirtualTimeLoop."""
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(main)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
