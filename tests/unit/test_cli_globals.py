"""fleetctl's global flags as fleet had them (issue 14): each can come from
``FLEETCTL_<FLAG>`` in the environment, and ``--request-timeout`` bounds a request."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Iterator, List

import click
import pytest
from click.testing import CliRunner

from fleetd.cli.main import cli
from fleetd.client import Client


def test_every_global_flag_has_its_fleetctl_variable() -> None:
    for param in cli.params:
        if not isinstance(param, click.Option) or param.hidden or param.is_eager:
            continue  # --help, --version; --token: FLEETCTL_TOKEN is read without it
        flag = max(param.opts, key=len).lstrip("-")
        assert param.envvar == "FLEETCTL_" + flag.upper().replace("-", "_"), param.name


@pytest.fixture
def silent(tmp_path: Any) -> Iterator[str]:
    """A Unix socket that takes connections and never answers."""
    path = str(tmp_path / "silent.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(8)
    held: List[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    yield f"unix://{path}"
    server.close()
    for conn in held:
        conn.close()


@pytest.mark.parametrize("how", ["flag", "env"])
def test_request_timeout_bounds_a_request(silent: str, how: str) -> None:
    args = ["--endpoint", silent, "list-units"]
    env = {}
    if how == "flag":
        args = ["--request-timeout", "0.3", *args]
    else:
        env = {"FLEETCTL_REQUEST_TIMEOUT": "0.3"}
    t0 = time.monotonic()
    result = CliRunner().invoke(cli, args, env=env)
    assert time.monotonic() - t0 < 5  # not the 60 s a request waits by default
    assert result.exit_code == 1
    assert "no answer in 0.3s (--request-timeout)" in result.output


def test_a_long_poll_gets_the_request_timeout_beyond_its_own_wait() -> None:
    c = Client("unix:///x.sock", request_timeout=2.0)
    assert c.bounded("/v1/units", 60.0) == 2.0
    assert c.bounded("/v1/units/a.service/wait?until=running&timeout=30", 35.0) == 32.0
    assert Client("unix:///x.sock").bounded("/v1/units", 60.0) == 60.0


def test_a_bad_request_timeout_names_the_option() -> None:
    result = CliRunner().invoke(cli, ["list-units"], env={"FLEETCTL_REQUEST_TIMEOUT": "-1"})
    assert result.exit_code == 2
    assert "--request-timeout" in result.output
