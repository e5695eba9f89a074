"""fleet's field names in ``--fields``, ``-l`` for ``--full``, and an empty listing
without a legend prints nothing (issue 14), through fleetctl against a real fleetd API
(apikit: a real Daemon on SQLite; its machines never connect)."""

from __future__ import annotations

from typing import Any, Dict, List

import pytest
from apikit import post, served
from click.testing import CliRunner

from fleetd.cli import listing
from fleetd.cli.main import cli

WEB = "[Unit]\nDescription=The web tier\n[Service]\nExecStart=/bin/sleep 100\n"
AGENTS = "[Service]\nExecStart=/bin/sleep 100\n[X-Fleet]\nGlobal=true\n"


def ctl(sock: str, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--endpoint", f"unix://{sock}", *args])
    assert result.exit_code == 0, result.output
    return result.output


def test_list_unit_files_takes_fleets_fields(tmp_path: Any) -> None:
    with served(tmp_path) as fleetd:
        sock = fleetd.config.socket
        status, answer = post(sock, "/v1/units", {"units": [
            {"name": "web.service", "text": WEB}, {"name": "agents.service", "text": AGENTS}]})
        assert status == 200, answer
        out = ctl(sock, "list-unit-files", "--fields", "unit,dstate,tmachine,desc,global")
        full = ctl(sock, "list-unit-files", "--fields", "unit,hash", "-l")
    rows = [line.split(None, 3) for line in out.splitlines()]
    rows = [r[:3] + r[3].rsplit(None, 1) for r in rows]  # DESC has spaces
    assert rows == [["UNIT", "DSTATE", "TMACHINE", "DESC", "GLOBAL"],
                    ["agents.service", "inactive", "-", "-", "true"],
                    ["web.service", "inactive", "-", "The web tier", "false"]]
    assert len(full.splitlines()[1].split()[1]) == 64  # -l: the whole hash


def test_list_machines_takes_fleets_fields_and_shows_the_id(tmp_path: Any) -> None:
    with served(tmp_path) as fleetd:
        sock = fleetd.config.socket
        status, added = post(sock, "/v1/machines", {"address": "10.0.0.9", "name": "m9",
                                                    "metadata": {"role": "db"},
                                                    "agent_command": "true"})
        assert status == 201, added
        out = ctl(sock, "list-machines", "--fields", "machine,ip,metadata,id")
    assert out.splitlines()[0].split() == ["MACHINE", "IP", "METADATA", "ID"]
    assert out.splitlines()[1].split()[:3] == ["m9", "10.0.0.9", "role=db"]


@pytest.mark.parametrize("state, shown", [
    ("running", ["loaded", "active", "running"]), ("starting", ["loaded", "activating", "start"]),
    ("failed", ["loaded", "failed", "failed"]), ("exited", ["loaded", "inactive", "dead"]),
    ("stopped", ["loaded", "inactive", "dead"]), ("-", ["-", "-", "-"])])
def test_list_units_shows_systemds_states_as_fleet_did(state: str, shown: List[str]) -> None:
    row: Dict[str, Any] = {"unit": "a.service", "machine": "m1", "state": state}
    assert [listing.UNIT_COLUMNS[f][1](row, False) for f in ("load", "active", "sub")] == shown
    assert [listing.UNIT_COLUMNS[f][0] for f in ("unit", "machine", "active", "sub")] == [
        "UNIT", "MACHINE", "ACTIVE", "SUB"]


@pytest.mark.parametrize("verb", ["list-units", "list-unit-files", "list-machines"])
def test_an_empty_listing(tmp_path: Any, verb: str) -> None:
    """The legend alone, one line; with --no-legend nothing at all (fleet printed no
    empty line either)."""
    with served(tmp_path) as fleetd:
        sock = fleetd.config.socket
        assert ctl(sock, verb).count("\n") == 1
        assert ctl(sock, verb, "--no-legend") == ""
        assert ctl(sock, verb, "-l", "--no-legend") == ""
