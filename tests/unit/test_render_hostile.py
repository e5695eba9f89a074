"""Hostile templates and variables (issue 10, class 3): a variable is a value, never
unit text, and a render is bounded in steps, time, size and nesting, each refusal a
UnitError that names the unit, the line and what went past its bound."""

from __future__ import annotations

import asyncio
from typing import Any, Dict, List, Optional

import click
import pytest

from fleetd.cli.units import parse_vars
from fleetd.daemon import submit
from fleetd.daemon.http.errors import status_of
from fleetd.daemon.service.errors import Invalid
from fleetd.engine.loop import Engine
from fleetd.registry.base import LAUNCHED, MachineRecord, UnitInput
from fleetd.registry.sqlite import SqliteRegistry
from fleetd.testing.registry import at_once
from fleetd.units import budget, render, values
from fleetd.units.compiled import CompiledUnits
from fleetd.units.model import content_hash
from fleetd.units.parser import UnitError

EVIL = "8080\nExecStartPre=/bin/touch /root/owned"
UNIT = "[Service]\nExecStart=/bin/app --port {{ vars.port }}\n"


def machine(**metadata: str) -> render.MachineContext:
    return render.MachineContext(name="h1", address="10.0.0.1", id="abc", metadata=metadata,
                                 facts={"cpus": 4})


def probe(text: str, variables: Optional[Dict[str, str]] = None) -> str:
    return render.probe(text, "a.service", "a", None, variables or {}, "units/a.service")


def refusal(text: str, variables: Optional[Dict[str, str]] = None) -> UnitError:
    with pytest.raises(UnitError) as err:
        probe(text, variables)
    return err.value


# -- a value is a value --

@pytest.mark.parametrize("value", [EVIL, "a\rb", "a\x0bb", "a\x85b", "a\u2028b", "a\x00b",
                                   "\x1b[31mred"])
def test_a_value_with_a_line_break_or_control_character_is_not_a_value(value: str) -> None:
    assert values.problem(value) is not None
    assert values.problem(value.replace(value.strip("ab8"), "")) is None


def test_a_variable_cannot_add_a_directive_to_the_rendered_unit() -> None:
    err = refusal(UNIT, {"port": EVIL})
    assert err.line == 2
    assert str(err).startswith("units/a.service:2: template: {{ vars.port }} has a line break")


def test_machine_metadata_cannot_add_a_directive_either() -> None:
    text = "[Service]\nExecStart=/bin/app\nEnvironment=ROLE={{ machine.metadata.role }}\n"
    with pytest.raises(UnitError) as err:
        render.for_machine(text, "a.service", "a", None, {}, machine(role=EVIL))
    assert str(err.value).startswith(
        "a.service:3: template for machine h1: {{ machine.metadata.role }} has a line break")
    assert render.for_machine(text, "a.service", "a", None, {}, machine(role="web")) \
        .endswith("ROLE=web\n")


def test_a_filter_block_argument_is_a_value_too() -> None:
    text = "{% filter replace('X', vars.v) %}\nExecStart=/bin/X\n{% endfilter %}"
    assert "{{ vars.v }} has a line break" in str(refusal(text, {"v": EVIL}))


def test_a_macro_writes_lines_of_its_own_text_but_not_values_with_lines() -> None:
    text = ("{% macro env(k, v) %}Environment={{ k }}={{ v }}\n{% endmacro %}"
            "[Service]\n{{ env('A', vars.a) }}{{ env('B', 2) }}")
    assert probe(text, {"a": "1"}) == "[Service]\nEnvironment=A=1\nEnvironment=B=2\n"
    assert "{{ v }} has a line break" in str(refusal(text, {"a": EVIL}))


