"""``fleetd migrate`` (fleetd/daemon/migrate.py): a SQLite registry copied into a real
etcd member (Debian's etcd-server; tests/integration/etcdkit.py), every record read back
through EtcdRegistry; the epoch the agents saw passed by etcd's revision; refusals (a
fleetd holding the state directory, a non-empty prefix, a held leader key) as messages;
and the CLI group: ``fleetd migrate`` beside the daemon's own run."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
from pathlib import Path
from typing import Any, Coroutine, Iterator, TypeVar

import pytest
from click.testing import CliRunner
from etcdkit import EtcdCluster, etcd_cluster

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from registrykit import A_TEXT, B_TEXT, C_TEXT, machine, observed, u

from fleetd.daemon.config import Config
from fleetd.daemon.main import cli, open_daemon
from fleetd.daemon.migrate import MigrateError, copy, migrate, read_snapshot
from fleetd.engine.etcd_lock import EtcdLock
from fleetd.engine.leadership import FileLease
from fleetd.registry.base import LAUNCHED, FailureRecord, SecretRecord, UnitInput
from fleetd.registry.etcd import EtcdRegistry
from fleetd.registry.etcdv3 import EtcdClient
from fleetd.registry.sqlite import SqliteRegistry

pytestmark = pytest.mark.etcd
T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(asyncio.wait_for(coro, 120))  # bounds a hang, asserts nothing


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with etcd_cluster(str(tmp_path_factory.mktemp("etcd")), 1) as c:
        yield c


def url(c: EtcdCluster) -> str:
    return "etcd://" + ",".join(c.endpoints)


async def populate(state_dir: str) -> None:
    """A registry with one of each thing a SQLite fleetd keeps."""
    reg = SqliteRegistry(os.path.join(state_dir, "registry.db"))
    try:
        await reg.add_machine(machine("h1", "10.0.0.1"))
        await reg.add_machine(dataclasses.replace(machine("h2", "10.0.0.2", 2222),
                                                  metadata={"rack": "r2", "ssd": "yes"},
                                                  known_hosts="/k", identity=None))
        await reg.add_machine(machine("h3", "10.0.0.3"))
        await reg.update_machine("h1", state="up", machine_id="m1", last_seen=123.5,
                                 facts={"cpus": 4, "java": ["17"]})
        await reg.update_machine("h2", state="unreachable", error="ssh: refused",
                                 draining=50.0, drain_deadline=90.0)
        await reg.put_units([u("a.service", A_TEXT), u("b.service", B_TEXT),
                             UnitInput("t@1.service", C_TEXT, u("x", C_TEXT).hash,
                                       {"port": "81"}),
                             u("idle.service", A_TEXT)], LAUNCHED)
        await reg.set_desired(["idle.service"], "inactive")
        await reg.restart(["b.service"])
        await reg.restart(["b.service"])
        await reg.set_placements([("a.service", "h1", "fits best"),
                                  ("b.service", "h3", "spread"),
                                  ("t@1.service", None, "no machine has port free")],
                                 handoffs={"b.service": "h2"}, retry=["a.service"])
        await reg.record_failure(FailureRecord("a.service", "h", "h2", 10.0, "start limit"))
        await reg.record_failure(FailureRecord("a.service", "h", "h3", 11.0, "health"))
        await reg.replace_observed("h1", [observed("a.service", "h1", pid=4242)])
    finally:
        await reg.close()


def sqlite_state(state_dir: str) -> Any:
    return run(read_snapshot(os.path.join(state_dir, "registry.db")))


async def etcd_state(c: EtcdCluster, prefix: str) -> Any:
    client = EtcdClient(c.endpoints)
    reg = await EtcdRegistry.open(client, prefix)
    try:
        texts = {x.hash: reg.unit_text(x.hash) for x in reg.list_units()}
        return (reg.list_units(), texts, reg.list_machines(), reg.list_failures(),
                reg.list_observed())
    finally:
        await reg.close()
        await client.close()


async def do_migrate(c: EtcdCluster, state_dir: str, prefix: str, force: bool = False
                     ) -> Any:
    client = EtcdClient(c.endpoints)
    try:
        return await migrate(state_dir, client, prefix, url(c), force=force)
    finally:
        await client.close()


def test_every_record_is_copied(cluster: EtcdCluster, tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    os.makedirs(state)
    run(populate(state))
    snap = sqlite_state(state)
    assert len(snap.units) == 4 and snap.failures and snap.observed  # the fixture holds
    assert {x.name: x.generation for x in snap.units}["b.service"] == 2
    report = run(do_migrate(cluster, state, "/mig1"))
    assert (report.units, report.machines, report.failures, report.observed) == (4, 3, 2, 1)
    units, texts, machines, failures, obs = run(etcd_state(cluster, "/mig1"))
    assert units == snap.units  # generation, placement, handoff, reason, vars, times
    assert texts == snap.texts
    assert machines == snap.machines  # metadata, state, facts, error, drain
    assert failures == snap.failures
    assert obs == snap.observed


def test_secrets_are_copied_sealed(cluster: EtcdCluster, tmp_path: Path) -> None:
    """As stored: sealed by the SQLite fleetd's key, which each fleetd on etcd needs."""
    state = str(tmp_path / "state")
    os.makedirs(state)
    run(populate(state))
    secret = SecretRecord("db_pw", "v1:c2VhbGVk", "0123456789abcdef", 1700000000.5)

    async def put_secret() -> None:
        reg = SqliteRegistry(os.path.join(state, "registry.db"))
        await reg.put_secret(secret)
        await reg.close()

    run(put_secret())
    report = run(do_migrate(cluster, state, "/mig-secrets"))
    assert report.secrets == 1 and "1 secrets (sealed: copy the secrets key" in \
        report.describe()

    async def read_back() -> Any:
        client = EtcdClient(cluster.endpoints)
        reg = await EtcdRegistry.open(client, "/mig-secrets")
        try:
            return reg.list_secrets()
        finally:
            await reg.close()
            await client.close()

    assert run(read_back()) == [secret]


