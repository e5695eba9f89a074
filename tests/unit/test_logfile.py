"""fleetd.agent.logfile: copytruncate rotation under a live O_APPEND writer, and following.

The writer in these tests is a real process holding its own O_APPEND descriptor, as a
unit's program does (drivers/exec.py): rotation must never block it, never leave NUL
holes, and never lose what it writes after a truncate.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from typing import AsyncGenerator, Callable, List, Optional, Sequence

import pytest

from fleetd.agent import logfile
from fleetd.agent.logfile import follow, last_lines, rotate_if_needed, rotated_path


def write(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


# --- rotation ------------------------------------------------------------------------


def test_below_the_limit_nothing_happens(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "u.log")
    write(path, "x" * 100)
    assert rotate_if_needed(path, 100, 3) is False  # "more than max_bytes" rotates
    assert read(path) == "x" * 100 and not os.path.exists(rotated_path(path, 1))


def test_a_missing_log_is_not_an_error(tmp_path: object) -> None:
    assert rotate_if_needed(os.path.join(str(tmp_path), "none.log"), 1, 3) is False


def test_rotation_keeps_n_numbered_newest_first(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "u.log")
    for generation in range(6):
        write(path, f"generation {generation}\n" * 10)
        assert rotate_if_needed(path, 50, 3) is True
        assert read(path) == ""  # the live file is emptied in place, not replaced
    assert read(rotated_path(path, 1)) == "generation 5\n" * 10
    assert read(rotated_path(path, 2)) == "generation 4\n" * 10
    assert read(rotated_path(path, 3)) == "generation 3\n" * 10
    assert sorted(os.listdir(str(tmp_path))) == ["u.log", "u.log.1", "u.log.2", "u.log.3"]


def test_the_live_file_keeps_its_inode_and_the_copy_its_mode(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "u.log")
    write(path, "a" * 200)
    os.chmod(path, 0o640)
    inode = os.stat(path).st_ino
    rotate_if_needed(path, 10, 2)
    assert os.stat(path).st_ino == inode  # the program's descriptor still points here
    assert os.stat(rotated_path(path, 1)).st_mode & 0o777 == 0o640


def test_keep_zero_only_empties_the_log(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "u.log")
    write(path, "a" * 200)
    assert rotate_if_needed(path, 10, 0) is True
    assert os.listdir(str(tmp_path)) == ["u.log"] and read(path) == ""


def test_copies_past_a_smaller_keep_are_removed(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "u.log")
    for n in range(1, 6):
        write(rotated_path(path, n), f"old {n}\n")
    write(path, "new\n" * 20)
    rotate_if_needed(path, 10, 2)
    assert sorted(os.listdir(str(tmp_path))) == ["u.log", "u.log.1", "u.log.2"]
    assert read(rotated_path(path, 1)) == "new\n" * 20
    assert read(rotated_path(path, 2)) == "old 1\n"


def _rotate_periodically_until(directory: str, max_bytes: int, keep: int,
                               done: Callable[[], bool], also: Sequence[str] = ()) -> None:
    """Run the agent's rotation loop (every 50 ms) until ``done()``, at most 2 s."""
    async def main() -> None:
        task = asyncio.ensure_future(logfile.rotate_periodically(
            directory, max_bytes, keep, interval_s=0.05, also=also))
        for _ in range(100):
            await asyncio.sleep(0.02)
            if done():
                break
        task.cancel()

    asyncio.run(main())


def test_scan_rotates_only_big_unit_logs(tmp_path: object) -> None:
    d = str(tmp_path)
    big, small = os.path.join(d, "big.service.log"), os.path.join(d, "small.service.log")
    write(big, "b" * 500)
    write(small, "s" * 10)
    write(rotated_path(big, 1), "r" * 500)  # a rotated copy: not a log
    write(os.path.join(d, "notes.txt"), "n" * 500)
    os.mkdir(os.path.join(d, "dir.log"))
    assert logfile.oversized(d, 100) == [big]
    assert logfile.oversized(os.path.join(d, "absent"), 100) == []
    _rotate_periodically_until(d, 100, 2, lambda: os.path.exists(rotated_path(big, 2)))
    assert read(rotated_path(big, 1)) == "b" * 500 and read(big) == ""
    assert read(rotated_path(big, 2)) == "r" * 500
    assert not os.path.exists(rotated_path(big, 3))  # rotated once: its copy is no log
    assert read(small) == "s" * 10 and not os.path.exists(rotated_path(small, 1))
    assert read(os.path.join(d, "notes.txt")) == "n" * 500
    assert sorted(os.listdir(d)) == ["big.service.log", "big.service.log.1",
                                     "big.service.log.2", "dir.log", "notes.txt",
                                     "small.service.log"]


