"""Issue 10 against a real fleetd process: a NaN timeout no longer stops its timers, and
a ``journal -f`` whose client went away is unfollowed on the agent at once."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Dict, List

import agentkit
from labkit import Fleet, wait_for

from fleetd.client import ApiError

QUIET = "[Service]\nExecStart=/bin/sleep 100000\n"  # writes nothing: a follow only waits


def test_a_nan_timeout_is_refused_and_every_other_wait_still_ends(lone_fleet: Fleet) -> None:
    """``?timeout=nan`` put NaN into asyncio's timer heap: later waits never ended,
    machines never reconnected, SIGTERM took 65 s."""
    refusals: Dict[str, str] = {}
    later = 10**9  # a version not reached: the long poll runs to its timeout

    def ask(path: str) -> None:
        try:
            lone_fleet.api.get(path, timeout=60)
        except ApiError as exc:
            refusals[path] = f"{exc.status} {exc}"

    nan_paths = [f"/v1/machines?after={later}&timeout=nan",
                 f"/v1/machines?after={later}&timeout=inf",
                 "/v1/units/a.service/wait?timeout=nan"]
    askers = [threading.Thread(target=ask, args=(p,), daemon=True) for p in nan_paths]
    for t in askers:
        t.start()
    time.sleep(0.5)  # each answered, or taken into fleetd's timers
    answer = lone_fleet.api.get(f"/v1/machines?after={later}&timeout=0.3", timeout=20)
    assert answer["machines"] == []
    for t in askers:
        t.join(20)
    assert refusals == {p: f"400 timeout: want a number of at least 0, not {v!r}"
                        for p, v in zip(nan_paths, ["nan", "inf", "nan"])}


def open_fds_on(pid: int, suffix: str) -> int:
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(FileNotFoundError):  # closed meanwhile
            count += os.readlink(f"/proc/{pid}/fd/{fd}").endswith(suffix)
    return count


def test_a_journal_follow_whose_client_went_away_is_unfollowed(cluster: Fleet,
                                                              tmp_path: Any) -> None:
    """A ``journal -f`` of a quiet unit held its handler, its stream and the agent's
    follower (an open log file) for ever after the client went away."""
    (tmp_path / "quiet.service").write_text(QUIET)
    cluster.ctl("start", str(tmp_path / "quiet.service"))
    machine = wait_for("quiet.service placed", lambda: cluster.placed().get("quiet.service"))
    agent = agentkit.agent_pid(cluster.host(machine).state_dir)
    log = "/quiet.service.log"
    before = open_fds_on(agent, log)
    clients: List[socket.socket] = []
    for _ in range(3):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(cluster.socket)
        s.sendall(b"GET /v1/units/quiet.service/journal?follow=1&lines=1 HTTP/1.1\r\n"
                  b"Host: fleetd\r\n\r\n")
        assert s.recv(4096).startswith(b"HTTP/1.1 200 ")
        clients.append(s)
    wait_for("the agent to follow the log three times",
             lambda: open_fds_on(agent, log) == before + 3)
    for s in clients:
        s.close()
    wait_for("the agent to stop following it", lambda: open_fds_on(agent, log) == before)


def test_a_registry_that_is_no_database_stops_fleetd_with_a_clear_error(tmp_path: Any) -> None:
    state = tmp_path / "state"
    state.mkdir()
    (state / "registry.db").write_text("not a database\n")
    out = subprocess.run([sys.executable, "-m", "fleetd.daemon", "--state-dir", str(state),
                          "--socket", str(tmp_path / "sock")],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert f"{state}/registry.db: file is not a database" in out.stderr, out.stderr
    assert "Traceback" not in out.stderr
    assert (state / "registry.db").read_text() == "not a database\n"  # nothing lost
