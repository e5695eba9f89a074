"""The local multi-host lab: one network namespace per host, each with its own sshd.

Each host has its own address on a private bridge, its own hostname (UTS namespace), and
its own mount namespace where ``/etc/ssh`` (host key, authorized keys), ``/root``, ``/run``
and the agent's state directory ``/var/lib/fleet-agent`` are its own. Everything else is
the machine's file system, so the agent and Python are already there: a lab host is a
cheap stand-in for a VM that fleetd reaches only through SSH.

Namespaces are entered with ``nsenter --net`` + ``unshare --mount --uts``, not
``ip netns exec``, which remounts /sys and hides the cgroup hierarchies from the host.
Host keys go into one known_hosts file that fleetd checks strictly.

Teardown kills every process in each namespace (sshd, agents, the programs they run),
deletes the namespaces (and with them the veths) and the bridge. Mounts live only in
the hosts' mount namespaces, which vanish with their last process.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from typing import Any, Dict, List, Optional

SSHD = "/usr/sbin/sshd"
AGENT_STATE_MOUNT = "/var/lib/fleet-agent"
DEFAULT_LAB_DIR = "/var/lib/fleet-lab"


class LabError(Exception):
    """Something the user has to fix before the lab can run; the message says what."""


@dataclasses.dataclass(frozen=True)
class Host:
    name: str  # h1, h2, ...
    netns: str
    address: str
    dir: str

    @property
    def state_dir(self) -> str:
        return os.path.join(self.dir, "agent")


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise LabError(f"{' '.join(argv)}: {proc.stderr.strip() or f'exit {proc.returncode}'}")
    return proc


class Lab:
    def __init__(self, lab_dir: str = DEFAULT_LAB_DIR, prefix: str = "fl",
                 subnet: str = "10.77.0") -> None:
        if not prefix.isalnum() or len(prefix) > 6:
            raise LabError(f"lab prefix {prefix!r}: at most 6 letters or digits")
        octets = subnet.split(".")
        if len(octets) != 3 or not all(o.isdigit() and int(o) < 256 for o in octets):
            raise LabError(f"lab subnet {subnet!r}: want the first three octets, like 10.77.0")
        self.dir = os.path.abspath(lab_dir)
        self.prefix = prefix
        self.subnet = subnet
        saved = self._load()
        if saved:  # a lab that is up keeps the prefix and subnet it was made with
            self.prefix, self.subnet = saved["prefix"], saved["subnet"]

    # --- paths ---------------------------------------------------------------------
    @property
    def bridge(self) -> str:
        return f"{self.prefix}-br0"

    @property
    def identity(self) -> str:
        return os.path.join(self.dir, "id_lab")

    @property
    def known_hosts(self) -> str:
        return os.path.join(self.dir, "known_hosts")

    @property
    def fleetd_dir(self) -> str:
        return os.path.join(self.dir, "fleetd")

    def host(self, i: int) -> Host:
        return Host(name=f"h{i}", netns=f"{self.prefix}-h{i}",
                    address=f"{self.subnet}.{10 + i}",
                    dir=os.path.join(self.dir, "hosts", f"h{i}"))

    def hosts(self) -> List[Host]:
        saved = self._load()
        return [self.host(i) for i in range(1, int(saved["hosts"]) + 1)] if saved else []

    def _load(self) -> Optional[Dict[str, Any]]:
        try:
            with open(os.path.join(self.dir, "lab.json")) as f:
                data: Dict[str, Any] = json.load(f)
                return data
        except (OSError, ValueError):  # unreadable (not root?) is for preflight to say
            return None

    def _save(self, **fields: Any) -> None:
        data = self._load() or {}
        data.update(fields)
        with open(os.path.join(self.dir, "lab.json"), "w") as f:
            json.dump(data, f, indent=2)

    def info(self) -> Dict[str, Any]:
        return self._load() or {}

    # --- checks ----------------------------------------------------------------------
    @staticmethod
    def require_root() -> None:
        if os.geteuid() != 0:
            raise LabError("the lab needs root: it creates network namespaces, a bridge and "
                           "mounts (run fleetctl lab as root, e.g. with sudo)")

    @classmethod
    def preflight(cls) -> None:
        cls.require_root()
        if not os.access(SSHD, os.X_OK):
            raise LabError(f"{SSHD} not found: install openssh-server "
                           "(apt-get install -y openssh-server); each lab host runs its own sshd")
        for tool in ("ip", "nsenter", "unshare", "ssh-keygen"):
            if shutil.which(tool) is None:
                raise LabError(f"{tool} not found: install iproute2, util-linux and "
                               "openssh-client")

    # --- up ----------------------------------------------------------------------------
    def up(self, count: int) -> List[Host]:
        if not 1 <= count <= 200:
            raise LabError(f"--hosts {count}: want 1 to 200")
        self.preflight()
        if self._load():
            raise LabError(f"a lab is already up in {self.dir} "
                           "(fleetctl lab status; fleetctl lab down)")
        if _run("ip", "link", "show", self.bridge, check=False).returncode == 0:
            raise LabError(f"bridge {self.bridge} exists already: another lab with prefix "
                           f"{self.prefix!r}? (fleetctl lab down, or --prefix)")
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        self._save(prefix=self.prefix, subnet=self.subnet, hosts=count, created=time.time())
        try:
            if not os.path.exists(self.identity):
                _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fleet-lab",
                     "-f", self.identity)
            _run("ip", "link", "add", self.bridge, "type", "bridge")
            _run("ip", "addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
            _run("ip", "link", "set", self.bridge, "up")
            os.makedirs(AGENT_STATE_MOUNT, exist_ok=True)  # the mount point in each host
            hosts = [self.host(i) for i in range(1, count + 1)]
            known = []
            for h in hosts:
                known.append(self._make_host(h))
            with open(self.known_hosts, "w") as f:
                f.write("".join(known))
            # Each host resolves every lab host by name, as VMs on a network would: a
            # program that looks its own name up (http.server does) must not wait on DNS.
            names = "".join(f"{h.address} {h.name}\n" for h in hosts)
            for h in hosts:
                with open(os.path.join(h.dir, "hosts"), "w") as f:
                    f.write(f"127.0.0.1 localhost\n::1 localhost ip6-localhost\n{names}")
            for h in hosts:
                self._start_sshd(h)
            for h in hosts:
                self._wait_sshd(h)
        except BaseException:
            self.down()
            raise
        return hosts

    def _make_host(self, h: Host) -> str:
        _run("ip", "netns", "add", h.netns)
        veth = f"{h.netns}-br"
        _run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0",
             "netns", h.netns)
        _run("ip", "link", "set", veth, "master", self.bridge, "up")
        _run("ip", "-n", h.netns, "addr", "add", f"{h.address}/24", "dev", "eth0")
        _run("ip", "-n", h.netns, "link", "set", "eth0", "up")
        _run("ip", "-n", h.netns, "link", "set", "lo", "up")
        _run("ip", "-n", h.netns, "route", "add", "default", "via", f"{self.subnet}.1")
        shutil.rmtree(h.dir, ignore_errors=True)
        etc_ssh = os.path.join(h.dir, "etc-ssh")
        os.makedirs(os.path.join(etc_ssh, "authorized_keys"), mode=0o755)
        os.makedirs(os.path.join(h.dir, "root"), mode=0o700)
        os.makedirs(h.state_dir, mode=0o700)
        os.chmod(h.dir, 0o755)
        key = os.path.join(etc_ssh, "ssh_host_ed25519_key")
        _run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", h.name, "-f", key)
        shutil.copy(self.identity + ".pub", os.path.join(etc_ssh, "authorized_keys", "root"))
        os.chmod(os.path.join(etc_ssh, "authorized_keys", "root"), 0o600)
        with open(os.path.join(etc_ssh, "sshd_config"), "w") as f:
            f.write(_SSHD_CONFIG.format(address=h.address))
        with open(key + ".pub") as f:
            algo, blob = f.read().split()[:2]
        return f"{h.address} {algo} {blob}\n"

    def _start_sshd(self, h: Host) -> None:
        script = (
            f"hostname {h.name} && "
            "mount -t tmpfs -o mode=755 tmpfs /run && mkdir -m 755 /run/sshd && "
            f"mount --bind {h.dir}/etc-ssh /etc/ssh && "
            f"mount --bind {h.dir}/root /root && "
            f"mount --bind {h.dir}/hosts /etc/hosts && "
            f"mount --bind {h.state_dir} {AGENT_STATE_MOUNT} && "
            f"echo $$ > {h.dir}/sshd.pid && "
            f"exec {SSHD} -D -e -f /etc/ssh/sshd_config"
        )
        with open(os.path.join(h.dir, "sshd.log"), "ab") as log:
            # setsid -f: sshd is nobody's child here, so nothing waits to reap it
            subprocess.run(
                ["setsid", "-f", "nsenter", f"--net=/run/netns/{h.netns}", "unshare",
                 "--mount", "--uts", "--propagation", "private", "sh", "-c", script],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, check=True,
            )

    def _wait_sshd(self, h: Host, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:  # the bridge routes the machine to every host's address
                socket.create_connection((h.address, 22), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.01)
        with open(os.path.join(h.dir, "sshd.log"), errors="replace") as f:
            tail = f.read()[-1000:]
        raise LabError(f"sshd of {h.name} did not listen on {h.address}:22 within "
                       f"{timeout:.0f}s: {tail}")

    # --- status ----------------------------------------------------------------------------
    def pids(self, h: Host) -> List[int]:
        out = _run("ip", "netns", "pids", h.netns, check=False)
        return [int(p) for p in out.stdout.split()] if out.returncode == 0 else []

    def sshd_pid(self, h: Host) -> Optional[int]:
        try:
            with open(os.path.join(h.dir, "sshd.pid")) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return None
        return pid if pid in self.pids(h) else None

    def agent_pid(self, h: Host) -> Optional[int]:
        try:
            with open(os.path.join(h.state_dir, "agent.pid")) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return None
        return pid if pid in self.pids(h) else None

    def status(self) -> List[Dict[str, Any]]:
        existing = set(_run("ip", "netns", "list", check=False).stdout.split())
        rows = []
        for h in self.hosts():
            rows.append({"host": h.name, "address": h.address, "netns": h.netns,
                         "netns_up": h.netns in existing, "sshd": self.sshd_pid(h),
                         "agent": self.agent_pid(h), "processes": len(self.pids(h))})
        return rows

    # --- down ---------------------------------------------------------------------------------
    def down(self) -> None:
        """Remove everything ``up`` made; safe to call on a half-made lab."""
        saved = self._load() or {}
        fleetd_pid = saved.get("fleetd_pid")
        if isinstance(fleetd_pid, int):
            stop_process(fleetd_pid)
        # Every namespace of this prefix, not just lab.json's count: a crashed run may have
        # left hosts behind without a record of them.
        existing = set(_run("ip", "netns", "list", check=False).stdout.split())
        numbers = set(range(1, int(saved.get("hosts", 0)) + 1))
        numbers |= {int(n[len(self.prefix) + 2:]) for n in existing
                    if re.fullmatch(rf"{self.prefix}-h\d+", n)}
        for i in sorted(numbers):
            h = self.host(i)
            if h.netns in existing:
                self._kill_all(h)
                _run("ip", "netns", "del", h.netns, check=False)
            _run("ip", "link", "del", f"{h.netns}-br", check=False)
        _run("ip", "link", "del", self.bridge, check=False)
        shutil.rmtree(os.path.join(self.dir, "hosts"), ignore_errors=True)
        shutil.rmtree(self.fleetd_dir, ignore_errors=True)
        for name in ("lab.json", "known_hosts", "fleetd.log"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.dir, name))

    def _kill_all(self, h: Host) -> None:
        for sig, pause in ((signal.SIGTERM, 0.3), (signal.SIGKILL, 0.1)):
            pids = self.pids(h)
            if not pids:
                return
            for pid in pids:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, sig)
            deadline = time.monotonic() + pause
            while time.monotonic() < deadline and self.pids(h):
                time.sleep(0.02)


def stop_process(pid: int, timeout: float = 10.0) -> None:
    """SIGTERM, wait, SIGKILL: for the fleetd a lab started."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        try:
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return
        except ChildProcessError:
            pass
        time.sleep(0.02)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)


_SSHD_CONFIG = """\
# fleet lab host: key-only root login, on this host's own address and loopback
Port 22
ListenAddress {address}
ListenAddress 127.0.0.1
HostKey /etc/ssh/ssh_host_ed25519_key
AuthorizedKeysFile /etc/ssh/authorized_keys/%u
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
PidFile /run/sshd.pid
MaxStartups 100:30:200
"""
