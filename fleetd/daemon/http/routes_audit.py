"""The audit record over HTTP: the middleware that records every write (daemon/audit.py
says what and where), and ``GET /v1/audit`` (admin), which ``fleetctl audit`` reads:
``after=SEQ`` the records after it, ``limit=N`` the last N, ``timeout=S`` waits that
long for one to come when there is none yet (``audit -f``)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any, Dict, List, Optional

from aiohttp import web

from fleetd.daemon.audit import WRITES, AuditLog
from fleetd.daemon.http import request as req
from fleetd.daemon.http.access import CALLER
from fleetd.daemon.http.errors import Handler, Refused, status_of

AUDIT: web.AppKey[AuditLog] = web.AppKey("audit", AuditLog)
CLIENT_GONE = 499  # nginx's: the client went away before the answer (the work may not)
MAX_RECORDS = 10000
REFUSED_S = 2.0  # the body of a refused write, read to name its target: at most this long


def target(request: web.Request) -> Optional[str]:
    """What the write names: the unit, machine, token or secret of its URL, or the names
    its body gave (units of a submit, ``names`` of start/stop, a new machine or token).
    Only names: never a value (a secret's is in its body)."""
    if "name" in request.match_info:
        return request.match_info["name"]
    raw = getattr(request, "_read_bytes", None)  # the body, if the handler read it
    if not raw:
        return None
    try:
        body = json.loads(raw)
    except (ValueError, RecursionError):  # what the handler refused: 100k [ deep, ...
        return None
    if not isinstance(body, dict):
        return None
    names: List[Any] = []
    if isinstance(body.get("names"), list):
        names = body["names"]
    elif isinstance(body.get("units"), list):
        names = [u.get("name") for u in body["units"] if isinstance(u, dict)]
    elif body.get("name") or body.get("address"):
        names = [body.get("name") or body.get("address")]
    shown = [n for n in names if isinstance(n, str)]
    return ",".join(shown)[:1000] or None


def entry(request: web.Request, status: int) -> Dict[str, Any]:
    caller = request.get(CALLER)
    resource = request.match_info.route.resource
    return {"who": caller.name if caller else "(no valid token)",
            "role": caller.role if caller else None,
            "method": request.method,
            "route": resource.canonical if resource else request.path,
            "path": request.path, "target": target(request),
            "from": request.remote or "unix socket", "status": status}


def audit_middleware(audit: AuditLog) -> Any:
    @web.middleware
    async def record(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.method not in WRITES:
            return await handler(request)
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except (web.HTTPException, Refused) as exc:
            status = exc.status
            raise
        except (asyncio.CancelledError, ConnectionResetError):
            status = CLIENT_GONE
            raise
        except Exception as exc:
            status = status_of(exc)
            raise
        finally:
            if status == 403:  # a known caller refused: what did they try? (bounded)
                await _read_refused(request)
            audit.record(entry(request, status))

    return record


async def _read_refused(request: web.Request) -> None:
    """Read the body of a write refused before its handler (403), so that its record
    names what it was for; at most MAX_BODY bytes (aiohttp's limit), within REFUSED_S."""
    if request.can_read_body:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(request.read(), REFUSED_S)


async def list_audit(request: web.Request) -> web.Response:
    after = req.query_int(request, "after", 0, 0)
    limit = req.query_int(request, "limit", 100, 1, MAX_RECORDS)
    timeout = req.timeout(request) if "timeout" in request.query else 0.0
    audit = request.app[AUDIT]
    records = await audit.wait(after, timeout, limit)
    return web.json_response({"records": records, "last": audit.seq})
