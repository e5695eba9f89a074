"""The java driver: a JVM program from ``[X-Java]``, run by the exec driver.

fleetd validated the unit (fleetd/units/xjava.py); here, on the host, the driver picks
the ``java`` binary (JavaHome=, else the newest installed Java that meets JavaVersion=),
writes the command line ``java [-Xmx..] JvmOptions (-jar JAR | -cp CP MAIN) Args``,
points JAVA_HOME (and the front of PATH) at the chosen Java, and hands that command to
the exec driver as if it had been an ExecStart=. Everything else — clean environment,
working directory, log file, own session, recovery by pid + start time + invocation id,
and whatever the exec driver learns later (cgroup placement) — is the exec driver's, so
a JVM is supervised exactly like any other program.

``java`` is exec'd directly, never through a shell or a wrapper script, so the program's
pid *is* the JVM: the stop signal reaches it, its shutdown hooks run, and it exits 143.

Installed Javas are found the way Debian and the vendors' packages lay them out: every
``/usr/lib/jvm/*/`` with an executable ``bin/java``, its version read from the
``release`` file every JDK and JRE since 8 ships, plus the agent's own ``$JAVA_HOME``.
The scan runs at each start (a handful of small file reads), so a Java installed while
the agent runs is used without a restart.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import re
import subprocess
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import psutil

from fleetd.drivers import files, identity
from fleetd.drivers.base import PROCESS, DriverError, Handle, Spare, StartContext
from fleetd.drivers.exec import DEFAULT_PATH, ExecDriver
from fleetd.wire.unitspec import Command, Java, Limits, UnitConfig

JVM_DIR = "/usr/lib/jvm"
RELEASE_MAX = 64 * 1024  # a JDK's release file is a few hundred bytes
PROBE_TIMEOUT_S = 10.0
MiB = 1 << 20

# Heap sizing from MemoryMax= (see heap_bytes): the share of the limit the heap gets,
# and the least that is left for everything in a JVM that is not heap.
HEAP_SHARE = 0.75
NON_HEAP_MIN = 64 * MiB
HEAP_MIN = 8 * MiB  # below this the JVM hardly initialises (-Xmx2m fails at start-up)

# Options by which a unit sizes the heap itself; any of them turns the automatic -Xmx off.
HEAP_FLAGS = ("-Xmx", "-XX:MaxHeapSize=", "-XX:MaxRAM=", "-XX:MaxRAMPercentage=",
              "-XX:MaxRAMFraction=")
# Variables the JVM reads options from, besides its command line.
OPTION_VARIABLES = ("JAVA_TOOL_OPTIONS", "JDK_JAVA_OPTIONS", "_JAVA_OPTIONS")

# Same scheme as fleetd/units/xjava.py: a machine with Java N "runs Java K" for K <= N.
CAPABILITY_FLOOR = 8


@dataclasses.dataclass(frozen=True)
class JavaInstall:
    """One Java installation on this host."""

    home: str  # the installation directory (found ones symlink-resolved; JavaHome= as written)
    java: str  # its bin/java
    version: str  # JAVA_VERSION as the release file says it: "17.0.15", "1.8.0_392"

    @property
    def key(self) -> Tuple[int, ...]:
        return version_key(self.version)

    @property
    def major(self) -> int:
        """17 for "17.0.15", 8 for "1.8.0_392"; 0 if the version is unknown."""
        return self.key[0] if self.key else 0

    def describe(self) -> str:
        return f"{self.version or 'unknown version'} at {self.home}"

    def to_fact(self) -> Dict[str, Any]:
        return {"version": self.version, "major": self.major, "home": self.home}


def version_key(version: str) -> Tuple[int, ...]:
    """Numbers of a Java version for ordering, with the old ``1.`` prefix dropped:
    "1.8.0_392" -> (8, 0, 392), "17.0.15" -> (17, 0, 15), "21-ea" -> (21,)."""
    numbers = [int(n) for n in re.findall(r"[0-9]+", version)]
    if len(numbers) > 1 and numbers[0] == 1:
        numbers = numbers[1:]
    return tuple(numbers)


def _release_version(home: str, creds: Optional[identity.Credentials] = None
                     ) -> Optional[str]:
    try:
        data = _read(os.path.join(home, "release"), creds)
    except OSError:
        return None
    for line in data.decode("utf-8", errors="replace").splitlines():
        key, eq, value = line.strip().partition("=")
        if eq and key == "JAVA_VERSION":
            return value.strip().strip('"')
    return None


def _read(path: str, creds: Optional[identity.Credentials]) -> bytes:
    """``path`` as fleetd.drivers.files reads it (regular files only, bounded, never
    blocking) - as ``creds`` in a child process if given: a unit's JavaHome= is its
    user's choice, and root must not read for it what that user could not."""
    if creds is None:
        return files.read_regular(path, RELEASE_MAX)
    try:
        done = subprocess.run([sys.executable, "-I", files.__file__, path, str(RELEASE_MAX)],
                              stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL, timeout=PROBE_TIMEOUT_S,
                              preexec_fn=_as(creds), check=False)
    except subprocess.SubprocessError as exc:
        raise OSError(f"{path}: {exc}") from None
    if done.returncode != 0:
        raise OSError(f"{path}: not readable as User={creds.user or creds.uid}")
    return done.stdout