def test_the_api_refuses_such_a_variable_before_anything_renders(tmp_path: Any) -> None:
    registry = SqliteRegistry(str(tmp_path / "r.db"))
    items = [{"name": "a.service", "text": UNIT, "vars": {"port": EVIL}}]
    with pytest.raises(Invalid) as err:
        submit.check(submit.gather(registry, items), CompiledUnits())
    assert status_of(err.value) == 400
    assert str(err.value).startswith("a.service: vars.port has a line break (U+000A)")
    items[0]["vars"] = {"port": True}
    with pytest.raises(Invalid, match=r"vars\.port: want a string or a finite number"):
        submit.gather(registry, items)
    items[0]["vars"] = {"port": 8080}
    assert submit.check(submit.gather(registry, items), CompiledUnits())[0].vars == {"port": "8080"}


def test_fleetctl_refuses_it_with_a_clear_message(tmp_path: Any) -> None:
    with pytest.raises(click.BadParameter, match="port has a line break"):
        parse_vars((f"port={EVIL}",), None)
    vars_file = tmp_path / "vars.toml"
    vars_file.write_text('port = """8080\nExecStartPre=/bin/evil"""\n')
    with pytest.raises(click.BadParameter, match=r"vars\.toml: port has a line break"):
        parse_vars((), str(vars_file))


# -- bounded --

def test_nested_loops_stop_at_the_step_budget_on_their_line() -> None:
    err = refusal("[Service]\n{% for i in range(10000) %}{% for j in range(10000) %}"
                  "{% endfor %}{% endfor %}\n")
    assert err.line == 2
    assert f"more than {budget.MAX_STEPS} loop steps" in err.message


@pytest.mark.parametrize(("text", "fragment"), [
    ("{{ 'a' * 10**10 }}", "'*' would make a value of more than 1 MiB"),
    ("{{ [1] * 10**10 }}", "'*' would make a value of more than 1 MiB"),
    ("{{ 10 ** (10 ** 10) }}", "a number of more than 4096 bits"),
    ("{{ '%0999999999d' % 1 }}", "width or precision of more than"),
    ("{{ '%0999999999d'|format(1) }}", "width or precision of more than"),
    ("{{ '{:0999999999}'.format(1) }}", "width or precision of more than"),
    ("{{ '{0}{0}{0}{0}'.format('x' * 500000) }}", ".format() would make a value"),
    ("{{ 'x'|center(10**9) }}", "|center would make a value"),
    ("{{ 'x'.ljust(10**9) }}", ".ljust() would make a value"),
    ("{{ (1).to_bytes(10**9, 'big') }}", ".to_bytes() would make a value"),
    ("{% set s = 'x' * 2000 %}{{ s.replace('x', s) }}", ".replace() would make a value"),
    ("{% set s = 'x' * 2000 %}{{ s|replace('x', s) }}", "|replace would make a value"),
    ("{% set s = 'x\\n' * 1000 %}{{ s|indent(s) }}", "|indent would make a value"),
    ("{{ [1]|batch(10**9, 'x')|list }}", "|batch would make a value"),
    ("{% set s = 'x' * 600000 %}{{ [s, s]|join }}", "a value of more than 1 MiB"),
    ("{% set s = 'x' * 600000 %}{{ [s, s] }}", "a value of more than 1 MiB"),
    ("{% set ns = namespace(s='ab') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}"
     "{% endfor %}", "a value of more than 1 MiB"),
    ("{% set s = 'x' * 1000000 %}{% for i in range(100) %}{% set t = s ~ i %}{% endfor %}",
     "built more than 32 MiB"),
    ("{% macro m() %}{% for i in range(90000) %}" + "y" * 1000 + "{% endfor %}{% endmacro %}"
     "{{ m()|length }}", "built more than 32 MiB"),
    ("{% for i in range(2000) %}" + "y" * 1000 + "{% endfor %}",
     "the rendered unit would pass 1 MiB"),
])
def test_nothing_too_big_is_ever_built(text: str, fragment: str) -> None:
    err = refusal(text)
    assert err.line == 1
    assert fragment in err.message


@pytest.mark.parametrize("text", [
    "{% macro m() %}{{ m() }}{% endmacro %}{{ m() }}",
    "{% for x in [1] recursive %}{{ loop([1]) }}{% endfor %}",
])
def test_a_template_that_calls_itself_is_a_unit_error(text: str) -> None:
    assert "nested more than" in refusal(text).message


