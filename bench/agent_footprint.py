"""The agent's footprint on a host: RSS and idle CPU while supervising 100 programs,
beside supervisord supervising the same 100 programs.

    .venv/bin/python bench/agent_footprint.py [--programs 100] [--seconds 30]

fleet-agent: a real agent in a temporary state directory, sent ``hello`` with a 1 s
heartbeat and a desired set of N ``/bin/sleep 100000`` units, measured as fleetd leaves
a host in each of its two links (fleetd.transport.forward):

- forwarded: fleetd speaks to the agent's socket through sshd's stream-local
  forwarding, so the host runs the agent and nothing else. Here a client connects to
  the socket directly, as sshd's forwarding does (sshd's per-connection process is on
  the host in both links, and counted in neither).
- relay: where sshd refuses forwarding, ``fleet-agent attach`` relays between the SSH
  channel and the socket: the agent plus that relay process.

Each in two layouts: "installed", as fleetd's bootstrap puts the agent on a host (the
payload unpacked and byte-compiled, run by the host's python3 -I through its launcher,
psutil from the host or the wheelhouse), which is what a host carries; and "lab", this
venv's interpreter running the source tree (as the lab's plain hosts do), whose site
(the editable install's finder: pathlib, urllib, ipaddress) adds what a host has not
(~0.5 MB here).
``--layout`` picks one or both; the target is judged on "installed" where it can run.

supervisord: Debian's package, with N
``[program:]`` sections running the same command and its stock settings (unix socket,
rpc interface, child logs). Each is measured alone, after every program runs and a
settling pause: RSS and USS (psutil) at the end and their maximum over the window, and
CPU as a percentage of one core over ``--seconds`` of idling (user + system time of
the process, heartbeats included). Bare interpreters are measured too, to show how much
of the RSS is Python itself. Prints a table; writes bench/results/agent_footprint.json.

Targets (issue 15): the host side with 100 programs <= 20 MB RSS (forwarded: the agent
alone), printed beside supervisord's; <= 0.5 % of a core.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from typing import Any, Callable, Dict, List, Optional

import psutil
from benchkit import save

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests", "integration")]

from agentkit import Attached, agent_pid, clean, spec  # noqa: E402
from labkit import wait_for  # noqa: E402

from fleetd import protocol  # noqa: E402
from fleetd.bootstrap import bundle  # noqa: E402
from fleetd.wire.paths import agent_socket  # noqa: E402

MB = 1024 * 1024
TARGET_RSS_MB = 20.0
TARGET_CPU_PCT = 0.5
PROGRAM = "/bin/sleep 100000"
SETTLE_S = 5.0


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
def forwarded(state_dir: str, heartbeat_s: float, on_message: Callable[[Dict[str, Any]], None]
              ) -> socket.socket:
    """A client on the agent's socket, as sshd's stream-local forwarding connects for
    fleetd: hello, then a thread hands each message to ``on_message``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(agent_socket(state_dir))
    sock.sendall(protocol.encode("hello", daemon="test", heartbeat_s=heartbeat_s))
    reader = sock.makefile("rb")

    def loop() -> None:
        for line in reader:
            on_message(protocol.decode(line))

    threading.Thread(target=loop, daemon=True).start()
    return sock


# bin/fleet-agent, for agentkit.Attached (which runs COMMAND -m fleetd.agent attach ...)
LAUNCH = """import sys
sys.path[:0] = [{here!r}, {here!r} + "/lib"]
del sys.argv[1:3]  # Attached's "-m fleetd.agent"
from fleetd.agent.main import main
sys.exit(main(launcher=[sys.executable, "-I", {here!r} + "/bin/fleet-agent"]))
"""


def installed(python: str, work: str) -> Optional[List[str]]:
    """The agent as the bootstrap installs it, run by ``python``: the command prefix
    that runs its launcher, or None (no such python, or no psutil for it)."""
    if shutil.which(python) is None:
        print(f"{python} is not here: the installed layout is skipped")
        return None
    probe = subprocess.run([python, "-I", "-c", "import sys; print(sys.version_info[1]);"
                            "import psutil"], capture_output=True, text=True)
    wheel = None
    if probe.returncode != 0:
        minor = int(probe.stdout.strip() or 0)
        wheel = bundle.pick_wheel(bundle.wheelhouse(), platform.machine(),
                                  platform.libc_ver(), (3, minor))
        if wheel is None:
            print(f"{python} has no psutil and {bundle.wheelhouse()} no wheel for it: "
                  "the installed layout is skipped")
            return None
    here = os.path.join(work, "installed")
    with zipfile.ZipFile(io.BytesIO(bundle.build(python, wheel).data)) as z:
        z.extractall(here)
    subprocess.run([python, "-I", "-m", "compileall", "-q", here], check=True,
                   stdout=subprocess.DEVNULL)
    return [python, "-I", "-c", LAUNCH.format(here=here)]


