"""The lab's etcd cluster: N members of Debian's etcd (3.4), each in a network namespace of
its own on the lab's bridge, so that a test can kill, stop, restart or cut off one member
as a machine of its own.

Member ``eK`` runs in namespace ``<prefix>-eK`` at ``<subnet>.(200+K)`` (the hosts use
.11 up), client port 2379 and peer port 2380 there, data dir ``<lab>/etcd/eK``, log
``<lab>/etcd/eK.log``. The cluster token is new for each lab run (``<prefix>-<random>``):
a member of another lab, or of an earlier run of this one, can never join it. A member
started again keeps its data dir and rejoins (etcd ignores ``--initial-cluster`` once it
has data).

Each member's pid and start time are in lab.json (``etcd``), so that ``lab status``, ``lab
down`` and the tests, other processes than the one that started it, find that very
process and never another that took its pid. The process that started a member reaps it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
import signal
import subprocess
import time
import urllib.request
import uuid
from typing import Any, Dict, List, Optional, Protocol

from fleetd import procfs
from fleetd.lab import wiring
from fleetd.lab.host import LabError

ETCD = "/usr/bin/etcd"
CLIENT_PORT = 2379
PEER_PORT = 2380
FIRST_OCTET = 200  # member K at .(200+K): above the hosts (.11 up) and below the servers
MAX_MEMBERS = 9
HEALTHY_TIMEOUT_S = 30.0


class Site(Protocol):
    """What a member needs of the lab (fleetd.lab.netns.Lab is one)."""

    dir: str
    prefix: str
    subnet: str

    @property
    def bridge(self) -> str: ...

    def info(self) -> Dict[str, Any]: ...

    def save(self, **fields: Any) -> None: ...


@dataclasses.dataclass(frozen=True)
class Member:
    name: str  # e1, e2, ...
    netns: str
    address: str
    dir: str  # data dir

    @property
    def client_url(self) -> str:
        return f"http://{self.address}:{CLIENT_PORT}"

    @property
    def peer_url(self) -> str:
        return f"http://{self.address}:{PEER_PORT}"

    @property
    def endpoint(self) -> str:
        """HOST:PORT, as fleetd's ``registry = "etcd://A,B,C"`` and etcdctl take it."""
        return f"{self.address}:{CLIENT_PORT}"

    @property
    def log(self) -> str:
        return self.dir + ".log"


