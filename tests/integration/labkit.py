"""Helpers for the lab tests: a real fleetd process, the real fleetctl, host probes."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence

import agentkit
import pytest

from fleetd import procfs
from fleetd.client import ApiError, Client
from fleetd.lab.daemon import agent_command, register, wait_up
from fleetd.lab.netns import Host, Lab
from fleetd.procfs import cmdline as cmdline  # the command line, arguments joined by spaces
from fleetd.testing.waiting import alive as alive  # the tests' one meaning of alive

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)
FLEETCTL = os.path.join(BIN, "fleetctl")


# parametrize a test of the ``fleet``/``cluster`` fixtures with this (indirect) to run it
# on both registries: SQLite, and a real one-member etcd on loopback (marked ``etcd``)
REGISTRIES = ["sqlite", pytest.param("etcd", marks=pytest.mark.etcd)]
ON_BOTH_REGISTRIES = pytest.mark.parametrize("registry", REGISTRIES, indirect=True)


def wait_for(what: str, predicate: Callable[[], Any], timeout: float = 10.0) -> Any:
    """Poll until ``predicate()`` is truthy; fail naming ``what`` (not a timing assertion:
    the timeout only bounds how long a broken build hangs)."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.02)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def netns_inode(h: Host) -> int:
    return os.stat(f"/run/netns/{h.netns}").st_ino


def pid_netns_inode(pid: int) -> Optional[int]:
    return procfs.namespace(pid, "net")


def reset_host(lab: Lab, h: Host) -> None:
    """Back to a host with only its sshd listener: no agent, no programs, no state."""
    keep = lab.sshd_pid(h)
    for pid in lab.pids(h):
        if pid != keep:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    wait_for(f"{h.name} to be empty", lambda: set(lab.pids(h)) <= {keep}, 5)
    agentkit.clean(h.state_dir)  # the agent's unit cgroups (shared by all lab hosts' kernel)
    for entry in os.listdir(h.state_dir):
        path = os.path.join(h.state_dir, entry)
        if os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)


