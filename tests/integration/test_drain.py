"""``fleetctl drain``: a draining machine takes no new units and hands its units over
one at a time, each started and healthy elsewhere before its old copy stops; after a
deadline what is left moves (or stops) at once. Watched from outside: real processes,
their start and end times, and the API."""

from __future__ import annotations

import threading
import time
from typing import Dict, List, Set, Tuple

from labkit import ON_BOTH_REGISTRIES, Fleet, alive, wait_for

pytestmark = ON_BOTH_REGISTRIES  # each also on a real etcd registry

READY_AFTER_S = 1.5  # each copy starts serving (passing its check) this long after start


def web_unit(port: int) -> str:
    return (f"[Service]\nExecStart=/bin/sh -c 'sleep {READY_AFTER_S}; "
            f"exec python3 -m http.server {port} --bind 127.0.0.1'\n"
            f"[X-Check]\nType=http\nURL=http://127.0.0.1:{port}/\nInterval=1s\n"
            "Timeout=500ms\nStartGrace=10s\n")


def where(fleet: Fleet) -> Dict[str, str]:
    return {u["unit"]: u["machine"] for u in fleet.units() if u["state"] == "running"}


def test_drain_moves_units_one_at_a_time_each_healthy_before_the_old_stops(
        cluster: Fleet, tmp_path) -> None:
    # everything on h1 first: the other machines drain (they have nothing yet)
    for h in ("h2", "h3"):
        assert "0 units to move" in cluster.ctl("drain", h).stdout
    names = [f"web{i}.service" for i in range(4)]
    for i, name in enumerate(names):
        (tmp_path / name).write_text(web_unit(18100 + i))
    cluster.ctl("start", *(str(tmp_path / n) for n in names))
    assert set(where(cluster).values()) == {"h1"}
    for h in ("h2", "h3"):
        cluster.ctl("undrain", h)
    wait_for("all passing on h1", lambda: all(
        u.get("health") == "passing" for u in cluster.units() if u["unit"] in names), 20)
    old = {n: cluster.copies(n) for n in names}
    assert all(len(p) == 1 for p in old.values())

    # watch from outside while it drains: live copies of every unit, every 20 ms
    samples: List[Tuple[float, Dict[str, Set[int]]]] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            programs = cluster.programs()  # one pass over /proc for all the units
            samples.append((time.monotonic(), {n: set(programs.get(n, {})) for n in names}))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        out = cluster.ctl("drain", "h1", "--wait", timeout=120).stdout
    finally:
        done.set()
        watcher.join()
    assert "h1 is drained" in out
    assert [line.split()[0] for line in out.splitlines() if "moved off h1" in line] == names

    placed = where(cluster)
    assert set(placed) == set(names) and "h1" not in placed.values()
    for name in names:  # the old copy is gone; exactly one new copy runs
        assert not any(alive(p) for p in old[name])
        assert len(cluster.copies(name)) == 1
    assert len(samples) > 50
    for _, sample in samples:
        assert all(sample[n] for n in names), "a unit had no running copy"  # no downtime
        doubled = [n for n in names if len(sample[n]) > 1]
        assert len(doubled) <= 1, f"more than one unit in hand-off at once: {doubled}"
    # each old copy stopped only once the new one had been up long enough to serve
    # (it listens READY_AFTER_S after starting, and only then can its check pass)
    for name in names:
        new_pid = cluster.copies(name)[0]
        last_old = max(t for t, s in samples if old[name][0] in s[name])
        first_new = min(t for t, s in samples if new_pid in s[name])
        assert last_old - first_new >= READY_AFTER_S * 0.9, (name, last_old - first_new)

    # a drained machine takes nothing new
    for i in range(3):
        (tmp_path / f"late{i}.service").write_text("[Service]\nExecStart=/bin/sleep 100000\n")
    cluster.ctl("start", *(str(tmp_path / f"late{i}.service") for i in range(3)))
    assert "h1" not in where(cluster).values()
    state = cluster.ctl("list-machines").stdout
    assert "h1" in state and "drained" in state
    cluster.ctl("undrain", "h1")
    assert cluster.machines()["h1"]["drain"] is None


def test_drain_deadline_moves_the_rest_at_once_and_stops_what_fits_nowhere(
        cluster: Fleet, tmp_path) -> None:
    h1 = cluster.machines()["h1"]["machine_id"]
    (tmp_path / "pinned.service").write_text(
        f"[Service]\nExecStart=/bin/sleep 100000\n[X-Fleet]\nMachineID={h1}\n")
    # healthy only on h1: its copy elsewhere never passes, so its hand-off cannot end
    # before the deadline
    (tmp_path / "spare.service").write_text(
        "[Service]\nExecStart=/bin/sleep 100000\n"
        "[X-Check]\nType=exec\nCommand=test {{ machine.name }} = h1\nInterval=1s\nTimeout=500ms\n"
        "StartGrace=0\nOnFailure=none\n"
        "[X-Fleet]\nMachineMetadata=hostname=h1 hostname=h2\n")
    for h in ("h2", "h3"):  # everything on h1 first
        cluster.ctl("drain", h)
    cluster.ctl("start", str(tmp_path / "pinned.service"), str(tmp_path / "spare.service"))
    for h in ("h2", "h3"):
        cluster.ctl("undrain", h)
    wait_for("spare passing on h1", lambda: (cluster.unit("spare.service") or {}).get("health")
             == "passing")
    pinned_pid = cluster.copies("pinned.service")
    spare_old = cluster.copies("spare.service")
    assert cluster.programs()["spare.service"] == {spare_old[0]: "h1"}
    cluster.ctl("drain", "h1", "--deadline", "3s")
    time.sleep(1)
    info = next(f for f in cluster.unit_files() if f["unit"] == "pinned.service")
    assert info["reason"] == f"h1 is draining, but MachineID={h1} pins it there"
    assert all(alive(p) for p in pinned_pid)  # before the deadline it keeps running
    # spare's new copy runs on h2, failing its check; the old one waits for it
    assert sorted(cluster.programs()["spare.service"].values()) == ["h1", "h2"]
    wait_for("spare's old copy stopped at the deadline, the new one kept",
             lambda: list(cluster.programs().get("spare.service", {}).values()) == ["h2"], 10)
    assert not alive(spare_old[0])
    wait_for("the pinned unit stopped at the deadline",
             lambda: not any(alive(p) for p in pinned_pid), 10)
    info = next(f for f in cluster.unit_files() if f["unit"] == "pinned.service")
    assert info["machine"] is None and "deadline passed" in info["reason"]
    cluster.ctl("undrain", "h1")
    wait_for("back on h1 once undrained", lambda: cluster.copies("pinned.service"), 10)
