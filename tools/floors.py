"""The floors: the lowest version of each of fleetd's direct dependencies that
pyproject.toml allows, as pip pins (``name==X``), one a line.

``./run.sh test`` installs them into a venv of their own (.venv-floors) and runs the unit
tests there, so that a floor such as ``click>=8.1`` is one that was seen to work, not one
that was written once (issue 14 §4: fleetctl did not import on its own floor). The pins
are read from pyproject.toml, which stays the one place the floors are written.

Only the forms pyproject.toml uses are read, and anything else is refused naming its
``file:line`` rather than guessed at: ``name>=X`` (other clauses such as ``<Y`` may
follow; ``==X`` pins too), and one marker ``python_version OP 'X.Y'``, which decides
whether the dependency applies to the Python the pins are for. A dependency without a
floor is an error: there would be nothing to check.

Runs on the stdlib of Python 3.11+ (tomllib), so it needs no venv of its own:
    python3 tools/floors.py [--pyproject FILE] [--python 3.9] [--also pytest ...]
``--also NAME`` adds an optional dependency (of any extra) at its floor: the test tools.
"""

from __future__ import annotations

import argparse
import dataclasses
import operator
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from typing import Optional

import tomllib

_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?"
_REQUIREMENT = re.compile(
    rf"^\s*(?P<name>{_NAME})\s*(?:\[[^\]]*\])?\s*(?P<specs>[^;]*?)\s*(?:;\s*(?P<marker>.*?))?\s*$")
_CLAUSE = re.compile(r"^\s*(?P<op>===|==|>=|<=|~=|!=|>|<)\s*(?P<version>[A-Za-z0-9.*+!_-]+)\s*$")
_MARKER = re.compile(r"""^python_version\s*(?P<op>==|!=|>=|<=|>|<)\s*(?P<q>['"])"""
                     r"""(?P<version>[0-9]+(?:\.[0-9]+)*)(?P=q)$""")
_COMPARE: dict[str, Callable[[tuple[int, ...], tuple[int, ...]], bool]] = {
    "==": operator.eq, "!=": operator.ne, ">=": operator.ge, "<=": operator.le,
    ">": operator.gt, "<": operator.lt}


class FloorError(ValueError):
    """A requirement the floors cannot be read from; the message names its file:line."""


@dataclasses.dataclass(frozen=True)
class Requirement:
    name: str
    floor: str
    marker: Optional[tuple[str, tuple[int, ...]]]  # python_version's operator and version

    def applies(self, python: tuple[int, int]) -> bool:
        """Does the marker admit this Python (``python_version`` is its major.minor)?"""
        if self.marker is None:
            return True
        op, version = self.marker
        return _COMPARE[op](python, version)

    @property
    def pin(self) -> str:
        return f"{self.name}=={self.floor}"


def parse(text: str, where: str) -> Requirement:
    """One PEP 508 requirement string of the forms above, or FloorError naming ``where``."""
    whole = _REQUIREMENT.match(text)
    if whole is None:
        raise FloorError(f"{where}: {text!r}: not a requirement (name, version clauses, marker)")
    floors = []
    for clause in filter(None, (c.strip() for c in whole["specs"].split(","))):
        m = _CLAUSE.match(clause)
        if m is None:
            raise FloorError(f"{where}: {text!r}: {clause!r} is not a version clause")
        if m["op"] in (">=", "==", "===") and "*" not in m["version"]:
            floors.append(m["version"])
    if len(floors) != 1:
        raise FloorError(f"{where}: {text!r}: want exactly one floor (>=X or ==X), "
                         f"found {len(floors)}")
    marker = None
    if whole["marker"]:
        m = _MARKER.match(whole["marker"].strip())
        if m is None:
            raise FloorError(f"{where}: {text!r}: marker {whole['marker']!r} is not "
                             "python_version OP 'X.Y' (the only marker this reads)")
        marker = (m["op"], tuple(int(p) for p in m["version"].split(".")))
    return Requirement(whole["name"], floors[0], marker)


def _line_of(lines: Sequence[str], text: str) -> int:
    """The line of pyproject.toml that holds the requirement string (1-based; 0: not found,
    e.g. a string written across lines)."""
    for number, line in enumerate(lines, 1):
        if f'"{text}"' in line or f"'{text}'" in line:
            return number
    return 0


def floors(pyproject: str, path: str, python: tuple[int, int],
           also: Iterable[str] = ()) -> list[str]:
    """The pins for ``python``: every [project] dependency whose marker admits it, then each
    optional dependency named in ``also`` (by its name, from whichever extra lists it)."""
    try:
        data = tomllib.loads(pyproject)
    except tomllib.TOMLDecodeError as exc:
        raise FloorError(f"{path}: {exc}") from None
    project = data.get("project", {})
    lines = pyproject.splitlines()

    def read(text: object, table: str) -> Requirement:
        if not isinstance(text, str):
            raise FloorError(f"{path}: {table}: {text!r} is not a string")
        line = _line_of(lines, text)
        return parse(text, f"{path}:{line}" if line else f"{path} ({table})")

    pins = [r.pin for r in (read(t, "[project] dependencies")
                            for t in project.get("dependencies", [])) if r.applies(python)]
    optional = {}
    for extra, texts in project.get("optional-dependencies", {}).items():
        for text in texts:
            r = read(text, f"[project.optional-dependencies] {extra}")
            optional[r.name.lower()] = r
    for name in also:
        if name.lower() not in optional:
            raise FloorError(f"{path}: {name!r} is in no [project.optional-dependencies] extra")
        pins.append(optional[name.lower()].pin)
    return pins


def _python(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"([0-9]+)\.([0-9]+)", text)
    if m is None:
        raise argparse.ArgumentTypeError(f"{text!r}: want MAJOR.MINOR, e.g. 3.9")
    return int(m[1]), int(m[2])


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pyproject", default="pyproject.toml")
    ap.add_argument("--python", type=_python, default=sys.version_info[:2],
                    help="the Python whose markers count (default: this one)")
    ap.add_argument("--also", action="append", default=[], metavar="NAME",
                    help="an optional dependency to pin at its floor too (repeatable)")
    args = ap.parse_args(argv)
    try:
        with open(args.pyproject, encoding="utf-8") as f:
            text = f.read()
        pins = floors(text, args.pyproject, args.python, args.also)
    except (OSError, FloorError) as exc:
        print(f"floors: {exc}", file=sys.stderr)
        return 1
    print("\n".join(pins))
    return 0


if __name__ == "__main__":
    sys.exit(main())