def test_rotate_periodically_runs_the_scan(tmp_path: object) -> None:
    d = str(tmp_path)
    os.mkdir(os.path.join(d, "logs"))
    unit_log, agent_log = os.path.join(d, "logs", "u.log"), os.path.join(d, "agent.log")
    write(unit_log, "x" * 500)
    write(agent_log, "a" * 500)
    _rotate_periodically_until(
        os.path.join(d, "logs"), 100, 1,
        lambda: os.path.exists(unit_log + ".1") and os.path.exists(agent_log + ".1"),
        also=[agent_log])
    assert read(unit_log + ".1") == "x" * 500 and read(unit_log) == ""
    assert read(agent_log + ".1") == "a" * 500 and read(agent_log) == ""


# A unit's program: its own O_APPEND descriptor, numbered lines, one write() each. It
# reports the longest any write() took: a writer the rotation blocked would show it.
WRITER = r"""
import os, sys, time
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
count, pause = int(sys.argv[2]), float(sys.argv[3])
worst = 0.0
for i in range(count):
    t = time.perf_counter()
    os.write(fd, b"%08d the quick brown fox jumps over the lazy dog\n" % i)
    worst = max(worst, time.perf_counter() - t)
    if pause:
        time.sleep(pause)
print(worst)
"""


def _numbers(path: str) -> List[int]:
    with open(path, "rb") as f:
        data = f.read()
    assert b"\0" not in data, f"{path} has a NUL hole: a write landed past the end"
    lines = data.split(b"\n")
    assert lines[-1] == b"", f"{path} ends in half a line"
    return [int(line[:8]) for line in lines[:-1]]


def _all_files(path: str) -> List[str]:
    rotated = [f for f in os.listdir(os.path.dirname(path)) if f.startswith("u.log.")
               and f.rsplit(".", 1)[1].isdigit()]
    return [os.path.join(os.path.dirname(path), f)
            for f in sorted(rotated, key=lambda f: -int(f.rsplit(".", 1)[1]))] + [path]


def test_copytruncate_under_a_live_writer_loses_nothing_after_a_truncate(
        tmp_path: object) -> None:
    """The writer never stops while the agent rotates as fast as it can. Every file must
    then hold an unbroken run of whole lines (nothing written after a truncate is lost,
    no NUL hole, no torn line), the runs must follow each other in order, and the only
    loss allowed is at a rotation boundary: the copy-to-truncate window."""
    path = os.path.join(str(tmp_path), "u.log")
    count = 20000
    writer = subprocess.Popen([sys.executable, "-c", WRITER, path, str(count), "0.00002"],
                              stdout=subprocess.PIPE, text=True)
    rotations = 0
    try:
        while writer.poll() is None:
            if rotate_if_needed(path, 32 * 1024, 100000):
                rotations += 1
            time.sleep(0.001)
        out, _ = writer.communicate(timeout=60)
    finally:
        if writer.poll() is None:
            writer.kill()
    assert writer.returncode == 0
    assert float(out) < 0.5, f"a write() took {float(out):.3f}s: the writer was blocked"
    assert rotations >= 10
    seen: List[int] = []
    lost = 0
    for f in _all_files(path):
        numbers = _numbers(f)
        assert numbers == list(range(numbers[0], numbers[0] + len(numbers))) if numbers \
            else True, f"{f}: a gap inside one file"
        if seen and numbers:
            assert numbers[0] > seen[-1], "files out of order"
            lost += numbers[0] - seen[-1] - 1
        seen += numbers
    assert seen[-1] == count - 1
    # the window is microseconds; allow for the agent being preempted inside it
    assert lost <= count // 100, f"{lost} lines lost over {rotations} rotations"
    print(f"{rotations} rotations, {lost} lines lost at their boundaries")


