"""list-units, list-unit-files, list-machines and status, as tables or JSON.

Each listing has named columns: ``--fields`` picks them, ``--full`` (``-l``) stops
shortening hashes, ids and errors, ``--no-legend`` drops the header (for scripts), and
``-o json`` prints the API's rows unchanged. fleet's field names are columns too (issue
14), headed as fleet headed them (the name in capitals): list-units' ``active``,
``sub`` and ``load`` in systemd's words (``systemd_states``), list-unit-files'
``dstate``, ``tmachine``, ``desc`` and ``global``, list-machines' ``ip``.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import click

from fleetd.cli.completion import complete_units
from fleetd.cli.context import Ctx, pass_ctx
from fleetd.cli.output import ago, echo, table
from fleetd.cli.unitargs import unit_name
from fleetd.client import ApiError, segment
from fleetd.units.timespan import format_timespan

Row = Dict[str, Any]
Column = Tuple[str, Callable[[Row, bool], Any]]  # header, value(row, full)


def _short(text: Optional[str], n: int, full: bool) -> Optional[str]:
    if text is None or full or len(text) <= n:
        return text
    return text[: n - 1] + "…"


def _machine_state(r: Row, full: bool) -> str:
    """``up``, ``lost: silent for 6.2s ...``, ``up, draining (3 left)``, ``up, drained``."""
    text = r["state"] if r["state"] == "up" or not r.get("error") \
        else f"{r['state']}: {_short(r['error'], 60, full)}"
    drained = r.get("drain")
    if drained:
        left = len(drained["left"])
        text += ", drained" if not left else f", draining ({left} left)"
    return text


def _usage(r: Row, key: str) -> Optional[str]:
    """A copy's usage as its agent read it (``?usage=1``): ``12.5M``, ``1.52s``."""
    value = (r.get("usage") or {}).get(key)
    if value is None:
        return None
    return f"{value:.2f}s" if key == "cpu_seconds" else size(value)


def size(n: float) -> str:
    """Bytes as ``ps``-like sizes: 512B, 12.5K, 300.1M, 2.0G."""
    for unit in ("B", "K", "M", "G"):
        if n < 1024 or unit == "G":
            return f"{n:.0f}{unit}" if unit == "B" else f"{n:.1f}{unit}"
        n /= 1024
    return f"{n:.1f}G"


USAGE_FIELDS = ("cpu", "memory")  # list-units asks the agents only for these

# fleetd's state of a copy -> systemd's ActiveState and SubState for a service, which
# fleet's list-units showed (fleetd's "exited" is a clean end: inactive, as systemd
# shows a finished service without RemainAfterExit=)
SYSTEMD_STATES = {"starting": ("activating", "start"), "running": ("active", "running"),
                  "stopping": ("deactivating", "stop"), "stopped": ("inactive", "dead"),
                  "exited": ("inactive", "dead"), "failed": ("failed", "failed")}


def systemd_states(r: Row) -> Tuple[str, str, str]:
    """A list-units row's LOAD, ACTIVE and SUB as fleet showed them; ``-`` for a copy
    no agent has reported yet."""
    active, sub = SYSTEMD_STATES.get(r["state"], ("-", "-"))
    return ("loaded" if active != "-" else "-"), active, sub


def where(r: Row) -> Optional[str]:
    """list-units' ADDRESS: the machine's address, with the unit's first port
    (``10.1.0.2:8080``; a udp one says so: ``10.1.0.2:53/udp``); an IPv6 address is
    bracketed before a port, as in a URL."""
    address = r.get("address")
    ports = r.get("ports") or []
    if not address or not ports:
        return address
    number, _, protocol = str(ports[0]).partition("/")
    host = f"[{address}]" if ":" in address else address
    return f"{host}:{number}" + ("" if protocol in ("", "tcp") else f"/{protocol}")


