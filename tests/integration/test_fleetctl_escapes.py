"""Text fleetctl prints that came from elsewhere - a unit's Description=, a machine's
metadata, fleetd's errors - cannot drive the terminal: control characters are printed
escaped, as systemctl prints them (``\\x1b``). A real fleetd (no lab hosts needed: the
unit is submitted, not placed) and the real fleetctl."""

from __future__ import annotations

import subprocess
from typing import Any

from labkit import FLEETCTL, Fleet

TITLE = "\x1b]0;pwned\x07"  # sets the terminal's title
CLEAR = "\x1b[2J"  # clears the screen


def printed(out: Any) -> str:
    said = str(out.stdout + out.stderr)
    assert "\x1b" not in said and "\x07" not in said, repr(said)
    return said


def test_status_prints_a_description_escaped(lone_fleet: Fleet, tmp_path: Any) -> None:
    unit = tmp_path / "esc.service"
    unit.write_text(f"[Unit]\nDescription=hi {TITLE} and {CLEAR} done\n"
                    "[Service]\nExecStart=/bin/sleep 100\n")
    lone_fleet.ctl("submit", str(unit))
    said = printed(lone_fleet.ctl("status", "esc.service"))
    assert "● esc.service - hi \\x1b]0;pwned\\x07 and \\x1b[2J done\n" in said, said
    # -o json is JSON: its own escapes, the text unchanged
    assert "hi \\u001b]0;pwned\\u0007 and" in lone_fleet.ctl("status", "esc.service",
                                                            "-o", "json").stdout


def test_list_machines_prints_metadata_escaped(lone_fleet: Fleet) -> None:
    lone_fleet.ctl("machine", "add", "root@127.0.0.1:1", "--name", "m1", "--metadata",
                   f"note=a{CLEAR}b", "--agent-command", "true", "--no-wait")
    said = printed(lone_fleet.ctl("list-machines", "--full"))
    assert "note=a\\x1b[2Jb" in said, said


def test_errors_are_printed_escaped(lone_fleet: Fleet) -> None:
    """fleetd's answer quotes the unit name as it was asked for: fleetctl sends the name
    as it is (one path segment, quoted) and prints the answer escaped."""
    out = lone_fleet.ctl("status", f"x{CLEAR}{TITLE}?lines=1.service", check=False)
    assert out.returncode == 1
    said = printed(out)
    assert "x\\x1b[2J\\x1b]0;pwned\\x07?lines=1.service" in said, said
    assert "cannot reach fleetd" not in said, said


def test_every_error_goes_through_the_same_escape(tmp_path: Any) -> None:
    """Not only fleetd's answers: here the endpoint the error quotes is the caller's."""
    out = subprocess.run([FLEETCTL, "--endpoint", f"unix://{tmp_path}/no{CLEAR}.sock",
                          "list-units"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 1
    said = printed(out)
    assert f"Error: cannot reach fleetd at unix://{tmp_path}/no\\x1b[2J.sock" in said, said


def test_every_verb_sends_a_name_as_one_path_segment(lone_fleet: Fleet) -> None:
    """A ``?`` in a name was the start of a query for cat, machine remove and drain (fleetd
    was asked about ``a``): every verb's answer is about the name as it was given."""
    for args, name in ((("cat", "a?x.service"), "a?x.service"),
                       (("machine", "remove", "m?x"), "m?x"),
                       (("drain", "m?x"), "m?x")):
        out = lone_fleet.ctl(*args, check=False)
        assert out.returncode == 1, out
        assert name in out.stderr, (args, out.stderr)
