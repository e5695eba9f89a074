"""How fleetd reaches a host: open a command's stdin/stdout as a byte channel.

Small on purpose (pyinfra's connector interface is the model): the session needs only
"run this command and give me its pipes", and an error that says what went wrong in
words a user can act on. ``ssh`` is the real one.

Installing the agent (fleetd.bootstrap) needs two things more, kept apart in ``Shell``
so that the session's ``Transport`` stays as small as it is: run a command to its end
and collect its exit status and output, and write a file over SFTP.
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Protocol


class TransportError(Exception):
    """The host could not be reached; ``kind`` sorts causes the user fixes differently."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind  # "hostkey", "auth", "unreachable", "command", "sftp"
        super().__init__(message)


class Channel(Protocol):
    async def readline(self) -> bytes:
        """One line including its newline; b"" once the command's output ended."""

    def write(self, data: bytes) -> None: ...

    async def drain(self) -> None: ...

    def close(self) -> None: ...

    async def stderr_tail(self) -> str:
        """What the command wrote to stderr, for error messages once it ended."""


class Transport(Protocol):
    async def open(self, command: str) -> Channel:
        """Start ``command`` on the host; raise TransportError if the host is unreachable."""

    async def close(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class CommandResult:
    """A command that ran to its end: exit status (-1 if killed by a signal), output."""

    exit_status: int
    stdout: str
    stderr: str

    @property
    def ok(self) -> bool:
        return self.exit_status == 0


class Shell(Protocol):
    """Run commands to their end and write files on one host (fleetd.bootstrap)."""

    @property
    def where(self) -> str:
        """USER@HOST:PORT, for messages."""

    async def run(self, command: str, *, input: Optional[str] = None,
                  timeout: float = 60.0) -> CommandResult:
        """Run ``command`` (with ``input`` on its stdin) and wait for it to end; a
        command that fails still returns (see ``exit_status``). Raise TransportError if
        the host is unreachable, or ``kind="command"`` past ``timeout``."""

    async def put(self, path: str, data: bytes, mode: int = 0o644) -> None:
        """Write ``data`` to the file ``path`` on the host over SFTP (created or
        truncated, then given ``mode``); TransportError ``kind="sftp"`` if that fails."""

    async def close(self) -> None: ...
