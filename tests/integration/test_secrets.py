"""Issue 17's secrets, end to end in a real lab (prefix ``fs``, 10.90.0.0/24): fleetctl ->
fleetd (sealed in SQLite) -> SSH -> the agent's 0400 file -> the program's environment.

The program writes the SHA-256 of its DB_PASSWORD to a file the test reads, so the value
itself is written nowhere by the test's own unit; the test then greps for the value in
everything fleetd shows and keeps: ``cat``, ``status``, ``list-units -o json``,
``journal``, the API, fleetd's log, the registry file's bytes, and every file of the
agent's state directory, where it must be in exactly one file, mode 0400, in a 0700
directory. A new ``secret set`` restarts the unit with the new value."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
from pathlib import Path
from typing import Any, Dict, Iterator, List

import pytest
from labkit import FLEETCTL, ROOT, Fleet, lab_slot, reset_host, wait_for

from fleetd.client import ApiError
from fleetd.lab.netns import Lab

VALUE = "Tr0ub4dor&3-lab-secret"
NEW_VALUE = "correct-horse-battery-staple-2"
UNIT = ("[Service]\n"
        "ExecStart=/bin/sh -c 'printf %%s \"$$DB_PASSWORD\" | sha256sum > {out}.tmp && "
        "mv {out}.tmp {out}; echo started; exec sleep 100000'\n"
        "SecretEnvironment=DB_PASSWORD=db_pw\n"
        "Restart=always\nRestartSec=100ms\n")


@pytest.fixture(scope="module")
def fs_lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.fail("integration tests need root (network namespaces, sshd, cgroups)")
    with lab_slot("fs"):
        lab = Lab(str(tmp_path_factory.mktemp("fs-lab")), prefix="fs", subnet="10.90.0")
        lab.down()  # what a crashed run of this slot left
        try:
            lab.up(2)
            yield lab
        finally:
            lab.down()


@pytest.fixture
def fleet(fs_lab: Lab, tmp_path: Any) -> Iterator[Fleet]:
    f = Fleet(fs_lab, str(tmp_path))
    f.start()
    for h in fs_lab.hosts():
        f.add(h)
    wait_for("2 machines up", lambda: all(m["state"] == "up"
                                          for m in f.machines().values()), 20)
    yield f
    f.stop()
    for h in fs_lab.hosts():
        reset_host(fs_lab, h)


def ctl_input(fleet: Fleet, text: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, FLEETCTL_ENDPOINT=fleet.endpoint)
    return subprocess.run([FLEETCTL, *args], input=text, capture_output=True, text=True,
                          env=env, timeout=60, cwd=ROOT)


def sha(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def files_holding(root: str, needle: bytes) -> List[str]:
    found = []
    for directory, _, names in os.walk(root):
        for name in names:
            path = os.path.join(directory, name)
            if not stat.S_ISREG(os.lstat(path).st_mode):
                continue  # the agent's socket
            with open(path, "rb") as f:
                if needle in f.read():
                    found.append(path)
    return found


def test_a_unit_runs_with_its_secret_shown_nowhere_and_rolls_on_a_new_one(
        fleet: Fleet, tmp_path: Path) -> None:
    out = tmp_path / "seen"
    unit = tmp_path / "db-user.service"
    unit.write_text(UNIT.format(out=out))
    done = ctl_input(fleet, VALUE + "\n", "secret", "set", "db_pw")
    assert done.returncode == 0, done.stderr
    fleet.ctl("start", str(unit))
    wait_for("the program's hash of its DB_PASSWORD", lambda: out.exists() and
             out.read_text().split()[0] == sha(VALUE))
    row = fleet.unit("db-user.service")
    assert row is not None and row["state"] == "running"
    pid, host = row["pid"], fleet.host(row["machine"])
    wait_for("its output in the journal", lambda: "started" in fleet.ctl(
        "journal", "db-user.service").stdout)

    shown: Dict[str, str] = {
        "cat": fleet.ctl("cat", "db-user.service").stdout,
        "status": fleet.ctl("status", "db-user.service").stdout,
        "list-units -o json": fleet.ctl("list-units", "-o", "json").stdout,
        "list-unit-files": fleet.ctl("list-unit-files").stdout,
        "journal": fleet.ctl("journal", "db-user.service").stdout,
        "secret list -o json": fleet.ctl("secret", "list", "-o", "json").stdout,
        "API unit": str(fleet.api.get("/v1/units/db-user.service")),
        "API status": str(fleet.api.get("/v1/units/db-user.service/status")),
        "API secrets": str(fleet.api.get("/v1/secrets")),
        "argv": Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"),
    }
    assert "SecretEnvironment=DB_PASSWORD=db_pw" in shown["cat"]
    assert "Secrets: DB_PASSWORD=*** (secret db_pw)" in shown["status"]
    assert "db_pw" in shown["secret list -o json"]
    for where, text in shown.items():
        assert VALUE not in text, where
    assert files_holding(fleet.state_dir, VALUE.encode()) == []  # registry.db*, the key
    assert VALUE not in Path(fleet.log).read_text()
    secret_file = os.path.join(host.state_dir, "secrets", "db-user.service.json")
    assert files_holding(host.state_dir, VALUE.encode()) == [secret_file]
    assert stat.S_IMODE(os.stat(secret_file).st_mode) == 0o400
    assert stat.S_IMODE(os.stat(os.path.dirname(secret_file)).st_mode) == 0o700

    # a crash restarts it (from its prepared process, where the host's cgroups allow
    # one) with the value read again from the agent's file
    out.unlink()
    os.kill(pid, 9)
    wait_for("the program restarted after a crash, with its value", lambda: out.exists()
             and out.read_text().split()[0] == sha(VALUE))
    pid = wait_for("the restarted copy reported", lambda: (
        (u := fleet.unit("db-user.service")) and u["state"] == "running"
        and u["pid"] != pid and u["pid"]))

    done = ctl_input(fleet, NEW_VALUE, "secret", "set", "db_pw")
    assert done.returncode == 0 and "restarting db-user.service" in done.stdout
    wait_for("the program restarted with the new value", lambda: out.exists() and
             out.read_text().split()[0] == sha(NEW_VALUE), 20)
    after = wait_for("the new copy reported running", lambda: (
        (u := fleet.unit("db-user.service")) and u["state"] == "running"
        and u["current"] and u["pid"] != pid and u))
    assert fleet.copies("db-user.service") == [after["pid"]]
    host = fleet.host(after["machine"])
    for text in (VALUE, NEW_VALUE):
        assert files_holding(fleet.state_dir, text.encode()) == []
        assert text not in Path(fleet.log).read_text()
    assert files_holding(host.state_dir, NEW_VALUE.encode()) == [
        os.path.join(host.state_dir, "secrets", "db-user.service.json")]
    assert files_holding(host.state_dir, VALUE.encode()) == []  # the old one is gone


def test_missing_secrets_bad_names_and_removal_in_use_are_clear(fleet: Fleet,
                                                                tmp_path: Path) -> None:
    unit = tmp_path / "db-user.service"
    unit.write_text(UNIT.format(out=tmp_path / "seen"))
    fleet.ctl("start", "--no-block", str(unit))
    waiting = wait_for("the unit waiting for its secret", lambda: (
        (u := fleet.unit("db-user.service")) and "secret db_pw is not set" in
        (fleet.api.get("/v1/units/db-user.service/status")["reason"] or "") and u))
    assert waiting["state"] != "running"
    assert fleet.copies("db-user.service") == []

    bad = ctl_input(fleet, "v", "secret", "set", "../etc")
    assert bad.returncode == 1
    assert "Error: name: secret name '../etc': want 1 to 128 letters" in bad.stderr
    with pytest.raises(ApiError) as err:
        fleet.api.request("PUT", "/v1/secrets/-x", {"value": VALUE})
    assert err.value.status == 400 and "name: secret name '-x'" in str(err.value)
    assert VALUE not in str(err.value)

    assert ctl_input(fleet, VALUE, "secret", "set", "db_pw").returncode == 0
    wait_for("the unit running once its secret is set", lambda: (
        (u := fleet.unit("db-user.service")) and u["state"] == "running"))
    refused = fleet.ctl("secret", "rm", "db_pw", check=False)
    assert refused.returncode == 1
    assert "secret db_pw is used by db-user.service" in refused.stderr
    assert fleet.unit("db-user.service")["state"] == "running"


SEEN_JAVA = """\
import java.nio.file.*;
import java.security.MessageDigest;