def test_deeply_nested_expressions_are_a_syntax_error_not_a_crash() -> None:
    assert "nested too deep" in refusal("{{ " + "(" * 300 + "1" + ")" * 300 + " }}").message
    assert "nested too deep" in refusal("{% if 1 %}" * 300 + "{% endif %}" * 300).message


def test_a_slow_template_stops_at_the_time_budget() -> None:
    text = ("{% set s = 'x' * 1000000 %}\n{% for i in range(99000) %}"
            "{% if s.count('ab') %}{% endif %}{% endfor %}")
    err = refusal(text)
    assert err.line == 2
    assert f"took longer than {budget.MAX_SECONDS:g} s" in err.message


def test_a_failed_render_is_remembered_not_repeated(monkeypatch: pytest.MonkeyPatch) -> None:
    text = "{{ 'a' * 10**10 }} remembered"
    first = refusal(text)
    renders = []
    monkeypatch.setattr(render, "_render", lambda *args: renders.append(args))
    assert str(refusal(text)) == str(first)
    assert renders == []


def test_ordinary_templates_still_render() -> None:
    text = ("[Service]\n{% for p in range(3) %}ExecStartPre=/bin/echo {{ p * 2 }} "
            "{{ '%03d'|format(p) }} {{ 'x'.center(5) }} {{ ['a', 'b']|join(',') }}\n"
            "{% endfor %}ExecStart=/bin/app {{ vars.port|int + 1 }} {{ 'a' ~ 'b' }}\n")
    assert probe(text, {"port": "8080"}).splitlines() == [
        "[Service]", "ExecStartPre=/bin/echo 0 000   x   a,b",
        "ExecStartPre=/bin/echo 2 001   x   a,b", "ExecStartPre=/bin/echo 4 002   x   a,b",
        "ExecStart=/bin/app 8081 ab"]


# -- the engine --

async def _engine_pass(engine: Engine) -> None:
    await engine.reconcile_once()  # in a loop: a pass may arm the engine's timer


def test_the_engine_refuses_metadata_with_a_line_and_tries_it_once(
        tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = SqliteRegistry(str(tmp_path / "registry.db"))
    at_once(registry.add_machine(MachineRecord(name="h1", address="10.0.0.1", port=22, user="root",
                                       identity=None, known_hosts=None,
                                       agent_command="fleet-agent", metadata={"role": EVIL})))
    at_once(registry.update_machine("h1", state="up", facts={"cpus": 4, "memory_bytes": 1 << 33}))
    pushed: Dict[str, Any] = {}
    engine = Engine(registry, lambda m, specs: pushed.__setitem__(m, specs), lambda: None)
    text = "[Service]\nExecStart=/bin/sleep 1000\nEnvironment=ROLE={{ machine.metadata.role }}\n"
    at_once(registry.put_units([UnitInput("a.service", text, content_hash(text))], LAUNCHED))
    rendered: List[str] = []
    real = render._render

    def counted(*args: Any) -> str:
        rendered.append(args[3])
        return real(*args)

    monkeypatch.setattr(render, "_render", counted)
    for _ in range(3):
        asyncio.run(_engine_pass(engine))
    unit = registry.get_unit("a.service")
    assert unit is not None and unit.reason.startswith(
        "cannot render for h1: a.service:3: template for machine h1: "
        "{{ machine.metadata.role }} has a line break")
    assert pushed["h1"] == []
    assert rendered.count(" for machine h1") == 1


def test_a_render_stopped_by_the_clock_is_tried_again(monkeypatch: pytest.MonkeyPatch) -> None:
    """The time bound depends on how busy the machine was: a template it stopped once
    (under load) renders when resubmitted, unlike one refused by a step or size bound."""
    text = "{% for i in range(3) %}{{ i }}{% endfor %} clocked"
    monkeypatch.setattr(budget, "MAX_SECONDS", -1.0)  # every render is past its deadline
    assert "took longer than" in refusal(text).message
    monkeypatch.setattr(budget, "MAX_SECONDS", 2.0)
    assert probe(text, {}) == "012 clocked"
