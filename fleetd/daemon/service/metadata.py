"""A machine's metadata changed at runtime: ``fleetctl machine set-metadata NAME k=v ...``
(``POST /v1/machines/{name}/metadata`` with ``{"set": {k: v}, "unset": [k]}``).

Where metadata comes from, and which wins: ``fleetctl machine add --metadata`` (and
``fleetctl lab up``, which adds its hosts so) gives a machine its first metadata, stored
with the machine in the registry. ``set-metadata`` changes that stored copy, which is
the only one: fleetd's restarts, the agent's reconnects and ``lab up`` run again (it
adds only hosts fleetd does not know) read it and never write it, so a change stays
until the next ``set-metadata``; only removing the machine and adding it again starts
from ``--metadata`` again. The engine then moves what no longer matches, each unit
with a hand-off (engine/handoff.py ``rematch``).

Pure checks here (what the request may say, what the new mapping is); the write is
``Machines.set_metadata``'s.
"""

from __future__ import annotations

import re
from typing import Dict, List, Mapping, Sequence, Tuple

from fleetd.daemon.service.errors import Invalid, shown

KEY = re.compile(r"[A-Za-z0-9_.-]{1,63}")
# what a MachineMetadata= item can name after its '=': no blank, comma or quote
VALUE = re.compile(r"[A-Za-z0-9_.:/@+-]{1,255}")
MAX_KEYS = 64  # per machine: metadata is for scheduling, not a store
_KEY_RULE = "letters, digits, _ . -; at most 63"
_VALUE_RULE = "letters, digits, _ . : / @ + -; at most 255"


def check(set_: object, unset: object) -> Tuple[Dict[str, str], List[str]]:
    """The request's ``set`` (keys to values) and ``unset`` (keys), each key and value
    checked; Invalid names the field, and the key or value that is wrong."""
    if set_ is None:
        set_ = {}
    if unset is None:
        unset = []
    if not isinstance(set_, dict):
        raise Invalid("set", f"want an object of key: value, not {shown(set_)}")
    if not isinstance(unset, list):
        raise Invalid("unset", f"want a list of keys, not {shown(unset)}")
    for where, keys in (("set", list(set_)), ("unset", unset)):
        for key in keys:
            if not isinstance(key, str) or not KEY.fullmatch(key):
                raise Invalid(where, f"{shown(key)} is not a metadata key ({_KEY_RULE})")
    for key, value in set_.items():
        if value == "":
            raise Invalid(f"set.{key}", f"an empty value matches no MachineMetadata=; to "
                                        f"remove {key}, unset it (fleetctl: {key}= or "
                                        f"--unset {key})")
        if not isinstance(value, str) or not VALUE.fullmatch(value):
            raise Invalid(f"set.{key}", f"{shown(value)} is not a metadata value "
                                        f"({_VALUE_RULE})")
    both = sorted(set(set_) & set(unset))
    if both:
        raise Invalid("unset", f"{both[0]} is both set and unset")
    if not set_ and not unset:
        raise Invalid(None, "nothing to change: give set {key: value} or unset [key]")
    return dict(set_), list(unset)


def changed(current: Mapping[str, str], set_: Mapping[str, str],
            unset: Sequence[str]) -> Dict[str, str]:
    """``current`` with ``unset`` removed (a key it does not have is no error: the
    request is idempotent) and ``set_`` over it; Invalid past MAX_KEYS."""
    new = {k: v for k, v in current.items() if k not in unset}
    new.update(set_)
    if len(new) > MAX_KEYS and len(new) > len(current):
        raise Invalid("set", f"a machine has at most {MAX_KEYS} metadata keys; this would "
                             f"make {len(new)}")
    return new