public class Seen {
    public static void main(String[] args) throws Exception {
        byte[] d = MessageDigest.getInstance("SHA-256")
            .digest(System.getenv("DB_PASSWORD").getBytes("UTF-8"));
        StringBuilder hex = new StringBuilder();
        for (byte b : d) hex.append(String.format("%02x", b));
        Files.writeString(Path.of(args[0] + ".tmp"), hex + "\\n");
        Files.move(Path.of(args[0] + ".tmp"), Path.of(args[0]),
                   StandardCopyOption.ATOMIC_MOVE);
        Thread.sleep(1000000000L);
    }
}
"""


def test_a_java_unit_gets_its_secret_too(fleet: Fleet, tmp_path: Path) -> None:
    javac = shutil.which("javac")
    if javac is None:
        pytest.skip("needs javac (a JDK 17+)")
    (tmp_path / "Seen.java").write_text(SEEN_JAVA)
    subprocess.run([javac, "--release", "17", "-d", str(tmp_path / "classes"),
                    str(tmp_path / "Seen.java")], check=True, timeout=120)
    out = tmp_path / "seen"
    unit = tmp_path / "java-user.service"
    unit.write_text(f"[X-Fleet]\nDriver=java\n[X-Java]\nMainClass=Seen\n"
                    f"ClassPath={tmp_path / 'classes'}\nArgs={out}\n[Service]\n"
                    "SecretEnvironment=DB_PASSWORD=db_pw\n")
    assert ctl_input(fleet, VALUE, "secret", "set", "db_pw").returncode == 0
    fleet.ctl("start", str(unit))
    wait_for("the JVM's hash of its DB_PASSWORD", lambda: out.exists() and
             out.read_text().split()[0] == sha(VALUE), 30)
    row = fleet.unit("java-user.service")
    assert row is not None and VALUE not in Path(f"/proc/{row['pid']}/cmdline").read_text()
