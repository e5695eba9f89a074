"""The API's layers keep their walls: routes -> service -> registry/engine, one way.

service/ never imports HTTP (aiohttp, fleetd.daemon.http) nor the agent; only the HTTP
wiring (http/server.py) imports the route modules; every domain refusal has a status.
"""

from __future__ import annotations

import ast
import pathlib
from typing import Iterator, Set

from fleetd.daemon.http import errors as http_errors
from fleetd.daemon.service import errors

DAEMON = pathlib.Path(__file__).resolve().parents[2] / "fleetd" / "daemon"


def imports(path: pathlib.Path) -> Set[str]:
    """Every module a file imports, TYPE_CHECKING and function-level ones included."""
    found: Set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def modules() -> Iterator[pathlib.Path]:
    return DAEMON.rglob("*.py")


def test_the_service_layer_knows_no_http_and_no_agent() -> None:
    paths = sorted((DAEMON / "service").glob("*.py"))
    assert len(paths) > 1, "no service modules found"
    for path in paths:
        bad = {m for m in imports(path) if m.split(".")[0] == "aiohttp"
               or m.startswith(("fleetd.daemon.http", "fleetd.agent", "fleetd.daemon.app"))}
        assert bad == set(), f"{path.name} imports {sorted(bad)}"


def test_only_the_http_wiring_imports_the_routes() -> None:
    for path in modules():
        if path.name == "server.py" and path.parent.name == "http":
            continue
        routes = {m for m in imports(path) if ".routes_" in m or m.endswith(".routes")}
        assert routes == set(), f"{path.relative_to(DAEMON)} imports {sorted(routes)}"


def test_nothing_but_the_entry_point_imports_the_composition_root() -> None:
    for path in modules():
        if path.name in ("main.py", "app.py") and path.parent == DAEMON:
            continue
        assert "fleetd.daemon.app" not in imports(path), path.relative_to(DAEMON)


def test_every_domain_refusal_has_a_status() -> None:
    def subclasses(kind: type) -> Iterator[type]:
        for sub in kind.__subclasses__():
            yield sub
            yield from subclasses(sub)

    kinds = list(subclasses(errors.ServiceError))
    assert len(kinds) >= 7  # NotFound, Conflict, Invalid, TooLarge, HostFailed, Agent*
    for kind in kinds:
        exc = kind(None, "x") if issubclass(kind, errors.Invalid) else kind("x")
        status = http_errors.status_of(exc)
        assert 400 <= status < 600 and status != 500, kind.__name__
