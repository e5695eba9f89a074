"""Issue 3's scheduling acceptance in the 3-host lab: each a scenario fleet's own
functional tests checked, through the real fleetctl, fleetd, SSH and agents."""

from __future__ import annotations

import time
from typing import Dict, List, Optional

from labkit import Fleet, wait_for


def write(tmp_path, name: str, fleet_section: str = "", service: str = "") -> str:
    path = tmp_path / name
    path.write_text(f"[Service]\nExecStart=/bin/sleep 100000\n{service}\n"
                    f"[X-Fleet]\n{fleet_section}\n")
    return str(path)


def placement(fleet: Fleet) -> Dict[str, Optional[str]]:
    return {f["unit"]: f["machine"] for f in fleet.unit_files()}


def running_on(fleet: Fleet) -> Dict[str, List[str]]:
    out: Dict[str, List[str]] = {}
    for u in fleet.units():
        if u["state"] == "running":
            out.setdefault(u["unit"], []).append(u["machine"])
    return out


def reason(fleet: Fleet, unit: str) -> str:
    return next(f["reason"] for f in fleet.unit_files() if f["unit"] == unit)


def test_machine_of_waits_for_its_target_and_follows_it(cluster: Fleet, tmp_path) -> None:
    b = write(tmp_path, "b.service", "MachineOf=a.service")
    cluster.ctl("start", "--no-block", b)
    wait_for("b to wait for a", lambda: "a.service" in reason(cluster, "b.service"))
    assert placement(cluster)["b.service"] is None
    cluster.ctl("start", write(tmp_path, "a.service"))
    cluster.ctl("start", "b.service")
    where = placement(cluster)
    assert where["b.service"] == where["a.service"] is not None
    # a moves (its machine goes away): b follows it
    cluster.ctl("machine", "remove", where["a.service"])
    wait_for("a and b together elsewhere", lambda: (
        (p := placement(cluster))["a.service"] not in (None, where["a.service"])
        and p["b.service"] == p["a.service"]))
    wait_for("both running", lambda: set(running_on(cluster)) == {"a.service", "b.service"})


def test_conflicts_one_way_and_multiple(cluster: Fleet, tmp_path) -> None:
    cluster.ctl("start", write(tmp_path, "db.service", "Conflicts=web*.service"))
    cluster.ctl("start", write(tmp_path, "web1.service"), write(tmp_path, "web2.service"))
    where = placement(cluster)
    assert where["db.service"] not in (where["web1.service"], where["web2.service"])
    # one-way: web1 names nothing, yet may not join db (conflicts are symmetric)
    # multiple: cache conflicts with all three -> no machine is left for it
    cache = write(tmp_path, "cache.service", "Conflicts=db.service\nConflicts=web1.service "
                                             "web2.service")
    # the least loaded machine wins, so the three sit on three machines...
    assert len({where["db.service"], where["web1.service"], where["web2.service"]}) == 3
    cluster.ctl("start", "--no-block", cache)
    # ...and cache, conflicting with all three, has nowhere to go
    wait_for("cache unplaced with a reason", lambda: "conflict" in
             reason(cluster, "cache.service").lower())
    assert placement(cluster)["cache.service"] is None


def test_machine_id_pins_by_full_id_and_prefix(cluster: Fleet, tmp_path) -> None:
    ids = {name: m["machine_id"] for name, m in cluster.machines().items()}
    cluster.ctl("start", write(tmp_path, "pin.service", f"MachineID={ids['h2']}"),
                write(tmp_path, "pre.service", f"MachineID={ids['h3'][:8]}"))
    where = placement(cluster)
    assert where["pin.service"] == "h2" and where["pre.service"] == "h3"


def test_metadata_template_lands_on_the_named_machine(cluster: Fleet, tmp_path) -> None:
    (tmp_path / "node@.service").write_text(
        "[Service]\nExecStart=/bin/sleep 100000\n[X-Fleet]\nMachineMetadata=hostname=%i\n")
    cluster.ctl("start", str(tmp_path / "node@h2.service"), str(tmp_path / "node@h3.service"))
    where = placement(cluster)
    assert where["node@h2.service"] == "h2" and where["node@h3.service"] == "h3"
    cluster.ctl("start", "--no-block", str(tmp_path / "node@h9.service"))
    wait_for("no machine for h9", lambda: "hostname=h9" in reason(cluster, "node@h9.service"))


def test_global_runs_on_every_matching_machine_and_respects_conflicts(
    cluster: Fleet, tmp_path
) -> None:
    cluster.ctl("start", write(tmp_path, "agent.service", "Global=true"))
    wait_for("global on all three", lambda: sorted(
        running_on(cluster).get("agent.service", [])) == ["h1", "h2", "h3"])
    cluster.ctl("start", "--no-block", write(
        tmp_path, "loner.service",
        "MachineID=" + cluster.machines()["h1"]["machine_id"] + "\nConflicts=agent.service"))
    # the global unit got h1 first: loner waits, saying why, and the two never share h1
    wait_for("loner's reason", lambda: "agent.service" in reason(cluster, "loner.service"))
    time.sleep(1.0)
    on = running_on(cluster)
    assert "loner.service" not in on
    assert sorted(on["agent.service"]) == ["h1", "h2", "h3"]
    metadata = write(tmp_path, "only.service", "Global=true\nMachineMetadata=hostname=h2")
    cluster.ctl("start", "--no-block", metadata)
    wait_for("global with metadata only on h2",
             lambda: running_on(cluster).get("only.service") == ["h2"])


def test_replaces_moves_the_replaced_unit_and_circular_replaces_settle(
    cluster: Fleet, tmp_path
) -> None:
    cluster.ctl("start", write(tmp_path, "old.service"))
    first = placement(cluster)["old.service"]
    # new takes old's machine (the least loaded one would be another) and old moves on
    cluster.ctl("start", write(tmp_path, "new.service", "Replaces=old.service"))
    wait_for("old running elsewhere", lambda: running_on(cluster).get("old.service", [first])
             != [first])
    where = placement(cluster)
    assert where["new.service"] == first
    assert where["old.service"] not in (None, first)
    assert reason(cluster, "old.service").startswith(f"replaced by new.service on {first}")
    # circular: as in fleet's functional test, one of the two runs, the other waits
    cluster.ctl("start", "--no-block", write(tmp_path, "x.service", "Replaces=y.service"),
                write(tmp_path, "y.service", "Replaces=x.service"))
    wait_for("one of x and y running", lambda: len(
        {"x.service", "y.service"} & set(running_on(cluster))) == 1)
    first = placement(cluster)
    waiting = "y.service" if first["x.service"] else "x.service"
    assert first[waiting] is None and "Replaces" in reason(cluster, waiting)
    time.sleep(1.5)  # several engine passes: nothing flaps
    assert placement(cluster) == first


def test_a_unit_too_big_for_every_machine_stays_unplaced_with_its_reason(
    cluster: Fleet, tmp_path
) -> None:
    big = write(tmp_path, "big.service", service="MemoryMax=100T")
    out = cluster.ctl("start", "--block-attempts", "2", big, check=False)
    assert out.returncode != 0
    why = reason(cluster, "big.service")
    assert "100.0 TiB" in why or "100 TiB" in why, why
    assert "GiB" in why  # what the best machine has
    listing = cluster.ctl("list-unit-files").stdout
    assert "big.service" in listing and "no machine" in listing