def _as(creds: Optional[identity.Credentials]) -> Optional[Callable[[], None]]:
    """The preexec_fn that makes a probe run as ``creds`` (None: as the agent)."""
    return identity.preexec([], None, creds) if creds is not None else None


def _probe_version(java: str, creds: Optional[identity.Credentials] = None) -> str:
    """Ask ``java -version`` (tens of milliseconds): only for a home without a release
    file, which a hand-made $JAVA_HOME might be. As ``creds`` where given: a JavaHome=
    is the unit's, and its ``java`` is then run as the unit's User=, never as root."""
    try:
        out = subprocess.run([java, "-version"], stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             timeout=PROBE_TIMEOUT_S, check=False,
                             preexec_fn=_as(creds)).stdout
    except (OSError, subprocess.SubprocessError):
        return ""
    m = re.search(rb'version "([^"]+)"', out)
    return m.group(1).decode(errors="replace") if m else ""


def inspect_home(home: str, probe: bool = True,
                 creds: Optional[identity.Credentials] = None) -> Optional[JavaInstall]:
    """The installation in ``home``, or None if it has no executable bin/java.
    ``creds``: whose the home is (a unit's JavaHome=): read and probed as that user."""
    java = os.path.join(home, "bin", "java")
    if not (os.path.isfile(java) and os.access(java, os.X_OK)):
        return None
    version = _release_version(home, creds)
    if version is None:
        version = _probe_version(java, creds) if probe else ""
    return JavaInstall(home=home, java=java, version=version)


def installed_javas(jvm_dir: str = JVM_DIR,
                    java_home: Optional[str] = None) -> List[JavaInstall]:
    """Every Java on this host, newest first, each once (Debian's
    ``java-1.17.0-openjdk-amd64`` is a symlink to ``java-17-openjdk-amd64``).
    ``java_home`` defaults to the agent's $JAVA_HOME."""
    if java_home is None:
        java_home = os.environ.get("JAVA_HOME") or ""
    homes = sorted(glob.glob(os.path.join(glob.escape(jvm_dir), "*", "")))
    if java_home:
        homes.append(java_home)
    found: Dict[str, JavaInstall] = {}
    for home in homes:
        real = os.path.realpath(home)
        if real in found:
            continue
        install = inspect_home(real)
        if install is not None:
            found[real] = install
    return sorted(found.values(), key=lambda j: (j.key, j.home), reverse=True)


def machine_capabilities(javas: Sequence[JavaInstall]) -> List[str]:
    """What this host advertises for scheduling: ``java`` if it has any Java, and
    ``java:K`` for each K from CAPABILITY_FLOOR to its newest major version, so that a
    unit needing "at least K" asks for the one string ``java:K``
    (fleetd.units.xjava.capabilities)."""
    if not javas:
        return []
    newest = max(j.major for j in javas)
    return ["java", *(f"java:{k}" for k in range(CAPABILITY_FLOOR, newest + 1))]


