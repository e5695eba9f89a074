"""How fleetd reaches a host: open a command's stdin/stdout as a byte channel.

Small on purpose (pyinfra's connector interface is the model): the session needs only
"run this command and give me its pipes", and an error that says what went wrong in
words a user can act on. ``ssh`` is the real one; ``local`` runs the command here.
"""

from __future__ import annotations

from typing import Protocol


class TransportError(Exception):
    """The host could not be reached; ``kind`` sorts causes the user fixes differently."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind = kind  # "hostkey", "auth", "unreachable", "command"
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
