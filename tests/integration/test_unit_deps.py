"""Issue 14 §2 in the lab, through the real fleetctl: [Unit] dependencies between fleet
units on different machines mean what systemd.unit(5) says (engine/dependencies.py).

app Requires=db and After=db: app starts only once db runs and passes its HTTP check
(db's server listens only after a delay, so "running" alone is not enough); stopping db
stops app, saying why; starting db again starts app again. A cycle of After= waits
with the cycle named in both units' reasons, and neither runs.
"""

from __future__ import annotations

from typing import Any, Dict

from labkit import Fleet, wait_for

PORT = 18734
DELAY_S = 3
# the server begins to listen DELAY_S after the process starts: its check passes then
DB = (f"[Service]\nExecStart=/bin/sh -c 'sleep {DELAY_S}; exec python3 -m http.server "
      f"{PORT} --bind 127.0.0.1'\n"
      f"[X-Check]\nType=http\nURL=http://127.0.0.1:{PORT}/\nInterval=1s\nTimeout=500ms\n"
      "StartGrace=20s\n"  # it fails no check while its server is not up yet
      "[X-Fleet]\nMachineID=h1\n")
APP = ("[Unit]\nRequires=db.service\nAfter=db.service network-online.target\n"
       "[Service]\nExecStart=/bin/sleep 100000\n[X-Fleet]\nMachineID=h2\n")


def row(fleet: Fleet, name: str) -> Dict[str, Any]:
    found = fleet.unit(name)
    assert found is not None, name
    return found


def reason(fleet: Fleet, name: str) -> str:
    return str(next(f["reason"] for f in fleet.unit_files() if f["unit"] == name))


def test_app_waits_for_a_healthy_db_on_another_machine_and_stops_with_it(
        cluster: Fleet, tmp_path: Any) -> None:
    (tmp_path / "db.service").write_text(DB)
    (tmp_path / "app.service").write_text(APP)
    cluster.ctl("start", "--no-block", str(tmp_path / "app.service"),
                str(tmp_path / "db.service"))
    wait_for("db running", lambda: row(cluster, "db.service")["state"] == "running")
    waiting = reason(cluster, "app.service")
    assert "held: waiting for db.service to be ready (After=db.service)" in waiting, waiting
    assert not cluster.copies("app.service")  # placed on h2, but not started

    app = wait_for("app running", lambda: (r := row(cluster, "app.service"))["state"]
                   == "running" and r, timeout=30)
    db = row(cluster, "db.service")
    assert db["health"] == "passing" and app["machine"] == "h2" and db["machine"] == "h1"
    # db's check can pass only once its server listens, DELAY_S after it started
    assert app["started_at"] >= db["started_at"] + DELAY_S, (app, db)
    assert "held" not in reason(cluster, "app.service")

    cluster.ctl("stop", "db")
    wait_for("app stopped", lambda: not cluster.copies("app.service"), timeout=20)
    stopped = reason(cluster, "app.service")
    assert "held: stopped: it Requires=db.service, which is not started" in stopped, stopped

    cluster.ctl("start", "db")  # a level, not a job: app follows db back up
    wait_for("app running again", lambda: row(cluster, "app.service")["state"] == "running",
             timeout=30)
    cluster.ctl("destroy", "app", "db")
    wait_for("no program left", lambda: not cluster.programs())


def test_a_cycle_of_after_waits_with_the_cycle_named(cluster: Fleet, tmp_path: Any) -> None:
    for name, other in (("a", "b"), ("b", "a")):
        (tmp_path / f"{name}.service").write_text(
            f"[Unit]\nAfter={other}.service\n[Service]\nExecStart=/bin/sleep 100000\n")
    cluster.ctl("start", "--no-block", str(tmp_path / "a.service"), str(tmp_path / "b.service"))
    text = ("held: After=/Before= ordering is circular: a.service -> b.service -> a.service; "
            "none of them starts")
    wait_for("both held", lambda: all(text in reason(cluster, n)
                                      for n in ("a.service", "b.service")))
    assert not cluster.copies("a.service") and not cluster.copies("b.service")
    assert {row(cluster, n)["state"] for n in ("a.service", "b.service")} <= {
        "stopped", "inactive", "loaded", "starting"}, cluster.units()
    cluster.ctl("destroy", "a", "b")
