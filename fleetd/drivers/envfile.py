"""EnvironmentFile=: systemd's environment files, read on the host at every start.

The syntax is systemd's own parser (src/basic/env-file.c), state for state, because
these files are usually shared with systemd units and shell scripts, and a value that
reads differently here than under systemd is a bug nobody finds until production:

- ``KEY=VALUE`` per line; whitespace around the key and before the value is dropped,
  and trailing whitespace of an unquoted value too;
- lines whose first non-blank character is ``#`` or ``;`` are comments; a line
  without ``=`` is ignored;
- unquoted: a backslash takes the next character literally, and a backslash before
  the line's end continues the value on the next line;
- ``'single quotes'``: everything literal up to the next ``'`` (newlines included);
- ``"double quotes"``: ``\\"``, ``\\\\``, ``\\``` and ``\\$`` lose their backslash,
  a backslash before a newline joins the lines, any other backslash stays;
- text after a closing quote continues the same value (``A="x"y`` is ``xy``);
- keys that are not valid variable names are dropped, as systemd drops them.

The option's value is a path, optionally prefixed with ``-`` (a missing or unreadable
file is then skipped), and may be a glob (every match, in sorted order). Later files
override earlier ones, and files override Environment= (systemd.exec(5)); the driver
does that merge. Nothing is expanded: ``$HOME`` in a value stays ``$HOME``.

Only a regular file of at most ``files.MAX_BYTES`` is read (a FIFO or a device named
here fails the start with that reason, and never blocks the agent).
"""

from __future__ import annotations

import glob
import re
from typing import Dict, List, Optional, Sequence, Tuple

from fleetd.drivers import files

COMMENTS = "#;"
WHITESPACE = " \t\n\r"
NEWLINE = "\n\r"
SHELL_NEED_ESCAPE = '"\\`$'
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

(PRE_KEY, KEY, PRE_VALUE, VALUE, VALUE_ESCAPE, SINGLE_QUOTE, DOUBLE_QUOTE, DOUBLE_QUOTE_ESCAPE,
 COMMENT, COMMENT_ESCAPE) = range(10)


class EnvironmentFileError(Exception):
    """A required environment file could not be read; the message names it."""


def parse(text: str) -> List[Tuple[str, str]]:
    """The assignments in ``text``, in order (a key may repeat: the last one wins)."""
    out: List[Tuple[str, str]] = []
    state = PRE_KEY
    key: List[str] = []
    value: List[str] = []
    key_ws: Optional[int] = None  # where trailing whitespace of the key starts
    value_ws: Optional[int] = None  # same for an unquoted value

    def push(strip_value: bool) -> None:
        k = "".join(key[:key_ws] if key_ws is not None else key)
        v = value[:value_ws] if strip_value and value_ws is not None else value
        if _NAME.fullmatch(k):
            out.append((k, "".join(v)))

    for c in text:
        if state == PRE_KEY:
            if c in COMMENTS:
                state = COMMENT
            elif c not in WHITESPACE:
                state, key, key_ws = KEY, [c], None
        elif state == KEY:
            if c in NEWLINE:
                state = PRE_KEY  # no "=" on this line: not an assignment
            elif c == "=":
                state, value, value_ws = PRE_VALUE, [], None
            else:
                if c not in WHITESPACE:
                    key_ws = None
                elif key_ws is None:
                    key_ws = len(key)
                key.append(c)
        elif state == PRE_VALUE:
            if c in NEWLINE:
                push(strip_value=False)
                state = PRE_KEY
            elif c == "'":
                state = SINGLE_QUOTE
            elif c == '"':
                state = DOUBLE_QUOTE
            elif c == "\\":
                state = VALUE_ESCAPE
            elif c not in WHITESPACE:
                state = VALUE
                value.append(c)
        elif state == VALUE:
            if c in NEWLINE:
                push(strip_value=True)
                state = PRE_KEY
            elif c == "\\":
                state, value_ws = VALUE_ESCAPE, None
            else:
                if c not in WHITESPACE:
                    value_ws = None
                elif value_ws is None:
                    value_ws = len(value)
                value.append(c)
        elif state == VALUE_ESCAPE:
            state = VALUE
            if c not in NEWLINE:  # an escaped newline joins the lines
                value.append(c)
        elif state == SINGLE_QUOTE:
            if c == "'":
                state = PRE_VALUE
            else:
                value.append(c)
        elif state == DOUBLE_QUOTE:
            if c == '"':
                state = PRE_VALUE
            elif c == "\\":
                state = DOUBLE_QUOTE_ESCAPE
            else:
                value.append(c)
        elif state == DOUBLE_QUOTE_ESCAPE:
            state = DOUBLE_QUOTE
            if c in SHELL_NEED_ESCAPE:
                value.append(c)
            elif c != "\n":
                value.extend(("\\", c))
        elif state == COMMENT:
            if c == "\\":
                state = COMMENT_ESCAPE
            elif c in NEWLINE:
                state = PRE_KEY
        else:  # COMMENT_ESCAPE: since systemd 254 a comment does not continue
            state = PRE_KEY if c in NEWLINE else COMMENT
    if state in (PRE_VALUE, VALUE, VALUE_ESCAPE, SINGLE_QUOTE, DOUBLE_QUOTE,
                 DOUBLE_QUOTE_ESCAPE):
        push(strip_value=state == VALUE)
    return out


def load(specs: Sequence[str]) -> Dict[str, str]:
    """The merged environment of EnvironmentFile= values ``specs``, read now.

    Raises EnvironmentFileError for a required file that is missing or unreadable."""
    env: Dict[str, str] = {}
    for spec in specs:
        optional = spec.startswith("-")
        pattern = spec[1:] if optional else spec
        paths = sorted(glob.glob(pattern)) if glob.has_magic(pattern) else [pattern]
        if not paths and not optional:
            raise EnvironmentFileError(f"EnvironmentFile={pattern}: no file matches")
        for path in paths:
            try:  # never blocks (a FIFO), never unbounded (/dev/zero): see files
                text = files.read_regular(path).decode("utf-8", errors="surrogateescape")
            except OSError as exc:
                if optional:
                    continue
                raise EnvironmentFileError(
                    f"EnvironmentFile={path}: {exc.strerror or exc}") from None
            env.update(parse(text))
    return env
