"""``fleetctl version`` and ``fleetctl help [VERB]`` as fleet's users type them (issue 14)."""

from __future__ import annotations

from typing import List

import pytest
from click.testing import CliRunner

from fleetd import __version__
from fleetd.cli.main import cli


def run(args: List[str]) -> str:
    result = CliRunner().invoke(cli, args, prog_name="fleetctl")
    assert result.exit_code == 0, result.output
    return result.output


def test_version_prints_fleets_line() -> None:
    assert run(["version"]) == f"fleetctl version {__version__}\n"
    assert run(["--version"]) == f"fleetctl version {__version__}\n"


@pytest.mark.parametrize("verb", [[], ["list-units"], ["machine"], ["machine", "add"],
                                  ["token", "create"], ["help"]])
def test_help_verb_is_verb_help(verb: List[str]) -> None:
    assert run(["help", *verb]) == run([*verb, "--help"])


def test_help_of_an_unknown_verb_says_so() -> None:
    result = CliRunner().invoke(cli, ["help", "lsit-units"], prog_name="fleetctl")
    assert result.exit_code == 2
    assert "unknown verb 'lsit-units'; `fleetctl help` lists them" in result.output
