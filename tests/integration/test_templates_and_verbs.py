"""Issue 3 in the lab, through the real fleetctl: templates, rendering per machine,
--replace, fleet's verbs, listing flags and status."""

from __future__ import annotations

import json
import os

from labkit import Fleet, alive, cmdline, wait_for

WEB_TEMPLATE = """\
[Unit]
Description=web instance %i

[Service]
Environment=PORT={{ vars.base_port }}%i
ExecStart=/bin/sh -c 'echo "{{ unit.name }} on {{ machine.name }} port $PORT"; exec sleep 1000'
"""


def running(fleet: Fleet, name: str) -> dict:
    return wait_for(f"{name} running", lambda: (
        (u := fleet.unit(name)) and u["state"] == "running" and u["current"] and u))


def log_of(fleet: Fleet, row: dict) -> str:
    path = os.path.join(fleet.host(row["machine"]).state_dir, "logs", f"{row['unit']}.log")
    with open(path, errors="replace") as f:
        return f.read()


def test_template_instances_render_per_machine_and_replace_updates_them(
    cluster: Fleet, tmp_path
) -> None:
    (tmp_path / "web@.service").write_text(WEB_TEMPLATE)
    # no web@3.service file: the template beside it is used, as fleet did
    out = cluster.ctl("start", str(tmp_path / "web@3.service"), "--var", "base_port=80")
    assert "web@3.service running on" in out.stdout
    row = running(cluster, "web@3.service")
    wait_for("the rendered greeting", lambda: "web@3.service on " + row["machine"] +
             " port 803" in log_of(cluster, row))
    assert "● web@3.service - web instance 3" in cluster.ctl("status", "web@3.service").stdout

    # the template is now submitted: another instance by name alone, from anywhere
    cluster.ctl("start", "web@4.service")
    files = {f["unit"]: f for f in cluster.unit_files()}
    assert files["web@.service"]["desired"] == "inactive"
    assert files["web@.service"]["hash"] == files["web@3.service"]["hash"] \
        == files["web@4.service"]["hash"], "template content is stored once"

    # a changed template without --replace is refused; with it, instances follow, one
    # at a time (a rolling update, issue 16: each healthy for MinHealthySec=, 10s)
    (tmp_path / "web@.service").write_text(WEB_TEMPLATE.replace("port $PORT", "P=$PORT"))
    refused = cluster.ctl("submit", str(tmp_path / "web@.service"), check=False)
    assert refused.returncode != 0 and "--replace" in refused.stderr
    old_pid = row["pid"]
    cluster.ctl("submit", "--replace", str(tmp_path / "web@.service"))
    new = wait_for("web@3 on the new content", lambda: (
        (u := cluster.unit("web@3.service")) and u["state"] == "running" and u["current"]
        and u["pid"] != old_pid and u))
    assert not alive(old_pid)
    wait_for("new greeting", lambda: "P=803" in log_of(cluster, new))
    wait_for("web@4 on the new content too", lambda: len({
        f["hash"] for f in cluster.unit_files()
        if f["unit"] in ("web@.service", "web@3.service", "web@4.service")}) == 1, 30)


def test_template_errors_name_unit_line_and_variable(cluster: Fleet, tmp_path) -> None:
    unit = tmp_path / "bad.service"
    unit.write_text("[Service]\nExecStart=/bin/echo {{ vars.missing }}\n")
    out = cluster.ctl("start", str(unit), "--var", "other=1", check=False)
    assert out.returncode != 0
    assert f"{unit}:2: template: vars.missing is not defined (defined: other)" in out.stderr
    escape = tmp_path / "escape.service"
    escape.write_text("[Service]\nExecStart=/bin/echo {{ ''.__class__.__mro__ }}\n")
    out = cluster.ctl("start", str(escape), check=False)
    assert out.returncode != 0 and "not allowed" in out.stderr and "__class__" in out.stderr
    assert cluster.unit_files() == []

    # a machine reference that does not hold on the chosen machine: the reason says so
    meta = tmp_path / "meta.service"
    meta.write_text("[Service]\nExecStart=/bin/sleep {{ machine.metadata.nope }}\n")
    cluster.ctl("start", "--no-block", str(meta))
    reason = wait_for("a render reason", lambda: next(
        (f["reason"] for f in cluster.unit_files() if "cannot render" in f["reason"]), None))
    assert "machine.metadata.nope is not defined" in reason


