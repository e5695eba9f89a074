"""The exec driver: a raw program, forked by the agent, in the unit's cgroup.

The program gets systemd's view of a service: a clean environment (PATH, LANG;
$USER/$LOGNAME/$HOME/$SHELL of User=; then Environment=, then EnvironmentFile=, each
overriding the one before, as systemd.exec(5) orders them), ``/`` or WorkingDirectory=
as its directory, stdin from /dev/null and stdout/stderr appended to the unit's log
file. Its argv is ExecStart= split like systemd splits it (done by fleetd) and expanded
here against that environment; no shell is involved unless the unit names one.

Between fork and exec the child joins the unit's cgroup (created with the unit's limits
first: MemoryMax=, CPUQuota=, CPUWeight=, TasksMax=), sets LimitNOFILE= and switches to
User=/Group= - in that order, as the first two need root. So the program never runs a
single instruction outside its limits or as the wrong user.

It runs as the leader of a new session, so that it outlives the agent (no SIGHUP when
the agent dies). ``signal`` goes to the whole cgroup, which reaches helpers that
double-forked away from the session too. A FLEET_INVOCATION_ID in its environment, the
kernel's start tick of its pid and its cgroup membership let a restarted agent prove it
is the same program.

A unit that restarts at once may instead start from a prepared process (``prepare``,
then ``take``; fleetd.drivers.spare): a /bin/sh forked the same way and already in the
unit's cgroups, below the unit's in a cgroup of that run (``StartContext.leaf``), which
execs the program with the same argv, environment, directory, log, LimitNOFILE= and
User=/Group= (through setpriv) when the restart comes.

The ``Popen`` call returns once the program has exec'd (or failed to), so a missing
binary or an unknown user fails the start itself: Type=simple behaves like systemd's
Type=exec here, which is what a supervisor that reports "running" should mean.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import subprocess
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import psutil

from fleetd.cgroups import Backend, CgroupError, Limits, LimitsUnsupported, UnitCgroup
from fleetd.drivers import envfile, identity, procsetup, secretenv, spare
from fleetd.drivers.base import (
    PROCESS,
    DriverError,
    Handle,
    Spare,
    StartContext,
    alive,
    start_ticks,
)
from fleetd.wire import execline
from fleetd.wire.unitspec import Command, UnitConfig
from fleetd.wire.unitspec import Limits as LimitsConfig

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INVOCATION_VAR = "FLEET_INVOCATION_ID"
DEFAULT_UMASK = 0o022  # systemd.exec(5) UMask=: 0022 for system services
_CLK_TCK = os.sysconf("SC_CLK_TCK")


def base_environment(ctx: StartContext) -> Dict[str, str]:
    """What every unit's program finds in its environment before Environment=. No $HOME
    from an agent running as root: systemd 252's system manager gives a service none
    without User= (tests/integration/test_same_process.py); an agent run by a user keeps
    that user's, as a user manager passes its own on."""
    env = {"PATH": DEFAULT_PATH, "LANG": os.environ.get("LANG", "C.UTF-8")}
    if os.geteuid() != 0:
        env["HOME"] = os.environ.get("HOME", "/")
    return env


def fleet_environment(ctx: StartContext) -> Dict[str, str]:
    """Set last, over anything a unit sets: the invocation id is identity evidence."""
    return {"FLEET_UNIT": ctx.unit, "FLEET_MACHINE_ID": ctx.machine_id,
            INVOCATION_VAR: ctx.invocation_id}


def resolve(path: str, env: Dict[str, str]) -> str:
    """An executable path: absolute as given, else searched in the unit's PATH."""
    if "/" in path:
        return path
    for directory in env.get("PATH", DEFAULT_PATH).split(":"):
        candidate = os.path.join(directory, path)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise DriverError(f"{path}: command not found in PATH={env.get('PATH', DEFAULT_PATH)}")


