"""What the bootstrap tests share: installs on this machine through an in-process SSH
server, prefix and state directory in tmp, and the agent they start killed after."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Iterator

from fleetd.bootstrap.target import Target

ENV = {"PATH": f"{os.path.dirname(sys.executable)}:/usr/local/bin:/usr/bin:/bin"}


def agent_pid(state: Path) -> int:
    return int((state / "agent.pid").read_text())


def target_in(tmp_path: Path) -> Iterator[Target]:
    """A fixture's body: a target under ``tmp_path``, its agent killed afterwards."""
    target = Target(prefix=str(tmp_path / "opt" / "fleetd-agent"),
                    state_dir=str(tmp_path / "state" / "fleet-agent"))
    yield target
    with contextlib.suppress(FileNotFoundError, ValueError, ProcessLookupError):
        os.kill(agent_pid(Path(target.state_dir)), signal.SIGKILL)
