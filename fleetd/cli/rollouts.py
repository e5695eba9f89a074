"""``fleetctl history UNIT`` and ``fleetctl rollback UNIT [--to VERSION]``.

fleetd keeps each content a unit was given (the newest 10) and rolls a template's
instances over to new content one healthy step at a time (README: rolling updates);
these read the versions and go back to one, which rolls the same way.
"""

from __future__ import annotations

import json
import time
from typing import Optional

import click

from fleetd.cli.context import Ctx, pass_ctx
from fleetd.cli.output import echo, table
from fleetd.client import segment

HEADERS = ["VERSION", "HASH", "SUBMITTED", "VIA", "ENDED"]


@click.command()
@click.argument("unit")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="json: fleetd's answer as it is.")
@pass_ctx
def history(c: Ctx, unit: str, output: str) -> None:
    """UNIT's versions, oldest first: each content's hash, when and through whom it was
    submitted, and how it ended (replaced, failed and reverted, rolled back; the current
    one: where its rollout is)."""
    answer = c.call("GET", f"/v1/units/{segment(unit)}/history")
    if output == "json":
        click.echo(json.dumps(answer, sort_keys=True))
        return
    rows = [[f"v{v['version']}{' *' if v.get('current') else ''}", v["hash"][:12],
             time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v["at"])), v["via"] or "-",
             v["ended"]] for v in answer["versions"]]
    click.echo(table(HEADERS, rows))


@click.command()
@click.argument("unit")
@click.option("--to", "to", type=click.IntRange(1), default=None,
              help="The version to go back to (fleetctl history lists them); default: the "
                   "newest one with other content than UNIT has now.")
@pass_ctx
def rollback(c: Ctx, unit: str, to: Optional[int]) -> None:
    """Give UNIT an earlier version's content. A template's instances follow one healthy
    step at a time, as for any new content."""
    body = {} if to is None else {"to": to}
    answer = c.call("POST", f"/v1/units/{segment(unit)}/rollback", body)
    echo(f"{unit}: back to v{answer['to']} ({answer['hash'][:12]}); "
         "its running copies follow one at a time")


COMMANDS = [history, rollback]
