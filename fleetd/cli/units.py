"""fleet's unit verbs: submit, load, start, stop, unload, destroy, restart, cat.

Unit arguments are files (their base name is the unit name; ``app.unit`` is the service
``app.service``) or names of units already submitted; a name without a unit type means
``NAME.service``, as in fleet (cli/unitargs.py). ``web@3.service`` with no such file uses
the submitted template ``web@.service``, or else a ``web@.service`` file beside where the
instance would be, as fleet did. fleetd validates everything and stores a request all
or none.

Blocking verbs wait for the agents' reports, as fleet's did; ``--no-block`` returns
once fleetd has stored the wish. ``--block-attempts N`` means what it meant in fleet:
give up after N attempts, each of which polled the unit's state for fleet's
``defaultSleepTime`` (2 s, every 250 ms), so at most ``N * ATTEMPT_S`` seconds; 0 (its
default) was no limit, which here is ``--timeout``. fleetd answers the wait itself the
moment the unit gets there, so the attempts bound the wait without polling.

``restart`` also takes globs (``'web@*.service'``: every launched instance) and, with
``--rolling``, restarts one unit at a time, each healthy again (fleetd's wait
``until=healthy``) before the next goes (fleet's issue 760).
"""

from __future__ import annotations

import fnmatch
import re
import time
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import click

from fleetd.cli import rollouts
from fleetd.cli.context import Ctx, pass_ctx
from fleetd.cli.params import Seconds, Timespan
from fleetd.cli.unitargs import is_glob, unit_items, unit_name, unit_names
from fleetd.client import segment
from fleetd.units import values
from fleetd.units.timespan import MAX_S, format_timespan
from fleetd.wire.names import is_template

FILES_HELP = ("UNIT is a unit file (app.service; a file app.unit is the service "
              "app.service) or the name of a unit already submitted. A name without a "
              "unit type means NAME.service, as in fleet: app is app.service (read from "
              "the file app.service, or app.unit, if there), web@1 is web@1.service.")
NAMES_HELP = ("UNIT is a unit's name; without a unit type it means NAME.service, as in "
              "fleet (app, web@1), and app.unit means app.service.")


def parse_vars(pairs: Tuple[str, ...], vars_file: Optional[str]) -> Optional[Dict[str, str]]:
    """``--vars-file`` then ``--var k=v`` (which win); None when neither was given."""
    if not pairs and not vars_file:
        return None
    variables: Dict[str, str] = {}
    if vars_file:
        import tomllib  # here: ~2 ms of every fleetctl start otherwise (issue 14)

        try:
            with open(vars_file, "rb") as f:
                data = tomllib.load(f)
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise click.BadParameter(f"{vars_file}: {exc}", param_hint="--vars-file") from None
        for key, value in data.items():
            if isinstance(value, (dict, list)):
                raise click.BadParameter(f"{vars_file}: {key}: only plain values are variables",
                                         param_hint="--vars-file")
            text = str(value).lower() if isinstance(value, bool) else str(value)
            variables[key] = _one_value(f"{vars_file}: {key}", text, "--vars-file")
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not key.isidentifier():
            raise click.BadParameter(f"{pair!r}: want NAME=VALUE", param_hint="--var")
        variables[key] = _one_value(key, value, "--var")
    return variables


def _one_value(where: str, value: str, option: str) -> str:
    """A variable is a value, never unit text: a line break would add a directive."""
    problem = values.problem(value)
    if problem is not None:
        raise click.BadParameter(f"{where} {problem}: a variable is a value on one line, "
                                 "not unit text", param_hint=option)
    return value


# one --block-attempts attempt: fleet 1.0's defaultSleepTime (fleetctl.go), for which
# waitForState polls every 250 ms (fleet 0.12-0.13 checked once, then slept 500 ms)
ATTEMPT_S = 2.0
_MAX_WAIT_S = 3600.0  # fleetd answers a wait after an hour at most: ask again


