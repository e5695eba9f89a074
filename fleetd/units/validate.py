"""A unit as it reads on any machine: rendered with its variables, machine.* left open.

Both the API (at submit, to refuse bad units with file:line) and the engine (for the
scheduling requirements, which must not depend on the machine they choose) need this.
"""

from __future__ import annotations

from typing import Dict

from fleetd.units import render
from fleetd.units.model import Unit, load, parse_name


def validate(name: str, text: str, variables: Dict[str, str], source: str) -> Unit:
    """The unit as it would be on any machine: machine.* references left as placeholders."""
    uname = parse_name(name)
    probed = render.probe(text, name, uname.prefix, uname.instance, variables, source)
    return load(name, probed, source, template_ok=True)
