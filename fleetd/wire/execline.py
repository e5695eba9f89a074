"""Split ``ExecStart=`` the way systemd splits it, and expand ``$VAR`` like systemd.

Never a shell: a unit that wants one writes ``/bin/sh -c '...'``. Splitting happens in
fleetd (so a bad quote is reported at submit time with file:line); expansion happens on
the agent (so ``EnvironmentFile=`` on the host can feed it). The module is stdlib-only
for that reason.

Rules, from systemd.service(5) "Command lines":
  * leading prefixes ``@ - : + !`` (``!!`` too) change how the command runs;
  * words are separated by whitespace; quotes "..." or '...' may open and close
    anywhere in a word and are removed (``--name="a b"`` is ``--name=a b``); C escapes
    (\\n, \\t, \\xNN, \\NNN, \\s for space...) are decoded, inside quotes too. This is
    systemd 252's extract_first_word (src/basic/extract-word.c), see ``_word``;
  * ``${FOO}`` anywhere becomes FOO's exact value in one argument; ``$FOO`` as a word of
    its own becomes FOO's value split at whitespace (zero or more arguments);
    ``$$`` is a literal dollar. The ``:`` prefix turns expansion off.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Dict, List, Mapping, Optional, Tuple

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
    """Split one command line as systemd 252's config_parse_exec (src/core/load-fragment.c)
    does; raise CommandLineError saying what is wrong where systemd would ignore the line
    with a warning (fleetd refuses the unit instead: a silently dropped ExecStart= is
    worse than an error at submit time).

    As there, the prefixes are read from the first word *after* unquoting (``"-/bin/x"``
    has the ``-`` prefix), each at most once (``--/bin/x`` is the path ``-/bin/x``,
    refused); ``!!`` is the second ``!``. A lone ``;`` before an argument separates
    commands in systemd: fleetd refuses it (one command a line); ``\\;`` as a word of its
    own is the literal ``;``. An escape systemd cannot decode (``\\q``, ``\\;`` inside a
    word, ``\\x0`` ...) stays as written in a command line, as systemd keeps it (with a
    warning); elsewhere (Environment=, ``split_words``) it is refused, as there."""
    s = text
    i = _skip_space(s, 0)
    first, i, _ = _word(s, i, relax=True)
    if first is None:
        raise CommandLineError("empty command line")
    flags = {"ignore_failure": False, "argv0_given": False, "no_expand": False,
             "privileged": False}
    seen = ""
    f = 0
    while f < len(first):
        c = first[f]
        if c in "-@:" and c not in seen:
            flags[{"-": "ignore_failure", "@": "argv0_given", ":": "no_expand"}[c]] = True
        elif (c == "+" and not any(x in seen for x in "+!")) or (
                c == "!" and "+" not in seen and seen.count("!") < 2):
            flags["privileged"] = True
        else:
            break
        seen += c
        f += 1
    path = first[f:]
    if not path:
        raise CommandLineError("empty command line")
    _check_path(path)
    words = [path]
    while i < len(s):
        if s[i] == ";" and (i + 1 == len(s) or s[i + 1] in WHITESPACE):
            raise CommandLineError(
                "a lone ';' does not separate commands; use several ExecStart= lines "
                "(Type=oneshot) or write the shell explicitly: /bin/sh -c '...'"
            )
        if s.startswith("\\;", i) and (i + 2 == len(s) or s[i + 2] in WHITESPACE):
            words.append(";")
            i = _skip_space(s, i + 2)
            continue
        word, i, _ = _word(s, i, relax=True)
        if word is None:
            break
        words.append(word)
    if flags["argv0_given"] and len(words) < 2:
        raise CommandLineError("'@' prefix needs the path and then argv[0]")
    return Command(words=tuple(words), **flags)


def _check_path(path: str) -> None:
    """config_parse_exec's checks of the executable: string_is_safe (no control
    characters, quotes or backslashes), not a directory, absolute or a plain file name
    (systemd then looks that up in its fixed PATH)."""
    if any(ord(c) < 32 or c in "\"'\\\x7f" for c in path):
        raise CommandLineError(f"executable name {path!r} contains special characters")
    if path.endswith("/"):
        raise CommandLineError(f"executable path {path!r} specifies a directory")
    if not path.startswith("/") and ("/" in path or path in (".", "..")
                                     or len(path.encode()) > 255):
        raise CommandLineError(f"{path!r} is neither a valid executable name nor an "
                               "absolute path")


def split_words(s: str) -> List[str]:
    """Whitespace-separated words as systemd's extract_first_word(EXTRACT_UNQUOTE|
    EXTRACT_CUNESCAPE) returns them (Environment=, and fleetd's own list options)."""
    words: List[str] = []
    i = _skip_space(s, 0)
    while True:
        word, i, _ = _word(s, i)
        if word is None:
            return words
        words.append(word)


WHITESPACE = " \t\n\r"


def _skip_space(s: str, i: int) -> int:
    while i < len(s) and s[i] in WHITESPACE:
        i += 1
    return i


def _word(s: str, i: int, relax: bool = False) -> Tuple[Optional[str], int, bool]:
    """The word at s[i:] (None at the end), the index of the next word, and whether it
    was written bare (no quote, no escape).

    systemd 252's extract_first_word (src/basic/extract-word.c) with EXTRACT_UNQUOTE|
    EXTRACT_CUNESCAPE, state for state: a quote may open and close anywhere in a word
    (``--name="a b"`` is ``--name=a b``, ``x"y z"w`` is ``xy zw``); C escapes are
    decoded inside and outside quotes (cunescape_one); ``\\x``/octal escapes are raw
    bytes, so the word is built as bytes and must be UTF-8 in the end. ``relax``: an
    escape systemd cannot decode stays as written (EXTRACT_CUNESCAPE_RELAX), as in
    command lines."""
    n = len(s)
    i = _skip_space(s, i)
    if i >= n:
        return None, i, True
    buf = bytearray()
    quote = ""
    bare = True
    while i < n:
        c = s[i]
        if c == "\\":
            bare = False
            try:
                i = _escape(s, i, buf)
            except CommandLineError:
                if not relax or (i + 1 >= len(s) and quote):
                    raise  # relaxed, a trailing backslash outside quotes stays too
                buf += s[i:i + 2].encode("utf-8", "surrogateescape")
                i += 2
            continue
        if quote:
            if c == quote:
                quote = ""
            else:
                buf += c.encode("utf-8", "surrogateescape")
            i += 1
            continue
        if c in "\"'":
            quote, bare = c, False
            i += 1
            continue
        if c in WHITESPACE:
            break
        buf += c.encode("utf-8", "surrogateescape")
        i += 1
    if quote:
        raise CommandLineError(f"unbalanced quote {quote} in {s!r}")
    try:
        word = buf.decode("utf-8")
    except UnicodeDecodeError:
        raise CommandLineError(f"escapes make a word that is not UTF-8 in {s!r}") from None
    return word, _skip_space(s, i), bare


def _escape(s: str, i: int, buf: bytearray) -> int:
    """Decode the C escape at s[i] (a backslash) into ``buf``; return the index after it.
    cunescape_one(accept_nul=false): NUL and surrogates are refused, \\xNN and \\NNN
    are bytes (at most 255), \\u/\\U code points."""
    if i + 1 >= len(s):
        raise CommandLineError(f"trailing backslash in {s!r}")
    c = s[i + 1]
    if c in _ESCAPES:
        buf += _ESCAPES[c].encode()
        return i + 2
    for prefix, digits in (("x", 2), ("u", 4), ("U", 8)):
        if c == prefix:
            code = s[i + 2:i + 2 + digits]
            if len(code) != digits or not all(ch in "0123456789abcdefABCDEF" for ch in code):
                raise CommandLineError(f"bad escape \\{prefix}{code} in {s!r}")
            value = int(code, 16)
            if value == 0 or 0xD800 <= value <= 0xDFFF or value > 0x10FFFF:
                raise CommandLineError(
                    f"escape \\{prefix}{code} is not a valid character in {s!r}")
            if prefix == "x":
                buf.append(value)
            else:
                buf += chr(value).encode()
            return i + 2 + digits
    if c in "01234567":
        code = s[i + 1:i + 4]
        if len(code) != 3 or not all(ch in "01234567" for ch in code):
            raise CommandLineError(f"bad octal escape \\{code} in {s!r}")
        value = int(code, 8)
        if value == 0 or value > 255:
            raise CommandLineError(f"octal escape \\{code} is not a valid byte in {s!r}")
        buf.append(value)
        return i + 4
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
