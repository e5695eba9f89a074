"""The agent side runs on old hosts: it may import the standard library and psutil only."""

from __future__ import annotations

import json
import subprocess
import sys

AGENT_MODULES = [
    "fleetd.agent.main", "fleetd.agent.attach", "fleetd.agent.daemon",
    "fleetd.agent.supervisor", "fleetd.drivers.exec", "fleetd.drivers.java",
    "fleetd.agent.facts", "fleetd.protocol", "fleetd.cgroups", "fleetd.drivers.systemd",
    "fleetd.wire.names", "fleetd.wire.numbers",
]

PROBE = """
import json, sys
before = set(sys.modules)
for name in sys.argv[1:]:
    __import__(name)
print(json.dumps(sorted({m.split('.')[0] for m in set(sys.modules) - before})))
"""


def test_agent_imports_only_stdlib_and_psutil() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE, *AGENT_MODULES],
                         capture_output=True, text=True, check=True)
    loaded = set(json.loads(out.stdout))
    foreign = {m for m in loaded
               if m not in sys.stdlib_module_names and m not in ("fleetd", "psutil")
               and not m.startswith("_")}
    assert foreign == set(), f"the agent side pulls in {sorted(foreign)}"
    assert "psutil" in loaded  # the probe really imported the agent
    for daemon_side in ("asyncssh", "aiohttp", "jinja2", "click"):
        assert daemon_side not in loaded
