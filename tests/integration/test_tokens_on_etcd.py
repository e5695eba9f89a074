"""API tokens shared by two fleetd processes on a real etcd member (etcdkit): a token
made through one is taken by the other, a token revoked through one is refused by the
other within tokens_etcd.POLL_S (by itself at once), and etcd holds only its hash."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator, List, Tuple

import pytest
from etcdkit import EtcdCluster, etcd_cluster, free_port, wait_until
from labkit import FLEETCTL

from fleetd.client import ApiError, Client

pytestmark = pytest.mark.etcd


@pytest.fixture
def two(tmp_path: Path) -> Iterator[Tuple[EtcdCluster, List[Tuple[str, str]]]]:
    """Two fleetd on one etcd member: (socket endpoint, TCP url) of each."""
    with etcd_cluster(str(tmp_path / "etcd"), 1) as cluster:
        procs: List[subprocess.Popen[bytes]] = []
        where = []
        try:
            for name in ("f1", "f2"):
                d = tmp_path / name
                d.mkdir()
                port = free_port()
                (d / "fleetd.toml").write_text(
                    f'name = "{name}"\nregistry = "etcd://{cluster.endpoints[0]}"\n'
                    f'state_dir = "{d / "state"}"\n[etcd]\nprefix = "/tk"\n'
                    f'[api]\nsocket = "{d / "api.sock"}"\nlisten = "127.0.0.1:{port}"\n')
                with open(d / "log", "wb") as log:
                    procs.append(subprocess.Popen(
                        [sys.executable, "-m", "fleetd.daemon", "--config",
                         str(d / "fleetd.toml")], stdout=log, stderr=log,
                        stdin=subprocess.DEVNULL))
                where.append((f"unix://{d / 'api.sock'}", f"http://127.0.0.1:{port}"))
                wait_until(f"{name} to answer", lambda w=where[-1]: _answers(w[0]))
            yield cluster, where
        finally:
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(15)


def _answers(endpoint: str) -> bool:
    try:
        Client(endpoint).get("/v1/health", timeout=1)
        return True
    except ApiError:
        return False


def ctl(endpoint: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETCTL_")}
    return subprocess.run([FLEETCTL, "--endpoint", endpoint, *args], capture_output=True,
                          text=True, env=env, timeout=60)


def status(url: str, token: str) -> int:
    try:
        Client(url, token).get("/v1/units")
        return 200
    except ApiError as exc:
        return exc.status


def test_a_token_made_on_one_fleetd_works_on_the_other_and_a_revoke_on_both(
        two: Tuple[EtcdCluster, List[Tuple[str, str]]]) -> None:
    cluster, [(sock1, url1), (sock2, url2)] = two
    made = ctl(sock1, "token", "create", "--name", "ci", "--role", "operate")
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    assert status(url1, token) == 200  # where it was made: at once
    wait_until("f2 to take the token", lambda: status(url2, token) == 200, 10)
    assert "ci" in ctl(sock2, "token", "list").stdout
    twice = ctl(sock2, "token", "create", "--name", "ci", "--role", "read")
    assert twice.returncode != 0 and "token 'ci' exists" in twice.stderr
    # etcd holds the hash, never the token
    dump = subprocess.run(["etcdctl", "--endpoints", cluster.endpoints[0], "get", "--prefix",
                           "/tk/api-tokens/"], capture_output=True, text=True, timeout=30,
                          env=dict(os.environ, ETCDCTL_API="3"))
    assert '"name": "ci"' in dump.stdout and token not in dump.stdout
    assert ctl(sock2, "token", "revoke", "ci").returncode == 0
    assert status(url2, token) == 401  # where it was revoked: at once
    wait_until("f1 to refuse the revoked token", lambda: status(url1, token) == 401, 10)
