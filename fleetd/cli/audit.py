"""``fleetctl audit``: who wrote what to fleetd, when, from where, and how it ended
(fleetd/daemon/audit.py keeps the record; an admin's token, or root, reads it)."""

from __future__ import annotations

import json
import time
from typing import Any, Dict, List

import click

from fleetd.cli.context import Ctx, pass_ctx
from fleetd.cli.output import table

HEADERS = ["TIME", "WHO", "FROM", "WHAT", "TARGET", "STATUS"]
POLL_S = 30.0  # one long poll of -f: fleetd answers as soon as a record comes


def row(r: Dict[str, Any]) -> List[Any]:
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r.get("time") or 0))
    return [when, r.get("who"), r.get("from"), f"{r.get('method')} {r.get('path')}",
            r.get("target"), r.get("status")]


def show(records: List[Dict[str, Any]], output: str, legend: bool) -> None:
    if output == "json":
        for r in records:
            click.echo(json.dumps(r, sort_keys=True))
        return
    text = table(HEADERS, [row(r) for r in records])
    lines = text.splitlines()
    click.echo("\n".join(lines if legend else lines[1:]))


@click.command("audit")
@click.option("-f", "--follow", is_flag=True, help="Print new records as they come.")
@click.option("-n", "--lines", default=50, show_default=True,
              type=click.IntRange(1, 10000), help="How many of the last records.")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="json: one record a line, as fleetd keeps them.")
@pass_ctx
def audit(c: Ctx, follow: bool, lines: int, output: str) -> None:
    """Every write to fleetd's API: who (the token's name, or root on the socket), from
    where, what, and the answer's status (refusals too)."""
    answer = c.call("GET", f"/v1/audit?limit={lines}")
    show(answer["records"], output, legend=True)
    last = max([r["seq"] for r in answer["records"]] + [0])
    while follow:
        answer = c.call("GET", f"/v1/audit?after={last}&limit=10000&timeout={POLL_S:g}",
                        timeout=POLL_S + 30)
        if answer["records"]:
            show(answer["records"], output, legend=False)
            last = answer["records"][-1]["seq"]
