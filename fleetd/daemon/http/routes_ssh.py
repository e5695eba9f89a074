"""``GET /v1/machines/{name}/ssh``: how fleetd reaches a machine over SSH, for ``fleetctl
ssh`` (issue 14): address, port, user, and the *paths* of the key and the known_hosts
file fleetd uses for it, as its transport resolves them (fleetd.transport.ssh.to_machine:
the same defaults).

Never a key's contents: a path gives nothing to whoever may not read the file, and
whoever may (root, on fleetd's host, where fleetctl usually runs) could read it anyway.
Admin only (roles.py): a shell on every machine is more than ``operate`` may do.
"""

from __future__ import annotations

from aiohttp import web

from fleetd.daemon.http import request as req
from fleetd.transport.ssh import to_machine


async def machine_ssh(request: web.Request) -> web.Response:
    machine = req.services(request).machines.existing(request.match_info["name"])
    transport = to_machine(machine)
    return web.json_response({
        "name": machine.name, "address": transport.address, "port": transport.port,
        "user": transport.user, "identity": transport.identity,
        "known_hosts": transport.known_hosts})


def add_routes(router: web.UrlDispatcher) -> None:
    router.add_get("/v1/machines/{name}/ssh", machine_ssh)