class Fleet:
    """A real fleetd process and the real fleetctl, for one test (or one bench run)."""

    def __init__(self, lab: Optional[Lab], workdir: str, config: Optional[str] = None,
                 args: Sequence[str] = (), registry: Optional[str] = None) -> None:
        """``args``: more of fleetd's command-line options (``--log-level warning``).
        ``registry``: an ``etcd://HOST:PORT,...`` URL for fleetd's registry (written into
        a config of its own in ``workdir``; not with ``config``); None: SQLite in its
        state directory."""
        self.lab = lab
        self.state_dir = os.path.join(workdir, "fleetd")
        self.socket = os.path.join(workdir, "fleetd.sock")
        self.log = os.path.join(workdir, "fleetd.log")
        self.registry = registry
        if registry is not None:
            assert config is None, "a Fleet on etcd writes its own config"
            config = os.path.join(workdir, "fleetd.toml")
            with open(config, "w") as f:
                f.write(f'name = "fleetd-test"\nregistry = "{registry}"\n')
        self.config = config
        self.args = list(args)
        self.endpoint = f"unix://{self.socket}"
        self.api = Client(self.endpoint)
        self.proc: Optional[subprocess.Popen[bytes]] = None

    def start(self) -> None:
        argv = [sys.executable, "-m", "fleetd.daemon", "--state-dir", self.state_dir,
                "--socket", self.socket]
        if self.config:
            argv += ["--config", self.config]
        argv += self.args
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        wait_for("fleetd to answer", self._healthy, 15)

    def _healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            with open(self.log) as f:
                pytest.fail(f"fleetd exited {self.proc.returncode}: {f.read()[-2000:]}")
        try:
            self.api.get("/v1/health", timeout=1)
            return True
        except ApiError:
            return False

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        """SIGTERM, as an operator stops it; a fleetd that does not exit fails the test."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGUSR1)  # its tasks' stacks, into the log
                time.sleep(0.5)
                self.proc.kill()
                self.proc.wait()
                pytest.fail(f"fleetd did not stop within 15s of SIGTERM:\n{self.dump()}")

    def ctl(self, *args: str, check: bool = True, timeout: float = 60
            ) -> subprocess.CompletedProcess[str]:
        env = dict(os.environ, FLEETCTL_ENDPOINT=self.endpoint)
        proc = subprocess.run([FLEETCTL, *args], capture_output=True, text=True, env=env,
                              timeout=timeout, cwd=ROOT)
        if check and proc.returncode != 0:
            pytest.fail(f"fleetctl {' '.join(args)} exited {proc.returncode}:\n"
                        f"{proc.stdout}{proc.stderr}")
        return proc

    def add(self, h: Host, known_hosts: Optional[str] = None, check: bool = True
            ) -> subprocess.CompletedProcess[str]:
        assert self.lab is not None
        return self.ctl("machine", "add", f"root@{h.address}", "--name", h.name,
                        "--metadata", f"hostname={h.name},lab={self.lab.prefix}",
                        "--identity", self.lab.identity,
                        "--known-hosts", known_hosts or self.lab.known_hosts,
                        "--agent-command", agent_command(), check=check)

    def units(self) -> List[Dict[str, Any]]:
        return list(self.api.get("/v1/units")["units"])

    def unit(self, name: str) -> Optional[Dict[str, Any]]:
        return next((u for u in self.units() if u["unit"] == name), None)

    def unit_files(self) -> List[Dict[str, Any]]:
        return list(self.api.get("/v1/unit-files")["unit_files"])

    def machines(self) -> Dict[str, Dict[str, Any]]:
        return {m["name"]: m for m in self.api.get("/v1/machines")["machines"]}

    def heard_since(self, t0: float) -> bool:
        """Every machine up, and its agent heard by this fleetd at or after ``t0`` (not a
        state left in the registry by an earlier fleetd)."""
        return all(m["state"] == "up" and (m["last_seen"] or 0) >= t0
                   for m in self.machines().values())

    def placed(self) -> Dict[str, str]:
        """unit -> machine of every unit running there on its current content."""
        return {u["unit"]: u["machine"] for u in self.units()
                if u["state"] == "running" and u["current"]}

    def programs(self) -> Dict[str, Dict[int, str]]:
        """Live processes of units on this lab's hosts: unit -> {pid: host}, from each
        process's FLEET_UNIT= (the lab hosts share this machine's kernel; another test
        run's lab, which may run units of the same names, is left out)."""
        assert self.lab is not None
        ours = {netns_inode(h): h.name for h in self.lab.hosts()}
        found: Dict[str, Dict[int, str]] = {}
        for unit, pids in agentkit.unit_processes().items():
            for pid in pids:
                host = ours.get(pid_netns_inode(pid) or 0)
                if host is not None:
                    found.setdefault(unit, {})[pid] = host
        return found

    def copies(self, unit: str) -> List[int]:
        """Live processes of ``unit`` on this lab's hosts."""
        return sorted(self.programs().get(unit, {}))

    def host(self, name: str) -> Host:
        assert self.lab is not None
        return next(h for h in self.lab.hosts() if h.name == name)

    def dump(self) -> str:
        with open(self.log, errors="replace") as f:
            return f.read()[-4000:]