def choose_java(java_cfg: Java,
                installed: Optional[Sequence[JavaInstall]] = None,
                creds: Optional[identity.Credentials] = None) -> JavaInstall:
    """JavaHome= if it holds a Java (looked into as ``creds``, the unit's User=);
    else the newest installed Java meeting JavaVersion= (any, without it). DriverError
    says what this host has otherwise."""
    home = java_cfg.get("java_home")
    if home:
        install = inspect_home(str(home), creds=creds)
        if install is None:
            raise DriverError(f"JavaHome={home}: no executable {home}/bin/java here "
                              f"({_listing(installed)})")
        return install
    javas = installed_javas() if installed is None else list(installed)
    minimum = int(java_cfg.get("min_version") or 0)
    for install in javas:  # newest first
        if install.major >= minimum:
            return install
    if minimum:
        raise DriverError(f"JavaVersion={minimum}: this host has no Java {minimum} or newer "
                          f"({_listing(javas)})")
    raise DriverError(f"this host has no Java ({_listing(javas)})")


def _listing(installed: Optional[Sequence[JavaInstall]]) -> str:
    javas = installed_javas() if installed is None else installed
    if not javas:
        return f"no Java found in {JVM_DIR}/*/ or $JAVA_HOME"
    return "installed: " + ", ".join(j.describe() for j in javas)


