"""fleet's issue 760 in the lab: ``fleetctl restart 'web@*.service' --rolling`` restarts
a template's instances one at a time, each healthy again (its HTTP [X-Check] passing)
before the next goes, and stops at the first whose new start is not; plain restart of a
glob restarts every instance at once.

The proof is taken from outside fleetctl while it runs: snapshots of fleetd's unit rows
(what the agents reported) and the instances' old pids watched in /proc.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from typing import Any, Dict, List, Tuple

from labkit import FLEETCTL, ROOT, Fleet, alive, wait_for

# listens on 180<instance> only after a second (a program that takes time to come up);
# never listens while a file broken-<instance> is beside it
SLOW_WEB = """\
import http.server, os, sys, time
i = sys.argv[1]
if os.path.exists(os.path.join(os.path.dirname(os.path.abspath(__file__)), "broken-" + i)):
    time.sleep(100000)
time.sleep(1)
http.server.ThreadingHTTPServer(("127.0.0.1", int("180" + i)),
                                http.server.SimpleHTTPRequestHandler).serve_forever()
"""

WEB_TEMPLATE = """\
[Unit]
Description=slow web %i

[Service]
ExecStart={python} {script} %i
WorkingDirectory={dir}
Restart=always
RestartSec=500ms

[X-Check]
Type=http
URL=http://127.0.0.1:180%i/
Interval=1s
Timeout=500ms
StartGrace=5s
FailureThreshold=1
"""

Sample = Tuple[float, Dict[str, Dict[str, Any]], Dict[int, bool]]


def healthy(row: Dict[str, Any]) -> bool:
    return (row.get("state") == "running" and bool(row.get("current"))
            and row.get("health") == "passing")


def web_template(tmp_path: Any) -> None:
    script = tmp_path / "slow_web.py"
    script.write_text(SLOW_WEB)
    (tmp_path / "web@.service").write_text(WEB_TEMPLATE.format(
        python=sys.executable, script=script, dir=tmp_path))


def start_instances(cluster: Fleet, tmp_path: Any, instances: List[str]
                    ) -> Dict[str, Dict[str, Any]]:
    """Start web@<i> for each instance and wait until all pass their checks."""
    names = [f"web@{i}.service" for i in instances]
    cluster.ctl("start", *[str(tmp_path / n) for n in names])
    return wait_for("every instance passing its check", lambda: (
        (rows := {r["unit"]: r for r in cluster.units() if r["unit"] in names})
        and len(rows) == len(names) and all(healthy(r) for r in rows.values()) and rows), 30)


def fleetctl(cluster: Fleet, *args: str) -> subprocess.Popen[str]:
    env = dict(os.environ, FLEETCTL_ENDPOINT=cluster.endpoint)
    return subprocess.Popen([FLEETCTL, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=ROOT)


def watch(cluster: Fleet, proc: subprocess.Popen[str], old_pids: List[int]
          ) -> List[Sample]:
    """Until fleetctl exits: fleetd's rows of the web instances, and which old pids live."""
    samples: List[Sample] = []
    deadline = time.monotonic() + 120
    while proc.poll() is None:
        assert time.monotonic() < deadline, "fleetctl restart --rolling hangs"
        rows = {r["unit"]: r for r in cluster.units() if r["unit"].startswith("web@")}
        samples.append((time.monotonic(), rows, {p: alive(p) for p in old_pids}))
        time.sleep(0.01)
    return samples


def test_rolling_restart_goes_one_instance_at_a_time_each_healthy_first(
    cluster: Fleet, tmp_path: Any
) -> None:
    web_template(tmp_path)
    instances = ["8", "9", "10"]  # name order is web@8, web@9, web@10 (not 10, 8, 9)
    before = start_instances(cluster, tmp_path, instances)
    names = [f"web@{i}.service" for i in instances]
    old = {n: before[n]["pid"] for n in names}

    t0 = time.monotonic()
    proc = fleetctl(cluster, "restart", "web@*.service", "--rolling",
                    "--rolling-timeout", "60s")
    samples = watch(cluster, proc, list(old.values()))
    out, err = proc.communicate()
    took = time.monotonic() - t0
    assert proc.returncode == 0, out + err
    print(f"\nrolling restart of 3 instances: {took:.1f}s, {len(samples)} samples\n{out}")

    # fleetctl's account: one line per instance, in name order, as each came back
    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines] == names
    printed = {}
    for line, name in zip(lines, names):
        m = re.fullmatch(rf"{re.escape(name)}: healthy on (h\d) \(pid (\d+), health check "
                         r"passing\) after (\d+\.\d)s", line)
        assert m, line
        printed[name] = (m.group(1), int(m.group(2)))

    # fleetd's reports, sampled while it ran: never two instances down at once, and the
    # instances went down one after another in name order, each exactly once
    down_order: List[str] = []
    for _t, rows, _alive in samples:
        down = [n for n in names if not healthy(rows.get(n, {}))]
        assert len(down) <= 1, f"two instances down at once: {down} in {rows}"
        if down and (not down_order or down_order[-1] != down[0]):
            down_order.append(down[0])
    assert down_order == names

    # the processes themselves: each old pid died, in name order, the next one only
    # after the instance before was up again - which takes it at least a second
    died = {p: next(t for t, _rows, live in samples if not live[p]) for p in old.values()}
    deaths = [died[old[n]] for n in names]
    assert deaths == sorted(deaths)
    assert all(b - a >= 0.9 for a, b in zip(deaths, deaths[1:])), deaths

    after = {r["unit"]: r for r in cluster.units()}
    for name in names:
        row = after[name]
        assert healthy(row) and row["pid"] != old[name] and not alive(old[name])
        assert (row["machine"], row["pid"]) == printed[name]
        assert row["machine"] == before[name]["machine"], "restarted where it was"