def _attempts(r: Row) -> Optional[str]:
    """Reschedules spent of those allowed (``1/5``), once a unit has failed."""
    info = r.get("reschedule") or {}
    if not info.get("failures"):
        return None
    limit = info["attempts"]
    return f"{info['used']}/{'∞' if limit is None else limit}"


UNIT_COLUMNS: Dict[str, Column] = {
    "unit": ("UNIT", lambda r, f: r["unit"]),
    "machine": ("MACHINE", lambda r, f: r["machine"]),
    "state": ("STATE", lambda r, f: r["state"] + ("" if r.get("desired") != "-"
                                                  else " [not placed here]")),
    "pid": ("PID", lambda r, f: r.get("pid")),
    "health": ("HEALTH", lambda r, f: r.get("health")),
    "desired": ("DSTATE", lambda r, f: r.get("desired")),
    "hash": ("HASH", lambda r, f: r.get("hash") if f else (r.get("hash") or "")[:7]),
    "since": ("SINCE", lambda r, f: ago(r.get("started_at")) if r.get("started_at") else None),
    "restarts": ("RESTARTS", lambda r, f: r.get("restarts")),
    "exit": ("EXIT", lambda r, f: r.get("exit_status")),
    "error": ("ERROR", lambda r, f: _short(r.get("error"), 50, f)),
    "cpu": ("CPU", lambda r, f: _usage(r, "cpu_seconds")),  # from the unit's cgroup
    "memory": ("MEMORY", lambda r, f: _usage(r, "memory_bytes")),
    "address": ("ADDRESS", lambda r, f: where(r)),  # machine address:first Ports= port
    "ports": ("PORTS", lambda r, f: ",".join(r.get("ports") or []) or None),
    # fleet's
    "active": ("ACTIVE", lambda r, f: systemd_states(r)[1]),
    "sub": ("SUB", lambda r, f: systemd_states(r)[2]),
    "load": ("LOAD", lambda r, f: systemd_states(r)[0]),
}
UNIT_FILE_COLUMNS: Dict[str, Column] = {
    "unit": ("UNIT", lambda r, f: r["unit"]),
    "hash": ("HASH", lambda r, f: r["hash"] if f else r["hash"][:7]),
    "desired": ("DSTATE", lambda r, f: r["desired"]),
    "state": ("STATE", lambda r, f: r["state"]),
    "target": ("TARGET", lambda r, f: r["machine"]),
    "attempts": ("RESCHEDULED", lambda r, f: _attempts(r)),
    "reason": ("REASON", lambda r, f: None if r["state"] == "running" and not _attempts(r)
               and not r.get("handoff") else _short(r["reason"] or None, 70, f)),
    # fleet's
    "dstate": ("DSTATE", lambda r, f: r["desired"]),
    "tmachine": ("TMACHINE", lambda r, f: r["machine"]),
    "desc": ("DESC", lambda r, f: r.get("description") or None),
    "global": ("GLOBAL", lambda r, f: "true" if r.get("global") else "false"),
}
MACHINE_COLUMNS: Dict[str, Column] = {
    "machine": ("MACHINE", lambda r, f: r["name"]),
    "address": ("ADDRESS", lambda r, f: r["address"]),
    "state": ("STATE", lambda r, f: _machine_state(r, f)),
    "metadata": ("METADATA", lambda r, f: r["metadata"]),
    "units": ("UNITS", lambda r, f: r["units"]),
    "last-seen": ("LAST SEEN", lambda r, f: ago(r["last_seen"])),
    "id": ("ID", lambda r, f: r["machine_id"] if f or not r["machine_id"]
           else r["machine_id"][:8]),
    # how fleetd reaches the agent: "forwarded", or "relay (why)" (fleetd.transport.forward)
    "link": ("LINK", lambda r, f: r.get("link")),
    "ip": ("IP", lambda r, f: r["address"]),  # fleet's
}


