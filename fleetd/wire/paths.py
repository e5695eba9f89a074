"""Where the agent's socket is, from its state directory: one rule both sides follow.

The agent listens there (fleetd.agent.state); fleetd, reaching it through sshd's
stream-local forwarding instead of a relay process (fleetd.transport.forward), must
name the same path without asking the host first. Both derive it here, so the two
cannot drift apart.
"""

from __future__ import annotations

import os

DEFAULT_STATE_DIR = "/var/lib/fleet-agent"  # fleet-agent's --state-dir when none is given
STATE_DIR_ENV = "FLEET_AGENT_STATE_DIR"  # ... or this, in fleet-agent's environment
SOCKET_NAME = "agent.sock"


def agent_socket(state_dir: str) -> str:
    """The agent's Unix socket in ``state_dir`` (made absolute as the agent makes it)."""
    return os.path.join(os.path.abspath(state_dir), SOCKET_NAME)