def test_rolling_restart_stops_at_an_instance_whose_new_start_fails_its_check(
    cluster: Fleet, tmp_path: Any
) -> None:
    web_template(tmp_path)
    before = start_instances(cluster, tmp_path, ["1", "2", "3"])
    old = {n: r["pid"] for n, r in before.items()}
    (tmp_path / "broken-2").write_text("")  # web@2's next start never listens

    t0 = time.monotonic()
    proc = fleetctl(cluster, "restart", "web@*.service", "--rolling", "--rolling-timeout", "60s")
    out, err = proc.communicate(timeout=120)
    took = time.monotonic() - t0
    print(f"\nrolling restart stopped after {took:.1f}s\n{out}{err}")
    assert proc.returncode == 1
    assert out.startswith("web@1.service: healthy on ") and len(out.splitlines()) == 1
    machine = before["web@2.service"]["machine"]
    first, second = err.strip().splitlines()
    assert first.startswith("Error: web@2.service: not healthy after ")
    assert f"on {machine} and is being restarted by its policy: health check failing: " \
           "127.0.0.1:1802: " in first, first
    assert second == "rolling restart stopped: web@3.service not restarted"

    rows = {r["unit"]: r for r in cluster.units()}
    assert healthy(rows["web@1.service"]) and rows["web@1.service"]["pid"] != old["web@1.service"]
    assert rows["web@2.service"]["pid"] != old["web@2.service"]
    assert not alive(old["web@2.service"])
    # the rest were never touched: same program, same generation
    web3 = rows["web@3.service"]
    assert healthy(web3) and web3["pid"] == old["web@3.service"] and alive(web3["pid"])
    assert web3["generation"] == before["web@3.service"]["generation"]


def test_plain_restart_of_a_glob_restarts_every_instance_at_once(
    cluster: Fleet, tmp_path: Any
) -> None:
    (tmp_path / "job@.service").write_text("[Service]\nExecStart=/bin/sleep 1000\n")
    (tmp_path / "other.service").write_text("[Service]\nExecStart=/bin/sleep 1000\n")
    cluster.ctl("start", *[str(tmp_path / f"job@{i}.service") for i in (1, 2, 3)],
                str(tmp_path / "other.service"))
    cluster.ctl("stop", "job@3.service")
    before = {r["unit"]: r for r in cluster.units()}

    out = cluster.ctl("restart", "job@*.service").stdout.splitlines()
    assert [line.split(" restarted: running on ")[0] for line in out] == [
        "Unit job@1.service", "Unit job@2.service"]
    after = {r["unit"]: r for r in cluster.units()}
    for name in ("job@1.service", "job@2.service"):
        assert after[name]["state"] == "running" and after[name]["current"]
        assert after[name]["pid"] != before[name]["pid"] and not alive(before[name]["pid"])
    assert after["other.service"]["pid"] == before["other.service"]["pid"]
    assert after["job@3.service"]["state"] == "stopped", "a stopped instance stays stopped"

    none = cluster.ctl("restart", "api@*.service", check=False)
    assert none.returncode == 1
    assert "'api@*.service' matches no launched unit" in none.stderr
    idle = cluster.ctl("restart", "job@3*", check=False)
    assert idle.returncode == 1 and "job@3.service matched but are not launched" in idle.stderr
    template = cluster.ctl("restart", "job@.service", check=False)
    assert template.returncode == 1
    assert "job@.service is a template; restart its instances, such as 'job@*.service'" \
        in template.stderr
