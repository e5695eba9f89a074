"""Which agent commands fleetd forwards to (and to which socket), which it only relays."""

from __future__ import annotations

from typing import Optional

import pytest

from fleetd.agent.state import AgentState
from fleetd.transport import forward
from fleetd.wire import paths

LAB = "env PYTHONPATH=/src /usr/bin/python3 -m fleetd.agent attach"
INSTALLED = "/opt/fleetd-agent/current/bin/fleet-agent attach --state-dir /srv/fa/state"


@pytest.mark.parametrize("command, socket", [
    (LAB, "/var/lib/fleet-agent/agent.sock"),
    (LAB + " --state-dir /x/y", "/x/y/agent.sock"),
    (LAB + " --state-dir=/x/y", "/x/y/agent.sock"),
    (INSTALLED, "/srv/fa/state/agent.sock"),
    (INSTALLED + " --systemd-service fleet-agent.service", "/srv/fa/state/agent.sock"),
    ("env FLEET_AGENT_STATE_DIR=/e/s python3 -m fleetd.agent.main attach", "/e/s/agent.sock"),
    ("FLEET_AGENT_STATE_DIR=/e/s fleet-agent attach --state-dir /o/s", "/o/s/agent.sock"),
    ("fleet-agent attach --state-dir rel/dir", None),  # the host's cwd decides: ask it
])
def test_forwardable_commands_and_their_socket(command: str, socket: Optional[str]) -> None:
    attach = forward.parse(command)
    assert attach is not None
    assert attach.socket == socket
    assert attach.start_command == command + " --start-only"


@pytest.mark.parametrize("command", [
    "ssh-wrapper h1",  # not fleet-agent at all
    "sh -c 'fleet-agent attach'",  # a shell's script: what it runs is its own business
    "python3 -m other attach",
    "fleet-agent attach --verbose",  # an option this fleetd does not know
    "fleet-agent attach --state-dir",  # an option without its value
    "fleet-agent attach 'unclosed",
])
def test_other_commands_are_only_relayed(command: str) -> None:
    assert forward.parse(command) is None


def test_both_sides_derive_the_same_socket(tmp_path: object) -> None:
    state = AgentState(str(tmp_path))
    attach = forward.parse(f"fleet-agent attach --state-dir {tmp_path}")
    assert attach is not None and attach.socket == state.socket_path
    assert state.socket_path == paths.agent_socket(str(tmp_path))


def test_printed_socket() -> None:
    assert forward.printed_socket("noise\nsocket=/a/agent.sock\n") == "/a/agent.sock"
    assert forward.printed_socket("") is None
