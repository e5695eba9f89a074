"""Units' log files on the host: rotation the programs never notice, and following them.

A program writes its stdout and stderr straight into ``logs/NAME.log`` through a file
descriptor it inherited, opened with O_APPEND (drivers/exec.py). Not through a pipe to
the agent: a pipe's reader is the agent, and a program writing into a pipe whose reader
died gets SIGPIPE, so every program would die with its agent or block while the agent
restarts. Programs must outlive the agent, so the agent never sits between a program
and its log.

That rules out rename-based rotation (the program would go on writing into the renamed
file, for ever) and leaves copytruncate, as logrotate does it for programs that cannot
reopen their logs: copy NAME.log to NAME.log.1, then truncate NAME.log to zero.
O_APPEND is what makes the truncate safe: every write() lands at the file's current end,
so after the truncate the program goes on writing at offset 0 (without O_APPEND it
would write at its old offset and leave a hole of NUL bytes in front of it).

The loss window: bytes the program appends after the copy has read the file's last
byte and before the truncate are in neither file. ``rotate_if_needed`` keeps that window
as short as it can: the copy runs in the kernel (sendfile), re-checks the size and
copies again if the file grew meanwhile, and truncates right after its final read.
Measured on a busy 2-core VM against a writer doing nothing but write(): the window is
~25 us at the median and a few ms when the agent is preempted inside it; most rotations
lose nothing, some lose a few lines. On Linux a write() with O_APPEND and ftruncate()
both hold the inode's lock, so what is lost is whole write() calls, never half a line,
and nothing written after the truncate is lost; the program never blocks on the
rotation nor sees an error. Rotation comes once per ``max_bytes`` of output, and a
program's log is a diagnostic, not a ledger: the agent accepts that window rather than
ever making a program's fate depend on the agent. (Only FALLOC_FL_COLLAPSE_RANGE
would close it, on ext4/XFS only and in whole blocks, splitting lines between files.)

Files: NAME.log (live), NAME.log.1 (newest rotated) ... NAME.log.KEEP (oldest); a
rotated copy is written beside its final name and renamed into place, so a reader sees
a whole copy or none.

Standard library only; Python 3.9+ (agent side).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import AsyncGenerator, List, Optional, Sequence, Tuple

log = logging.getLogger("fleet-agent")

DEFAULT_MAX_BYTES = 10 * 1024 * 1024
DEFAULT_KEEP = 3
SCAN_INTERVAL_S = 10.0
LOG_SUFFIX = ".log"

POLL_S = 0.2  # how often a follower looks at the file's size
PARTIAL_FLUSH_S = 1.0  # a last line without its newline is shown after this long
MAX_LINE_BYTES = 64 * 1024  # a "line" longer than this is shown in pieces
READ_CHUNK = 256 * 1024
COPY_CHUNK = 1024 * 1024
COPY_ROUNDS = 8  # a program writing faster than a copy is bounded, not chased for ever
CHECK_BYTES = 64  # bytes compared to tell "grew" from "rotated and grew again"
TAIL_MAX_LINES = 10000
TAIL_MAX_BYTES = 16 * 1024 * 1024  # a tail reads back this far at most (one huge "line")


def rotated_path(path: str, n: int) -> str:
    return f"{path}.{n}"


# --- rotation ------------------------------------------------------------------------
def rotate_if_needed(path: str, max_bytes: int, keep: int) -> bool:
    """Rotate ``path`` (copytruncate, see the module docstring) if it holds more than
    ``max_bytes``, keeping ``keep`` rotated copies (0: just empty it). True if rotated."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except (FileNotFoundError, IsADirectoryError):
        return False
    try:
        st = os.fstat(fd)
        if st.st_size <= max_bytes:
            return False
        if keep <= 0:
            os.ftruncate(fd, 0)
            return True
        _shift(path, keep)
        tmp = rotated_path(path, 1) + ".tmp"
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC,
                      st.st_mode & 0o777)
        try:
            _copy_to_end(fd, out)
            os.ftruncate(fd, 0)  # right after the copy's last read: the loss window
        finally:
            os.close(out)
        os.replace(tmp, rotated_path(path, 1))
        return True
    finally:
        os.close(fd)


