"""Reading a file the agent reads on a unit's behalf (EnvironmentFile=, a Java's
``release``): never blocking, never unbounded.

A unit names the path, so it may name anything: a FIFO (a plain ``open`` waits there
until someone writes, and the whole agent - every unit, every message to fleetd -
waits with it), ``/dev/zero`` or ``/proc/kcore`` (a plain ``read`` takes all memory), a
terminal. So the file is opened with O_NONBLOCK (an open of a FIFO returns at once),
checked with fstat on that same descriptor (no race with a rename), refused unless it
is a regular file, and read up to a bound: a regular file's read does not wait on
anyone. Standard library only, Python 3.9+ (agent side).

Run as a script (``python -I files.py PATH LIMIT``) it writes the file's content to
stdout: the java driver runs it as a unit's User= to read what that user may read.
"""

from __future__ import annotations

import os
import stat
import sys

MAX_BYTES = 1024 * 1024  # an environment file or a release file is a few KiB


class FileReadError(OSError):
    """The file is not one the agent reads for a unit; the message says why."""


def read_regular(path: str, limit: int = MAX_BYTES) -> bytes:
    """The content of the regular file ``path``, at most ``limit`` bytes. OSError if it
    cannot be opened; FileReadError if it is not a regular file or is larger."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise FileReadError(f"not a regular file ({_kind(mode)})")
        chunks = []
        left = limit + 1  # one byte more tells "exactly the limit" from "larger"
        while left > 0:
            chunk = os.read(fd, min(left, 65536))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        raise FileReadError(f"larger than {limit} bytes")
    return data


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device"), (stat.S_ISDIR, "a directory"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return "not a regular file"


if __name__ == "__main__":
    sys.stdout.buffer.write(read_regular(sys.argv[1], int(sys.argv[2])))
