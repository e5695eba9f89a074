"""Tables as fleetctl prints them: a legend, then columns padded to fit; and ``visible``,
which every printer of text that came from elsewhere (fleetd's answers, hence units,
hosts and agents) passes it through, so that nothing printed can drive the terminal.

A unit's own output (``journal``, and the log lines ``status`` shows) is the exception:
it is printed raw, as journalctl prints a program's output, since colour codes there
are the program's and a log copied from the terminal should read as the program wrote it.
"""

from __future__ import annotations

import re
import time
from typing import Any, Optional, Sequence

import click

# C0 controls but newline and tab, DEL, C1 controls (an 8-bit CSI is one), and the
# bidirectional overrides and isolates, which reorder what follows them on the line
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e"
                      "\u2066-\u2069]")
_LINE_BREAK = re.compile("[\n\t]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def visible(text: str, lines: bool = False) -> str:
    """``text`` with every control character written out as systemctl does (ESC as the
    four characters ``\\x1b``): a Description= or an error cannot set the terminal's
    title, clear it, or hide what follows. ``lines``: newlines and tabs stay (a message
    of several lines); else they are escaped too (one table cell, one line)."""
    text = _CONTROL.sub(_escape, text)
    return text if lines else _LINE_BREAK.sub(_escape, text)


def echo(text: str, err: bool = False, lines: bool = False) -> None:
    """``click.echo`` for a message that quotes what came from elsewhere (``visible``):
    one line unless ``lines``."""
    click.echo(visible(text, lines), err=err)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    lines += ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return visible(",".join(f"{k}={v}" for k, v in sorted(value.items()))) or "-"
    return visible(str(value))


def ago(ts: Optional[float], now: Optional[float] = None) -> str:
    if ts is None:
        return "never"
    delta = max(0.0, (now or time.time()) - ts)
    if delta < 60:
        return f"{delta:.1f}s ago"
    if delta < 3600:
        return f"{delta / 60:.0f}m ago"
    return f"{delta / 3600:.1f}h ago"

