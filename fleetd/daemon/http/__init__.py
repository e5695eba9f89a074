"""fleetd's HTTP API (aiohttp): what fleetctl speaks, and nothing else does.

Thin routes over the service layer (``fleetd.daemon.service``): a route reads its
request (``request.py``), calls one service, and answers JSON. Every refusal is an
exception, answered in one place (``errors.py``). ``server.py`` wires routes and
middlewares into an application; only the composition root (``daemon/app.py``) and
tests import it. Arrows run one way: routes -> service -> registry/engine/sessions.
"""
