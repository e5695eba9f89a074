"""The API over an in-memory registry (fleetd.testing.registry.MemoryRegistry): the
Daemon takes its registry, so the whole HTTP stack runs without a file, a lease or root.
A refusal from the services or the registry comes back with its status and names what is
wrong, as with SQLite."""

from __future__ import annotations

from pathlib import Path
from typing import List

from apikit import http, post, served

from fleetd.testing.registry import MemoryRegistry

UNIT = "[Service]\nExecStart=/bin/sleep 1000\n"


def test_units_come_and_go_through_the_api_on_a_memory_registry(tmp_path: Path) -> None:
    registry = MemoryRegistry()
    with served(tmp_path, registry=registry) as fleetd:
        sock = fleetd.config.socket
        status, answer = post(sock, "/v1/units", {"units": [{"name": "a.service",
                                                             "text": UNIT}]})
        assert status == 200 and answer["changed"] == ["a.service"]
        assert fleetd.call(_names(registry)) == ["a.service"]  # on the loop's thread
        status, answer = http(sock, "GET", "/v1/units/a.service")
        assert status == 200 and answer["text"] == UNIT and answer["desired"] == "inactive"
        status, answer = post(sock, "/v1/units", {"units": [
            {"name": "a.service", "text": UNIT + "# other\n"}]})
        assert status == 409 and "already exists with different content" in answer["error"]
        status, answer = post(sock, "/v1/units/state", {"names": ["a.service"],
                                                        "desired": "sideways"})
        assert (status, answer["error"]) == (
            400, 'desired: "sideways" is not one of inactive, loaded, launched')
        status, answer = http(sock, "GET", "/v1/units/a.service/wait?until=gone&timeout=0")
        assert status == 200 and answer["timeout"] is True
        assert post(sock, "/v1/units/destroy", {"names": ["a.service"]})[0] == 200
        status, answer = http(sock, "GET", "/v1/units/a.service")
        assert (status, answer["error"]) == (404, "unit a.service does not exist")
        status, answer = post(sock, "/v1/machines/nowhere/drain", {})
        assert (status, answer["error"]) == (404, "machine nowhere does not exist")
    assert not (tmp_path / "state" / "registry.db").exists()


async def _names(registry: MemoryRegistry) -> List[str]:
    return [u.name for u in registry.list_units()]
