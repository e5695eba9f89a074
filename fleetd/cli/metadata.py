"""``fleetctl machine set-metadata NAME KEY=VALUE ... [KEY= ...] [--unset KEY ...]``:
change a machine's metadata at runtime; fleetd then moves the units whose
MachineMetadata= it no longer matches, each with a hand-off (engine/handoff.py)."""

from __future__ import annotations

from typing import Dict, List, Tuple

import click

from fleetd.cli.context import Ctx, pass_ctx
from fleetd.client import segment


def parse_pairs(pairs: Tuple[str, ...], unset: Tuple[str, ...]
                ) -> Tuple[Dict[str, str], List[str]]:
    """``KEY=VALUE`` sets, ``KEY=`` (empty) unsets, as ``--unset KEY`` does."""
    to_set: Dict[str, str] = {}
    to_unset: List[str] = list(unset)
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key:
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE (KEY= removes KEY)",
                                     param_hint="KEY=VALUE")
        if value:
            to_set[key] = value
        else:
            to_unset.append(key)
    if not to_set and not to_unset:
        raise click.UsageError("nothing to change: give KEY=VALUE, KEY= or --unset KEY")
    return to_set, to_unset


def _shown(metadata: Dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(metadata.items())) or "(none)"


@click.command("set-metadata")
@click.argument("name")
@click.argument("pairs", nargs=-1, metavar="KEY=VALUE...")
@click.option("--unset", multiple=True, metavar="KEY", help="Remove KEY (repeatable); "
                                                           "KEY= does the same.")
@pass_ctx
def set_metadata(c: Ctx, name: str, pairs: Tuple[str, ...], unset: Tuple[str, ...]) -> None:
    """Change machine NAME's metadata: set each KEY=VALUE, remove each KEY= (or --unset
    KEY); other keys stay.

    This is the runtime override of the metadata `machine add --metadata` gave (and `lab
    up`): fleetd keeps the machine's metadata in its registry, and a change stays there
    across fleetd restarts and agent reconnects until the next set-metadata; removing
    the machine and adding it again starts from --metadata again. Units whose
    MachineMetadata= the machine no longer matches move to a machine that matches, each
    keeping its old copy running until the new one is healthy (as a drain hands over);
    units that still match stay."""
    to_set, to_unset = parse_pairs(pairs, unset)
    answer = c.call("POST", f"/v1/machines/{segment(name)}/metadata",
                    {"set": to_set, "unset": to_unset})
    click.echo(f"Machine {name}: metadata {_shown(answer['metadata'])} "
               f"(was {_shown(answer['previous'])})")
