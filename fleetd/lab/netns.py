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

Systemd hosts (``Lab.up(n, systemd=m)``, ``fleetctl lab up --hosts N --systemd M``): the
last M of the N hosts (``h{N-M+1}`` .. ``hN``; with ``--hosts 3 --systemd 1``, h3) are
real machines of their own rather than views of this one: the cached Debian rootfs
(fleetd.lab.systemd_host) under an overlay, booted with systemd as PID 1 in the host's
network namespace. Nothing of the machine's file system is visible there: no fleetd, no
venv, the guest's own python3 (3.11) and its own sshd, started by the guest's systemd
(ssh.service) on port 22 of the host's address, with root's authorized_keys = the lab
identity's public key and a host key that the lab's known_hosts file lists, as for the
other hosts. The rootfs has python3-psutil; with ``without_psutil=k``
(``--without-psutil K``) the last K systemd hosts have it purged (``dpkg --purge
python3-psutil`` in the booted guest), as on an old VM where the agent's bootstrap must
bring psutil itself.

The lab registers only the plain hosts with fleetd (their agent runs from this
machine's fleetd source, which they share). The agent reaches a systemd host only by
bootstrap: ``fleetctl machine add root@ADDRESS ...`` (lab.daemon.machine_add_argv says
exactly what), which pushes it over SSH. ``Lab.hosts()`` tells them apart (``Host.systemd``,
``Host.without_psutil``); fleetd metadata for them carries ``systemd=true``.

``lab down`` powers systemd hosts off (SIGRTMIN+4, systemd's own poweroff; PID 1 is
identified by pid and start time, recorded in lab.json), kills whatever is left in
their namespaces, removes their cgroup subtrees (recorded, plus a sweep by name for a
crashed run) and their overlay directories (under the host's directory).

An etcd cluster and several fleetd (``Lab.up(n, etcd=e, servers=m)``, ``fleetctl lab up
--etcd E --fleetd M``): each member and each fleetd in a namespace of its own on the same
bridge (fleetd.lab.etcd, fleetd.lab.servers, which say where); ``down`` stops them and
removes their namespaces, data and sockets first.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import os
import re
import shutil
import signal
import threading
import time
from typing import Any, Dict, List, Optional, Tuple, Union

from fleetd import procfs
from fleetd.lab import DEFAULT_LAB_DIR, sshd, systemd_host
from fleetd.lab.etcd import MAX_MEMBERS, Cluster
from fleetd.lab.host import AGENT_STATE_MOUNT, remove_agent_cgroups, run
from fleetd.lab.host import Host as Host  # re-exported: the lab's users know them from here
from fleetd.lab.host import LabError as LabError
from fleetd.lab.servers import MAX_SERVERS, Servers
from fleetd.lab.sshd import SSHD


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
        # the systemd hosts this Lab booted (their launchers are its children to reap)
        self._guests: Dict[str, systemd_host.SystemdHost] = {}
        self._lock = threading.Lock()
        saved = self._load()
        if saved:  # a lab that is up keeps the prefix and subnet it was made with
            self.prefix, self.subnet = saved["prefix"], saved["subnet"]
        self.etcd = Cluster(self)  # its members and servers, as lab.json records them
        self.servers = Servers(self, self.etcd)

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

    def host(self, i: int, saved: Optional[Dict[str, Any]] = None) -> Host:
        """Host number ``i``; whether it is a systemd host is in lab.json (or ``saved``)."""
        saved = self._load() if saved is None else saved
        name = f"h{i}"
        return Host(name=name, netns=f"{self.prefix}-{name}",
                    address=f"{self.subnet}.{10 + i}",
                    dir=os.path.join(self.dir, "hosts", name),
                    systemd=name in saved.get("systemd_hosts", []) if saved else False,
                    without_psutil=name in saved.get("without_psutil", []) if saved else False)

    def hosts(self) -> List[Host]:
        saved = self._load()
        return [self.host(i, saved) for i in range(1, int(saved["hosts"]) + 1)] if saved else []

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

    def save(self, **fields: Any) -> None:
        """Record ``fields`` in lab.json (for the etcd members and servers, by name)."""
        self._save(**fields)

    # --- checks ----------------------------------------------------------------------
    @staticmethod
    def require_root() -> None:
        if os.geteuid() != 0:
            raise LabError("the lab needs root: it creates network namespaces, a bridge and "
                           "mounts (run fleetctl lab as root, e.g. with sudo)")

    @classmethod
    def preflight(cls, sshd: bool = True) -> None:
        """Root and the tools; this machine's sshd only if a plain host will run it."""
        cls.require_root()
        if sshd and not os.access(SSHD, os.X_OK):
            raise LabError(f"{SSHD} not found: install openssh-server "
                           "(apt-get install -y openssh-server); each lab host runs its own sshd")
        for tool in ("ip", "nsenter", "unshare", "ssh-keygen"):
            if shutil.which(tool) is None:
                raise LabError(f"{tool} not found: install iproute2, util-linux and "
                               "openssh-client")

    # --- up ----------------------------------------------------------------------------
    def up(self, count: int, systemd: int = 0, without_psutil: int = 0, etcd: int = 0,
           servers: int = 0) -> List[Host]:
        """Bring up ``count`` hosts, the last ``systemd`` of them systemd hosts, the last
        ``without_psutil`` of those without python3-psutil (see the module docstring);
        then ``etcd`` etcd members and ``servers`` fleetd on them (on SQLite without)."""
        if not 0 <= etcd <= MAX_MEMBERS:
            raise LabError(f"--etcd {etcd}: want 0 to {MAX_MEMBERS}")
        if not 0 <= servers <= MAX_SERVERS:
            raise LabError(f"--fleetd {servers}: want 0 to {MAX_SERVERS}")
        if (etcd or servers) and count > 190:  # hosts .11 up, etcd .201 up, fleetd .211 up
            raise LabError(f"--hosts {count} with --etcd or --fleetd: want at most 190 "
                           "(the members and servers take .201 and up)")
        if not 1 <= count <= 200:
            raise LabError(f"--hosts {count}: want 1 to 200")
        if not 0 <= systemd <= count:
            raise LabError(f"--systemd {systemd}: want 0 to --hosts ({count})")
        if not 0 <= without_psutil <= systemd:
            raise LabError(f"--without-psutil {without_psutil}: want 0 to --systemd ({systemd})")
        self.preflight(sshd=count > systemd)  # systemd hosts have their own sshd
        if etcd:
            self.etcd.preflight()
        if self._load():
            raise LabError(f"a lab is already up in {self.dir} "
                           "(fleetctl lab status; fleetctl lab down)")
        if run("ip", "link", "show", self.bridge, check=False).returncode == 0:
            raise LabError(f"bridge {self.bridge} exists already: another lab with prefix "
                           f"{self.prefix!r}? (fleetctl lab down, or --prefix)")
        root = self._rootfs() if systemd else ""  # built once (~40 s), then cached
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        numbered = [f"h{i}" for i in range(1, count + 1)]
        self._save(prefix=self.prefix, subnet=self.subnet, hosts=count, created=time.time(),
                   systemd_hosts=numbered[count - systemd:],
                   without_psutil=numbered[count - without_psutil:] if without_psutil else [],
                   guests={})
        try:
            if not os.path.exists(self.identity):
                run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "fleet-lab",
                     "-f", self.identity)
            run("ip", "link", "add", self.bridge, "type", "bridge")
            run("ip", "addr", "add", f"{self.subnet}.1/24", "dev", self.bridge)
            run("ip", "link", "set", self.bridge, "up")
            os.makedirs(AGENT_STATE_MOUNT, exist_ok=True)  # the mount point in each host
            hosts = self.hosts()
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
                if not h.systemd:
                    sshd.start(h)
            self._boot_all([h for h in hosts if h.systemd], root)
            for h in hosts:
                sshd.wait(h)
            if etcd:
                self.etcd.up(etcd)
            if servers:
                self.servers.up(servers, self.etcd.registry if etcd else None)
        except BaseException:
            self.down()
            raise
        return hosts

    @staticmethod
    def _rootfs() -> str:
        try:
            return systemd_host.rootfs()
        except systemd_host.SystemdHostError as exc:
            raise LabError(f"the systemd hosts' root file system: {exc}") from None

    def _make_host(self, h: Host) -> str:
        run("ip", "netns", "add", h.netns)
        veth = f"{h.netns}-br"
        run("ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0",
             "netns", h.netns)
        run("ip", "link", "set", veth, "master", self.bridge, "up")
        run("ip", "-n", h.netns, "addr", "add", f"{h.address}/24", "dev", "eth0")
        run("ip", "-n", h.netns, "link", "set", "eth0", "up")
        run("ip", "-n", h.netns, "link", "set", "lo", "up")
        run("ip", "-n", h.netns, "route", "add", "default", "via", f"{self.subnet}.1")
        shutil.rmtree(h.dir, ignore_errors=True)
        etc_ssh = os.path.join(h.dir, "etc-ssh")
        os.makedirs(etc_ssh, mode=0o755)
        os.chmod(h.dir, 0o755)
        key = os.path.join(etc_ssh, "ssh_host_ed25519_key")
        run("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", h.name, "-f", key)
        if not h.systemd:  # a systemd host gets its ssh files in its overlay (_boot_all)
            os.makedirs(os.path.join(etc_ssh, "authorized_keys"), mode=0o755)
            os.makedirs(os.path.join(h.dir, "root"), mode=0o700)
            os.makedirs(h.state_dir, mode=0o700)
            shutil.copy(self.identity + ".pub",
                        os.path.join(etc_ssh, "authorized_keys", "root"))
            os.chmod(os.path.join(etc_ssh, "authorized_keys", "root"), 0o600)
            with open(os.path.join(etc_ssh, "sshd_config"), "w") as f:
                f.write(sshd.config(h.address))
        with open(key + ".pub") as f:
            algo, blob = f.read().split()[:2]
        return f"{h.address} {algo} {blob}\n"

    def _boot_all(self, hosts: List[Host], root: str) -> None:
        """Boot the systemd hosts in parallel (each waits on its own systemd), record each
        as soon as it is booted, so that ``down`` finds it even if another one fails."""
        if not hosts:
            return
        with concurrent.futures.ThreadPoolExecutor(len(hosts)) as pool:
            futures = [pool.submit(self._boot, h, root) for h in hosts]
            errors = [f.exception() for f in futures]
        for error in errors:
            if error is not None:
                raise error

    def _boot(self, h: Host, root: str) -> None:
        with open(os.path.join(h.dir, "etc-ssh", "ssh_host_ed25519_key"), "rb") as f:
            key = f.read()
        with open(os.path.join(h.dir, "etc-ssh", "ssh_host_ed25519_key.pub"), "rb") as f:
            pub = f.read()
        with open(self.identity + ".pub", "rb") as f:
            authorized = f.read()
        with open(os.path.join(h.dir, "hosts"), "rb") as f:
            etc_hosts = f.read()
        files: Dict[str, Tuple[Union[str, bytes], int]] = {
            systemd_host.HOST_KEY: (key, 0o600),
            systemd_host.HOST_KEY + ".pub": (pub, 0o644),
            "/root/.ssh/authorized_keys": (authorized, 0o600),
            "/etc/ssh/sshd_config.d/fleet-lab.conf": (sshd.GUEST_CONFIG, 0o644),
            "/etc/hosts": (etc_hosts, 0o644),
        }
        try:
            # named by its namespace: the cgroup subtree and overlay must not collide with
            # another lab's h3
            guest = systemd_host.boot(h.netns, h.netns, root=root, source=None,
                                      hostname=h.name, files=files, workdir_parent=h.dir)
        except systemd_host.SystemdHostError as exc:
            raise LabError(f"{h.name}: {exc}") from None
        with self._lock:
            self._guests[h.name] = guest
            self._save_guest(h.name, pid1=guest.pid1, pid1_start=guest.pid1_start,
                             cgroups=guest.cgroups, dir=guest.dir,
                             boot_seconds=round(guest.boot_seconds, 3), state=guest.state)
        if h.without_psutil:
            began = time.monotonic()
            out = guest.run(["dpkg", "--purge", "python3-psutil"], timeout=120)
            if out.returncode != 0:
                raise LabError(f"{h.name}: dpkg --purge python3-psutil: "
                               f"{out.stderr.strip() or out.stdout.strip()}")
            with self._lock:
                self._save_guest(h.name, psutil_purge_seconds=round(
                    time.monotonic() - began, 3))

    def _save_guest(self, name: str, **fields: Any) -> None:
        guests = dict(self.info().get("guests", {}))
        guests[name] = dict(guests.get(name, {}), **fields)
        self._save(guests=guests)

    # --- status ----------------------------------------------------------------------------
    def pids(self, h: Host) -> List[int]:
        out = run("ip", "netns", "pids", h.netns, check=False)
        return [int(p) for p in out.stdout.split()] if out.returncode == 0 else []

    def pid1(self, h: Host) -> Optional[int]:
        """A systemd host's PID 1 (as this machine numbers it), if it still runs."""
        guest = self.info().get("guests", {}).get(h.name)
        if not guest:
            return None
        pid: int = guest["pid1"]
        return pid if procfs.alive(pid, guest["pid1_start"]) else None

    def sshd_pid(self, h: Host) -> Optional[int]:
        if h.systemd:  # the guest's sshd is a child of its PID 1
            pid1 = self.pid1(h)
            for pid in self.pids(h) if pid1 else []:
                if procfs.ppid(pid) == pid1 and procfs.comm(pid) == "sshd":
                    return pid
            return None
        return self._pid_in(h, os.path.join(h.dir, "sshd.pid"))

    def agent_pid(self, h: Host) -> Optional[int]:
        if h.systemd:  # wherever the bootstrap put it, its default state dir is the guest's
            pid1 = self.pid1(h)
            if pid1 is None:
                return None
            path = f"/proc/{pid1}/root{AGENT_STATE_MOUNT}/agent.pid"
            return self._pid_in(h, path, guest=True)
        return self._pid_in(h, os.path.join(h.state_dir, "agent.pid"))

    def _pid_in(self, h: Host, path: str, guest: bool = False) -> Optional[int]:
        """The pid in the file ``path`` if that process is in ``h``'s namespace; a
        ``guest`` pid (numbered in a systemd host's PID namespace) is translated."""
        try:
            with open(path) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return None
        for mine in self.pids(h):
            if (procfs.nspid(mine) if guest else mine) == pid:
                return mine
        return None

    def status(self) -> List[Dict[str, Any]]:
        existing = set(run("ip", "netns", "list", check=False).stdout.split())
        rows = []
        for h in self.hosts():
            rows.append({"host": h.name, "address": h.address, "netns": h.netns,
                         "netns_up": h.netns in existing, "systemd": h.systemd,
                         "without_psutil": h.without_psutil,
                         "pid1": self.pid1(h) if h.systemd else None,
                         "sshd": self.sshd_pid(h),
                         "agent": self.agent_pid(h), "processes": len(self.pids(h))})
        return rows

    # --- down ---------------------------------------------------------------------------------
    def down(self) -> None:
        """Remove everything ``up`` made; safe to call on a half-made lab."""
        self.servers.down()  # before etcd: a fleetd that loses etcd would act on it
        self.etcd.down()
        saved = self._load() or {}
        fleetd_pid = saved.get("fleetd_pid")
        if isinstance(fleetd_pid, int):
            stop_process(fleetd_pid)
        # Every namespace of this prefix, not just lab.json's count: a crashed run may have
        # left hosts behind without a record of them.
        existing = set(run("ip", "netns", "list", check=False).stdout.split())
        numbers = set(range(1, int(saved.get("hosts", 0)) + 1))
        numbers |= {int(n[len(self.prefix) + 2:]) for n in existing
                    if re.fullmatch(rf"{self.prefix}-h\d+", n)}
        self._poweroff_guests(saved.get("guests", {}))
        for i in sorted(numbers):
            h = self.host(i, saved)
            if h.netns in existing:
                self._kill_all(h)
                run("ip", "netns", "del", h.netns, check=False)
            if not h.systemd:  # a systemd host's cgroups are its guest's: swept below
                remove_agent_cgroups(h.state_dir)
            run("ip", "link", "del", f"{h.netns}-br", check=False)
            if h.systemd or not saved:  # a crashed run's guest, found by its cgroups
                with contextlib.suppress(systemd_host.SystemdHostError):
                    systemd_host.sweep(h.netns)
        run("ip", "link", "del", self.bridge, check=False)
        shutil.rmtree(os.path.join(self.dir, "hosts"), ignore_errors=True)
        shutil.rmtree(self.fleetd_dir, ignore_errors=True)
        for name in ("lab.json", "known_hosts", "fleetd.log"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(self.dir, name))

    def _poweroff_guests(self, recorded: Dict[str, Dict[str, Any]]) -> None:
        """Power every systemd host off at once (each stops its units in order first):
        those this Lab booted through their launchers (reaped), the others by PID 1's
        recorded pid and start time; then their cgroup subtrees go."""
        guests = dict(self._guests)
        self._guests.clear()
        for guest in guests.values():
            with contextlib.suppress(ProcessLookupError):
                if guest.alive():
                    os.kill(guest.pid1, signal.SIGRTMIN + 4)
        others = {n: g for n, g in recorded.items() if n not in guests}
        for g in others.values():
            systemd_host.request_poweroff(g["pid1"], g["pid1_start"])
        for guest in guests.values():
            with contextlib.suppress(systemd_host.SystemdHostError):
                guest.poweroff()
        for g in others.values():
            with contextlib.suppress(systemd_host.SystemdHostError):
                systemd_host.poweroff_pid(g["pid1"], g["pid1_start"], g["cgroups"])

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
