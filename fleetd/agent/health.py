"""Running one unit's ``[X-Check]`` on its host and turning results into a verdict.

A ``HealthChecker`` lives as long as one run of the unit's program: the supervisor
starts it when the program starts and stops it when the program stops, so a check never
judges a program that is not there (a stopped unit's health is ``unknown``, which the
supervisor sets itself). The checker reports through ``on_verdict(health, detail)`` only
when the verdict changes: ``passing`` after SuccessThreshold= consecutive passes,
``failing`` after FailureThreshold= consecutive failures. What a failing verdict does
(end the run and let Restart= decide, or nothing) is the supervisor's decision; see
``acts_on_failing``.

Start grace follows Docker's start period: checks run from the start at their
interval, failures inside StartGrace= do not count, and the first pass ends the grace
(the program is up; from then on every failure counts). The first check runs between
half an interval and one interval after the start, at random: not at once (a program
just forked is not listening yet), and not in lockstep with the other units started
in the same breath (a desired set of a hundred units, or an agent re-adopting them),
which would otherwise spawn a hundred exec checks at the same instant every interval,
for ever (Consul staggers its first checks for the same reason).

Cost matters more than features here: a host runs a hundred checked programs on an
old VM, beside the agent. So each checker is one sleeping asyncio task (a timer, no
thread), and a check is one connection or one process. Waking the interpreter costs
more than the check itself (measured: 0.75 ms of CPU per http check when every check
wakes the agent on its own, at 100 units every 10 s), so check times are rounded up to
a 0.25 s grid (never more than a quarter of the interval): checks due close together
share one wake-up, halving that cost, and no check runs more than 0.25 s late.

* http: a raw asyncio connection sending ``GET PATH HTTP/1.0`` with a Host header; the
  status line decides, then the (small) body is drained so that the server does not
  see a reset mid-write and log an error into the unit's own log. No urllib, no thread.
* tcp: connect, close.
* exec: the command in its own session (a timeout kills the whole group), in the
  unit's environment, with the supervisor's ``preexec`` (cgroup, user) if given; exit 0
  passes, and the last line of its output explains a failure.

The checker trusts its config: fleetd/units/xcheck.py validated it at submit time.
Agent side: standard library and psutil only, Python 3.9+.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import random
import signal
import subprocess
from typing import Callable, Dict, List, Optional, Tuple, Union

from fleetd.drivers.base import DriverError
from fleetd.drivers.exec import resolve
from fleetd.wire import execline
from fleetd.wire.unitspec import Check

log = logging.getLogger("fleet-agent")

PASSING = "passing"
FAILING = "failing"
UNKNOWN = "unknown"

MAX_OUTPUT = 4096  # an exec check's output kept for the failure detail (its tail)
MAX_DRAIN = 64 * 1024  # body bytes an http check reads before hanging up anyway
KILL_WAIT_S = 2.0  # after SIGKILL, how long to wait for a check command to be reaped
COALESCE_S = 0.25  # the wake-up grid that checks due close together share
OUTPUT_WAIT_S = 0.1  # after the command exits, how long its output may still trickle in

Verdict = Callable[[str, str], None]


def acts_on_failing(check: Optional[Check]) -> bool:
    """Does a ``failing`` verdict end the program (OnFailure=restart, the default)?

    The supervisor then ends the run as systemd ends one whose watchdog ran out
    (result ``watchdog``), and Restart= judges that like any other end: on-failure,
    on-abnormal, on-watchdog and always restart it; no, on-success and on-abort leave
    the unit failed, for the engine to reschedule elsewhere. OnFailure=none: the
    health is only reported."""
    return check is not None and check.get("on_failure") == "restart"


class HealthChecker:
    """The check loop of one run of one unit's program. Build and ``start`` it inside
    the running event loop; ``stop`` (or ``close``) it when the program stops."""

    def __init__(
        self,
        unit: str,
        check: Check,
        on_verdict: Verdict,
        env: Optional[Dict[str, str]] = None,
        preexec: Optional[Callable[[], None]] = None,
        cwd: Optional[str] = None,
    ) -> None:
        self.unit = unit
        self.check = check
        self.on_verdict = on_verdict
        self.env = env
        self.preexec = preexec
        self.cwd = cwd
        self.health = UNKNOWN
        self.detail = ""
        self.checks = 0  # probes run, for tests and status
        self._passes = 0
        self._failures = 0
        self._grace_until = 0.0
        self._task: Optional[asyncio.Task[None]] = None
        self._stopping = False
        self._argv: Optional[Tuple[str, List[str]]] = None
        self._request: Optional[bytes] = None

    # --- lifecycle ---------------------------------------------------------------------
    def start(self, since_start_s: float = 0.0) -> None:
        """Begin checking. ``since_start_s``: how long the program has already run (a
        re-adopted program's grace is measured from its real start)."""
        if self._task is not None:
            return
        loop = asyncio.get_running_loop()
        grace = float(self.check.get("start_grace_s", 0.0))
        self._grace_until = loop.time() + max(0.0, grace - since_start_s)
        self._task = loop.create_task(self._run())

    def stop(self) -> None:
        """Cancel the loop (a running exec check is killed). No verdict is sent.

        The flag backs up the cancel: on Python < 3.12, asyncio.wait_for swallows a
        cancel that arrives just as the awaited operation completes, and a loop that
        only relied on the cancel would then go on checking a stopped program."""
        self._stopping = True
        if self._task is not None:
            self._task.cancel()

    async def close(self) -> None:
        """``stop`` and wait until the loop and any check command are gone."""
        task = self._task
        self.stop()
        if task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    # --- the loop ----------------------------------------------------------------------
    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = float(self.check.get("interval_s", 10.0))
        grid = min(COALESCE_S, interval / 4)
        next_at = loop.time() + interval * random.uniform(0.5, 1.0)
        while not self._stopping:
            wake = math.ceil(next_at / grid) * grid  # the schedule itself does not drift
            await asyncio.sleep(max(0.0, wake - loop.time()))
            began = loop.time()
            ok, detail = await self.probe()
            if self._stopping:
                return  # stopped while checking: the verdict would judge a stopped program
            self._record(ok, detail, began)
            next_at += interval
            if next_at <= loop.time():  # a slow check or a stalled loop: no catch-up burst
                next_at = loop.time() + interval

    def _record(self, ok: bool, detail: str, began: float) -> None:
        self.checks += 1
        if ok:
            self._passes += 1
            self._failures = 0
            self._grace_until = 0.0  # the program is up: from now on failures count
            if self._passes >= int(self.check.get("success_threshold", 1)):
                self._verdict(PASSING, detail)
            return
        self._passes = 0
        if began < self._grace_until:
            log.debug("%s: check failed in start grace: %s", self.unit, detail)
            return
        self._failures += 1
        if self._failures >= int(self.check.get("failure_threshold", 3)):
            self._verdict(FAILING, detail)

    def _verdict(self, health: str, detail: str) -> None:
        self.detail = detail
        if health == self.health:
            return
        self.health = health
        try:
            self.on_verdict(health, detail)
        except Exception:  # a broken callback must not end the checking
            log.exception("%s: health verdict callback failed", self.unit)

    # --- one check ---------------------------------------------------------------------
    async def probe(self) -> Tuple[bool, str]:
        """Run the check once: (passed, what was seen). Never raises but on cancel."""
        kind = self.check.get("type")
        timeout = float(self.check.get("timeout_s", 2.0))
        try:
            if kind == "http":
                return await self._http(timeout)
            if kind == "tcp":
                return await self._tcp(timeout)
            if kind == "exec":
                return await self._exec(timeout)
            return False, f"unknown check type {kind!r}"
        except asyncio.TimeoutError:
            return False, f"timed out after {timeout:g}s"
        except OSError as exc:  # asyncio's connect errors read "Connect call failed (...)"
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            return False, f"{self._target()}: {why}"

    def _target(self) -> str:
        if self.check.get("type") == "exec":
            words = self.check.get("command", {}).get("words", ["?"])
            return str(words[0])
        host = str(self.check.get("host"))
        return f"[{host}]:{self.check.get('port')}" if ":" in host \
            else f"{host}:{self.check.get('port')}"

    async def _tcp(self, timeout: float) -> Tuple[bool, str]:
        _, writer = await asyncio.wait_for(
            asyncio.open_connection(self.check["host"], self.check["port"]), timeout)
        writer.close()
        return True, f"connected to {self._target()}"

    async def _http(self, timeout: float) -> Tuple[bool, str]:
        """One deadline for the whole exchange (one timer, one task: each wait_for costs
        a task on Python < 3.12, and this runs a hundred times per interval). The status
        line decides; the body is drained in what time is left, and running out of it
        then does not turn a verdict already made into a timeout."""
        if self._request is None:
            self._request = (
                f"GET {self.check.get('path', '/')} HTTP/1.0\r\n"
                f"Host: {self.check.get('host_header', self.check['host'])}\r\n"
                "User-Agent: fleet-agent-check\r\nAccept: */*\r\nConnection: close\r\n\r\n"
            ).encode("ascii", "replace")
        request = self._request
        expect = self.check.get("expect_status") or [[200, 399]]
        seen: List[Tuple[bool, str]] = []

        async def exchange() -> None:
            reader, writer = await asyncio.open_connection(self.check["host"],
                                                           self.check["port"])
            try:
                writer.write(request)
                try:
                    line = await reader.readline()
                except ValueError:  # a first line longer than the stream's limit
                    line = b"?"
                seen.append(_judge_status(line, expect))
                await _drain(reader)
            finally:
                writer.close()

        try:
            await asyncio.wait_for(exchange(), timeout)
        except (asyncio.TimeoutError, OSError):
            if not seen:
                raise
        return seen[0]

    async def _exec(self, timeout: float) -> Tuple[bool, str]:
        found = self._command()
        if isinstance(found, str):
            return False, found
        path, argv = found
        try:
            proc = await asyncio.create_subprocess_exec(
                argv[0], *argv[1:], executable=path, env=self.env, cwd=self.cwd,
                stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT, start_new_session=True,
                preexec_fn=self.preexec, close_fds=True,
            )
        except (ValueError, subprocess.SubprocessError) as exc:  # NUL in argv; preexec
            return False, f"{path}: cannot run: {exc}"
        assert proc.stdout is not None
        output = asyncio.ensure_future(_read_tail(proc.stdout))
        try:
            code = await asyncio.wait_for(proc.wait(), timeout)
        except asyncio.TimeoutError:
            await _kill(proc)
            output.cancel()
            return False, f"{path}: timed out after {timeout:g}s (killed)"
        except asyncio.CancelledError:
            await asyncio.shield(_kill(proc))
            output.cancel()
            raise
        try:
            tail = await asyncio.wait_for(output, OUTPUT_WAIT_S)
        except asyncio.TimeoutError:  # a helper it left behind holds the pipe open
            tail = b""
        last = _last_line(tail)
        if code == 0:
            return True, last or "exit 0"
        what = f"exit {code}" if code > 0 else f"killed by signal {-code}"
        return False, f"{what}: {last}" if last else what

    def _command(self) -> Union[Tuple[str, List[str]], str]:
        """(executable, argv), or why there is none. Expanded against the unit's
        environment once, then kept: the environment does not change within a run."""
        if self._argv is not None:
            return self._argv
        env = self.env if self.env is not None else dict(os.environ)
        try:
            path, argv = execline.argv(self.check["command"], env)
            path = resolve(path, env)  # as the exec driver finds a unit's program
        except execline.CommandLineError as exc:
            return f"Command=: {exc}"
        except DriverError as exc:
            return str(exc)
        self._argv = (path, argv)
        return self._argv


def _judge_status(line: bytes, expect: List[List[int]]) -> Tuple[bool, str]:
    """``HTTP/1.1 200 OK`` against the expected ranges."""
    parts = line.decode("latin-1").split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        shown = line[:60].decode("latin-1").strip() or "nothing"
        return False, f"not an HTTP response (got {shown!r})"
    status = int(parts[1])
    reason = parts[2].strip() if len(parts) > 2 else ""
    seen = f"HTTP {status} {reason}".strip()
    if any(low <= status <= high for low, high in expect):
        return True, seen
    want = " ".join(f"{lo}" if lo == hi else f"{lo}-{hi}" for lo, hi in expect)
    return False, f"{seen} (want {want})"


async def _drain(reader: asyncio.StreamReader) -> None:
    """Read the rest of a response (headers and a small body) so that the server can
    finish writing before we hang up - a reset mid-write would put an error into the
    unit's own log; stop at MAX_DRAIN (the caller's deadline bounds the time)."""
    remaining = MAX_DRAIN
    while remaining > 0:
        chunk = await reader.read(remaining)
        if not chunk:
            return
        remaining -= len(chunk)


async def _read_tail(stream: asyncio.StreamReader) -> bytes:
    tail = b""
    while True:
        chunk = await stream.read(65536)
        if not chunk:
            return tail
        tail = (tail + chunk)[-MAX_OUTPUT:]


def _last_line(data: bytes) -> str:
    for line in reversed(data.decode(errors="replace").splitlines()):
        if line.strip():
            return line.strip()[:200]
    return ""


async def _kill(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the check's whole session (its helpers too) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    except PermissionError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(proc.wait(), KILL_WAIT_S)
