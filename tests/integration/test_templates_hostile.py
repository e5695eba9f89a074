"""Hostile templates and variables against a real fleetd process (issue 10, class 3):
a ``--var`` is a value, never unit text; a template that loops, grows or recurses
without bound is a 400 naming its line, fast, and never stalls the daemon's other
requests. No machines are needed: all of it happens at submit."""

from __future__ import annotations

import threading
from typing import Any, Dict, List

import pytest
from labkit import Fleet

from fleetd.client import ApiError

EVIL = "8080\nExecStartPre=/bin/touch /tmp/owned-by-a-var"
UNIT = "[Service]\nExecStart=/bin/sleep {{ vars.port }}\n"


def submit(fleet: Fleet, text: str, variables: Dict[str, str]) -> ApiError:
    """Submit ``bad.service`` and return the API's refusal (a 400 is what is wanted)."""
    with pytest.raises(ApiError) as err:
        fleet.api.post("/v1/units", {"units": [{"name": "bad.service", "text": text,
                                                "source": "units/bad.service",
                                                "vars": variables}]}, timeout=60)
    return err.value


def test_a_variable_with_a_line_break_is_refused_by_the_api_and_fleetctl(
        lone_fleet: Fleet, tmp_path: Any) -> None:
    err = submit(lone_fleet, UNIT, {"port": EVIL})
    assert err.status == 400
    assert "bad.service: vars.port has a line break (U+000A)" in str(err)

    unit = tmp_path / "web.service"
    unit.write_text(UNIT)
    out = lone_fleet.ctl("start", "--no-block", str(unit), "--var", f"port={EVIL}", check=False)
    assert out.returncode != 0
    assert "port has a line break" in out.stderr
    assert lone_fleet.unit_files() == []


@pytest.mark.parametrize(("text", "fragment"), [
    ("[Service]\nExecStart=/bin/true\n{% for i in range(10000) %}{% for j in range(10000) %}"
     "{% endfor %}{% endfor %}\n", "3: template: more than 100000 loop steps"),
    ("[Service]\nExecStart=/bin/echo {{ 'a' * 10**10 }}\n",
     "2: template: '*' would make a value of more than 1 MiB"),
    ("[Service]\nExecStart=/bin/echo {{ 10 ** (10 ** 10) }}\n",
     "2: template: '**' would make a number of more than 4096 bits"),
    ("[Service]\n{% macro m() %}{{ m() }}{% endmacro %}\nExecStart=/bin/echo {{ m() }}\n",
     "2: template: calls nested more than 50 deep"),
])
def test_an_unbounded_template_is_a_400_that_names_its_line(
        lone_fleet: Fleet, text: str, fragment: str) -> None:
    err = submit(lone_fleet, text, {})
    assert err.status == 400, err
    assert f"units/bad.service:{fragment}" in str(err)
    assert lone_fleet.unit_files() == []
    assert lone_fleet.api.get("/v1/health")  # and fleetd is still there


def test_a_slow_template_never_stalls_the_other_requests(lone_fleet: Fleet) -> None:
    """The template runs until its time budget; while it does, fleetd answers."""
    slow = ("[Service]\nExecStart=/bin/true\n{% set s = 'x' * 1000000 %}\n"
            "{% for i in range(99000) %}{% if s.count('ab') %}{% endif %}{% endfor %}\n")
    outcome: List[ApiError] = []
    done = threading.Event()

    def refused() -> None:
        outcome.append(submit(lone_fleet, slow, {}))
        done.set()

    threading.Thread(target=refused, daemon=True).start()
    answered_meanwhile = 0
    while not done.wait(0.05):
        lone_fleet.api.get("/v1/health", timeout=60)
        answered_meanwhile += not done.is_set()
    assert answered_meanwhile > 0, "GET /v1/health waited for the template"
    assert outcome[0].status == 400
    assert "units/bad.service:4: template: took longer than 2 s" in str(outcome[0])
