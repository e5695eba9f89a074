"""Tokens with roles, end to end: a real fleetd serving TLS on 127.0.0.1, tokens made
with ``fleetctl token create`` on its Unix socket (root's, admin), and fleetctl over
https with each token from ``--token-file`` or FLEETCTL_TOKEN."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

import pytest
from etcdkit import free_port
from labkit import FLEETCTL, Fleet, reset_host, wait_for

from fleetd.lab import certs
from fleetd.lab.netns import Lab

UNIT = "[Service]\nExecStart=/bin/sleep 1000\n"


class Tls:
    """fleetd over TLS, and fleetctl to it as a token's holder."""

    def __init__(self, tmp_path: Path, lab: Optional[Lab] = None) -> None:
        ca = certs.make_ca(str(tmp_path))
        server = certs.issue(ca, str(tmp_path), "api", ["127.0.0.1"])
        self.url = f"https://127.0.0.1:{free_port()}"
        config = tmp_path / "fleetd.toml"
        config.write_text(f'[api]\nlisten = "{self.url[8:]}"\ntls_cert = "{server.cert}"\n'
                          f'tls_key = "{server.key}"\n')
        self.ca = ca.cert
        self.dir = tmp_path
        self.fleet = Fleet(lab, str(tmp_path), str(config))

    def token_file(self, name: str, token: str) -> str:
        path = self.dir / f"{name}.token"
        path.write_text(token + "\n")
        path.chmod(0o600)
        return str(path)

    def ctl(self, token_file: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETCTL_")}
        return subprocess.run([FLEETCTL, "--endpoint", self.url, "--ca-file", self.ca,
                               "--token-file", token_file, *args], capture_output=True,
                              text=True, timeout=60, env=env, cwd=str(self.dir))


@pytest.fixture
def tls(tmp_path: Path) -> Iterator[Tuple[Tls, Dict[str, str]]]:
    t = Tls(tmp_path)
    t.fleet.start()
    try:  # a set-up that fails stops fleetd too
        files = {}
        for role in ("read", "operate", "admin"):
            made = t.fleet.ctl("token", "create", "--name", f"{role}-bot", "--role", role)
            token = made.stdout.strip()
            assert token.startswith("fltk_") and "not shown again" in made.stderr
            files[role] = t.token_file(role, token)
        (tmp_path / "web.service").write_text(UNIT)
        yield t, files
    finally:
        t.fleet.stop()


def refused(out: subprocess.CompletedProcess[str], role: str, needed: str) -> bool:
    return out.returncode != 0 and f"needs a token with role {needed}; {role}-bot's role " \
        f"is {role}" in out.stderr


def test_a_read_token_reads_and_is_refused_start_stop_and_machine_add(
        tls: Tuple[Tls, Dict[str, str]]) -> None:
    t, files = tls
    t.fleet.ctl("submit", str(t.dir / "web.service"))
    read = files["read"]
    for args in (["list-units"], ["list-unit-files"], ["list-machines"], ["cat", "web.service"],
                 ["list-servers"]):
        out = t.ctl(read, *args)
        assert out.returncode == 0, (args, out.stderr)
    assert "ExecStart=/bin/sleep 1000" in t.ctl(read, "cat", "web.service").stdout
    # journal: past the role check, to the unit that is nowhere yet (no machines)
    journal = t.ctl(read, "journal", "web.service")
    assert "needs a token" not in journal.stderr, journal.stderr
    for args in (["start", "--no-block", "web.service"], ["stop", "--no-block", "web.service"],
                 ["machine", "add", "root@10.91.0.99", "--agent-command", "true"]):
        out = t.ctl(read, *args)
        needed = "admin" if args[0] == "machine" else "operate"
        assert refused(out, "read", needed), (args, out.stderr)


def test_an_operate_token_starts_but_adds_no_machine_token_or_secret(
        tls: Tuple[Tls, Dict[str, str]]) -> None:
    t, files = tls
    op = files["operate"]
    out = t.ctl(op, "start", "--no-block", str(t.dir / "web.service"))
    assert out.returncode == 0, out.stderr
    assert "web.service" in t.ctl(op, "list-unit-files").stdout
    added = t.ctl(op, "machine", "add", "root@10.91.0.99", "--agent-command", "true")
    assert refused(added, "operate", "admin"), added.stderr
    assert refused(t.ctl(op, "token", "list"), "operate", "admin")
    # secrets are admin's: listed, set or removed, existing or not
    assert refused(t.ctl(op, "secret", "list"), "operate", "admin")
    assert refused(t.ctl(op, "secret", "rm", "nothere"), "operate", "admin")
    value = t.dir / "value"
    value.write_text("hunter2")
    assert refused(t.ctl(op, "secret", "set", "db", "--file", str(value)), "operate", "admin")
    assert t.ctl(files["admin"], "secret", "list").returncode == 0


def test_a_revoked_token_is_refused_at_once(tls: Tuple[Tls, Dict[str, str]]) -> None:
    t, files = tls
    admin = files["admin"]
    assert t.ctl(files["operate"], "list-units").returncode == 0
    listed = t.ctl(admin, "token", "list").stdout.splitlines()
    assert listed[0].split() == ["NAME", "ROLE", "CREATED", "LAST", "USED"]
    assert [line.split()[:2] for line in listed[1:]] == [
        ["admin-bot", "admin"], ["operate-bot", "operate"], ["read-bot", "read"]]
    assert t.ctl(admin, "token", "revoke", "operate-bot").returncode == 0
    out = t.ctl(files["operate"], "list-units")
    assert out.returncode != 0 and "missing or wrong bearer token" in out.stderr
    # the token file holds hashes only
    stored = (t.dir / "fleetd" / "api-tokens.json").read_text()
    assert all(Path(f).read_text().strip() not in stored for f in files.values())


def test_the_token_from_the_environment_and_the_old_flag(
        tls: Tuple[Tls, Dict[str, str]]) -> None:
    t, files = tls
    token = Path(files["read"]).read_text().strip()
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETCTL_")}
    base = [FLEETCTL, "--endpoint", t.url, "--ca-file", t.ca]
    by_env = subprocess.run([*base, "list-units"], capture_output=True, text=True,
                            env={**env, "FLEETCTL_TOKEN": token}, timeout=60)
    assert by_env.returncode == 0, by_env.stderr
    old = subprocess.run([*base, "--token", token, "list-units"], capture_output=True,
                         text=True, env=env, timeout=60)
    assert old.returncode == 0 and "Warning: --token shows the token" in old.stderr
    empty = t.dir / "empty.token"
    empty.write_text("\n")
    bad = subprocess.run([*base, "--token-file", str(empty), "list-units"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "--token-file" in bad.stderr and str(empty) in bad.stderr


def test_each_write_is_in_the_audit_with_its_tokens_name(
        tls: Tuple[Tls, Dict[str, str]]) -> None:
    t, files = tls
    assert t.ctl(files["operate"], "submit", str(t.dir / "web.service")).returncode == 0
    assert t.ctl(files["read"], "stop", "--no-block", "web.service").returncode != 0
    assert t.ctl(files["operate"], "audit").returncode != 0  # an admin's to read
    out = t.ctl(files["admin"], "audit", "-o", "json")
    assert out.returncode == 0, out.stderr
    records = [json.loads(line) for line in out.stdout.splitlines()]
    rows = [(r["who"], r["method"], r["path"], r["target"], r["status"]) for r in records]
    assert rows[:3] == [("root (unix socket)", "POST", "/v1/tokens", f"{role}-bot", 201)
                        for role in ("read", "operate", "admin")]
    assert rows[3] == ("operate-bot", "POST", "/v1/units", "web.service", 200)
    assert rows[4] == ("read-bot", "POST", "/v1/units/state", "web.service", 403)
    assert all(r["from"] == "127.0.0.1" for r in records[3:])
    table = t.ctl(files["admin"], "audit", "-n", "2").stdout.splitlines()
    assert table[0].split() == ["TIME", "WHO", "FROM", "WHAT", "TARGET", "STATUS"]
    assert table[1].split()[2:] == ["operate-bot", "127.0.0.1", "POST", "/v1/units",
                                    "web.service", "200"]
    # -f: a new write shows up as it happens
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETCTL_")}
    follow = subprocess.Popen([FLEETCTL, "--endpoint", t.url, "--ca-file", t.ca,
                               "--token-file", files["admin"], "audit", "-f", "-n", "1"],
                              stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert follow.stdout is not None
        assert follow.stdout.readline().startswith("TIME")
        assert "read-bot" in follow.stdout.readline()
        t.fleet.ctl("destroy", "web.service")
        assert "root (unix socket)" in follow.stdout.readline()
    finally:
        follow.terminate()
        follow.wait(10)


TICKER = ("[Service]\nExecStart=/bin/sh -c 'i=0; while true; do i=$((i+1)); "
          "echo tick $i; sleep 0.2; done'\n")


def test_a_read_token_reads_a_running_units_journal(tmp_path: Path, lab: Lab) -> None:
    """On a lab host: an operate token starts a unit, a read token reads its status and
    its output through fleetd, and may not stop it."""
    t = Tls(tmp_path, lab)
    t.fleet.start()
    h = lab.hosts()[0]
    try:
        t.fleet.add(h)
        files = {role: t.token_file(role, t.fleet.ctl(
            "token", "create", "--name", f"{role}-bot", "--role", role).stdout.strip())
            for role in ("read", "operate")}
        (tmp_path / "ticker.service").write_text(TICKER)
        started = t.ctl(files["operate"], "start", str(tmp_path / "ticker.service"))
        assert started.returncode == 0, started.stderr
        wait_for("ticks, read with the read token", lambda: "tick 3" in t.ctl(
            files["read"], "journal", "-n", "50", "ticker.service").stdout, 20)
        status = t.ctl(files["read"], "status", "ticker.service")
        assert status.returncode == 0 and "running" in status.stdout, status.stderr
        assert refused(t.ctl(files["read"], "stop", "ticker.service"), "read", "operate")
    finally:
        t.fleet.stop()
        reset_host(lab, h)
