"""The few file operations cgroupfs needs, with errors that name the file.

cgroupfs is not a normal file system: its files exist because the kernel made them when
the directory was made, a write is one value in one ``write(2)``, ``rmdir`` removes a
directory that still lists control files, and an unknown file means the kernel lacks a
feature. So writes never create files (a missing file is an error, never a silently
created regular file), and reads of optional files say "absent" instead of raising.
Writes open with O_TRUNC, as a shell's ``>`` does: the kernel ignores it, and a fake
tree in tests then holds exactly the last value written.
"""

from __future__ import annotations

import contextlib
import errno
import os
import signal
from typing import Callable, Dict, Iterable, List, Optional, Sequence

from fleetd.cgroups.base import CgroupError

# After these, a stopped process must be woken to act on them (systemd does the same).
WAKE_AFTER = frozenset({signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT})


def write(path: str, value: str) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
    except OSError as exc:
        raise CgroupError(f"{path}: cannot write {value!r}: {exc.strerror}") from None


def read(path: str) -> Optional[str]:
    """The file's text, or None if it does not exist (a feature this kernel lacks, or a
    cgroup that is gone)."""
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ENODEV:  # a cgroup removed while we read it
            return None
        raise CgroupError(f"{path}: cannot read: {exc.strerror}") from None


def keyed(path: str) -> Dict[str, int]:
    """A flat keyed file (``key value`` per line: memory.events, cpu.stat, ...)."""
    out: Dict[str, int] = {}
    for line in (read(path) or "").splitlines():
        parts = line.split()
        if len(parts) == 2 and parts[1].lstrip("-").isdigit():
            out[parts[0]] = int(parts[1])
    return out


def number(path: str) -> Optional[int]:
    text = (read(path) or "").strip()
    return int(text) if text.lstrip("-").isdigit() else None


def procs(directory: str) -> List[int]:
    """Processes in ``directory`` and every cgroup below it (a program may make its own
    sub-cgroups where it is allowed to), sorted."""
    found = set()
    for here, _dirs, _files in os.walk(directory):
        for word in (read(os.path.join(here, "cgroup.procs")) or "").split():
            found.add(int(word))
    return sorted(found)


def make(directory: str) -> None:
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as exc:
        raise CgroupError(f"{directory}: cannot create cgroup: {exc.strerror}") from None


def remove_tree(directory: str) -> None:
    """rmdir ``directory`` and the cgroups below it, deepest first; gone is fine."""
    if not os.path.isdir(directory):
        return
    for here, _dirs, _files in os.walk(directory, topdown=False):
        try:
            os.rmdir(here)
        except FileNotFoundError:
            continue
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                left = procs(here)
                raise CgroupError(f"{here}: cannot remove, processes remain: "
                                  f"{' '.join(map(str, left)) or '(exiting)'}") from None
            raise CgroupError(f"{here}: cannot remove: {exc.strerror}") from None


def signal_all(pids: Iterable[int], signum: int) -> int:
    """Signal each pid (gone ones are skipped); how many were signalled."""
    sent = 0
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            continue
        sent += 1
        if signum in WAKE_AFTER:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
    return sent


def joiner(procs_files: Sequence[str]) -> Callable[[], None]:
    """A preexec_fn that moves the calling process into each cgroup.procs.

    It runs in the forked child of a possibly multi-threaded agent, where only
    async-signal-safe work is sound: so the paths are encoded here, in the parent, and
    the child writes the constant ``0``, which the kernel reads as "the writing process"
    (in v1 and v2) - no pid formatting, no allocation beyond the calls themselves."""
    paths = tuple(os.fsencode(p) for p in procs_files)
    flags = os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC

    def join() -> None:
        for path in paths:
            fd = os.open(path, flags)
            try:
                os.write(fd, b"0")
            finally:
                os.close(fd)

    return join
