"""What the service layer refuses, in the domain's words; no HTTP status here.

Each refusal carries a message for the user that names the field or thing that is
wrong, and ``details``: more for a client to show (a failed install's problems, every
invalid unit of a submit). The HTTP layer maps each class to its status in one place
(fleetd/daemon/http/errors.py); a change of status is made there, not here.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Dict, Optional


class ServiceError(Exception):
    """A request the services will not or cannot carry out; nothing was changed."""

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.details: Dict[str, Any] = details


class NotFound(ServiceError):
    """The unit or machine named does not exist."""


class Conflict(ServiceError):
    """The thing exists, or is busy, in a way that rules the request out now."""


class Invalid(ServiceError):
    """A value that is wrong: ``field`` names where (None: the request as a whole)."""

    def __init__(self, field: Optional[str], why: str, **details: Any) -> None:
        super().__init__(f"{field}: {why}" if field else why, **details)
        self.field = field
        self.why = why


class TooLarge(Invalid):
    """A value over a limit fleetd keeps (a unit's text)."""


class HostFailed(ServiceError):
    """Work on a host (installing its agent) failed there; ``details`` say what."""


class AgentRefused(ServiceError):
    """The machine's agent answered, with an error."""


class AgentUnreachable(ServiceError):
    """The machine's agent could not be asked."""


class NotLeading(ServiceError):
    """What only the leading fleetd can do (it holds the sessions to the hosts), asked of
    a follower: nothing was done; ``details`` say so (``ready: false``, which sends a
    client with several endpoints on to the next) and who leads."""

    def __init__(self, what: str, leader: Optional[str] = None) -> None:
        where = f"the leading fleetd ({leader})" if leader else "the leading fleetd"
        super().__init__(f"{what} goes through {where}; this fleetd follows",
                         ready=False, leader=leader)


Following = Callable[[], Optional[str]]  # None: this fleetd leads; else who does ("")


def shown(value: object) -> str:
    """A JSON value as an error quotes it: short (a 4 MiB "name" is not echoed back)."""
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."
