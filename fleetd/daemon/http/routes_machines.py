"""Routes for machines: ``/v1/machines`` and ``/v1/machines/{name}/...``. Each reads its
request and calls ``service.machines``; refusals are answered by errors.py. Work on a
host runs to its end even if the client goes away (``server.to_the_end``)."""

from __future__ import annotations

from aiohttp import web

from fleetd.daemon.http import request as req
from fleetd.daemon.service import machines as service
from fleetd.daemon.service import metadata
from fleetd.daemon.service.errors import Invalid


async def list_machines(request: web.Request) -> web.Response:
    """Every machine. With ``after=VERSION`` (the ``version`` of an earlier answer) it
    answers once something has changed since, or after ``timeout`` seconds: how the CLI
    waits for machines to come up or a drain to end, without polling."""
    after, timeout = None, 0.0
    if "after" in request.query:
        after = req.query_int(request, "after", 0, 0)
        timeout = req.timeout(request)
    return web.json_response(await req.services(request).machines.list(after, timeout))


async def add_machine(request: web.Request) -> web.Response:
    """Register a machine; unless an ``agent_command`` is given, fleetd first installs
    its agent there over SSH."""
    body = await req.body(request)
    address = service.check_address(req.text(body, "address"))
    name = service.check_name(req.text(body, "name") or address)
    port = service.check_port(body.get("port", 22))
    metadata = service.check_metadata(body.get("metadata") or {})
    identity = service.check_file("identity", req.text(body, "identity"))
    known_hosts = service.check_file("known_hosts", req.text(body, "known_hosts"))
    agent_command = req.text(body, "agent_command")
    target = service.check_target(req.text(body, "prefix"), agent_command)
    new = service.NewMachine(
        name=name, address=address, port=port, user=req.text(body, "user") or "root",
        identity=identity, known_hosts=known_hosts, metadata=metadata,
        agent_command=agent_command or None, target=target)
    return web.json_response(await req.services(request).machines.add(new), status=201)


async def remove_machine(request: web.Request) -> web.Response:
    machines = req.services(request).machines
    machine = machines.existing(request.match_info["name"])
    return web.json_response(await machines.remove(machine,
                                                   req.query_flag(request, "purge")))


async def upgrade_machine(request: web.Request) -> web.Response:
    """Install this fleetd's agent on a machine where fleetd installed an older one, in
    place: its units keep running; its session reconnects to the new agent by itself."""
    machines = req.services(request).machines
    machine, found = machines.upgradable(request.match_info["name"])
    body = await req.body(request) if request.can_read_body else {}
    return web.json_response(await machines.upgrade(machine, found, req.flag(body, "force")))


async def drain_machine(request: web.Request) -> web.Response:
    body = await req.body(request)
    return web.json_response(await req.services(request).machines.drain(
        request.match_info["name"], body.get("deadline_s")))


async def undrain_machine(request: web.Request) -> web.Response:
    return web.json_response(await req.services(request).machines.undrain(
        request.match_info["name"]))


async def set_metadata(request: web.Request) -> web.Response:
    """Change a machine's metadata: ``{"set": {KEY: VALUE}, "unset": [KEY]}``
    (service/metadata.py); the units it no longer matches move, each with a hand-off."""
    body = await req.body(request)
    unknown = sorted(set(body) - {"set", "unset"})
    if unknown:
        raise Invalid(unknown[0], "unknown field: want set {key: value} and/or "
                                  "unset [key]")
    set_, unset = metadata.check(body.get("set"), body.get("unset"))
    return web.json_response(await req.services(request).machines.set_metadata(
        request.match_info["name"], set_, unset))
