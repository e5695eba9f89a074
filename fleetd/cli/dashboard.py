"""``fleetctl dashboard``: fleetd's web dashboard in a browser, through a local port.

fleetd serves the dashboard on its API listener (``/ui/``); a TCP listener needs no
help (open ``https://HOST:PORT/ui/`` and log in with a token). The Unix socket, which a
browser cannot open, is reached through this command: it listens on 127.0.0.1 (``--port``,
or one the system picks), prints the address with its key, and passes requests on to
fleetd until stopped (Ctrl-C). dashboard_proxy.py says why the key and what passes.
"""

from __future__ import annotations

import asyncio
import secrets
import signal
import sys
from typing import TYPE_CHECKING, Optional

import click

from fleetd.cli.context import Ctx, pass_ctx

if TYPE_CHECKING:
    import ssl

    from fleetd.client import Client
    from fleetd.endpoints import Endpoint


@click.command("dashboard")
@click.option("--port", type=click.IntRange(0, 65535), default=0, show_default=True,
              help="Local port on 127.0.0.1 (0: any free one).")
@pass_ctx
def dashboard(ctx: Ctx, port: int) -> None:
    """Open fleetd's web dashboard through a local port (127.0.0.1) and print its
    address."""
    client = ctx.client
    endpoint = _pick(client)
    tls = client.tls.context() if endpoint.tls else None
    asyncio.run(_serve(endpoint, tls, client.token, port))


def _pick(client: Client) -> Endpoint:
    """The endpoint the proxy passes to: the leading fleetd's among those given (only it
    has the events the live view follows), else the first that answers. A ClickException
    naming them all when none answers: a printed address that could only answer 502
    would help no one."""
    from fleetd.client import ApiError, Client

    answering = []
    for e in client.endpoints:
        try:
            health = Client(e.text, client.token, client.tls).get("/v1/health", timeout=5)
        except ApiError:
            continue
        if health.get("leader"):
            return e
        answering.append(e)
    if not answering:
        raise click.ClickException("fleetctl dashboard: no fleetd answers at "
                                   + ", ".join(e.text for e in client.endpoints))
    return answering[0]


async def _serve(endpoint: Endpoint, tls: Optional[ssl.SSLContext], token: Optional[str],
                 port: int) -> None:
    """Serve until SIGINT or SIGTERM. aiohttp is imported here: other verbs never load it
    (fleetctl's start-up, issue 14)."""
    from aiohttp import web

    from fleetd.cli.dashboard_proxy import KEY_PARAM, Proxy

    key = secrets.token_urlsafe(24)
    proxy = Proxy(endpoint, token, tls, key)
    await proxy.start()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", port)
        try:
            await site.start()
        except OSError as exc:
            raise click.BadParameter(f"127.0.0.1:{port}: {exc.strerror or exc}",
                                     param_hint="'--port'") from None
        bound = runner.addresses[0][1]
        click.echo(f"fleetd's dashboard (through {endpoint.text}): "
                   f"http://127.0.0.1:{bound}/ui/?{KEY_PARAM}={key}")
        sys.stdout.flush()  # a script that reads the address reads it now, not at exit
        click.echo("Ctrl-C ends it.", err=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
        await proxy.close()
