"""Unit arguments as people type them: the unit name each stands for, and its file.

fleet's fleetctl appended ``.service`` to a name without a unit type
(``maybeAppendDefaultUnitType``): ``fleetctl start app`` meant ``app.service`` and read
the file ``app.service``; ``web@1`` meant ``web@1.service``. fleetctl does the same for
every verb that takes unit names. On top, a file named ``app.unit`` - the words this
project was first described with - is the service unit ``app.service``: fleetd runs
services, and a unit has one name everywhere (registry, agent, systemd), so the name
fleetd keeps is the ``.service`` one, and ``app.unit`` names that unit in every verb.
Where fleet looked for the file ``app.service`` (for ``app``, or a template beside an
instance), fleetctl also takes ``app.unit``, the ``.service`` file first.

Globs keep working: one ending in ``*`` (``web@*``, ``'*'``) already matches every
suffix and is left as it is; ``web@?`` means ``web@?.service``.

Names are checked by the one rule both sides share (fleetd.wire.names), without the unit
parser: fleetctl does not load it (fleetd validates units).
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Tuple

import click

from fleetd.wire import names

SERVICE = "." + names.SUFFIX
FILE_SUFFIX = ".unit"  # app.unit: a file holding the service unit app.service
# the unit types fleet recognised (unit.RecognizedUnitType): a name ending in one keeps
# it; fleetd refuses all but .service, saying which names it takes
UNIT_TYPES = (".service", ".socket", ".timer", ".path", ".device", ".mount", ".automount")
GLOB_CHARS = "*?["  # fleetd.units.xfleet.GLOB_CHARS, without loading the unit modules


def is_glob(pattern: str) -> bool:
    return any(c in pattern for c in GLOB_CHARS)


def _typed(base: str) -> bool:
    """Whether ``base`` already says what it is: a unit type, ``.unit``, or a glob that
    matches any suffix."""
    return (base.endswith(UNIT_TYPES) or base.endswith(FILE_SUFFIX)
            or (is_glob(base) and base.endswith("*")))


def unit_name(arg: str) -> str:
    """The unit (or glob of units) an argument names: its base name, ``.unit`` read as
    ``.service``, and ``.service`` appended to a name with no unit type, as fleet did."""
    base = os.path.basename(arg)
    if base.endswith(FILE_SUFFIX) and len(base) > len(FILE_SUFFIX):
        return base[: -len(FILE_SUFFIX)] + SERVICE
    return base if _typed(base) else base + SERVICE


def unit_names(args: Tuple[str, ...]) -> List[str]:
    return [unit_name(a) for a in args]


def unit_file(arg: str) -> Optional[str]:
    """The file an argument names, if there is one: the argument itself when it has a
    unit type or ``.unit`` (``units/app.unit``), else the argument with ``.service``
    appended, as fleet did, or with ``.unit`` (``units/app`` reads ``units/app.service``
    or ``units/app.unit``; never ``units/app`` itself, which is as likely the program as
    its unit)."""
    if _typed(os.path.basename(arg)):
        return arg if os.path.isfile(arg) else None
    return _first_file([arg + SERVICE, arg + FILE_SUFFIX])


def _template_file(arg: str, template: str) -> Optional[str]:
    """The template file beside where the instance ``arg`` would be: spelt as the
    argument was (``web@.unit`` for ``web@1.unit``) if it is there, else spelt the
    other way."""
    stem = os.path.join(os.path.dirname(arg), template[: -len(SERVICE)])
    spellings = [SERVICE, FILE_SUFFIX]
    if arg.endswith(FILE_SUFFIX):
        spellings.reverse()
    return _first_file([stem + suffix for suffix in spellings])


def _first_file(paths: List[str]) -> Optional[str]:
    return next((p for p in paths if os.path.isfile(p)), None)


def unit_items(args: Tuple[str, ...], variables: Optional[Dict[str, str]]
               ) -> List[Dict[str, Any]]:
    """What the API's submit takes for each argument: a file's text under its unit name,
    or the name of a unit already submitted (with its template's file, if one is beside
    where the instance would be), as fleet's fleetctl found them."""
    items = []
    for arg in args:
        name = unit_name(arg)
        path = unit_file(arg)
        item: Dict[str, Any] = {"name": name}
        if path is not None:
            item.update(text=_read(path), source=path)
        else:
            try:
                parts = names.split(name)
            except names.UnitNameError:
                raise click.ClickException(
                    f"{arg}: no such file, and {name} is not a unit name "
                    f"({names.RULE})") from None
            if parts.instance:
                template = f"{parts.prefix}@.{parts.suffix}"
                beside = _template_file(arg, template)
                if beside is not None:
                    item["template_text"] = _read(beside)
                    item["template_source"] = beside
        if variables is not None:
            item["vars"] = variables
        items.append(item)
    return items


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise click.ClickException(f"{path}: {exc}") from None
