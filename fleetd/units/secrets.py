"""Secrets in unit files: ``SecretEnvironment=VAR=name`` and what it does to a spec.

A unit names a secret, never holds it:

    [Service]
    SecretEnvironment=DB_PASSWORD=db_password API_KEY=vendor_api_key

sets ``DB_PASSWORD`` in the program's environment to the value of the secret
``db_password`` (``fleetctl secret set db_password``). The unit's text, and so ``cat``,
``status``, the registry's unit rows and the content hash, hold only the name; the value
is added to the spec of the machine that runs the unit, when the engine builds that
machine's desired set (``seal``), and nowhere else on fleetd's side.

Changing a secret rolls the units that use it: the spec's hash is the rendered unit's
hash combined with the version of every secret it reads (``sealed_hash``), so a new
version is new content to the engine (which expects that hash of the machine) and to
the agent (which replaces a unit whose hash changed, as for any new content). The
version is random per ``secret set`` and says nothing about the value.

Pure: the values come from a ``SecretSource`` (fleetd.daemon.secrets decrypts them).
Only the exec and java drivers take secrets; a Driver=systemd unit is refused at submit.
"""

from __future__ import annotations

import hashlib
import re
from typing import Dict, Mapping, Optional, Protocol, Tuple, Union

from fleetd.units.context import UnitContext

OPTION = "SecretEnvironment"
SECTION = "Service"
MASK = "***"  # what a secret's value looks like wherever fleetd shows it
NAME_MAX = 128
NAME = re.compile(rf"[A-Za-z0-9_][A-Za-z0-9_.-]{{0,{NAME_MAX - 1}}}")
VALUE_MAX = 64 * 1024  # bytes: a password, a key, a certificate; not a file system
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


class SecretNameError(ValueError):
    """A secret's name that is not one; the message says why."""


def check_name(name: object) -> str:
    """``name`` if it is a secret's name: letters, digits, ``_ . -``, not beginning with
    ``.`` or ``-``, at most NAME_MAX characters (it is a key in etcd and a file's
    neighbour on nobody's disk, but a typo should read as one)."""
    if not isinstance(name, str) or not NAME.fullmatch(name):
        shown = name if isinstance(name, str) and name.isprintable() else repr(name)
        raise SecretNameError(
            f"secret name {str(shown)[:60]!r}: want 1 to {NAME_MAX} letters, digits, "
            "'_', '.' or '-', not beginning with '.' or '-'")
    return name


def check_value(value: str) -> str:
    """A secret's value: text of at most VALUE_MAX bytes with no NUL (an environment
    cannot hold one)."""
    if "\0" in value:
        raise ValueError("a secret's value cannot hold a NUL byte (it goes into an "
                         "environment)")
    size = len(value.encode("utf-8", "surrogatepass"))
    if size > VALUE_MAX:
        raise ValueError(f"a secret's value is at most {VALUE_MAX} bytes, not {size}")
    return value


def environment(ctx: UnitContext) -> Dict[str, str]:
    """``SecretEnvironment=`` of [Service]: environment variable -> secret name, each
    assignment split into words as Environment= is; errors name the line."""
    refs: Dict[str, str] = {}
    for entry in ctx.many(SECTION, OPTION):
        for word in ctx.split(entry):
            var, eq, name = word.partition("=")
            if not eq or not _ENV_NAME.fullmatch(var):
                ctx.fail(entry, f"{word!r} is not VAR=secret_name")
            try:
                refs[var] = check_name(name)
            except SecretNameError as exc:
                ctx.fail(entry, str(exc))
    return refs


class SecretSource(Protocol):
    """Where the engine gets secrets from (fleetd.daemon.secrets.Secrets)."""

    def lookup(self, name: str) -> Optional[Tuple[str, str]]:
        """(version, value) of the secret ``name``; None if it is not set. Raises
        LookupError when it is set but cannot be read (the message says why, never the
        value)."""


def sealed_hash(unit_hash: str, versions: Mapping[str, Tuple[str, str]]) -> str:
    """The hash of a unit with secrets: its rendered content's, combined with each
    variable's secret name and version (sorted: one answer for one state). A unit
    without secrets keeps its own hash."""
    if not versions:
        return unit_hash
    h = hashlib.sha256(unit_hash.encode())
    for var, (name, version) in sorted(versions.items()):
        h.update(f"\0{var}={name}@{version}".encode())
    return h.hexdigest()


Sealed = Tuple[str, Dict[str, str]]  # the spec's hash, and variable -> value


def seal(unit_hash: str, refs: Mapping[str, str], source: Optional[SecretSource]
         ) -> Union[Sealed, str]:
    """The spec's hash and the values of ``refs`` (variable -> secret name) for a unit
    of ``unit_hash``; or why it cannot run (a secret not set, or not readable), as a
    reason for the unit."""
    if not refs:
        return unit_hash, {}
    if source is None:
        return "this fleetd keeps no secrets"
    versions: Dict[str, Tuple[str, str]] = {}
    values: Dict[str, str] = {}
    missing = []
    for var, name in sorted(refs.items()):
        try:
            found = source.lookup(name)
        except LookupError as exc:
            return f"secret {name}: {exc}"
        if found is None:
            missing.append(name)
            continue
        versions[var] = (name, found[0])
        values[var] = found[1]
    if missing:
        which = ", ".join(sorted(set(missing)))
        return (f"secret {which} is not set (fleetctl secret set {missing[0]})"
                if len(set(missing)) == 1 else
                f"secrets {which} are not set (fleetctl secret set NAME)")
    return sealed_hash(unit_hash, versions), values


def masked(refs: Mapping[str, str]) -> Dict[str, str]:
    """How status shows a unit's secret variables: ``VAR`` -> ``*** (secret name)``."""
    return {var: f"{MASK} (secret {name})" for var, name in sorted(refs.items())}
