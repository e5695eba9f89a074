"""What a request carries, read and bounded: a body of MAX_BODY bytes arriving within
the idle timeout, JSON MAX_DEPTH deep, text that is UTF-8, numbers read by
``fleetd.wire.numbers`` (finite, in range), fields and parameters of the types asked.
A field or parameter that is wrong is ``Invalid`` naming it; a body that is not a
JSON object, or does not arrive, is ``Refused``."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple, TypeVar

from aiohttp import web

from fleetd.daemon.http.access import CALLER
from fleetd.daemon.http.errors import SURROGATE, Refused
from fleetd.daemon.metrics import Metrics
from fleetd.daemon.service.errors import Invalid, shown
from fleetd.daemon.service.machines import Machines
from fleetd.daemon.service.secrets import Secrets
from fleetd.daemon.service.units import Units
from fleetd.daemon.service.waits import MAX_WAIT_S
from fleetd.engine.events import Bus
from fleetd.wire import numbers

MAX_DEPTH = 16  # JSON nesting: fleetctl's bodies are 3 deep
MAX_LINES = 10000  # log lines one request asks of an agent
N = TypeVar("N", int, float)


@dataclasses.dataclass(frozen=True)
class Services:
    """What the routes serve: the services, and the few facts of the daemon itself."""

    units: Units
    machines: Machines
    started_at: float
    idle_timeout_s: float
    # this fleetd's part in the cluster (name, leader, epoch, whether reads are stale)
    status: Callable[[], Dict[str, Any]]
    # list-servers' rows: every fleetd and etcd member
    servers: Callable[[], Awaitable[List[Dict[str, Any]]]]
    secrets: Secrets  # fleetctl secret: names and versions out, values only in
    # what happened, with why (fleetctl events): the leader's engine and sessions publish
    events: Bus = dataclasses.field(default_factory=Bus)
    metrics: Metrics = dataclasses.field(default_factory=Metrics)  # GET /metrics


SERVICES: web.AppKey[Services] = web.AppKey("services")


def services(request: web.Request) -> Services:
    return request.app[SERVICES]


async def _read(request: web.Request) -> bytes:
    """The whole body, at most MAX_BODY bytes (aiohttp answers 413 past it), arriving
    within the idle timeout: a client that sends half a body does not hold a handler."""
    idle = services(request).idle_timeout_s
    try:
        return await asyncio.wait_for(request.read(), idle)
    except asyncio.TimeoutError:
        raise Refused(408, f"request body: not all of it arrived within {idle:g}s") from None


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


async def body(request: web.Request) -> Dict[str, Any]:
    """The body as a JSON object of text fleetd can store: UTF-8, no ``NaN``, no lone
    surrogate, at most MAX_DEPTH deep (100k levels would exhaust the parser's stack)."""
    raw = await _read(request)
    try:
        data = json.loads(raw.decode("utf-8"), parse_constant=_no_constant)
    except UnicodeDecodeError as exc:
        raise Refused(400, f"request body is not UTF-8 (byte {exc.start})") from None
    except RecursionError:
        raise Refused(400, f"request body: JSON nested deeper than {MAX_DEPTH}") from None
    except ValueError as exc:
        raise Refused(400, f"request body is not JSON: {exc}") from None
    if not isinstance(data, dict):
        raise Refused(400, "request body is not a JSON object")
    why = _malformed(data)
    if why:
        raise Refused(400, f"request body: {why}")
    return data


def _malformed(data: object) -> Optional[str]:
    """Why decoded JSON cannot be taken (too deep, a lone surrogate), or None. A loop,
    not a recursion: the depth is what is being checked."""
    todo: List[Tuple[object, int]] = [(data, 1)]
    while todo:
        value, depth = todo.pop()
        if depth > MAX_DEPTH:
            return f"JSON nested deeper than {MAX_DEPTH}"
        if isinstance(value, dict):
            todo.extend((k, depth) for k in value)
            todo.extend((v, depth + 1) for v in value.values())
        elif isinstance(value, list):
            todo.extend((v, depth + 1) for v in value)
        elif isinstance(value, str) and SURROGATE.search(value):
            return "a lone surrogate (\\ud800-\\udfff) is not text"
    return None


# --- query parameters --------------------------------------------------------------------
def _query(request: web.Request, key: str, default: N,
           parse: Callable[[str, N, Optional[N]], N], lo: N, hi: Optional[N]) -> N:
    """The query parameter ``key`` as ``parse`` (numbers.parse_*) reads it, ``default``
    when absent, or Invalid naming ``key`` and what was wanted."""
    text = request.query.get(key)
    if text is None:
        return default
    try:
        return parse(text, lo, hi)
    except numbers.NumberError as exc:
        raise Invalid(key, str(exc)) from None


def query_float(request: web.Request, key: str, default: float, lo: float,
                hi: Optional[float] = None) -> float:
    return _query(request, key, default, numbers.parse_float, lo, hi)


def query_int(request: web.Request, key: str, default: int, lo: int,
              hi: Optional[int] = None) -> int:
    return _query(request, key, default, numbers.parse_int, lo, hi)


_YES, _NO = ("1", "true", "yes"), ("", "0", "false", "no")


def query_flag(request: web.Request, key: str) -> bool:
    value = request.query.get(key, "")
    if value not in _YES + _NO:
        raise Invalid(key, f"want one of 1, true, yes, 0, false, no; not {value!r}")
    return value in _YES


def timeout(request: web.Request) -> float:
    """A long poll's ``timeout`` in seconds (default 30): finite, not negative; past
    MAX_WAIT_S it answers at MAX_WAIT_S (the CLI asks again)."""
    return min(query_float(request, "timeout", 30.0, 0.0), MAX_WAIT_S)


def lines(request: web.Request) -> int:
    """The ``lines`` query parameter (how many log lines), 0 to MAX_LINES."""
    return query_int(request, "lines", 10, 0, MAX_LINES)


# --- body fields -------------------------------------------------------------------------
def flag(data: Dict[str, Any], key: str) -> bool:
    """A JSON field that must be true or false (absent: false); ``"no"`` is no false."""
    value = data.get(key, False)
    if value is None or isinstance(value, bool):
        return bool(value)
    raise Invalid(key, f"want true or false, not {shown(value)}")


def text(data: Dict[str, Any], key: str) -> Optional[str]:
    """A JSON field that must be a string when given (a list would be stored as its
    repr); None or "" when absent."""
    value = data.get(key)
    if value is None or isinstance(value, str):
        return value
    raise Invalid(key, f"want a string, not {type(value).__name__}")


def names(data: Dict[str, Any]) -> List[str]:
    value = data.get("names")
    if not isinstance(value, list) or not value or not all(isinstance(n, str) for n in value):
        raise Invalid("names", "want a non-empty list of unit names")
    return value


def submitter(request: web.Request) -> str:
    """Who sent ``request``, for a unit version's ``via`` (``fleetctl history``): the
    caller (a token's name, or root on the socket) and, over TCP, where it came from."""
    caller = request.get(CALLER)
    name = caller.name if caller else "unknown"
    return f"{name} from {request.remote}" if request.remote else name
