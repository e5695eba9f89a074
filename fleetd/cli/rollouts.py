"""``fleetctl history UNIT``, ``rollback UNIT [--to VERSION]``, ``promote UNIT``, and
the rollout options of ``submit``/``load``/``start`` (``--canary N``, ``--max-parallel``...).

fleetd keeps each content a unit was given (the newest 10) and rolls a template's
instances over to new content one healthy step at a time (README: rolling updates);
these read the versions, go back to one (which rolls the same way), and let a canary
rollout go on. The options given on the command line stay with the version they
submit and override its [X-Update] section.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Dict, Optional

import click

from fleetd.cli.context import Ctx, pass_ctx
from fleetd.cli.output import echo, table
from fleetd.cli.params import Span
from fleetd.cli.unitargs import unit_name
from fleetd.client import segment

HEADERS = ["VERSION", "HASH", "SUBMITTED", "VIA", "ENDED"]
_META = "fleetd.rollout"  # where the options given are kept in click's context


def _keep(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
    if value is not None and param.name:
        ctx.meta.setdefault(_META, {})[param.name] = value
    return value


def rollout_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """How the new content of the units given rolls out, over their [X-Update]."""
    for decl, kind, text in [
        (("--canary", "canary"), click.IntRange(1, 10000),
         "Change this many running copies, then wait for fleetctl promote (or rollback)."),
        (("--max-parallel", "max_parallel"), click.IntRange(1, 10000),
         "Copies that change at a time (MaxParallel=)."),
        (("--min-healthy", "min_healthy_s"), Span(),
         "How long a new copy must be healthy before the next changes (MinHealthySec=)."),
        (("--healthy-deadline", "healthy_deadline_s"), Span(),
         "A new copy not healthy by then has failed (HealthyDeadlineSec=)."),
    ]:
        f = click.option(*decl, type=kind, default=None, expose_value=False, callback=_keep,
                         help=text)(f)
    return click.option("--auto-revert/--no-auto-revert", "auto_revert", default=None,
                        expose_value=False, callback=_keep,
                        help="After a failed copy, go back to the previous content "
                             "(AutoRevert=).")(f)


def rollout_given() -> Optional[Dict[str, Any]]:
    """The rollout options given to this command, None if none was."""
    ctx = click.get_current_context(silent=True)
    given = ctx.meta.get(_META) if ctx is not None else None
    return dict(given) if given else None


@click.command()
@click.argument("unit")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="json: fleetd's answer as it is.")
@pass_ctx
def history(c: Ctx, unit: str, output: str) -> None:
    """UNIT's versions, oldest first: each content's hash, when and through whom it was
    submitted, and how it ended (replaced, failed and reverted, rolled back; the current
    one: where its rollout is)."""
    unit = unit_name(unit)
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
    unit = unit_name(unit)
    answer = c.call("POST", f"/v1/units/{segment(unit)}/rollback", body)
    echo(f"{unit}: back to v{answer['to']} ({answer['hash'][:12]}); "
         "its running copies follow one at a time")


@click.command()
@click.argument("unit")
@pass_ctx
def promote(c: Ctx, unit: str) -> None:
    """Let UNIT's canary rollout (submitted with --canary N) go on to every copy."""
    unit = unit_name(unit)
    answer = c.call("POST", f"/v1/units/{segment(unit)}/promote", {})
    echo(f"{unit}: v{answer['version']} promoted; the other copies follow one at a time")


COMMANDS = [history, rollback, promote]
