"""OnPeersChange= in [X-Fleet] and ExecReload= in [Service] (fleetd.units.xfleet,
fleetd.units.service): what a unit whose template reads other units' placements does
when only they changed, and the command that reloads it."""

from __future__ import annotations

import pytest

from fleetd.agent.specs import SpecError, check_spec
from fleetd.units.model import load
from fleetd.units.parser import UnitError

LB = """\
[Service]
ExecStart=/usr/sbin/nginx -c /srv/lb/nginx.conf
ExecReload=/bin/sh /srv/lb/lb.sh reload "%n"
{extra}
[X-Fleet]
{fleet}
"""


def unit(fleet: str = "", extra: str = "", name: str = "lb.service") -> dict[str, object]:
    return dict(load(name, LB.format(fleet=fleet, extra=extra), "units/lb.service").config)


def test_exec_reload_is_split_like_exec_start() -> None:
    config = unit()
    reload = config["reload"]
    assert isinstance(reload, list)
    assert [c["words"] for c in reload] == [["/bin/sh", "/srv/lb/lb.sh", "reload",
                                             "lb.service"]]
    assert "on_peers_change" not in config  # restart, the default, is not said


def test_several_exec_reload_lines_run_in_order() -> None:
    config = unit(extra="ExecReload=-/bin/kill -HUP $MAINPID\n")
    reload = config["reload"]
    assert isinstance(reload, list)
    assert [c["words"][0] for c in reload] == ["/bin/sh", "/bin/kill"]
    assert reload[1]["ignore_failure"] is True


def test_on_peers_change_reload_goes_to_the_agent() -> None:
    config = unit("OnPeersChange=reload")
    assert config["on_peers_change"] == "reload"
    spec = load("lb.service", LB.format(fleet="OnPeersChange=reload", extra="")).spec(
        "running")
    assert check_spec(spec) is spec  # the agent takes the new fields


def test_on_peers_change_restart_is_the_default() -> None:
    assert "on_peers_change" not in unit("OnPeersChange=restart")


def test_an_unknown_value_names_its_line() -> None:
    with pytest.raises(UnitError, match=r"units/lb.service:6.*OnPeersChange.*'sometimes' "
                                        r"is not one of restart, reload"):
        unit("OnPeersChange=sometimes")


@pytest.mark.parametrize(("text", "lines"), [
    pytest.param("[Service]\nExecStart=/bin/sleep 100\n\n[X-Fleet]\nOnPeersChange=reload\n",
                 ["units/lb.service:5",
                  "needs ExecReload= in [Service] ([Service] at units/lb.service:1"],
                 id="without ExecReload="),
    pytest.param("[Service]\nExecStart=/bin/sleep 100\nExecReload=/bin/true\n\n"
                 "[X-Fleet]\nDriver=systemd\nOnPeersChange=reload\n",
                 ["units/lb.service:7", "Driver=systemd at units/lb.service:6"],
                 id="Driver=systemd"),
])
def test_a_refused_reload_names_both_lines(text: str, lines: list[str]) -> None:
    with pytest.raises(UnitError) as info:
        load("lb.service", text, "units/lb.service")
    message = str(info.value)
    for line in lines:
        assert line in message


def test_the_agent_refuses_a_reload_that_is_not_commands() -> None:
    spec = load("lb.service", LB.format(fleet="", extra="")).spec("running")
    spec["config"]["reload"] = "kill -HUP"  # type: ignore[typeddict-item]
    with pytest.raises(SpecError, match="reload"):
        check_spec(spec)


@pytest.mark.parametrize(("field", "value"), [("base", "not hex"), ("base", 3),
                                              ("reload", "yes")])
def test_the_agent_refuses_a_bad_base_or_reload(field: str, value: object) -> None:
    spec = dict(load("lb.service", LB.format(fleet="", extra="")).spec("running"))
    spec[field] = value
    with pytest.raises(SpecError, match=f"unit lb.service: {field}"):
        check_spec(spec)
    spec[field] = "c" * 64 if field == "base" else True
    assert check_spec(spec) is spec
