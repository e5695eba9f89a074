"""``POST /v1/units/{template}/scale`` on a real fleetd API (apikit: a real Daemon on
SQLite, no hosts), and the plan behind it (service/scale.py): instances web@1..N of a
submitted template, launched; the numbers above N destroyed, the highest first;
non-templates and bad counts refused naming what is wrong. On the lab, with machines
running the copies: tests/integration/test_scale.py."""

from __future__ import annotations

from typing import Any, Dict

import pytest
from apikit import http, post, served
from click.testing import CliRunner

from fleetd.cli.main import cli
from fleetd.daemon.service.scale import plan
from fleetd.registry.base import LAUNCHED, LOADED, UnitRecord

TEXT = "[Service]\nExecStart=/bin/sleep 100\n"


def units(sock: str) -> Dict[str, str]:
    status, answer = http(sock, "GET", "/v1/unit-files")
    assert status == 200, answer
    return {u["unit"]: u["desired"] for u in answer["unit_files"]}


def scale(sock: str, name: str, count: Any) -> Any:
    status, answer = post(sock, f"/v1/units/{name}/scale", {"count": count})
    assert status == 200, answer
    return answer


def test_scale_up_down_and_to_zero(tmp_path: Any) -> None:
    with served(tmp_path) as fleetd:
        sock = fleetd.config.socket
        status, answer = post(sock, "/v1/units", {"units": [
            {"name": "web@.service", "text": TEXT}, {"name": "web@blue.service", "text": TEXT}]})
        assert status == 200, answer
        answer = scale(sock, "web@.service", 3)
        assert (answer["created"], answer["destroyed"], answer["ignored"]) == (
            ["web@1.service", "web@2.service", "web@3.service"], [], ["web@blue.service"])
        assert units(sock) == {"web@.service": "inactive", "web@blue.service": "inactive",
                               "web@1.service": LAUNCHED, "web@2.service": LAUNCHED,
                               "web@3.service": LAUNCHED}
        answer = scale(sock, "web@.service", 1)
        assert (answer["destroyed"], answer["kept"]) == (
            ["web@3.service", "web@2.service"], ["web@1.service"])
        assert set(units(sock)) == {"web@.service", "web@blue.service", "web@1.service"}
        status, _ = post(sock, "/v1/units/state", {"names": ["web@1.service"],
                                                    "desired": LOADED})
        answer = scale(sock, "web@.service", 2)  # a stopped instance in range starts again
        assert (answer["started"], answer["created"]) == (["web@1.service"], ["web@2.service"])
        answer = scale(sock, "web@.service", 0)
        assert answer["destroyed"] == ["web@2.service", "web@1.service"]
        assert set(units(sock)) == {"web@.service", "web@blue.service"}  # the template stays


@pytest.mark.parametrize(("name", "count", "status", "says"), [
    ("web@1.service", 2, 400, '"web@1.service" is not a template: scale makes instances '
                              "NAME@1 .. NAME@N of a template such as web@.service; its "
                              "template is web@.service"),
    ("plain.service", 2, 400, '"plain.service" is not a template'),
    ("db@.service", 2, 404, "template db@.service is not submitted"),
    ("web@.service", -1, 400, "count: -1: want a whole number from 0 to 1000"),
    ("web@.service", "2", 400, 'count: "2": want a whole number'),
    ("web@.service", 1001, 400, "count: 1001"),
    ("web@.service", None, 400, "count: null"),
])
def test_refusals_name_what_is_wrong(tmp_path: Any, name: str, count: Any, status: int,
                                     says: str) -> None:
    with served(tmp_path) as fleetd:
        sock = fleetd.config.socket
        post(sock, "/v1/units", {"units": [{"name": "web@.service", "text": TEXT},
                                           {"name": "plain.service", "text": TEXT}]})
        got, answer = post(sock, f"/v1/units/{name}/scale", {"count": count})
        assert (got, says in answer["error"]) == (status, True), answer
        assert set(units(sock)) == {"web@.service", "plain.service"}  # nothing changed


def rec(name: str, desired: str = LAUNCHED) -> UnitRecord:
    return UnitRecord(name, "h", desired, None, "", 0.0)


def test_the_plan_counts_numbered_instances_only() -> None:
    have = [rec("web@.service", "inactive"), rec("web@1.service"), rec("web@2.service", LOADED),
            rec("web@10.service"), rec("web@03.service"), rec("web@0.service"),
            rec("web@x.service"), rec("webby@5.service"), rec("web.service")]
    p = plan("web@.service", have, 3)
    assert p.create == ["web@3.service"]
    assert (p.start, p.keep) == (["web@2.service"], ["web@1.service"])
    assert p.destroy == ["web@10.service"]
    assert p.ignored == ["web@0.service", "web@03.service", "web@x.service"]
    assert plan("web@.service", have, 0).destroy == [
        "web@10.service", "web@2.service", "web@1.service"]


def test_fleetctl_scale(tmp_path: Any) -> None:
    with served(tmp_path) as fleetd:
        sock = fleetd.config.socket
        env = {"FLEETCTL_ENDPOINT": f"unix://{sock}"}
        post(sock, "/v1/units", {"units": [{"name": "web@.service", "text": TEXT}]})
        out = CliRunner().invoke(cli, ["scale", "web@.service", "3", "--no-block"], env=env)
        assert out.exit_code == 0, out.output
        assert out.output.splitlines() == [f"Triggered unit web@{n}.service start"
                                           for n in (1, 2, 3)]
        out = CliRunner().invoke(cli, ["scale", "web@.service", "1"], env=env)
        assert out.exit_code == 0, out.output  # no machine ran them: gone at once
        assert out.output.splitlines() == ["Destroyed web@3.service", "Destroyed web@2.service"]
        out = CliRunner().invoke(cli, ["scale", "web@.service", "1"], env=env)
        assert out.output == "web@.service: 1 instance already\n", out.output
        for spelt in ("web@", "units/web@.unit"):  # as fleet named units: .service
            out = CliRunner().invoke(cli, ["scale", spelt, "1"], env=env)
            assert out.output == "web@.service: 1 instance already\n", out.output
        out = CliRunner().invoke(cli, ["scale", "web.service", "2"], env=env)
        assert out.exit_code != 0 and '"web.service" is not a template' in out.output
        out = CliRunner().invoke(cli, ["scale", "web@.service", "-1"], env=env)
        assert out.exit_code == 2 and "COUNT" in out.output, out.output