def _shift(path: str, keep: int) -> None:
    """NAME.log.K -> NAME.log.K+1 for the copies there are (the one at ``keep`` falls
    off); copies numbered past ``keep`` (left from a larger setting) are removed. Only
    existing copies are touched: they run from .1 without gaps, so this costs a stat
    and a rename per copy, not per possible number."""
    extra = keep + 1
    while os.path.exists(rotated_path(path, extra)):
        os.unlink(rotated_path(path, extra))
        extra += 1
    top = 1
    while top < keep and os.path.exists(rotated_path(path, top)):
        top += 1
    for n in range(top - 1, 0, -1):
        os.replace(rotated_path(path, n), rotated_path(path, n + 1))


def _copy_to_end(src: int, dst: int) -> None:
    """Copy ``src`` from its start until a read finds its end, in the kernel
    (sendfile), so the window before the truncate is as short as it can be."""
    offset = 0
    for _ in range(COPY_ROUNDS):
        while True:
            try:
                sent = os.sendfile(dst, src, offset, COPY_CHUNK)
            except OSError:  # a filesystem without file-to-file sendfile
                data = os.pread(src, COPY_CHUNK, offset)
                sent = len(data)
                if sent:
                    os.write(dst, data)
            if sent == 0:
                break
            offset += sent
        if os.fstat(src).st_size <= offset:
            return


def oversized(directory: str, max_bytes: int) -> List[str]:
    """The ``*.log`` files in ``directory`` larger than ``max_bytes``: one getdents and
    one stat per unit, cheap enough to run every few seconds for hundreds of units."""
    found: List[str] = []
    try:
        with os.scandir(directory) as entries:
            for entry in entries:
                if not entry.name.endswith(LOG_SUFFIX):
                    continue
                try:
                    if entry.is_file(follow_symlinks=False) and \
                            entry.stat(follow_symlinks=False).st_size > max_bytes:
                        found.append(entry.path)
                except FileNotFoundError:
                    continue
    except FileNotFoundError:
        return []
    return found


async def rotate_periodically(directory: str, max_bytes: int = DEFAULT_MAX_BYTES,
                              keep: int = DEFAULT_KEEP,
                              interval_s: float = SCAN_INTERVAL_S,
                              also: Sequence[str] = ()) -> None:
    """Scan ``directory`` (and the files in ``also``, such as the agent's own log, which
    it too writes through an O_APPEND descriptor) every ``interval_s``, for ever;
    cancel to stop. Looking is only stats and runs in the event loop; a copy, which may
    be megabytes, runs in the default executor so that it never stalls supervision."""
    loop = asyncio.get_running_loop()
    while True:
        await asyncio.sleep(interval_s)
        extra = [p for p in also if _size(p) > max_bytes]
        for path in oversized(directory, max_bytes) + extra:
            try:
                if await loop.run_in_executor(None, rotate_if_needed, path, max_bytes, keep):
                    log.info("rotated %s", path)
            except OSError as exc:
                log.warning("cannot rotate %s: %s", path, exc)


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except OSError:
        return 0


# --- reading -------------------------------------------------------------------------
def last_lines(path: str, lines: int) -> List[str]:
    """The last ``lines`` complete lines of a unit's log, reaching into NAME.log.1 when
    the live file holds fewer (just after a rotation it is empty). A last line still
    without its newline is left out: ``follow`` shows it once it is complete."""
    found = _tail_of_path(path, lines, finished=False)
    pieces = [piece for line in _with_older(path, found, lines) for piece in _pieces(line)]
    return [_text(b) for b in pieces[-lines:]] if lines > 0 else []


