"""``fleetctl events``: every transition in the fleet with its reason, as the leading
fleetd saw it (fleetd/engine/events.py; GET /v1/events, a long poll).

``-f`` follows: each poll asks for the events after the last id printed, so nothing
still held is skipped; ``--after ID`` resumes from an id a consumer saw before (json
output has each event's id). Events dropped from fleetd's bounded history before they
were read, and ids that began again after fleetd restarted, are said on stderr.
"""

from __future__ import annotations

import json
import time
import urllib.parse
from typing import Any, Dict, List, Optional

import click

from fleetd.cli.context import Ctx, pass_ctx
from fleetd.cli.output import table

HEADERS = ["ID", "TIME", "KIND", "UNIT", "MACHINE", "REASON"]
POLL_S = 30.0  # one long poll of -f: fleetd answers as soon as an event comes


def row(e: Dict[str, Any]) -> List[Any]:
    when = time.strftime("%H:%M:%S", time.localtime(e.get("time") or 0))
    return [e.get("id"), when, e.get("kind"), e.get("unit") or "-",
            e.get("machine") or "-", e.get("reason")]


def show(events: List[Dict[str, Any]], output: str, legend: bool) -> None:
    if output == "json":
        for e in events:
            click.echo(json.dumps(e, sort_keys=True))
        return
    if not events and not legend:
        return
    lines = table(HEADERS, [row(e) for e in events]).splitlines()
    click.echo("\n".join(lines if legend else lines[1:]))


def warn(answer: Dict[str, Any]) -> None:
    if answer.get("reset"):
        click.echo("fleetd restarted since that id: its events begin again at 1", err=True)
    if answer.get("missed"):
        click.echo(f"{answer['missed']} events were dropped from fleetd's history before "
                   "they were read", err=True)


@click.command("events")
@click.option("-f", "--follow", is_flag=True, help="Print new events as they come.")
@click.option("--unit", "unit_glob", metavar="GLOB",
              help="Only events of units matching GLOB ('web@*.service').")
@click.option("--machine", metavar="NAME", help="Only events of machine NAME.")
@click.option("-n", "--lines", default=50, show_default=True,
              type=click.IntRange(0, 10000), help="How many of the last events.")
@click.option("--after", type=click.IntRange(0), metavar="ID",
              help="Every held event after id ID (instead of the last --lines).")
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table",
              show_default=True, help="json: one event a line, with its id.")
@pass_ctx
def events(c: Ctx, follow: bool, unit_glob: Optional[str], machine: Optional[str],
           lines: int, after: Optional[int], output: str) -> None:
    """What happened to units and machines, and why: submitted, placed (and why there),
    started, exited (status), restarted, health, rescheduled, machine up, unreachable,
    lost, drain steps."""
    query: Dict[str, Any] = {k: v for k, v in (("unit", unit_glob), ("machine", machine))
                             if v is not None}
    if after is None:
        answer = c.call("GET", "/v1/events?" + urllib.parse.urlencode({**query,
                                                                       "tail": lines}))
    else:
        answer = c.call("GET", "/v1/events?" + urllib.parse.urlencode(
            {**query, "after": after, "limit": 10000}))
        warn(answer)
    show(answer["events"], output, legend=True)
    last = answer["events"][-1]["id"] if answer["events"] else answer["last"]
    while follow:
        answer = c.call("GET", "/v1/events?" + urllib.parse.urlencode(
            {**query, "after": last, "limit": 10000, "timeout": f"{POLL_S:g}"}),
            timeout=POLL_S + 30)
        warn(answer)
        show(answer["events"], output, legend=False)
        last = answer["events"][-1]["id"] if answer["events"] else answer["last"]
