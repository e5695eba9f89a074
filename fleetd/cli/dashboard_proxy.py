"""``fleetctl dashboard``'s local port: a proxy on 127.0.0.1 to fleetd's API, for a
browser, which cannot reach a Unix socket.

On the socket every request is root's (the socket's mode is the check), and a TCP
endpoint gets fleetctl's own token added: whoever reaches the proxy acts as fleetctl
does. So the port is no open door: its URL carries a random key (``KEY_PARAM``), which
the first visit turns into a cookie of the proxy's own (``KEY_COOKIE``: HttpOnly,
SameSite=Strict) and leaves out of the address bar; a request without the key or its
cookie is refused (403), as is a write without the dashboard's header or an
Authorization header (another site's form could send the cookie, not those). The key's
cookie never reaches fleetd; fleetd's own cookie (a TCP endpoint's login) passes both
ways. Answers stream (a unit's log with ``follow=1``, the events' long poll).
"""

from __future__ import annotations

import hmac
import ssl
from typing import Mapping, Optional

import aiohttp
from aiohttp import web

from fleetd.daemon.dashboard.cookie import HEADER
from fleetd.endpoints import Endpoint

KEY_PARAM, KEY_COOKIE = "key", "fleetctl_dashboard_key"
HOP = frozenset(("connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                 "te", "trailer", "transfer-encoding", "upgrade", "host", "content-length",
                 "content-encoding"))
READS = ("GET", "HEAD")


def with_key(request_key: Optional[str], cookie_key: Optional[str], key: str) -> bool:
    """Does the request carry the proxy's key, in its URL or its cookie? (constant time)"""
    return any(given is not None and hmac.compare_digest(given.encode(), key.encode())
               for given in (request_key, cookie_key))


def forwarded(headers: Mapping[str, str], cookies: Mapping[str, str], token: Optional[str]
              ) -> dict[str, str]:
    """The headers fleetd is sent: the browser's, less hop-by-hop ones and the proxy's
    cookie, with fleetctl's token where the browser sent none of its own (neither a
    header nor fleetd's cookie)."""
    out = {k: v for k, v in headers.items() if k.lower() not in HOP | {"cookie"}}
    kept = [f"{k}={v}" for k, v in cookies.items() if k != KEY_COOKIE]
    if kept:
        out["Cookie"] = "; ".join(kept)
    if token and "authorization" not in {k.lower() for k in out} and not kept:
        out["Authorization"] = f"Bearer {token}"
    return out


class Proxy:
    """The proxy's handler: ``endpoint`` is fleetd's (a Unix socket, or TCP with
    ``tls``), ``token`` fleetctl's (None: the browser logs in itself)."""

    def __init__(self, endpoint: Endpoint, token: Optional[str],
                 tls: Optional[ssl.SSLContext], key: str) -> None:
        self.endpoint, self.token, self.tls, self.key = endpoint, token, tls, key
        self.session: Optional[aiohttp.ClientSession] = None

    def _base(self) -> str:
        if self.endpoint.path is not None:
            return "http://fleetd"
        host = f"[{self.endpoint.host}]" if ":" in self.endpoint.host else self.endpoint.host
        return f"{'https' if self.endpoint.tls else 'http'}://{host}:{self.endpoint.port}"

    async def start(self) -> None:
        connector: aiohttp.BaseConnector
        if self.endpoint.path is not None:
            connector = aiohttp.UnixConnector(path=self.endpoint.path)
        else:
            connector = aiohttp.TCPConnector(
                ssl=self.tls if self.endpoint.tls and self.tls is not None else False)
        self.session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10))

    async def close(self) -> None:
        if self.session is not None:
            await self.session.close()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        given = request.query.get(KEY_PARAM)
        if not with_key(given, request.cookies.get(KEY_COOKIE), self.key):
            return web.Response(status=403, text="fleetctl dashboard: open the address it "
                                                 "printed (this one has no key, or not its)\n")
        if given is not None:  # the first visit: the key becomes a cookie, out of the URL
            query = {k: v for k, v in request.query.items() if k != KEY_PARAM}
            response = web.Response(status=302, headers={
                "Location": str(request.rel_url.with_query(query))})
            response.set_cookie(KEY_COOKIE, self.key, httponly=True, samesite="Strict",
                                path="/")
            return response
        if (request.method not in READS and request.headers.get(HEADER) != "1"
                and "Authorization" not in request.headers):
            return web.Response(status=403, text=f"fleetctl dashboard: a write needs the "
                                                 f"{HEADER} header\n")
        return await self._forward(request)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        assert self.session is not None
        body = await request.read() if request.can_read_body else None
        try:
            upstream = await self.session.request(
                request.method, self._base() + str(request.rel_url), data=body,
                headers=forwarded(request.headers, request.cookies, self.token),
                allow_redirects=False)
        except (aiohttp.ClientError, OSError) as exc:
            return web.Response(status=502, text=f"fleetctl dashboard: fleetd at "
                                                 f"{self.endpoint.text}: {exc}\n")
        async with upstream:
            response = web.StreamResponse(status=upstream.status, reason=upstream.reason)
            for k, v in upstream.headers.items():
                if k.lower() not in HOP:
                    response.headers.add(k, v)
            await response.prepare(request)
            try:
                async for chunk in upstream.content.iter_any():
                    await response.write(chunk)
            except (aiohttp.ClientError, ConnectionResetError):
                pass  # fleetd or the browser went away mid-stream: the stream ends
            await response.write_eof()
            return response