def _pieces(line: bytes) -> List[bytes]:
    """A line in pieces of at most MAX_LINE_BYTES, as ``follow`` shows a long one (and
    so that every line fits in a message to fleetd)."""
    return [line[i:i + MAX_LINE_BYTES] for i in range(0, len(line), MAX_LINE_BYTES)] or [line]


def _with_older(path: str, found: List[bytes], lines: int) -> List[bytes]:
    """``found`` (from the live file) preceded by NAME.log.1's last lines, up to ``lines``."""
    if len(found) >= lines or lines <= 0:
        return found[-lines:] if lines > 0 else []
    older = _tail_of_path(rotated_path(path, 1), lines - len(found), finished=True)
    return older + found


def _tail_of_path(path: str, lines: int, finished: bool) -> List[bytes]:
    """The last ``lines`` complete lines of ``path`` (none if it does not exist)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return []
    try:
        return _tail_of(fd, os.fstat(fd).st_size, lines, finished)[0]
    finally:
        os.close(fd)


def _tail_of(fd: int, end: int, lines: int, finished: bool) -> Tuple[List[bytes], bytes]:
    """(the last ``lines`` complete lines before offset ``end``, the unterminated rest).
    Reads backwards in chunks, never the whole file. ``finished``: the file will not
    grow (a rotated copy), so an unterminated end is a line of its own."""
    lines = max(0, min(lines, TAIL_MAX_LINES))
    data, pos = b"", end
    while pos > 0 and data.count(b"\n") <= lines and end - pos < TAIL_MAX_BYTES:
        step = min(READ_CHUNK, pos)
        pos -= step
        data = os.pread(fd, step, pos) + data
    complete, newline, rest = data.rpartition(b"\n")
    found = complete.split(b"\n") if newline else []
    if not newline:
        rest = data
    if pos > 0 and found:
        found = found[1:]  # read from mid-file: the first piece may be half a line
    if finished and rest:
        found.append(rest)
        rest = b""
    return (found[-lines:] if lines else []), rest


def _text(line: bytes) -> str:
    if line.endswith(b"\r"):
        line = line[:-1]
    return line.decode(errors="replace")


class _Follower:
    """The reading state behind ``follow``: where it is in which file."""

    def __init__(self, path: str, partial_flush_s: float) -> None:
        self.path = path
        self.partial_flush_s = partial_flush_s
        self.fd: Optional[int] = None
        self.ino = -1
        self.pos = 0  # bytes of the live file consumed (complete lines + ``partial``)
        self.partial = b""
        self.partial_since = 0.0
        self.recent = b""  # the last bytes consumed: proof that the file is still ours
        self.more = False  # the last read was cut short: read again before sleeping

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def _open(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return False
        self.close()
        self.fd, self.ino = fd, os.fstat(fd).st_ino
        self.pos, self.recent = 0, b""
        return True

    def initial(self, lines: int) -> List[str]:
        """The last ``lines`` lines; reading goes on from the end of what they came from
        (one snapshot of the size, so that nothing falls between the two)."""
        found: List[bytes] = []
        if self._open():
            assert self.fd is not None
            size = os.fstat(self.fd).st_size
            found, self.partial = _tail_of(self.fd, size, lines, finished=False)
            self.partial_since = time.monotonic()  # held until its newline comes
            self.pos = size
            self.recent = os.pread(self.fd, min(CHECK_BYTES, size), max(0, size - CHECK_BYTES))
        return [_text(b) for b in _with_older(self.path, found, lines)]

    def poll(self) -> List[str]:
        """Whatever complete lines are new since the last poll (maybe none)."""
        self.more = False
        try:
            st: Optional[os.stat_result] = os.stat(self.path)
        except FileNotFoundError:
            st = None
        out: List[bytes] = []
        if self.fd is None:
            if st is None or not self._open():
                return []
        elif st is None or st.st_ino != self.ino:
            out += self._read()  # replaced or removed: finish the old file first
            out += self._flush_partial()
            self.close()
            if st is None or not self._open():
                return [_text(b) for b in out]
        elif st.st_size < self.pos or (st.st_size > self.pos and not self._still_ours()):
            out += self._missed_by_rotation()  # truncated (copytruncate) or truncated+grown
            self.pos, self.recent = 0, b""
        out += self._read()
        if self.partial and time.monotonic() - self.partial_since >= self.partial_flush_s:
            out += self._flush_partial()
        return [_text(b) for b in out]

    def _still_ours(self) -> bool:
        """Do the bytes before ``pos`` still read as what we consumed? If not, the file
        was truncated and has since grown past where we were."""
        if not self.recent or self.fd is None:
            return True
        start = self.pos - len(self.recent)
        return os.pread(self.fd, len(self.recent), start) == self.recent

    def _missed_by_rotation(self) -> List[bytes]:
        """The lines written between our last read and the truncate, from the copy in
        NAME.log.1, if that copy provably continues what we read; else only the held
        partial line."""
        rotated = rotated_path(self.path, 1)
        try:
            fd = os.open(rotated, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return self._flush_partial()
        try:
            size = os.fstat(fd).st_size
            start = self.pos - len(self.recent)
            if size < self.pos or start < 0 or \
                    os.pread(fd, len(self.recent), start) != self.recent:
                return self._flush_partial()
            data, pos = b"", self.pos
            while pos < size:
                chunk = os.pread(fd, min(READ_CHUNK, size - pos), pos)
                if not chunk:
                    break
                data += chunk
                pos += len(chunk)
        finally:
            os.close(fd)
        lines = self._split(data)
        return lines + self._flush_partial()  # the rotated file is finished

    def _read(self) -> List[bytes]:
        if self.fd is None:
            return []
        data = os.pread(self.fd, READ_CHUNK, self.pos)
        if not data:
            return []
        self.more = len(data) == READ_CHUNK
        self.pos += len(data)
        self.recent = (self.recent + data)[-CHECK_BYTES:]
        return self._split(data)

    def _split(self, data: bytes) -> List[bytes]:
        if not data:
            return []
        if not self.partial:
            self.partial_since = time.monotonic()
        buf = self.partial + data
        complete, newline, rest = buf.rpartition(b"\n")
        lines = complete.split(b"\n") if newline else []
        self.partial = rest if newline else buf
        if newline and rest:
            self.partial_since = time.monotonic()
        while len(self.partial) > MAX_LINE_BYTES:
            lines.append(self.partial[:MAX_LINE_BYTES])
            self.partial = self.partial[MAX_LINE_BYTES:]
        return lines

    def _flush_partial(self) -> List[bytes]:
        held, self.partial = self.partial, b""
        return [held] if held else []


async def follow(path: str, initial_lines: int, poll_s: float = POLL_S,
                 partial_flush_s: float = PARTIAL_FLUSH_S
                 ) -> AsyncGenerator[List[str], None]:
    """``fleetctl journal -f``: first the last ``initial_lines`` lines (a list, maybe
    empty, always yielded so the caller can answer at once), then batches of new lines
    as they are appended, for ever. To stop, cancel the consuming task or ``aclose()``
    the generator: either closes the file at once.

    Polls the file's size every ``poll_s`` (no inotify: it is not in the standard
    library, and a stat every 0.2 s costs nothing); reads on without sleeping only while
    a backlog remains. Copes with rotation: a file that shrank, or that no longer holds
    what was read where it was read, was truncated, so the lines written just before
    are taken from NAME.log.1 and reading goes on from the start; a file replaced or
    removed is finished and the new one followed from its start. A last line without
    its newline is held until the newline comes, or shown after ``partial_flush_s``
    (the rest then arrives as a line of its own)."""
    follower = _Follower(path, partial_flush_s)
    try:
        yield follower.initial(initial_lines)
        while True:
            lines = follower.poll()
            if lines:
                yield lines
            if follower.more:
                await asyncio.sleep(0)  # a backlog: read on, but let the loop breathe
            else:
                await asyncio.sleep(poll_s)
    finally:
        follower.close()
