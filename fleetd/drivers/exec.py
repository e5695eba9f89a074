"""The exec driver: a raw program, forked by the agent, in its own session.

The program gets systemd's view of a service: a clean environment (PATH, LANG, then
Environment=), ``/`` or WorkingDirectory= as its directory, stdin from /dev/null and
stdout/stderr appended to the unit's log file. Its argv is ExecStart= split like systemd
splits it (done by fleetd) and expanded here against that environment; no shell is
involved unless the unit names one.

It runs as the leader of a new session, so that it outlives the agent (no SIGHUP when
the agent dies) and so that one ``killpg`` reaches its helpers. A FLEET_INVOCATION_ID
in its environment lets a restarted agent prove it is the same program.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from typing import Any, Dict, Optional

import psutil

from fleetd.drivers.base import DriverError, Handle, StartContext, start_ticks
from fleetd.units import execline

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
INVOCATION_VAR = "FLEET_INVOCATION_ID"


def base_environment(ctx: StartContext) -> Dict[str, str]:
    """What every unit's program finds in its environment before Environment=."""
    return {
        "PATH": DEFAULT_PATH,
        "LANG": os.environ.get("LANG", "C.UTF-8"),
        "HOME": "/root" if os.geteuid() == 0 else os.environ.get("HOME", "/"),
        "FLEET_UNIT": ctx.unit,
        "FLEET_MACHINE_ID": ctx.machine_id,
        INVOCATION_VAR: ctx.invocation_id,
    }


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
    name = "exec"

    def start(self, config: Dict[str, Any], ctx: StartContext, command_index: int = 0) -> Handle:
        env = base_environment(ctx)
        env.update(config.get("environment") or {})
        command = config["commands"][command_index]
        try:
            path, argv = execline.argv(command, env)
        except execline.CommandLineError as exc:
            raise DriverError(f"ExecStart=: {exc}") from None
        path = resolve(path, env)
        cwd = _working_directory(config.get("working_directory"), env)
        try:
            log_fd = os.open(ctx.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                             0o640)
        except OSError as exc:
            raise DriverError(f"cannot open log {ctx.log_path}: {exc.strerror}") from None
        try:
            proc = subprocess.Popen(
                argv,
                executable=path,
                env=env,
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log_fd,
                stderr=log_fd,
                start_new_session=True,
                close_fds=True,
                restore_signals=True,
            )
        except (OSError, ValueError) as exc:  # ValueError: a NUL in argv or environment
            raise DriverError(f"{path}: {getattr(exc, 'strerror', None) or exc}") from None
        finally:
            os.close(log_fd)
        # The supervisor reaps by pid (it must also watch programs a previous agent
        # started); marking the Popen done keeps subprocess's own reaper off this pid.
        proc.returncode = 0
        try:
            create_time = psutil.Process(proc.pid).create_time()
        except psutil.NoSuchProcess:
            create_time = 0.0  # already gone: the supervisor's waitpid will say how
        return Handle(driver=self.name, pid=proc.pid, create_time=create_time,
                      started_at=time.time(), invocation_id=ctx.invocation_id,
                      start_ticks=start_ticks(proc.pid))

    def signal(self, handle: Handle, signum: int) -> None:
        # The program leads its own process group (start_new_session); with cgroups the
        # whole cgroup is signalled instead, which also reaches programs that daemonise.
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
        handle = Handle.from_record(record)
        if not same_process(handle):
            return None
        return handle


def same_process(handle: Handle) -> bool:
    """Is ``handle.pid`` still the program we started? The kernel's start tick must be
    exactly the recorded one (a reused pid fails it), and the invocation id in its
    environment must match where it is still there to read."""
    if handle.start_ticks < 0 or start_ticks(handle.pid) != handle.start_ticks:
        return False
    try:
        proc = psutil.Process(handle.pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        environ = proc.environ()
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


def exit_description(status: int) -> str:
    """``exited 3`` / ``killed by SIGKILL``, as a user reads it."""
    if status < 0:
        try:
            return f"killed by {signal.Signals(-status).name}"
        except ValueError:
            return f"killed by signal {-status}"
    return f"exited {status}"


def wait_status_to_code(status: int) -> int:
    """os.waitpid's status as a returncode (negative signal numbers, like subprocess)."""
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    if os.WIFEXITED(status):
        return os.WEXITSTATUS(status)
    return -1