class Cluster:
    """The lab's etcd members, as lab.json records them."""

    def __init__(self, site: Site) -> None:
        self.site = site
        self._procs: Dict[str, subprocess.Popen[bytes]] = {}  # started here: reaped here

    # --- what there is ---------------------------------------------------------------
    @property
    def base(self) -> str:
        return os.path.join(self.site.dir, "etcd")

    def _record(self) -> Dict[str, Any]:
        rec: Dict[str, Any] = self.site.info().get("etcd") or {}
        return rec

    def member(self, k: int) -> Member:
        name = f"e{k}"
        return Member(name=name, netns=f"{self.site.prefix}-{name}",
                      address=f"{self.site.subnet}.{FIRST_OCTET + k}",
                      dir=os.path.join(self.base, name))

    def members(self) -> List[Member]:
        return [self.member(k) for k in range(1, int(self._record().get("count", 0)) + 1)]

    def get(self, name: str) -> Member:
        for m in self.members():
            if m.name == name:
                return m
        raise LabError(f"no etcd member {name!r} in this lab "
                       f"(it has {', '.join(m.name for m in self.members()) or 'none'})")

    @property
    def endpoints(self) -> List[str]:
        return [m.endpoint for m in self.members()]

    @property
    def registry(self) -> str:
        """fleetd's ``registry`` setting for this cluster."""
        return "etcd://" + ",".join(self.endpoints)

    def pid(self, name: str) -> Optional[int]:
        """The member's etcd pid if that very process (pid and start time) still runs."""
        rec = self._record().get("members", {}).get(name) or {}
        pid, start = rec.get("pid"), rec.get("start", -1)
        return pid if isinstance(pid, int) and procfs.alive(pid, start) else None

    # --- up ------------------------------------------------------------------------------
    def up(self, count: int) -> List[Member]:
        """Make ``count`` members' namespaces, start them all, wait for a healthy cluster.
        The caller (Lab) tears down on failure."""
        if not 1 <= count <= MAX_MEMBERS:
            raise LabError(f"--etcd {count}: want 1 to {MAX_MEMBERS}")
        self.preflight()
        if self._record():
            raise LabError("this lab has an etcd cluster already")
        token = f"{self.site.prefix}-{uuid.uuid4().hex[:12]}"
        self.site.save(etcd={"count": count, "token": token, "members": {}})
        os.makedirs(self.base, mode=0o700, exist_ok=True)
        members = self.members()
        for m in members:
            wiring.plug(self.site.bridge, m.netns, m.address, f"{self.site.subnet}.1")
        for m in members:
            self.start(m.name)
        self.wait_healthy([m.name for m in members])
        return members

    @staticmethod
    def preflight() -> None:
        """Debian's etcd is there (before the lab makes anything)."""
        if not os.access(ETCD, os.X_OK):
            raise LabError(f"{ETCD} not found: install etcd-server (apt-get install -y "
                           "etcd-server etcd-client); the lab runs Debian's etcd")

    # --- one member ----------------------------------------------------------------------
    def start(self, name: str) -> int:
        """Start member ``name`` (again: it rejoins with its data dir); its pid."""
        m = self.get(name)
        if self.pid(name) is not None:
            raise LabError(f"etcd member {name} runs already (pid {self.pid(name)})")
        rec = self._record()
        cluster = ",".join(f"{o.name}={o.peer_url}" for o in self.members())
        argv = ["nsenter", f"--net=/run/netns/{m.netns}", "--", ETCD,
                "--name", m.name, "--data-dir", m.dir,
                "--listen-client-urls", m.client_url, "--advertise-client-urls", m.client_url,
                "--listen-peer-urls", m.peer_url, "--initial-advertise-peer-urls", m.peer_url,
                "--initial-cluster", cluster, "--initial-cluster-token", rec["token"],
                "--initial-cluster-state", "new", "--logger", "zap", "--log-outputs", "stderr"]
        with open(m.log, "ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    start_new_session=True)
        self._procs[name] = proc  # nsenter execs etcd: the same pid
        members = dict(rec.get("members", {}))
        members[name] = {"pid": proc.pid, "start": procfs.start_ticks(proc.pid)}
        self.site.save(etcd=dict(rec, members=members))
        return proc.pid

    def kill(self, name: str) -> None:
        """kill -9 the member (a crash: no goodbye to its peers)."""
        self._signal(name, signal.SIGKILL, 5.0)

    def stop(self, name: str) -> None:
        """SIGTERM, as an operator stops it; SIGKILL if it has not gone in 20 s."""
        if not self._signal(name, signal.SIGTERM, 20.0):
            self._signal(name, signal.SIGKILL, 5.0)

    def restart(self, name: str) -> int:
        self.stop(name)
        return self.start(name)

    def _signal(self, name: str, sig: int, wait: float) -> bool:
        """Send ``sig`` to the member's etcd; whether it is gone within ``wait``."""
        pid = self.pid(name)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while True:
            self._reap(name)
            if self.pid(name) is None:
                self._procs.pop(name, None)
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)

    def _reap(self, name: str) -> None:
        proc = self._procs.get(name)
        if proc is not None:
            proc.poll()

    # --- health --------------------------------------------------------------------------
    def healthy(self, name: str) -> bool:
        """etcd's /health at the member: it answers, and its cluster has a leader (quorum)."""
        try:
            with urllib.request.urlopen(f"{self.get(name).client_url}/health",
                                        timeout=2) as r:
                return b'"true"' in r.read()
        except OSError:
            return False

    def wait_healthy(self, names: Optional[List[str]] = None,
                     timeout: float = HEALTHY_TIMEOUT_S) -> None:
        """Until each running member (or each of ``names``) is healthy; LabError naming the
        ones that are not, and where their logs are."""
        wanted = names or [m.name for m in self.members() if self.pid(m.name) is not None]
        if not wanted:
            raise LabError(f"no etcd member runs; see their logs in {self.base}")
        deadline = time.monotonic() + timeout
        while True:
            sick = [n for n in wanted if not self.healthy(n)]
            if not sick:
                return
            for n in sick:
                if self.pid(n) is None:
                    raise LabError(f"etcd member {n} is not running; see {self.get(n).log}")
            if time.monotonic() > deadline:
                raise LabError(f"etcd members {', '.join(sick)} not healthy within "
                               f"{timeout:.0f}s; see their logs in {self.base}")
            time.sleep(0.1)

    # --- status and down ----------------------------------------------------------------
    def status(self) -> List[Dict[str, Any]]:
        rows = []
        for m in self.members():
            pid = self.pid(m.name)
            rows.append({"name": m.name, "netns": m.netns, "address": m.address,
                         "endpoint": m.endpoint, "pid": pid,
                         "healthy": pid is not None and self.healthy(m.name)})
        return rows

    def down(self) -> None:
        """Kill every member and remove its namespace and data; also the namespaces of
        ``<prefix>-eK`` that lab.json lost (a crashed run)."""
        for m in self.members():
            self.kill(m.name)
        for k in range(1, MAX_MEMBERS + 1):
            wiring.unplug(self.member(k).netns)
        for proc in self._procs.values():
            proc.poll()
        self._procs.clear()
        shutil.rmtree(self.base, ignore_errors=True)
        if self._record():
            self.site.save(etcd={})
