"""The SSH transport: one asyncssh connection per machine, strict host-key checking.

The host key must be in the machine's known_hosts file (``--known-hosts``, default
``~/.ssh/known_hosts``); a key that is missing or different stops the connection during
key exchange, before authentication, so nothing runs on a host that is not the one the
user registered. The error names the address, the key offered and the file checked.

fleetd reads the known_hosts file and the identity itself, before it connects, and says
which file is wrong and how without quoting it: fleetd may run as root and the file may
be one the caller could not read (asyncssh's own errors quote the line it choked on).

The session's long-lived channel (``open``) goes through sshd's stream-local forwarding
straight to the agent's socket where sshd allows it, starting the agent first with one
short command when its socket does not answer; elsewhere it runs the agent command as a
relay (fleetd.transport.forward says how and why). Besides that channel, it is the ``Shell`` that
fleetd.bootstrap installs the agent through: ``run`` a command to its end, ``put`` a
file over SFTP, on the same connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from typing import Dict, Optional

import asyncssh

from fleetd import protocol
from fleetd.registry.base import MachineRecord
from fleetd.transport import forward
from fleetd.transport.base import Channel, CommandResult, TransportError

log = logging.getLogger("fleetd.transport")

CONNECT_TIMEOUT_S = 5.0
KEEPALIVE_S = 5.0
# The session channel's receive window. asyncssh stops reading at a full window and
# then hands readline() what it has, so a line longer than the window came back torn
# (the default 2 MiB: "agent spoke nonsense"). With room for two whole lines of the
# protocol's limit, every line the agent may send is read whole.
WINDOW = 2 * protocol.MAX_LINE
KNOWN_HOSTS_MAX = 4 << 20  # bytes; far more than any real known_hosts file
IDENTITY_MAX = 64 << 10  # bytes; an RSA-16384 private key is under 13 KiB
# attach --start-only waits up to 10 s for the agent's socket; Python in a slow guest
# (software-emulated VMs) takes seconds more only to start
START_TIMEOUT_S = 40.0


class SshChannel:
    def __init__(self, process: asyncssh.SSHClientProcess[bytes]) -> None:
        self._process = process

    async def readline(self) -> bytes:
        """One line; ProtocolError for one over protocol.MAX_LINE (asyncssh hands back
        the first window's worth of such a line, which would read as garbage)."""
        try:
            line = await self._process.stdout.readline()
        except (asyncssh.Error, ConnectionError, asyncio.IncompleteReadError):
            return b""
        if len(line) > protocol.MAX_LINE:
            raise protocol.ProtocolError(
                f"a line over {protocol.MAX_LINE} bytes (the protocol's limit)")
        return line

    def write(self, data: bytes) -> None:
        self._process.stdin.write(data)

    async def drain(self) -> None:
        await self._process.stdin.drain()

    def close(self) -> None:
        self._process.close()

    async def stderr_tail(self) -> str:
        try:
            data = await asyncio.wait_for(self._process.stderr.read(), 1.0)
        except (asyncio.TimeoutError, asyncssh.Error, ConnectionError):
            return ""
        return data.decode(errors="replace").strip()[-2000:]


def _read_bounded(path: str, limit: int, what: str) -> bytes:
    """The file's bytes, or an error that names the file and says why not (never what
    is in it): ``what`` is the error's kind."""
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError as exc:
        raise TransportError(what, f"cannot read {path}: {exc.strerror or exc}") from None
    if len(data) > limit:
        raise TransportError(what, f"{path} is larger than {limit >> 10} KiB")
    return data


def _bad_known_hosts_line(data: bytes) -> int:
    """The number of the first line asyncssh refuses (1 when it is not text at all)."""
    for number, raw in enumerate(data.splitlines(), 1):
        try:
            asyncssh.import_known_hosts(raw.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            return number
    return 1


def load_known_hosts(path: str) -> asyncssh.SSHKnownHosts:
    """The known_hosts file at ``path``; TransportError("hostkey") names the file and
    the first line that is not ``HOST KEYTYPE KEY``, without quoting it."""
    data = _read_bounded(path, KNOWN_HOSTS_MAX, "hostkey")
    try:
        return asyncssh.import_known_hosts(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise TransportError(
            "hostkey", f"{path} is not a known_hosts file: line "
                       f"{_bad_known_hosts_line(data)} is not HOST KEYTYPE KEY") from None


def load_identity(path: str) -> asyncssh.SSHKey:
    """The private key at ``path``; TransportError("auth") names the file, without
    quoting it (asyncssh's message may)."""
    data = _read_bounded(path, IDENTITY_MAX, "auth")
    try:
        return asyncssh.import_private_key(data)
    except (asyncssh.KeyImportError, ValueError):
        raise TransportError(
            "auth", f"{path} is not an SSH private key fleetd can use (OpenSSH, PEM or "
                    "PKCS#8, without a passphrase)") from None


class SshTransport:
    def __init__(
        self,
        address: str,
        port: int = 22,
        user: str = "root",
        identity: Optional[str] = None,
        known_hosts: Optional[str] = None,
        machine: Optional[str] = None,
    ) -> None:
        self.machine = machine  # its name, for messages
        self.link: Optional[str] = None  # how the last ``open`` reached the agent
        self._refuses: Optional[asyncssh.SSHClientConnection] = None  # sshd said no on it
        self._sockets: Dict[str, str] = {}  # agent command -> the socket its host printed
        self.address = address
        self.port = port
        self.user = user
        self.identity = identity
        self.known_hosts = known_hosts or os.path.expanduser("~/.ssh/known_hosts")
        self._conn: Optional[asyncssh.SSHClientConnection] = None

    @property
    def where(self) -> str:
        return f"{self.user}@{self.address}:{self.port}"

    async def _connect(self) -> asyncssh.SSHClientConnection:
        if not os.path.exists(self.known_hosts):
            raise TransportError(
                "hostkey", f"{self.where}: known_hosts file {self.known_hosts} does not exist; "
                           "host keys are always checked")
        try:
            known_hosts = load_known_hosts(self.known_hosts)
            keys = [load_identity(self.identity)] if self.identity else None
        except TransportError as exc:
            raise TransportError(exc.kind, f"{self.where}: {exc}") from None
        try:
            return await asyncio.wait_for(
                asyncssh.connect(
                    self.address, port=self.port, username=self.user,
                    known_hosts=known_hosts, client_keys=keys,
                    agent_path=None, agent_forwarding=False, x11_forwarding=False,
                    keepalive_interval=KEEPALIVE_S, keepalive_count_max=3,
                    config=[],
                ),
                CONNECT_TIMEOUT_S,
            )
        except asyncssh.HostKeyNotVerifiable as exc:
            raise TransportError("hostkey", await self._host_key_message(str(exc))) from None
        except asyncssh.PermissionDenied as exc:
            raise TransportError(
                "auth", f"{self.where}: authentication failed ({exc.reason}); "
                        f"key {self.identity or 'default ~/.ssh/id_*'}") from None
        except asyncio.TimeoutError:
            raise TransportError(
                "unreachable", f"{self.where}: no SSH answer within {CONNECT_TIMEOUT_S:.0f}s"
            ) from None
        except (OSError, asyncssh.Error) as exc:
            raise TransportError("unreachable", f"{self.where}: {exc}") from None

    async def _host_key_message(self, detail: str) -> str:
        """Name the key the host offered, so the user can compare it with the real one."""
        offered = ""
        try:
            key = await asyncio.wait_for(
                asyncssh.get_server_host_key(self.address, self.port), CONNECT_TIMEOUT_S
            )
            if key is not None:
                offered = f" it offered {key.get_algorithm()} {key.get_fingerprint()};"
        except (OSError, asyncssh.Error, asyncio.TimeoutError):
            pass
        return (f"host key mismatch for {self.address}:{self.port}:{offered} that key is not "
                f"trusted by {self.known_hosts} ({detail}); nothing was run there")

    async def _connection(self) -> asyncssh.SSHClientConnection:
        if self._conn is None or self._conn.is_closed():
            self._conn = await self._connect()
        return self._conn

    def _lost(self, exc: BaseException) -> TransportError:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        return TransportError("unreachable", f"{self.where}: {exc}")

    def _linked(self, link: str) -> None:
        if link != self.link:
            log.info("%s: the agent's link: %s", self.where, link)
        self.link = link

    async def open(self, command: str) -> Channel:
        """The agent's socket through sshd's forwarding where it can (the agent started
        first if the socket does not answer), else ``command`` run as a relay."""
        conn = await self._connection()
        attach = forward.parse(command)
        if attach is None:
            return await self._relay(conn, command, forward.RELAY_COMMAND)
        if self._refuses is conn:
            return await self._relay(conn, command, forward.RELAY_REFUSED)
        path = self._sockets.get(command, attach.socket)
        if path is not None:
            channel = await self._forward(conn, path)
            if channel is not None:
                return channel
        started = await self.run(attach.start_command, timeout=START_TIMEOUT_S)
        if not started.ok:  # an agent older than --start-only; or its relay says why
            why = (started.stderr.strip().splitlines() or [f"exit {started.exit_status}"])[-1]
            return await self._relay(conn, command,
                                     f"relay ({forward.START_ONLY} failed: {why[:200]})")
        path = forward.printed_socket(started.stdout) or path
        if path is not None:  # where the host says it is (an environment sshd sets)
            self._sockets[command] = path
        channel = await self._forward(conn, path) if path is not None else None
        if channel is not None:
            return channel
        # the socket answered on the host a moment ago: it is sshd that says no
        self._refuses = conn
        return await self._relay(conn, command, forward.RELAY_REFUSED)

    async def _forward(self, conn: asyncssh.SSHClientConnection, path: str
                       ) -> Optional[Channel]:
        """A channel to the socket at ``path`` through sshd; None if it did not open
        (no agent listens, or sshd refuses: OpenSSH answers both alike)."""
        try:
            reader, writer = await conn.open_unix_connection(path, window=WINDOW)
        except asyncssh.ChannelOpenError:
            return None
        except (OSError, asyncssh.Error) as exc:
            raise self._lost(exc) from None
        self._linked(forward.FORWARDED)
        return forward.ForwardedChannel(reader, writer, path)

    async def _relay(self, conn: asyncssh.SSHClientConnection, command: str, link: str
                     ) -> Channel:
        try:
            process = await conn.create_process(command, encoding=None, window=WINDOW)
        except (OSError, asyncssh.Error) as exc:
            raise self._lost(exc) from None
        self._linked(link)
        return SshChannel(process)

    async def run(self, command: str, *, input: Optional[str] = None,
                  timeout: float = 60.0) -> CommandResult:
        conn = await self._connection()
        process: Optional[asyncssh.SSHClientProcess[str]] = None
        try:
            process = await conn.create_process(command, encoding="utf-8", errors="replace")
            if input:
                process.stdin.write(input)
            process.stdin.write_eof()  # no input is an empty stdin, never an open one
            done = await asyncio.wait_for(process.wait(check=False), timeout)
        except asyncio.TimeoutError:
            if process is not None:
                process.close()
            raise TransportError(
                "command", f"{self.where}: {command.split()[0]!r} did not end within "
                           f"{timeout:g}s") from None
        except (OSError, asyncssh.Error) as exc:
            raise self._lost(exc) from None
        status = done.exit_status if done.exit_status is not None else -1
        return CommandResult(status, str(done.stdout or ""), str(done.stderr or ""))

    async def put(self, path: str, data: bytes, mode: int = 0o644) -> None:
        conn = await self._connection()
        try:
            sftp = await conn.start_sftp_client()
        except (asyncssh.Error, asyncio.IncompleteReadError) as exc:
            if conn.is_closed():
                raise self._lost(exc) from None
            reason = getattr(exc, "reason", "") or str(exc)
            raise TransportError(
                "sftp", f"{self.where}: the host's SFTP server did not start ({reason}): its "
                        "sshd must offer the sftp subsystem (Subsystem sftp in sshd_config)"
            ) from None
        except OSError as exc:
            raise self._lost(exc) from None
        try:
            async with sftp.open(path, "wb") as f:
                await f.write(data)
            await sftp.chmod(path, mode)
        except asyncssh.SFTPError as exc:
            raise TransportError("sftp", f"{self.where}: writing {path} over SFTP: "
                                         f"{exc.reason}") from None
        except (OSError, asyncssh.Error) as exc:
            raise self._lost(exc) from None
        finally:
            sftp.exit()

    async def close(self) -> None:
        self.link = None
        if self._conn is not None:
            self._conn.abort()  # now: a graceful close waits on a peer that may be gone
            with contextlib.suppress(asyncio.TimeoutError, OSError, asyncssh.Error):
                await asyncio.wait_for(self._conn.wait_closed(), 2.0)
            self._conn = None


def to_machine(machine: MachineRecord) -> SshTransport:
    """SSH to a registered machine, as its record says (address, user, key, known_hosts):
    the session's transport and the bootstrap's shell alike."""
    return SshTransport(machine.address, machine.port, machine.user, machine.identity,
                        machine.known_hosts, machine=machine.name)