def test_the_next_leader_epoch_passes_the_last_sqlite_epoch(cluster: EtcdCluster,
                                                            tmp_path: Path) -> None:
    """Agents refuse a lower epoch than they saw: etcd's leader key must be created at a
    revision above the SQLite fleetd's last term (fleetd.epoch)."""
    state = str(tmp_path / "state")
    os.makedirs(state)
    run(populate(state))

    async def revision() -> int:
        async with EtcdClient(cluster.endpoints) as client:
            return (await client.get("/nothing")).revision

    last = run(revision()) + 300  # more than the copy's own writes
    with open(os.path.join(state, "fleetd.epoch"), "w") as f:
        f.write(f"{last}\n")
    report = run(do_migrate(cluster, state, "/mig2"))

    async def campaign() -> Any:
        async with EtcdClient(cluster.endpoints) as client:
            lock = EtcdLock(client, "/mig2", "f1")
            won = await lock.campaign()
            await lock.resign()
            return won.epoch

    epoch = run(campaign())
    assert epoch is not None and epoch > last
    assert report.last_epoch == last and report.bumped > 0


def test_refuses_while_a_fleetd_holds_the_state_directory(cluster: EtcdCluster,
                                                          tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    os.makedirs(state)
    run(populate(state))
    lease = FileLease(os.path.join(state, "fleetd.lock"))
    lease.acquire()
    try:
        with pytest.raises(MigrateError, match=r"held by fleetd pid \d+: stop that fleetd"):
            run(do_migrate(cluster, state, "/mig3"))
    finally:
        lease.release()
    assert not os.path.exists(os.path.join(state, "migrated"))


def test_refuses_a_prefix_with_keys_unless_forced(cluster: EtcdCluster,
                                                  tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    os.makedirs(state)
    run(populate(state))

    async def put(key: str) -> None:
        async with EtcdClient(cluster.endpoints) as client:
            await client.put(key, b"x")

    run(put("/mig4/units/old.service"))
    with pytest.raises(MigrateError, match=r"/mig4 already holds 1 keys.*--force"):
        run(do_migrate(cluster, state, "/mig4"))
    run(do_migrate(cluster, state, "/mig4", force=True))
    units = run(etcd_state(cluster, "/mig4"))[0]
    assert [x.name for x in units] == ["a.service", "b.service", "idle.service",
                                       "t@1.service"]


def test_refuses_a_prefix_a_fleetd_leads_even_forced(cluster: EtcdCluster,
                                                     tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    os.makedirs(state)
    run(populate(state))

    async def lead_and_migrate() -> None:
        async with EtcdClient(cluster.endpoints) as client:
            lock = EtcdLock(client, "/mig5", "f9")
            await lock.campaign()
            try:
                await copy(client, "/mig5", sqlite_snapshot, 0, force=True)
            finally:
                await lock.resign()

    sqlite_snapshot = sqlite_state(state)
    with pytest.raises(MigrateError, match=r"/mig5 has a leader.*f9.*stop it first"):
        run(lead_and_migrate())


def test_a_migrated_state_directory_is_not_run_on_sqlite(cluster: EtcdCluster,
                                                         tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    os.makedirs(state)
    run(populate(state))
    run(do_migrate(cluster, state, "/mig6"))
    with pytest.raises(MigrateError, match=r"migrated to etcd://.*prefix /mig6"):
        open_daemon(Config(state_dir=state))
    with pytest.raises(MigrateError, match="migrated"):  # nor migrated twice
        run(do_migrate(cluster, state, "/mig7"))


def test_cli_migrate(cluster: EtcdCluster, tmp_path: Path) -> None:
    state = str(tmp_path / "state")
    os.makedirs(state)
    run(populate(state))
    out = CliRunner().invoke(cli, ["migrate", "--from", state, "--to", url(cluster),
                                   "--prefix", "/mig8"])
    assert out.exit_code == 0, out.output
    assert "copied 4 units (3 texts), 3 machines, 2 failures" in out.output
    assert 'registry = "etcd://' in out.output
    again = CliRunner().invoke(cli, ["migrate", "--from", state, "--to", url(cluster),
                                     "--prefix", "/mig8"])
    assert again.exit_code == 1 and "Error: " in again.output
    assert "Traceback" not in again.output


@pytest.mark.parametrize("args, where", [
    (["--to", "http://x"], "--to"),
    (["--to", "etcd://127.0.0.1:1", "--prefix", "rel"], "--prefix"),
])
def test_cli_migrate_bad_options(tmp_path: Path, args: Any, where: str) -> None:
    out = CliRunner().invoke(cli, ["migrate", "--from", str(tmp_path), *args])
    assert out.exit_code == 2 and where in out.output, out.output


def test_cli_migrate_no_registry(tmp_path: Path) -> None:
    out = CliRunner().invoke(cli, ["migrate", "--from", str(tmp_path),
                                   "--to", "etcd://127.0.0.1:1"])
    assert out.exit_code == 1 and "registry.db: no such registry" in out.output, out.output


def test_without_a_command_fleetd_runs_the_daemon(tmp_path: Path) -> None:
    """The group keeps ``fleetd --config X`` the daemon's run: its config is read."""
    bad = tmp_path / "fleetd.toml"
    bad.write_text("nonsense = 1\n")
    out = CliRunner().invoke(cli, ["--config", str(bad)])
    assert out.exit_code == 1 and "nonsense" in out.output, out.output
    assert "migrate" in CliRunner().invoke(cli, ["--help"]).output


def test_cli_migrate_over_tls(tmp_path: Path) -> None:
    """etcds:// with --etcd-ca/--etcd-cert/--etcd-key: a cluster that requires client
    certificates takes the copy; without the client's certificate it is refused, said."""
    state = str(tmp_path / "state")
    os.makedirs(state)
    run(populate(state))
    with etcd_cluster(str(tmp_path / "etcd"), 1, tls=True) as c:
        to = "etcds://" + ",".join(c.endpoints)
        bare = CliRunner().invoke(cli, ["migrate", "--from", state, "--to", to,
                                        "--etcd-ca", c.ca])
        assert bare.exit_code == 1 and f"etcd {to}:" in bare.output, bare.output
        assert "Traceback" not in bare.output
        out = CliRunner().invoke(cli, ["migrate", "--from", state, "--to", to, "--etcd-ca",
                                       c.ca, "--etcd-cert", c.cert, "--etcd-key", c.key])
        assert out.exit_code == 0, out.output
        assert "copied 4 units" in out.output
