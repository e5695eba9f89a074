"""``POST /v1/machines/{name}/metadata`` on a real fleetd API (apikit: a real Daemon on
SQLite, no hosts): a machine's metadata changes at runtime, shows in the machine list,
survives a restart of fleetd, is audited, and bad input is a 400 naming the key or
value. The units it moves are the engine's (test_engine_rematch.py, and on the lab
tests/integration/test_set_metadata.py)."""

from __future__ import annotations

from typing import Any, Dict

import pytest
from apikit import http, post, served
from click.testing import CliRunner
from registrykit import machine

from fleetd.cli.main import cli
from fleetd.daemon.service.errors import Invalid
from fleetd.daemon.service.metadata import changed, check


def machines(sock: str) -> Dict[str, Dict[str, str]]:
    status, answer = http(sock, "GET", "/v1/machines")
    assert status == 200, answer
    return {m["name"]: m["metadata"] for m in answer["machines"]}


def test_set_and_unset_change_the_stored_metadata_which_a_restart_keeps(tmp_path: Any) -> None:
    with served(tmp_path) as fleetd:
        sock = fleetd.config.socket
        fleetd.call(fleetd.daemon.registry.add_machine(machine("m1")))  # rack=r1
        status, answer = post(sock, "/v1/machines/m1/metadata",
                              {"set": {"disk": "ssd", "rack": "r2"}})
        assert status == 200, answer
        assert answer == {"machine": "m1", "metadata": {"rack": "r2", "disk": "ssd"},
                          "previous": {"rack": "r1"}}
        assert machines(sock) == {"m1": {"rack": "r2", "disk": "ssd"}}
        status, answer = post(sock, "/v1/machines/m1/metadata", {"unset": ["rack", "nope"]})
        assert status == 200 and answer["metadata"] == {"disk": "ssd"}, answer
        status, audit = http(sock, "GET", "/v1/audit")
        writes = [(r["route"], r["target"], r["status"]) for r in audit["records"]]
        assert writes[-2:] == [("/v1/machines/{name}/metadata", "m1", 200)] * 2
    with served(tmp_path) as fleetd:  # fleetd again, on the same registry file
        assert machines(fleetd.config.socket) == {"m1": {"disk": "ssd"}}


@pytest.mark.parametrize(("body", "status", "says"), [
    ({"set": {"bad key": "x"}}, 400, 'set: "bad key" is not a metadata key'),
    ({"set": {"rack": "r 2"}}, 400, 'set.rack: "r 2" is not a metadata value'),
    ({"set": {"rack": 2}}, 400, "set.rack: 2 is not a metadata value"),
    ({"set": {"rack": ""}}, 400, "set.rack: an empty value matches no MachineMetadata=; "
                                 "to remove rack, unset it"),
    ({"unset": ["ok", {"x": 1}]}, 400, 'unset: {"x": 1} is not a metadata key'),
    ({"unset": "rack"}, 400, 'unset: want a list of keys, not "rack"'),
    ({"set": ["rack=r2"]}, 400, "set: want an object of key: value"),
    ({"set": {"rack": "r2"}, "unset": ["rack"]}, 400, "unset: rack is both set and unset"),
    ({"metadata": {"rack": "r2"}}, 400, "metadata: unknown field"),
    ({}, 400, "nothing to change"),
])
def test_bad_input_is_refused_naming_the_key_or_value(tmp_path: Any, body: Any, status: int,
                                                      says: str) -> None:
    with served(tmp_path) as fleetd:
        sock = fleetd.config.socket
        fleetd.call(fleetd.daemon.registry.add_machine(machine("m1")))
        got, answer = post(sock, "/v1/machines/m1/metadata", body)
        assert (got, says in answer["error"]) == (status, True), answer
        assert machines(sock) == {"m1": {"rack": "r1"}}  # nothing changed


def test_an_unknown_machine_is_a_404(tmp_path: Any) -> None:
    with served(tmp_path) as fleetd:
        status, answer = post(fleetd.config.socket, "/v1/machines/m9/metadata",
                              {"set": {"a": "b"}})
        assert status == 404 and "machine m9 does not exist" in answer["error"], answer


def test_the_new_mapping_is_the_old_one_less_unset_plus_set() -> None:
    assert changed({"a": "1", "b": "2"}, {"b": "3", "c": "4"}, ["a"]) == {"b": "3", "c": "4"}
    assert changed({}, {}, ["gone"]) == {}
    with pytest.raises(Invalid, match="at most 64 metadata keys"):
        changed({}, {f"k{i}": "v" for i in range(65)}, [])
    assert check(None, ["a"]) == ({}, ["a"])


def test_fleetctl_machine_set_metadata(tmp_path: Any) -> None:
    with served(tmp_path) as fleetd:
        sock = fleetd.config.socket
        env = {"FLEETCTL_ENDPOINT": f"unix://{sock}"}
        fleetd.call(fleetd.daemon.registry.add_machine(machine("m1")))  # rack=r1
        out = CliRunner().invoke(cli, ["machine", "set-metadata", "m1", "disk=ssd", "rack=",
                                       "--unset", "nope"], env=env)
        assert out.exit_code == 0, out.output
        assert out.output == "Machine m1: metadata disk=ssd (was rack=r1)\n"
        assert machines(sock) == {"m1": {"disk": "ssd"}}
        out = CliRunner().invoke(cli, ["machine", "set-metadata", "m1", "disk"], env=env)
        assert out.exit_code == 2 and "'disk' is not KEY=VALUE" in out.output, out.output
        out = CliRunner().invoke(cli, ["machine", "set-metadata", "m1", "disk=a b"], env=env)
        assert out.exit_code == 1 and 'set.disk: "a b" is not a metadata value' in out.output
        out = CliRunner().invoke(cli, ["machine", "set-metadata", "m1"], env=env)
        assert out.exit_code == 2 and "nothing to change" in out.output, out.output
        out = CliRunner().invoke(cli, ["machine", "set-metadata", "--help"], env=env)
        assert "runtime override" in out.output and "--unset KEY" in out.output