def test_verbs_submit_load_start_restart_unload(cluster: Fleet, tmp_path) -> None:
    unit = tmp_path / "app.service"
    unit.write_text("[Service]\nExecStart=/bin/sleep 1000\n")
    assert cluster.ctl("submit", str(unit)).stdout.strip() == "Unit app.service submitted"
    files = cluster.unit_files()
    assert [(f["unit"], f["desired"], f["machine"]) for f in files] == [
        ("app.service", "inactive", None)]

    assert "loaded" in cluster.ctl("load", "app.service").stdout
    row = cluster.unit("app.service")
    assert row["state"] == "stopped" and row["pid"] is None and row["machine"]

    cluster.ctl("start", "app.service")
    first = running(cluster, "app.service")
    out = cluster.ctl("restart", "app.service")
    assert "restarted: running on" in out.stdout
    second = running(cluster, "app.service")
    assert second["pid"] != first["pid"] and not alive(first["pid"])
    assert second["machine"] == first["machine"]

    cluster.ctl("unload", "app.service")
    assert not alive(second["pid"])
    assert cluster.unit("app.service") is None
    assert [(f["desired"], f["machine"]) for f in cluster.unit_files()] == [("inactive", None)]


def test_listing_flags_and_status(cluster: Fleet, tmp_path) -> None:
    unit = tmp_path / "talk.service"
    unit.write_text("[Unit]\nDescription=talks\n[Service]\n"
                    "ExecStart=/bin/sh -c 'for i in 1 2 3; do echo line $i; done; "
                    "exec sleep 1000'\n")
    cluster.ctl("start", str(unit))
    row = running(cluster, "talk.service")

    rows = json.loads(cluster.ctl("list-units", "-o", "json").stdout)
    assert [(r["unit"], r["machine"], r["state"], r["pid"]) for r in rows] == [
        ("talk.service", row["machine"], "running", row["pid"])]
    plain = cluster.ctl("list-units", "--no-legend", "--fields", "unit,pid").stdout
    assert plain.split() == ["talk.service", str(row["pid"])]
    full = cluster.ctl("list-unit-files", "--full", "--fields", "hash", "--no-legend").stdout
    assert len(full.strip()) == 64
    assert len(cluster.ctl("list-unit-files", "--fields", "hash").stdout.split()[1]) == 7
    bad = cluster.ctl("list-units", "--fields", "unit,nope", check=False)
    assert bad.returncode != 0 and "unknown field nope" in bad.stderr
    machines = json.loads(cluster.ctl("list-machines", "-o", "json").stdout)
    assert sorted(m["name"] for m in machines) == ["h1", "h2", "h3"]

    wait_for("three lines logged", lambda: "line 3" in log_of(cluster, row))
    status = cluster.ctl("status", "talk.service").stdout
    assert "● talk.service - talks" in status
    assert f"{row['machine']}: running, pid {row['pid']}, since" in status
    assert "line 1\nline 2\nline 3" in status
    data = json.loads(cluster.ctl("status", "-o", "json", "-n", "2", "talk.service").stdout)
    assert data["log"] == ["line 2", "line 3"]
    assert "sleep 1000" in cmdline(row["pid"])


def test_starting_a_template_itself_is_refused(cluster: Fleet, tmp_path) -> None:
    (tmp_path / "t@.service").write_text("[Service]\nExecStart=/bin/sleep 1\n")
    out = cluster.ctl("start", str(tmp_path / "t@.service"), check=False)
    assert out.returncode != 0 and "is a template; start an instance" in out.stderr
    missing = cluster.ctl("start", "nothere@2.service", check=False)
    assert missing.returncode != 0
    assert "no template nothere@.service is submitted or beside it" in missing.stderr
