"""Probes of a lab namespace's network, run inside it with nsenter, for the cut tests
(tests/integration/test_lab_ha.py): whether a TCP connect is answered, refused or met
with silence (a partition), whether a connection held across a cut goes silent, and
whether datagrams sent to it still arrive."""

from __future__ import annotations

import subprocess
import sys
from typing import List, Optional


def nsenter(netns: str, script: str, *args: str, pipes: bool = False
            ) -> subprocess.Popen[str]:
    """``script`` run by this Python inside ``netns``; ``pipes``: its stdin and stdout."""
    pipe: Optional[int] = subprocess.PIPE if pipes else None
    return subprocess.Popen(["nsenter", f"--net=/run/netns/{netns}", sys.executable, "-c",
                             script, *args], stdin=pipe, stdout=pipe, text=True)


PROBE = """
import socket, sys
def reach(addr, port):
    try:
        socket.create_connection((addr, port), timeout=2).close()
        return "ok"
    except socket.timeout:
        return "silent"
    except OSError as e:
        return type(e).__name__
print(" ".join(reach(a, int(p)) for a, p in (x.split(":") for x in sys.argv[1:])))
"""


def reach(netns: str, *targets: str) -> List[str]:
    """From inside ``netns``: "ok", "silent" (no answer at all, as in a partition) or the
    error, for a TCP connect to each HOST:PORT."""
    out = subprocess.run(["nsenter", f"--net=/run/netns/{netns}", sys.executable, "-c",
                          PROBE, *targets], capture_output=True, text=True, timeout=60)
    return out.stdout.split()



PUSHER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
while True:
    s.sendto(b"tick", (sys.argv[1], 2390))
    time.sleep(0.05)
"""

LISTENER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", 2390))
s.recv(100)
print("flowing", flush=True)
sys.stdin.readline()
# after the cut: what was on its way may still come; then nothing, if the cut is both ways
s.settimeout(1)
end = time.monotonic() + 4
try:
    while time.monotonic() < end:
        s.recv(100)
    print("flowing")
except socket.timeout:
    print("silent")
"""

HELD = """
import socket, sys
s = socket.create_connection((sys.argv[1], 2379), timeout=5)
print("connected", flush=True)
sys.stdin.readline()
s.settimeout(3)
s.sendall(b"GET /health HTTP/1.0\\r\\n\\r\\n")
try:
    print("answered" if s.recv(100) else "closed")
except socket.timeout:
    print("silent")
except OSError as e:
    print(type(e).__name__)
"""
