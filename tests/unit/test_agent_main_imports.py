"""fleet-agent's entry point keeps what the agent never uses out of the daemon: ssl,
bz2, lzma (and uuid's C helper) are blocked before anything imports them, which only
works if importing the entry point does not already import asyncio (it did, through
fleetd.agent.state, and the agent carried ssl's 3.5 MB although it blocked it)."""

from __future__ import annotations

import subprocess
import sys

from fleetd.agent import main

PROBE = """
import sys
import fleetd.agent.main
print(",".join(n for n in ("asyncio", "ssl", "bz2", "lzma") if n in sys.modules) or "-")
"""
# main(["daemon", ...]) with the daemon's run stubbed, then the daemon's real imports:
# what they load once main has blocked what it blocks
DAEMON = """
import sys, types
import fleetd.agent.main as m
stub = types.ModuleType("fleetd.agent.daemon")
stub.run = lambda state_dir: 0
sys.modules["fleetd.agent.daemon"] = stub
assert m.main(["daemon", "--state-dir", "/nonexistent"]) == 0
del sys.modules["fleetd.agent.daemon"]
import fleetd.agent.daemon
print(",".join(n for n in m.UNUSED if sys.modules.get(n)) or "-")
"""


def run(code: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_importing_the_entry_point_imports_no_asyncio() -> None:
    assert run(PROBE) == "-"


def test_the_daemon_command_blocks_what_it_never_uses() -> None:
    assert set(main.UNUSED) >= {"ssl", "bz2", "lzma"}
    assert run(DAEMON) == "-"
