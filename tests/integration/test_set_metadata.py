"""``fleetctl machine set-metadata``: a machine's metadata changes at runtime; the units
whose MachineMetadata= it no longer matches move, each with a hand-off (its old copy
runs until the new one is healthy, as a drain's), and the units that still match stay.
The change shows in list-machines and outlives a restart of fleetd (whose sessions
reconnect to the agents). Watched from outside: real processes, their start and end
times, and the API."""

from __future__ import annotations

import threading
import time
from typing import Dict, List, Set, Tuple

from labkit import ON_BOTH_REGISTRIES, Fleet, wait_for

pytestmark = ON_BOTH_REGISTRIES  # each also on a real etcd registry

READY_AFTER_S = 1.5  # each db copy starts serving (passing its check) this long after start


def unit(metadata: str, port: int = 0) -> str:
    """A unit constrained by ``metadata``; with a port, it serves after READY_AFTER_S and
    is healthy only then (its [X-Check])."""
    if not port:
        return f"[Service]\nExecStart=/bin/sleep 100000\n[X-Fleet]\n{metadata}\n"
    return (f"[Service]\nExecStart=/bin/sh -c 'sleep {READY_AFTER_S}; "
            f"exec python3 -m http.server {port} --bind 127.0.0.1'\n"
            f"[X-Check]\nType=http\nURL=http://127.0.0.1:{port}/\nInterval=1s\n"
            f"Timeout=500ms\nStartGrace=10s\n[X-Fleet]\n{metadata}\n")


def test_set_metadata_moves_exactly_what_no_longer_matches_each_with_a_hand_off(
        cluster: Fleet, tmp_path) -> None:
    for h, role in (("h1", "db"), ("h2", "db"), ("h3", "web")):
        out = cluster.ctl("machine", "set-metadata", h, f"role={role}").stdout
        assert f"Machine {h}: metadata hostname={h},lab=" in out and f"role={role}" in out
    cluster.ctl("drain", "h2")  # the db units start on h1
    files = {"db0.service": unit("MachineMetadata=role=db", 18200),
             "db1.service": unit("MachineMetadata=role=db", 18201),
             "pinned-by-name.service": unit("MachineMetadata=hostname=h1"),
             "either.service": unit("MachineMetadata=role=db role=web"),
             "web.service": unit("MachineMetadata=role=web"),
             "anywhere.service": "[Service]\nExecStart=/bin/sleep 100000\n"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    cluster.ctl("start", *(str(tmp_path / n) for n in files), timeout=90)
    cluster.ctl("undrain", "h2")
    moving, staying = ["db0.service", "db1.service"], sorted(set(files) - {"db0.service",
                                                                           "db1.service"})
    wait_for("the db units passing", lambda: all(
        u.get("health") == "passing" for u in cluster.units() if u["unit"] in moving), 20)
    before = cluster.programs()
    assert all(list(before[n].values()) == ["h1"] for n in moving), before

    samples: List[Tuple[float, Dict[str, Set[int]]]] = []
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            programs = cluster.programs()
            samples.append((time.monotonic(), {n: set(programs.get(n, {})) for n in files}))
            time.sleep(0.02)

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        out = cluster.ctl("machine", "set-metadata", "h1", "role=web").stdout
        assert "role=web" in out and "(was hostname=h1," in out and "role=db)" in out
        wait_for("the db units on h2 alone, their old copies gone", lambda: all(
            list(cluster.programs().get(n, {}).values()) == ["h2"] for n in moving), 60)
        time.sleep(1.0)  # long enough to see a unit that should stay leave, if one did
    finally:
        done.set()
        watcher.join()

    after = cluster.programs()
    for name in staying:  # still matching: the same process, where it was
        assert after[name] == before[name], name
    assert len(samples) > 50
    for name in moving:
        assert all(s[name] for _, s in samples), f"{name} had no running copy"
        old_pid = next(iter(before[name]))
        new_pid = next(iter(after[name]))
        last_old = max(t for t, s in samples if old_pid in s[name])
        first_new = min(t for t, s in samples if new_pid in s[name])
        # the old copy stopped only once the new one had been up long enough to serve
        assert last_old - first_new >= READY_AFTER_S * 0.9, (name, last_old - first_new)
        info = next(f for f in cluster.unit_files() if f["unit"] == name)
        assert info["machine"] == "h2" and info["handoff"] is None
        assert info["reason"].startswith("h1 no longer matches MachineMetadata=role=db: its "
                                         "copy there runs until this one is healthy"), info
    listed = cluster.ctl("list-machines", "--fields", "machine,metadata", "--no-legend",
                         "--full").stdout
    h1_line = next(line for line in listed.splitlines() if line.startswith("h1"))
    assert "role=web" in h1_line and "role=db" not in h1_line, listed

    # fleetd restarts, its sessions reconnect to the agents: the metadata stays, and
    # nothing moves
    cluster.stop()
    cluster.start()
    wait_for("3 machines up again",
             lambda: all(m["state"] == "up" for m in cluster.machines().values()), 20)
    assert cluster.machines()["h1"]["metadata"]["role"] == "web"
    time.sleep(2.0)
    assert cluster.programs() == after
