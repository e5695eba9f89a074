"""fleetctl's verbs by name, each loaded only when it runs: where each command lives and
the one line ``fleetctl --help`` shows for it.

Why: a fleetctl process is mostly Python start-up and imports. Importing every command
module to run one (``start`` pulls in the unit parser, ``lab`` the lab, ``machine`` the
Vagrant reader) made ``fleetctl list-units`` pay for all of them: ~105 ms wall where
fleet's Go fleetctl took tens (issue 14). ``LazyGroup`` imports the one module a command
line names, and ``--help`` prints these lines without importing any
(tests/unit/test_cli_lazy.py holds each line to its command's own).

A command added with ``cli.add_command`` still works (it is loaded eagerly, as before).
"""

from __future__ import annotations

import importlib
from typing import Dict, List, NamedTuple, Optional

import click


class Lazy(NamedTuple):
    module: str  # fleetd.cli.MODULE
    attribute: str  # the click command in it
    short_help: str  # its docstring's first sentence, which click shortens (as the test checks)


COMMANDS: Dict[str, Lazy] = {
    "audit": Lazy("audit", "audit",
                  "Every write to fleetd's API: who (the token's name, or root on the "
                  "socket), from where, what, and the answer's status (refusals too)."),
    "cat": Lazy("units", "cat", "Print a submitted unit file."),
    "completion": Lazy("completion", "completion", "Print the completion script for SHELL."),
    "dashboard": Lazy("dashboard", "dashboard",
                      "Open fleetd's web dashboard through a local port (127.0.0.1) and "
                      "print its address."),
    "destroy": Lazy("units", "destroy", "Stop units and forget them."),
    "drain": Lazy("drain", "drain",
                  "Move MACHINE's units away, one at a time, and place nothing new there."),
    "events": Lazy("events", "events",
                   "What happened to units and machines, and why: submitted, placed (and why "
                   "there), started, exited (status), restarted, health, rescheduled, machine"
                   " up, unreachable, lost, drain steps."),
    "help": Lazy("verbs", "help_command", "Show fleetctl's help, or VERB's."),
    "history": Lazy("rollouts", "history",
                    "UNIT's versions, oldest first: each content's hash, when and through "
                    "whom it was submitted, and how it ended (replaced, failed and reverted, "
                    "rolled back; the current one: where its rollout is)."),
    "journal": Lazy("listing", "journal",
                    "A unit's output, from the machine it runs on, through fleetd (raw, as "
                    "journalctl prints it: control characters included)."),
    "lab": Lazy("lab", "lab",
                "A local lab: N hosts as network namespaces, each with its own sshd; some of "
                "them may be real systemd hosts with a file system of their own (--systemd)."),
    "list-machines": Lazy("listing", "list_machines",
                          "Machines, their state and how many units they hold."),
    "list-servers": Lazy("servers", "list_servers",
                         "The fleetd servers (who leads, epoch, since) and the etcd members."),
    "list-unit-files": Lazy("listing", "list_unit_files",
                            "Submitted units: content hash, desired and current state, "
                            "target, and why."),
    "list-units": Lazy("listing", "list_units",
                       "Units on machines as the agents report them (cpu, memory: as each "
                       "agent reads the unit's cgroup now)."),
    "load": Lazy("units", "load",
                 "Submit if needed and place units on machines, without starting them."),
    "machine": Lazy("machines", "machine", "Add and remove machines."),
    "promote": Lazy("rollouts", "promote",
                    "Let UNIT's canary rollout (submitted with --canary N) go on to every "
                    "copy."),
    "restart": Lazy("units", "restart", "Stop and start units again where they are."),
    "rollback": Lazy("rollouts", "rollback", "Give UNIT an earlier version's content."),
    "scale": Lazy("scale", "scale",
                  "Run instances NAME@1 .. NAME@COUNT of the submitted template "
                  "NAME@.service, and no other numbered one."),
    "secret": Lazy("secrets", "secret",
                   "Set, list and remove secrets (SecretEnvironment= in a unit's [Service])."),
    "ssh": Lazy("ssh", "ssh",
                "Open a shell, or run COMMAND, on MACHINE or on the machine that runs UNIT."),
    "start": Lazy("units", "start", "Submit if needed, place and run units."),
    "status": Lazy("listing", "status",
                   "One unit: desired and current state, where, pid, since, restarts, last "
                   "exit, why, and its last log lines."),
    "stop": Lazy("units", "stop", "Stop units; they stay placed (loaded)."),
    "submit": Lazy("units", "submit", "Store units (and templates) without placing them."),
    "token": Lazy("tokens", "token",
                  "Make, list and revoke API tokens (who may do what over TCP)."),
    "undrain": Lazy("drain", "undrain",
                    "Let MACHINE take units again (a hand-off in flight still completes)."),
    "unload": Lazy("units", "unload",
                   "Stop units and take them off their machines; they stay submitted."),
    "version": Lazy("verbs", "version", "Print fleetctl's version."),
}


def load(name: str) -> click.Command:
    """The command ``name`` of COMMANDS, its module imported now."""
    entry = COMMANDS[name]
    command = getattr(importlib.import_module(f"fleetd.cli.{entry.module}"), entry.attribute)
    assert isinstance(command, click.Command), f"fleetd.cli.{entry.module}.{entry.attribute}"
    return command


class LazyGroup(click.Group):
    """A click group whose COMMANDS are imported when one is run (or completed, or its
    help asked), and whose listing in ``--help`` imports none of them."""

    def list_commands(self, ctx: click.Context) -> List[str]:
        return sorted({*super().list_commands(ctx), *COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> Optional[click.Command]:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in COMMANDS:
            command = load(cmd_name)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names), default=0)
        rows = []
        for name in names:
            eager = self.commands.get(name)
            if eager is not None:
                if eager.hidden:
                    continue
                rows.append((name, eager.get_short_help_str(limit)))
            else:
                stub = click.Command(name, help=COMMANDS[name].short_help)  # click shortens it
                rows.append((name, stub.get_short_help_str(limit)))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)
