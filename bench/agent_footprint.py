"""The agent's footprint on a host: RSS and idle CPU while supervising 100 programs,
beside supervisord supervising the same 100 programs.

    .venv/bin/python bench/agent_footprint.py [--programs 100] [--seconds 30]

fleet-agent: a real agent in a temporary state directory, reached through the real
``fleet-agent attach`` relay (as fleetd does over SSH, and as
tests/integration/test_agent_attach.py does), sent ``hello`` with a 1 s heartbeat and a
desired set of N ``/bin/sleep 100000`` units. supervisord: Debian's package, with N
``[program:]`` sections running the same command and its stock settings (unix socket,
rpc interface, child logs). Each is measured alone, after every program runs and a
settling pause: RSS and USS (psutil) at the end and their maximum over the window, and
CPU as a percentage of one core over ``--seconds`` of idling (user + system time of
the process, heartbeats included). Bare interpreters are measured too, to show how much
of the RSS is Python itself. Prints a table; writes bench/results/agent_footprint.json.

Targets (issue): agent <= 25 MB RSS (supervisord measured 26.5 MB), <= 0.5 % of a core.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Optional

import psutil

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from fleetd import protocol  # noqa: E402
from fleetd.units.model import load  # noqa: E402

MB = 1024 * 1024
TARGET_RSS_MB = 25.0
TARGET_CPU_PCT = 0.5
PROGRAM = "/bin/sleep 100000"
SETTLE_S = 5.0


def wait(what: str, predicate: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def cpu_seconds(proc: psutil.Process) -> float:
    """Time on CPU: the scheduler's nanosecond count where there is one (psutil's user
    and system times tick at 10 ms, too coarse for an idle process over 30 s)."""
    try:
        with open(f"/proc/{proc.pid}/schedstat") as f:
            return int(f.read().split()[0]) / 1e9
    except (OSError, ValueError, IndexError):
        t = proc.cpu_times()
        return float(t.user + t.system)


def measure(pids: List[int], seconds: float) -> Dict[str, float]:
    """CPU % of one core over ``seconds``, wakeups, and memory of ``pids`` together."""
    procs = [psutil.Process(p) for p in pids]

    def cpu() -> float:
        return sum(cpu_seconds(p) for p in procs)

    def switches() -> int:
        return sum(sum(p.num_ctx_switches()) for p in procs)

    def memory() -> Dict[str, float]:
        full = [p.memory_full_info() for p in procs]
        return {"rss_mb": sum(m.rss for m in full) / MB, "uss_mb": sum(m.uss for m in full) / MB,
                "pss_mb": sum(m.pss for m in full) / MB}

    peak = memory()
    c0, s0, t0 = cpu(), switches(), time.monotonic()
    while time.monotonic() - t0 < seconds:
        time.sleep(1.0)
        now = memory()
        peak = {k: max(peak[k], now[k]) for k in now}
    c1, s1, t1 = cpu(), switches(), time.monotonic()
    end = memory()
    return {**end, "rss_peak_mb": peak["rss_mb"], "uss_peak_mb": peak["uss_mb"],
            "cpu_s": c1 - c0, "wall_s": t1 - t0, "cpu_pct": (c1 - c0) / (t1 - t0) * 100,
            "wakeups_per_s": (s1 - s0) / (t1 - t0)}


# --- fleet-agent ---------------------------------------------------------------------
class Attached:
    """``fleet-agent attach``, spoken to like fleetd does; a thread keeps reading."""

    def __init__(self, state_dir: str, heartbeat_s: float) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "fleetd.agent", "attach", "--state-dir", state_dir],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT)
        self.units: Dict[str, Dict[str, Any]] = {}
        self.heartbeats = 0
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        self.send("hello", daemon="bench", heartbeat_s=heartbeat_s)

    def send(self, kind: str, **fields: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(protocol.encode(kind, **fields))
        self.proc.stdin.flush()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            msg = protocol.decode(line)
            with self.lock:
                if msg["type"] == "heartbeat":
                    self.heartbeats += 1
                elif msg["type"] == "status":
                    self.units = {u["name"]: u for u in msg["units"]}
                elif msg["type"] == "unit":
                    self.units[msg["unit"]["name"]] = msg["unit"]

    def running(self) -> List[Dict[str, Any]]:
        with self.lock:
            return [u for u in self.units.values() if u["state"] == "running"]

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            with contextlib.suppress(BrokenPipeError):
                self.proc.stdin.close()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def bench_agent(programs: int, seconds: float, heartbeat_s: float) -> Dict[str, Any]:
    work = tempfile.mkdtemp(prefix="fleet-footprint-")
    state_dir = os.path.join(work, "agent")
    attached = Attached(state_dir, heartbeat_s)
    pids: List[int] = []
    agent_pid: Optional[int] = None
    try:
        text = f"[Service]\nExecStart={PROGRAM}\n"
        specs = [load(f"fp-{i}.service", text).spec(protocol.WANT_RUNNING)
                 for i in range(programs)]
        wait("the agent's hello", lambda: os.path.exists(os.path.join(state_dir, "agent.pid")))
        attached.send("desired", units=specs)
        wait(f"{programs} programs running", lambda: len(attached.running()) == programs)
        pids = [int(u["pid"]) for u in attached.running()]
        with open(os.path.join(state_dir, "agent.pid")) as f:
            agent_pid = int(f.read())
        time.sleep(SETTLE_S)
        beats = attached.heartbeats
        agent = measure([agent_pid], seconds)
        beats = attached.heartbeats - beats
        both = measure([agent_pid, attached.proc.pid], seconds)
        return {"programs": programs, "heartbeat_s": heartbeat_s, "agent": agent,
                "agent_and_attach": both, "heartbeats_in_window": beats,
                "python": sys.version.split()[0]}
    finally:
        attached.close()
        for pid in [*pids, *([agent_pid] if agent_pid else [])]:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        shutil.rmtree(work, ignore_errors=True)


# --- supervisord ---------------------------------------------------------------------
def bench_supervisord(programs: int, seconds: float) -> Optional[Dict[str, Any]]:
    binary = shutil.which("supervisord")
    if binary is None:
        print("supervisord is not installed (apt-get install -y supervisor): skipped")
        return None
    work = tempfile.mkdtemp(prefix="supervisord-footprint-")
    os.mkdir(os.path.join(work, "logs"))
    conf = os.path.join(work, "supervisord.conf")
    with open(conf, "w") as f:
        f.write(f"[unix_http_server]\nfile={work}/supervisor.sock\nchmod=0700\n\n"
                f"[supervisord]\nlogfile={work}/supervisord.log\n"
                f"pidfile={work}/supervisord.pid\nchildlogdir={work}/logs\n\n"
                "[rpcinterface:supervisor]\nsupervisor.rpcinterface_factory = "
                "supervisor.rpcinterface:make_main_rpcinterface\n\n"
                f"[supervisorctl]\nserverurl=unix://{work}/supervisor.sock\n\n")
        for i in range(programs):
            f.write(f"[program:fp-{i}]\ncommand={PROGRAM}\nautorestart=true\n\n")
    proc = subprocess.Popen([binary, "-n", "-c", conf], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        sup = psutil.Process(proc.pid)
        wait(f"{programs} programs under supervisord",
             lambda: sum(1 for c in sup.children() if c.name() == "sleep") == programs)
        time.sleep(SETTLE_S)
        result = measure([proc.pid], seconds)
        version = subprocess.run([binary, "--version"], capture_output=True, text=True)
        return {"programs": programs, "supervisord": result,
                "version": version.stdout.strip()}
    finally:
        proc.send_signal(signal.SIGTERM)  # supervisord stops its programs itself
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(work, ignore_errors=True)


# --- baselines -----------------------------------------------------------------------
IDLE = "import sys, time\nfor m in sys.argv[1:]: __import__(m)\nprint('ready', flush=True)\n" \
       "time.sleep(60)\n"
# asyncio imports ssl (for TLS transports, which the agent never opens); blocked, asyncio
# runs without it, as on a Python built without OpenSSL
NO_SSL = "import sys\nsys.modules['ssl'] = None\n"


def bench_baseline(python: str, modules: List[str], prelude: str = "") -> Dict[str, float]:
    """An idle interpreter that imported ``modules``: what the agent cannot go below."""
    proc = subprocess.Popen([python, "-c", prelude + IDLE, *modules], stdout=subprocess.PIPE,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT})
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        m = psutil.Process(proc.pid).memory_full_info()
        return {"rss_mb": m.rss / MB, "uss_mb": m.uss / MB}
    finally:
        proc.kill()
        proc.wait()


AGENT_MODULES = ["fleetd.agent.daemon", "fleetd.agent.health", "fleetd.agent.logfile"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--programs", type=int, default=100)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--heartbeat", type=float, default=1.0)
    args = parser.parse_args()

    agent = bench_agent(args.programs, args.seconds, args.heartbeat)
    sup = bench_supervisord(args.programs, args.seconds)
    baselines = {
        "python (bare)": bench_baseline(sys.executable, []),
        "python + asyncio": bench_baseline(sys.executable, ["asyncio"]),
        "python + agent modules": bench_baseline(sys.executable, AGENT_MODULES),
        "python + agent modules, no ssl": bench_baseline(sys.executable, AGENT_MODULES, NO_SSL),
        "python + attach relay modules": bench_baseline(sys.executable,
                                                        ["fleetd.agent.attach"]),
    }

    rows = [("fleet-agent (agent only)", agent["agent"]),
            ("fleet-agent + attach relay", agent["agent_and_attach"])]
    if sup is not None:
        rows.append(("supervisord", sup["supervisord"]))
    print(f"\n{args.programs} programs ({PROGRAM}), {args.seconds:.0f} s idle, "
          f"agent heartbeat every {args.heartbeat:g} s ({agent['heartbeats_in_window']} "
          f"heartbeats in the window), python {agent['python']}")
    print(f"{'':32} {'RSS MB':>7} {'peak':>7} {'USS MB':>7} {'PSS MB':>7} {'CPU %':>7} "
          f"{'wakeups/s':>9}")
    for name, r in rows:
        print(f"{name:32} {r['rss_mb']:7.1f} {r['rss_peak_mb']:7.1f} {r['uss_mb']:7.1f} "
              f"{r['pss_mb']:7.1f} {r['cpu_pct']:7.3f} {r['wakeups_per_s']:9.1f}")
    print("idle interpreters, for comparison:")
    for name, b in baselines.items():
        print(f"{name:32} {b['rss_mb']:7.1f} {'':7} {b['uss_mb']:7.1f}")
    per_beat = agent["agent"]["cpu_s"] / max(agent["heartbeats_in_window"], 1) * 1e6
    print(f"agent CPU per heartbeat (all idle CPU / heartbeats): {per_beat:.0f} us")
    a = agent["agent"]
    verdict = {
        "rss_ok": a["rss_peak_mb"] <= TARGET_RSS_MB,
        "cpu_ok": a["cpu_pct"] <= TARGET_CPU_PCT,
    }
    print(f"targets: agent RSS <= {TARGET_RSS_MB:g} MB: "
          f"{'met' if verdict['rss_ok'] else 'MISSED'} ({a['rss_peak_mb']:.1f}); "
          f"CPU <= {TARGET_CPU_PCT:g} %: {'met' if verdict['cpu_ok'] else 'MISSED'} "
          f"({a['cpu_pct']:.3f})")

    out = os.path.join(ROOT, "bench", "results", "agent_footprint.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"agent": agent, "supervisord": sup, "baselines": baselines,
                   "targets": {"rss_mb": TARGET_RSS_MB, "cpu_pct": TARGET_CPU_PCT},
                   "verdict": verdict}, f, indent=1)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
