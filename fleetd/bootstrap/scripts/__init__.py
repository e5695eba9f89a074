"""The programs fleetd runs on a host, as files that shellcheck and ruff can read.

Each one is sent on the stdin of ``sh -s -- ARGS`` or ``python3 -I - ARGS`` (see
fleetd.bootstrap.remote), so none needs quoting on the command line, which the user's
login shell does. The ``*.py`` ones run on the host's python3 (3.9+, the probe made
sure; no psutil unless the payload brought it): standard library only, and nothing runs
when they are imported here. ``probe.sh`` runs before that is known, so its embedded
Python must run on any python3 (no f-strings).

A line ``. ./NAME.sh`` is replaced by that file's text (the host gets one script);
``# shellcheck source-path=SCRIPTDIR`` above it lets ``shellcheck -x`` follow it.
"""

from __future__ import annotations

import functools
import importlib.resources
import re

_INCLUDE = re.compile(r"^\. \./([A-Za-z0-9_-]+\.sh)$", re.MULTILINE)


@functools.cache
def text(name: str) -> str:
    """The script ``name`` (``prepare.sh``, ``ready.py``, ...), includes expanded."""
    body = importlib.resources.files(__name__).joinpath(name).read_text(encoding="utf-8")
    return _INCLUDE.sub(lambda m: text(m.group(1)), body)
