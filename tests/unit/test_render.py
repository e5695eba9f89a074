"""Rendering units with Jinja2: what a unit can see, and what it cannot reach."""

from __future__ import annotations

import pytest

from fleetd.units import render
from fleetd.units.parser import UnitError

MACHINE = render.MachineContext(name="h1", address="10.0.0.1", id="abc123",
                                metadata={"role": "web", "dc": "a"},
                                facts={"cpus": 4, "memory_bytes": 1 << 30})


def for_h1(text: str, variables: dict | None = None, name: str = "web@3.service") -> str:
    return render.for_machine(text, name, "web", "3", variables or {}, MACHINE)


@pytest.mark.parametrize(("text", "expected"), [
    ("{{ machine.name }} {{ machine.address }} {{ machine.id }}", "h1 10.0.0.1 abc123"),
    ("{{ machine.metadata.role }}/{{ machine.metadata['dc'] }}", "web/a"),
    ("{{ machine.facts.cpus * 2 }}", "8"),
    ("{{ unit.name }} {{ unit.prefix }} {{ unit.instance }}", "web@3.service web 3"),
    ("{{ vars.port }}", "8080"),
    ("{% if machine.metadata.role == 'web' %}yes{% endif %}", "yes"),
    ("no markup: %i ${X} $$", "no markup: %i ${X} $$"),
])
def test_what_a_unit_can_see(text: str, expected: str) -> None:
    assert for_h1(text, {"port": "8080"}) == expected


@pytest.mark.parametrize(("text", "line", "fragment"), [
    ("[Service]\nExecStart=/bin/x {{ vars.port }}\n", 2,
     "vars.port is not defined (defined: nothing)"),
    ("a\nb\n{{ machine.metadata.rack }}\n", 3,
     "machine.metadata.rack is not defined (defined: dc, role)"),
    ("{{ machine.nmae }}", 1, "machine.nmae is not defined"),
    ("{{ nope }}", 1, "'nope' is undefined"),
    ("x\n{{ unclosed\n", 2, "template syntax"),
])
def test_errors_name_unit_line_and_name(text: str, line: int, fragment: str) -> None:
    with pytest.raises(UnitError) as err:
        for_h1(text)
    assert err.value.line == line
    assert str(err.value).startswith(f"web@3.service:{line}: template")
    assert fragment in str(err.value)
    assert "for machine h1" in str(err.value) or "syntax" in str(err.value)


@pytest.mark.parametrize("attack", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ machine.__class__ }}",
    "{{ vars.__init__.__globals__ }}",
    "{{ unit.items.__self__.__class__ }}",
    "{{ (1).__class__.__base__ }}",
    "{% for c in [].__class__.__base__.__subclasses__() %}{{ c }}{% endfor %}",
    "{{ cycler.__init__.__globals__.os }}",
    "{{ lipsum.__globals__['os'] }}",
])
def test_a_template_cannot_reach_python_internals(attack: str) -> None:
    with pytest.raises(UnitError) as err:
        for_h1(attack)
    assert "template" in str(err.value)


def test_probe_leaves_machine_references_as_placeholders() -> None:
    text = "ExecStart=/bin/app {{ machine.name }} {{ machine.metadata.role }} {{ vars.p }}"
    probed = render.probe(text, "a.service", "a", None, {"p": "1"}, "units/a.service")
    assert probed == "ExecStart=/bin/app @machine.name@ @machine.metadata.role@ 1"


def test_probe_of_an_instance_is_strict_about_variables_but_a_template_is_not() -> None:
    text = "ExecStart=/bin/app {{ vars.port }}"
    with pytest.raises(UnitError, match=r"vars\.port is not defined"):
        render.probe(text, "web@3.service", "web", "3", {}, "web@3.service")
    assert render.probe(text, "web@.service", "web", "", {}, "web@.service") \
        == "ExecStart=/bin/app @vars.port@"