def listing(columns: Dict[str, Column], default: Sequence[str]) -> Callable[..., Any]:
    def decorate(f: Callable[..., Any]) -> Callable[..., Any]:
        f = click.option("--fields", default=",".join(default), show_default=True,
                         help=f"Columns: {','.join(columns)}.")(f)
        f = click.option("-l", "--full", is_flag=True,
                         help="Do not shorten hashes, ids, errors.")(f)
        f = click.option("--no-legend", is_flag=True, help="No header line.")(f)
        return click.option("-o", "--output", type=click.Choice(["table", "json"]),
                            default="table", show_default=True)(f)
    return decorate


def warn_if_stale(c: Ctx) -> None:
    """Say on stderr when the fleetd that answered may have answered from an old copy
    (etcd without a quorum, or out of its reach: its ``/v1/health`` ``stale`` says why).
    A read still answers then - an operator needs the last known state most when etcd is
    down - but must not be mistaken for the current one. The client asks the fleetd that
    answered last first, so this is that fleetd's word; a fleetd that does not say (one
    before HA, on SQLite: never stale) or cannot be asked adds nothing."""
    try:
        stale = c.client.get("/v1/health", timeout=5).get("stale")
    except ApiError:
        return
    if stale:
        echo(f"warning: {stale}", err=True)


def show(rows: List[Row], columns: Dict[str, Column], fields: str, full: bool,
         no_legend: bool, output: str) -> None:
    if output == "json":
        click.echo(json.dumps(rows, indent=2, sort_keys=True))
        return
    names = [n.strip() for n in fields.split(",") if n.strip()]
    unknown = [n for n in names if n not in columns]
    if unknown or not names:
        raise click.BadParameter(f"unknown field {unknown[0] if unknown else '(none)'}; "
                                 f"known: {','.join(columns)}", param_hint="--fields")
    headers = [columns[n][0] for n in names]
    cells = [[columns[n][1](r, full) for n in names] for r in rows]
    lines = table(headers, cells).splitlines()[1 if no_legend else 0:]
    if lines:  # nothing at all, not an empty line, for no rows and no legend (as fleet)
        click.echo("\n".join(lines))


@click.command("list-units")
@listing(UNIT_COLUMNS, ["unit", "machine", "state", "pid", "health"])
@pass_ctx
def list_units(c: Ctx, fields: str, full: bool, no_legend: bool, output: str) -> None:
    """Units on machines as the agents report them (cpu, memory: as each agent reads
    the unit's cgroup now)."""
    asks = {n.strip() for n in fields.split(",")} & set(USAGE_FIELDS)
    rows = c.call("GET", "/v1/units" + ("?usage=1" if asks else ""))["units"]
    show(rows, UNIT_COLUMNS, fields, full, no_legend, output)
    warn_if_stale(c)


@click.command("list-unit-files")
@listing(UNIT_FILE_COLUMNS, ["unit", "hash", "desired", "state", "target", "attempts",
                             "reason"])
@pass_ctx
def list_unit_files(c: Ctx, fields: str, full: bool, no_legend: bool, output: str) -> None:
    """Submitted units: content hash, desired and current state, target, and why."""
    show(c.call("GET", "/v1/unit-files")["unit_files"], UNIT_FILE_COLUMNS, fields, full,
         no_legend, output)
    warn_if_stale(c)


@click.command("list-machines")
@listing(MACHINE_COLUMNS, ["machine", "address", "state", "metadata", "units", "last-seen",
                           "link"])
@pass_ctx
def list_machines(c: Ctx, fields: str, full: bool, no_legend: bool, output: str) -> None:
    """Machines, their state and how many units they hold."""
    show(c.call("GET", "/v1/machines")["machines"], MACHINE_COLUMNS, fields, full, no_legend,
         output)
    warn_if_stale(c)


