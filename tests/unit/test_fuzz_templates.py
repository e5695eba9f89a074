"""Fuzzing unit templates (issue 10): random combinations of loops, macros, filters,
arithmetic and string operations, rendered by ``render.probe`` and ``for_machine``,
end in a result or a UnitError, never another exception, and each within its budget.

The time budget is cut to 0.2 s here so the whole run stays within a few seconds."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetd.units import budget, render
from fleetd.units.parser import UnitError

MACHINE = render.MachineContext("h1", "10.0.0.1", "abc", {"role": "web\nx"}, {"cpus": 4})

NUMBERS = st.sampled_from(["0", "1", "-1", "7", "10", "100", "9999", "10**10", "2**64",
                           "1.5", "1e308", "(10**9)"])
STRINGS = st.sampled_from(["'a'", "''", "'x\\n'", "'%s%d'", "'{}{0}{:>9}'", "'\\t'",
                           "'abc' * 1000", "vars.v", "vars.nope", "machine.metadata.role",
                           "unit.name", "'%099999999d'", "'{:099999}'"])
NAMES = st.sampled_from(["i", "x", "s", "ns.v", "loop.index"])
FILTERS = st.sampled_from([
    "upper", "length", "list", "string", "join", "join(s)", "center(9999999)", "indent(4)",
    "indent(s)", "wordwrap(3)", "truncate(5)", "batch(3)", "batch(999999, 0)", "slice(3)",
    "replace('a', s)", "format(1, 2)", "sum", "sum(start=[])", "tojson", "tojson(9)",
    "first", "last", "reverse", "sort", "unique", "int", "float", "abs", "round(2)",
    "default('d')", "map('upper')", "select", "dictsort", "items", "urlize", "escape",
    "wordcount", "trim", "title", "pprint", "xmlattr", "random", "min", "max", "count",
])
METHODS = st.sampled_from(["center(99)", "ljust(10**7)", "zfill(5)", "replace('a', 'bb')",
                           "split()", "format(1, 2, 3)", "join(['a', 'b'])", "upper()",
                           "expandtabs(10**8)", "count('a')", "startswith('a')",
                           "translate({97: 'xyz'})", "format_map({})"])
OPERATORS = st.sampled_from(["+", "-", "*", "/", "//", "%", "**", "~", "==", "<", "in",
                             "and", "or"])


def expressions() -> st.SearchStrategy[str]:
    leaves = st.one_of(NUMBERS, STRINGS, NAMES, st.just("range(10)"), st.just("[1, 'a']"),
                       st.just("{'a': 1}"), st.just("m(1)"), st.just("caller"))
    return st.recursive(leaves, lambda inner: st.one_of(
        st.builds(lambda a, op, b: f"({a} {op} {b})", inner, OPERATORS, inner),
        st.builds(lambda a, f: f"({a})|{f}", inner, FILTERS),
        st.builds(lambda a, m: f"({a}).{m}", inner, METHODS),
        st.builds(lambda a, b: f"[{a}, {b}]", inner, inner),
        st.builds(lambda a, b, c: f"({a} if {b} else {c})", inner, inner, inner),
        st.builds(lambda a: f"range({a})", inner),
    ), max_leaves=6)


def statements() -> st.SearchStrategy[str]:
    expr = expressions()
    leaves = st.one_of(
        st.builds(lambda e: "{{ " + e + " }}", expr),
        st.builds(lambda e: "{% set s = " + e + " %}", expr),
        st.builds(lambda e: "{% set ns.v = " + e + " %}", expr),
        st.sampled_from(["text\n", "[Service]\n", "ExecStart=/bin/x\n", "{{ m(2) }}"]),
    )
    return st.recursive(leaves, lambda inner: st.one_of(
        st.builds(lambda e, b: "{% for i in " + e + " %}" + b + "{% endfor %}", expr, inner),
        st.builds(lambda e, b: "{% if " + e + " %}" + b + "{% else %}x{% endif %}", expr,
                  inner),
        st.builds(lambda b: "{% macro m(x) %}" + b + "{{ m(x) }}{% endmacro %}", inner),
        st.builds(lambda e, b: "{% filter replace('x', " + e + ") %}" + b + "{% endfilter %}",
                  expr, inner),
        st.builds(lambda a, b: a + b, inner, inner),
    ), max_leaves=6)


TEMPLATES = statements().map(
    lambda body: "{% set ns = namespace(v=1) %}{% macro m(x) %}{{ x }}{% endmacro %}" + body)


@pytest.fixture(autouse=True)
def short_budget(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(budget, "MAX_SECONDS", 0.2)


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(TEMPLATES, st.booleans())
def test_a_template_renders_or_is_a_unit_error(text: str, on_machine: bool) -> None:
    try:
        if on_machine:
            out = render.for_machine(text, "a.service", "a", None, {"v": "1"}, MACHINE)
        else:
            out = render.probe(text, "a.service", "a", None, {"v": "1"}, "a.service")
    except UnitError as exc:
        assert str(exc).startswith("a.service")
        assert "template" in exc.message
    else:
        assert len(out) <= budget.MAX_VALUE
