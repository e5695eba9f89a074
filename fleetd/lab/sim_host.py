"""One simulated machine: an SSH server of its own, the real agent, a fake driver.

fleetd reaches it exactly as it reaches a host: TCP to its port on loopback, SSH with
strict host-key checking against the machine's own key (in its own known_hosts file),
public-key authentication, then the agent command it was registered with
(``fleet-agent attach --state-dir DIR``): sshd's stream-local forwarding to the agent's
socket, ``attach --start-only`` to start the agent first, or ``attach`` as a relay. The
SSH server (asyncssh) answers each of these as OpenSSH and the real ``attach`` would,
and nothing else: any other command is refused, naming it.

The agent is the real one (fleetd.agent.daemon.AgentDaemon: its socket, state directory,
epochs, desired sets, heartbeats, reports, fencing), run inside the simulator's process
with no cgroups and one fake driver (fleetd.lab.sim_driver). Started on the first
``attach`` as ``attach`` would start it. Its tasks carry the machine's name (a context
variable read by the simulator's task factory), so ``kill`` ends all of them at once -
the in-process stand-in for the host losing power.

The levers: ``kill`` (server, connections and agent gone; its programs with it),
``cut``/``heal`` and ``slow`` (fleetd.lab.sim_net), ``fail`` (fleetd.lab.sim_driver).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging
import os
import shlex
import socket
from typing import Any, Callable, ClassVar, Coroutine, Dict, Generator, List, Optional, Set

import asyncssh

from fleetd.agent import daemon as agent_daemon
from fleetd.agent.state import AgentState
from fleetd.cgroups.none import NoneBackend
from fleetd.lab import sim_net
from fleetd.lab.sim_driver import SimDriver
from fleetd.wire import paths

log = logging.getLogger("fleetd.sim")

AGENT_START_S = 10.0  # as attach waits for the agent's socket
NOT_HERE = 127  # a command the simulated machine does not have

# the machine whose code made the running task: tasks made under it are the machine's
MACHINE: contextvars.ContextVar[Optional[str]] = contextvars.ContextVar("sim_machine",
                                                                         default=None)
TASKS: Dict[str, Set[asyncio.Task[Any]]] = {}  # machine -> its live tasks


def task_factory(loop: asyncio.AbstractEventLoop,
                 coro: Generator[Any, None, Any] | Coroutine[Any, Any, Any],
                 **kwargs: Any) -> asyncio.Task[Any]:
    """asyncio's own tasks, each remembered under the machine that made it (if any)."""
    task: asyncio.Task[Any] = asyncio.Task(coro, loop=loop, **kwargs)
    owner = MACHINE.get()
    if owner is not None:
        owned = TASKS.setdefault(owner, set())
        owned.add(task)
        task.add_done_callback(owned.discard)
    return task


@dataclasses.dataclass(frozen=True)
class Plan:
    """What the simulator made for one machine before it starts (fleetd.lab.sim)."""

    name: str
    port: int
    dir: str  # the machine's own directory: its host key, known_hosts, agent state

    @property
    def host_key(self) -> str:
        return os.path.join(self.dir, "ssh_host_ed25519_key")

    @property
    def known_hosts(self) -> str:
        return os.path.join(self.dir, "known_hosts")

    @property
    def agent_dir(self) -> str:
        return os.path.join(self.dir, "agent")

    @property
    def agent_command(self) -> str:
        """What fleetd runs there, as for any host whose agent was installed by hand."""
        return f"fleet-agent attach --state-dir {shlex.quote(self.agent_dir)}"

    @property
    def socket(self) -> str:
        return paths.agent_socket(self.agent_dir)


class _Server(asyncssh.SSHServer):
    """sshd's part: forwarding to the agent's socket (and no other path)."""

    def __init__(self, machine: SimMachine) -> None:
        self.machine = machine
        self.conn: Optional[asyncssh.SSHServerConnection] = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        self.machine.conns.add(conn)

    def connection_lost(self, exc: Optional[Exception]) -> None:
        if self.conn is not None:
            self.machine.conns.discard(self.conn)

    def unix_connection_requested(self, dest_path: str) -> bool:
        # True: asyncssh connects to the path itself, as sshd does (refused: no agent)
        return os.path.abspath(dest_path) == self.machine.plan.socket