def wait_for(c: Ctx, name: str, until: str, deadline: float) -> Dict[str, Any]:
    """fleetd's verdict once ``name`` reaches ``until`` (or never will), or at
    ``deadline`` (time.monotonic()); a wait longer than fleetd's longest is asked again."""
    while True:
        left = min(max(deadline - time.monotonic(), 0.0), _MAX_WAIT_S)
        res = c.call("GET", f"/v1/units/{segment(name)}/wait?until={until}&timeout={left:.3f}",
                     timeout=left + 10)
        if res["reached"] or not res.get("timeout") or time.monotonic() >= deadline:
            return res


def wait_all(c: Ctx, names: List[str], until: str, timeout: float,
             say: Callable[[str, str], str]) -> None:
    failed = []
    for name in names:
        res = wait_for(c, name, until, time.monotonic() + timeout)
        if res["reached"]:
            click.echo(say(name, res["why"]))
        else:
            failed.append(f"{name}: {'timed out: ' if res.get('timeout') else ''}{res['why']}")
    if failed:
        raise click.ClickException("\n".join(failed))


def blocking(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--no-block", is_flag=True, help="Return once fleetd stored it.")(f)
    f = click.option("--block-attempts", type=click.IntRange(min=0), default=0, metavar="N",
                     help=f"Give up after N attempts, as fleet did: each attempt waits "
                          f"{ATTEMPT_S:g}s for the unit's state (fleet's polling), so at "
                          f"most {ATTEMPT_S:g}*N seconds; 0: no limit but --timeout.")(f)
    return click.option("--timeout", type=Seconds(0.1, MAX_S), default=60.0,
                        show_default=True,
                        help=f"Seconds to wait (with --block-attempts N: {ATTEMPT_S:g}*N).")(f)


def _timeout(block_attempts: int, timeout: float) -> float:
    """How long a blocking verb waits: N attempts of fleet's, else --timeout."""
    return block_attempts * ATTEMPT_S if block_attempts else timeout


def submit_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--replace", is_flag=True,
                     help="Replace a unit (or template) already submitted with other content.")(f)
    f = click.option("--var", "var_pairs", multiple=True, metavar="NAME=VALUE",
                     help="A template variable ({{ vars.NAME }}); repeatable.")(f)
    f = rollouts.rollout_options(f)
    return click.option("--vars-file", type=click.Path(exists=True, dir_okay=False),
                        help="TOML file of template variables.")(f)


def _submit(c: Ctx, units: Tuple[str, ...], desired: Optional[str], replace: bool,
            var_pairs: Tuple[str, ...], vars_file: Optional[str]) -> List[str]:
    items = unit_items(units, parse_vars(var_pairs, vars_file))
    body: Dict[str, Any] = {"units": items, "desired": desired, "replace": replace}
    if (options := rollouts.rollout_given()) is not None:
        body["rollout"] = options
    c.call("POST", "/v1/units", body)
    return [i["name"] for i in items]


@click.command(epilog=FILES_HELP)
@click.argument("units", nargs=-1, required=True)
@submit_options
@pass_ctx
def submit(c: Ctx, units: Tuple[str, ...], replace: bool, var_pairs: Tuple[str, ...],
           vars_file: Optional[str]) -> None:
    """Store units (and templates) without placing them."""
    for name in _submit(c, units, None, replace, var_pairs, vars_file):
        click.echo(f"Unit {name} submitted")


def _block(c: Ctx, names: List[str], verb: str, until: str, no_block: bool,
           block_attempts: int, timeout: float, say: Callable[[str, str], str]) -> None:
    """The end of a blocking verb: with --no-block say what was triggered, else wait
    for each unit to reach ``until`` (``say`` words each success)."""
    if no_block:
        click.echo("\n".join(f"Triggered unit {n} {verb}" for n in names))
        return
    wait_all(c, names, until, _timeout(block_attempts, timeout), say)


