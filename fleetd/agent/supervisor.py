"""Runs the host reconciler's tasks and watches every program the agent is responsible for.

One ``Managed`` per unit. Changes to a unit are serialised by its lock: ``converge(name)``
asks the pure reconciler for the next task and executes it until there is none, so a
burst of desired-set updates always ends at the latest one.

Exits are seen through a pidfd per program (Linux 5.3+): it works for children and for
programs a previous agent started (adopted ones, which are not our children), costs no
thread and no polling, and fires the moment the program dies. For children the exit
status then comes from waitpid; for adopted programs it cannot be known, and is
reported as unknown rather than guessed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import uuid
from typing import Any, Callable, Dict, List, Optional

from fleetd import protocol
from fleetd.agent import reconciler
from fleetd.agent.reconciler import Current
from fleetd.agent.state import AgentState
from fleetd.drivers.base import Driver, DriverError, Handle, StartContext
from fleetd.drivers.exec import ExecDriver, exit_description, same_process, wait_status_to_code
from fleetd.drivers.java import JavaDriver

log = logging.getLogger("fleet-agent")

KILL_GRACE_S = 5.0  # after SIGKILL, how long to wait before giving up on a process


def boot_id() -> str:
    """Changes at every boot: a record from an earlier boot proves nothing."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


class Managed:
    """A unit on this host: its spec, its program (if any) and its last outcome."""

    def __init__(self, spec: Dict[str, Any], state: str = protocol.STOPPED) -> None:
        self.spec = spec
        self.state = state
        self.handle: Optional[Handle] = None
        self.exit_status: Optional[int] = None
        self.restarts = 0
        self.error: Optional[str] = None
        self.command_index = 0
        self.gone = asyncio.Event()  # set while no program runs
        self.gone.set()

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    def status(self) -> Dict[str, Any]:
        h = self.handle
        return protocol.unit_status(
            self.name, self.spec["hash"], self.state,
            pid=h.pid if h and self.state in reconciler.ACTIVE else None,
            started_at=h.started_at if h else None,
            exit_status=self.exit_status, restarts=self.restarts, error=self.error,
            generation=self.spec.get("generation", 0),
        )


