"""What fleetd sends the agent for one unit: the spec, its config and the config's parts,
as TypedDicts, and the defaults both sides assume when a field is absent.

fleetd builds a config from a unit file (fleetd.units), the agent checks it field by
field (fleetd.agent.specs) and its drivers read it; these types are the one description
of that dict that mypy holds both sides to. They describe JSON: a TypedDict is a plain
dict at run time, so nothing here changes what goes over the wire. Every config field
is optional (``total=False``): an older fleetd sends fewer, and each reader defaults it
(the defaults below). Standard library only, Python 3.9+ (agent side).
"""

from __future__ import annotations

from typing import Dict, List, Optional, TypedDict

# --- defaults: what an absent field means, on both sides ------------------------------------
TIMEOUT_STOP_S = 90.0  # TimeoutStopSec= (systemd's DefaultTimeoutStopSec); None: for ever
KILL_GRACE_S = 5.0  # after SIGKILL, how long the agent waits before giving up on a process
RESTART_S = 0.1  # RestartSec=
RESTART_POLICY = "no"  # Restart=
KILL_SIGNAL = 15  # KillSignal= (SIGTERM)
GENERATION = 0  # a spec's generation before any restart asked for a new one
HEALTH_UNKNOWN = "unknown"  # a unit's health before (or without) a check's verdict


class _CommandBase(TypedDict):
    words: List[str]


class Command(_CommandBase, total=False):
    """One ExecStart=/ExecStartPre=/... line, split by fleetd (fleetd.wire.execline)."""

    ignore_failure: bool  # "-": its failure is not the unit's
    argv0_given: bool  # "@": the second word is argv[0]
    no_expand: bool  # ":": no $VAR expansion
    privileged: bool  # "+": runs as root, outside User=


class Limits(TypedDict, total=False):
    """The unit's resource limits (fleetd.cgroups.Limits reads them)."""

    memory_max: Optional[int]  # bytes
    memory_max_percent: Optional[float]
    cpu_quota: Optional[float]  # percent of one CPU
    cpu_weight: Optional[int]
    tasks_max: Optional[int]
    tasks_max_percent: Optional[float]
    nofile: Optional[List[Optional[int]]]  # [soft, hard]


class _CheckBase(TypedDict):
    type: str  # tcp, http or exec


class Check(_CheckBase, total=False):
    """[X-Check]: the health check the agent runs (fleetd.agent.health)."""

    host: str
    port: Optional[int]
    path: str
    url: str
    host_header: str
    command: Command
    expect_status: List[List[int]]  # [lo, hi] ranges
    interval_s: float
    timeout_s: float
    start_grace_s: float
    failure_threshold: int
    success_threshold: int
    on_failure: str  # restart or none


class Java(TypedDict, total=False):
    """[X-Java]: what the java driver builds its command line from."""

    jar: Optional[str]
    main_class: Optional[str]
    class_path: List[str]
    jvm_options: List[str]
    args: List[str]
    java_home: Optional[str]
    min_version: Optional[int]


class SuccessExitStatus(TypedDict, total=False):
    codes: List[int]
    signals: List[int]


# the rlimits a unit may set besides NOFILE (Limit*=, fleetd.units.process): config's
# ``rlimits`` keys, each resource.RLIMIT_<key> on the host
RLIMITS = ("CPU", "FSIZE", "DATA", "STACK", "CORE", "RSS", "NPROC", "AS", "MEMLOCK", "LOCKS",
           "SIGPENDING", "MSGQUEUE", "NICE", "RTPRIO", "RTTIME")


class UnitConfig(TypedDict, total=False):
    """The driver's settings of one unit, already rendered for the host. The exec and
    java drivers read the [Service] fields, the systemd driver ``unit_text``."""

    type: str  # simple, exec or oneshot
    commands: List[Command]
    pre: List[Command]
    post: List[Command]
    stop: List[Command]
    reload: List[Command]  # ExecReload=
    # OnPeersChange= (reload or restart, the default): what a re-render that only the
    # placements the unit read changed does to its running copy
    on_peers_change: str
    environment: Optional[Dict[str, str]]
    environment_files: Optional[List[str]]
    working_directory: Optional[str]
    user: Optional[str]
    group: Optional[str]
    umask: Optional[int]  # UMask=; None: systemd's default, 0022
    # Limit*= but LimitNOFILE= (in limits): "CORE" -> [soft, hard], None meaning infinity
    rlimits: Dict[str, List[Optional[int]]]
    nice: Optional[int]  # Nice=
    oom_score_adjust: Optional[int]  # OOMScoreAdjust=
    kill_signal: int
    timeout_start_s: Optional[float]
    timeout_stop_s: Optional[float]
    restart: str
    restart_s: float
    restart_steps: int
    restart_max_delay_s: Optional[float]
    start_limit_burst: int
    start_limit_interval_s: float
    success_exit_status: Optional[SuccessExitStatus]
    limits: Optional[Limits]
    check: Optional[Check]
    fence_after_s: Optional[float]
    java: Java
    unit_text: str  # Driver=systemd: the unit file systemd runs
    # SecretEnvironment=: variable -> secret name (names only, never values)
    secret_environment: Dict[str, str]
    # set by the agent, never by fleetd: its 0400 file of this unit's secret values
    # (fleetd.agent.secretfiles), which the exec driver reads at each start
    secret_file: str


class _UnitSpecBase(TypedDict):
    name: str
    hash: str  # of the rendered unit text
    want: str  # protocol.WANT_RUNNING or WANT_STOPPED
    driver: str  # exec, java or systemd


class UnitSpec(_UnitSpecBase, total=False):
    """What the agent needs to run one unit (protocol.unit_spec builds one)."""

    config: UnitConfig
    generation: int  # a new one with the same hash asks for a restart
    # variable -> secret value, for this machine only; the agent takes it out of the
    # spec into its secrets directory before it keeps or logs the spec anywhere
    secrets: Dict[str, str]
    # a unit whose template reads other units' placements (units()): a hash that stays
    # the same while only what it read changes, and whether such a change is taken by
    # a reload (OnPeersChange=reload) rather than a restart (fleetd.agent.reconciler)
    base: str
    reload: bool


class UnitStatus(TypedDict):
    """One unit as the agent reports it (protocol.unit_status builds one)."""

    name: str
    hash: str
    generation: int
    health: str  # unknown, passing or failing
    state: str  # one of protocol.UNIT_STATES
    pid: Optional[int]
    started_at: Optional[float]
    exit_status: Optional[int]
    restarts: int
    error: Optional[str]


def timeout_stop(config: UnitConfig) -> Optional[float]:
    """TimeoutStopSec= in seconds (TIMEOUT_STOP_S if absent; None: wait for ever)."""
    return config.get("timeout_stop_s", TIMEOUT_STOP_S)


def kill_signal(config: UnitConfig) -> int:
    """KillSignal= (SIGTERM if absent)."""
    return int(config.get("kill_signal", KILL_SIGNAL))
