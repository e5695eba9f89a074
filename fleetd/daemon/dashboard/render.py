"""The dashboard's templates rendered: one jinja2 environment, autoescaped, with the
few helpers the pages use to print numbers. ``fragment``: the page's ``main`` alone,
which the script swaps in when events come."""

from __future__ import annotations

import functools
import time
from typing import Any, Mapping

import jinja2

from fleetd.daemon.dashboard import pages
from fleetd.daemon.dashboard.templates import TEMPLATES


def clock(t: float) -> str:
    """An event's time as the operator's day reads it (UTC, as fleetd's logs)."""
    return time.strftime("%H:%M:%S", time.gmtime(t))


@functools.lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.DictLoader(TEMPLATES), autoescape=True,
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    env.globals.update(size=pages.size, seconds=pages.seconds, clock=clock,
                       page_links=pages.page_links)
    return env


def render(name: str, context: Mapping[str, Any], fragment: bool = False) -> str:
    """Template ``name`` with ``context``; ``fragment``: its ``main`` block alone."""
    template = environment().get_template(name)
    if not fragment:
        return template.render(**context)
    return "".join(template.blocks["main"](template.new_context(dict(context))))
