"""The lab's fleetd: started detached if none answers, and told about the lab's hosts.

The plain hosts are registered with an agent command that runs this machine's fleetd
source (they share its file system). A systemd host shares nothing with the machine, so
the agent reaches it the way it reaches a real VM: by bootstrap over SSH (fleetd pushes
and starts it, fleetd.bootstrap), which ``register`` asks for; ``machine_add_argv`` is
the same as a ``fleetctl machine add`` command line.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import time
import urllib.parse
from typing import Dict, List, Optional

from fleetd.bootstrap.bundle import source_root
from fleetd.client import ApiError, Client
from fleetd.lab.netns import Host, Lab, LabError

START_TIMEOUT_S = 15.0


def agent_command(state_dir: Optional[str] = None) -> str:
    """How a lab host runs the agent: this very Python and this very fleetd source, which
    the host shares (named explicitly: an SSH session inherits no PYTHONPATH)."""
    source = shlex.quote(source_root())
    cmd = f"env PYTHONPATH={source} {sys.executable} -m fleetd.agent attach"
    return cmd + (f" --state-dir {state_dir}" if state_dir else "")


def ensure_fleetd(lab: Lab, client: Client) -> Optional[int]:
    """The pid of the fleetd this started, or None if one already answered."""
    try:
        client.get("/v1/health", timeout=2)
        return None
    except ApiError:
        pass
    url = urllib.parse.urlsplit(client.endpoint)
    if url.scheme != "unix":
        raise LabError(f"no fleetd answers at {client.endpoint}, and the lab starts one only "
                       "on a Unix socket endpoint")
    with open(os.path.join(lab.dir, "fleetd.log"), "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "fleetd.daemon", "--state-dir", lab.fleetd_dir,
             "--socket", url.path],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
        )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise LabError(f"fleetd exited {proc.returncode}; see {lab.dir}/fleetd.log")
        try:
            client.get("/v1/health", timeout=2)
            return proc.pid
        except ApiError:
            time.sleep(0.05)
    raise LabError(f"fleetd did not answer within {START_TIMEOUT_S:.0f}s; "
                   f"see {lab.dir}/fleetd.log")


def metadata(lab: Lab, h: Host) -> Dict[str, str]:
    """A lab host's fleetd metadata: its name and lab, and ``systemd=true`` on systemd
    hosts (``MachineMetadata=systemd=true`` targets them)."""
    meta = {"hostname": h.name, "lab": lab.prefix}
    if h.systemd:
        meta["systemd"] = "true"
    return meta


def machine_add_argv(lab: Lab, h: Host) -> List[str]:
    """``fleetctl machine add`` for a lab host, with the lab's identity and known_hosts."""
    meta = ",".join(f"{k}={v}" for k, v in metadata(lab, h).items())
    return ["fleetctl", "machine", "add", f"root@{h.address}", "--name", h.name,
            "--metadata", meta, "--identity", lab.identity, "--known-hosts", lab.known_hosts]


def register(lab: Lab, client: Client, hosts: List[Host]) -> List[Host]:
    """Register the hosts fleetd does not know yet: the plain ones with this machine's
    agent command, the systemd ones by bootstrap (no agent command: fleetd installs the
    agent there, as ``machine_add_argv`` would). Returns the systemd hosts it added."""
    known = {m["name"] for m in client.get("/v1/machines")["machines"]}
    added = []
    for h in hosts:
        if h.name in known:
            continue
        client.post("/v1/machines", {
            "name": h.name, "address": h.address, "user": "root",
            "identity": lab.identity, "known_hosts": lab.known_hosts,
            "agent_command": None if h.systemd else agent_command(),
            "metadata": metadata(lab, h),
        }, timeout=300)
        if h.systemd:
            added.append(h)
    return added


def wait_up(client: Client, names: List[str], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    path = "/v1/machines"
    while time.monotonic() < deadline:
        answer = client.get(path, timeout=timeout + 5)
        states = {m["name"]: m for m in answer["machines"]}
        if all(states.get(n, {}).get("state") == "up" for n in names):
            return
        left = max(0.0, deadline - time.monotonic())
        path = f"/v1/machines?after={answer['version']}&timeout={left:.1f}"  # the next change
    bad = [f"{n}: {states.get(n, {}).get('error') or states.get(n, {}).get('state')}"
           for n in names if states.get(n, {}).get("state") != "up"]
    raise LabError("machines did not come up: " + "; ".join(bad))
