"""``fleetctl scale web@.service N`` in the lab, through the real fleetctl: instances
web@1..N of a submitted template run, placed under the template's constraints (here
Conflicts=web@*.service and MachineMetadata=, so one per machine, never on h1);
scaling down stops and destroys the highest numbers and keeps the others' processes;
scale 0 leaves the template alone; a non-template is refused."""

from __future__ import annotations

from labkit import ON_BOTH_REGISTRIES, Fleet, alive, wait_for

pytestmark = ON_BOTH_REGISTRIES  # each also on a real etcd registry

TEMPLATE = ("[Service]\nExecStart=/bin/sleep 100000\n"
            "[X-Fleet]\nConflicts=web@*.service\nMachineMetadata=hostname=h2 hostname=h3\n")


def test_scale_up_and_down_under_the_templates_constraints(cluster: Fleet, tmp_path) -> None:
    (tmp_path / "web@.service").write_text(TEMPLATE)
    cluster.ctl("submit", str(tmp_path / "web@.service"))
    out = cluster.ctl("scale", "web@.service", "2").stdout
    assert [line.split()[1] for line in out.splitlines()] == ["web@1.service", "web@2.service"]
    programs = cluster.programs()
    two = {n: programs[n] for n in ("web@1.service", "web@2.service")}
    assert sorted(h for p in two.values() for h in p.values()) == ["h2", "h3"]

    # a third fits nowhere (one per machine, h1 does not match): it waits, saying why
    out = cluster.ctl("scale", "web@.service", "3", "--no-block").stdout
    assert out == "Triggered unit web@3.service start\n"
    third = wait_for("web@3's reason", lambda: next(
        (f for f in cluster.unit_files() if f["unit"] == "web@3.service"
         and f["reason"]), None))
    assert third["machine"] is None and "web@3.service" not in cluster.programs()

    out = cluster.ctl("scale", "web@.service", "1").stdout
    assert out.splitlines() == ["Destroyed web@3.service", "Destroyed web@2.service"]
    assert not any(alive(p) for p in two["web@2.service"])  # stopped, then forgotten
    assert cluster.programs()["web@1.service"] == two["web@1.service"]  # untouched
    names = {f["unit"] for f in cluster.unit_files()}
    assert names == {"web@.service", "web@1.service"}

    out = cluster.ctl("scale", "web@.service", "1").stdout
    assert out == "web@.service: 1 instance already\n"
    out = cluster.ctl("scale", "web@.service", "0").stdout
    assert out == "Destroyed web@1.service\n"
    assert not any(alive(p) for p in two["web@1.service"])
    assert {f["unit"] for f in cluster.unit_files()} == {"web@.service"}

    refused = cluster.ctl("scale", "web@1.service", "2", check=False)
    assert refused.returncode == 1 and ('"web@1.service" is not a template: scale makes '
                                        "instances NAME@1 .. NAME@N of a template such as "
                                        "web@.service; its template is web@.service"
                                        in refused.stderr), refused.stderr
    refused = cluster.ctl("scale", "db@.service", "2", check=False)
    assert refused.returncode == 1 and "template db@.service is not submitted" \
        in refused.stderr, refused.stderr
