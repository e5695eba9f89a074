"""``fleetd``: the central daemon. No configuration needed; ``--config`` to override.

``fleetd migrate`` moves a stopped SQLite fleetd's registry into etcd (daemon/migrate.py);
without a command, ``fleetd`` runs the daemon, as it always did."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import sys
from typing import TYPE_CHECKING, Any, Dict, List, Optional

import click

from fleetd import __version__
from fleetd.daemon.config import DEFAULT_PREFIX, Config, ConfigError, load
from fleetd.daemon.migrate import MigrateError, Report, check_not_migrated, migrate
from fleetd.daemon.tokens import StoreError
from fleetd.engine.leader import Timing
from fleetd.engine.leadership import FileLock, LeaseHeld
from fleetd.engine.roster import NameInUse
from fleetd.registry.base import RegistryError
from fleetd.registry.etcd_keys import check_prefix

if TYPE_CHECKING:
    from fleetd.daemon.app import Daemon

# one etcd request, per endpoint: a dead member must cost less than the leader lock's
# margin, or a leader could not renew through the others in time (bench/ha_failover.py)
ETCD_TIMEOUT_S = 1.5


def open_daemon(config: Config) -> Daemon:
    """The Daemon of one fleetd on SQLite: the registry in the state directory, and the
    FileLock beside it, which the Daemon takes before it serves (LeaseHeld while another
    fleetd has it)."""
    from fleetd.daemon.app import Daemon
    from fleetd.registry.sqlite import SqliteRegistry

    check_not_migrated(config.state_dir)
    os.makedirs(config.state_dir, mode=0o700, exist_ok=True)
    lock = FileLock(os.path.join(config.state_dir, "fleetd.lock"))
    registry = SqliteRegistry(os.path.join(config.state_dir, "registry.db"))
    return Daemon(config, registry, lock, timing=Timing(patient=False))


async def open_etcd_daemon(config: Config) -> Daemon:
    """The Daemon of one of several fleetd on etcd: the registry loaded from etcd and
    followed, the leader lock, and this fleetd's entry in the roster (list-servers)."""
    from fleetd.daemon.app import Daemon
    from fleetd.daemon.tokens_etcd import EtcdTokenStore
    from fleetd.engine.etcd_lock import EtcdLock
    from fleetd.engine.roster import Roster, list_servers
    from fleetd.registry.etcd import EtcdRegistry
    from fleetd.registry.etcdv3 import EtcdClient, parse_url, tls_context
    from fleetd.registry.etcdv3_types import EtcdError

    assert config.registry is not None
    endpoints, tls = parse_url(config.registry)
    context = tls_context(config.etcd_ca, config.etcd_cert, config.etcd_key) if tls else None
    client = EtcdClient(endpoints, tls=context, timeout=ETCD_TIMEOUT_S)
    try:
        registry = await EtcdRegistry.open(client, config.etcd_prefix)
    except BaseException:
        await client.close()
        raise
    api = config.addresses()
    lock = EtcdLock(client, config.etcd_prefix, config.name, api, ttl=config.leader_ttl_s)
    roster = Roster(client, config.etcd_prefix, config.name, api)

    async def servers() -> List[Dict[str, Any]]:
        return [row.to_json() for row in await list_servers(client, config.etcd_prefix)]

    daemon = Daemon(config, registry, lock, servers=servers)
    daemon.tokens = tokens = EtcdTokenStore(client, config.etcd_prefix)
    try:
        await tokens.load()  # before the API answers: every token made so far counts
    except EtcdError as exc:  # it reads again every second (tokens_etcd.run)
        logging.getLogger("fleetd.tokens").warning("API tokens not read yet: %s", exc)
    daemon.companions.append(tokens.run)
    daemon.companions.append(roster.run)
    daemon.closers.append(roster.close)
    daemon.closers.append(client.close)
    return daemon


