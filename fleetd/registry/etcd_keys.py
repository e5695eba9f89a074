"""How EtcdRegistry lays fleetd's state out in etcd: keys, and JSON values checked when
read back (pure; ``etcd.py`` does the talking).

Every key is under ``<prefix>/`` (default ``/fleetd/``); a name in a key is
percent-encoded (``urllib.parse.quote`` with no safe ``/``), so ``/`` and ``%`` in a
name never make another key. Who writes each key decides where it lives: a user's write
and the engine's never touch the same key, so they never conflict.

=============================  =========================================  ===========
key                            value (JSON)                               written by
=============================  =========================================  ===========
``leader``                     the leader lock's (engine/etcd_lock.py);   the lock
                               writes fenced by ``epoch`` compare its
                               create_revision
``seq/units``                  bumped by every write to ``units/``:       users
                               those writes compare it, so a batch sees
                               every unit as it decided (texts' garbage
                               collection, templates' instances)
``texts/<hash>``               ``{"text"}`` (content-addressed; dropped   users
                               once no unit uses it)
``units/<name>``               ``{"hash","vars","desired","generation",   users
                               "updated_at","versions"}``; versions:
                               ``[[version, hash, at, via, options],
                               ...]``, the newest VERSIONS_KEPT (absent:
                               none; options absent: {})
``placements/<name>``          ``{"machine","reason","placed_at",         engine
                               "handoff","retries"}``; the record's
                               generation is the unit's + ``retries``
``failures/<unit>/<id>``       ``{"hash","machine","at","reason"}``       engine
``machines/<name>``            ``{"address","port","user","identity",     users
                               "known_hosts","agent_command","metadata",
                               "draining","drain_deadline"}``
``addresses/<address:port>``   ``{"machine"}``: one machine per address   users
``machinestate/<name>``        ``{"machine_id","facts","state","error",   sessions
                               "last_seen"}``
``observed/<machine>/<unit>``  the ObservedRecord's fields but names      sessions
``writers/<id>``               a token per write of one EtcdRegistry:     each fleetd
                               its writes compare it (exactly once)
``secrets/<name>``             ``{"sealed","version","set_at"}``: the     users
                               value encrypted by fleetd's key (never
                               in clear: fleetd/daemon/secrets.py)
=============================  =========================================  ===========

A value that does not parse or has a field of the wrong type is not fleetd's (a hand
edit, another program, a newer fleetd): ``decode`` raises ``BadValue`` naming the key
and the field, and the cache skips that key with a warning.
"""

from __future__ import annotations

import json
import math
import urllib.parse
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

from fleetd.registry.base import DESIRED_STATES

Doc = Dict[str, Any]

# what each kind of key holds: its name parts, then how its value is checked
KINDS = ("seq", "texts", "units", "placements", "failures", "machines", "addresses",
         "machinestate", "observed", "writers", "secrets")
_PARTS = {"failures": 2, "observed": 2}  # the others: one name after the kind


class BadValue(ValueError):
    """A key or value that is not fleetd's; the message names the key and why."""


def quote(name: str) -> str:
    return urllib.parse.quote(name, safe="@.:-_")


def key(prefix: str, kind: str, *names: str) -> str:
    """``<prefix>/<kind>/<name>[/<name>]`` with each name percent-encoded."""
    return "/".join([prefix, kind, *(quote(n) for n in names)])


def parse_key(prefix: str, raw: bytes) -> Optional[Tuple[str, Tuple[str, ...]]]:
    """(kind, names) of a key under ``prefix``; None for a key fleetd does not read
    (the leader's, or one of another layout)."""
    try:
        text = raw.decode()
    except UnicodeDecodeError:
        return None
    if not text.startswith(prefix + "/"):
        return None
    kind, _, rest = text[len(prefix) + 1:].partition("/")
    if kind not in KINDS or not rest:
        return None
    parts = rest.split("/")
    if len(parts) != _PARTS.get(kind, 1) or not all(parts):
        return None
    return kind, tuple(urllib.parse.unquote(p) for p in parts)


def encode(doc: Mapping[str, Any]) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# -- field checks: each returns the value or raises ValueError saying what it wants ---


def _str(v: Any) -> str:
    if not isinstance(v, str):
        raise ValueError("not a string")
    return v


def _opt_str(v: Any) -> Optional[str]:
    return None if v is None else _str(v)


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError("not an integer")
    return v


def _opt_int(v: Any) -> Optional[int]:
    return None if v is None else _int(v)


