"""fleetd at size, on simulated machines (fleetd.lab.sim): 200 machines, 2,000 units by
default (FLEETD_SCALE_MACHINES / FLEETD_SCALE_UNITS change it; half that on etcd, see
ETCD_FACTOR). A real fleetd process on
SQLite and on a real one-member etcd, real SSH to each machine (its own host key, strict
checking), the real agent; only the driver is fake, and it counts every start and stop.
Correctness, not time:

- every unit placed and reported running exactly once, where fleetd says it runs;
- the units of machines cut off silently run elsewhere, and once the machines are back
  every unit runs exactly once again;
- after fleetd's kill -9 and restart, every machine is up again and nothing was started
  or stopped anywhere.

The timeouts only bound a broken build; bench/scale.py measures the times.
"""

from __future__ import annotations

import os
import time
from typing import Any, Dict, Iterator, List, Optional

import pytest
from labkit import ON_BOTH_REGISTRIES, Fleet
from simkit import SimProcess, wait_until

from fleetd.lab.daemon import wait_up

pytestmark = pytest.mark.scale

MACHINES = int(os.environ.get("FLEETD_SCALE_MACHINES", "200"))
UNITS = int(os.environ.get("FLEETD_SCALE_UNITS", "2000"))
# etcd at half the size: at 200 machines on a machine loaded by other test runs, fleetd
# on etcd was seen to lose its leader lease ("no renewal confirmed in time") and stay
# leaderless for minutes: each new term marked every machine unreachable, one fenced
# write at a time, inside the leadership loop, which renewed nothing meanwhile. Fixed
# (Daemon._lead runs it beside the loop; tests/unit/test_daemon_terms.py); 200 on etcd
# passes again alone (FLEETD_SCALE_MACHINES=400: 69 s), but has not yet been run beside
# a CI's load, so CI keeps the half size for now
ETCD_FACTOR = 2
CUT = 5
BATCH = 100
SETTLE_S = 8.0  # after the restart: more than the TTL (5 s) and several heartbeats
TEMPLATE = "[Service]\nExecStart=/bin/sleep 100000\n"


def size(registry: Optional[str]) -> tuple[int, int]:
    """(machines, units) for the registry under test."""
    factor = ETCD_FACTOR if registry else 1
    return MACHINES // factor, UNITS // factor


@pytest.fixture
def sized(tmp_path: Any, registry: Optional[str]) -> Iterator[tuple[Fleet, SimProcess]]:
    fleet = Fleet(None, str(tmp_path), args=["--log-level", "warning"], registry=registry)
    fleet.start()
    assert fleet.api.get("/v1/health")["registry"] == ("etcd" if registry else "sqlite")
    sim = SimProcess(str(tmp_path), size(registry)[0], fleet.endpoint)
    try:
        sim.start()
        yield fleet, sim
    finally:
        sim.stop()
        fleet.stop()


def rows(fleet: Fleet) -> Dict[str, List[Dict[str, Any]]]:
    out: Dict[str, List[Dict[str, Any]]] = {}
    for u in fleet.api.get("/v1/units", timeout=60)["units"]:
        out.setdefault(u["unit"], []).append(u)
    return out


def placed_once(fleet: Fleet, names: List[str]) -> Dict[str, str]:
    """unit -> machine if fleetd reports each of ``names`` running on its current content
    on exactly one machine; {} (falsy) until then."""
    now = rows(fleet)
    out = {}
    for n in names:
        running = [r for r in now.get(n, []) if r["state"] == "running" and r["current"]]
        if len(running) != 1:
            return {}
        out[n] = running[0]["machine"]
    return out


def differences(fleet: Fleet, where: Dict[str, str]) -> List[Any]:
    """Units fleetd does not report running (current) on exactly ``where[unit]``: each
    with its rows, for the failure message; [] when there are none."""
    now = rows(fleet)
    out: List[Any] = []
    for n, m in where.items():
        running = [r["machine"] for r in now.get(n, [])
                   if r["state"] == "running" and r["current"]]
        if running != [m]:
            out.append((n, m, [{k: r.get(k) for k in ("machine", "state", "current")}
                               for r in now.get(n, [])]))
    return out


def start(fleet: Fleet, names: List[str]) -> None:
    """``fleetctl start --no-block`` in batches of BATCH (etcd takes at most 128
    operations in one transaction; fleetd refuses a larger batch, saying so)."""
    for i in range(0, len(names), BATCH):
        proc = fleet.ctl("start", "--no-block", *names[i:i + BATCH], check=False,
                         timeout=120)
        assert proc.returncode == 0, (f"fleetctl start {names[i]} ... exited "
                                      f"{proc.returncode}: {proc.stderr[-2000:]}")


@ON_BOTH_REGISTRIES
def test_units_place_move_and_survive_a_fleetd_restart_at_size(
        sized: tuple[Fleet, SimProcess], tmp_path: Any, registry: Optional[str]) -> None:
    fleet, sim = sized
    count, units = size(registry)
    machines = sim.names()
    assert len(machines) == count
    wait_up(fleet.api, machines, timeout=240)

    template = tmp_path / "w@.service"
    template.write_text(TEMPLATE)
    fleet.ctl("submit", str(template))
    names = [f"w@{i}.service" for i in range(1, units + 1)]
    start(fleet, names)
    where = wait_until("every unit running once", lambda: placed_once(fleet, names), 300)

    state = sim.machines()
    running = sim.running(state)
    assert {n: running.get(n) for n in names} == {n: [where[n]] for n in names}
    assert set(running) == set(names)
    starts = {n: sum(c["starts"].get(n, 0) for c in sim.counts(state).values())
              for n in names}
    assert set(starts.values()) == {1}, "a unit started more than once"
    assert len(set(where.values())) > count // 2  # spread, not piled on a few

    # cut off silently: their units run elsewhere
    loaded = sorted({m for m in where.values()})
    cut = loaded[:CUT]
    moved = sorted(n for n in names if where[n] in cut)
    assert moved
    sim.lever("cut", cut)

    def moved_off() -> Dict[str, str]:
        now = placed_once(fleet, names)
        return now if now and not set(now.values()) & set(cut) else {}
    after = wait_until(f"the units of {cut} to run elsewhere", moved_off, 120)
    running = sim.running()
    for n in moved:
        elsewhere = [m for m in running[n] if m not in cut]
        assert elsewhere == [after[n]], (n, running[n], after[n])

    # back again: the old copies stop, every unit runs exactly once
    sim.lever("heal", cut)
    wait_until("every unit running on one machine only",
               lambda: all(len(ms) == 1 for ms in sim.running().values())
               and set(sim.running()) == set(names), 120)
    final = placed_once(fleet, names)
    assert final and all(sim.running()[n] == [final[n]] for n in names)

    # fleetd kill -9 and restart: all up again, nothing started or stopped
    before = sim.counts()
    fleet.kill9()
    t0 = time.time()
    fleet.start()
    wait_until("every machine heard by the new fleetd", lambda: fleet.heard_since(t0), 240)
    wait_until("the new fleetd to report every unit where it ran",
               lambda: not differences(fleet, final), 120, what_else=lambda: differences(
                   fleet, final))
    time.sleep(SETTLE_S)
    assert placed_once(fleet, names) == final
    after_restart = sim.counts()
    changed = {m: (before[m], after_restart[m]) for m in before
               if before[m] != after_restart[m]}
    assert not changed, f"fleetd's restart started or stopped programs: {changed}"
