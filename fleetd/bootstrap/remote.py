"""One host's shell, as the install and the removal use it: fleetd's scripts run there on
stdin, each step timed and any failure turned into a BootstrapError that names the host
and the step and quotes what the host said.
"""

from __future__ import annotations

import shlex
import time
from typing import Dict, Optional

from fleetd.bootstrap.target import BootstrapError
from fleetd.transport.base import CommandResult, Shell, TransportError

STOP_TIMEOUT_S = 15.0  # a detached agent's SIGTERM, then SIGKILL (scripts/stop_detached.sh)


def sh_command(*args: str) -> str:
    """Run the script on stdin with ``args`` (``sh -s -- ARGS``): the script is then free
    of the command line's quoting, which the user's login shell does."""
    return shlex.join(["sh", "-s", "--", *args])


def py_command(python: str, *args: str) -> str:
    """Run the Python script on stdin, isolated (``-I``, as the agent runs), with ``args``."""
    return shlex.join([python, "-I", "-", *args])


class Host:
    """The shell of one host with this install's messages and timings."""

    def __init__(self, shell: Shell, where: str) -> None:
        self.shell = shell
        self.where = where
        self.steps: Dict[str, float] = {}

    async def run(self, step: str, what: str, command: str, *, input: Optional[str] = None,
                  timeout: float = 60.0, check: bool = True) -> CommandResult:
        began = time.monotonic()
        try:
            result = await self.shell.run(command, input=input, timeout=timeout)
        except TransportError as exc:
            raise BootstrapError(f"{self.where}: {what}: {exc}") from None
        finally:
            self.steps[step] = self.steps.get(step, 0.0) + time.monotonic() - began
        if check and not result.ok:
            said = (result.stderr.strip() or result.stdout.strip())[-800:]
            raise BootstrapError(f"{self.where}: {what} failed (exit {result.exit_status})"
                                 + (f": {said}" if said else ""))
        return result

    async def sh(self, step: str, what: str, script: str, *args: str,
                 timeout: float = 60.0, check: bool = True) -> CommandResult:
        return await self.run(step, what, sh_command(*args), input=script, timeout=timeout,
                              check=check)

    async def py(self, step: str, what: str, python: str, script: str, *args: str,
                 timeout: float = 60.0) -> CommandResult:
        return await self.run(step, what, py_command(python, *args), input=script,
                              timeout=timeout)
