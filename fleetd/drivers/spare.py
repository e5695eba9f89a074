"""A prepared process: a unit's next program, forked and placed in the unit's cgroups
before it is needed, so that a restart is an exec and nothing more.

Why: on a host whose cgroup2 is not mounted with ``favordynmods`` (the default), the
first write to a ``cgroup.procs`` after a while waits for an RCU grace period (the
writer side of the global cgroup_threadgroup_rwsem): ~13 ms of the ~16-22 ms from a
crash to the new program. systemd pays it too. A spare pays it while the program still
runs, off the restart's path; at the restart it only execs.

What a spare is: ``/bin/sh`` (dash on Debian: ~0.1 MiB of private memory, against ~2.5
MiB for a Python and up to the agent's whole heap for a fork of the agent, whose
copy-on-write pages it would pin as the agent runs), started by the agent with Popen as
any program is - its own session, signals restored, no inherited fds - whose preexec
joins the unit's cgroup ``leaf`` (below the unit's, in every hierarchy: KernelUnit.leaf)
and sets the unit's LimitNOFILE=. It then reads its script from a pipe. At the restart
the agent writes the script: change directory, open the unit's log, give the program
the agent's OOM score back, set exactly the program's environment, and ``exec`` it
(through ``setpriv`` for User=/Group=: util-linux's, switching groups, gid and uid in
that order, as the exec driver's preexec does). The pid, already a child of the agent,
becomes the program's; the agent reaps it as any program.

Its stderr is a pipe to the agent until the final exec redirects it to the log: the
agent reads that pipe to its end, so a failed ``cd`` or log open comes back as the
start's error (DriverError), and the end of the pipe says the exec is under way. An exec
that fails after that point (a binary that vanished since the agent checked it,
ENOEXEC) shows as the program exiting 126/127 with the shell's message in the unit's
log, which Restart= judges like any exit.

While it waits a spare holds one task of the unit (the unit's pids.max is TasksMax+1
and the run's own leaf TasksMax, so the program keeps exactly TasksMax), ~0.2 MiB of its
memory (counted in MemoryMax=), no CPU, and an OOM score of -1000 (an OOM kill must hit
the program, as it would without a spare; best effort: some kernels, this lab's among
them, refuse negative scores even to root, and a dash's ~1.6 MiB RSS then makes it the
victim only beside a smaller program). If the agent dies, the pipe's end reaches
the spare and it exits; a new agent kills what is left in that leaf anyway.
"""

from __future__ import annotations

import contextlib
import os
import re
import select
import shlex
import signal
import subprocess
import time
from typing import Callable, Dict, List, Optional, Tuple

from fleetd.drivers.base import DriverError

SH = "/bin/sh"
LEAVES = ("run0", "run1")  # a unit's runs alternate between these cgroups below its own
SETPRIV_PATHS = ("/usr/bin/setpriv", "/bin/setpriv")
ENV_PATHS = ("/usr/bin/env", "/bin/env")
OOM_ADJ = "/proc/self/oom_score_adj"
NEVER_OOM = b"-1000"
EXEC_WAIT_S = 2.0  # a spare that does not answer its script in this time is given up
_SHELL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def tool(paths: Tuple[str, ...]) -> Optional[str]:
    for path in paths:
        if os.access(path, os.X_OK):
            return path
    return None


def _oom_adj() -> str:
    try:
        with open(OOM_ADJ) as f:
            return f.read().strip() or "0"
    except OSError:
        return "0"


