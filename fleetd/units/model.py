"""A unit as fleetd understands it: a parsed file, validated, with its content hash.

Validation happens here, once, at submit time, so that every error reaches the user as
``file:line: Option=: why`` before anything is stored. Each section has its reader
(service.py for [Service], xfleet.py for [X-Fleet], ...); this module names the unit,
hashes it, and puts the pieces together. Options fleetd does not interpret are kept
(the systemd driver passes them through).
"""

from __future__ import annotations

import dataclasses
import hashlib
from typing import Optional, Tuple

from fleetd import protocol
from fleetd.units import secrets, service, systemd_text, xcheck, xfleet, xjava, xupdate
from fleetd.units.context import UnitContext, UnitName
from fleetd.units.parser import UnitError, UnitFile, parse
from fleetd.units.xfleet import Requirements
from fleetd.wire import names
from fleetd.wire.unitspec import (  # KILL_GRACE_S: the agent's wait after SIGKILL, for fencing
    KILL_GRACE_S,
    UnitConfig,
    UnitSpec,
)

__all__ = ["Unit", "UnitName", "content_hash", "load", "parse_name"]

NAME_MAX = names.NAME_MAX


def parse_name(name: str) -> UnitName:
    """Check a unit name by the one rule both sides share (fleetd.wire.names); raise
    UnitError naming what is wrong with it."""
    try:
        parts = names.split(name)
    except names.UnitNameError as exc:
        raise UnitError(_shown(name), None, str(exc)) from None
    return UnitName(full=name, prefix=parts.prefix, instance=parts.instance,
                    suffix=parts.suffix)


def _shown(name: str) -> str:
    """A refused name as the start of its error: as typed if it is short and printable,
    else quoted and cut (a 5000-character name, or one holding a terminal escape)."""
    if len(name) <= NAME_MAX and name.isprintable():
        return name
    return repr(name[:40]) + ("..." if len(name) > 40 else "")


def content_hash(text: str) -> str:
    """The sha256 that identifies a unit's content everywhere (registry, agent)."""
    return hashlib.sha256(text.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Unit:
    """A validated unit file."""

    name: str
    text: str
    hash: str
    file: UnitFile
    description: str
    driver: str
    config: UnitConfig  # what the agent's driver reads (fleetd.wire.unitspec)
    requirements: Requirements

    def spec(self, want: str, generation: int = 0) -> UnitSpec:
        """What the agent receives for this unit."""
        return protocol.unit_spec(self.name, self.hash, want, self.driver, self.config,
                                  generation)


def load(name: str, text: str, source: Optional[str] = None, template_ok: bool = False
         ) -> Unit:
    """Parse and validate ``text`` as the unit ``name``; ``source`` names the file in errors.

    A template (``web@.service``) is refused unless ``template_ok``; it is then checked
    as its instance ``web@0.service`` would be, since a template only runs as instances."""
    src = source or name
    uname = parse_name(name)
    if uname.is_template:
        if not template_ok:
            raise UnitError(src, None, f"{name} is a template; start an instance such as "
                                       f"{uname.prefix}@1.{uname.suffix}")
        uname = parse_name(f"{uname.prefix}@0.{uname.suffix}")
    ctx = UnitContext(parse(text, src), uname, src)
    description = ctx.single("Unit", "Description") or ""
    driver = xfleet.driver(ctx)  # [X-Java] and [X-Check] only beside a driver that reads them
    if driver == "java":
        config = xjava.config(ctx, service.config(ctx, needs_exec_start=False))
    elif driver == "systemd":
        config = systemd_text.config(ctx)  # systemd reads [Service] itself
    else:
        config = service.config(ctx)
    if driver != "systemd":
        config["check"] = xcheck.config(ctx)
        refs = secrets.environment(ctx)
        if refs:  # names only: the values join the spec on its machine (units/secrets.py)
            config["secret_environment"] = refs
    elif ctx.many(secrets.SECTION, secrets.OPTION):
        chosen = ctx.entry(xfleet.X, "Driver")
        assert chosen is not None  # systemd is never the default driver
        ctx.fail(ctx.many(secrets.SECTION, secrets.OPTION)[0],
                 f"only exec and java units take secrets, and Driver=systemd at "
                 f"{src}:{chosen.line} makes this a systemd unit (systemd reads its "
                 "environment itself)")
    if xfleet.on_peers_change(ctx, driver, bool(config.get("reload"))) == "reload":
        config["on_peers_change"] = "reload"
    requirements = xfleet.requirements(ctx, config.get("limits") or {})
    requirements = dataclasses.replace(requirements, update=xupdate.policy(ctx))
    needs: Tuple[str, ...] = ()
    if driver == "java":
        needs = xjava.capabilities(config.get("java") or {})
    elif driver == "systemd":
        needs = ("systemd",)
    if needs:
        requirements = dataclasses.replace(
            requirements, capabilities=requirements.capabilities + needs)
    if requirements.fence_after_s is not None:
        config["fence_after_s"] = requirements.fence_after_s  # the agent does the fencing
        stop = config.get("timeout_stop_s")
        if not isinstance(stop, (int, float)):
            ctx.fail(ctx.entry(xfleet.X, "FenceAfterSec"),
                     "needs a finite TimeoutStopSec= (fleetd starts another copy only "
                     "once the fenced one is surely stopped)")
        # the agent's stop: each ExecStop= and then KillSignal= get TimeoutStopSec=
        # each, SIGKILL its grace (KILL_GRACE_S, the one the agent waits)
        stops = len(config.get("stop") or ()) + 1
        requirements = dataclasses.replace(
            requirements,
            fence_wait_s=requirements.fence_after_s + stops * float(stop) + KILL_GRACE_S)
    return Unit(name=name, text=text, hash=content_hash(text), file=ctx.file,
                description=description, driver=driver, config=config,
                requirements=requirements)
