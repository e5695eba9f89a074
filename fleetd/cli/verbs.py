"""``fleetctl version`` and ``fleetctl help [VERB]``: fleet's spellings of ``--version``
and ``--help``, which fleet's users type (issue 14)."""

from __future__ import annotations

from typing import Optional, Tuple

import click

from fleetd import __version__


@click.command()
def version() -> None:
    """Print fleetctl's version."""
    click.echo(f"fleetctl version {__version__}")


@click.command("help")
@click.argument("verb", nargs=-1)
@click.pass_context
def help_command(ctx: click.Context, verb: Tuple[str, ...]) -> None:
    """Show fleetctl's help, or VERB's. ``help machine add`` shows a subcommand's."""
    top = ctx.find_root()
    command: Optional[click.Command] = top.command
    shown = top
    for word in verb:
        if not isinstance(command, click.Group):
            break
        sub = command.get_command(shown, word)
        if sub is None:
            raise click.UsageError(f"unknown verb {word!r}; `fleetctl help` lists them",
                                   ctx=ctx)
        shown = click.Context(sub, info_name=word, parent=shown)
        command = sub
    click.echo(shown.get_help())
