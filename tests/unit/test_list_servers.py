"""``fleetctl list-servers`` (fleetd/cli/servers.py) against a real API: one fleetd on
SQLite (apikit: the row it makes of itself), and two fleetd processes on a real etcd
member (etcdkit): the roster's rows, who leads in which epoch, and etcd's member; the
tables' columns, ``-o json``/``--json`` as the API's rows, and the unhealthy rows'
column (pure)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator, List

import pytest
from apikit import served
from click.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
from etcdkit import EtcdCluster, etcd_cluster, wait_until

from fleetd import __version__
from fleetd.cli.main import cli
from fleetd.cli.servers import ETCD_COLUMNS, FLEETD_COLUMNS, _table


def fleetctl(endpoint: str, *args: str) -> Any:
    out = CliRunner().invoke(cli, ["--endpoint", endpoint, "list-servers", *args])
    assert out.exit_code == 0, out.output
    return out.output


def test_a_single_sqlite_fleetd(tmp_path: Path) -> None:
    with served(tmp_path, name="solo") as s:
        endpoint = f"unix://{s.config.socket}"
        text = fleetctl(endpoint)
        rows = json.loads(fleetctl(endpoint, "-o", "json"))
        assert json.loads(fleetctl(endpoint, "--json")) == rows
        bare = fleetctl(endpoint, "--no-legend")
    head, line = text.splitlines()
    assert head.split() == ["NAME", "ADDRESSES", "ROLE", "EPOCH", "SINCE", "PID", "VERSION",
                            "HEALTH"]
    assert line.split()[0] == "solo" and " leader " in line and __version__ in line
    assert line.split()[3] == "1" and str(os.getpid()) in line.split()  # epoch, pid
    assert line.rstrip().endswith("healthy")
    assert [r["kind"] for r in rows] == ["fleetd"] and rows[0]["leader"] is True
    assert bare.strip() == line.strip()


def test_unhealthy_rows_say_why() -> None:
    fleetd = [{"kind": "fleetd", "name": "f2", "addresses": [], "leader": True,
               "healthy": False, "detail": "holds the leader lock but is not in the roster",
               "pid": 7, "since": time.time() - 5, "epoch": 42}]
    member = [{"kind": "etcd", "name": "e3", "addresses": ["10.0.0.3:2379"], "leader": False,
               "healthy": False, "detail": "connection refused", "db_size": 0}]
    text = _table(FLEETD_COLUMNS, fleetd, False, False)
    assert "unhealthy: holds the leader lock" in text and " 42 " in text
    text = _table(ETCD_COLUMNS, member, False, False)
    assert "unhealthy: connection refused" in text and "10.0.0.3:2379" in text


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EtcdCluster]:
    with etcd_cluster(str(tmp_path / "etcd"), 1) as c:
        yield c


@pytest.mark.etcd
def test_fleetd_servers_on_etcd(cluster: EtcdCluster, tmp_path: Path) -> None:
    procs: List[subprocess.Popen[bytes]] = []
    sockets = []
    try:
        for name in ("f1", "f2"):
            d = tmp_path / name
            d.mkdir()
            (d / "fleetd.toml").write_text(
                f'name = "{name}"\nregistry = "etcd://{cluster.endpoints[0]}"\n'
                f'state_dir = "{d / "state"}"\n[etcd]\nprefix = "/ls"\n'
                f'[api]\nsocket = "{d / "api.sock"}"\n')
            sockets.append(f"unix://{d / 'api.sock'}")
            with open(d / "log", "wb") as log:
                procs.append(subprocess.Popen(
                    [sys.executable, "-m", "fleetd.daemon", "--config", str(d / "fleetd.toml")],
                    stdout=log, stderr=log, stdin=subprocess.DEVNULL))
            if name == "f1":  # f1 leads: it starts first
                wait_until("f1 to lead", lambda: _leads(sockets[0]))

        def both() -> Any:
            try:
                rows = json.loads(fleetctl(sockets[1], "-o", "json"))
            except AssertionError:
                return None
            names = [r["name"] for r in rows if r["kind"] == "fleetd"]
            return rows if names == ["f1", "f2"] else None

        wait_until("both fleetd in the roster", both)
        rows = both()
        f1, f2 = [r for r in rows if r["kind"] == "fleetd"]
        assert f1["leader"] and not f2["leader"] and f1["epoch"] > 0
        assert [r["pid"] for r in (f1, f2)] == [p.pid for p in procs]
        member = [r for r in rows if r["kind"] == "etcd"]
        assert len(member) == 1 and member[0]["leader"] and member[0]["healthy"]
        text = fleetctl(sockets[1])
        fleetd_table, etcd_table = text.split("\n\n")
        lines = fleetd_table.splitlines()
        assert lines[1].split()[:4] == ["f1", f"unix:{tmp_path}/f1/api.sock", "leader",
                                        str(f1["epoch"])]
        assert lines[2].split()[:3] == ["f2", f"unix:{tmp_path}/f2/api.sock", "follower"]
        assert etcd_table.splitlines()[0].split() == ["NAME", "ADDRESS", "RAFT", "HEALTH",
                                                      "DB", "SIZE"]
        member_line = etcd_table.splitlines()[1]
        assert cluster.endpoints[0] in member_line and " leader " in member_line
        assert "healthy" in member_line and "iB" in member_line
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            try:
                p.wait(15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


def _leads(endpoint: str) -> bool:
    out = CliRunner().invoke(cli, ["--endpoint", endpoint, "list-servers", "-o", "json"])
    return out.exit_code == 0 and any(r.get("leader") and r["kind"] == "fleetd"
                                      for r in json.loads(out.output))
