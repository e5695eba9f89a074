"""Rendering a unit for one machine with Jinja2: sandboxed, and strict about names.

A unit may use ``{{ machine.name }}``, ``{{ machine.address }}``, ``{{ machine.id }}``,
``{{ machine.metadata.role }}``, ``{{ machine.facts.cpus }}``, ``{{ unit.name }}``,
``{{ unit.prefix }}``, ``{{ unit.instance }}`` and the user's ``{{ vars.port }}``
(``fleetctl start --var port=8080`` or ``--vars-file vars.toml``).

The environment is Jinja's sandbox (a unit file is not trusted code: it cannot reach
``__class__``, ``__globals__`` or any Python internals) with StrictUndefined, so a typo
is an error naming the unit, the line and the name, never an empty string in a command.

Units are validated at submit time before any machine is known: ``probe`` renders with
the unit and its variables, and stands in for every ``machine.*`` reference with an
opaque placeholder. The machine-specific render happens when the unit is placed.
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Dict, Mapping, Optional

import jinja2
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

from fleetd.units.parser import UnitError


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
_ENV = SandboxedEnvironment(
    undefined=_Undefined,
    autoescape=False,
    keep_trailing_newline=True,
    # systemd's "%" specifiers and shell "$" never collide with these delimiters
)


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
             variables: Mapping[str, str], machine: Any, open_vars: bool = False
             ) -> Dict[str, Any]:
    return {
        "unit": _Names("unit", {"name": unit_name, "prefix": prefix,
                                "instance": instance or ""}),
        "vars": (_OpenNames if open_vars else _Names)("vars", variables),
        "machine": machine,
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


def _render(text: str, context: Dict[str, Any], source: str, where: str) -> str:
    try:
        template = _ENV.from_string(text)
    except jinja2.TemplateSyntaxError as exc:
        raise UnitError(source, exc.lineno, f"template syntax: {exc.message}") from None
    try:
        return template.render(context)
    except SecurityError as exc:
        raise UnitError(source, _line_of(exc), f"template{where}: not allowed: {exc}") from None
    except jinja2.UndefinedError as exc:
        raise UnitError(source, _line_of(exc), f"template{where}: {exc.message}") \
            from None
    except jinja2.TemplateError as exc:
        raise UnitError(source, _line_of(exc), f"template{where}: {exc}") from None
    except (TypeError, ValueError, ArithmeticError, LookupError) as exc:
        raise UnitError(source, _line_of(exc), f"template{where}: {exc}") from None


def probe(text: str, unit_name: str, prefix: str, instance: Optional[str],
          variables: Mapping[str, str], source: str) -> str:
    """Render with the unit and its variables only; ``machine.*`` stays a placeholder
    (and, for a template, so does any variable not given)."""
    if not has_markup(text):
        return text
    context = _context(unit_name, prefix, instance, variables, _Placeholder(),
                       open_vars=instance == "")
    return _render(text, context, source, "")


def for_machine(text: str, unit_name: str, prefix: str, instance: Optional[str],
                variables: Mapping[str, str], machine: MachineContext) -> str:
    """The unit's text as it will run on ``machine``."""
    if not has_markup(text):
        return text
    ctx = _context(unit_name, prefix, instance, variables, _Names("machine", {
        "name": machine.name, "address": machine.address, "id": machine.id,
        "metadata": _Names("machine.metadata", machine.metadata),
        "facts": _Names("machine.facts", machine.facts),
    }))
    return _render(text, ctx, unit_name, f" for machine {machine.name}")