@click.command()
@click.argument("unit", shell_complete=complete_units)
@click.option("-n", "--lines", default=10, show_default=True, help="Log lines to show.")
@click.option("-o", "--output", type=click.Choice(["text", "json"]), default="text")
@pass_ctx
def status(c: Ctx, unit: str, lines: int, output: str) -> None:
    """One unit: desired and current state, where, pid, since, restarts, last exit, why,
    and its last log lines. UNIT without a unit type means UNIT.service, as in fleet
    (app.unit too means app.service)."""
    s = c.call("GET", f"/v1/units/{segment(unit_name(unit))}/status?lines={lines}")
    if output == "json":
        click.echo(json.dumps(s, indent=2, sort_keys=True))
        return
    echo(f"● {s['unit']}" + (f" - {s['description']}" if s.get("description") else ""))
    echo(f"   Desired: {s['desired']}" + (f" (generation {s['generation']})"
                                           if s.get("generation") else ""))
    echo(f"   Placed: {s['machine'] or '-'}" + (f"  ({s['reason']})" if s.get("reason")
                                                else ""))
    if s.get("secrets"):
        echo("   Secrets: " + " ".join(f"{k}={v}" for k, v in sorted(s["secrets"].items())))
    if s.get("handoff"):
        echo(f"   Handing over from: {s['handoff']} (its copy runs until this one is "
             "healthy)")
    resched = s.get("reschedule") or {}
    if resched.get("failures"):
        limit = resched["attempts"]
        echo(f"   Rescheduled: {resched['used']} of "
             f"{'unlimited' if limit is None else limit} attempts in "
             f"{format_timespan(resched['interval_s'])}")
        for failure in resched["failures"]:
            echo(f"     failed on {failure['machine']} {ago(failure['at'])}: "
                 f"{failure['reason']}")
    now = time.time()
    for o in s["copies"]:
        line = f"   {o['machine']}: {o['state']}"
        if o.get("pid"):
            line += f", pid {o['pid']}"
        if o.get("started_at"):
            line += f", since {ago(o['started_at'], now)}"
        line += f", restarts {o.get('restarts', 0)}, health {o.get('health', 'unknown')}"
        if o.get("usage"):
            line += "".join(f", {name} {shown}" for name, shown in (
                ("memory", _usage(o, "memory_bytes")), ("cpu", _usage(o, "cpu_seconds")),
                ("OOM kills", (o["usage"].get("oom_kills") or None))) if shown)
        if o.get("exit_status") is not None:
            line += f", last exit {o['exit_status']}"
        if o.get("error"):
            line += f" — {o['error']}"
        if not o.get("current", True):
            line += " [not the current content]"
        echo(line)
    if not s["copies"]:
        echo("   (not on any machine)")
    if s.get("log") is not None:
        click.echo()
        echo(f"-- last {len(s['log'])} log lines from {s['machine']} --")
        for log_line in s["log"]:
            click.echo(log_line)  # raw, as journalctl prints it (fleetd.cli.output)
    elif s.get("log_error"):
        click.echo()
        echo(f"-- no log: {s['log_error']} --")


@click.command()
@click.argument("unit", shell_complete=complete_units)
@click.option("-n", "--lines", default=10, show_default=True, help="Lines to show first.")
@click.option("-f", "--follow", is_flag=True, help="Keep printing new lines (Ctrl-C ends).")
@pass_ctx
def journal(c: Ctx, unit: str, lines: int, follow: bool) -> None:
    """A unit's output, from the machine it runs on, through fleetd (raw, as journalctl
    prints it: control characters included). UNIT is named as for status."""
    path = f"/v1/units/{segment(unit_name(unit))}/journal?lines={lines}&follow={int(follow)}"
    try:
        for line in c.client.stream(path):
            click.echo(line.decode(errors="replace"), nl=False)
    except ApiError as exc:
        raise click.ClickException(str(exc)) from None
    except KeyboardInterrupt:
        pass


COMMANDS = [list_units, list_unit_files, list_machines, status, journal]