def test_a_rotation_between_writes_loses_nothing(tmp_path: object) -> None:
    """Deterministic: the writer is stopped (SIGSTOP) while the agent rotates, and goes on
    with its same descriptor after: every line is in exactly one file, in order."""
    path = os.path.join(str(tmp_path), "u.log")
    writer = subprocess.Popen([sys.executable, "-c", WRITER, path, "600", "0.001"],
                              stdout=subprocess.PIPE, text=True)
    try:
        for _ in range(3):
            time.sleep(0.15)
            writer.send_signal(signal.SIGSTOP)
            try:
                assert rotate_if_needed(path, 100, 10)
            finally:
                writer.send_signal(signal.SIGCONT)
        writer.communicate(timeout=60)
    finally:
        if writer.poll() is None:
            writer.kill()
    numbers = [n for f in _all_files(path) for n in _numbers(f)]
    assert numbers == list(range(600))
    assert [os.path.exists(rotated_path(path, n)) for n in (1, 2, 3, 4)] == \
        [True, True, True, False]


# --- last lines ----------------------------------------------------------------------


def test_last_lines_hold_back_a_partial_line_and_reach_into_the_rotated_copy(
        tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "u.log")
    write(rotated_path(path, 1), "r1\nr2\nr3")  # a rotated copy is finished: r3 is a line
    write(path, "a\nb\r\nhalf")
    assert last_lines(path, 2) == ["a", "b"]
    assert last_lines(path, 4) == ["r2", "r3", "a", "b"]
    assert last_lines(path, 0) == []
    assert last_lines(os.path.join(str(tmp_path), "none.log"), 5) == []


def test_last_lines_reads_backwards_from_a_big_file(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "u.log")
    write(path, "".join(f"line {i} {'x' * 100}\n" for i in range(20000)))  # ~2 MB
    assert last_lines(path, 3) == [f"line {i} {'x' * 100}" for i in (19997, 19998, 19999)]
    assert len(last_lines(path, 5000)) == 5000


# --- follow --------------------------------------------------------------------------


