"""The detached agent daemon: one per host, behind a Unix socket.

It keeps supervising while nobody talks to it; ``fleet-agent attach`` (run by fleetd
over SSH) connects to the socket and relays fleetd's JSON lines. Several clients may be
attached at once (a fleetd and its replacement during a restart): each gets every
report, and the last desired set received wins.

A flock on ``agent.lock`` makes the agent a singleton per state directory, so two
attaches racing to start it end with one agent.

Epochs (see fleetd.protocol): the agent keeps the highest epoch a fleetd hello has
brought (``epoch`` in its state directory, written durably before the hello is
answered). A fleetd hello with a lower one is refused and its connection closed; a
fleetd client whose epoch another fleetd's hello has since overtaken gets every message
that changes anything (``CHANGES``: a desired set) refused with an error naming both
epochs, nothing of it applied; it may still read (tail, follow) and gets reports. Equal
epochs are the same term (one fleetd on SQLite is always 0: its restart overlaps itself).

Every message from the leading fleetd - a client that said hello as fleetd
(``daemon: "fleetd"``) with the highest epoch - counts as "heard from fleetd" - fleetd
pings every heartbeat, so silence means it is cut off - and feeds fencing (units with
FenceAfterSec= stop after that long without a word; see fleetd.agent.fencing). A deposed
fleetd's pings do not count: the new leader, cut off from this host, declares it lost
after its TTL and starts FenceAfterSec= units elsewhere once that time has passed, so
the agent must stop them on the same clock, however loudly the old leader still talks.
The clock starts when the agent starts: a restarted agent counts from its own start,
the last contact is not persisted. Other clients (tests, tools) do not count, and
neither carry an epoch that counts nor are fenced by one.

What a client sends is checked before it is acted on (fleetd.agent.specs): a line over
protocol.MAX_LINE, or one that is not a message, ends that connection with an error; a
field the agent cannot take (a unit name outside the one rule, a number out of range, a
spec of the wrong shape) is answered with an error naming it, and the connection goes
on. Nothing a client sends ends the agent or another client's connection. Replies that
can be larger than a line (a journal tail, the status snapshot) go in parts.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import signal
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Set, cast

from fleetd import __version__, protocol
from fleetd.agent import facts, host, logfile, secretfiles, specs
from fleetd.agent.state import AgentState
from fleetd.agent.supervisor import Supervisor
from fleetd.cgroups import Backend
from fleetd.drivers.base import Driver
from fleetd.wire import messages

log = logging.getLogger("fleet-agent")

MAX_CLIENT_BUFFER = 64 * 1024 * 1024  # a client this far behind is dropped, not waited for
CHANGES = frozenset({messages.DESIRED})  # what an overtaken fleetd may no longer send


class AlreadyRunning(Exception):
    pass


class Client:
    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        self.ready = False  # after hello: only then does it get reports
        self.fleetd = False  # said hello as fleetd: its epoch counts (and so its contact)
        self.epoch = messages.EPOCH  # what its hello said
        self.follows: Dict[int, asyncio.Task[None]] = {}  # journal -f, by request id
        self.heartbeat: Optional[asyncio.Task[None]] = None
        self.desired_parts: List[Any] = []  # a desired set in several messages, so far

    def send(self, data: bytes) -> None:
        transport = self.writer.transport
        if transport.is_closing():
            return
        if transport.get_write_buffer_size() > MAX_CLIENT_BUFFER:
            log.warning("client is not reading; dropping it")
            transport.abort()
            return
        self.writer.write(data)


def lock(state: AgentState) -> int:
    """Become the one agent of ``state``; the returned fd holds the lock until exit."""
    fd = os.open(state.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise AlreadyRunning(state.root) from None
    with open(state.pid_path, "w") as f:
        f.write(f"{os.getpid()}\n")
    return fd


class AgentDaemon:
    """Construct inside the running event loop (asyncio objects bind to it on 3.9).

    The composition root of the agent: the host's cgroups and drivers are detected here
    (fleetd.agent.host) unless given (tests give NoneBackend and fake drivers)."""

    def __init__(self, state: AgentState, backend: Optional[Backend] = None,
                 drivers: Optional[Mapping[str, Driver]] = None) -> None:
        self.state = state
        self.machine_id = state.machine_id()
        self.epoch = state.load_epoch()  # the highest a fleetd hello has brought
        self.clients: Set[Client] = set()
        backend = backend if backend is not None else host.cgroups(self.machine_id)
        drivers = drivers if drivers is not None else host.drivers(backend)
        self.supervisor = Supervisor(state, self.machine_id, self.broadcast, backend, drivers)
        self._stopped = asyncio.Event()
        # what each message type does; False from a handler ends the connection
        self._handlers: Dict[str, Callable[[Client, Dict[str, Any]], bool]] = {
            messages.HELLO: self._hello, messages.DESIRED: self._desired,
            messages.TAIL: self._tail, messages.FOLLOW: self._follow_request,
            messages.UNFOLLOW: self._unfollow, messages.USAGE: self._usage,
            messages.PING: lambda client, msg: True,  # fleetd is there: counted, no answer
            messages.BYE: lambda client, msg: False,
        }

    def broadcast(self, data: bytes) -> None:
        for client in list(self.clients):
            if client.ready:
                client.send(data)

    async def serve(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.state.socket_path)
        old_umask = os.umask(0o177)
        try:
            server = await asyncio.start_unix_server(
                self._client, path=self.state.socket_path, limit=protocol.MAX_LINE
            )
        finally:
            os.umask(old_umask)
        os.chmod(self.state.socket_path, 0o600)
        self.supervisor.recover()
        rotation = asyncio.ensure_future(
            logfile.rotate_periodically(self.state.logs_dir, also=[self.state.log_path]))
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopped.set)
        log.info("agent %s serving %s (machine %s)", __version__, self.state.socket_path,
                 self.machine_id)
        async with server:
            await self._stopped.wait()
        rotation.cancel()
        self.supervisor.processes.close()  # prepared processes go; programs do not
        # Stopping the agent never stops the programs: they are re-adopted next start.
        log.info("agent stopping; %d programs keep running", len(self.supervisor.units))

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = Client(writer)
        self.clients.add(client)
        try:
            while True:
                try:
                    line = await reader.readline()
                except ValueError:  # asyncio's LimitOverrunError: past protocol.MAX_LINE
                    client.send(protocol.dump(messages.error(
                        f"a line over {protocol.MAX_LINE} bytes (the protocol's limit); "
                        "closing")))
                    break
                if not line:
                    break
                try:
                    msg = protocol.decode(line)
                except protocol.ProtocolError as exc:
                    client.send(protocol.dump(messages.error(str(exc))))
                    break
                if not self._handle(client, msg):
                    break
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            log.info("client gone: %s", exc)
        finally:
            self.clients.discard(client)
            if client.heartbeat:
                client.heartbeat.cancel()
            for task in client.follows.values():
                task.cancel()
            writer.close()

    def _handle(self, client: Client, msg: Dict[str, Any]) -> bool:
        """Act on one message; False ends the connection (a bad hello, a bye). A field
        the agent cannot take is answered with an error naming it: to the request's
        ``id`` where there is one, else as an ``error`` message."""
        kind: str = msg["type"]
        if kind != messages.HELLO and self._leads(client):
            self.supervisor.heard()  # (a hello counts once accepted: _hello)
        handler = self._handlers.get(kind)
        if handler is None:
            client.send(protocol.dump(messages.error(f"unknown message type {kind!r}")))
            return True
        if kind in CHANGES and self._overtaken(client):
            client.desired_parts = []  # a set in parts, begun before: none of it
            log.warning("refused %s from fleetd epoch %d: epoch %d leads", kind,
                        client.epoch, self.epoch)
            client.send(protocol.dump(messages.epoch_refused(client.epoch, self.epoch)))
            return True
        try:
            return handler(client, msg)
        except specs.SpecError as exc:
            ident = msg.get("id")
            if kind in (messages.TAIL, messages.FOLLOW) and specs.is_request_id(ident):
                # echoed as it came (is_request_id: a JSON integer in range)
                client.send(protocol.dump(messages.reply_error(cast(int, ident), str(exc))))
            else:
                client.send(protocol.dump(messages.error(str(exc))))
            return kind != messages.HELLO  # a session that cannot begin ends here

    def _leads(self, client: Client) -> bool:
        """Is ``client`` the leading fleetd (its word counts as fleetd's for fencing)?"""
        return client.fleetd and client.epoch >= self.epoch

    def _overtaken(self, client: Client) -> bool:
        """Has another fleetd said hello with a newer epoch since ``client`` did?"""
        return client.fleetd and client.epoch < self.epoch

    def _hello(self, client: Client, msg: Dict[str, Any]) -> bool:
        interval = specs.heartbeat(msg)
        fleetd = msg.get("daemon") == messages.DAEMON_NAME
        epoch = specs.epoch(msg)
        if fleetd and not self._admit(client, epoch):
            return False
        client.fleetd, client.epoch = fleetd, epoch
        if fleetd:
            self.supervisor.heard()
        client.send(protocol.dump(messages.agent_hello(
            machine_id=self.machine_id, hostname=os.uname().nodename,
            agent_version=__version__,
            facts=facts.gather(self.machine_id, self.supervisor.backend.facts(),
                               systemd="systemd" in self.supervisor.drivers),
            fenced=sorted(self.supervisor.fenced), epoch=self.epoch,
        )))
        for line in protocol.chunks(messages.STATUS, "units", self.supervisor.snapshot()):
            client.send(line)
        client.ready = True
        if client.heartbeat is not None:
            client.heartbeat.cancel()  # hello again: one heartbeat, at the new interval
        client.heartbeat = asyncio.ensure_future(self._heartbeat(client, interval))
        return True

    def _admit(self, client: Client, epoch: int) -> bool:
        """A fleetd's hello with ``epoch``: refused (False) if a newer one has spoken; a
        newer one is written down, durably, before it is answered (a refusal too, if
        it cannot be: the host would forget it at its next start)."""
        if epoch < self.epoch:
            log.warning("refused a hello from fleetd epoch %d: epoch %d leads", epoch,
                        self.epoch)
            client.send(protocol.dump(messages.epoch_refused(epoch, self.epoch)))
            return False
        if epoch > self.epoch:
            try:
                self.state.save_epoch(epoch)
            except OSError as exc:
                client.send(protocol.dump(messages.error(
                    f"cannot record epoch {epoch}: {exc}")))
                return False
            log.info("fleetd epoch %d leads (was %d): an older fleetd changes nothing "
                     "here from now on", epoch, self.epoch)
            self.epoch = epoch
        return True

    def _desired(self, client: Client, msg: Dict[str, Any]) -> bool:
        """A desired set, in one message or several (``more``): taken once whole. Specs
        the agent cannot run are refused, each named in one error message; the rest of
        the set is taken."""
        units = msg.get("units")
        if not isinstance(units, list):
            raise specs.SpecError("desired: units: want a list")
        client.desired_parts.extend(units)
        if protocol.more(msg):
            if len(client.desired_parts) > specs.DESIRED_MAX_UNITS:
                client.desired_parts = []
                raise specs.SpecError(f"desired: more than {specs.DESIRED_MAX_UNITS} units")
            return True
        whole, client.desired_parts = client.desired_parts, []
        good, refused = specs.check_specs(whole)
        # secret values leave the specs before anything keeps or logs them
        self.supervisor.set_desired(secretfiles.take(self.state.root, good))
        if refused:
            log.warning("refused from the desired set: %s", "; ".join(refused))
            client.send(protocol.dump(messages.error(
                "refused from the desired set: " + "; ".join(refused)[:specs.ERROR_MAX])))
        return True

    def _tail(self, client: Client, msg: Dict[str, Any]) -> bool:
        """The last lines of a unit's log, in as many replies as they need (``more``)."""
        ident, unit, lines = specs.log_request(msg)
        try:
            found = logfile.last_lines(self.state.unit_log(unit), lines)
            replies = protocol.chunks(messages.REPLY, "lines", found, id=ident)
        except (OSError, ValueError) as exc:
            client.send(protocol.dump(messages.reply_error(ident, str(exc))))
            return True
        for reply in replies:
            client.send(reply)
        return True

    def _usage(self, client: Client, msg: Dict[str, Any]) -> bool:
        """Each unit's cgroup counters now (fleetd's /metrics, status, list-units): the
        units in this agent's hands whose cgroup the host keeps counters for. A unit
        its service manager runs (Driver=systemd) lives in that manager's cgroup: its
        counters are the manager's, from the runner's last poll (about a second old)."""
        ident = specs.request_id(msg)
        cgroups = self.supervisor.processes.cgroups
        found = {name: cgroups.usage(name) or dict(m.usage)
                 for name, m in sorted(self.supervisor.units.items())}
        client.send(protocol.dump(messages.usage_reply(
            ident, {name: use for name, use in found.items() if use})))
        return True

    def _follow_request(self, client: Client, msg: Dict[str, Any]) -> bool:
        ident, unit, lines = specs.log_request(msg)
        old = client.follows.pop(ident, None)
        if old is not None:
            old.cancel()  # the same id again: one follow per id
        client.follows[ident] = asyncio.ensure_future(
            self._follow(client, ident, self.state.unit_log(unit), lines))
        return True

    def _unfollow(self, client: Client, msg: Dict[str, Any]) -> bool:
        task = client.follows.pop(specs.request_id(msg), None)
        if task is not None:
            task.cancel()
        return True

    async def _follow(self, client: Client, ident: int, path: str, lines: int) -> None:
        """``fleetctl journal -f``: the last lines, then new ones, until unfollowed."""
        follower = logfile.follow(path, lines)
        first = True  # the first batch always goes out, even empty: the caller waits on it
        try:
            async for batch in follower:
                if batch or first:
                    for line in protocol.chunks(messages.LOG, "lines", batch, id=ident):
                        client.send(line)
                first = False
        finally:
            await follower.aclose()
            if client.follows.get(ident) is asyncio.current_task():
                del client.follows[ident]

    async def _heartbeat(self, client: Client, interval: float) -> None:
        seq = 0
        while True:
            await asyncio.sleep(interval)
            seq += 1
            client.send(protocol.dump(messages.heartbeat(seq, time.time())))


def run(state_dir: str) -> int:
    state = AgentState(state_dir)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s fleet-agent[%(process)d] %(message)s"
    )
    try:
        lock_fd = lock(state)
    except AlreadyRunning:
        log.info("an agent already runs for %s", state_dir)
        return 0

    async def main() -> None:
        await AgentDaemon(state).serve()

    try:
        asyncio.run(main())
    finally:
        os.close(lock_fd)
    return 0