class Supervisor:
    def __init__(
        self,
        state: AgentState,
        machine_id: str,
        emit: Callable[[bytes], None],
    ) -> None:
        self.state = state
        self.machine_id = machine_id
        self.emit = emit
        exec_driver = ExecDriver()  # shared: java runs through the exec driver's machinery
        self.drivers: Dict[str, Driver] = {"exec": exec_driver,
                                           "java": JavaDriver(exec_driver)}
        self.desired: Dict[str, Dict[str, Any]] = {}
        self.units: Dict[str, Managed] = {}
        self.boot_id = boot_id()
        # one lock per unit name, kept for the agent's life: two converges of one unit
        # must never run side by side (that is how duplicates are born)
        self._locks: Dict[str, asyncio.Lock] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    # --- reports -----------------------------------------------------------------
    def snapshot(self) -> List[Dict[str, Any]]:
        return [m.status() for m in self.units.values()]

    def _report(self, m: Managed) -> None:
        self.emit(protocol.encode("unit", unit=m.status()))

    # --- desired state ---------------------------------------------------------------
    def set_desired(self, specs: List[Dict[str, Any]]) -> None:
        """Take fleetd's whole desired set for this host (persisted before acting)."""
        self.state.save_desired(specs)
        self.desired = {s["name"]: s for s in specs}
        for name in set(self.desired) | set(self.units):
            self._spawn(self.converge(name))

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def converge(self, name: str) -> None:
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            while True:
                m = self.units.get(name)
                spec = self.desired.get(name)
                cur = Current(hash=m.spec["hash"], state=m.state,
                              generation=m.spec.get("generation", 0)) if m else None
                task = reconciler.next_task(spec, cur)
                if task is None:
                    return
                log.info("%s: %s (%s)", name, task.kind, task.reason)
                if task.kind == reconciler.LOAD:
                    assert spec is not None
                    self.state.delete_record(name)
                    fresh = Managed(spec)
                    self.units[name] = fresh
                    self._report(fresh)
                elif task.kind == reconciler.START:
                    assert m is not None
                    self._start(m)
                elif task.kind == reconciler.STOP:
                    assert m is not None
                    await self._stop(m)
                elif task.kind == reconciler.FORGET:
                    self.units.pop(name, None)
                    self.state.delete_record(name)
                    self.emit(protocol.encode("removed", name=name))

    # --- starting ------------------------------------------------------------------
    def _start(self, m: Managed) -> None:
        driver = self.drivers.get(m.spec["driver"])
        m.exit_status = None
        m.error = None
        if driver is None:
            m.state, m.error = protocol.FAILED, f"driver {m.spec['driver']} is not available here"
            self._report(m)
            return
        ctx = StartContext(unit=m.name, machine_id=self.machine_id,
                           log_path=self.state.unit_log(m.name),
                           invocation_id=uuid.uuid4().hex)
        try:
            handle = driver.start(m.spec["config"], ctx, m.command_index)
        except DriverError as exc:
            m.state, m.error = protocol.FAILED, str(exc)
            log.warning("%s: cannot start: %s", m.name, exc)
            self._report(m)
            return
        m.handle = handle
        m.gone.clear()
        oneshot = m.spec["config"].get("type") == "oneshot"
        m.state = protocol.STARTING if oneshot else protocol.RUNNING
        self.state.save_record(m.name, {"spec": m.spec, "handle": handle.to_record(),
                                        "boot_id": self.boot_id, "restarts": m.restarts})
        self._watch(m, handle)
        self._report(m)

    # --- stopping ------------------------------------------------------------------
    async def _stop(self, m: Managed) -> None:
        handle, driver = m.handle, self.drivers.get(m.spec["driver"])
        if handle is None or driver is None or m.gone.is_set():
            m.state = protocol.STOPPED
            self._report(m)
            return
        m.state = protocol.STOPPING
        self._report(m)
        config = m.spec["config"]
        driver.signal(handle, int(config.get("kill_signal", signal.SIGTERM)))
        timeout = config.get("timeout_stop_s", 90.0)  # None: wait as long as it takes
        if not await _wait(m.gone, timeout):
            log.warning("%s: still running %ss after its stop signal: SIGKILL", m.name, timeout)
            driver.signal(handle, signal.SIGKILL)
            if not await _wait(m.gone, KILL_GRACE_S):
                m.error = f"pid {handle.pid} survived SIGKILL"
        m.state = protocol.STOPPED
        self.state.delete_record(m.name)
        self._report(m)

    # --- exits -----------------------------------------------------------------------
    def _watch(self, m: Managed, handle: Handle) -> None:
        loop = asyncio.get_running_loop()
        try:
            fd = os.pidfd_open(handle.pid)
        except ProcessLookupError:
            loop.call_soon(self._exited, m, handle, _reap(handle.pid))
            return
        except (AttributeError, OSError):  # no pidfd here (kernel < 5.3): poll instead
            self._spawn(self._poll_exit(m, handle))
            return

        def ready() -> None:
            loop.remove_reader(fd)
            os.close(fd)
            self._exited(m, handle, _reap(handle.pid))

        loop.add_reader(fd, ready)

    async def _poll_exit(self, m: Managed, handle: Handle) -> None:
        while same_process(handle):
            code = _reap(handle.pid, block=False)
            if code is not None:
                self._exited(m, handle, code)
                return
            await asyncio.sleep(0.2)
        self._exited(m, handle, _reap(handle.pid))

    def _exited(self, m: Managed, handle: Handle, code: Optional[int]) -> None:
        if m.handle is not handle:
            return  # a stale watcher of an earlier program of this unit
        m.gone.set()
        if m.state == protocol.STOPPING:
            m.exit_status = code
            return  # _stop reports the outcome
        self.state.delete_record(m.name)
        config = m.spec["config"]
        commands = config.get("commands", [])
        ignore = bool(commands and commands[m.command_index].get("ignore_failure"))
        ok = code is not None and (code == 0 or ignore or is_success(code, config))
        if ok and m.command_index + 1 < len(commands):
            m.command_index += 1  # oneshot: run the next ExecStart= in order
            self._start(m)
            return
        m.command_index = 0
        m.exit_status = code
        if code is None:
            m.state = protocol.FAILED
            m.error = "exited while not a child of this agent (status unknown)"
        elif ok:
            m.state = protocol.EXITED
        else:
            m.state = protocol.FAILED
            m.error = exit_description(code)
        log.info("%s: pid %d %s", m.name, handle.pid, m.error or "exited 0")
        self._report(m)
        self._spawn(self.converge(m.name))

    # --- recovery -----------------------------------------------------------------------
    def recover(self) -> None:
        """Rebuild the picture after an agent (re)start: adopt what still runs."""
        self.desired = {s["name"]: s for s in self.state.load_desired()}
        records = self.state.load_records()
        for name, record in records.items():
            spec = record.get("spec")
            if not isinstance(spec, dict):
                continue
            m = Managed(spec)
            m.restarts = int(record.get("restarts", 0))
            driver = self.drivers.get(spec.get("driver", ""))
            same_boot = record.get("boot_id") == self.boot_id
            handle = driver.recover(record["handle"]) if driver and same_boot else None
            if handle is not None:
                m.handle, m.state = handle, protocol.RUNNING
                m.gone.clear()
                self._watch(m, handle)
                log.info("%s: re-adopted pid %d", name, handle.pid)
            elif same_boot and name in self.desired:
                m.state = protocol.FAILED
                m.error = "exited while the agent was not running (status unknown)"
                self.state.delete_record(name)
            else:
                self.state.delete_record(name)
                continue  # from an earlier boot: start afresh below
            self.units[name] = m
        for name in set(self.desired) | set(self.units):
            self._spawn(self.converge(name))


def is_success(code: int, config: Dict[str, Any]) -> bool:
    """SuccessExitStatus=: listed exit codes, and deaths by listed signals, are clean."""
    listed = config.get("success_exit_status") or {}
    if code >= 0:
        return code in listed.get("codes", [])
    return -code in listed.get("signals", [])


def _reap(pid: int, block: bool = True) -> Optional[int]:
    """The exit code of our child ``pid``; None if it is not our child."""
    try:
        wpid, status = os.waitpid(pid, 0 if block else os.WNOHANG)
    except ChildProcessError:
        return None
    if wpid == 0:
        return None
    return wait_status_to_code(status)


async def _wait(event: asyncio.Event, timeout: Optional[float]) -> bool:
    try:
        await asyncio.wait_for(event.wait(), timeout)
        return True
    except asyncio.TimeoutError:
        return False

