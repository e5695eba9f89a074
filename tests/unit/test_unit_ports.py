"""Where each unit is (issue 18): ``Ports=`` in [X-Fleet], read at submit with errors at
file:line; list-units' rows carry the machine's address and the unit's ports, and
fleetctl's ``address`` field shows ``address:port`` (its ``ports`` field: all of them)."""

from __future__ import annotations

from typing import Any, Dict, List

import pytest

from fleetd.cli import listing
from fleetd.daemon.changes import Changes
from fleetd.daemon.service.placement import Fixed
from fleetd.daemon.service.units import Units
from fleetd.engine.snapshot import Snapshot
from fleetd.registry.base import LAUNCHED, MachineRecord, UnitInput
from fleetd.registry.sqlite import SqliteRegistry
from fleetd.testing.registry import at_once
from fleetd.units.compiled import CompiledUnits, content_key
from fleetd.units.model import content_hash, load
from fleetd.units.parser import UnitError
from fleetd.units.ports import Port
from fleetd.units.validate import validate

HEAD = "[Service]\nExecStart=/bin/sleep 100\n[X-Fleet]\n"


def ports_of(*lines: str) -> List[str]:
    return [str(p) for p in load("web.service", HEAD + "".join(f"{x}\n" for x in lines))
            .requirements.ports]


def test_ports_are_read_in_order_tcp_by_default() -> None:
    assert ports_of("Ports=8080 9090/udp", "Ports=53/tcp") == ["8080/tcp", "9090/udp", "53/tcp"]
    assert ports_of("Ports=1", "Ports=", "Ports=65535") == ["65535/tcp"]  # systemd's reset
    assert ports_of() == []


def test_a_port_may_come_from_the_units_variables_or_instance() -> None:
    text = HEAD + "Ports={{ vars.port }} %i\n"
    unit = validate("web@7000.service", text, {"port": "8080"}, "web@.service")
    assert unit.requirements.ports == (Port(8080), Port(7000))


@pytest.mark.parametrize("value, why", [
    ("0", "'0': the port"), ("65536", "'65536': the port"), ("http", "'http': the port"),
    ("80/sctp", "'80/sctp': the protocol is tcp or udp"), ("80 80/tcp", "80/tcp is listed twice"),
    ("-1", "'-1': the port")])
def test_a_bad_port_is_refused_naming_its_line(value: str, why: str) -> None:
    with pytest.raises(UnitError) as err:
        load("web.service", HEAD + "Global=false\n" + f"Ports={value}\n", source="web.unit")
    assert str(err.value).startswith("web.unit:5: Ports=: "), str(err.value)
    assert why in str(err.value)


def test_a_misspelt_ports_option_is_caught() -> None:
    with pytest.raises(UnitError, match="did you mean Ports="):
        load("web.service", HEAD + "Port=80\n")


WEB = HEAD + "Ports=8080 9090/udp\n"
PLAIN = "[Service]\nExecStart=/bin/sleep 100\n"


def machine(name: str, address: str) -> MachineRecord:
    return MachineRecord(name=name, address=address, port=22, user="root", identity=None,
                         known_hosts=None, agent_command="true", metadata={})


def units_on(tmp_path: Any) -> Units:
    """web.service (Ports=) on h2 and db.service (none) on h6, as a pass placed them."""
    registry = SqliteRegistry(str(tmp_path / "registry.db"))
    at_once(registry.put_units([UnitInput("web.service", WEB, content_hash(WEB)),
                                UnitInput("db.service", PLAIN, content_hash(PLAIN))], LAUNCHED))
    at_once(registry.set_placements([("web.service", "h2", "test"), ("db.service", "h6", "t")]))
    at_once(registry.add_machine(machine("h2", "10.1.0.2")))
    at_once(registry.add_machine(machine("h6", "fd00::6")))
    requirements = {content_key(n, content_hash(t), {}): load(n, t).requirements
                    for n, t in (("web.service", WEB), ("db.service", PLAIN))}
    placement = Snapshot.of({("web.service", "h2"): content_hash(WEB),
                             ("db.service", "h6"): content_hash(PLAIN)}, {}, requirements,
                            frozenset(), 1.0)
    return Units(registry, Fixed(placement), Changes(), lambda: None, {}, CompiledUnits())


def test_list_units_rows_say_where_each_unit_is(tmp_path: Any) -> None:
    rows = {r["unit"]: r for r in units_on(tmp_path).rows()}
    assert (rows["web.service"]["address"], rows["web.service"]["ports"]) == \
        ("10.1.0.2", ["8080/tcp", "9090/udp"])
    assert (rows["db.service"]["address"], rows["db.service"]["ports"]) == ("fd00::6", [])


@pytest.mark.parametrize("row, shown", [
    ({"address": "10.1.0.2", "ports": ["8080/tcp", "9090/udp"]}, "10.1.0.2:8080"),
    ({"address": "10.1.0.2", "ports": ["53/udp"]}, "10.1.0.2:53/udp"),
    ({"address": "fd00::6", "ports": ["80/tcp"]}, "[fd00::6]:80"),
    ({"address": "10.1.0.2", "ports": []}, "10.1.0.2"),
    ({"address": None, "ports": ["80/tcp"]}, None)])
def test_the_address_field_is_address_and_first_port(row: Dict[str, Any], shown: Any) -> None:
    assert listing.UNIT_COLUMNS["address"][1](row, False) == shown


def test_list_units_table_shows_address_and_ports(tmp_path: Any, capsys: Any) -> None:
    listing.show(units_on(tmp_path).rows(), listing.UNIT_COLUMNS, "unit,machine,address,ports",
                 False, False, "table")
    assert [line.split() for line in capsys.readouterr().out.splitlines()] == [
        ["UNIT", "MACHINE", "ADDRESS", "PORTS"], ["db.service", "h6", "fd00::6", "-"],
        ["web.service", "h2", "10.1.0.2:8080", "8080/tcp,9090/udp"]]