class SimMachine:
    # called once each agent serves: AgentDaemon.serve takes SIGTERM/SIGINT for itself,
    # and the simulator, not one of its agents, is what those signals should stop
    after_agent_start: ClassVar[Optional[Callable[[], None]]] = None

    def __init__(self, plan: Plan, authorized_keys: str, host: str = "127.0.0.1") -> None:
        self.plan = plan
        self.host = host
        self.port = plan.port  # 0 until it first listens: then the kernel's pick, kept
        self._pending: Set[asyncio.Future[None]] = set()  # SSH servers starting
        self.driver = SimDriver()
        self.wire = sim_net.Wire()
        self.conns: Set[asyncssh.SSHServerConnection] = set()
        self.state = "down"  # up, cut, slow, killed
        self.agent: Optional[agent_daemon.AgentDaemon] = None
        self._agent_task: Optional[asyncio.Task[None]] = None
        self._lock_fd: Optional[int] = None
        self._listener: Optional[asyncio.Server] = None
        self._options = asyncssh.SSHServerConnectionOptions(
            server_host_keys=[plan.host_key],
            authorized_client_keys=asyncssh.import_authorized_keys(authorized_keys),
            server_factory=lambda: _Server(self), process_factory=self._command,
            encoding=None, allow_scp=False, sftp_factory=None, login_timeout=30.0,
        )

    @property
    def name(self) -> str:
        return self.plan.name

    async def start(self) -> None:
        """Listen (again, after ``kill``: on the same port, with a fresh network)."""
        if self._listener is not None:
            return
        self.wire = sim_net.Wire()
        try:
            self._listener = await sim_net.serve(self.host, self.port, self.wire,
                                                 self._ssh)
        except OSError as exc:
            raise OSError(f"{self.name}: cannot listen on {self.host}:{self.port}: "
                          f"{exc.strerror or exc}") from None
        self.port = self._listener.sockets[0].getsockname()[1]
        self.state = "up"

    # --- the SSH server ---------------------------------------------------------------
    def _ssh(self, sock: socket.socket) -> None:
        async def run() -> None:
            try:
                await asyncssh.run_server(sock, options=self._options)
            except (OSError, asyncssh.Error, asyncio.TimeoutError) as exc:
                log.info("%s: an SSH connection ended before it began: %s", self.name, exc)
                sock.close()
        task = asyncio.ensure_future(run())
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _command(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        """An exec channel: the agent command, ``--start-only`` or as the relay."""
        argv = _split(process.command or "")
        start_only = "--start-only" in argv
        if start_only:
            argv.remove("--start-only")
        ours = _split(self.plan.agent_command)
        if argv != ours:
            process.stderr.write(f"{self.name}: a simulated machine runs only its agent "
                                 f"({self.plan.agent_command} [--start-only]), not "
                                 f"{(process.command or '(a shell)')[:200]!r}\n".encode())
            process.exit(NOT_HERE)
            return
        try:
            await self.ensure_agent()
        except OSError as exc:
            process.stderr.write(f"fleet-agent: {exc}\n".encode())
            process.exit(1)
            return
        if start_only:
            process.stdout.write(f"socket={self.plan.socket}\n".encode())
            process.exit(0)
            return
        await self._relay(process)

    async def _relay(self, process: asyncssh.SSHServerProcess[bytes]) -> None:
        """``attach``'s relay: the channel's bytes to the agent's socket and back."""
        reader, writer = await asyncio.open_unix_connection(self.plan.socket)

        async def down() -> None:
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                process.stdout.write(data)

        answers = asyncio.ensure_future(down())
        try:
            while True:
                data = await process.stdin.read(65536)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
            writer.write_eof()
            await answers
        except (OSError, asyncssh.Error):
            pass
        finally:
            answers.cancel()
            writer.close()
            process.exit(0)

    # --- the agent --------------------------------------------------------------------
    async def ensure_agent(self) -> None:
        """Start the agent unless it runs (``attach`` does this on a host)."""
        if self._agent_task is not None and not self._agent_task.done():
            return
        state = AgentState(self.plan.agent_dir)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(state.socket_path)
        if self._lock_fd is None:
            self._lock_fd = agent_daemon.lock(state)
        token = MACHINE.set(self.name)
        try:
            self.agent = agent_daemon.AgentDaemon(
                state, backend=NoneBackend("a simulated machine has no cgroups"),
                drivers={self.driver.name: self.driver})
            self._agent_task = asyncio.ensure_future(self.agent.serve())
        finally:
            MACHINE.reset(token)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + AGENT_START_S
        while not os.path.exists(state.socket_path):
            if self._agent_task.done():
                raise OSError(f"the agent ended at start: {self._agent_task.exception()}")
            if loop.time() > deadline:
                raise OSError(f"the agent did not come up within {AGENT_START_S:.0f}s")
            await asyncio.sleep(0.005)
        await asyncio.sleep(0)  # serve() goes on to its signal handlers: then ours
        if SimMachine.after_agent_start is not None:
            SimMachine.after_agent_start()

    def stop_agent(self) -> None:
        """The agent and everything it runs go at once, mid-flight, as in a crash."""
        for task in list(TASKS.pop(self.name, ())):
            task.cancel()
        self.agent, self._agent_task = None, None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.plan.socket)

    # --- the levers -------------------------------------------------------------------
    def kill(self) -> None:
        """The machine is gone: no listener, no connection, no agent, no programs."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self.wire.close_all()
        for conn in list(self.conns):
            conn.abort()
        self.conns.clear()
        self.stop_agent()
        self.driver = SimDriver()  # what "ran" there died with it
        self.state = "killed"

    def cut(self, cut: bool) -> None:
        self.wire.set_cut(cut)
        self._say()

    def slow(self, delay: float) -> None:
        self.wire.delay = max(0.0, delay)
        self._say()

    def _say(self) -> None:
        if self.state != "killed":
            self.state = "cut" if self.wire.cut else ("slow" if self.wire.delay else "up")

    def fail(self, unit: str, exit_status: int = 1) -> bool:
        return self.driver.fail(unit, exit_status)

    def report(self) -> Dict[str, Any]:
        """This machine as the simulator's control socket shows it."""
        return {"name": self.name, "port": self.port, "state": self.state,
                "delay": self.wire.delay, "agent": self._agent_task is not None,
                "sessions": len(self.conns), "running": self.driver.running(),
                "starts": dict(self.driver.starts), "stops": dict(self.driver.stops)}


def _split(command: str) -> List[str]:
    try:
        return shlex.split(command)
    except ValueError:
        return []
