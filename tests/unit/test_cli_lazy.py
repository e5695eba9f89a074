"""fleetctl answers fast (issue 14): a command line loads the one command it runs, and
a request to fleetd over ``unix://`` or ``http://`` loads neither http.client nor ssl.

Structural guards, not timings (bench/start_latency.py prints those): each checks
which modules a real fleetctl run, in a process of its own, has imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any, List, Sequence, Tuple

import click
import pytest
from apikit import served

from fleetd.cli import commands
from fleetd.cli.main import cli

# never needed by fleetctl to talk to fleetd: the daemon's, the agent installer's, the
# lab's, and the unit parser (fleetd validates units)
HEAVY = ("aiohttp", "asyncssh", "jinja2", "cryptography", "asyncio", "fleetd.units.parser",
         "fleetd.units.model", "fleetd.registry", "fleetd.lab", "fleetd.daemon",
         "fleetd.transport")
NO_TLS = ("http.client", "ssl", "email")  # a plain request's (fleetd.endpoints.PlainConnection)

RUN = """
import json, sys
from fleetd.cli.main import cli
try:
    cli(sys.argv[1:], prog_name="fleetctl")
except SystemExit:
    pass
print(json.dumps(sorted(sys.modules)), file=sys.stderr)
"""


def run(args: Sequence[str], endpoint: str = "unix:///nonexistent/fleetd.sock"
        ) -> Tuple[List[str], str]:
    """The modules a fleetctl process with ``args`` had loaded when it ended, and what
    it printed."""
    env = dict(os.environ, FLEETCTL_ENDPOINT=endpoint)
    proc = subprocess.run([sys.executable, "-c", RUN, *args], capture_output=True,
                          text=True, env=env, timeout=60)
    modules: List[str] = json.loads(proc.stderr.strip().splitlines()[-1])
    return modules, proc.stdout


def loaded(args: Sequence[str], endpoint: str = "unix:///nonexistent/fleetd.sock"
           ) -> List[str]:
    return run(args, endpoint)[0]


def heavy(modules: List[str], names: Sequence[str]) -> List[str]:
    return sorted(m for m in modules if any(m == n or m.startswith(n + ".") for n in names))


@pytest.mark.parametrize("args", [["--help"], ["version"], ["help"], ["help", "version"]])
def test_help_and_version_load_no_command_and_no_client(args: List[str]) -> None:
    modules = loaded(args)
    assert heavy(modules, HEAVY + NO_TLS + ("fleetd.client", "fleetd.cli.lab")) == []
    assert not [m for m in modules if m.startswith("fleetd.cli.") and m not in (
        "fleetd.cli.main", "fleetd.cli.commands", "fleetd.cli.context", "fleetd.cli.output",
        "fleetd.cli.verbs")]


def test_list_units_talks_to_fleetd_without_http_client_ssl_or_the_parser(tmp_path: Any
                                                                          ) -> None:
    with served(tmp_path) as fleetd:
        modules = loaded(["list-units"], f"unix://{fleetd.config.socket}")
    assert "fleetd.cli.listing" in modules  # it ran
    assert heavy(modules, HEAVY + NO_TLS) == []


def test_start_loads_neither_the_registry_nor_tomllib(tmp_path: Any) -> None:
    """fleetctl start imports cli/units.py, which once loaded fleetd.registry.base for
    one constant (~5 ms) and tomllib for --vars-file (~2 ms) on every run (issue 14)."""
    unit = tmp_path / "lazy.service"
    unit.write_text("[Service]\nExecStart=/bin/sleep 1000\n")
    with served(tmp_path) as fleetd:
        modules, out = run(["start", "--no-block", str(unit)], f"unix://{fleetd.config.socket}")
    assert out == "Triggered unit lazy.service start\n"  # it ran
    assert heavy(modules, HEAVY + NO_TLS + ("tomllib",)) == []


def test_every_lazy_command_is_the_one_named_and_says_what_its_docstring_says() -> None:
    """The help fleetctl prints without loading a command is that command's own."""
    for name in commands.COMMANDS:
        command = commands.load(name)
        assert command.name == name
        stub = click.Command(name, help=commands.COMMANDS[name].short_help)
        for limit in (30, 45, 60, 120):
            assert stub.get_short_help_str(limit) == command.get_short_help_str(limit), name


def test_help_lists_every_command_once() -> None:
    text = cli.get_help(click.Context(cli, info_name="fleetctl"))
    listed = [line.split()[0] for line in text.split("Commands:")[1].splitlines()
              if line.startswith("  ") and not line.startswith("   ")]
    assert listed == sorted(commands.COMMANDS)
