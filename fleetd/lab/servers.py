"""The lab's fleetd servers: M fleetd daemons, each in a network namespace of its own on the
lab's bridge, for the high-availability tests (several fleetd on one etcd cluster, one
leads): a test kills one, stops and starts it, or cuts it off from etcd while it still
reaches the hosts, and sees who leads.

``fleetd-K`` runs in namespace ``<prefix>-fK`` at ``<subnet>.(210+K)``, with the
configuration the lab writes to ``<lab>/servers/fleetd-K/fleetd.toml``: its name, the
lab's etcd cluster as its registry (when the lab has one; without, each fleetd has its
own SQLite registry in its state dir), its API on a Unix socket in the machine's
``/run/fleetd`` (the namespace has only its own network: fleetctl outside reaches the
socket) and on ``https://<address>:7070`` with the token in ``<lab>/servers/token`` (mode
0600, one for all of them, so that one token serves any), its certificate signed by the
lab's CA, ``<lab>/servers/ca.pem`` (fleetd serves TCP beyond loopback only over TLS).
Its state dir and log are under ``<lab>/servers/fleetd-K``. The default lab's sockets
are ``/run/fleetd/fleetd-K.sock``; another prefix's are
``/run/fleetd/<prefix>-fleetd-K.sock``, so that two labs never share one.

Cuts (fleetd.lab.wiring says how): ``cut`` parts a fleetd from every etcd member, both
ways, and leaves it on the bridge with the hosts (its SSH sessions go on); ``cut_all``
unplugs it from the bridge (its Unix socket still answers, so a test can ask it what it
believes); ``heal`` undoes both.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from fleetd import procfs
from fleetd.bootstrap.bundle import source_root
from fleetd.client import ApiError, Client
from fleetd.lab import wiring
from fleetd.lab.etcd import Cluster, Site
from fleetd.lab.host import LabError

if TYPE_CHECKING:  # imported where certificates are made: cryptography is the daemon
    # side's, and the VM guest's pytest imports the lab (labkit) with the guest's python3
    from fleetd.lab import certs

FIRST_OCTET = 210  # fleetd-K at .(210+K): above the etcd members' .201-.209
MAX_SERVERS = 9
API_PORT = 7070
SOCKET_DIR = "/run/fleetd"
DEFAULT_PREFIX = "fl"  # the default lab's sockets carry no prefix
ETCD_PREFIX = "/fleetd"
START_TIMEOUT_S = 20.0


@dataclasses.dataclass(frozen=True)
class Server:
    name: str  # fleetd-1, ...
    netns: str
    address: str
    dir: str
    socket: str

    @property
    def config(self) -> str:
        return os.path.join(self.dir, "fleetd.toml")

    @property
    def state_dir(self) -> str:
        return os.path.join(self.dir, "state")

    @property
    def log(self) -> str:
        return os.path.join(self.dir, "fleetd.log")

    @property
    def endpoint(self) -> str:
        return f"unix://{self.socket}"

    @property
    def listen(self) -> str:
        return f"{self.address}:{API_PORT}"


def _toml(value: str) -> str:
    """A TOML basic string (JSON's escapes are TOML's for what the lab writes)."""
    return json.dumps(value)


def config_text(s: Server, token_file: str, registry: Optional[str],
                tls: Optional[certs.Pair] = None) -> str:
    """``s``'s fleetd.toml; with ``registry`` (``etcd://A,B,C``) also its name among the
    servers and the etcd settings (without, today's single fleetd on SQLite)."""
    lines = [f"state_dir = {_toml(s.state_dir)}"]
    if registry:
        lines = [f"name = {_toml(s.name)}", f"registry = {_toml(registry)}", *lines,
                 "", "[etcd]", f"prefix = {_toml(ETCD_PREFIX)}"]
    lines += ["", "[api]", f"socket = {_toml(s.socket)}", f"listen = {_toml(s.listen)}",
              f"token_file = {_toml(token_file)}"]
    if tls is not None:
        lines += [f"tls_cert = {_toml(tls.cert)}", f"tls_key = {_toml(tls.key)}"]
    return "\n".join(lines) + "\n"


def role_of(name: str, health: Dict[str, Any], servers: Optional[Dict[str, Any]]) -> str:
    """``leader``, ``follower`` or ``?`` for fleetd ``name``, from what it says: first of
    itself, in ``/v1/health`` (``"role"``, or ``"leader"``: true/false or the leader's
    name), which is its own belief (a leader cut off from etcd may still hold it); else
    from ``/v1/servers`` if it has that route (``{"leader": NAME}``, or ``{"servers":
    [{"kind": "fleetd", "name", "leader" or "role"}]}``, fleetd.engine.roster's rows).
    ``?``: it says none of these (a fleetd before HA)."""
    for source in (health, servers or {}):
        for entry in source.get("servers") or []:
            if isinstance(entry, dict) and entry.get("name") == name \
                    and entry.get("kind", "fleetd") == "fleetd":
                if isinstance(entry.get("role"), str):
                    return str(entry["role"])
                if isinstance(entry.get("leader"), bool):
                    return "leader" if entry["leader"] else "follower"
        if isinstance(source.get("role"), str):
            return str(source["role"])
        leader = source.get("leader")
        if isinstance(leader, bool):
            return "leader" if leader else "follower"
        if isinstance(leader, str):
            return "leader" if leader == name else "follower"
    return "?"


class Servers:
    """The lab's fleetd servers, as lab.json records them (``servers``)."""

    def __init__(self, site: Site, etcd: Cluster) -> None:
        self.site = site
        self.etcd = etcd
        self._procs: Dict[str, subprocess.Popen[bytes]] = {}  # started here: reaped here

    # --- what there is -----------------------------------------------------------------
    @property
    def base(self) -> str:
        return os.path.join(self.site.dir, "servers")

    @property
    def token_file(self) -> str:
        return os.path.join(self.base, "token")

    def _record(self) -> Dict[str, Any]:
        rec: Dict[str, Any] = self.site.info().get("servers") or {}
        return rec

    def server(self, k: int) -> Server:
        name = f"fleetd-{k}"
        sock = f"{name}.sock" if self.site.prefix == DEFAULT_PREFIX else \
            f"{self.site.prefix}-{name}.sock"
        return Server(name=name, netns=f"{self.site.prefix}-f{k}",
                      address=f"{self.site.subnet}.{FIRST_OCTET + k}",
                      dir=os.path.join(self.base, name), socket=os.path.join(SOCKET_DIR, sock))

    def servers(self) -> List[Server]:
        return [self.server(k) for k in range(1, int(self._record().get("count", 0)) + 1)]

    def get(self, name: str) -> Server:
        for s in self.servers():
            if s.name == name:
                return s
        raise LabError(f"no fleetd server {name!r} in this lab "
                       f"(it has {', '.join(s.name for s in self.servers()) or 'none'})")

    @property
    def endpoint(self) -> str:
        """fleetctl's ``--endpoint`` for all of them (each request: the first that answers)."""
        return ",".join(s.endpoint for s in self.servers())

    @property
    def ca_file(self) -> str:
        """The lab's CA, which signed every fleetd's certificate (``--ca-file``)."""
        return os.path.join(self.base, "ca.pem")

    def token(self) -> str:
        with open(self.token_file) as f:
            return f.read().strip()

    def pid(self, name: str) -> Optional[int]:
        rec = self._record().get("members", {}).get(name) or {}
        pid, start = rec.get("pid"), rec.get("start", -1)
        return pid if isinstance(pid, int) and procfs.alive(pid, start) else None

    # --- up --------------------------------------------------------------------------------
    def up(self, count: int, registry: Optional[str]) -> List[Server]:
        """Namespaces, configs and a running fleetd for each of ``count`` servers, every
        one answering on its socket. The caller (Lab) tears down on failure."""
        if not 1 <= count <= MAX_SERVERS:
            raise LabError(f"--fleetd {count}: want 1 to {MAX_SERVERS}")
        if self._record():
            raise LabError("this lab has fleetd servers already")
        self.site.save(servers={"count": count, "registry": registry, "members": {}})
        os.makedirs(self.base, mode=0o700, exist_ok=True)
        fd = os.open(self.token_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(16) + "\n")
        servers = self.servers()
        from fleetd.lab import certs

        ca = certs.make_ca(self.base, f"fleetd lab {self.site.prefix} CA")
        for s in servers:
            wiring.plug(self.site.bridge, s.netns, s.address, f"{self.site.subnet}.1")
            os.makedirs(s.dir, mode=0o700)
            tls = certs.issue(ca, s.dir, "api", [s.address])
            with open(s.config, "w") as f:
                f.write(config_text(s, self.token_file, registry, tls))
        for s in servers:
            self.start(s.name, wait=False)
        for s in servers:
            self.wait_answering(s.name)
        return servers

    # --- one server ------------------------------------------------------------------------
    def start(self, name: str, wait: bool = True) -> int:
        """Start fleetd ``name`` (again) with its configuration; its pid. ``wait``: until
        it answers on its socket."""
        s = self.get(name)
        if self.pid(name) is not None:
            raise LabError(f"{name} runs already (pid {self.pid(name)})")
        os.makedirs(SOCKET_DIR, mode=0o755, exist_ok=True)
        argv = ["nsenter", f"--net=/run/netns/{s.netns}", "--", sys.executable,
                "-m", "fleetd.daemon", "--config", s.config]
        env = dict(os.environ, PYTHONPATH=source_root())
        with open(s.log, "ab") as log:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                    env=env, cwd=s.dir, start_new_session=True)
        self._procs[name] = proc  # nsenter execs python: the same pid
        rec = self._record()
        members = dict(rec.get("members", {}))
        members[name] = {"pid": proc.pid, "start": procfs.start_ticks(proc.pid)}
        self.site.save(servers=dict(rec, members=members))
        if wait:
            self.wait_answering(name)
        return proc.pid

    def answers(self, name: str) -> bool:
        """Whether fleetd ``name`` answers on its socket (any HTTP answer: a fleetd that
        says it is not ready yet is up)."""
        try:
            Client(self.get(name).endpoint).get("/v1/health", timeout=2)
            return True
        except ApiError as exc:
            return exc.status != 0

    def wait_answering(self, name: str, timeout: float = START_TIMEOUT_S) -> None:
        s = self.get(name)
        deadline = time.monotonic() + timeout
        while not self.answers(name):
            if self.pid(name) is None:
                raise LabError(f"{name} exited: {_tail(s.log)} (log {s.log})")
            if time.monotonic() > deadline:
                raise LabError(f"{name} did not answer on {s.socket} within {timeout:.0f}s; "
                               f"see {s.log}")
            time.sleep(0.05)

    def kill(self, name: str) -> None:
        """kill -9 (a crash: its socket file stays, as a crashed fleetd leaves it)."""
        self._signal(name, signal.SIGKILL, 5.0)

    def stop(self, name: str) -> None:
        """SIGTERM, as an operator stops it; SIGKILL if it has not gone in 15 s."""
        if not self._signal(name, signal.SIGTERM, 15.0):
            self._signal(name, signal.SIGKILL, 5.0)

    def _signal(self, name: str, sig: int, wait: float) -> bool:
        pid = self.pid(name)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while True:
            proc = self._procs.get(name)
            if proc is not None:
                proc.poll()
            if self.pid(name) is None:
                self._procs.pop(name, None)
                return True
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)

    # --- cuts ------------------------------------------------------------------------------
    def cut(self, name: str) -> None:
        """Part fleetd ``name`` from every etcd member, both ways; the hosts, the other
        servers and its socket it still reaches."""
        s = self.get(name)
        members = self.etcd.members()
        if not members:
            raise LabError("this lab has no etcd cluster to cut a fleetd from")
        wiring.blind(s.netns, [m.address for m in members])
        for m in members:
            wiring.blind(m.netns, [s.address])

    def cut_all(self, name: str) -> None:
        """Unplug fleetd ``name`` from the bridge: no etcd, no hosts, no other server."""
        wiring.link(self.get(name).netns, up=False)

    def heal(self, name: str) -> None:
        """Undo ``cut`` and ``cut_all``."""
        s = self.get(name)
        wiring.link(s.netns, up=True)
        members = self.etcd.members()
        wiring.see(s.netns, [m.address for m in members])
        for m in members:
            wiring.see(m.netns, [s.address])

    def cut_off(self, name: str) -> str:
        """``from everything`` (cut_all), ``from etcd`` (cut), or "" (not cut)."""
        s = self.get(name)
        if not os.path.exists(f"/run/netns/{s.netns}"):
            return ""
        if not wiring.linked(s.netns):
            return "from everything"
        return "from etcd" if wiring.blinded(s.netns) else ""

    # --- roles, status, down ---------------------------------------------------------------
    def role(self, name: str) -> str:
        """``leader``, ``follower``, ``?`` (it does not say: role_of) or ``down`` (no
        answer on its socket)."""
        client = Client(self.get(name).endpoint)
        try:
            health = client.get("/v1/health", timeout=2)
        except ApiError:
            return "down"
        role = role_of(name, health, None)
        if role != "?":  # /v1/servers may wait on etcd (a cut fleetd's for its timeout)
            return role
        try:
            servers: Optional[Dict[str, Any]] = client.get("/v1/servers", timeout=2)
        except ApiError:  # a fleetd without the route (404), or not ready
            servers = None
        return role_of(name, health, servers)

    def leaders(self) -> List[str]:
        """The servers that say they lead (one, when all is well)."""
        return [s.name for s in self.servers() if self.role(s.name) == "leader"]

    def status(self) -> List[Dict[str, Any]]:
        rows = []
        for s in self.servers():
            pid = self.pid(s.name)
            rows.append({"name": s.name, "netns": s.netns, "address": s.address,
                         "socket": s.socket, "pid": pid,
                         "role": self.role(s.name) if pid is not None else "down",
                         "cut": self.cut_off(s.name)})
        return rows

    def down(self) -> None:
        """Stop every server; remove its namespace, socket, state and log; also the
        namespaces ``<prefix>-fK`` and sockets that lab.json lost (a crashed run)."""
        for s in self.servers():
            self.stop(s.name)
        for k in range(1, MAX_SERVERS + 1):
            s = self.server(k)
            wiring.unplug(s.netns)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(s.socket)
        for proc in self._procs.values():
            proc.poll()
        self._procs.clear()
        shutil.rmtree(self.base, ignore_errors=True)
        if self._record():
            self.site.save(servers={})


def _tail(path: str, lines: int = 3) -> str:
    """The last lines of a log, for an error message."""
    try:
        with open(path, errors="replace") as f:
            return " | ".join(ln.strip() for ln in f.read().splitlines()[-lines:])
    except OSError:
        return "(no log)"