def heap_bytes(limit: int) -> int:
    """The -Xmx for a memory limit of ``limit`` bytes: 75% of it, leaving at least
    64 MiB for the rest of the JVM, but never less than half of it.

    Why not the whole limit: a JVM's memory is heap plus metaspace, code cache, thread
    stacks, GC bookkeeping and direct buffers; with the heap at the limit, the kernel's
    OOM killer ends the process (SIGKILL, no shutdown hooks, no heap dump) before the
    garbage collector ever feels pressure. Why not leave it to the JVM: it sizes its
    heap from the memory it *sees* — 1/4 of the host's RAM unless it finds a cgroup
    limit, which needs a container-aware JDK (8u191+) and a cgroup it can read. Nomad's
    java driver left it to the JVM, and its tasks got heaps sized from the host's RAM
    (hashicorp/nomad#5376 in 2019, #18920 still in 2023). And where the JVM does see
    the limit, its default heap is 1/4 of it (1/2 of a small one: LAB.md saw 96 MiB in
    a 200 MiB cgroup), leaving much of the memory the unit reserved unused. 75% is what
    container guides settle on (-XX:MaxRAMPercentage=75); the 64 MiB floor covers a
    small JVM's non-heap (LAB.md: a trivial program has ~40 MB resident), and for
    limits too small for that the heap gets half rather than nothing. Rounded down to
    whole MiB, as -Xmx is written."""
    non_heap = max(int(limit * (1 - HEAP_SHARE)), NON_HEAP_MIN)
    heap = max(limit - non_heap, limit // 2, HEAP_MIN)
    return heap // MiB * MiB


def _sets_heap(words: Sequence[str]) -> bool:
    return any(w.startswith(HEAP_FLAGS) for w in words)


def heap_option(java_cfg: Java, limits: Optional[Limits],
                environment: Dict[str, str],
                total_memory: Optional[int] = None) -> Optional[str]:
    """``-Xmx<N>m`` sized from MemoryMax=, or None: no limit, or the unit sizes the heap
    itself (JvmOptions= or one of the JVM's option variables in Environment=)."""
    limits = limits or {}
    if _sets_heap(java_cfg.get("jvm_options") or []):
        return None
    if any(_sets_heap(environment.get(v, "").split()) for v in OPTION_VARIABLES):
        return None
    limit = limits.get("memory_max")
    percent = limits.get("memory_max_percent")
    if not limit and percent:
        total = total_memory if total_memory is not None else psutil.virtual_memory().total
        limit = int(total * float(percent) / 100.0)
    if not limit:
        return None
    return f"-Xmx{heap_bytes(int(limit)) // MiB}m"


def _literal(word: str) -> str:
    """A word the exec driver must not expand (paths and class names: ``Outer$Inner``)."""
    return word.replace("$", "$$")


def command_words(java_cfg: Java, java: str, heap: Optional[str]) -> List[str]:
    """The java command line, as ExecStart= words: paths and the main class literal,
    JvmOptions= and Args= subject to ``$VAR`` expansion like any ExecStart= word.

    The automatic -Xmx goes first: should a unit's options carry another one the driver
    could not see (inside ``$JAVA_OPTS``), the JVM takes the last, which is the unit's."""
    words = [_literal(java)]
    if heap:
        words.append(heap)
    words += [str(w) for w in java_cfg.get("jvm_options") or []]
    if java_cfg.get("jar"):
        words += ["-jar", _literal(str(java_cfg["jar"]))]
    else:
        class_path = ":".join(str(p) for p in java_cfg.get("class_path") or [])
        words += ["-cp", _literal(class_path), _literal(str(java_cfg["main_class"]))]
    words += [str(w) for w in java_cfg.get("args") or []]
    return words


class JavaDriver:
    """Chooses the Java and writes the command; the exec driver runs it."""

    name = "java"
    capabilities = PROCESS

    def __init__(self, exec_driver: Optional[ExecDriver] = None) -> None:
        self._exec = exec_driver or ExecDriver()

    def exec_config(self, config: UnitConfig,
                    installed: Optional[Sequence[JavaInstall]] = None) -> UnitConfig:
        """The unit's config as the exec driver runs it: one command, the java line."""
        java_cfg = config.get("java")
        if not isinstance(java_cfg, dict):
            raise DriverError("this unit has no [X-Java] settings (was it validated by a "
                              "fleetd that knows Driver=java?)")
        creds = identity.resolve(config.get("user"), config.get("group")) \
            if java_cfg.get("java_home") else None
        install = choose_java(java_cfg, installed, creds)
        jar = java_cfg.get("jar")
        if jar and not os.path.isfile(str(jar)):
            raise DriverError(f"Jar={jar}: no such file on this host")
        environment = dict(config.get("environment") or {})
        heap = heap_option(java_cfg, config.get("limits"), environment)
        # JAVA_HOME names the Java that runs, and scripts the program starts find the
        # same java first in PATH.
        environment["JAVA_HOME"] = install.home
        environment["PATH"] = os.path.join(install.home, "bin") + ":" + \
            environment.get("PATH", DEFAULT_PATH)
        command: Command = {"words": command_words(java_cfg, install.java, heap),
                            "ignore_failure": False, "argv0_given": False,
                            "no_expand": False, "privileged": False}
        exec_config: UnitConfig = {**config, "environment": environment,
                                   "commands": [command]}
        return exec_config

    def start(self, config: UnitConfig, ctx: StartContext, command_index: int = 0) -> Handle:
        if command_index != 0:
            raise DriverError("a java unit runs one command (Type=oneshot with several "
                              "ExecStart= is for Driver=exec)")
        handle = self._exec.start(self.exec_config(config), ctx, 0)
        return dataclasses.replace(handle, driver=self.name)

    def run(self, config: UnitConfig, ctx: StartContext, command: Command,
            extra_env: Optional[Dict[str, str]] = None) -> Handle:
        """A control command (ExecStartPre=, ...) sees the JVM's environment too."""
        return self._exec.run(self.exec_config(config), ctx, command, extra_env)

    def as_unit(self, config: UnitConfig, ctx: StartContext
                ) -> Tuple[Dict[str, str], Callable[[], None]]:
        """As the exec driver's: a check runs with the unit's own settings."""
        return self._exec.as_unit(config, ctx)

    def can_prepare(self, config: UnitConfig) -> bool:
        """As the exec driver's: the JVM's command line is an ExecStart= to it."""
        try:
            return self._exec.can_prepare(self.exec_config(config))
        except DriverError:
            return False

    def prepare(self, config: UnitConfig, ctx: StartContext) -> Spare:
        return self._exec.prepare(self.exec_config(config), ctx)

    def take(self, spare: Spare, config: UnitConfig, ctx: StartContext,
             command_index: int = 0) -> Handle:
        handle = self._exec.take(spare, self.exec_config(config), ctx, command_index)
        return dataclasses.replace(handle, driver=self.name)

    def signal(self, handle: Handle, signum: int) -> None:
        self._exec.signal(handle, signum)

    def recover(self, record: Dict[str, Any]) -> Optional[Handle]:
        return self._exec.recover(record)
