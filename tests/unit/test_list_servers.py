"""``fleetctl list-servers`` (fleetd/cli/servers.py) against a real API: one fleetd on
SQLite (apikit: the row it makes of itself), the tables' columns, ``-o json``/``--json``
as the API's rows, and the unhealthy rows' column (pure). Two fleetd on a real etcd:
tests/integration/test_list_servers_etcd.py."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from apikit import served
from click.testing import CliRunner

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
