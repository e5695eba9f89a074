"""Split ``ExecStart=`` the way systemd splits it, and expand ``$VAR`` like systemd.

Never a shell: a unit that wants one writes ``/bin/sh -c '...'``. Splitting happens in
fleetd (so a bad quote is reported at submit time with file:line); expansion happens on
the agent (so ``EnvironmentFile=`` on the host can feed it). The module is stdlib-only
for that reason.

Rules, from systemd.service(5) "Command lines":
  * leading prefixes ``@ - : + !`` (``!!`` too) change how the command runs;
  * words are separated by whitespace; a word may be wrapped whole in "..." or '...',
    the quotes removed; C escapes (\\n, \\t, \\xNN, \\NNN, \\s for space...) are decoded;
  * ``${FOO}`` anywhere becomes FOO's exact value in one argument; ``$FOO`` as a word of
    its own becomes FOO's value split at whitespace (zero or more arguments);
    ``$$`` is a literal dollar. The ``:`` prefix turns expansion off.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Dict, List, Mapping, Tuple

from fleetd.wire import unitspec

PREFIX_CHARS = "@-:+!"

_ESCAPES = {
    "a": "\a", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v",
    "\\": "\\", '"': '"', "'": "'", "s": " ",
}
_LONE_VAR = re.compile(r"\$([A-Za-z_][A-Za-z0-9_]*)\Z")
_BRACED = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class CommandLineError(ValueError):
    """ExecStart= text that systemd would refuse too."""


@dataclasses.dataclass(frozen=True)
class Command:
    """One command line: its argv words (not yet expanded) and its prefix flags."""

    words: Tuple[str, ...]
    ignore_failure: bool = False  # "-": a non-zero exit is not a failure
    argv0_given: bool = False  # "@": the second word is argv[0], the first is the path
    no_expand: bool = False  # ":": no environment variable substitution
    privileged: bool = False  # "+" / "!" / "!!": run without User= privilege drop

    @property
    def path(self) -> str:
        return self.words[0]

    def to_json(self) -> unitspec.Command:
        """As the unit's config carries it to the agent (``argv`` reads it there)."""
        return {"words": list(self.words), "ignore_failure": self.ignore_failure,
                "argv0_given": self.argv0_given, "no_expand": self.no_expand,
                "privileged": self.privileged}


def split(text: str) -> Command:
    """Split one command line; raise CommandLineError saying what is wrong."""
    s = text.strip()
    flags = {"ignore_failure": False, "argv0_given": False, "no_expand": False,
             "privileged": False}
    i = 0
    while i < len(s) and s[i] in PREFIX_CHARS:
        c = s[i]
        if c == "-":
            flags["ignore_failure"] = True
        elif c == "@":
            flags["argv0_given"] = True
        elif c == ":":
            flags["no_expand"] = True
        else:
            flags["privileged"] = True
        i += 1
    tokens = _tokens(s[i:])
    words = [w for w, _ in tokens]
    if not words:
        raise CommandLineError("empty command line")
    if (";", True) in tokens:
        raise CommandLineError(
            "a lone ';' does not separate commands; use several ExecStart= lines "
            "(Type=oneshot) or write the shell explicitly: /bin/sh -c '...'"
        )
    if flags["argv0_given"] and len(words) < 2:
        raise CommandLineError("'@' prefix needs the path and then argv[0]")
    return Command(words=tuple(words), **flags)


def split_words(s: str) -> List[str]:
    """Whitespace-separated words with systemd's quoting and C escapes (also used for
    Environment=, which systemd splits the same way)."""
    return [w for w, _ in _tokens(s)]


def _tokens(s: str) -> List[Tuple[str, bool]]:
    """(word, bare) pairs; ``bare`` is True when the word was written with no quote and
    no escape, which is what tells a lone ``;`` from ``\\;`` or ``";"``."""
    words: List[Tuple[str, bool]] = []
    i, n = 0, len(s)
    while True:
        while i < n and s[i].isspace():
            i += 1
        if i >= n:
            return words
        if s[i] in "\"'":
            quote, i = s[i], i + 1
            buf: List[str] = []
            while True:
                if i >= n:
                    raise CommandLineError(f"unbalanced quote {quote} in {s!r}")
                c = s[i]
                if c == quote:
                    i += 1
                    break
                if c == "\\":
                    decoded, i = _escape(s, i)
                    buf.append(decoded)
                    continue
                buf.append(c)
                i += 1
            if i < n and not s[i].isspace():
                raise CommandLineError(
                    f"closing quote must be followed by whitespace in {s!r}"
                )
            words.append(("".join(buf), False))
            continue
        buf = []
        bare = True
        while i < n and not s[i].isspace():
            c = s[i]
            if c == "\\":
                decoded, i = _escape(s, i)
                buf.append(decoded)
                bare = False
                continue
            buf.append(c)
            i += 1
        words.append(("".join(buf), bare))


def _escape(s: str, i: int) -> Tuple[str, int]:
    """Decode the C escape at s[i] (a backslash); return it and the index after it."""
    char, end = _decode_escape(s, i)
    if char == "\0" or 0xD800 <= ord(char) <= 0xDFFF:
        raise CommandLineError(f"escape {s[i:end]} is not a valid character in {s!r}")
    return char, end


def _decode_escape(s: str, i: int) -> Tuple[str, int]:
    if i + 1 >= len(s):
        raise CommandLineError(f"trailing backslash in {s!r}")
    c = s[i + 1]
    if c in _ESCAPES:
        return _ESCAPES[c], i + 2
    if c == ";":
        return ";", i + 2
    for prefix, digits, base in (("x", 2, 16), ("u", 4, 16), ("U", 8, 16)):
        if c == prefix:
            code = s[i + 2:i + 2 + digits]
            if len(code) != digits or not all(ch in "0123456789abcdefABCDEF" for ch in code):
                raise CommandLineError(f"bad escape \\{prefix}{code} in {s!r}")
            value = int(code, base)
            if value > 0x10FFFF:
                raise CommandLineError(f"escape \\{prefix}{code} is beyond Unicode in {s!r}")
            return chr(value), i + 2 + digits
    if c in "01234567":
        code = s[i + 1:i + 4]
        if len(code) != 3 or not all(ch in "01234567" for ch in code):
            raise CommandLineError(f"bad octal escape \\{code} in {s!r}")
        return chr(int(code, 8)), i + 4
    raise CommandLineError(f"unknown escape \\{c} in {s!r}")


def expand(words: Tuple[str, ...] | List[str], env: Dict[str, str]) -> List[str]:
    """systemd's variable expansion over split words (undefined variables are empty)."""
    out: List[str] = []
    for word in words:
        lone = _LONE_VAR.match(word)
        if lone:
            out.extend(env.get(lone.group(1), "").split())
            continue
        out.append(_BRACED.sub(lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), ""),
                               word))
    return out


def argv(command: Mapping[str, object], env: Dict[str, str]) -> Tuple[str, List[str]]:
    """The executable and argv to exec for a command sent as ``Command.to_json()``."""
    raw = command["words"]
    assert isinstance(raw, (list, tuple))
    words = [str(w) for w in raw]
    args = words if command.get("no_expand") else expand(words, env)
    if not args:
        raise CommandLineError("command expands to nothing")
    if command.get("argv0_given"):
        return args[0], args[1:]
    return args[0], args
