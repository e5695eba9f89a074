"""Looking up a unit's options: specifiers expanded, errors located, misspellings caught.

Every section reader (service.py, xfleet.py, ...) goes through one ``UnitContext``, so
that an error always reads ``file:line: Option=: why`` and so that a misspelt option in
one of fleetd's own ``[X-...]`` sections is an error with a suggestion instead of a
silently ignored setting. Unknown options in systemd's sections are kept: the systemd
driver passes them through.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from typing import Dict, List, NoReturn, Optional, Sequence

from fleetd.units.parser import Entry, UnitError, UnitFile
from fleetd.units.timespan import TimespanError, parse_timespan
from fleetd.wire import execline
from fleetd.wire.execline import Command
from fleetd.wire.numbers import NumberError, parse_float, parse_int

# fleet's old spellings, still accepted so that fleet users' units load unchanged
ALIASES: Dict[str, Dict[str, str]] = {
    "X-Fleet": {
        "X-ConditionMachineID": "MachineID",
        "X-ConditionMachineBootID": "MachineID",
        "X-ConditionMachineOf": "MachineOf",
        "X-ConditionMachineMetadata": "MachineMetadata",
        "X-Conflicts": "Conflicts",
    },
}

_TRUE = ("1", "yes", "y", "true", "t", "on")
_FALSE = ("0", "no", "n", "false", "f", "off")


@dataclasses.dataclass(frozen=True)
class UnitName:
    """``prefix@instance.suffix`` split into its parts (see model.parse_name)."""

    full: str
    prefix: str
    instance: Optional[str]  # None: plain unit; "": the template itself
    suffix: str

    @property
    def is_template(self) -> bool:
        return self.instance == ""

    @property
    def template(self) -> Optional[str]:
        """``web@.service`` for ``web@3.service``; None for a plain unit."""
        return None if self.instance is None else f"{self.prefix}@.{self.suffix}"


def unescape_instance(text: str) -> str:
    """systemd's unit_name_unescape: ``-`` is ``/`` and ``\\xNN`` is that byte."""
    out = bytearray()
    i = 0
    while i < len(text):
        if text[i] == "-":
            out += b"/"
            i += 1
        elif text[i] == "\\" and re.fullmatch(r"x[0-9a-fA-F]{2}", text[i + 1:i + 4]):
            out.append(int(text[i + 2:i + 4], 16))
            i += 4
        else:
            out += text[i].encode()
            i += 1
    return out.decode(errors="replace")


