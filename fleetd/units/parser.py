"""systemd's unit-file syntax: sections, repeated keys, continuations, comments.

The parser keeps every assignment in order with its line number, so that later layers
can name ``file:line`` in their errors and so that options fleetd does not interpret are
passed through untouched to the systemd driver. It follows systemd's own reader
(src/shared/conf-parser.c): whitespace around ``=`` is dropped, ``#`` and ``;`` start
comment lines, a trailing backslash joins the next line with a space (comment lines
inside a continuation are skipped), and an assignment outside any section is an error.

It only uses the standard library: the agent may need it one day, and it must stay
cheap to import for fleetctl.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Dict, Iterator, List, Optional, Tuple


class UnitError(ValueError):
    """A unit file is not valid; ``str()`` names ``file:line: reason``."""

    def __init__(self, source: str, line: Optional[int], message: str) -> None:
        self.source = source
        self.line = line
        self.message = message
        where = f"{source}:{line}" if line else source
        super().__init__(f"{where}: {message}")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One ``Key=Value`` assignment and where it stood."""

    section: str
    key: str
    value: str
    line: int


@dataclasses.dataclass(frozen=True)
class UnitFile:
    """A parsed unit file: its assignments in file order."""

    source: str
    entries: Tuple[Entry, ...]
    # each section's first ``[Name]`` line, in file order: an error about a section as a
    # whole (``[X-Java]`` beside a Driver= that does not read it) names its header, and a
    # section with no assignments is still there
    headers: Tuple[Tuple[str, int], ...] = ()

    def header(self, name: str) -> Optional[int]:
        """The line of the first ``[name]`` header, None if the file has none."""
        return next((line for section, line in self.headers if section == name), None)

    def sections(self) -> List[str]:
        seen: Dict[str, None] = {}
        for e in self.entries:
            seen.setdefault(e.section)
        return list(seen)

    def section(self, name: str) -> Iterator[Entry]:
        return (e for e in self.entries if e.section == name)

    def values(self, section: str, *keys: str) -> List[Entry]:
        """All assignments of a list-valued key (under any of its spellings ``keys``),
        honouring systemd's reset rule: an empty assignment drops everything assigned
        before it."""
        out: List[Entry] = []
        for e in self.entries:
            if e.section == section and e.key in keys:
                if e.value == "":
                    out = []
                else:
                    out.append(e)
        return out

    def last(self, section: str, *keys: str) -> Optional[Entry]:
        """The assignment that wins for a single-valued key (the last one, under any of
        the spellings ``keys``)."""
        found = None
        for e in self.entries:
            if e.section == section and e.key in keys:
                found = e
        return found


def _is_comment(stripped: str) -> bool:
    return not stripped or stripped[0] in "#;"


def _continues(raw: str) -> bool:
    """A line continues when its very last characters are an odd number of backslashes
    (a backslash followed by spaces does not continue it, as in systemd)."""
    return (len(raw) - len(raw.rstrip("\\"))) % 2 == 1


# Line ends as systemd's read_line() knows them; not str.splitlines(), which also breaks
# at \v, \f, \x1c-\x1e, \x85 and U+2028/2029 (inside a value, for systemd)
_LINE_END = re.compile(r"\r\n|\r|\n")


def _line_at(text: str, index: int) -> int:
    return len(_LINE_END.findall(text, 0, index)) + 1


def _check_text(text: str, source: str) -> None:
    """Refuse what no unit file holds: a NUL, or a lone surrogate (JSON can carry
    ``"\\ud800"``, which no file on disk can, and which no hash or agent can encode)."""
    if "\x00" in text:
        raise UnitError(source, _line_at(text, text.index("\x00")),
                        "unit file contains a NUL byte")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise UnitError(source, _line_at(text, exc.start),
                        f"not UTF-8 text: a lone surrogate U+{ord(text[exc.start]):04X}"
                        ) from None


def parse(text: str, source: str = "<unit>") -> UnitFile:
    """Parse unit-file text; raise UnitError naming ``source:line`` on bad input."""
    _check_text(text, source)
    if text.startswith("\ufeff"):
        text = text[1:]  # a UTF-8 byte-order mark, which systemd skips too
    entries: List[Entry] = []
    headers: Dict[str, int] = {}
    section: Optional[str] = None
    pending: Optional[str] = None  # a continued line being assembled
    pending_line = 0
    for number, raw in enumerate(_LINE_END.split(text), start=1):
        stripped = raw.strip()
        if _is_comment(stripped) and (stripped or pending is None):
            continue  # comments are skipped, even inside a continuation, as systemd does
        if pending is None:
            pending, pending_line = "", number
        if _continues(raw):
            pending += raw[:-1] + " "  # the backslash becomes a space
            continue
        logical, at = pending + raw, pending_line
        pending = None
        section = _take(logical.strip(), at, section, entries, headers, source)
    if pending is not None and pending.strip():
        # systemd accepts a continuation that runs into the end of the file
        _take(pending.strip(), pending_line, section, entries, headers, source)
    return UnitFile(source=source, entries=tuple(entries), headers=tuple(headers.items()))


def _take(logical: str, at: int, section: Optional[str], entries: List[Entry],
          headers: Dict[str, int], source: str) -> Optional[str]:
    """Record one logical line; return the section in force after it."""
    if logical.startswith("["):
        if not logical.endswith("]") or len(logical) < 3:
            raise UnitError(source, at, f"invalid section header {logical!r}")
        name = logical[1:-1]
        if any(c in name for c in "[]") or name != name.strip():
            raise UnitError(source, at, f"invalid section name {name!r}")
        headers.setdefault(name, at)
        return name
    if logical.startswith("."):
        raise UnitError(source, at, f"directive {logical.split()[0]!r} is not supported")
    key, eq, value = logical.partition("=")
    key = key.strip()
    if not eq:
        raise UnitError(source, at, f"expected 'Key=Value' or '[Section]', got {logical!r}")
    if not key:
        raise UnitError(source, at, "assignment without a key")
    if any(c.isspace() for c in key):
        raise UnitError(source, at, f"invalid key {key!r}: keys have no spaces")
    if section is None:
        raise UnitError(source, at, f"{key}= outside of any section")
    entries.append(Entry(section=section, key=key, value=value.strip(), line=at))
    return section


def serialise(unit: UnitFile) -> str:
    """Unit-file text with the same meaning: one assignment a line, sections in order."""
    out: List[str] = []
    current: Optional[str] = None
    for e in unit.entries:
        if e.section != current:
            if out:
                out.append("")
            out.append(f"[{e.section}]")
            current = e.section
        line = f"{e.key}={e.value}"
        # a value ending in an odd run of backslashes would continue onto the next line:
        # a trailing space stops that, and parsing strips it again
        out.append(line + " " if _continues(line) else line)
    return "\n".join(out) + ("\n" if out else "")
