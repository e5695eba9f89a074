"""A unit's versions in etcd (registry/base.py ``VersionRecord``): kept in the unit's own
document under ``versions`` as ``[version, hash, at, via, options]`` entries, the newest
``VERSIONS_KEPT`` (etcd_keys.py checks them when read). Pure: what etcd_writes.py puts in
a unit's document, and which texts the document keeps alive.
"""

from __future__ import annotations

from typing import Any, List, Mapping, Optional

from fleetd.registry.base import BEFORE_VERSIONS, VERSIONS_KEPT, NotFound
from fleetd.registry.etcd_keys import Doc


def hashes(doc: Doc) -> List[str]:
    """The texts a unit's document keeps: its content's and its versions'."""
    return [doc["hash"], *(v[1] for v in doc.get("versions") or ())]


def versioned(row: Optional[Doc], content_hash: str, now: float, via: str,
              options: Mapping[str, Any]) -> List[Any]:
    """The versions of a unit (stored as ``row``, None: new) given ``content_hash``."""
    kept = list((row or {}).get("versions") or ())
    if row is not None and row["hash"] != content_hash and not kept:  # an older fleetd's
        kept.append([1, row["hash"], row["updated_at"], BEFORE_VERSIONS, {}])
    if row is None or row["hash"] != content_hash:
        kept.append([kept[-1][0] + 1 if kept else 1, content_hash, now, via, dict(options)])
    return kept[-VERSIONS_KEPT:]


def with_options(doc: Doc, unit: str, version: int, options: Mapping[str, Any]) -> Doc:
    """``doc`` (unit ``unit``'s) with its version ``version``'s options replaced;
    NotFound if it has no such version."""
    kept = [list(v) for v in doc.get("versions") or ()]
    for v in kept:
        if v[0] == version:
            v[4:] = [dict(options)]
            return {**doc, "versions": kept}
    raise NotFound(f"{unit} has no version {version}")
