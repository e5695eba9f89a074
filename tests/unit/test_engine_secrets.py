"""What the engine does with SecretEnvironment= (engine/loop.py, units/secrets.py), on
MemoryRegistry and MemorySecrets: a secret's value goes into the desired set of the
machine that runs the unit and nowhere else; a missing secret leaves the unit waiting
with a reason naming it; a new version rolls the unit (a new hash, expected and pushed)."""

from __future__ import annotations

import json

from test_engine_loop import SERVICE, Fleet

from fleetd.testing.secrets import MemorySecrets

USER = SERVICE + "SecretEnvironment=DB_PASSWORD=db_pw\n"
VALUE = "hunter2-secret"


def fleet_with_secrets() -> tuple[Fleet, MemorySecrets]:
    fleet = Fleet()
    secrets = MemorySecrets()
    fleet.engine.secrets = secrets
    return fleet, secrets


def spec_of(fleet: Fleet, name: str) -> dict:  # type: ignore[type-arg]
    machine = fleet.where(name)
    return next(s for s in fleet.pushed[machine] if s["name"] == name)


def test_the_value_goes_only_to_the_machine_that_runs_the_unit() -> None:
    fleet, secrets = fleet_with_secrets()
    secrets.set("db_pw", VALUE)
    fleet.store("a.service", USER)
    fleet.store("b.service", SERVICE)
    fleet.run()
    here = fleet.where("a.service")
    spec = spec_of(fleet, "a.service")
    assert spec["secrets"] == {"DB_PASSWORD": VALUE}
    assert spec["config"]["secret_environment"] == {"DB_PASSWORD": "db_pw"}
    assert fleet.engine.snapshot().hashes[("a.service", here)] == spec["hash"]
    for machine, specs in fleet.pushed.items():
        others = [s for s in specs if s["name"] != "a.service"]
        assert VALUE not in json.dumps(others), machine
    assert "secrets" not in spec_of(fleet, "b.service")
    u = fleet.registry.get_unit("a.service")
    assert u is not None and VALUE not in repr(u) and spec["hash"] != u.hash


def test_a_missing_secret_leaves_the_unit_waiting_with_a_reason() -> None:
    fleet, secrets = fleet_with_secrets()
    fleet.store("a.service", USER)
    fleet.run()
    u = fleet.registry.get_unit("a.service")
    assert u is not None and u.machine is not None
    assert "secret db_pw is not set (fleetctl secret set db_pw)" in u.reason
    assert all(s["name"] != "a.service" for s in fleet.pushed[u.machine])
    secrets.set("db_pw", VALUE)
    fleet.run()
    assert spec_of(fleet, "a.service")["secrets"] == {"DB_PASSWORD": VALUE}


def test_a_new_version_rolls_the_unit() -> None:
    fleet, secrets = fleet_with_secrets()
    secrets.set("db_pw", VALUE)
    fleet.store("a.service", USER)
    fleet.run()
    before = spec_of(fleet, "a.service")
    secrets.set("db_pw", "new-value")
    fleet.run()
    after = spec_of(fleet, "a.service")
    assert after["secrets"] == {"DB_PASSWORD": "new-value"}
    assert after["hash"] != before["hash"]  # new content to the agent: it restarts it
    assert fleet.engine.snapshot().hashes[("a.service", fleet.where("a.service"))] == \
        after["hash"]
    secrets.set("other", "x")  # a secret the unit does not read changes nothing
    fleet.run()
    assert spec_of(fleet, "a.service")["hash"] == after["hash"]


def test_an_engine_without_secrets_says_so() -> None:
    fleet = Fleet()
    fleet.store("a.service", USER)
    fleet.run()
    u = fleet.registry.get_unit("a.service")
    assert u is not None and "this fleetd keeps no secrets" in u.reason
