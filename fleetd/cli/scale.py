"""``fleetctl scale web@.service N``: instances web@1 .. web@N of a submitted template
run (placed under the template's constraints, as any instance started), and no other
numbered one; fleetd decides what changes (daemon/service/scale.py), and this waits
for it as start and destroy do: the new instances running, the removed ones gone."""

from __future__ import annotations

from typing import Any, Dict, List

import click

from fleetd.cli.context import Ctx, pass_ctx
from fleetd.cli.unitargs import unit_name
from fleetd.cli.units import _timeout as block_timeout  # one rule for every verb
from fleetd.cli.units import blocking, wait_all
from fleetd.client import segment

MAX_COUNT = 1000  # as fleetd's (daemon/service/scale.py): one scale's instances


@click.command()
@click.argument("template")
@click.argument("count", type=click.IntRange(0, MAX_COUNT))
@blocking
@pass_ctx
def scale(c: Ctx, template: str, count: int, no_block: bool, block_attempts: int,
          timeout: float) -> None:
    """Run instances NAME@1 .. NAME@COUNT of the submitted template NAME@.service, and
    no other numbered one.

    Scaling up starts the missing numbers (and the stopped ones among them) with the
    template's content, placed under its constraints; scaling down destroys the numbers
    above COUNT, the highest first (each is stopped, then forgotten); COUNT 0 destroys
    them all and keeps the template. Instances not named by a number (web@blue) are not
    counted and are left alone."""
    name = unit_name(template)  # web@ and web@.unit are web@.service, as for every verb
    answer: Dict[str, Any] = c.call("POST", f"/v1/units/{segment(name)}/scale",
                                    {"count": count})
    starting: List[str] = [*answer["created"], *answer["started"]]
    gone: List[str] = answer["destroyed"]
    if not starting and not gone:
        click.echo(f"{name}: {count} instance{'s' * (count != 1)} already")
    elif no_block:
        for n in starting:
            click.echo(f"Triggered unit {n} start")
        for n in gone:
            click.echo(f"Triggered unit {n} destroy")
    else:
        wait = block_timeout(block_attempts, timeout)
        wait_all(c, starting, "running", wait, lambda n, why: f"Unit {n} {why}")
        wait_all(c, gone, "gone", wait, lambda n, why: f"Destroyed {n}")
    if answer["ignored"]:
        click.echo(f"Not counted (not numbered): {', '.join(answer['ignored'])}", err=True)
