"""Shell completion (issue 14): the script for bash, zsh and fish from ``fleetctl
completion SHELL`` (click's own, as ``_FLEETCTL_COMPLETE=SHELL_source`` prints it), verbs
completed without loading them, and units' and machines' names asked of a real fleetd."""

from __future__ import annotations

import os
import subprocess
import sys
from typing import Any, Dict, List

import pytest
from apikit import post, served
from click.testing import CliRunner

from fleetd.cli.main import cli

FLEETCTL = os.path.join(os.path.dirname(sys.executable), "fleetctl")
SCRIPT_SAYS = {"bash": "complete -o nosort -F _fleetctl_completion fleetctl",
               "zsh": "#compdef fleetctl", "fish": "complete --no-files --command fleetctl"}


@pytest.mark.parametrize("shell", sorted(SCRIPT_SAYS))
def test_the_script_for_each_shell(shell: str) -> None:
    printed = subprocess.run([FLEETCTL, "completion", shell], capture_output=True,
                             text=True, timeout=30, check=True).stdout
    assert SCRIPT_SAYS[shell] in printed and "_FLEETCTL_COMPLETE" in printed
    clicks = subprocess.run([FLEETCTL], capture_output=True, text=True, timeout=30,
                            env=dict(os.environ, _FLEETCTL_COMPLETE=f"{shell}_source")).stdout
    assert printed == clicks


def complete(words: str, env: Dict[str, str]) -> List[str]:
    """What bash is offered for the last of ``words`` (click's bash_complete lines:
    ``type,value``)."""
    parts = words.split(" ")
    result = CliRunner().invoke(cli, [], prog_name="fleetctl", env={
        **env, "_FLEETCTL_COMPLETE": "bash_complete", "COMP_WORDS": words,
        "COMP_CWORD": str(len(parts) - 1)})
    return [line.split(",", 1)[1] for line in result.output.splitlines() if line]


def test_verbs_complete() -> None:
    assert complete("fleetctl list-u", {}) == ["list-unit-files", "list-units"]
    assert complete("fleetctl comp", {}) == ["completion"]


def test_units_and_machines_complete_from_fleetd(tmp_path: Any) -> None:
    with served(tmp_path) as fleetd:
        sock = fleetd.config.socket
        status, answer = post(sock, "/v1/units", {"units": [
            {"name": n, "text": "[Service]\nExecStart=/bin/true\n"}
            for n in ("web.service", "worker.service", "db.service")]})
        assert status == 200, answer
        status, added = post(sock, "/v1/machines", {"address": "10.0.0.9", "name": "web1",
                                                    "agent_command": "true"})
        assert status == 201, added
        env = {"FLEETCTL_ENDPOINT": f"unix://{sock}"}
        assert complete("fleetctl status w", env) == ["web.service", "worker.service"]
        assert complete("fleetctl journal d", env) == ["db.service"]
        assert complete("fleetctl ssh we", env) == ["web1", "web.service"]
        assert complete(f"fleetctl --endpoint unix://{sock} status db", {}) == ["db.service"]


def test_no_fleetd_offers_nothing_at_once(tmp_path: Any) -> None:
    env = {"FLEETCTL_ENDPOINT": f"unix://{tmp_path}/none.sock"}
    assert complete("fleetctl status w", env) == []