# --- the high-availability lab: an etcd cluster and several fleetd ----------------------
class HaLab:
    """A lab with an etcd cluster and several fleetd, each in a namespace of its own
    (fleetd.lab.etcd, fleetd.lab.servers), for the HA tests: who leads, kill -9, stop and
    start of members and servers, cutting a fleetd off from etcd (or from everything).
    ``ha_lab`` makes one and takes it down."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab

    @property
    def endpoints(self) -> List[str]:
        """Each fleetd's Unix socket endpoint, fleetd-1 first."""
        return [s.endpoint for s in self.lab.servers.servers()]

    @property
    def endpoint(self) -> str:
        """fleetctl's --endpoint for all of them."""
        return self.lab.servers.endpoint

    @property
    def etcd_endpoints(self) -> List[str]:
        """HOST:PORT of each etcd member (etcdctl --endpoints, fleetd's registry)."""
        return self.lab.etcd.endpoints

    @property
    def token(self) -> str:
        return self.lab.servers.token()

    def api(self, name: Optional[str] = None) -> Client:
        """A client of fleetd ``name``, or of all of them (the first that answers)."""
        return Client(self.lab.servers.get(name).endpoint if name else self.endpoint)

    def ctl(self, *args: str, check: bool = True, timeout: float = 60
            ) -> subprocess.CompletedProcess[str]:
        """The real fleetctl with every fleetd's socket as its endpoint."""
        env = dict(os.environ, FLEETCTL_ENDPOINT=self.endpoint)
        proc = subprocess.run([FLEETCTL, *args], capture_output=True, text=True, env=env,
                              timeout=timeout, cwd=ROOT)
        if check and proc.returncode != 0:
            pytest.fail(f"fleetctl {' '.join(args)} exited {proc.returncode}:\n"
                        f"{proc.stdout}{proc.stderr}")
        return proc

    def etcdctl(self, *args: str, endpoints: Optional[Sequence[str]] = None
                ) -> subprocess.CompletedProcess[str]:
        """etcdctl (v3 API) against all members, or ``endpoints``."""
        return subprocess.run(
            ["etcdctl", "--endpoints", ",".join(endpoints or self.etcd_endpoints),
             "--dial-timeout", "3s", "--command-timeout", "5s", *args],
            capture_output=True, text=True, env=dict(os.environ, ETCDCTL_API="3"), timeout=30)

    # etcd members: e1, e2, ...
    def kill_etcd(self, name: str) -> None:
        self.lab.etcd.kill(name)

    def stop_etcd(self, name: str) -> None:
        self.lab.etcd.stop(name)

    def start_etcd(self, name: str) -> None:
        """Start the member again (it rejoins with its data) and wait for it healthy."""
        self.lab.etcd.start(name)
        self.lab.etcd.wait_healthy([name])

    def etcd_pid(self, name: str) -> Optional[int]:
        return self.lab.etcd.pid(name)

    # fleetd servers: fleetd-1, fleetd-2, ...
    def kill_fleetd(self, name: str) -> None:
        self.lab.servers.kill(name)

    def stop_fleetd(self, name: str) -> None:
        self.lab.servers.stop(name)

    def start_fleetd(self, name: str) -> None:
        """Start it again with the same configuration; wait until it answers."""
        self.lab.servers.start(name)

    def fleetd_pid(self, name: str) -> Optional[int]:
        return self.lab.servers.pid(name)

    def cut(self, name: str) -> None:
        """Part fleetd ``name`` from etcd (both ways); it still reaches the hosts."""
        self.lab.servers.cut(name)

    def cut_all(self, name: str) -> None:
        """Unplug fleetd ``name`` from the lab's network (its socket still answers)."""
        self.lab.servers.cut_all(name)

    def heal(self, name: str) -> None:
        self.lab.servers.heal(name)

    def role(self, name: str) -> str:
        """What fleetd ``name`` says it is: leader, follower, ? (it does not say), down."""
        return self.lab.servers.role(name)

    def leaders(self) -> List[str]:
        return self.lab.servers.leaders()

    def wait_leader(self, timeout: float = 30.0, besides: Sequence[str] = ()) -> str:
        """The one fleetd that says it leads (not one of ``besides``), once there is one."""
        def one() -> Optional[str]:
            found = [n for n in self.leaders() if n not in besides]
            return found[0] if len(found) == 1 else None
        return str(wait_for("one fleetd to lead", one, timeout))

    def netns_of(self, name: str) -> str:
        """The namespace of an etcd member (eK) or fleetd server (fleetd-K)."""
        if name.startswith("fleetd-"):
            return self.lab.servers.get(name).netns
        return self.lab.etcd.get(name).netns


