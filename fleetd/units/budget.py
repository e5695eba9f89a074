"""What one template render may spend: steps, time, bytes, nesting.

A unit template is data from whoever may submit units, and fleetd renders it in its own
process: two nested ``range(10000)`` loops, ``'a' * 10**10`` or a macro that calls
itself must cost a bounded, small amount and end in an error naming the line, never
freeze the daemon, exhaust its memory or answer 500. Jinja's sandbox keeps a template
away from Python's internals but bounds none of this, so the sandbox of this package
(``fleetd.units.sandbox``) reports every loop step, call, operator, filter and output
here, and this module refuses:

- more than ``MAX_STEPS`` loop steps and calls, or more than ``MAX_SECONDS``
  of wall-clock time (checked on every step);
- any value whose text could pass ``MAX_VALUE`` characters (its *size*: the length of a
  string, or for a container the sizes of everything in it, each reference counted, as
  ``str()`` would write it) or an integer of more than ``MAX_INT_BITS`` bits. Every
  operation's inputs are measured before it runs and the ones that multiply size
  (``*``, ``**``, ``%``, ``center``, ``replace``, ``join`` ...) are *estimated* before they
  run, so no oversized value is ever built, only refused;
- more than ``MAX_BYTES`` built and written over the whole render (a loop that builds a
  fresh 1 MiB string per step is as bad as one 100 MiB string);
- calls nested more than ``MAX_DEPTH`` deep (a macro calling itself).

A render's budget lives in a context variable: renders in different threads (submit's
validation in a worker thread, the engine's on the event loop) each have their own.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import re
import string
import time
from collections.abc import ItemsView, KeysView, Mapping, ValuesView
from typing import Any, Iterable, Iterator, List, Sequence

from jinja2.runtime import LoopContext
from jinja2.utils import Cycler, Joiner, Namespace

from fleetd.wire import numbers

MAX_STEPS = 100_000  # loop steps + calls + outputs: a unit's template needs hundreds
MAX_SECONDS = 2.0
MAX_VALUE = 1 << 20  # characters: also the most a rendered unit may be
MAX_BYTES = 32 << 20  # characters built and written over one render
MAX_INT_BITS = 4096
MAX_DEPTH = 50  # nested calls; Python's own limit (RecursionError) comes at ~150 macros
_SMALL = 8  # the size counted for a scalar or an object whose str() is short
# objects a template can make whose attributes (not their str()) may hold big values
_HOLDERS = (Namespace, Cycler, Joiner, LoopContext)
_SEQUENCES = (list, tuple, set, frozenset, KeysView, ValuesView, ItemsView)
COLLECTIONS = (str, bytes, dict, *_SEQUENCES)  # what can be measured without using it up


class Refused(Exception):
    """The template went past its budget; the message says which bound."""


class TookTooLong(Refused):
    """The wall-clock bound: unlike the others it depends on how busy the machine was,
    so a render refused by it is not remembered as failed."""


def _mib(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 else f"{n} characters"


@dataclasses.dataclass
class Budget:
    """The spending of one render."""

    deadline: float
    steps: int = 0
    spent: int = 0
    depth: int = 0

    def tick(self) -> None:
        """One more loop step or call; past the step or time bound it refuses."""
        self.steps += 1
        if self.steps > MAX_STEPS:
            raise Refused(f"more than {MAX_STEPS} loop steps and calls")
        self.check_time()

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise TookTooLong(f"took longer than {MAX_SECONDS:g} s")

    def spend(self, n: int) -> None:
        self.spent += n
        if self.spent > MAX_BYTES:
            raise Refused(f"built more than {_mib(MAX_BYTES)} of values and text")

    def inputs(self, *values: Any) -> None:
        """Refuse an operation whose inputs together could print as more than
        MAX_VALUE characters: whatever it does with them (str(), iterate) is bounded."""
        if size(values) > MAX_VALUE:
            raise Refused(f"a value of more than {_mib(MAX_VALUE)}")

    def built(self, value: Any) -> Any:
        """``value``, just made by an operation: refused if too big, counted if not."""
        n = size(value)
        if n > MAX_VALUE:
            raise Refused(f"a value of more than {_mib(MAX_VALUE)}")
        self.spend(n)
        return value

    @contextlib.contextmanager
    def nested(self) -> Iterator[None]:
        """One call deeper for the duration (a macro that calls itself ends here)."""
        self.depth += 1
        try:
            if self.depth > MAX_DEPTH:
                raise Refused(f"calls nested more than {MAX_DEPTH} deep "
                              "(a macro or loop that calls itself?)")
            yield
        finally:
            self.depth -= 1


_CURRENT: contextvars.ContextVar[Budget] = contextvars.ContextVar("fleetd_template_budget")


@contextlib.contextmanager
def running() -> Iterator[Budget]:
    """A fresh budget for the render inside this ``with``."""
    token = _CURRENT.set(Budget(deadline=time.monotonic() + MAX_SECONDS))
    try:
        yield _CURRENT.get()
    finally:
        _CURRENT.reset(token)


def current() -> Budget:
    """The budget of the render running in this thread (LookupError: none is)."""
    return _CURRENT.get()


def counted(iterable: Iterable[Any]) -> Iterator[Any]:
    """``iterable``, one budget step per item: what every template loop iterates."""
    budget = current()
    for item in iterable:
        budget.tick()
        yield item


def size(value: Any, limit: int = MAX_VALUE) -> int:
    """About how many characters ``str(value)`` would write, counted only up to just
    past ``limit`` (so measuring costs at most ~``limit`` steps). An integer wider than
    MAX_INT_BITS is refused outright: arithmetic on it is what would be slow."""
    total = 0
    todo: List[Any] = [value]
    while todo and total <= limit:
        item = todo.pop()
        if isinstance(item, (str, bytes, bytearray)):
            total += len(item)
        elif isinstance(item, int) and not isinstance(item, bool):
            total += _int_size(item)
        elif isinstance(item, Mapping):
            total += 2 + 4 * len(item)
            if total <= limit:
                todo.extend(item.keys())
                todo.extend(item.values())
        elif isinstance(item, _SEQUENCES):
            total += 2 + 2 * len(item)
            if total <= limit:
                todo.extend(item)
        elif isinstance(item, _HOLDERS):
            total += _SMALL
            todo.extend(object.__getattribute__(item, "__dict__").values())
        else:
            total += _SMALL
    return total


def _int_size(n: int) -> int:
    bits = n.bit_length()
    if bits > MAX_INT_BITS:
        raise Refused(f"a number of more than {MAX_INT_BITS} bits")
    return bits // 3 + 1


def check_estimate(what: str, estimate: int) -> None:
    """Refuse an operation before it runs if its result could pass MAX_VALUE."""
    if estimate > MAX_VALUE:
        raise Refused(f"{what} would make a value of more than {_mib(MAX_VALUE)}")


def width(what: str, value: Any) -> int:
    """A width, count or length argument that sizes an operation's result."""
    if isinstance(value, bool) or not isinstance(value, int):
        return 0  # not a number: the operation itself says what is wrong
    check_estimate(what, value)
    return max(0, value)


