"""Reading units' logs on the host: the last lines, without reading the whole file."""

from __future__ import annotations

import os
from typing import List

CHUNK = 64 * 1024
MAX_LINES = 10000


def tail(path: str, lines: int) -> List[str]:
    """The last ``lines`` lines of ``path`` (decoded leniently); [] if there is no log yet."""
    if lines <= 0:
        return []
    lines = min(lines, MAX_LINES)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    try:
        end = os.lseek(fd, 0, os.SEEK_END)
        data = b""
        pos = end
        while pos > 0 and data.count(b"\n") <= lines:
            step = min(CHUNK, pos)
            pos -= step
            os.lseek(fd, pos, os.SEEK_SET)
            data = os.read(fd, step) + data
    finally:
        os.close(fd)
    text = data.decode(errors="replace")
    return text.splitlines()[-lines:]
