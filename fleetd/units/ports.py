"""``Ports=`` in ``[X-Fleet]``: the ports a unit serves, so that others can find it.

``Ports=8080 9090/udp`` (a list option: several assignments add up, an empty one
resets, as in systemd). Each word is ``PORT`` or ``PORT/tcp`` or ``PORT/udp``, PORT a
whole number 1-65535; TCP when no protocol is said. fleetd does not open, reserve or
check them: it only says where the unit is, ``address:port`` in ``list-units`` (field
``address``: the first port; field ``ports``: all) and to other units' templates
(``units('web@*.service')``). A port may come from a variable (``Ports={{ vars.port }}``):
it is read as the unit is probed, with its variables and no machine.

Why declared rather than discovered: a program may listen on several ports, or on one
it has not opened yet; what it serves is the author's statement, checked at submit.
"""

from __future__ import annotations

import dataclasses
from typing import List, Tuple

from fleetd.units.context import UnitContext

SECTION = "X-Fleet"
OPTION = "Ports"
PROTOCOLS = ("tcp", "udp")


@dataclasses.dataclass(frozen=True, order=True)
class Port:
    """One port a unit serves."""

    number: int
    protocol: str = "tcp"

    def __str__(self) -> str:
        return f"{self.number}/{self.protocol}"


def ports(ctx: UnitContext) -> Tuple[Port, ...]:
    """The unit's ``Ports=``, in the order written, each once; an error names the
    assignment's line and the word."""
    found: List[Port] = []
    for entry in ctx.many(SECTION, OPTION):
        for word in ctx.split(entry):
            number, slash, protocol = word.partition("/")
            if slash and protocol not in PROTOCOLS:
                ctx.fail(entry, f"{word!r}: the protocol is tcp or udp")
            port = Port(ctx.whole(entry, number, 1, 65535, f"{word!r}: the port"),
                        protocol or "tcp")
            if port in found:
                ctx.fail(entry, f"{port} is listed twice")
            found.append(port)
    return tuple(found)