def _placing_verb(verb: str, desired: str, until: str, say: Callable[[str, str], str],
                  doc: str) -> click.Command:
    """load and start: submit what is not submitted yet, then set the desired state."""
    @click.command(verb, help=doc, epilog=FILES_HELP)
    @click.argument("units", nargs=-1, required=True)
    @submit_options
    @blocking
    @pass_ctx
    def command(c: Ctx, units: Tuple[str, ...], replace: bool, var_pairs: Tuple[str, ...],
                vars_file: Optional[str], no_block: bool, block_attempts: int,
                timeout: float) -> None:
        names = _submit(c, units, desired, replace, var_pairs, vars_file)
        _block(c, names, verb, until, no_block, block_attempts, timeout, say)

    return command


load = _placing_verb("load", "loaded", "stopped", lambda n, why: f"Unit {n} loaded: {why}",
                     "Submit if needed and place units on machines, without starting them.")
start = _placing_verb("start", "launched", "running", lambda n, why: f"Unit {n} {why}",
                      "Submit if needed, place and run units.")


def _state_verb(verb: str, desired: str, until: str, doc: str) -> click.Command:
    @click.command(verb, help=doc, epilog=NAMES_HELP)
    @click.argument("units", nargs=-1, required=True)
    @blocking
    @pass_ctx
    def command(c: Ctx, units: Tuple[str, ...], no_block: bool, block_attempts: int,
                timeout: float) -> None:
        names = unit_names(units)
        c.call("POST", "/v1/units/state", {"names": names, "desired": desired})
        _block(c, names, verb, until, no_block, block_attempts, timeout,
               lambda n, why: f"Unit {n} {why}")

    return command


stop = _state_verb("stop", "loaded", "stopped", "Stop units; they stay placed (loaded).")
unload = _state_verb("unload", "inactive", "unplaced",
                     "Stop units and take them off their machines; they stay submitted.")


def name_key(name: str) -> Tuple[Tuple[Any, ...], str]:
    """Name order with the numbers in names compared as numbers: web@2 before web@10."""
    parts = re.split(r"([0-9]+)", name)  # text, number, text, ...: the kinds line up
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name


def expand_units(args: Sequence[str], unit_files: Sequence[Dict[str, Any]]) -> List[str]:
    """The units restart's arguments stand for. A plain name stands for itself (fleetd
    says whether it exists); a glob (fnmatch's ``*``, ``?``, ``[...]``) for every launched
    unit whose name matches, in name order (``name_key``) - templates never, as they
    do not run, nor units someone stopped or unloaded. Each unit once, where an argument
    first names it. A glob that matches nothing launched is an error naming the glob."""
    names: List[str] = []
    for arg in args:
        arg = unit_name(arg)
        if not is_glob(arg):
            found = [arg]
        else:
            # here, not at the top: fleetd.registry.base is ~5 ms of every fleetctl
            # start, for one constant that only a glob needs (issue 14)
            from fleetd.registry.base import LAUNCHED

            matching = [f for f in unit_files if fnmatch.fnmatchcase(f["unit"], arg)
                        and not is_template(f["unit"])]
            found = sorted((f["unit"] for f in matching if f.get("desired") == LAUNCHED),
                           key=name_key)
            if not found:
                idle = sorted((f["unit"] for f in matching), key=name_key)
                raise click.ClickException(
                    f"{arg!r} matches no launched unit" + (
                        f" ({', '.join(idle)} matched but are not launched: name them to "
                        "start them)" if idle else ""))
        names += [n for n in found if n not in names]
    return names


def _explicit(ctx: click.Context, name: str) -> bool:
    source = ctx.get_parameter_source(name)
    return source is not None and source != click.core.ParameterSource.DEFAULT


@click.command(epilog=NAMES_HELP)
@click.argument("units", nargs=-1, required=True)
@click.option("--rolling", is_flag=True,
              help="One unit at a time, each healthy again before the next goes; stop at "
                   "the first that is not, leaving the rest untouched.")
@click.option("--rolling-timeout", type=Timespan(), default="5min", show_default=True,
              help="With --rolling: how long each unit may take to be healthy again "
                   "(a time span: 90s, 2min, infinity).")
