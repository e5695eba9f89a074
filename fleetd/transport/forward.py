"""Reaching the agent's socket through sshd, with no relay process on the host.

``fleet-agent attach`` relays the protocol between an SSH channel and the agent's Unix
socket: a second Python process on the host for every session (bench/agent_footprint.py,
100 programs: agent 19.9 MB RSS, with the relay 41.7 MB). OpenSSH's stream-local
forwarding (``direct-streamlocal@openssh.com``, allowed by sshd unless
``AllowStreamLocalForwarding no``) carries the same bytes straight to the socket, so
the host runs the agent and nothing else. The protocol, the
hello and its epoch are the same either way: only the pipe differs.

fleetd knows the socket's path without asking the host: it reads the state directory
off the agent command (``--state-dir``, or ``FLEET_AGENT_STATE_DIR=`` set in it, else the
default) and derives the path as the agent does (fleetd.wire.paths). A command it cannot
read that way (not ``... fleet-agent attach [options]``, or ``python -m fleetd.agent
attach``) is run as given, as a relay: it may be anything the user wrote.

The transport keeps how its last open went (``SshTransport.link``: "forwarded", or
"relay (why)"); ``list-machines`` shows it from the machine's session.
"""

from __future__ import annotations

import asyncio
import dataclasses
import posixpath
import shlex
from typing import Dict, List, Optional

import asyncssh

from fleetd import protocol
from fleetd.wire import paths

FORWARDED = "forwarded"
RELAY_REFUSED = "relay (sshd refuses stream-local forwarding)"
RELAY_COMMAND = "relay (the agent command is not fleet-agent attach)"
START_ONLY = "--start-only"
_OPTIONS = ("--state-dir", "--systemd-service")


@dataclasses.dataclass(frozen=True)
class Attach:
    """An agent command fleetd can reach without its relay."""

    command: str  # as registered
    state_dir: Optional[str]  # None: relative, known only to the host

    @property
    def socket(self) -> Optional[str]:
        return paths.agent_socket(self.state_dir) if self.state_dir else None

    @property
    def start_command(self) -> str:
        """The command that starts the agent unless its socket answers, and prints
        ``socket=PATH`` (``fleet-agent attach --start-only``)."""
        return f"{self.command} {START_ONLY}"


def _runs_attach(head: List[str]) -> bool:
    """``head`` (the words before ``attach``) runs fleet-agent: its launcher, or Python's
    ``-m fleetd.agent`` / ``-m fleetd.agent.main``."""
    if not head:
        return False
    if posixpath.basename(head[-1]) == "fleet-agent":
        return True
    return len(head) >= 3 and head[-2] == "-m" and head[-1] in ("fleetd.agent",
                                                                  "fleetd.agent.main")


def parse(command: str) -> Optional[Attach]:
    """The agent command as fleetd can forward to it, or None: then it is only relayed."""
    try:
        argv = shlex.split(command)
    except ValueError:
        return None
    if "attach" not in argv:
        return None
    at = argv.index("attach")
    head, tail = argv[:at], argv[at + 1:]
    if not _runs_attach(head):
        return None
    env: Dict[str, str] = {}
    for word in head[1:] if head and head[0] == "env" else head:
        name, eq, value = word.partition("=")
        if not eq or not name.isidentifier():
            break  # the first word that is no assignment is the program
        env[name] = value
    options: Dict[str, str] = {}
    i = 0
    while i < len(tail):
        name, eq, value = tail[i].partition("=")
        if name not in _OPTIONS:
            return None  # an option this fleetd does not know: leave it to the relay
        if not eq:
            if i + 1 >= len(tail):
                return None
            i, value = i + 1, tail[i + 1]
        options[name] = value
        i += 1
    state_dir = options.get("--state-dir") or env.get(paths.STATE_DIR_ENV) \
        or paths.DEFAULT_STATE_DIR
    return Attach(command, state_dir if posixpath.isabs(state_dir) else None)


def printed_socket(stdout: str) -> Optional[str]:
    """The ``socket=PATH`` line ``attach --start-only`` printed, if any."""
    for line in stdout.splitlines():
        if line.startswith("socket="):
            return line[len("socket="):].strip() or None
    return None


class ForwardedChannel:
    """The session's channel over a forwarded socket: what the relay's stdin/stdout were,
    with the same line limit (fleetd.transport.ssh.SshChannel)."""

    def __init__(self, reader: asyncssh.SSHReader[bytes],
                 writer: asyncssh.SSHWriter[bytes], path: str) -> None:
        self._reader = reader
        self._writer = writer
        self._path = path

    async def readline(self) -> bytes:
        try:
            line = await self._reader.readline()
        except (asyncssh.Error, ConnectionError, asyncio.IncompleteReadError):
            return b""
        if len(line) > protocol.MAX_LINE:
            raise protocol.ProtocolError(
                f"a line over {protocol.MAX_LINE} bytes (the protocol's limit)")
        return line

    def write(self, data: bytes) -> None:
        self._writer.write(data)

    async def drain(self) -> None:
        await self._writer.drain()

    def close(self) -> None:
        self._writer.close()  # the channel: sshd closes the socket, the agent sees EOF

    async def stderr_tail(self) -> str:
        """A socket has no stderr: where to look instead, for the session's error."""
        log = posixpath.join(posixpath.dirname(self._path), "agent.log")
        return f"the agent closed its socket {self._path} (forwarded by sshd); see {log}"
