"""fleetd.cli.output.visible: what fleetctl prints cannot drive the terminal, in every
table (list-units, list-unit-files, list-machines) as in messages."""

from __future__ import annotations

from typing import Any, Dict, List

import pytest

from fleetd.cli import listing
from fleetd.cli.output import table, visible


@pytest.mark.parametrize("text, shown", [
    ("plain text, ünïcode ✓", "plain text, ünïcode ✓"),
    ("\x1b]0;pwned\x07", "\\x1b]0;pwned\\x07"),
    ("\x1b[2J", "\\x1b[2J"),
    ("a\x00b\x7fc", "a\\x00b\\x7fc"),
    ("8-bit CSI \x9b2J", "8-bit CSI \\x9b2J"),
    ("bidi \u202eevil\u202c and \u2066x\u2069", "bidi \\u202eevil\\u202c and \\u2066x\\u2069"),
    ("two\nlines\tand a tab\r", "two\\x0alines\\x09and a tab\\x0d"),
])
def test_visible(text: str, shown: str) -> None:
    assert visible(text) == shown


def test_visible_keeps_the_lines_of_a_message() -> None:
    assert visible("line 1\n\tline 2\x1b[2J\r", lines=True) == "line 1\n\tline 2\\x1b[2J\\x0d"


UNIT = {"unit": "a.service", "machine": "m1", "state": "failed", "pid": None,
        "health": "unknown\x1b[2J", "desired": "launched", "hash": "abc", "restarts": 0,
        "exit_status": 1, "error": "ExecStart=/bin/\x1b]0;pwned\x07 not found",
        "started_at": None}
UNIT_FILE = {"unit": "a.service", "hash": "abc", "desired": "launched", "state": "failed",
             "machine": "m1", "reason": "failed on m1: \x1b]0;pwned\x07", "reschedule": {}}
MACHINE = {"name": "m1", "address": "10.0.0.1", "state": "error",
           "error": "agent said \x1b[2J", "metadata": {"note": "\x1b]0;pwned\x07"},
           "units": 0, "last_seen": None, "machine_id": "id\x1b[2J"}


@pytest.mark.parametrize("row, columns", [
    (UNIT, listing.UNIT_COLUMNS),
    (UNIT_FILE, listing.UNIT_FILE_COLUMNS),
    (MACHINE, listing.MACHINE_COLUMNS),
])
def test_every_column_of_every_table_is_escaped(row: Dict[str, Any],
                                                columns: Dict[str, Any]) -> None:
    for full in (False, True):
        cells: List[List[Any]] = [[get(row, full) for _, get in columns.values()]]
        text = table([header for header, _ in columns.values()], cells)
        assert "\x1b" not in text and "\x07" not in text, text
        assert "\\x1b" in text
