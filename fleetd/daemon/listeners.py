"""Where fleetd's API listens, and how long and how many connections it keeps.

The Unix socket (mode 0600) is root's; the TCP listener is for anyone who can reach the
port, token or not, so it holds at most ``api.max_connections`` connections: one more is
answered 503 at once and closed, and aiohttp never sees it. With ``api.tls_cert`` it
speaks TLS only (daemon/tls.py; a handshake, too, must end within the idle timeout). On both, a
connection that sends no complete request (idle, or headers sent half) is closed after
``api.idle_timeout_s`` (aiohttp's keep-alive timer runs from the connect), a body must
arrive within as long (http/request.py), and a handler whose client went away is
cancelled, so an abandoned long poll or ``journal -f`` ends at once (http/server.py lets
host work finish).
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
from typing import Callable, Optional, Set

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from fleetd.daemon.config import Config
from fleetd.daemon.tls import server_context

REFUSED_LINGER_S = 1.0  # a refused connection is closed this long after its answer


class _Refuse(asyncio.Protocol):
    """A connection over the limit: a 503 that says why, at once. Closed once the
    client's request has come (or REFUSED_LINGER_S later), not at once: a request that
    arrives at a closed socket gets the client a reset, which may lose the answer."""

    def __init__(self, limit: int) -> None:
        body = json.dumps({"error": f"fleetd holds its maximum of {limit} API connections; "
                                    "try again later"}).encode()
        self.answer = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                       b"Connection: close\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self.answer)
        transport.write_eof()
        asyncio.get_running_loop().call_later(REFUSED_LINGER_S, transport.close)

    def data_received(self, data: bytes) -> None:
        self.transport.close()  # the request it came with, read: closing sends no reset


class _Counted(asyncio.Protocol):
    """aiohttp's handler for one connection, counted in ``live`` from its accept until
    its socket is closed."""

    def __init__(self, inner: RequestHandler, live: Set[_Counted]) -> None:
        self.inner, self.live = inner, live
        live.add(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self) -> None:
        self.inner.eof_received()  # None: the transport closes itself

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Optional[BaseException]) -> None:
        self.live.discard(self)
        self.inner.connection_lost(exc)


def bounded(server: web.Server, limit: int) -> Callable[[], asyncio.Protocol]:
    """A protocol factory for ``loop.create_server``: aiohttp's ``server`` handles each
    connection while fewer than ``limit`` are open, and the rest are refused."""
    live: Set[_Counted] = set()

    def factory() -> asyncio.Protocol:
        if len(live) >= limit:
            return _Refuse(limit)
        return _Counted(server(), live)

    return factory


class BoundedTCPSite(web.BaseSite):
    """aiohttp's TCPSite with ``bounded``'s factory in place of the bare server."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, limit: int,
                 tls: Optional[ssl.SSLContext] = None, handshake_s: float = 30.0) -> None:
        super().__init__(runner)
        self._host, self._port, self._limit = host, port, limit
        self._tls, self._handshake_s = tls, handshake_s

    @property
    def name(self) -> str:
        return f"{'https' if self._tls else 'http'}://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            bounded(server, self._limit), self._host, self._port, backlog=self._backlog,
            ssl=self._tls, ssl_handshake_timeout=self._handshake_s if self._tls else None)


async def serve(app: web.Application, config: Config) -> web.AppRunner:
    """Serve ``app`` on ``config``'s Unix socket, and on its TCP address if it has one."""
    runner = web.AppRunner(app, access_log=None, handle_signals=False,
                           keepalive_timeout=config.idle_timeout_s,
                           handler_cancellation=True)
    await runner.setup()
    sock_dir = os.path.dirname(config.socket)
    os.makedirs(sock_dir, mode=0o755, exist_ok=True)
    if os.path.exists(config.socket):
        os.unlink(config.socket)  # the lease says no other fleetd owns it
    old = os.umask(0o177)  # the socket is born 0600: no window for other users
    try:
        # a client's connect to a full Unix-socket backlog fails at once (EAGAIN), not
        # waits: aiohttp's 128 refused a third of 500 concurrent submits
        await web.UnixSite(runner, config.socket, backlog=1024).start()
    finally:
        os.umask(old)
    os.chmod(config.socket, 0o600)
    if config.listen:
        host, port = config.listen_host_port
        tls = None
        if config.tls_cert and config.tls_key:  # config.load checked they load
            tls = server_context(config.tls_cert, config.tls_key, config.client_ca)
        await BoundedTCPSite(runner, host, port, config.max_connections, tls,
                             config.idle_timeout_s).start()
    await asyncio.sleep(0)
    return runner
