"""The lab and the test helpers sit beside fleetctl, not on it: they talk to fleetd through
fleetd.client, which fleetctl uses too, and never import fleetd.cli."""

from __future__ import annotations

import json
import subprocess
import sys

LAB_MODULES = ["fleetd.lab.netns", "fleetd.lab.daemon", "fleetd.lab.systemd_host",
               "fleetd.testing.waiting", "fleetd.testing.systemd"]

PROBE = """
import json, sys
for name in sys.argv[1:]:
    __import__(name)
print(json.dumps(sorted(m for m in sys.modules if m.startswith("fleetd."))))
"""


def test_the_lab_does_not_import_the_cli() -> None:
    out = subprocess.run([sys.executable, "-c", PROBE, *LAB_MODULES],
                         capture_output=True, text=True, check=True)
    loaded = json.loads(out.stdout)
    assert "fleetd.client" in loaded  # the probe really imported the lab
    assert [m for m in loaded if m == "fleetd.cli" or m.startswith("fleetd.cli.")] == []


def test_the_lab_loads_without_cryptography() -> None:
    """test_vm_host runs test_cgroups_real inside the VM guest with the guest's python3,
    which has psutil but not cryptography; that file imports labkit, so the lab: making
    certificates (fleetd.lab.certs) imports cryptography only when it makes some."""
    probe = ("import sys\nsys.modules['cryptography'] = None  # import fails\n"
             + PROBE)
    out = subprocess.run([sys.executable, "-c", probe, *LAB_MODULES],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "fleetd.lab.certs" not in json.loads(out.stdout)