# -- estimates of what an operation would build, from its (already bounded) inputs --

def repeat(seq: Any, times: Any) -> int:
    """``seq * times`` for a string or sequence."""
    return size(seq) * width("'*'", times)


def power_bits(base: Any, exponent: Any) -> None:
    """Refuse ``base ** exponent`` on integers whose result would be too wide."""
    if isinstance(base, int) and isinstance(exponent, int) and exponent > 1 \
            and abs(base) > 1 and (abs(base).bit_length() - 1) * exponent > MAX_INT_BITS:
        raise Refused(f"'**' would make a number of more than {MAX_INT_BITS} bits")


_PRINTF = re.compile(r"%(?:\([^)]*\))?[#0 +-]*(\*|[0-9]+)?(?:\.(\*|[0-9]+))?[hlL]?.", re.S)


def printf(fmt: Any, args: Any) -> int:
    """``fmt % args`` (the ``%`` operator and the ``format`` filter)."""
    if not isinstance(fmt, (str, bytes)):
        return 0
    text = fmt if isinstance(fmt, str) else fmt.decode("latin-1")
    values: Sequence[Any] = list(args.values()) if isinstance(args, Mapping) \
        else args if isinstance(args, tuple) else (args,)
    biggest = max((size(v) for v in values), default=0)
    total = len(text)
    for spec in _PRINTF.finditer(text):
        total += biggest + sum(_spec_number(n) for n in spec.groups() if n)
    return total


def str_format(fmt: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> int:
    """``fmt.format(*args, **kwargs)`` (and ``format_map``)."""
    biggest = max((size(v) for v in (*args, *kwargs.values())), default=0)
    total = len(fmt)
    for _literal, field, spec, _conversion in string.Formatter().parse(fmt):
        if field is None:
            continue
        if spec and "{" in spec:
            raise Refused("a format spec that holds {fields} is not supported")
        total += biggest + sum(_spec_number(n) for n in re.findall(r"[0-9]+", spec or ""))
    return total


def _spec_number(text: str) -> int:
    if text == "*":
        raise Refused("a '*' width or precision is not supported; write the number")
    try:
        return numbers.parse_int(text, 0, MAX_VALUE)
    except numbers.NumberError:
        raise Refused(f"a width or precision of more than {MAX_VALUE}") from None


def replace(text: Any, old: Any, new: Any, count: Any = -1) -> int:
    """``text.replace(old, new, count)``."""
    if not all(isinstance(x, (str, bytes)) for x in (text, old, new)):
        return size(text)
    hits = text.count(old) if old else len(text) + 1
    if isinstance(count, int) and count >= 0:
        hits = min(hits, count)
    return len(text) + hits * max(0, len(new) - len(old))


def lines_prefixed(text: Any, prefix_len: int) -> int:
    """Every line of ``text`` with ``prefix_len`` more characters (indent)."""
    s = str(text)
    return len(s) + (s.count("\n") + 1) * prefix_len


def broken(text: Any, separator: Any) -> int:
    """``text`` with ``separator`` inserted at most between every two characters
    (wordwrap's wrapstring)."""
    n = len(str(text))
    return n + (n + 1) * size(separator)


def expandtabs(text: Any, tabsize: Any) -> int:
    tabs = text.count("\t") if isinstance(text, str) \
        else text.count(b"\t") if isinstance(text, bytes) else 0
    return size(text) + tabs * width(".expandtabs()", tabsize)


def translate(text: Any, table: Any) -> int:
    if not isinstance(text, str) or not isinstance(table, Mapping):
        return size(text)
    longest = max((size(v) for v in table.values()), default=1)
    return len(text) * max(1, longest)


def joined(items: Sequence[Any], separator: Any) -> int:
    """``separator.join(items)``."""
    return size(items) + len(items) * size(separator)

