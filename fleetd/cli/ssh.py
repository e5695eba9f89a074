"""``fleetctl ssh MACHINE|UNIT [-- COMMAND...]``: a shell, or a command, on a machine or
on the machine that runs a unit, as fleet's ``fleetctl ssh`` (issue 14).

It runs OpenSSH's ``ssh`` with what fleetd itself uses for that machine (fleetd answers
``GET /v1/machines/NAME/ssh``: the address, port, user, and the paths of the key and the
known_hosts file), and host keys checked strictly against that file alone, as fleetd
checks them: a host whose key is not there is refused, never learnt. The key is read
here, so fleetctl runs where fleetd does (the usual case) as a user that may read it;
where it cannot, the error names the file. Plan (``target_of``, ``ssh_argv``) apart
from doing (``ssh``), so the plan is tested without a host.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

import click

from fleetd.cli.completion import complete_targets
from fleetd.cli.context import Ctx, pass_ctx
from fleetd.cli.unitargs import unit_name  # the one rule: app is app.service, as is app.unit
from fleetd.client import segment


def machine_named(target: str, machines: Sequence[Dict[str, Any]]) -> Optional[str]:
    """The machine ``target`` names: its name, or a unique prefix of its id (as fleet
    took machine ids); None when it names none. Ambiguous: a UsageError naming them."""
    for m in machines:
        if m["name"] == target:
            return str(m["name"])
    matches = sorted(m["name"] for m in machines
                     if m.get("machine_id") and m["machine_id"].startswith(target))
    if len(matches) > 1:
        raise click.UsageError(f"{target!r} is the start of several machines' ids: "
                               f"{', '.join(matches)}")
    return matches[0] if matches else None


def ssh_argv(info: Dict[str, Any], command: Sequence[str]) -> List[str]:
    """OpenSSH's command line for fleetd's way to ``info``'s machine: its key only (when
    fleetd has one), its known_hosts file only, strictly."""
    argv = ["ssh", "-o", "StrictHostKeyChecking=yes",
            "-o", f"UserKnownHostsFile={_quoted(info['known_hosts'])}",
            "-o", "GlobalKnownHostsFile=/dev/null", "-o", "UpdateHostKeys=no",
            "-p", str(info["port"]), "-l", info["user"]]
    if info.get("identity"):
        argv += ["-i", info["identity"], "-o", "IdentitiesOnly=yes"]
    return [*argv, "--", info["address"], *command]


def _quoted(path: str) -> str:
    """A path as ssh's ``-o`` reads one (it splits a value at spaces)."""
    return f'"{path}"' if " " in path else path


def unreadable(info: Dict[str, Any]) -> Optional[str]:
    """Why this process cannot use fleetd's files for the machine, or None."""
    for what, path in (("key", info.get("identity")), ("known_hosts file",
                                                         info["known_hosts"])):
        if path and not os.access(path, os.R_OK):
            why = "does not exist here" if not os.path.exists(path) else "is not readable"
            return (f"fleetd's {what} for {info['name']}, {path}, {why} for this user: "
                    "fleetctl ssh uses fleetd's own files, so run it on fleetd's host as "
                    "fleetd's user")
    return None


def target_of(c: Ctx, target: str) -> Tuple[str, Optional[str]]:
    """The machine ``target`` means, and the unit it came from (None: a machine)."""
    machine = machine_named(target, c.call("GET", "/v1/machines")["machines"])
    if machine is not None:
        return machine, None
    unit = unit_name(target)
    rows = [r for r in c.call("GET", "/v1/unit-files")["unit_files"] if r["unit"] == unit]
    if not rows:
        raise click.UsageError(f"no machine or unit named {target!r} (`fleetctl "
                               "list-machines`, `fleetctl list-unit-files`)")
    return machine_of(rows[0]), unit


def machine_of(row: Dict[str, Any]) -> str:
    """The one machine a unit (a row of ``/v1/unit-files``) is placed on."""
    where = row.get("machines") or ([row["machine"]] if row.get("machine") else [])
    if len(where) > 1:  # a global unit
        raise click.UsageError(f"unit {row['unit']} runs on several machines: name one "
                               f"of {', '.join(where)}")
    if not where:
        raise click.ClickException(f"unit {row['unit']} is not on any machine")
    return str(where[0])


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("target", metavar="MACHINE|UNIT", shell_complete=complete_targets)
@click.argument("command", nargs=-1, type=click.UNPROCESSED)
@pass_ctx
def ssh(c: Ctx, target: str, command: Tuple[str, ...]) -> None:
    """Open a shell, or run COMMAND, on MACHINE or on the machine that runs UNIT.

    With fleetd's key and known_hosts file for that machine, host keys checked strictly.
    Put ``--`` before a COMMAND that has options: ``fleetctl ssh web.service -- ls -l``.
    As with ssh, COMMAND's words are joined and the remote user's shell runs them. The
    exit status is COMMAND's (255: ssh's own failure)."""
    machine, _ = target_of(c, target)
    info = c.call("GET", f"/v1/machines/{segment(machine)}/ssh")
    problem = unreadable(info)
    if problem is not None:
        raise click.ClickException(problem)
    argv = ssh_argv(info, command)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        raise click.ClickException(f"cannot run ssh: {exc.strerror or exc} (fleetctl ssh "
                                   "needs OpenSSH's client)") from None