def ha_leftovers(lab: Lab) -> List[str]:
    """What a lab with etcd and servers must not leave: its namespaces, links, sockets,
    processes started from its directory, its etcd and servers directories."""
    found: List[str] = []
    netns_list = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    found += [n for n in netns_list.split() if n.startswith(f"{lab.prefix}-")]
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout
    found += [ln.split(":")[1].strip() for ln in links.splitlines()
              if ln.split(":")[1].strip().startswith(f"{lab.prefix}-")]
    found += [s.socket for s in (lab.servers.server(k) for k in range(1, 10))
              if os.path.exists(s.socket)]
    for pid in (int(d) for d in os.listdir("/proc") if d.isdigit()):
        if pid != os.getpid() and lab.dir in procfs.cmdline(pid):
            found.append(f"pid {pid}: {procfs.cmdline(pid)[:120]}")
    found += [p for p in (lab.etcd.base, lab.servers.base) if os.path.exists(p)]
    return found


def fleetd_takes_etcd() -> bool:
    """Whether this fleetd's configuration takes ``registry = "etcd://..."`` (issue 12's
    daemon side): until it does, a fleetd on the lab's etcd refuses to start."""
    from fleetd.daemon.config import ConfigError, load

    with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
        f.write('name = "probe"\nregistry = "etcd://127.0.0.1:2379"\n')
        f.flush()
        try:
            load(f.name)
        except ConfigError:
            return False
    return True


@contextlib.contextmanager
def lab_slot(prefix: str) -> Iterator[None]:
    """Hold the machine-wide lock of lab prefix ``prefix`` (waiting for it): two test runs
    that use one prefix take turns instead of sweeping each other's namespaces."""
    fd = os.open(f"/run/fleetd-test-lab-{prefix}.lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


@contextlib.contextmanager
def ha_lab(base: str, hosts: int = 3, etcd: int = 3, fleetd: int = 3, shared: bool = True,
           prefix: str = "fh", subnet: str = "10.79.0") -> Iterator[HaLab]:
    """A lab under ``base`` with ``hosts`` hosts, an etcd cluster of ``etcd`` members and
    ``fleetd`` fleetd servers on it (``shared`` False: each on its own SQLite registry,
    which needs no HA in fleetd), the plain hosts registered through them and up.
    Afterwards it is taken down, and the test fails if anything of it is left. Holds
    ``prefix``'s lab_slot throughout."""
    with lab_slot(prefix):
        lab = Lab(os.path.join(base, "lab"), prefix=prefix, subnet=subnet)
        lab.down()  # what a crashed run of this slot left
        try:
            hs = lab.up(hosts, etcd=etcd)
            if fleetd:
                lab.servers.up(fleetd, lab.etcd.registry if shared and etcd else None)
                client = Client(lab.servers.endpoint)
                register(lab, client, hs)
                wait_up(client, [h.name for h in hs if not h.systemd])
            yield HaLab(lab)
        finally:
            lab.down()
        left = ha_leftovers(lab)
        assert left == [], f"the HA lab left behind: {left}"


def need_systemd_hosts() -> None:
    """Fail (never skip: a skipped systemd suite would look like a passing one) unless the
    lab can boot systemd hosts that ``fleetctl machine add`` can install an agent on: root,
    the cached Debian rootfs (built once, ~40 s) and a psutil wheel for its Python."""
    from fleetd.bootstrap import bundle
    from fleetd.lab import systemd_host

    if os.geteuid() != 0:
        pytest.fail("the lab's systemd hosts need root (namespaces, mounts, cgroups)")
    try:
        systemd_host.rootfs()
    except systemd_host.SystemdHostError as exc:
        pytest.fail(f"cannot build the systemd hosts' rootfs: {exc}")
    if not bundle.pick_wheel(bundle.wheelhouse(), "x86_64", ("glibc", "2.36"), (3, 11)):
        pytest.fail(f"no psutil wheel in {bundle.wheelhouse()}: ./run.sh setup fetches them")
