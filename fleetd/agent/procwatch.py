"""Waiting for a process to end: a pidfd per process, no thread, no polling.

A pidfd (Linux 5.3+) becomes readable the moment its process exits, whether it is our
child or a program a previous agent started (adopted: not our child). The event loop
watches it like a socket, so an exit wakes the agent at once - that is what makes a
restart with RestartSec=0 take milliseconds rather than a polling interval.

The pidfd also pins identity: it is opened first and the process's start tick checked
after, so a pid that was reused in between is never mistaken for the program.

For our children the exit status then comes from waitpid. For adopted programs it
cannot be known (see fleetd.agent.restart): ``Exit(None)``. Where pidfds are missing
(kernel < 5.3), the process is polled every POLL_S instead.
"""

from __future__ import annotations

import asyncio
import os
from typing import Optional

from fleetd.agent.restart import Exit
from fleetd.drivers.base import alive, start_ticks

POLL_S = 0.05


def reap(pid: int, block: bool = True) -> Optional[Exit]:
    """Our child ``pid``'s end (collecting the zombie); Exit(None) if it is not our
    child; None if it has not ended yet (only with ``block=False``)."""
    try:
        wpid, status = os.waitpid(pid, 0 if block else os.WNOHANG)
    except ChildProcessError:
        return Exit(None)
    if wpid == 0:
        return None
    if os.WIFSIGNALED(status):
        return Exit(-os.WTERMSIG(status), core_dumped=os.WCOREDUMP(status))
    if os.WIFEXITED(status):
        return Exit(os.WEXITSTATUS(status))
    return Exit(-1)


def watch(pid: int, ticks: int) -> asyncio.Future[Exit]:
    """A future that resolves with how process ``pid`` (started at ``ticks``) ended.
    Cancelling it stops the watch."""
    loop = asyncio.get_running_loop()
    done: asyncio.Future[Exit] = loop.create_future()
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:  # gone and reaped already
        done.set_result(reap(pid) or Exit(None))
        return done
    except (AttributeError, OSError):  # no pidfd on this kernel or Python
        poller = asyncio.ensure_future(_poll(pid, ticks, done))
        done.add_done_callback(lambda _f: poller.cancel())
        return done
    if ticks >= 0 and start_ticks(pid) != ticks:
        os.close(fd)  # the pid is someone else's now: ours ended while we looked away
        done.set_result(Exit(None))
        return done

    closed = False

    def close(_done: object = None) -> None:
        nonlocal closed
        if not closed:  # once only: a closed fd's number may already be another watch's
            closed = True
            loop.remove_reader(fd)
            os.close(fd)

    def ready() -> None:
        close()
        if not done.done():
            done.set_result(reap(pid) or Exit(None))

    loop.add_reader(fd, ready)
    done.add_done_callback(close)
    return done


async def _poll(pid: int, ticks: int, done: asyncio.Future[Exit]) -> None:
    while not done.done():
        end = reap(pid, block=False)
        if end is not None and end.code is not None:
            done.set_result(end)
            return
        if not alive(pid, ticks):
            done.set_result(reap(pid) or Exit(None))
            return
        await asyncio.sleep(POLL_S)
