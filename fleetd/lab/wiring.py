"""A lab namespace that is not a host: its veth on the lab's bridge, its address, its
processes, and cutting its traffic off (for the etcd members and the fleetd servers,
fleetd.lab.etcd and fleetd.lab.servers).

Cutting traffic without a firewall. Neither nft nor iptables is on this kind of machine
(the kernel has nf_tables, the userland is not installed), and neither is the dummy
device, so a cut uses only iproute2: a *permanent neighbour entry* with a MAC address that
no lab interface has (``BLACKHOLE_MAC``). IP packets to that address then leave with that
MAC; the bridge floods them as unknown unicast and every namespace's veth drops them,
since they are not for it. Nothing answers, nothing reports an error: a connect hangs and
an established connection goes silent, as when a network partitions (a ``blackhole``
route would fail sends at once with EINVAL instead, which no real partition does). Both
ends are told (``blind`` in each), so the partition is symmetric. ``see`` deletes the
entries: the next packet asks ARP again and finds the real MAC.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from typing import Iterable, List

from fleetd.lab.host import run

BLACKHOLE_MAC = "02:00:00:00:0f:0d"  # locally administered; no veth is given it


def veth(netns: str) -> str:
    """The bridge's end of a namespace's veth (the namespace's end is its ``eth0``)."""
    return f"{netns}-br"


def plug(bridge: str, netns: str, address: str, gateway: str) -> None:
    """A namespace with ``address``/24 on ``bridge`` (a default route through ``gateway``,
    the bridge's address, as the hosts have)."""
    run("ip", "netns", "add", netns)
    run("ip", "link", "add", veth(netns), "type", "veth", "peer", "name", "eth0",
        "netns", netns)
    run("ip", "link", "set", veth(netns), "master", bridge, "up")
    run("ip", "-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
    run("ip", "-n", netns, "link", "set", "eth0", "up")
    run("ip", "-n", netns, "link", "set", "lo", "up")
    run("ip", "-n", netns, "route", "add", "default", "via", gateway)


def pids(netns: str) -> List[int]:
    out = run("ip", "netns", "pids", netns, check=False)
    return [int(p) for p in out.stdout.split()] if out.returncode == 0 else []


def kill_all(netns: str, grace: float = 1.0) -> None:
    """SIGTERM everything in ``netns``, then SIGKILL what is left after ``grace``."""
    for sig, pause in ((signal.SIGTERM, grace), (signal.SIGKILL, 1.0)):
        found = pids(netns)
        if not found:
            return
        for pid in found:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + pause
        while time.monotonic() < deadline and pids(netns):
            time.sleep(0.02)


def unplug(netns: str) -> None:
    """Kill what runs in ``netns``, delete it and its veth; quiet about what is gone."""
    if os.path.exists(f"/run/netns/{netns}"):
        kill_all(netns)
        run("ip", "netns", "del", netns, check=False)
    run("ip", "link", "del", veth(netns), check=False)


def blind(netns: str, addresses: Iterable[str]) -> None:
    """From ``netns``, packets to ``addresses`` vanish (see the module docstring)."""
    for address in addresses:
        run("ip", "-n", netns, "neigh", "replace", address, "lladdr", BLACKHOLE_MAC,
            "dev", "eth0", "nud", "permanent")


def see(netns: str, addresses: Iterable[str]) -> None:
    """Undo ``blind``: ``netns`` reaches ``addresses`` again (ARP finds them)."""
    for address in addresses:
        run("ip", "-n", netns, "neigh", "del", address, "dev", "eth0", check=False)


def blinded(netns: str) -> List[str]:
    """The addresses ``netns`` is blind to."""
    out = run("ip", "-n", netns, "neigh", "show", "dev", "eth0", check=False).stdout
    return [ln.split()[0] for ln in out.splitlines() if BLACKHOLE_MAC in ln]


def linked(netns: str) -> bool:
    """Whether the bridge's end of the namespace's veth is up (``link``)."""
    out = run("ip", "-o", "link", "show", veth(netns), check=False).stdout
    return "state DOWN" not in out and ",UP" in out


def link(netns: str, up: bool) -> None:
    """The bridge's end of the namespace's veth up or down: down, the namespace reaches
    nothing on the bridge and nothing reaches it, as with a pulled cable: a connect gets
    no answer, or EHOSTUNREACH once ARP has given up."""
    run("ip", "link", "set", veth(netns), "up" if up else "down")