def bench_agent(programs: int, seconds: float, heartbeat_s: float,
                command: Optional[List[str]] = None) -> Dict[str, Any]:
    """``command``: how to run the agent (``installed``'s), default this interpreter."""
    work = tempfile.mkdtemp(prefix="fleet-footprint-")
    state_dir = os.path.join(work, "agent")
    attached = Attached(state_dir, command=command, heartbeat_s=heartbeat_s)
    client: Optional[socket.socket] = None
    try:
        attached.desire(*(spec(f"fp-{i}.service", f"[Service]\nExecStart={PROGRAM}\n")
                          for i in range(programs)))
        attached.wait_units(lambda us: sum(u["state"] == "running" for u in us.values())
                            == programs, timeout=60)
        beats = [0]  # from here on a thread reads, counting heartbeats

        def count(msg: Dict[str, Any]) -> None:
            beats[0] += msg["type"] == "heartbeat"

        attached.follow(count)
        agent = agent_pid(state_dir)
        time.sleep(SETTLE_S)
        relay = measure([agent, attached.proc.pid], seconds)  # the relay link
        attached.close()  # the relay ends; the agent and its programs go on
        client = forwarded(state_dir, heartbeat_s, count)  # the forwarded link
        time.sleep(SETTLE_S)
        before = beats[0]
        alone = measure([agent], seconds)
        in_window = beats[0] - before
        version = subprocess.run([*(command or [sys.executable])[:1], "--version"],
                                 capture_output=True, text=True).stdout.split()[-1]
        return {"programs": programs, "heartbeat_s": heartbeat_s, "agent": alone,
                "agent_and_attach": relay, "heartbeats_in_window": in_window,
                "python": version}
    finally:
        if client is not None:
            client.close()
        attached.close()
        clean(state_dir)  # the agent, its programs and their cgroups
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
        wait_for(f"{programs} programs under supervisord",
                 lambda: sum(1 for c in sup.children() if c.name() == "sleep") == programs, 60)
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
    parser.add_argument("--layout", choices=["installed", "lab", "both"], default="both")
    parser.add_argument("--host-python", default="/usr/bin/python3",
                        help="the host's python3, for the installed layout")
    args = parser.parse_args()

    agents: Dict[str, Dict[str, Any]] = {}
    work = tempfile.mkdtemp(prefix="fleet-footprint-installed-")
    try:
        if args.layout in ("installed", "both"):
            command = installed(args.host_python, work)
            if command is not None:
                agents["installed"] = bench_agent(args.programs, args.seconds,
                                                  args.heartbeat, command)
        if args.layout in ("lab", "both"):
            agents["lab"] = bench_agent(args.programs, args.seconds, args.heartbeat)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not agents:
        sys.exit("nothing measured: the installed layout could not run (see above)")
    sup = bench_supervisord(args.programs, args.seconds)
    baselines = {
        "python (bare)": bench_baseline(sys.executable, []),
        "python + asyncio": bench_baseline(sys.executable, ["asyncio"]),
        "python + agent modules": bench_baseline(sys.executable, AGENT_MODULES),
        "python + agent modules, no ssl": bench_baseline(sys.executable, AGENT_MODULES, NO_SSL),
        "python + attach relay modules": bench_baseline(sys.executable,
                                                        ["fleetd.agent.attach"]),
    }

    rows = []
    for layout, measured in agents.items():
        rows += [(f"{layout}: forwarded (agent)", measured["agent"]),
                 (f"{layout}: relay (agent+attach)", measured["agent_and_attach"])]
    if sup is not None:
        rows.append(("supervisord", sup["supervisord"]))
    judged = "installed" if "installed" in agents else "lab"
    agent = agents[judged]
    print(f"\n{args.programs} programs ({PROGRAM}), {args.seconds:.0f} s idle, "
          f"agent heartbeat every {args.heartbeat:g} s ({agent['heartbeats_in_window']} "
          f"heartbeats in the window), python "
          + ", ".join(f"{k} {v['python']}" for k, v in agents.items()))
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
    print(f"targets ({judged}): host side (forwarded) RSS <= {TARGET_RSS_MB:g} MB: "
          f"{'met' if verdict['rss_ok'] else 'MISSED'} ({a['rss_peak_mb']:.1f}); "
          f"CPU <= {TARGET_CPU_PCT:g} %: {'met' if verdict['cpu_ok'] else 'MISSED'} "
          f"({a['cpu_pct']:.3f})")

    out = save("agent_footprint", {
        "agent": agent, "judged": judged, "layouts": agents, "supervisord": sup,
        "baselines": baselines,
        "targets": {"rss_mb": TARGET_RSS_MB, "cpu_pct": TARGET_CPU_PCT}, "verdict": verdict})
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
