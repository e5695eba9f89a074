"""Rendering a unit for one machine with Jinja2: sandboxed, and strict about names.

A unit may use ``{{ machine.name }}``, ``{{ machine.address }}``, ``{{ machine.id }}``,
``{{ machine.metadata.role }}``, ``{{ machine.facts.cpus }}``, ``{{ unit.name }}``,
``{{ unit.prefix }}``, ``{{ unit.instance }}``, the user's ``{{ vars.port }}``
(``fleetctl start --var port=8080`` or ``--vars-file vars.toml``) and other units'
placements, ``units('web@*.service')`` (fleetd.units.peers; none at submit).

The environment is Jinja's sandbox (a unit file is not trusted code: it cannot reach
``__class__``, ``__globals__`` or any Python internals) with StrictUndefined, so a typo
is an error naming the unit, the line and the name, never an empty string in a command.
It is also bounded (``fleetd.units.sandbox``, ``fleetd.units.budget``): a render has a
budget of loop steps, time, size and nesting, and whatever a template does ends in its
output or a UnitError naming the line, never another exception or a stalled daemon.
And a value stays a value: every ``{{ expression }}`` must write one line's worth
(``fleetd.units.values``), so a variable or a machine's metadata cannot add a directive.

Units are validated at submit time before any machine is known: ``probe`` renders with
the unit and its variables, and stands in for every ``machine.*`` reference with an
opaque placeholder. The machine-specific render happens when the unit is placed.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import json
import threading
import types
from typing import Any, Dict, Iterator, Mapping, Optional, Tuple

import jinja2
from jinja2.exceptions import SecurityError

from fleetd.units import budget, peers, sandbox
from fleetd.units.parser import UnitError
from fleetd.units.sandbox import BoundedEnvironment


class _Names(dict):  # type: ignore[type-arg]
    """A namespace of the render context that knows its own path, for error messages."""

    def __init__(self, path: str, data: Mapping[str, Any]) -> None:
        super().__init__(data)
        self._fleet_path = path


class _OpenNames(_Names):
    """Like _Names, but a name not given is a placeholder: a template's variables may
    come only with each instance, which is checked strictly when it is started."""

    def __missing__(self, key: str) -> _Placeholder:
        return _Placeholder(f"{self._fleet_path}.{key}")


class _Undefined(jinja2.StrictUndefined):
    """StrictUndefined that says ``vars.port is not defined (defined: ...)``."""

    @property
    def _undefined_message(self) -> str:
        obj = self._undefined_obj
        if isinstance(obj, _Names):
            known = ", ".join(sorted(obj)) or "nothing"
            return f"{obj._fleet_path}.{self._undefined_name} is not defined (defined: {known})"
        return str(super()._undefined_message)


TEMPLATE_NAME = "<template>"  # the file name Jinja gives compiled template code
_ENV = BoundedEnvironment(
    undefined=_Undefined,
    autoescape=False,
    keep_trailing_newline=True,
    # systemd's "%" specifiers and shell "$" never collide with these delimiters
)
_ENV.filters = sandbox.filters()
del _ENV.globals["lipsum"]  # a unit has no use for lorem ipsum, and it sizes its output
_FAILURES_KEPT = 256
MAX_TAGS = 5000  # a unit's template needs tens
MAX_NODES = 20_000


def has_markup(text: str) -> bool:
    """Most units use no Jinja at all: they skip rendering entirely."""
    return "{{" in text or "{%" in text or "{#" in text


@dataclasses.dataclass(frozen=True)
class MachineContext:
    """What a unit may know of the machine it runs on."""

    name: str
    address: str
    id: str
    metadata: Mapping[str, str]
    facts: Mapping[str, Any]


class _Placeholder:
    """Stands for ``machine`` (and anything below it) while no machine is chosen."""

    def __init__(self, path: str = "machine") -> None:
        self._path = path

    def __getattr__(self, name: str) -> _Placeholder:
        if name.startswith("_"):
            raise AttributeError(name)
        return _Placeholder(f"{self._path}.{name}")

    def __getitem__(self, key: object) -> _Placeholder:
        return _Placeholder(f"{self._path}[{key!r}]")

    def __str__(self) -> str:
        return f"@{self._path}@"

    def __iter__(self) -> Any:
        return iter(())


def _context(unit_name: str, prefix: str, instance: Optional[str],
             variables: Mapping[str, str], machine: Any, reader: peers.Reader,
             open_vars: bool = False) -> Dict[str, Any]:
    return {
        "unit": _Names("unit", {"name": unit_name, "prefix": prefix,
                                "instance": instance or ""}),
        "vars": (_OpenNames if open_vars else _Names)("vars", variables),
        "machine": machine,
        "units": reader,
    }


def _line_of(exc: BaseException) -> Optional[int]:
    """The template line Jinja was executing when ``exc`` was raised."""
    tb: Optional[types.TracebackType] = exc.__traceback__
    line = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == TEMPLATE_NAME:
            line = tb.tb_lineno
        tb = tb.tb_next
    return line


@functools.lru_cache(maxsize=64)
def _compiled(text: str) -> jinja2.Template:
    """The template, instrumented (see fleetd.units.sandbox) and compiled once: the
    engine renders the same text for every machine. Compiling is not interruptible and
    costs about a second per 20,000 nodes, so a template's size in tags and nodes is
    bounded before (budget.Refused)."""
    tags = text.count("{{") + text.count("{%")
    if tags > MAX_TAGS:
        raise budget.Refused(f"more than {MAX_TAGS} {{{{ }}}} and {{% %}} tags")
    tree = _ENV.parse(text)
    if sum(1 for _ in tree.find_all(jinja2.nodes.Node)) > MAX_NODES:
        raise budget.Refused(f"more than {MAX_NODES} expressions and statements")
    tree = sandbox.instrument(tree)
    tree.set_environment(_ENV)
    code = _ENV.compile(tree, filename=TEMPLATE_NAME)
    return _ENV.template_class.from_code(_ENV, code, _ENV.make_globals(None), None)


def _render(text: str, context: Dict[str, Any], source: str, where: str) -> str:
    """Render within a fresh budget; every way a template can fail is a UnitError."""
    try:
        template = _compiled(text)
    except jinja2.TemplateSyntaxError as exc:
        raise UnitError(source, exc.lineno, f"template syntax: {exc.message}") from None
    except budget.Refused as exc:
        raise UnitError(source, None, f"template: {exc}") from None
    except (RecursionError, MemoryError, SyntaxError):
        # Jinja's parser and Python's compiler recurse on nested expressions
        raise UnitError(source, None, "template syntax: expressions nested too deep") \
            from None
    except ValueError as exc:  # a literal Python refuses: {{ 9999... }} (5000 digits)
        raise UnitError(source, None, f"template syntax: {exc}") from None
    with budget.running():
        try:
            return _collected(template.generate(context))
        except budget.TookTooLong as exc:
            raise _TookTooLong(source, _line_of(exc), f"template{where}: {exc}") from None
        except _FAILURES as exc:
            raise UnitError(source, _line_of(exc), f"template{where}: {_why(exc)}") from None


def _collected(chunks: Iterator[str]) -> str:
    """The output, which may not pass the size of a unit: past it, the render is
    stopped where it writes (so the error names that line)."""
    out, total = [], 0
    for chunk in chunks:
        total += len(chunk)
        if total > budget.MAX_VALUE:
            chunks.throw(budget.Refused(  # type: ignore[attr-defined]
                f"the rendered unit would pass {budget.MAX_VALUE >> 20} MiB"))
        out.append(chunk)
    return "".join(out)


# what a template's own doing can raise (bad arithmetic, a missing key, a filter given
# the wrong type: Jinja's wordwrap of a list is an AttributeError, a budget ...)
_FAILURES = (budget.Refused, jinja2.TemplateError, TypeError, ValueError, ArithmeticError,
             LookupError, AttributeError, RecursionError, MemoryError)


def _why(exc: BaseException) -> str:
    """What went wrong in a template, said for its author."""
    if isinstance(exc, budget.Refused):
        return str(exc)
    if isinstance(exc, SecurityError):
        return f"not allowed: {exc}"
    if isinstance(exc, jinja2.UndefinedError):
        return str(exc.message)
    if isinstance(exc, RecursionError):
        return "nested too deep (a value within itself, or calls, too many levels)"
    if isinstance(exc, MemoryError):
        return "ran out of memory"
    return str(exc)


class _TookTooLong(UnitError):
    """A render stopped by the clock, not by what the template does: tried again next
    time (the machine may have been busy), never remembered."""


class _Failures:
    """Renders that failed, by everything their outcome depends on: a template that
    runs into its budget costs that once, not on every engine pass or resubmit.
    Shared by the event loop's engine and submit's worker threads: locked."""

    def __init__(self) -> None:
        self._kept: collections.OrderedDict[str, UnitError] = collections.OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def key(text: str, *inputs: Any) -> str:
        blob = json.dumps([text, *inputs], sort_keys=True, default=str)
        return hashlib.sha256(blob.encode("utf-8", "surrogatepass")).hexdigest()

    def get(self, key: str) -> Optional[UnitError]:
        with self._lock:
            return self._kept.get(key)

    def add(self, key: str, error: UnitError) -> None:
        with self._lock:
            self._kept[key] = error
            while len(self._kept) > _FAILURES_KEPT:
                self._kept.popitem(last=False)


_FAILED = _Failures()


def _remembered(text: str, context: Dict[str, Any], source: str, where: str,
                inputs: Tuple[Any, ...]) -> str:
    """``_render``, unless the same render failed before: then its error again."""
    key = _FAILED.key(text, source, where, *inputs)
    failed = _FAILED.get(key)
    if failed is not None:
        raise UnitError(failed.source, failed.line, failed.message)
    try:
        return _render(text, context, source, where)
    except _TookTooLong:
        raise
    except UnitError as exc:
        # a copy never raised: the original's traceback and context would keep the
        # failed render's frames (and the values in them) alive in the cache
        _FAILED.add(key, UnitError(exc.source, exc.line, exc.message))
        raise


def probe(text: str, unit_name: str, prefix: str, instance: Optional[str],
          variables: Mapping[str, str], source: str) -> str:
    """Render with the unit and its variables only; ``machine.*`` stays a placeholder
    (and, for a template, so does any variable not given)."""
    if not has_markup(text):
        return text
    context = _context(unit_name, prefix, instance, variables, _Placeholder(),
                       peers.Reader(peers.NOWHERE, unit_name), open_vars=instance == "")
    return _remembered(text, context, source, "", (unit_name, instance, dict(variables)))


def for_machine(text: str, unit_name: str, prefix: str, instance: Optional[str],
                variables: Mapping[str, str], machine: MachineContext,
                reader: Optional[peers.Reader] = None) -> str:
    """The unit's text as it will run on ``machine``; ``reader``: where its
    ``units()`` finds other units (none placed without one), and records what it asked."""
    if not has_markup(text):
        return text
    reader = reader or peers.Reader(peers.NOWHERE, unit_name)
    ctx = _context(unit_name, prefix, instance, variables, _Names("machine", {
        "name": machine.name, "address": machine.address, "id": machine.id,
        "metadata": _Names("machine.metadata", machine.metadata),
        "facts": _Names("machine.facts", machine.facts),
    }), reader)
    # a failure is remembered against every placement it could have read
    told = reader.placements.peers if "units" in text else ()
    return _remembered(text, ctx, unit_name, f" for machine {machine.name}",
                       (unit_name, instance, dict(variables), dataclasses.asdict(machine),
                        [dataclasses.astuple(p) for p in told]))