class Follow:
    """Drives ``follow`` in a background task and collects what it yields."""

    def __init__(self, path: str, lines: int, partial_flush_s: float = 1.0) -> None:
        self.batches: List[List[str]] = []
        self.gen: AsyncGenerator[List[str], None] = follow(path, lines, poll_s=0.02,
                                                     partial_flush_s=partial_flush_s)
        self.task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        async for batch in self.gen:
            self.batches.append(batch)

    @property
    def lines(self) -> List[str]:
        return [line for batch in self.batches[1:] for line in batch]

    async def until(self, predicate: Callable[[], bool], timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while not predicate():
            assert time.monotonic() < deadline, f"timed out; got {self.batches!r}"
            await asyncio.sleep(0.01)

    async def first(self) -> List[str]:
        """The first batch: the last lines there were (always yielded, maybe empty)."""
        await self.until(lambda: len(self.batches) >= 1)
        return self.batches[0]

    async def stop(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


def _shows(f: Follow, want: List[str]) -> Callable[[], bool]:
    return lambda: f.lines == want


def run(coro: object) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_follow_yields_the_last_lines_then_appended_ones(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "u.log")
    write(path, "".join(f"old {i}\n" for i in range(10)))

    async def main() -> None:
        f = Follow(path, 3)
        assert await f.first() == ["old 7", "old 8", "old 9"]
        write(path, "new 1\nnew 2\n")
        await f.until(lambda: f.lines == ["new 1", "new 2"])
        write(path, "new 3\n")
        await f.until(lambda: f.lines == ["new 1", "new 2", "new 3"])
        await f.stop()

    run(main())


def test_follow_holds_a_partial_line_until_its_newline(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "u.log")
    write(path, "done\npar")

    async def main() -> None:
        f = Follow(path, 5, partial_flush_s=30)
        assert await f.first() == ["done"]
        write(path, "tial")
        await asyncio.sleep(0.2)
        assert f.lines == []  # still no newline: held
        write(path, " line\nnext")
        await f.until(lambda: f.lines == ["partial line"])
        await f.stop()

    run(main())


def test_follow_flushes_a_partial_line_after_a_while(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "u.log")
    write(path, "")

    async def main() -> None:
        f = Follow(path, 5, partial_flush_s=0.3)
        await f.first()
        write(path, "Password: ")  # a prompt that never gets its newline
        t0 = time.monotonic()
        await f.until(lambda: f.lines == ["Password: "])
        assert time.monotonic() - t0 >= 0.25
        await f.stop()

    run(main())


def test_follow_waits_for_a_log_that_does_not_exist_yet(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "u.log")

    async def main() -> None:
        f = Follow(path, 5)
        assert await f.first() == []  # always a first batch, so the caller can answer
        write(path, "first\n")
        await f.until(lambda: f.lines == ["first"])
        await f.stop()

    run(main())


def test_follow_across_rotations_misses_nothing(tmp_path: object) -> None:
    """Lines written after the follower's last poll but before the truncate are only in
    NAME.log.1: the follower picks them up there, then reads the emptied file afresh."""
    path = os.path.join(str(tmp_path), "u.log")
    write(path, "start\n")

    async def main() -> None:
        f = Follow(path, 1)
        await f.first()
        expected: List[str] = []
        for r in range(3):
            batch = [f"r{r} line {i}" for i in range(50)]
            write(path, "".join(line + "\n" for line in batch[:25]))
            expected += batch[:25]
            await f.until(_shows(f, list(expected)))
            # the next lines and the rotation land within one poll interval
            write(path, "".join(line + "\n" for line in batch[25:]))
            assert rotate_if_needed(path, 10, 5)
            write(path, f"after rotation {r}\n")
            expected += [*batch[25:], f"after rotation {r}"]
            await f.until(_shows(f, list(expected)))
        await f.stop()

    run(main())


def test_follow_notices_a_truncate_even_when_the_file_regrew(tmp_path: object) -> None:
    """Truncated and written past the old offset between two polls: the size alone
    says "grew", but the bytes before the offset are not what was read there."""
    path = os.path.join(str(tmp_path), "u.log")
    write(path, "aaaa\n" * 4)
    follower = logfile._Follower(path, 1.0)  # follow()'s state, driven by hand
    try:
        assert follower.initial(0) == []
        with open(path, "r+b") as fh:
            fh.truncate(0)
        write(path, "b" * 72 + "\n")
        assert follower.poll() == ["b" * 72]  # from the new start, not the old offset
    finally:
        follower.close()


def test_follow_moves_to_a_replaced_file(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "u.log")
    write(path, "old\n")

    async def main() -> None:
        f = Follow(path, 5)
        await f.first()
        write(path, "last words")  # no newline: the old file ends with it
        other = os.path.join(str(tmp_path), "new.log")
        write(other, "fresh\n")
        os.replace(other, path)
        await f.until(lambda: f.lines == ["last words", "fresh"])
        await f.stop()

    run(main())


def test_follow_does_not_busy_loop(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "u.log")
    write(path, "x\n")

    async def main() -> Optional[float]:
        gen = follow(path, 1)  # the real 0.2 s poll
        await gen.__anext__()
        task = asyncio.ensure_future(gen.__anext__())
        cpu = time.process_time()
        await asyncio.sleep(1.0)
        spent = time.process_time() - cpu
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await gen.aclose()
        return spent

    spent = asyncio.run(main())
    assert spent is not None and spent < 0.05, f"idle follow used {spent:.3f}s of CPU"


@pytest.mark.parametrize("size", [logfile.MAX_LINE_BYTES * 2 + 10])
def test_follow_cuts_an_endless_line(tmp_path: object, size: int) -> None:
    path = os.path.join(str(tmp_path), "u.log")
    write(path, "")

    async def main() -> None:
        f = Follow(path, 0, partial_flush_s=30)
        await f.first()
        write(path, "y" * size)
        await f.until(lambda: len(f.lines) == 2)
        assert [len(line) for line in f.lines] == [logfile.MAX_LINE_BYTES] * 2
        await f.stop()

    run(main())
