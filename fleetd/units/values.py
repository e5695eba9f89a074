"""What a template value may hold: text that stays on its line.

A unit is line-based: a line break in a value that a template writes (``--var``, a
machine's metadata or facts) would start a new directive the operator never wrote,
such as an ``ExecStartPre=`` that runs as root and is invisible in ``fleetctl cat``.
Control characters (an escape sequence in ``Description=``, a NUL) are no more a value
than a line break is. The one rule lives here, without Jinja, so fleetctl can apply it
to ``--var`` before sending and fleetd can apply it where variables enter and to every
``{{ expression }}`` a template writes.
"""

from __future__ import annotations

import re
from typing import Optional

# every character str.splitlines() (and so the unit parser) ends a line at
_LINE_BREAK = re.compile("[\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")
# Unicode's control characters (category Cc) but the tab, which is blank within a line
_CONTROL = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f]")


def problem(value: str) -> Optional[str]:
    """Why ``value`` cannot stand in a unit as one value (None: it can)."""
    found = _LINE_BREAK.search(value)
    if found:
        return f"has a line break ({_show(found.group())})"
    found = _CONTROL.search(value)
    if found:
        return f"has a control character ({_show(found.group())})"
    return None


def _show(char: str) -> str:
    return f"U+{ord(char):04X}"