@click.group(invoke_without_command=True)
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML configuration file.")
@click.option("--state-dir", help="Where the registry lives (default /var/lib/fleetd).")
@click.option("--socket", "socket_path", help="API Unix socket (default /run/fleetd/fleetd.sock).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.version_option(__version__)
@click.pass_context
def cli(ctx: click.Context, config_path: Optional[str], state_dir: Optional[str],
        socket_path: Optional[str], log_level: str) -> None:
    """Place units on machines and keep them running there.

    Without a command, run the daemon (what ``fleetd --config X`` always did); a command
    (``fleetd migrate``) does that instead."""
    if ctx.invoked_subcommand is not None:
        return
    logging.basicConfig(level=log_level.upper(),
                        format="%(asctime)s %(name)s[%(process)d] %(levelname)s %(message)s")
    # asyncssh logs every channel at INFO; the session already says what matters
    logging.getLogger("asyncssh").setLevel(max(logging.WARNING, logging.getLogger().level))
    try:
        config = load(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
    if state_dir:
        config.state_dir = state_dir
    if socket_path:
        config.socket = socket_path
    async def run() -> None:
        daemon = await open_etcd_daemon(config) if config.registry else open_daemon(config)
        await daemon.run()

    try:
        asyncio.run(run())
    except (LeaseHeld, RegistryError, OSError, NameInUse, MigrateError, StoreError) as exc:
        raise click.ClickException(str(exc)) from None
    except sqlite3.Error as exc:  # a registry.db that is no SQLite database, or unreadable
        raise click.ClickException(
            f"{os.path.join(config.state_dir, 'registry.db')}: {exc}") from None


@cli.command("migrate")
@click.option("--from", "source", default="/var/lib/fleetd", show_default=True,
              type=click.Path(file_okay=False),
              help="The SQLite fleetd's state directory (its fleetd must be stopped).")
@click.option("--to", "url", required=True,
              help="The etcd cluster: etcd://HOST:PORT,... (etcds:// for TLS).")
@click.option("--prefix", default=DEFAULT_PREFIX, show_default=True,
              help="The key prefix the fleetd on etcd will use ([etcd] prefix).")
@click.option("--etcd-ca", type=click.Path(dir_okay=False, exists=True),
              help="TLS: the CA that signed etcd's certificates.")
@click.option("--etcd-cert", type=click.Path(dir_okay=False, exists=True),
              help="TLS: this client's certificate.")
@click.option("--etcd-key", type=click.Path(dir_okay=False, exists=True),
              help="TLS: this client's key.")
@click.option("--force", is_flag=True, help="Replace what the prefix already holds.")
def migrate_cmd(source: str, url: str, prefix: str, etcd_ca: Optional[str],
                etcd_cert: Optional[str], etcd_key: Optional[str], force: bool) -> None:
    """Move a stopped SQLite fleetd's registry into etcd, programs running on.

    Then start fleetd(s) with registry = "etcd://..." and the same [etcd] prefix: they
    find the same units on the same machines, and the agents accept their epoch."""
    from fleetd.registry.etcdv3 import EtcdClient, parse_url, tls_context

    try:
        endpoints, tls = parse_url(url)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--to") from None
    try:
        check_prefix(prefix)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--prefix") from None
    if (etcd_cert is None) != (etcd_key is None):
        raise click.UsageError("--etcd-cert and --etcd-key go together")
    try:
        context = tls_context(etcd_ca, etcd_cert, etcd_key) if tls else None
    except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
        raise click.ClickException(f"etcd TLS files: {exc}") from None

    async def run() -> Report:
        client = EtcdClient(endpoints, tls=context, timeout=ETCD_TIMEOUT_S * 4)
        try:
            return await migrate(source, client, prefix, url, force=force)
        finally:
            await client.close()

    try:
        report = asyncio.run(run())
    except MigrateError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{source} -> {url} {check_prefix(prefix)}: {report.describe()}")
    click.echo(f'now start fleetd with registry = "{url}" and [etcd] prefix = '
               f'"{check_prefix(prefix)}"')


def main() -> None:
    sys.exit(cli())