@blocking
@pass_ctx
def restart(c: Ctx, units: Tuple[str, ...], rolling: bool, rolling_timeout: float,
            no_block: bool, block_attempts: int, timeout: float) -> None:
    """Stop and start units again where they are.

    A UNIT may be a glob: 'web@*' or 'web@*.service' restarts every launched instance
    of web@ (quote it from the shell). With --rolling, units go one at a time in the order
    named (a glob's in name order, web@2 before web@10): each is restarted and waited
    for until it is healthy again - running its new generation and, if it has an
    [X-Check], passing it - before the next one is touched.
    """
    ctx = click.get_current_context()
    if rolling:
        if no_block:
            raise click.UsageError("--rolling waits for each unit; it cannot --no-block")
        given = [f"--{n.replace('_', '-')}" for n in ("timeout", "block_attempts")
                 if _explicit(ctx, n)]
        if given:
            raise click.UsageError(f"{' and '.join(given)}: with --rolling, "
                                   "--rolling-timeout bounds each unit's wait")
    elif _explicit(ctx, "rolling_timeout"):
        raise click.UsageError("--rolling-timeout applies only with --rolling")
    unit_files: List[Dict[str, Any]] = []
    if rolling or any(is_glob(u) for u in units):
        unit_files = list(c.call("GET", "/v1/unit-files")["unit_files"])
    names = expand_units(units, unit_files)
    if rolling:
        known = {f["unit"] for f in unit_files}
        missing = [n for n in names if n not in known]
        if missing:  # before touching any: a rolling restart must not stop half way
            raise click.ClickException(
                f"{', '.join(missing)}: no such unit; nothing was restarted")
        rolling_restart(c, names, rolling_timeout)
        return
    c.call("POST", "/v1/units/restart", {"names": names})
    _block(c, names, "restart", "running", no_block, block_attempts, timeout,
           lambda n, why: f"Unit {n} restarted: {why}")


def rolling_restart(c: Ctx, names: Sequence[str], timeout: float) -> None:
    """Restart ``names`` one by one, each healthy again before the next; on the first
    that is not, stop with an error naming it, its machine, why, and what was left."""
    for i, name in enumerate(names):
        t0 = time.monotonic()
        c.call("POST", "/v1/units/restart", {"names": [name]})
        res = wait_for(c, name, "healthy", t0 + timeout)
        took = time.monotonic() - t0
        if res["reached"]:
            click.echo(f"{name}: {res['why']} after {took:.1f}s")
            continue
        if res.get("timeout"):
            failure = f"{name}: not healthy after {format_timespan(timeout)}: {res['why']}"
        else:
            failure = f"{name}: not healthy after {took:.1f}s: {res['why']}"
        rest = names[i + 1:]
        raise click.ClickException(failure + "\nrolling restart stopped: " + (
            f"{', '.join(rest)} not restarted" if rest else f"{name} was the last unit"))


@click.command(epilog=NAMES_HELP)
@click.argument("units", nargs=-1, required=True)
@blocking
@pass_ctx
def destroy(c: Ctx, units: Tuple[str, ...], no_block: bool, block_attempts: int,
            timeout: float) -> None:
    """Stop units and forget them."""
    names = unit_names(units)
    c.call("POST", "/v1/units/destroy", {"names": names})
    if no_block:
        click.echo("\n".join(f"Destroyed {n}" for n in names))
        return
    wait_all(c, names, "gone", _timeout(block_attempts, timeout),
             lambda n, why: f"Destroyed {n}")


@click.command(epilog=NAMES_HELP)
@click.argument("unit")
@pass_ctx
def cat(c: Ctx, unit: str) -> None:
    """Print a submitted unit file."""
    click.echo(c.call("GET", f"/v1/units/{segment(unit_name(unit))}")["text"], nl=False)


COMMANDS = [submit, load, start, stop, unload, restart, destroy, cat]
