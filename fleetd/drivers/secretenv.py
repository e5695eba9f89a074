"""A unit's secret values, read from the file the agent wrote for it, at each start.

The agent moves the values fleetd sends out of the spec into a 0400 file of JSON
(fleetd.agent.secretfiles) and leaves its path in ``config["secret_file"]``; here they
become environment variables of the program (after Environment= and EnvironmentFile=:
a secret is what the unit asked for by name). The file is read like any file the agent
reads for a unit (drivers/files.py: regular, bounded), as root, before any User= switch,
so the program's user need not read it. Standard library only, Python 3.9+ (agent side).
"""

from __future__ import annotations

import json
from typing import Dict, Optional

from fleetd.drivers.files import read_regular


class SecretFileError(Exception):
    """The unit's secrets cannot be read; the message names the file, never a value."""


def load(path: Optional[str]) -> Dict[str, str]:
    """Variable -> value from ``path`` (None: the unit has no secrets)."""
    if not path:
        return {}
    try:
        data = json.loads(read_regular(path).decode("utf-8"))
    except OSError as exc:
        raise SecretFileError(f"secrets file {path}: {exc.strerror or exc}") from None
    except ValueError:
        raise SecretFileError(f"secrets file {path}: not the agent's JSON") from None
    if not isinstance(data, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise SecretFileError(f"secrets file {path}: not an object of strings")
    return data
