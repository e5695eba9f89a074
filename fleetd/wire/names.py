"""The one rule for a unit's name, on both sides of the wire.

systemd's characters (unit-name.c: letters, digits and ``: _ . \\ -``), the types fleetd
runs (``.service``), ``prefix@instance.service`` for instances and ``prefix@.service``
for templates. Two rules are stricter than systemd's, because the agent derives file
names from a unit's name and passes it to ``systemctl``:

- the prefix begins with a letter, a digit or ``_ : \\``: never ``.`` (a hidden file,
  and ``..`` near a path) nor ``-`` (``systemctl start -x.service`` reads an option);
- at most ``NAME_MAX`` characters, which leaves room on a 255-byte file system name for
  everything the agent makes of it: ``units/NAME.json.tmp.PID``, ``logs/NAME.log.N``,
  the cgroup's escaped directory, systemd's ``NAME.d/`` drop-ins.

A name that passes ``check`` is safe as one path component and as one argument.
"""

from __future__ import annotations

import re
from typing import NamedTuple, Optional

NAME_MAX = 200  # characters (ASCII only, so bytes too); systemd's own limit is 255
SUFFIX = "service"

_CHARS = r"[A-Za-z0-9:_.\\-]"
_NAME = re.compile(rf"([A-Za-z0-9:_\\]{_CHARS}*)(@({_CHARS}*))?\.({SUFFIX})")

RULE = ("want NAME.service or NAME@INSTANCE.service: letters, digits and : _ . \\ - only, "
        f"not beginning with . or -, at most {NAME_MAX} characters")


class UnitNameError(ValueError):
    """A string that is not a unit name fleetd accepts."""


class Parts(NamedTuple):
    prefix: str
    instance: Optional[str]  # None: a plain unit; "": the template itself
    suffix: str


def problem(name: object) -> Optional[str]:
    """Why ``name`` is not a valid unit name, or None if it is."""
    if not isinstance(name, str):
        return f"a unit name is a string, not {type(name).__name__}"
    if len(name) > NAME_MAX:
        return f"invalid unit name ({len(name)} characters): {RULE}"
    if not _NAME.fullmatch(name):
        return f"invalid unit name {name!r}: {RULE}"
    return None


def split(name: str) -> Parts:
    """``name`` in its parts; raise UnitNameError naming what is wrong with it."""
    why = problem(name)
    if why is not None:
        raise UnitNameError(why)
    m = _NAME.fullmatch(name)
    assert m is not None
    return Parts(m.group(1), m.group(3), m.group(4))


def is_valid(name: object) -> bool:
    return problem(name) is None


def is_template(name: str) -> bool:
    """``web@.service``: a template, which is never placed or run itself."""
    m = _NAME.fullmatch(name)
    return m is not None and m.group(3) == ""

