"""One machine session: fleetd's side of the conversation with one host's agent.

It keeps one SSH connection, runs the agent's ``attach`` command over it, and then:
sends the host's whole desired set whenever the engine changes it, and writes what the
agent reports into the registry. It only holds a set the engine computed while this
connection was up: a set from before a disconnect (or from while the machine was down,
which lacks its Global units) would stop or start units on a picture that is out of
date, so after every (re)connect the session asks the engine for a pass and sends what
that pass computes. When the channel ends or goes silent it reconnects by
itself with backoff; programs on the host are untouched meanwhile, because the agent,
not this session, supervises them.

Its hello carries the daemon's epoch (``epoch``, from the composition root; 0 for one
fleetd on SQLite). An agent that follows a newer epoch refuses it - the hello, or later
a desired set - with an error naming that epoch: the session ends, the machine's error
says "refused by the agent: a newer fleetd (epoch 7) leads this host", and the next try
waits BACKOFF_MAX_S (a deposed fleetd's sessions are stopped by whoever deposed it; until
then they knock slowly).

While connected it also pings the agent every heartbeat (a sibling task of the reader),
so that a cut-off agent can tell: units with FenceAfterSec= are stopped there once
fleetd has been silent that long. An agent reports such a unit ``stopped`` with a
``fenced:`` error, and keeps it stopped until its next desired set; the session sends
the set again on that report (a short cut may leave the connection up, with nothing
new to send).

Every line either way is at most protocol.MAX_LINE. A desired set, a status snapshot or
a journal reply larger than that travels in parts (protocol.chunks) and is taken once
whole; a unit whose spec alone is larger is left out of the set and reported failed
(fleetd.daemon.delivery). Requests and log streams to the agent are fleetd.daemon.asks'.
What the agent
reports is checked (names by the one rule, numbers by fleetd.wire.numbers); a report
that is not one ends the session as nonsense, naming the field, never a bad registry row
(fleetd.daemon.reports reads them).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, AsyncIterator, Callable, Coroutine, Dict, List, Optional, Sequence, Set

from fleetd import protocol
from fleetd.daemon import asks, delivery, reports
from fleetd.engine import events, transitions
from fleetd.registry.base import MachineRecord, ObservedRecord, Registry, RegistryError
from fleetd.transport.base import Channel, Transport, TransportError
from fleetd.wire import messages, names
from fleetd.wire.unitspec import UnitSpec

log = logging.getLogger("fleetd.session")

HELLO_TIMEOUT_S = 15.0
BACKOFF_MIN_S = 0.1
BACKOFF_MAX_S = 5.0
STOP_WAIT_S = 5.0
SILENCE_HEARTBEATS = 3  # this many heartbeats missed: the channel is dead, reconnect


def silence_window(heartbeat_s: float) -> float:
    """How long a session reads nothing before it gives up on the channel. Until then
    the agent still gets pings: in a cut where only the agent's words are lost, the
    agent's silence begins up to this much later than fleetd's."""
    return max(heartbeat_s * SILENCE_HEARTBEATS, 2.0)

TransportFactory = Callable[[MachineRecord], Transport]


class MachineSession:
    def __init__(
        self,
        machine: MachineRecord,
        registry: Registry,
        transport_factory: TransportFactory,
        changed: Callable[[bool], None],
        heartbeat_s: float = 1.0,
        epoch: int = messages.EPOCH,
    ) -> None:
        self.machine = machine
        self.name = machine.name
        self.registry = registry
        self.transport = transport_factory(machine)
        self.changed = changed
        self.heartbeat_s = heartbeat_s
        self.epoch = epoch  # this fleetd's leadership term, said in every hello
        self.retry_in: Optional[float] = None  # the wait before the next connect, if any
        self.last_seen: Optional[float] = machine.last_seen
        self.connected = False
        self._desired: Optional[Sequence[UnitSpec]] = None
        self._sent: Optional[delivery.Fingerprint] = None  # of the set the agent has
        self._channel: Optional[Channel] = None
        self._task: Optional[asyncio.Task[None]] = None
        # units of the set too large to send, as reported here (delivery.refusal)
        self._undeliverable: Dict[str, ObservedRecord] = {}
        # a message that comes in parts (protocol.chunks): the items so far, by kind/id
        self._parts = reports.Parts()
        self.asks = asks.Asks(self.name, lambda: self._channel if self.connected else None,
                              self._parts)
        # (unit, state) -> whether the engine must hear of it (a failure, a hand-off)
        self.report_matters: Callable[[str, str], bool] = lambda unit, state: False
        self._writes: Set[asyncio.Task[None]] = set()  # made from sync code (_write)
        # events (fleetd.engine.events): the machine's state, and each unit's as its
        # reports go (the last report of each, to tell what changed)
        self.publish: events.Publish = events.nowhere
        self._reported: Dict[str, ObservedRecord] = {}

    def _write(self, write: Coroutine[Any, Any, None]) -> None:
        """A registry write from code that cannot wait for it (a push from the engine's
        pass): it goes on alone; a refusal is logged, and the next push makes it again."""
        task = asyncio.ensure_future(write)
        self._writes.add(task)

        def done(t: asyncio.Task[None]) -> None:
            self._writes.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.warning("%s: a report was not recorded: %s", self.name, t.exception())
        task.add_done_callback(done)

    @property
    def link(self) -> Optional[str]:
        """How the transport reached the agent last ("forwarded", "relay (why)"), if it
        says (transport/ssh.py does)."""
        link = getattr(self.transport, "link", None)
        return link if isinstance(link, str) else None

    # --- engine side -------------------------------------------------------------
    def push(self, specs: Sequence[UnitSpec]) -> None:
        """The host's desired set changed (or may have): send it if it differs. A set
        pushed while not connected is dropped (see the module's docstring)."""
        if not self.connected:
            return
        self._desired = specs
        self._send_desired()

    def _send_desired(self) -> None:
        if self._desired is None or self._channel is None:
            return
        fingerprint = delivery.fingerprint(self._desired)
        if fingerprint == self._sent:
            return
        for line in protocol.chunks(messages.DESIRED, "units",
                                    self._deliverable(self._desired)):
            self._channel.write(line)
        self._sent = fingerprint

    def _deliverable(self, specs: Sequence[UnitSpec]) -> List[UnitSpec]:
        """``specs`` that fit in a message; each other one is reported failed here
        (delivery.refusal) and kept over the agent's snapshots."""
        self._undeliverable = {}
        deliverable = []
        for spec in specs:
            refused = delivery.refusal(spec, self.name)
            if refused is None:
                deliverable.append(spec)
            else:
                log.warning("%s: %s: %s", self.name, refused.unit, refused.error)
                self._undeliverable[refused.unit] = refused
                self._write(self.registry.upsert_observed(refused, epoch=self.epoch))
        if self._undeliverable:
            self.changed(False)
        return deliverable

    async def request(self, kind: str, timeout: float = 5.0, **fields: Any
                      ) -> messages.Reply:
        """Ask the agent something (``tail`` of a unit's log, ...) and wait for its reply
        (fleetd.daemon.asks)."""
        return await self.asks.request(kind, timeout, **fields)

    def stream(self, kind: str, stop: str, **fields: Any) -> AsyncIterator[messages.Log]:
        """Messages the agent sends for a standing request (``follow`` a unit's log)
        until the caller stops iterating (fleetd.daemon.asks)."""
        return self.asks.stream(kind, stop, **fields)

    # --- life --------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        """End the session: the channel and connection first, which ends any read in
        flight (a read cancelled inside asyncssh was seen never to finish after a
        partition, and fleetd then never exited), then the task, waited for a while."""
        task = self._task
        if task is not None:
            task.cancel()
        for write in self._writes:
            write.cancel()
        if self._channel is not None:
            self._channel.close()
        await self.transport.close()
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=STOP_WAIT_S)
            if not done:
                log.warning("%s: session task did not end within %.0fs of stop",
                            self.name, STOP_WAIT_S)

    async def _run(self) -> None:
        backoff = BACKOFF_MIN_S
        while True:
            started = time.monotonic()
            refused = False
            try:
                await self._session()
                reason = "connection to the agent closed"
                state = "unreachable"
            except TransportError as exc:
                reason = str(exc)
                state = "error" if exc.kind in ("hostkey", "auth", "command") else "unreachable"
            except protocol.ProtocolError as exc:
                reason, state = f"agent spoke nonsense: {exc}", "error"
            except RegistryError as exc:  # the store refused the agent's reports
                reason, state = f"cannot record what the agent reports: {exc}", "unreachable"
            except reports.Overtaken as exc:  # a newer fleetd leads the host
                reason, state, refused = str(exc), "error", True
                backoff = BACKOFF_MAX_S
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug must not end the session for good
                log.exception("%s: session failed", self.name)
                reason, state = f"internal error: {exc!r}", "error"
            was_up = self.connected
            self.connected = False
            self.asks.fail(reason)
            self._channel = None
            self._sent = None
            self._parts.clear()
            self._desired = None  # computed for a connection that is gone
            self._undeliverable = {}
            log.info("%s: %s", self.name, reason)
            if self.machine.state == "lost":
                state = "lost"  # lost stays lost until its agent is heard again
                lost = (self.machine.error or "lost").split("; last error:")[0]
                reason = f"{lost}; last error: {reason}"
            try:
                await self.registry.update_machine(self.name, state=state, error=reason,
                                                   last_seen=self.last_seen, epoch=self.epoch)
                self._tell(transitions.machine_state(self.name, self.machine.state, state,
                                                     reason))
            except RegistryError as exc:  # the store says no: the next connect says again
                log.warning("%s: cannot record that it is %s: %s", self.name, state, exc)
            if was_up or state != self.machine.state:
                self.changed(True)
            self.machine = self.registry.get_machine(self.name) or self.machine
            if time.monotonic() - started > 10 * BACKOFF_MAX_S and not refused:
                backoff = BACKOFF_MIN_S  # it ran a good while: retry fast
            self.retry_in = backoff
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    async def _session(self) -> None:
        channel = await self.transport.open(self.machine.agent_command)
        self._channel = channel
        try:
            channel.write(protocol.dump(messages.daemon_hello(self.heartbeat_s,
                                                              epoch=self.epoch)))
            first = await asyncio.wait_for(channel.readline(), HELLO_TIMEOUT_S)
            if not first:
                err = await channel.stderr_tail()
                raise TransportError(
                    "command",
                    f"agent command {self.machine.agent_command!r} ended without a word"
                    + (f": {err}" if err else ""),
                )
            hello = protocol.decode(first)
            if hello["type"] == messages.ERROR:  # it refused our hello (a bad heartbeat)
                refusal = reports.overtaken(hello)
                if refusal is not None:
                    raise refusal
                raise protocol.ProtocolError(f"the agent refused: {hello.get('message')}")
            if hello["type"] != messages.HELLO:
                raise protocol.ProtocolError(f"expected hello, got {hello['type']}")
            self.last_seen = time.time()
            facts = hello.get("facts") or {}
            await self.registry.update_machine(
                self.name, state="up", error=None, facts=facts,
                machine_id=hello.get("machine_id"), last_seen=self.last_seen, epoch=self.epoch,
            )
            self._tell(transitions.machine_state(
                self.name, self.machine.state, "up",
                f"agent {hello.get('agent_version')} answered"))
            self.machine = self.registry.get_machine(self.name) or self.machine
            self.connected = True
            log.info("%s: agent %s up (machine id %s)", self.name,
                     hello.get("agent_version"), hello.get("machine_id"))
            self.changed(True)  # the engine's pass places units here and pushes the set
            if self.epoch and "epoch" not in hello:
                log.warning("%s: agent %s is older than epochs: it cannot refuse a deposed "
                            "fleetd", self.name, hello.get("agent_version"))
            fenced = hello.get("fenced") or []
            if fenced:
                log.info("%s: agent fenced %s while cut off", self.name,
                         ", ".join(map(str, fenced)))
            # an agent older than fencing has no "fenced" in its hello, and would answer
            # every ping with an error
            pinger = asyncio.ensure_future(self._ping(channel)) if "fenced" in hello else None
            try:
                await self._read(channel)
            finally:
                if pinger is not None:
                    pinger.cancel()
        finally:
            channel.close()

    async def _read(self, channel: Channel) -> None:
        silence = silence_window(self.heartbeat_s)
        while True:
            try:
                line = await asyncio.wait_for(channel.readline(), silence)
            except asyncio.TimeoutError:
                raise TransportError(
                    "unreachable", f"agent silent for {silence:.0f}s") from None
            if not line:
                return
            await self._handle(protocol.decode(line))

    async def _ping(self, channel: Channel) -> None:
        """fleetd -> agent liveness: ``ping`` every heartbeat until cancelled with the
        session. A channel that fails to take one is left to the reader to notice."""
        seq = 0
        while True:
            await asyncio.sleep(self.heartbeat_s)
            seq += 1
            try:
                channel.write(protocol.dump(messages.ping(seq)))
            except Exception as exc:  # the transport's own errors: the reader ends it
                log.debug("%s: cannot ping: %r", self.name, exc)
                return

    # --- agent side -------------------------------------------------------------------
    def _tell(self, drafts: List[events.Draft]) -> None:
        for draft in drafts:
            self.publish(draft)

    def _observed(self, row: ObservedRecord, at_connect: bool = False) -> None:
        """Publish what a unit's report says happened since its last (transitions);
        ``at_connect``: from the snapshot an agent sends when the session begins."""
        self._tell(transitions.observed(self._reported.get(row.unit), row, at_connect))
        self._reported[row.unit] = row

    async def _handle(self, msg: Dict[str, Any]) -> None:
        self.last_seen = time.time()
        kind = msg["type"]
        if kind == messages.HEARTBEAT:
            return
        if kind == messages.REPLY:
            self.asks.reply(msg)
            return
        if kind == messages.LOG:
            self.asks.log(msg)
            return
        if kind == messages.STATUS:
            units = self._parts.whole({**msg, "units": protocol.spec_list(msg)}, "units")
            if units is None:
                return
            rows = [reports.observed(u, self.name) for u in units]
            reported = {row.unit for row in rows}
            rows += [row for name, row in self._undeliverable.items() if name not in reported]
            await self.registry.replace_observed(self.name, rows, epoch=self.epoch)
            for row in rows:
                self._observed(row, at_connect=True)
            for gone in set(self._reported) - {row.unit for row in rows}:
                del self._reported[gone]
            self.changed(True)  # a whole snapshot (after a connect): the engine looks
            return
        elif kind == messages.UNIT:
            row = reports.observed(msg.get("unit"), self.name)
            await self.registry.upsert_observed(row, epoch=self.epoch)
            self._observed(row)
            if row.state == protocol.STOPPED and (row.error or "").startswith(protocol.FENCED):
                # fenced while cut off, and we hear of it: the cut is over. The agent
                # keeps it stopped until a desired set comes; send ours again.
                log.warning("%s: %s: %s", self.name, row.unit, row.error)
                self._sent = None
                self._send_desired()
            if self.report_matters(row.unit, row.state):
                self.changed(True)
                return
        elif kind == messages.REMOVED:
            name = msg.get("name")
            why = names.problem(name)
            if why is not None:
                raise protocol.ProtocolError(f"removed message: {why}")
            await self.registry.delete_observed(self.name, str(name), epoch=self.epoch)
            self._reported.pop(str(name), None)
            if self.report_matters(str(name), "removed"):
                self.changed(True)  # a hand-off's old copy is gone: the next unit may go
                return
        elif kind == messages.ERROR:
            log.warning("%s: agent says: %s", self.name, msg.get("message"))
            self.asks.agent_error(str(msg.get("message")))
            refusal = reports.overtaken(msg)
            if refusal is not None:
                raise refusal  # our desired set was refused: this fleetd is deposed here
            return
        else:
            log.info("%s: ignoring message %s", self.name, kind)
            return
        self.changed(False)
