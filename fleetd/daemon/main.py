"""``fleetd``: the central daemon. No configuration needed; ``--config`` to override."""

from __future__ import annotations

import asyncio
import logging
import os
import sqlite3
import sys
from typing import TYPE_CHECKING, Optional

import click

from fleetd import __version__
from fleetd.daemon.config import Config, ConfigError, load
from fleetd.engine.leadership import FileLease, LeaseHeld
from fleetd.registry.base import RegistryError

if TYPE_CHECKING:
    from fleetd.daemon.app import Daemon


def open_daemon(config: Config) -> Daemon:
    """The Daemon with fleetd's defaults: the file lease on the state directory (LeaseHeld
    while another fleetd has it), then the SQLite registry in it."""
    from fleetd.daemon.app import Daemon
    from fleetd.registry.sqlite import SqliteRegistry

    os.makedirs(config.state_dir, mode=0o700, exist_ok=True)
    lease = FileLease(os.path.join(config.state_dir, "fleetd.lock"))
    lease.acquire()
    try:
        registry = SqliteRegistry(os.path.join(config.state_dir, "registry.db"))
    except BaseException:
        lease.release()
        raise
    return Daemon(config, registry, lease)


@click.command()
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="TOML configuration file.")
@click.option("--state-dir", help="Where the registry lives (default /var/lib/fleetd).")
@click.option("--socket", "socket_path", help="API Unix socket (default /run/fleetd/fleetd.sock).")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))
@click.version_option(__version__)
def cli(config_path: Optional[str], state_dir: Optional[str], socket_path: Optional[str],
        log_level: str) -> None:
    """Place units on machines and keep them running there."""
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
        await open_daemon(config).run()

    try:
        asyncio.run(run())
    except (LeaseHeld, RegistryError, OSError) as exc:
        raise click.ClickException(str(exc)) from None
    except sqlite3.Error as exc:  # a registry.db that is no SQLite database, or unreadable
        raise click.ClickException(
            f"{os.path.join(config.state_dir, 'registry.db')}: {exc}") from None


def main() -> None:
    sys.exit(cli())