class ExecDriver:
    """``backend``: the host's cgroups (the agent passes the one it detected). Without
    one - tools and tests driving the driver directly - programs are not placed in
    cgroups and limits are not applied."""

    name = "exec"
    capabilities = PROCESS

    def __init__(self, backend: Optional[Backend] = None) -> None:
        self.backend = backend

    def cgroup(self, unit: str, pgid: Optional[int] = None) -> Optional[UnitCgroup]:
        return self.backend.unit(unit, pgid) if self.backend is not None and unit else None

    def start(self, config: UnitConfig, ctx: StartContext, command_index: int = 0) -> Handle:
        return self._spawn(config, ctx, config["commands"][command_index], None)

    def run(self, config: UnitConfig, ctx: StartContext, command: Command,
            extra_env: Optional[Dict[str, str]] = None) -> Handle:
        return self._spawn(config, ctx, command, extra_env)

    def environment(self, config: UnitConfig, ctx: StartContext,
                    creds: Optional[identity.Credentials],
                    extra_env: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        """The program's environment; EnvironmentFile= is read now, at every start."""
        env = base_environment(ctx)
        if creds is not None and creds.user is not None:
            env.pop("HOME", None)  # the user's, or none (identity.clean_home)
            env.update(creds.environment())
        env.update(config.get("environment") or {})
        try:
            env.update(envfile.load(config.get("environment_files") or []))
        except envfile.EnvironmentFileError as exc:
            raise DriverError(str(exc)) from None
        try:
            env.update(secretenv.load(config.get("secret_file")))
        except secretenv.SecretFileError as exc:
            raise DriverError(str(exc)) from None
        env.update(extra_env or {})
        env.update(fleet_environment(ctx))
        return env

    def as_unit(self, config: UnitConfig, ctx: StartContext
                ) -> Tuple[Dict[str, str], Callable[[], None]]:
        """The environment of the unit's program and what it does between fork and
        exec (join the unit's existing cgroup, LimitNOFILE=, User=/Group=), for other
        processes that must run as the program does - an exec health check. Raises
        DriverError (unknown user, ...)."""
        creds = identity.resolve(config.get("user"), config.get("group"))
        cg = self.cgroup(ctx.unit)
        run = cg.leaf(ctx.leaf) if cg is not None and ctx.leaf else None
        return (self.environment(config, ctx, creds), _preexec(config, run or cg, creds))

    # --- prepared processes (fleetd.drivers.spare) -----------------------------------
    def can_prepare(self, config: UnitConfig) -> bool:
        """Only where the unit's runs can have a cgroup of their own (v1 or hybrid
        controllers), /bin/sh exists, setpriv does for User=/Group=, and the command's
        argv[0] is its path (sh's exec cannot set another)."""
        if self.backend is None or not os.access(spare.SH, os.X_OK):
            return False
        if self.backend.unit("spare-probe").leaf("run0") is None:
            return False
        if (config.get("user") or config.get("group")) and spare.tool(
                spare.SETPRIV_PATHS) is None:
            return False
        commands = config.get("commands") or []
        return len(commands) == 1 and not commands[0].get("argv0_given")

    def prepare(self, config: UnitConfig, ctx: StartContext) -> Spare:
        cg = self.cgroup(ctx.unit)
        run = _create(cg, config.get("limits") or {}, ctx.leaf) if cg is not None else None
        if run is None or run is cg or not ctx.leaf:
            raise DriverError("no cgroup of its own for a run of this unit on this host")
        # OOMScoreAdjust= is the script's (take): the spare waits at -1000 until then
        steps = [run.preexec(), procsetup.step(config, oom_score=False)]
        setup = identity.preexec(steps, identity.nofile(
            (config.get("limits") or {}).get("nofile")), None)
        return spare.prepare(setup, ctx.leaf)

    def take(self, prepared: Spare, config: UnitConfig, ctx: StartContext,
             command_index: int = 0) -> Handle:
        if not isinstance(prepared, spare.PreparedProcess):
            raise DriverError(f"not a process this driver prepared: {prepared!r}")
        command = config["commands"][command_index]
        try:
            creds = identity.resolve(config.get("user"), config.get("group"))
            env = self.environment(config, ctx, creds)
            try:
                path, argv = execline.argv(command, env)
            except execline.CommandLineError as exc:
                raise DriverError(f"command line: {exc}") from None
            path = resolve(path, env)
            cwd = _working_directory(config.get("working_directory"), env)
            switch = None if command.get("privileged") else creds
            script = spare.script(path, argv, env, cwd, ctx.log_path, _setpriv(switch),
                                  hidden=bool(config.get("secret_file")),
                                  umask=umask(config),
                                  oom_score_adj=config.get("oom_score_adjust"))
            if script is None:
                raise DriverError("this command cannot start from a prepared process")
        except DriverError:
            prepared.discard()
            raise
        prepared.run(script)
        return _handle(self.name, prepared.pid, ctx, prepared.leaf)

    def _spawn(self, config: UnitConfig, ctx: StartContext, command: Command,
               extra_env: Optional[Dict[str, str]]) -> Handle:
        creds = identity.resolve(config.get("user"), config.get("group"))
        env = self.environment(config, ctx, creds, extra_env)
        try:
            path, argv = execline.argv(command, env)
        except execline.CommandLineError as exc:
            raise DriverError(f"command line: {exc}") from None
        path = resolve(path, env)
        cwd = _working_directory(config.get("working_directory"), env)
        cg = self.cgroup(ctx.unit)
        if cg is not None:
            cg = _create(cg, config.get("limits") or {}, ctx.leaf)
        # "+" (privileged) commands keep the agent's credentials, as in systemd
        preexec = _preexec(config, cg, None if command.get("privileged") else creds)
        why_r, why_w = os.pipe()  # close-on-exec: the child says here why preexec failed
        try:
            log_fd = os.open(ctx.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                             0o640)
        except OSError as exc:
            os.close(why_r)
            os.close(why_w)
            raise DriverError(f"cannot open log {ctx.log_path}: {exc.strerror}") from None
        try:
            proc = subprocess.Popen(
                argv, executable=path, env=env, cwd=cwd, stdin=subprocess.DEVNULL,
                stdout=log_fd, stderr=log_fd, start_new_session=True, close_fds=True,
                restore_signals=True,
                preexec_fn=_explained(preexec, why_w, config),
            )
        except subprocess.SubprocessError:
            os.close(why_w)
            why_w = -1
            raise DriverError(_read_reason(why_r) or "the program could not be set up "
                              "(cgroup, LimitNOFILE=, User=)") from None
        except (OSError, ValueError) as exc:  # ValueError: a NUL in argv or environment
            raise DriverError(f"{path}: {getattr(exc, 'strerror', None) or exc}") from None
        finally:
            os.close(log_fd)
            if why_w >= 0:
                os.close(why_w)
            os.close(why_r)
        # The supervisor reaps by pid (it must also watch programs a previous agent
        # started); marking the Popen done keeps subprocess's own reaper off this pid.
        proc.returncode = 0
        return _handle(self.name, proc.pid, ctx, ctx.leaf if cg is not None else "")

    def signal(self, handle: Handle, signum: int) -> None:
        """Every process of the unit: its cgroup, which also holds what daemonised away
        from the program's session. Without a cgroup, the program's process group."""
        cg = self.cgroup(handle.unit, handle.pid)
        if cg is not None and handle.leaf:  # its run's processes, not a prepared one
            cg = cg.leaf(handle.leaf) or cg
        if cg is not None:
            with contextlib.suppress(CgroupError):  # gone: so is every process it held
                cg.kill(signum)
            return
        for send in (os.killpg, os.kill):
            try:
                send(handle.pid, signum)
                break
            except ProcessLookupError:
                continue
            except PermissionError:
                break
        if signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
            with contextlib.suppress(OSError):
                os.killpg(handle.pid, signal.SIGCONT)  # a stopped program must see it

    def recover(self, record: Dict[str, Any]) -> Optional[Handle]:
        """The program of ``record`` if it provably still runs: same pid, same start
        tick, and (with a backend) still in the unit's cgroup.

        A record without ``unit`` was written by an agent from before cgroups, whose
        programs run in none: it is adopted on the proof that agent used (pid + start
        tick + invocation id), or upgrading the agent would start a second copy of every
        program. Such a program is signalled through its process group, and gets its
        cgroup when it next starts."""
        handle = Handle.from_record(record)
        if not same_process(handle):
            return None
        if self.backend is None or not handle.unit:
            return handle
        cg = self.cgroup(handle.unit, handle.pid)
        return handle if cg is not None and cg.contains(handle.pid) else None


def _preexec(config: UnitConfig, cg: Optional[UnitCgroup],
             creds: Optional[identity.Credentials]) -> Callable[[], None]:
    """The preexec_fn: join ``cg`` (created already), Limit*=, Nice=, OOMScoreAdjust=,
    LimitNOFILE=, UMask=, switch to ``creds``."""
    steps = [cg.preexec()] if cg is not None else []
    steps.append(procsetup.step(config))  # Limit*=, Nice=, OOMScoreAdjust=
    return identity.preexec(steps, identity.nofile((config.get("limits") or {}).get("nofile")),
                            creds, umask(config))


def umask(config: UnitConfig) -> int:
    """The program's umask: UMask=, else systemd's default for services (0022) - never
    the agent's own, which would make a unit's files depend on how the agent started."""
    value = config.get("umask")
    return DEFAULT_UMASK if value is None else value


def _handle(driver: str, pid: int, ctx: StartContext, leaf: str) -> Handle:
    ticks = start_ticks(pid)
    create_time = psutil.boot_time() + ticks / _CLK_TCK if ticks >= 0 else 0.0
    return Handle(driver=driver, pid=pid, create_time=create_time, started_at=time.time(),
                  invocation_id=ctx.invocation_id, start_ticks=ticks, unit=ctx.unit,
                  leaf=leaf)


def _setpriv(creds: Optional[identity.Credentials]) -> Optional[List[str]]:
    """setpriv's words for ``creds`` (None: no switch), in the preexec's order."""
    if creds is None:
        return None
    tool = spare.tool(spare.SETPRIV_PATHS)
    if tool is None:
        raise DriverError("User=/Group= from a prepared process needs setpriv (util-linux)")
    groups = ",".join(str(g) for g in creds.groups)
    return [tool, f"--regid={creds.gid}", f"--reuid={creds.uid}",
            f"--groups={groups}" if groups else "--clear-groups"]


def _create(cg: UnitCgroup, limits: LimitsConfig, leaf: str = "") -> UnitCgroup:
    """Make the unit's cgroup with its limits; with ``leaf``, also that run's cgroup
    below it (where the backend has them), which is returned: the cgroup to join.

    A run's cgroup gets the unit's TasksMax= and the unit's one more, for the prepared
    process that may wait beside the run (fleetd.drivers.spare): the program keeps
    exactly TasksMax= tasks. The other limits hold for the whole unit."""
    try:
        wanted = Limits.from_config(limits)
        run = cg.leaf(leaf) if leaf else None
        if run is None:
            cg.create(wanted)
            return cg
        tasks = wanted.tasks_max
        cg.create(dataclasses.replace(wanted, tasks_max=None if tasks is None else tasks + 1))
        run.create(Limits(tasks_max=tasks))
        return run
    except LimitsUnsupported as exc:
        raise DriverError(str(exc)) from None
    except (CgroupError, ValueError) as exc:
        raise DriverError(f"cannot set up the unit's cgroup: {exc}") from None


def _explained(run: Callable[[], None], fd: int, config: UnitConfig) -> Callable[[], None]:
    """``run`` as a preexec_fn that writes why it failed to ``fd`` before raising
    (Popen itself only reports "Exception occurred in preexec_fn")."""
    who = config.get("user") or config.get("group")

    def explained() -> None:
        try:
            run()
        except OSError as exc:
            what = f"cannot switch to User={who}" if who else "cannot set up the process"
            with contextlib.suppress(OSError):
                os.write(fd, f"{what}: {exc.strerror or exc}".encode())
            raise

    return explained


def _read_reason(fd: int) -> str:
    with contextlib.suppress(OSError):
        return os.read(fd, 4096).decode(errors="replace")
    return ""


def same_process(handle: Handle) -> bool:
    """Is ``handle.pid`` still the program we started? The kernel's start tick must be
    exactly the recorded one (a reused pid fails it), and the invocation id in its
    environment must match where it is still there to read."""
    if handle.start_ticks < 0 or not alive(handle.pid, handle.start_ticks):
        return False
    try:
        environ = psutil.Process(handle.pid).environ()
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False
    # A program may rewrite its environment (setproctitle does); the tick still vouches.
    found = environ.get(INVOCATION_VAR)
    return found is None or found == handle.invocation_id


def _working_directory(value: Optional[str], env: Dict[str, str]) -> str:
    if not value:
        return "/"
    optional = value.startswith("-")
    path = value[1:] if optional else value
    if path == "~":
        path = env.get("HOME", "/")
    if os.path.isdir(path):
        return path
    if optional:
        return "/"
    raise DriverError(f"WorkingDirectory={path}: no such directory")