class UnitContext:
    """Options of one unit file, as the section readers need them."""

    def __init__(self, unit_file: UnitFile, name: UnitName, source: str) -> None:
        self.file = unit_file
        self.name = name
        self.source = source

    def fail(self, entry: Optional[Entry], why: str) -> NoReturn:
        if entry is None:
            raise UnitError(self.source, None, why)
        raise UnitError(self.source, entry.line, f"{entry.key}=: {why}")

    def expand(self, entry: Entry, text: Optional[str] = None) -> str:
        """The value (or ``text``, a part of it) with systemd's name specifiers
        (%n %N %p %i %I %%) expanded."""
        name = self.name
        table = {
            "n": name.full,
            "N": name.full[: -len(name.suffix) - 1],
            "p": name.prefix,
            "i": name.instance or "",
            "I": unescape_instance(name.instance or ""),
            "%": "%",
        }

        def sub(m: re.Match[str]) -> str:
            key = m.group(1)
            if key not in table:
                self.fail(entry, f"specifier %{key} is not supported here (fleetd expands "
                                 "%n %N %p %i %I %%; for host facts use {{ machine.* }})")
            return table[key]

        return re.sub(r"%(.)", sub, entry.value if text is None else text, flags=re.DOTALL)

    def _key(self, section: str, key: str) -> List[str]:
        aliases = [a for a, k in ALIASES.get(section, {}).items() if k == key]
        return [key, *aliases]

    def entry(self, section: str, key: str) -> Optional[Entry]:
        """The assignment that wins for a single-valued option (the last one)."""
        return self.file.last(section, *self._key(section, key))

    def single(self, section: str, key: str) -> Optional[str]:
        """The winning value, or None if unset; an empty assignment resets to the
        default, as in systemd."""
        entry = self.entry(section, key)
        return None if entry is None or entry.value == "" else self.expand(entry)

    def many(self, section: str, key: str) -> List[Entry]:
        """Every assignment of a list option, after the last empty one (systemd's reset)."""
        return self.file.values(section, *self._key(section, key))

    def split(self, entry: Entry) -> List[str]:
        """One assignment's value split into words as systemd 252 splits them
        (extract_first_word: quotes, escapes), then each word's specifiers expanded, as
        config_parse_environ and the unit-name lists do. So an instance's escaped space
        (``%I`` of ``app@a\\x20b``) stays inside its word, where expanding first would
        split it (tests/integration/test_systemd_words.py). A bad quote is an error
        naming its line."""
        try:
            words = execline.split_words(entry.value)
        except execline.CommandLineError as exc:
            self.fail(entry, str(exc))
        return [self.expand(entry, word) for word in words]

    def command(self, entry: Entry) -> Command:
        """One command line split as systemd 252's config_parse_exec splits it: into
        words (quotes, escapes, prefixes) first, then each word's specifiers expanded, so
        that ``%I``'s escaped space stays in its word and ``%i`` keeps its backslash."""
        try:
            command = execline.split(entry.value)
        except execline.CommandLineError as exc:
            self.fail(entry, str(exc))
        words = tuple(self.expand(entry, word) for word in command.words)
        return dataclasses.replace(command, words=words)

    def words(self, section: str, key: str) -> List[str]:
        """A list option's values, each assignment split into words (``split``), after
        systemd's empty-assignment reset."""
        return [word for entry in self.many(section, key) for word in self.split(entry)]

    def boolean(self, section: str, key: str, default: bool) -> bool:
        value = self.single(section, key)
        if value is None:
            return default
        if value.lower() in _TRUE:
            return True
        if value.lower() in _FALSE:
            return False
        self.fail(self.entry(section, key), f"{value!r} is not a boolean (yes/no, true/false, 1/0)")

    def whole(self, entry: Optional[Entry], text: str, lo: int, hi: int, what: str = ""
              ) -> int:
        """``text`` (a value, or a part of one: ``what``, like "the port") as a whole
        number in [lo, hi], read the one way fleetd reads numbers (fleetd.wire.numbers):
        ASCII digits only, since ``isdigit()`` takes ``²``, which ``int()`` refuses."""
        try:
            return parse_int(text, lo, hi)
        except NumberError as exc:
            self.fail(entry, f"{what}: {exc}" if what else str(exc))

    def decimal(self, entry: Optional[Entry], text: str, lo: float, hi: float) -> float:
        """``text`` as a finite number in [lo, hi]: never ``nan``, ``inf`` or ``1e999``,
        which ``float()`` takes and which then break every sum they enter."""
        try:
            return parse_float(text, lo, hi)
        except NumberError as exc:
            self.fail(entry, str(exc))

    def count(self, section: str, key: str, default: int, lo: int, hi: int) -> int:
        """A single-valued whole-number option, ``default`` when unset."""
        value = self.single(section, key)
        if value is None:
            return default
        return self.whole(self.entry(section, key), value, lo, hi)

    def timespan(self, section: str, key: str, default: float) -> float:
        """A systemd time span in seconds (``5s``, ``1min 30s``, ``infinity``)."""
        value = self.single(section, key)
        if value is None:
            return default
        try:
            return parse_timespan(value)
        except TimespanError as exc:
            self.fail(self.entry(section, key), str(exc))

    def finite_timespan(self, section: str, key: str, default: float, hint: str = ""
                        ) -> float:
        """``timespan`` for options where ``infinity`` has no meaning fleetd or its
        agent can honour (``hint`` says what to write instead)."""
        seconds = self.timespan(section, key, default)
        if math.isinf(seconds):
            self.fail(self.entry(section, key), f"must be a finite time span{hint}")
        return seconds

    def check_known(self, section: str, known: Sequence[str]) -> None:
        """Refuse options fleetd does not know in its own sections, with a suggestion.

        ``Url=`` for ``URL=`` first, everywhere in the section: option names are
        case-sensitive (as in systemd), and the similarity test below misses a
        difference of case alone."""
        accepted = set(known) | set(ALIASES.get(section, {}))
        by_lower = {k.lower(): k for k in accepted}
        for e in self.file.section(section):
            meant = by_lower.get(e.key.lower())
            if meant is not None and meant != e.key:
                raise UnitError(self.source, e.line,
                                f"unknown option {e.key}= in [{section}]; did you mean "
                                f"{meant}=? (option names are case-sensitive)")
        for e in self.file.section(section):
            if e.key in accepted:
                continue
            close = difflib.get_close_matches(e.key, sorted(accepted), n=1, cutoff=0.6)
            hint = f"; did you mean {close[0]}=?" if close else \
                f" (known: {', '.join(sorted(known))})"
            raise UnitError(self.source, e.line, f"unknown option {e.key}= in [{section}]{hint}")


def later(a: Optional[Entry], b: Optional[Entry]) -> Optional[Entry]:
    """The second of two conflicting assignments: the one the user added last."""
    if a is None or b is None:
        return a or b
    return a if a.line > b.line else b
