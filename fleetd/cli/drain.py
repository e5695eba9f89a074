"""``fleetctl drain MACHINE [--deadline D]`` and ``fleetctl undrain MACHINE``.

fleetd does the moving (one unit at a time, each healthy on its new machine before its
old copy stops); these commands start and end it, and ``--wait`` follows it to the end,
printing each unit as it leaves.
"""

from __future__ import annotations

import time
from typing import Any, Dict, List, Optional, Tuple

import click

from fleetd.cli.context import Ctx, pass_ctx
from fleetd.cli.params import Timespan
from fleetd.client import segment

WAIT_S = 60.0  # one long poll: fleetd answers at the next change, or after this


def _drain_of(c: Ctx, machine: str, after: Optional[int]
              ) -> Tuple[Optional[Dict[str, Any]], int]:
    """The machine's drain once something changed after version ``after`` (at once for
    None), and the version it was read at."""
    path = "/v1/machines" if after is None else f"/v1/machines?after={after}&timeout={WAIT_S:g}"
    answer = c.call("GET", path, timeout=WAIT_S + 30)
    for m in answer["machines"]:
        if m["name"] == machine:
            drained: Optional[Dict[str, Any]] = m.get("drain")
            return drained, int(answer["version"])
    raise click.ClickException(f"machine {machine} was removed while draining")


@click.command()
@click.argument("machine")
@click.option("--deadline", type=Timespan(),
              help="After this (e.g. 10min), whatever is left moves at once, without "
                   "waiting for health, and a unit that fits nowhere else stops.")
@click.option("--wait", is_flag=True, help="Follow the drain until the machine is empty.")
@pass_ctx
def drain(c: Ctx, machine: str, deadline: Optional[float], wait: bool) -> None:
    """Move MACHINE's units away, one at a time, and place nothing new there."""
    body = {"deadline_s": deadline} if deadline is not None else {}
    state = c.call("POST", f"/v1/machines/{segment(machine)}/drain", body)["drain"]
    left: List[str] = state["left"]
    until = f", deadline in {deadline:g}s" if deadline is not None else ""
    click.echo(f"Draining {machine}: {len(left)} unit{'s' * (len(left) != 1)} to move{until}")
    if not wait:
        return
    started = time.monotonic()
    version: Optional[int] = None
    while left:
        now, version = _drain_of(c, machine, version)
        if now is None:
            raise click.ClickException(f"{machine} was undrained with {len(left)} units left: "
                                       + ", ".join(left))
        for name in left:
            if name not in now["left"]:
                click.echo(f"{name} moved off {machine} "
                           f"({time.monotonic() - started:.1f}s)")
        left = now["left"]
    click.echo(f"{machine} is drained")


@click.command()
@click.argument("machine")
@pass_ctx
def undrain(c: Ctx, machine: str) -> None:
    """Let MACHINE take units again (a hand-off in flight still completes)."""
    c.call("POST", f"/v1/machines/{segment(machine)}/undrain", {})
    click.echo(f"{machine} takes units again")


COMMANDS = [drain, undrain]
