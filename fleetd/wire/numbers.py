"""The one way fleetd and its agent read a number, wherever it comes from.

Unit options, query parameters, JSON fields, configuration values and agent messages
all come through here, so a number is always ASCII digits (``str.isdigit`` also accepts
``²``, which ``int`` then refuses), finite (``float('nan')`` and ``1e999`` parse, and a
NaN in asyncio's timer heap stops every timer after it), within the range its reader
states, and never a JSON ``true`` (``isinstance(True, int)`` holds in Python).

Errors are ``NumberError`` with a message that says what was wanted; the caller adds
where (``file:line: Option=:``, ``timeout:``, the machine).
"""

from __future__ import annotations

import math
import re
from typing import Optional, Union

_INT = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
MAX_DIGITS = 30  # longer text is no number anyone means (and int() of it is quadratic)


class NumberError(ValueError):
    """Text or a JSON value that is not a number in the range wanted."""


def _range(lo: Optional[float], hi: Optional[float], whole: bool) -> str:
    kind = "a whole number" if whole else "a number"
    if lo is not None and hi is not None:
        return f"{kind} from {_fmt(lo)} to {_fmt(hi)}"
    if lo is not None:
        return f"{kind} of at least {_fmt(lo)}"
    if hi is not None:
        return f"{kind} of at most {_fmt(hi)}"
    return kind


def _fmt(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def show(value: object) -> str:
    """``value`` as an error message quotes it: its repr, at most 40 characters."""
    s = repr(value)
    return s if len(s) <= 40 else s[:37] + "..."


def _check(value: Union[int, float], lo: Optional[float], hi: Optional[float],
           whole: bool, shown: object) -> None:
    if (lo is not None and value < lo) or (hi is not None and value > hi):
        raise NumberError(f"want {_range(lo, hi, whole)}, not {show(shown)}")


def _finite(number: float, lo: Optional[float], hi: Optional[float], shown: object,
            why: str = "") -> float:
    if not math.isfinite(number):
        raise NumberError(f"want {_range(lo, hi, False)}, not {show(shown)}{why}")
    _check(number, lo, hi, False, shown)
    return number


def parse_int(text: str, lo: Optional[int] = None, hi: Optional[int] = None) -> int:
    """A whole number written in ASCII digits (an optional sign), within [lo, hi]."""
    s = text.strip()
    if len(s) > MAX_DIGITS or not _INT.fullmatch(s):
        raise NumberError(f"want {_range(lo, hi, True)}, not {show(text)}")
    value = int(s)
    _check(value, lo, hi, True, text)
    return value


def parse_float(text: str, lo: Optional[float] = None, hi: Optional[float] = None) -> float:
    """A finite decimal number (``1``, ``0.5``, ``2e3``; never ``nan``, ``inf`` or
    ``1e999``), within [lo, hi]."""
    s = text.strip()
    if len(s) > MAX_DIGITS or not _DECIMAL.fullmatch(s):
        raise NumberError(f"want {_range(lo, hi, False)}, not {show(text)}")
    value = float(s)  # (vermin reads ``value`` below as this float: keep the name)
    return _finite(value, lo, hi, text, " (too large)")


def json_int(value: object, lo: Optional[int] = None, hi: Optional[int] = None) -> int:
    """A JSON value that must be a whole number: never ``true``, ``1.5`` or ``"1"``."""
    if isinstance(value, bool) or not isinstance(value, int):
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            value = int(value)  # 3.0 from a client that writes every number as a float
        else:
            raise NumberError(f"want {_range(lo, hi, True)}, not {show(value)}")
    _check(value, lo, hi, True, value)
    return value


def json_float(value: object, lo: Optional[float] = None, hi: Optional[float] = None
               ) -> float:
    """A JSON value that must be a finite number: never ``true``, a string or NaN
    (Python's json reads ``NaN`` and ``Infinity``)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise NumberError(f"want {_range(lo, hi, False)}, not {show(value)}")
    return _finite(float(value), lo, hi, value)