def _count(v: Any) -> int:
    if _int(v) < 0:
        raise ValueError("negative")
    return int(v)


def _port(v: Any) -> int:
    if not 1 <= _int(v) <= 65535:
        raise ValueError("not a port")
    return int(v)


def _float(v: Any) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise ValueError("not a number")
    return float(v)


def _opt_float(v: Any) -> Optional[float]:
    return None if v is None else _float(v)


def _str_map(v: Any) -> Dict[str, str]:
    if not isinstance(v, dict) or not all(isinstance(x, str) for x in v.values()):
        raise ValueError("not an object of strings")
    return dict(v)


def _obj(v: Any) -> Dict[str, Any]:
    if not isinstance(v, dict):
        raise ValueError("not an object")
    return dict(v)


def _desired(v: Any) -> str:
    if v not in DESIRED_STATES:
        raise ValueError(f"not one of {DESIRED_STATES}")
    return str(v)


def _versions(v: Any) -> List[List[Any]]:
    if not isinstance(v, list):
        raise ValueError("not a list")
    for item in v:
        if not (isinstance(item, list) and len(item) in (4, 5) and isinstance(item[1], str)
                and isinstance(item[3], str) and isinstance([*item, {}][4], dict)):
            raise ValueError("not a list of [version, hash, at, via, options]")
        _count(item[0])
        _float(item[2])
    return [[*item[:4], dict([*item, {}][4])] for item in v]


Check = Callable[[Any], Any]
# fields a document may lack (written by an older fleetd), and what they are then
OPTIONAL: Dict[str, Dict[str, Any]] = {"units": {"versions": []}}
SCHEMAS: Dict[str, Dict[str, Check]] = {
    "texts": {"text": _str},
    "units": {"hash": _str, "vars": _str_map, "desired": _desired, "generation": _count,
              "updated_at": _float, "versions": _versions},
    "placements": {"machine": _opt_str, "reason": _str, "placed_at": _opt_float,
                   "handoff": _opt_str, "retries": _count},
    "failures": {"hash": _str, "machine": _str, "at": _float, "reason": _str},
    "machines": {"address": _str, "port": _port, "user": _str, "identity": _opt_str,
                 "known_hosts": _opt_str, "agent_command": _str, "metadata": _str_map,
                 "draining": _opt_float, "drain_deadline": _opt_float},
    "addresses": {"machine": _str},
    "machinestate": {"machine_id": _opt_str, "facts": _obj, "state": _str,
                     "error": _opt_str, "last_seen": _opt_float},
    "observed": {"hash": _str, "state": _str, "pid": _opt_int, "started_at": _opt_float,
                 "exit_status": _opt_int, "restarts": _count, "error": _opt_str,
                 "updated_at": _float, "generation": _count, "health": _str},
    "secrets": {"sealed": _str, "version": _str, "set_at": _float},
}


def decode(kind: str, raw_key: bytes, value: bytes) -> Doc:
    """The checked document of a ``kind`` key (``seq`` and ``writers``: any value, as
    ``{}``); BadValue naming the key and what is wrong."""
    schema = SCHEMAS.get(kind)
    if schema is None:
        return {}
    where = raw_key.decode(errors="replace")
    try:
        doc = json.loads(value, parse_constant=_no_constants)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadValue(f"etcd key {where}: not JSON ({e})") from None
    if not isinstance(doc, dict):
        raise BadValue(f"etcd key {where}: not a JSON object")
    out: Doc = {}
    for field, check in schema.items():
        if field not in doc and field in OPTIONAL.get(kind, {}):
            out[field] = list(OPTIONAL[kind][field])
            continue
        if field not in doc:
            raise BadValue(f"etcd key {where}: no {field!r}")
        try:
            out[field] = check(doc[field])
        except ValueError as e:
            raise BadValue(f"etcd key {where}: {field!r} {e}: {str(doc[field])[:80]!r}"
                           ) from None
    return out


def leader_key(prefix: str) -> str:
    return f"{prefix}/leader"


def check_prefix(prefix: str) -> str:
    """The prefix without a trailing ``/``; ValueError unless it starts with ``/`` (the
    daemon's config says the same of ``etcd.prefix``, naming the file)."""
    p = prefix.rstrip("/")
    if not p.startswith("/") or "\n" in p:
        raise ValueError(f"etcd prefix {prefix!r}: want an absolute path such as /fleetd")
    return p
