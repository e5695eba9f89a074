"""OnPeersChange=reload on the host: a running unit takes a new spec by its ExecReload=.

A unit whose template reads other units' placements (``units()``) is re-rendered when
they move; fleetd marks its spec ``reload`` and gives it a ``base`` that stays the same
while only those placements change (fleetd.agent.reconciler decides RELOAD). Here, as
systemd's reload: each ExecReload= runs to its end with the NEW spec's environment and
$MAINPID, under TimeoutStartSec= (systemd times a reload by it too); then the unit keeps
its program and takes the new spec (hash, base), so that what it reports is what fleetd
expects. A failed reload leaves the old spec in place and says why: the supervisor then
restarts the unit, which takes the new spec the ordinary way.

Only process units (exec, java): the agent runs their control commands itself.
"""

from __future__ import annotations

import logging
from typing import Optional

from fleetd.agent.managed import Managed
from fleetd.agent.runner import Port
from fleetd.agent.runs import Runs
from fleetd.drivers.base import Driver, ProcessDriver
from fleetd.wire.unitspec import UnitSpec

log = logging.getLogger("fleet-agent")


async def reload(port: Port, runs: Runs, m: Managed, driver: Driver, spec: UnitSpec
                 ) -> Optional[str]:
    """Reload ``m``'s running program into ``spec`` (under the unit's lock): None when
    it took the new spec, otherwise why not (``m`` then keeps its old spec)."""
    handle = m.handle
    if not driver.capabilities.control_commands:
        return f"driver {driver.name} runs no ExecReload="
    if handle is None or m.gone.is_set():
        return "its program is not running"
    commands = (spec.get("config") or {}).get("reload") or []
    if not commands:
        return "the new spec has no ExecReload="
    proc: ProcessDriver = driver  # type: ignore[assignment]  # control_commands says so
    old = m.spec
    m.spec = spec  # the new environment for the commands, as systemd reloads
    ctx = port.context(m)
    timeout = m.config.get("timeout_start_s")
    for command in commands:
        _outcome, why = await runs.control(m, proc, ctx, command, "ExecReload",
                                           {"MAINPID": str(handle.pid)}, timeout)
        if why is None and m.gone.is_set():
            why = "its program ended during ExecReload="
        if why is not None:
            m.spec = old
            return why
    port.save(m)  # a restarted agent re-adopts the program as the new spec's
    port.report(m)
    log.info("%s: reloaded (pid %d kept)", m.name, handle.pid)
    return None
