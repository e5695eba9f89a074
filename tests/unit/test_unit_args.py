"""Unit arguments as people type them (issue 14 §2): ``app.unit`` is the service
``app.service``, and a name without a unit type means ``NAME.service`` in every verb, as
fleet's ``maybeAppendDefaultUnitType`` did. Pure (fleetd.cli.unitargs), then fleetctl's
verbs against a real fleetd API (apikit: a real Daemon on SQLite, no machines)."""

from __future__ import annotations

from typing import Any, List

import pytest
from apikit import http, served
from click.testing import CliRunner

from fleetd.cli import units as cli_units
from fleetd.cli.main import cli
from fleetd.cli.unitargs import unit_items, unit_name
from fleetd.registry.base import LAUNCHED

TEXT = "[Service]\nExecStart=/bin/sleep 100\n"


@pytest.mark.parametrize(("arg", "name"), [
    ("app", "app.service"),  # fleet's default unit type
    ("app.service", "app.service"),
    ("app.unit", "app.service"),  # a file app.unit is the service app.service
    ("units/app.unit", "app.service"),
    ("some/dir/app", "app.service"),
    ("web@1", "web@1.service"),
    ("web@", "web@.service"),  # the template
    ("web@1.unit", "web@1.service"),
    ("web@.unit", "web@.service"),
    ("my.app", "my.app.service"),  # not a unit type: fleet appended .service too
    ("backup.timer", "backup.timer"),  # a unit type fleet knew: kept (fleetd says no)
    ("web@*", "web@*"),  # a glob ending in * matches every suffix already
    ("*", "*"),
    ("web@*.service", "web@*.service"),
    ("web@?", "web@?.service"),
    ("web@[12]", "web@[12].service"),
])
def test_the_unit_an_argument_names(arg: str, name: str) -> None:
    assert unit_name(arg) == name


def test_files_are_read_by_the_names_people_give_them(tmp_path: Any) -> None:
    (tmp_path / "app.unit").write_text(TEXT)
    (tmp_path / "db.service").write_text(TEXT + "# db\n")
    (tmp_path / "web@.unit").write_text(TEXT + "# web\n")
    (tmp_path / "job@.service").write_text(TEXT + "# job\n")
    (tmp_path / "tool").write_text("#!/bin/sh\n")  # a program, not its unit
    (tmp_path / "both.service").write_text(TEXT)
    (tmp_path / "both.unit").write_text(TEXT)
    d = str(tmp_path)
    items = unit_items((f"{d}/app.unit", f"{d}/db", f"{d}/web@1.unit", f"{d}/web@2",
                        f"{d}/job@3", f"{d}/tool", "gone", f"{d}/app", f"{d}/both"), None)
    assert [i["name"] for i in items] == [
        "app.service", "db.service", "web@1.service", "web@2.service", "job@3.service",
        "tool.service", "gone.service", "app.service", "both.service"]
    assert (items[0]["text"], items[0]["source"]) == (TEXT, f"{d}/app.unit")
    assert items[1]["source"] == f"{d}/db.service"  # db: the file db.service, as in fleet
    # instances: the template beside them, spelt as the argument was, else the other way
    assert items[2]["template_source"] == f"{d}/web@.unit"
    assert items[3]["template_source"] == f"{d}/web@.unit"  # web@.service: not there
    assert items[4]["template_source"] == f"{d}/job@.service"
    assert items[5] == {"name": "tool.service"}  # never the file tool itself
    assert items[6] == {"name": "gone.service"}
    assert items[7]["source"] == f"{d}/app.unit"  # app: app.service, else app.unit
    assert items[8]["source"] == f"{d}/both.service"  # fleet's spelling first


def test_restart_names_and_globs_without_a_type() -> None:
    files = [{"unit": n, "desired": LAUNCHED}
             for n in ("web@1.service", "web@2.service", "web@10.service", "db.service")]
    assert cli_units.expand_units(["db", "web@2.unit", "web@1"], files) == [
        "db.service", "web@2.service", "web@1.service"]
    assert cli_units.expand_units(["web@*"], files) == [
        "web@1.service", "web@2.service", "web@10.service"]
    assert cli_units.expand_units(["web@?"], files) == ["web@1.service", "web@2.service"]


def run(sock: str, *args: str) -> str:
    out = CliRunner().invoke(cli, list(args), env={"FLEETCTL_ENDPOINT": f"unix://{sock}"})
    assert out.exit_code == 0, out.output
    return out.output


def test_fleetctl_verbs_take_app_unit_and_names_without_a_type(tmp_path: Any) -> None:
    (tmp_path / "app.unit").write_text(TEXT)
    (tmp_path / "web@.unit").write_text(TEXT)
    with served(tmp_path) as fleetd:
        sock = str(fleetd.config.socket)
        assert run(sock, "submit", str(tmp_path / "app.unit"), str(tmp_path / "web@1")
                   ).splitlines() == ["Unit app.service submitted", "Unit web@1.service submitted"]
        names: List[str] = sorted(u["unit"] for u in http(sock, "GET", "/v1/unit-files")[1][
            "unit_files"])
        assert names == ["app.service", "web@.service", "web@1.service"]
        for arg in ("app", "app.unit", "app.service"):
            assert run(sock, "cat", arg) == TEXT
        assert run(sock, "history", "app").startswith("VERSION")
        assert run(sock, "stop", "--no-block", "app") == "Triggered unit app.service stop\n"
        assert run(sock, "unload", "--no-block", "web@1.unit") == (
            "Triggered unit web@1.service unload\n")
        assert run(sock, "destroy", "--no-block", "app", "web@1") == (
            "Destroyed app.service\nDestroyed web@1.service\n")
        assert [u["unit"] for u in http(sock, "GET", "/v1/unit-files")[1]["unit_files"]] == [
            "web@.service"]


def test_help_says_what_a_unit_argument_is() -> None:
    for verb in ("start", "submit", "stop", "destroy", "cat"):
        text = " ".join(CliRunner().invoke(cli, [verb, "--help"]).output.split())
        assert "means NAME.service, as in fleet" in text, verb
        assert "app.unit" in text, verb


def test_not_a_unit_name_says_so() -> None:
    out = CliRunner().invoke(cli, ["submit", "no/such/-x"],
                             env={"FLEETCTL_ENDPOINT": "unix:///nonexistent.sock"})
    assert out.exit_code != 0
    assert "no/such/-x: no such file, and -x.service is not a unit name" in out.output
