"""fleetd's real API in the test's process: a real Daemon (real engine) served by aiohttp
on a real Unix socket (and TCP if asked), in an event loop on a thread of its own, so
that tests speak raw HTTP to it from the main thread. The Daemon is given its registry
(SQLite in the test's temporary directory, or any other: ``served(registry=...)``) and
a lease that guards nothing: no state directory of fleetd's, no root. Machines never
connect: their transport says the host is unreachable, and installing an agent
(``machine add`` without ``--agent-command``) is not tried over SSH."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import threading
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
from aiohttp import web

from fleetd.bootstrap import machines as bootstrap
from fleetd.daemon.app import Daemon
from fleetd.daemon.config import Config
from fleetd.daemon.listeners import serve
from fleetd.engine.leader import Timing
from fleetd.registry.base import MachineRecord, Registry
from fleetd.registry.sqlite import SqliteRegistry
from fleetd.testing.leader import Held
from fleetd.testing.transport import Unreachable
from fleetd.transport.base import TransportError


async def no_ssh(machine: MachineRecord, *args: Any, **kwargs: Any) -> Any:
    raise TransportError("unreachable", f"{machine.address}: a test host, never there")


class Served:
    """A Daemon and its API on a loop thread; ``call`` runs a coroutine there."""

    def __init__(self, config: Config, registry: Optional[Registry] = None) -> None:
        self.config = config
        self.registry = registry
        self.patches = pytest.MonkeyPatch()
        self.patches.setattr(bootstrap, "install_on", no_ssh)
        self.patches.setattr(bootstrap, "uninstall_from", no_ssh)
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.daemon: Daemon = self.call(self._start())
        self.tcp_port: Optional[int] = None

    def call(self, coro: Any, timeout: float = 30.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def _start(self) -> Daemon:
        registry = self.registry or SqliteRegistry(
            os.path.join(self.config.state_dir, "registry.db"))
        d = Daemon(self.config, registry, Held(), transport_factory=Unreachable,
                   timing=Timing(patient=False))
        self.runner: web.AppRunner = await serve(d.api(), self.config)
        self.engine = asyncio.ensure_future(d.engine.run())
        self.leading = asyncio.ensure_future(d.leadership.run())
        while d.epoch is None:  # the lock is held at once: the first term begins
            await asyncio.sleep(0.001)
        return d

    async def _stop(self) -> None:
        await self.runner.cleanup()
        self.engine.cancel()
        self.leading.cancel()
        await asyncio.gather(*(s.stop() for s in self.daemon.sessions.values()),
                             return_exceptions=True)
        await self.daemon.registry.close()

    def close(self) -> None:
        self.call(self._stop())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
        self.patches.undo()


@contextlib.contextmanager
def served(tmp_path: Any, registry: Optional[Registry] = None, **config: Any
           ) -> Iterator[Served]:
    s = Served(Config(state_dir=str(tmp_path / "state"), socket=str(tmp_path / "api.sock"),
                      **config), registry)
    try:
        yield s
    finally:
        s.close()


def connect(where: Any, timeout: float = 10.0) -> socket.socket:
    """A socket to the API: ``where`` is a Unix socket path or a (host, port)."""
    if isinstance(where, tuple):
        return socket.create_connection(where, timeout=timeout)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    sock.connect(str(where))
    return sock


def exchange(where: Any, request: bytes, timeout: float = 10.0) -> Tuple[int, bytes]:
    """Send raw request bytes (``Connection: close`` in them), read the whole answer."""
    with connect(where, timeout) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def http(where: Any, method: str, path: str, body: Optional[bytes] = None,
         headers: Optional[Dict[str, bytes]] = None, timeout: float = 10.0
         ) -> Tuple[int, Any]:
    """One request with any bytes in path, headers and body; (status, the answer's JSON,
    or its raw bytes if it is not JSON)."""
    lines: List[bytes] = [f"{method} ".encode() + path.encode("utf-8", "surrogateescape")
                          + b" HTTP/1.1", b"Host: fleetd", b"Connection: close"]
    for key, value in (headers or {}).items():
        lines.append(key.encode() + b": " + value)
    if body is not None:
        lines.append(b"Content-Type: application/json")
        lines.append(b"Content-Length: %d" % len(body))
    status, raw = exchange(where, b"\r\n".join(lines) + b"\r\n\r\n" + (body or b""), timeout)
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, raw


def post(where: Any, path: str, data: Any, **kw: Any) -> Tuple[int, Any]:
    return http(where, "POST", path, json.dumps(data).encode(), **kw)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def role_tokens(sock: str) -> Dict[str, bytes]:
    """A token of each role (``read-bot``, ``operate-bot``, ``admin-bot``), made by root
    on the Unix socket ``sock``: role -> its Authorization header."""
    made = {}
    for role in ("read", "operate", "admin"):
        status, answer = post(sock, "/v1/tokens", {"name": f"{role}-bot", "role": role})
        assert status == 201, answer
        made[role] = f"Bearer {answer['token']}".encode()
    return made


def as_holder(s: Served, header: bytes, method: str, path: str, body: Any = None
              ) -> Tuple[int, Any]:
    """One request over ``s``'s TCP listener with the Authorization ``header``."""
    data = json.dumps(body).encode() if body is not None else None
    return http(s.config.listen_host_port, method, path, data,
                headers={"Authorization": header})
