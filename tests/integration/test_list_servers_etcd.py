"""``fleetctl list-servers`` with two fleetd processes on a real etcd member (etcdkit):
the roster's rows, who leads in which epoch, and etcd's member, as table and as JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any, Iterator, List

import pytest
from click.testing import CliRunner
from etcdkit import EtcdCluster, etcd_cluster, wait_until

from fleetd.cli.main import cli


def fleetctl(endpoint: str, *args: str) -> Any:
    out = CliRunner().invoke(cli, ["--endpoint", endpoint, "list-servers", *args])
    assert out.exit_code == 0, out.output
    return out.output


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
