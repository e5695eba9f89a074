"""Issue 14 §2 in the lab, through the real fleetctl: ``fleetctl start app.unit``, unit
names without a type (fleet's ``maybeAppendDefaultUnitType``) and ``MachineID=`` by the
machine's name, as ``list-machines`` shows it."""

from __future__ import annotations

from labkit import Fleet, wait_for

UNIT = "[Service]\nExecStart=/bin/sleep 100000\n[X-Fleet]\nMachineID={machine}\n"


def running_on(fleet: Fleet, name: str) -> str:
    row = wait_for(f"{name} running", lambda: (
        (u := fleet.unit(name)) and u["state"] == "running" and u["current"] and u))
    return str(row["machine"])


def test_start_app_unit_and_names_without_a_type_pinned_by_machine_name(
        cluster: Fleet, tmp_path) -> None:
    names = sorted(cluster.machines())
    assert names == ["h1", "h2", "h3"]
    listed = cluster.ctl("list-machines", "--no-legend").stdout
    assert all(n in listed for n in names)  # the names MachineID= now takes

    # the very words: a file app.unit is the service app.service, pinned by name
    (tmp_path / "app.unit").write_text(UNIT.format(machine="h2"))
    out = cluster.ctl("start", "--timeout", "30", str(tmp_path / "app.unit"))
    assert "Unit app.service" in out.stdout, out.stdout
    assert running_on(cluster, "app.service") == "h2"
    assert set(cluster.programs()["app.service"].values()) == {"h2"}

    # a name without a type: the file db.service, by a unique prefix of h3's id
    h3_id = cluster.machines()["h3"]["machine_id"]
    (tmp_path / "db.service").write_text(UNIT.format(machine=h3_id[:12]))
    cluster.ctl("start", str(tmp_path / "db"))
    assert running_on(cluster, "db.service") == "h3"
    assert cluster.ctl("cat", "db").stdout == UNIT.format(machine=h3_id[:12])

    # an ambiguous prefix names the machines it matches, and places nothing
    (tmp_path / "web.unit").write_text(UNIT.format(machine="h"))
    refused = cluster.ctl("start", "--block-attempts", "1", str(tmp_path / "web.unit"),
                          check=False)
    assert refused.returncode != 0
    why = next(f["reason"] for f in cluster.unit_files() if f["unit"] == "web.service")
    assert "MachineID=h is ambiguous: it matches h1, h2, h3" in why, why

    # every verb takes the name as typed
    cluster.ctl("stop", "app")
    assert not cluster.copies("app.service")
    cluster.ctl("destroy", "app.unit", "db", "web")
    assert cluster.unit_files() == []
    wait_for("no program left", lambda: not cluster.programs())
