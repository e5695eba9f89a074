"""fleetd.agent.health against real servers: python3 -m http.server, a real TCP listener,
real commands, and a real Debian program (redis-server, checked with redis-cli ping).

Each check config comes from a unit's [X-Check] text through fleetd.units.xcheck, as
the agent receives it, with only the interval and timeout shortened (the unit syntax
refuses sub-second intervals; the agent trusts what it is sent).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
from labkit import alive, wait_for

from fleetd.agent.health import FAILING, PASSING, HealthChecker, acts_on_failing
from fleetd.units import xcheck
from fleetd.units.context import UnitContext
from fleetd.units.model import parse_name
from fleetd.units.parser import parse

FAST = {"interval_s": 0.2, "timeout_s": 0.5}


def check_config(body: str, **override: Any) -> Dict[str, Any]:
    text = "[Service]\nExecStart=/bin/true\n[X-Check]\n" + body
    ctx = UnitContext(parse(text, "t.service"), parse_name("t.service"), "t.service")
    found = xcheck.config(ctx)
    assert found is not None
    return {**found, **FAST, **override}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.02)
    pytest.fail(f"nothing listens on {port} after {timeout}s")


class Server:
    """A real program listening on 127.0.0.1; stopped by its own pid."""

    def __init__(self, argv: List[str], port: int, cwd: str) -> None:
        self.port = port
        self.proc = subprocess.Popen(argv, cwd=cwd, stdout=subprocess.DEVNULL,
                                     stderr=open(os.path.join(cwd, f"server-{port}.log"),  # noqa: SIM115
                                                 "ab"))
        wait_port(port)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def http_server(cwd: str, port: Optional[int] = None) -> Server:
    port = port or free_port()
    return Server([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                  port, cwd)


# The same server with a listen backlog of 1024 instead of http.server's 5: for many
# checkers sharing one server (each unit would have its own)
BIG_BACKLOG = ("import http.server as h, sys\n"
               "h.ThreadingHTTPServer.request_queue_size = 1024\n"
               "h.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])),"
               " h.SimpleHTTPRequestHandler).serve_forever()\n")


@pytest.fixture
def site(tmp_path: Any) -> Iterator[str]:
    d = str(tmp_path / "site")
    os.mkdir(d)
    with open(os.path.join(d, "health"), "w") as f:
        f.write("ok\n")
    yield d


class Run:
    """One HealthChecker under test, with every verdict it reported and when."""

    def __init__(self, check: Dict[str, Any], **kwargs: Any) -> None:
        self.verdicts: List[Tuple[str, str, int, float]] = []
        self.t0 = time.monotonic()
        self.checker = HealthChecker("t.service", check, self._verdict, **kwargs)

    def _verdict(self, health: str, detail: str) -> None:
        self.verdicts.append((health, detail, self.checker.checks,
                              time.monotonic() - self.t0))

    def start(self, since_start_s: float = 0.0) -> None:
        self.t0 = time.monotonic()
        self.checker.start(since_start_s)

    @property
    def healths(self) -> List[str]:
        return [v[0] for v in self.verdicts]

    async def until(self, health: str, count: int = 1, timeout: float = 10.0
                    ) -> Tuple[str, str, int, float]:
        deadline = time.monotonic() + timeout
        while self.healths.count(health) < count:
            assert time.monotonic() < deadline, f"no {health} verdict; got {self.verdicts}"
            await asyncio.sleep(0.02)
        return [v for v in self.verdicts if v[0] == health][count - 1]

    async def checks(self, n: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.checker.checks < n:
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)


# --- http ----------------------------------------------------------------------------


def test_http_check_passes_against_a_real_http_server(site: str) -> None:
    server = http_server(site)
    check = check_config(f"Type=http\nURL=http://127.0.0.1:{server.port}/health\n")

    async def main() -> None:
        run = Run(check)
        run.start()
        _, detail, checks, _ = await run.until(PASSING)
        assert (detail, checks) == ("HTTP 200 OK", 1)  # SuccessThreshold=1
        await run.checks(4)
        assert run.healths == [PASSING]  # the callback fires on changes only
        await run.checker.close()

    try:
        asyncio.run(main())
    finally:
        server.stop()
    with open(os.path.join(site, f"server-{server.port}.log")) as f:
        log = f.read()
    assert '"GET /health HTTP/1.0" 200' in log
    assert "Traceback" not in log and "reset" not in log.lower()  # hung up politely


def test_http_status_outside_expect_status_fails(site: str) -> None:
    server = http_server(site)
    url = f"http://127.0.0.1:{server.port}/missing"

    async def main() -> None:
        run = Run(check_config(f"Type=http\nURL={url}\nFailureThreshold=2\n"))
        run.start()
        _, detail, checks, _ = await run.until(FAILING)
        assert detail == "HTTP 404 File not found (want 200-399)" and checks == 2
        await run.checker.close()
        # a 404 can be what passing looks like
        run = Run(check_config(f"Type=http\nURL={url}\nExpectStatus=404\n"))
        run.start()
        assert (await run.until(PASSING))[1] == "HTTP 404 File not found"
        await run.checker.close()

    try:
        asyncio.run(main())
    finally:
        server.stop()


def test_nobody_listening_fails_after_the_threshold_not_before() -> None:
    port = free_port()
    check = check_config(f"Type=http\nURL=http://127.0.0.1:{port}/\nFailureThreshold=3\n")

    async def main() -> None:
        run = Run(check)
        run.start()
        await run.checks(2)
        assert run.verdicts == []  # two failures: still unknown
        _, detail, checks, _ = await run.until(FAILING)
        assert checks == 3
        assert detail == f"127.0.0.1:{port}: Connection refused"
        await run.checks(6)
        assert run.healths == [FAILING]
        await run.checker.close()

    asyncio.run(main())


def test_failures_in_the_start_grace_do_not_count() -> None:
    port = free_port()
    check = check_config(f"Type=tcp\nPort={port}\nStartGrace=1s\nFailureThreshold=2\n")

    async def main() -> None:
        run = Run(check)
        run.start()
        _, _, checks, at = await run.until(FAILING)
        assert at >= 1.0, "failed inside the start grace"
        assert checks >= 1.0 / FAST["interval_s"] + 1  # grace checks ran, did not count
        await run.checker.close()
        # a re-adopted program that has already run past its grace gets none
        run = Run(check)
        run.start(since_start_s=5.0)
        _, _, checks, at = await run.until(FAILING)
        assert checks == 2 and at < 1.0
        await run.checker.close()

    asyncio.run(main())


def test_a_pass_ends_the_start_grace(site: str) -> None:
    server = http_server(site)
    check = check_config(f"Type=http\nURL=http://127.0.0.1:{server.port}/health\n"
                         "StartGrace=1min\nFailureThreshold=2\n")

    async def main() -> None:
        run = Run(check)
        run.start()
        await run.until(PASSING)
        server.stop()  # the program is up, then dies well inside the minute of grace
        _, detail, _, at = await run.until(FAILING)
        assert "Connection refused" in detail and at < 10
        await run.checker.close()

    try:
        asyncio.run(main())
    finally:
        server.stop()


def test_passing_failing_passing_with_a_success_threshold(site: str) -> None:
    server = http_server(site)
    port = server.port
    check = check_config(f"Type=http\nURL=http://localhost:{port}/health\n"
                         "FailureThreshold=2\nSuccessThreshold=2\n")
    servers = [server]

    async def main() -> None:
        run = Run(check)
        run.start()
        _, _, checks, _ = await run.until(PASSING)
        assert checks == 2  # two passes in a row
        servers[0].stop()
        await run.until(FAILING)
        servers.append(http_server(site, port))  # back on the same port
        await run.until(PASSING, count=2)
        assert run.healths == [PASSING, FAILING, PASSING]
        await run.checker.close()

    try:
        asyncio.run(main())
    finally:
        for s in servers:
            s.stop()


def test_an_http_server_that_never_answers_times_out() -> None:
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts, never answers
        port = silent.getsockname()[1]
        check = check_config(f"Type=http\nURL=http://127.0.0.1:{port}/\n", timeout_s=0.3)

        async def main() -> Tuple[bool, str, float]:
            checker = HealthChecker("t.service", check, lambda h, d: None)
            t0 = time.monotonic()
            ok, detail = await checker.probe()
            return ok, detail, time.monotonic() - t0

        ok, detail, took = asyncio.run(main())
    assert not ok and detail == "timed out after 0.3s" and 0.25 < took < 1.5


def _serve_once(listener: socket.socket, reply: bytes, hold_s: float) -> threading.Thread:
    """Accept one connection, read the request, send ``reply``, keep it open ``hold_s``."""
    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(4096)
            conn.sendall(reply)
            time.sleep(hold_s)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_the_status_line_decides_even_if_the_body_never_ends() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        served = _serve_once(listener, b"HTTP/1.1 204 No Content\r\nX-Slow: yes\r\n", 1.5)
        ok, detail, took = probe(check_config(f"Type=http\nURL=http://127.0.0.1:{port}/\n",
                                              timeout_s=0.3))
        served.join()
    assert (ok, detail) == (True, "HTTP 204 No Content") and took < 1.0


def test_a_service_that_does_not_speak_http_fails() -> None:
    with socket.create_server(("127.0.0.1", 0)) as listener:
        port = listener.getsockname()[1]
        served = _serve_once(listener, b"SSH-2.0-OpenSSH_9.2\r\n", 0.0)
        ok, detail, _ = probe(check_config(f"Type=http\nURL=http://127.0.0.1:{port}/\n"))
        served.join()
    assert (ok, detail) == (False, "not an HTTP response (got 'SSH-2.0-OpenSSH_9.2')")


# --- tcp -----------------------------------------------------------------------------


def test_tcp_check_against_a_real_listener() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    check = check_config(f"Type=tcp\nAddress=127.0.0.1:{port}\nFailureThreshold=1\n")

    async def main() -> None:
        run = Run(check)
        run.start()
        _, detail, _, _ = await run.until(PASSING)
        assert detail == f"connected to 127.0.0.1:{port}"
        listener.close()
        _, detail, _, _ = await run.until(FAILING)
        assert detail == f"127.0.0.1:{port}: Connection refused"
        await run.checker.close()

    try:
        asyncio.run(main())
    finally:
        listener.close()


# --- exec ----------------------------------------------------------------------------


def probe(check: Dict[str, Any], **kwargs: Any) -> Tuple[bool, str, float]:
    async def main() -> Tuple[bool, str, float]:
        checker = HealthChecker("t.service", check, lambda h, d: None, **kwargs)
        t0 = time.monotonic()
        ok, detail = await checker.probe()
        return ok, detail, time.monotonic() - t0

    return asyncio.run(main())


def test_exec_true_passes_and_false_fails() -> None:
    assert probe(check_config("Type=exec\nCommand=/bin/true\n"))[:2] == (True, "exit 0")
    assert probe(check_config("Type=exec\nCommand=/bin/false\n"))[:2] == (False, "exit 1")
    ok, detail, _ = probe(check_config(
        "Type=exec\nCommand=/bin/sh -c 'echo starting; echo disk full >&2; exit 3'\n"))
    assert (ok, detail) == (False, "exit 3: disk full")  # the last line says why


def test_exec_verdicts_through_the_loop() -> None:
    async def main() -> None:
        run = Run(check_config("Type=exec\nCommand=/bin/false\nFailureThreshold=2\n"))
        run.start()
        assert (await run.until(FAILING))[1:3] == ("exit 1", 2)
        await run.checker.close()

    asyncio.run(main())


def test_a_hanging_command_is_killed_at_the_timeout_with_its_helpers(tmp_path: Any) -> None:
    pids = str(tmp_path / "pids")
    # $$ is a literal $ in a unit's command line (systemd's rule): the shell's $$ is $$$$
    check = check_config(
        f"Type=exec\nCommand=/bin/sh -c 'sleep 60 & echo $$$$ $! > {pids}; wait'\n",
        timeout_s=0.5)
    ok, detail, took = probe(check)
    assert not ok and detail == "/bin/sh: timed out after 0.5s (killed)"
    assert 0.45 < took < 3.0
    with open(pids) as f:
        shell, helper = (int(p) for p in f.read().split())
    # the whole session, not just the shell
    wait_for("the shell and its helper to end", lambda: not alive(shell) and not alive(helper),
             3)


def test_stopping_the_checker_kills_a_running_command(tmp_path: Any) -> None:
    pidfile = str(tmp_path / "pid")
    check = check_config(f"Type=exec\nCommand=/bin/sh -c 'echo $$$$ > {pidfile}; "
                         "exec sleep 60'\n", timeout_s=30)

    async def main() -> None:
        run = Run(check)
        run.start()
        deadline = time.monotonic() + 10
        while not os.path.exists(pidfile) or not os.path.getsize(pidfile):
            assert time.monotonic() < deadline
            await asyncio.sleep(0.02)
        await run.checker.close()
        assert not run.checker.running and run.verdicts == []

    asyncio.run(main())
    with open(pidfile) as f:
        pid = int(f.read())
    wait_for("the command to end", lambda: not alive(pid), 3)


def test_exec_runs_in_the_units_environment_directory_and_preexec(tmp_path: Any) -> None:
    marker = str(tmp_path / "preexec-ran")
    workdir = str(tmp_path / "work")
    os.mkdir(workdir)
    with open(os.path.join(workdir, "ready"), "w"):
        pass

    def preexec() -> None:  # runs in the child, as a cgroup join or setuid would
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, str(os.getpid()).encode())
        os.close(fd)

    env = {"PATH": "/usr/bin:/bin", "MODE": "healthy"}
    # $MODE is expanded by the agent like ExecStart= words; ${MODE} inside the shell
    check = check_config("Type=exec\nCommand=test $MODE = healthy\n")
    assert probe(check, env=env)[:2] == (True, "exit 0")
    assert probe(check, env={**env, "MODE": "sick"})[:2] == (False, "exit 1")
    check = check_config("Type=exec\nCommand=/bin/sh -c 'test -f ready && "
                         "test \"$MODE\" = healthy'\n")
    assert probe(check, env=env, cwd=workdir, preexec=preexec)[:2] == (True, "exit 0")
    assert os.path.exists(marker)


def test_a_missing_command_is_a_failure_that_says_so() -> None:
    ok, detail, _ = probe(check_config("Type=exec\nCommand=no-such-check-cmd\n"),
                          env={"PATH": "/usr/bin:/bin"})
    assert not ok and detail == "no-such-check-cmd: command not found in PATH=/usr/bin:/bin"


# --- a real Debian program -----------------------------------------------------------


@pytest.fixture
def redis(tmp_path: Any) -> Iterator[Server]:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server is not installed (run.sh installs redis-server)")
    port = free_port()
    server = Server(["redis-server", "--port", str(port), "--bind", "127.0.0.1",
                     "--save", "", "--appendonly", "no", "--daemonize", "no",
                     "--dir", str(tmp_path)], port, str(tmp_path))
    yield server
    server.stop()


def test_redis_checked_with_redis_cli_ping(redis: Server) -> None:
    if shutil.which("redis-cli"):
        check = check_config(f"Type=exec\nCommand=redis-cli -p {redis.port} ping\n"
                             "FailureThreshold=2\n", timeout_s=2.0, interval_s=0.3)
        expect_pass, expect_fail = "PONG", "Could not connect to Redis"
    else:  # redis-tools missing: check the port instead
        check = check_config(f"Type=tcp\nPort={redis.port}\nFailureThreshold=2\n")
        expect_pass, expect_fail = "connected", "Connection refused"

    async def main() -> None:
        run = Run(check, env={"PATH": "/usr/bin:/bin"})
        run.start()
        assert expect_pass in (await run.until(PASSING))[1]
        redis.stop()
        assert expect_fail in (await run.until(FAILING))[1]
        assert run.healths == [PASSING, FAILING]
        await run.checker.close()

    asyncio.run(main())


# --- what the supervisor does with a verdict -----------------------------------------


@pytest.mark.parametrize(("on_failure", "acts"), [("restart", True), ("none", False)])
def test_whether_a_failing_verdict_ends_the_run(on_failure: str, acts: bool) -> None:
    # what follows the end (restart or not) is Restart='s call, in the supervisor
    check = check_config(f"Type=tcp\nPort=1\nOnFailure={on_failure}\n")
    assert acts_on_failing(check) is acts
    assert acts_on_failing({k: v for k, v in check.items() if k != "on_failure"}) is False
    assert not acts_on_failing(None)


# --- cost ----------------------------------------------------------------------------


def test_a_hundred_checkers_cost_little_cpu(site: str) -> None:
    """100 units with an http check each, every 0.5 s for 3 s (600 checks; the default
    is every 10 s): CPU per check must stay around a millisecond or below."""
    port = free_port()
    server = Server([sys.executable, "-c", BIG_BACKLOG, str(port)], port, site)
    check = check_config(f"Type=http\nURL=http://127.0.0.1:{server.port}/health\n",
                         interval_s=0.5)

    async def main() -> Tuple[int, float]:
        runs = [Run(check) for _ in range(100)]
        cpu = time.process_time()
        for r in runs:
            r.start()
        await asyncio.sleep(3.0)
        spent = time.process_time() - cpu
        done = sum(r.checker.checks for r in runs)
        for r in runs:
            await r.checker.close()
        assert all(r.healths == [PASSING] for r in runs)
        return done, spent

    try:
        done, spent = asyncio.run(main())
    finally:
        server.stop()
    assert done >= 400
    per_check_ms = spent / done * 1000
    # 100 units every 10 s = 10 checks/s: 1 ms each would be 1% of a core
    assert per_check_ms < 2.0, f"{per_check_ms:.2f} ms of CPU per http check"


def test_no_zombies_left_by_exec_checks() -> None:
    async def main() -> None:
        run = Run(check_config("Type=exec\nCommand=/bin/true\n", interval_s=0.05))
        run.start()
        await run.checks(20)
        await run.checker.close()

    asyncio.run(main())
    me = os.getpid()
    zombies = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError), open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
                if fields[0] == "Z" and int(fields[1]) == me:
                    zombies.append(int(entry))
    assert zombies == []
