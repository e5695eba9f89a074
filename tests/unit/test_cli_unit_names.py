"""fleetctl status, journal and ssh take a unit's name as every other verb does
(cli/unitargs.py, fleet's ``maybeAppendDefaultUnitType``): ``web`` means web.service,
and so does ``web.unit`` (issue 14 §2). status and journal run through fleetctl against
a real fleetd API (apikit: a real Daemon on SQLite; its machines never connect)."""

from __future__ import annotations

from typing import Any, Dict, List

import pytest
from apikit import post, served
from click.testing import CliRunner, Result

from fleetd.cli import ssh
from fleetd.cli.main import cli

WEB = "[Unit]\nDescription=The web tier\n[Service]\nExecStart=/bin/sleep 100\n"
SPELLINGS = ["web", "web.unit", "web.service"]


def fleetctl_on_web(tmp_path: Any, *args: str) -> Result:
    """fleetctl ``args`` against a fleetd where web.service is submitted."""
    with served(tmp_path) as fleetd:
        sock = fleetd.config.socket
        status, answer = post(sock, "/v1/units", {"units": [{"name": "web.service",
                                                             "text": WEB}]})
        assert status == 200, answer
        return CliRunner().invoke(cli, ["--endpoint", f"unix://{sock}", *args])


@pytest.mark.parametrize("typed", SPELLINGS)
def test_status_takes_the_name_as_start_does(tmp_path: Any, typed: str) -> None:
    result = fleetctl_on_web(tmp_path, "status", typed)
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[0] == "● web.service - The web tier"


@pytest.mark.parametrize("typed", SPELLINGS)
def test_journal_takes_the_name_as_start_does(tmp_path: Any, typed: str) -> None:
    """The unit is found (and is on no machine, so there is no journal to read)."""
    result = fleetctl_on_web(tmp_path, "journal", typed)
    assert result.exit_code == 1
    assert "unit web.service is not placed on any machine" in result.output, result.output


class Answers:
    """fleetctl's context as ssh's plan uses it: fleetd's answers, by path."""

    def __init__(self, answers: Dict[str, Any]) -> None:
        self.answers = answers
        self.asked: List[str] = []

    def call(self, method: str, path: str, body: Any = None, **_: Any) -> Any:
        self.asked.append(path)
        return self.answers[path]


@pytest.mark.parametrize("typed", SPELLINGS)
def test_ssh_finds_a_units_machine_by_the_name_as_start_does(typed: str) -> None:
    c = Answers({"/v1/machines": {"machines": [{"name": "h1", "machine_id": "abc"},
                                               {"name": "h2", "machine_id": "def"}]},
                 "/v1/unit-files": {"unit_files": [
                     {"unit": "web.service", "machine": "h2", "machines": ["h2"]}]}})
    assert ssh.target_of(c, typed) == ("h2", "web.service")  # type: ignore[arg-type]