def _umask() -> int:
    """The agent's umask, for the program (as a forked one inherits it); read, not set
    and restored, which would race with a Popen in a worker thread."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o022


class PreparedProcess:
    """One spare: its pid, the cgroup leaf it waits in, and the two pipes to it."""

    def __init__(self, proc: subprocess.Popen[bytes], script_fd: int, errors_fd: int,
                 leaf: str) -> None:
        self.pid = proc.pid
        self.leaf = leaf
        self._proc = proc
        self._script_fd = script_fd
        self._errors_fd = errors_fd
        self._done = False

    def __repr__(self) -> str:
        return f"PreparedProcess(pid={self.pid}, leaf={self.leaf!r}, done={self._done})"

    def run(self, script: bytes) -> None:
        """Hand the spare its script and wait until it execs (its error pipe ends);
        DriverError (the spare reaped) if it fails or does not answer."""
        if self._done:
            raise DriverError("the prepared process was used or discarded already")
        why = ""
        try:
            view = memoryview(script)
            while view:
                view = view[os.write(self._script_fd, view):]
            os.close(self._script_fd)
            self._script_fd = -1
            why = self._read_errors()
        except OSError as exc:  # EPIPE: it died while waiting
            why = f"the prepared process is gone ({exc.strerror})"
        if why:
            self.discard()
            raise DriverError(why)
        self._done = True
        self._close()

    def _read_errors(self) -> str:
        chunks: List[bytes] = []
        deadline = time.monotonic() + EXEC_WAIT_S
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return f"the prepared process did not exec within {EXEC_WAIT_S}s"
            ready, _w, _x = select.select([self._errors_fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._errors_fd, 4096)
            if not chunk:
                return b"".join(chunks).decode(errors="replace").strip()
            chunks.append(chunk)

    def discard(self) -> None:
        if not self._done:
            self._done = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
        self._close()

    def _close(self) -> None:
        for fd in (self._script_fd, self._errors_fd):
            if fd >= 0:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._script_fd = self._errors_fd = -1


def prepare(setup: Callable[[], None], leaf: str) -> PreparedProcess:
    """Start a spare whose preexec is ``setup`` (join the leaf's cgroups, LimitNOFILE=);
    returns once it waits for its script. DriverError if it cannot be set up."""
    script_r, script_w = os.pipe()
    errors_r, errors_w = os.pipe()

    def preexec() -> None:
        try:  # best effort: some kernels refuse negative scores (EIO), even to root
            fd = os.open(OOM_ADJ, os.O_WRONLY)
            try:
                os.write(fd, NEVER_OOM)
            finally:
                os.close(fd)
        except OSError:
            pass
        setup()

    try:
        proc = subprocess.Popen(
            ["fleet-spare"], executable=SH, stdin=script_r, stdout=subprocess.DEVNULL,
            stderr=errors_w, env={}, cwd="/", start_new_session=True, close_fds=True,
            restore_signals=True, preexec_fn=preexec)
    except (OSError, subprocess.SubprocessError) as exc:
        for fd in (script_w, errors_r):
            os.close(fd)
        raise DriverError(f"cannot prepare a process: {exc}") from None
    finally:
        os.close(script_r)
        os.close(errors_w)
    proc.returncode = 0  # reaped by us (discard) or, once it is the program, the agent
    return PreparedProcess(proc, script_w, errors_r, leaf)


def script(path: str, argv: List[str], env: Dict[str, str], cwd: str, log_path: str,
           setpriv: Optional[List[str]], hidden: bool = False,
           umask: Optional[int] = None, oom_score_adj: Optional[int] = None
           ) -> Optional[bytes]:
    """The shell script that turns a spare into the program; None if this command
    cannot be started that way (an argv[0] other than the path exec'd: sh's exec has
    no way to set it; or ``hidden``, the environment holds a unit's secrets, and a name
    sh refuses would put every value in env(1)'s command line, which ``ps`` shows).
    ``umask`` and ``oom_score_adj`` are the program's (UMask=, OOMScoreAdjust=); None:
    the agent's own."""
    if argv[0] != path:
        return None
    q = shlex.quote
    if umask is None:
        umask = _umask()
    lines = [
        f"cd -- {q(cwd)} || exit 1",
        f"umask 027; exec 4>>{q(log_path)} || exit 1; umask {umask:04o}",
        f"echo {_oom_adj() if oom_score_adj is None else oom_score_adj} >{OOM_ADJ} || exit 1",
        "unset PWD OLDPWD",
    ]
    words: List[str] = []
    if all(_SHELL_NAME.match(k) for k in env):
        if env:
            lines.append("export " + " ".join(q(f"{k}={v}") for k in sorted(env)
                                              for v in (env[k],)))
    else:  # a name sh refuses: let env(1) set them
        env_tool = tool(ENV_PATHS)
        if env_tool is None or hidden:
            return None
        words = [env_tool, "-i", "--"] + [f"{k}={v}" for k, v in sorted(env.items())]
        if "=" in path:
            return None  # env(1) would take it for one more variable
    if setpriv is not None:
        words = [*setpriv, "--", *words]
    words += argv
    lines.append("exec </dev/null >&4 2>&4 4>&- " + " ".join(q(w) for w in words))
    return ("\n".join(lines) + "\n").encode(errors="surrogateescape")
