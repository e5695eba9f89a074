"""fleetd's API client, for fleetctl and the lab: the standard library (a request over
``unix://`` or ``http://``: fleetd.endpoints.PlainConnection; https:// and streams:
http.client), over a Unix socket or TCP, to one fleetd or to the first of several that
answers.

Not aiohttp, which the daemon serves with: importing it costs ~170 ms, most of the wall
time of a blocking ``fleetctl start``. A CLI request is one blocking round trip anyway.
It sits below both of its users (fleetd.cli, fleetd.lab), so neither imports the other.

**Several endpoints** (``--endpoint A,B,C``, as fleet took; ``parse_endpoints`` is the one
place an endpoint is read). A request goes to the endpoint that answered last (at first,
the first), and moves on to the next, round the list once, only while it is sure fleetd
did not act on it:

- the endpoint cannot be reached: the connect fails (connection refused, no socket
  there, the connect timing out: CONNECT_S when there is somewhere else to go);
- it answered 503 with ``"ready": false`` in its JSON: a fleetd that says it cannot
  serve yet (``not_ready``), and did nothing.

Any other answer is *the* answer, 4xx and 5xx included (a 503 without ``ready: false``,
such as an agent that cannot be reached, is fleetd's answer about that agent).

A connection that breaks *after* the request was sent (fleetd killed while it worked, a
long poll cut) may have been applied. It goes on through the next endpoint only when
applying it twice is applying it once (``may_resend``), which fleetd's services make true
for (fleetd/daemon/service/units.py, machines.py):

- every GET: reads, and the long polls, which change nothing;
- ``POST /v1/units`` (submit, load, start): the registry stores a unit by name and
  content hash; the same name with the same content and variables is no change
  (``put_units``), with ``replace`` it is the same content again; ``desired`` is set,
  not toggled;
- ``POST /v1/units/state``: sets a desired state by name (``set_desired``);
- ``POST /v1/machines/NAME/undrain``: clears the drain.

Not resent: ``POST /v1/units/restart`` (each application is another restart: a new
generation), ``/v1/units/destroy`` and ``DELETE /v1/machines/NAME`` (the second one answers
"does not exist" for what the first did), ``POST /v1/machines`` (installs an agent; the
second is "already exists"), ``/upgrade``, ``/drain`` (its deadline is counted from each
application). For those the error says the request may have been applied.

A long poll that is resent goes on with the time it has left: its ``timeout=`` is what
remains of the first one's. ``GET /v1/machines?after=V`` is asked without ``after`` on
another fleetd (V numbers the changes the first one saw, in its memory), so it answers at
once and the caller's next poll counts from the new fleetd's version; every caller
(fleetctl's waits, the lab's) polls again until what it waits for is there.

``stream`` (``journal -f``) moves on only before its answer began: a broken stream ends
with the error, as it did. The token goes to every endpoint, as it went to the one.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
import urllib.parse
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, Optional, Sequence, Tuple, Type, Union

from fleetd.endpoints import Endpoint, PlainConnection, TlsFiles, explain, plain_to_tls, speaks_tls
from fleetd.endpoints import EndpointError as EndpointError  # fleetctl's, as before
from fleetd.endpoints import parse_endpoint as parse_endpoint
from fleetd.endpoints import parse_endpoints as parse_endpoints

DEFAULT_ENDPOINT = "unix:///run/fleetd/fleetd.sock"
CONNECT_S = 5.0  # with another endpoint to try, a connect waits this long at most
HINT = "is fleetd running? `fleetctl lab up` starts one"

if TYPE_CHECKING:
    import http.client

    Connection = Union[http.client.HTTPConnection, PlainConnection]


def _failures() -> Tuple[Type[BaseException], ...]:
    """What a failed connect or exchange raises: OSError, and http.client's errors once
    http.client is loaded (a plain request never loads it: fleetd.endpoints says why)."""
    loaded = sys.modules.get("http.client")
    return (OSError,) if loaded is None else (OSError, loaded.HTTPException)



def segment(name: str) -> str:
    """A unit or machine name as one path segment of a route: fleetd judges the name, and
    a ``?``, ``/`` or control character in it cannot change the request."""
    return urllib.parse.quote(name, safe="@")


class ApiError(Exception):
    """fleetd's refusal (``status``, its JSON ``body``), or status 0: no fleetd answered;
    ``tried`` then says, endpoint by endpoint, why."""

    def __init__(self, status: int, message: str, body: Optional[Dict[str, Any]] = None,
                 tried: Sequence[Tuple[str, str]] = ()):
        self.status = status
        self.body = body or {}
        self.tried = list(tried)
        super().__init__(message)


NOT_READY = "not ready: "  # how an endpoint that answered 503 ready:false is reported


def not_ready(status: int, body: Dict[str, Any]) -> bool:
    """A fleetd that says it cannot serve yet, and did nothing: 503 and ``"ready":
    false`` (the one answer after which the next endpoint is asked)."""
    return status == 503 and body.get("ready") is False


def may_resend(method: str, path: str) -> bool:
    """May a request whose connection broke after it was sent be sent again, to another
    fleetd? Only if applying it twice is applying it once (the module's docstring says
    why each is)."""
    route = _route(path).rstrip("/")
    if method == "GET":
        return True
    if method != "POST":
        return False
    parts = route.split("/")  # "", "v1", ...
    return route in ("/v1/units", "/v1/units/state") or (
        len(parts) == 5 and parts[:3] == ["", "v1", "machines"] and parts[4] == "undrain")


def resumed(path: str, elapsed: float, same_fleetd: bool) -> str:
    """``path`` to send again ``elapsed`` seconds after it was first sent: a long poll's
    ``timeout=`` is what is left of it (never below 0), and ``after=`` (a version of
    the fleetd that numbered it) is dropped when another fleetd is asked."""
    route, _, query = path.partition("?")
    if not query:
        return path
    kept = []
    for part in query.split("&"):
        key, eq, value = part.partition("=")
        if key == "after" and not same_fleetd:
            continue
        if key == "timeout" and eq:
            with contextlib.suppress(ValueError):  # fleetd refuses it, as it did
                part = f"timeout={max(0.0, float(value) - elapsed):.3f}"
        kept.append(part)
    return f"{route}?{'&'.join(kept)}" if kept else route


class _Broken(Exception):
    """The connection broke after the request was sent (``reason``, from ``cause``)."""

    def __init__(self, cause: BaseException) -> None:
        self.reason = _reason(cause)
        super().__init__(self.reason)
        self.cause = cause


class Client:
    def __init__(self, endpoint: Optional[str] = None, token: Optional[str] = None,
                 tls: Optional[TlsFiles] = None,
                 request_timeout: Optional[float] = None) -> None:
        """``endpoint``: one or a comma-separated list (``parse_endpoints``; EndpointError
        when it or a TLS file cannot be read); default FLEETCTL_ENDPOINT, then
        DEFAULT_ENDPOINT. ``tls``: for https://, default FLEETCTL_CA_FILE and friends.
        ``request_timeout`` (fleetctl's --request-timeout): how long any request may
        wait for its answer, beyond the ``timeout=`` a long poll asks fleetd to wait
        (``bounded``); None: each caller's own ``timeout``."""
        self.request_timeout = request_timeout
        self.endpoints = parse_endpoints(
            endpoint or os.environ.get("FLEETCTL_ENDPOINT") or DEFAULT_ENDPOINT)
        self.token = token or os.environ.get("FLEETCTL_TOKEN")
        env = os.environ.get
        self.tls = tls or TlsFiles(env("FLEETCTL_CA_FILE"), env("FLEETCTL_CERT_FILE"),
                                   env("FLEETCTL_KEY_FILE"))
        self._context = self.tls.context() if any(e.tls for e in self.endpoints) else None
        self._current = 0  # the endpoint that answered last: requests start there

    @property
    def endpoint(self) -> str:
        """The endpoint the next request starts with (the one that answered last)."""
        return self.endpoints[self._current].text

    def _order(self) -> List[int]:
        n = len(self.endpoints)
        return [(self._current + i) % n for i in range(n)]

    def _connect(self, e: Endpoint, timeout: float, plain: bool = False) -> Connection:
        """A connected connection whose reads wait ``timeout``; OSError if none.
        ``plain``: a PlainConnection where no TLS is needed."""
        connect_s = timeout if len(self.endpoints) == 1 else min(timeout, CONNECT_S)
        conn = e.connection(connect_s, self._context, plain)
        try:
            conn.connect()
            assert conn.sock is not None
            conn.sock.settimeout(timeout)
        except BaseException:
            conn.close()
            raise
        return conn

    def _headers(self, json_body: bool) -> Dict[str, str]:
        """As before the list: the token to every endpoint, over a socket or TCP."""
        headers = {"Content-Type": "application/json"} if json_body else {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        return headers

    def request(self, method: str, path: str, body: Optional[Dict[str, Any]] = None,
                timeout: float = 60.0) -> Dict[str, Any]:
        """fleetd's answer (ApiError for a refusal), from the first endpoint that
        answers, as the module's docstring says."""
        payload = json.dumps(body) if body is not None else None
        timeout = self.bounded(path, timeout)
        tried: List[Tuple[str, str]] = []
        sent_at: Optional[float] = None  # when it was first sent: a long poll's clock
        sent_to: Optional[int] = None
        for i in self._order():
            e = self.endpoints[i]
            elapsed = 0.0 if sent_at is None else time.monotonic() - sent_at
            this_path = path if sent_at is None else resumed(path, elapsed, i == sent_to)
            try:
                conn = self._connect(e, max(timeout - elapsed, min(timeout, 1.0)), plain=True)
            except _failures() as exc:
                _tls_failure(e, exc, self.tls)
                tried.append((e.text, _reason(exc)))
                continue
            if sent_at is None:
                sent_at, sent_to = time.monotonic(), i
            try:
                status, reason, data = self._exchange(conn, method, this_path, payload)
            except _Broken as exc:
                _tls_failure(e, exc.cause, self.tls)
                if isinstance(exc.cause, TimeoutError) and self.request_timeout is not None:
                    exc.reason = f"no answer in {timeout:g}s (--request-timeout)"
                if not may_resend(method, path):
                    raise ApiError(0, f"lost fleetd at {e.text} after sending {method} "
                                      f"{_route(path)}: {exc.reason}; it may have been "
                                      "applied: look before doing it again",
                                   tried=[*tried, (e.text, exc.reason)]) from None
                tried.append((e.text, f"connection lost after the request was sent: "
                                      f"{exc.reason}"))
                continue
            if not_ready(status, data):
                tried.append((e.text, f"{NOT_READY}{data.get('error') or 'answered 503'}"))
                continue
            self._current = i
            if status >= 400:
                raise _refusal(status, data, reason)
            return dict(data)
        raise _unreachable(tried)

    def bounded(self, path: str, timeout: float) -> float:
        """A request's ``timeout`` under ``request_timeout``: a long poll (``timeout=T``
        in its query, the time fleetd is asked to wait) gets T more."""
        if self.request_timeout is None:
            return timeout
        asked = 0.0
        for part in path.partition("?")[2].split("&"):
            key, _, value = part.partition("=")
            if key == "timeout":
                with contextlib.suppress(ValueError):
                    asked = max(0.0, float(value))
        return min(timeout, self.request_timeout + asked)

    def _exchange(self, conn: Connection, method: str, path: str,
                  payload: Optional[str]) -> Tuple[int, str, Dict[str, Any]]:
        """The status, reason and JSON of one answer on a connected ``conn`` (closed after);
        _Broken when the connection breaks before the whole answer came."""
        try:
            conn.request(method, _quoted(path), body=payload,
                         headers=self._headers(True))
            resp = conn.getresponse()
            raw = resp.read()
        except _failures() as exc:
            raise _Broken(exc) from None
        finally:
            conn.close()
        return resp.status, resp.reason, _decode(raw)

    def stream(self, path: str, timeout: Optional[float] = None) -> Iterator[bytes]:
        """The body of a GET, line by line as it arrives (for ``journal -f``), from the
        first endpoint that answers; a stream that breaks ends with the error."""
        tried: List[Tuple[str, str]] = []
        for i in self._order():
            e = self.endpoints[i]
            try:
                conn = self._connect(e, timeout or 3600.0)
                assert not isinstance(conn, PlainConnection)  # a stream is http.client's
            except _failures() as exc:
                _tls_failure(e, exc, self.tls)
                tried.append((e.text, _reason(exc)))
                continue
            if timeout is None:
                assert conn.sock is not None
                conn.sock.settimeout(None)
            try:
                conn.request("GET", _quoted(path), headers=self._headers(False))
                resp = conn.getresponse()
                if resp.status >= 400:
                    data = _decode(resp.read())
                    if not_ready(resp.status, data):
                        tried.append((e.text, f"{NOT_READY}{data.get('error')}"))
                        continue
                    self._current = i
                    raise _refusal(resp.status, data, resp.reason)
                self._current = i
                while True:
                    line = resp.readline()
                    if not line:
                        return
                    yield line
            except _failures() as exc:
                _tls_failure(e, exc, self.tls)
                tried.append((e.text, _reason(exc)))
                raise _unreachable(tried) from None
            finally:
                conn.close()
        raise _unreachable(tried)

    def get(self, path: str, timeout: float = 60.0) -> Dict[str, Any]:
        return self.request("GET", path, timeout=timeout)

    def post(self, path: str, body: Dict[str, Any], timeout: float = 60.0) -> Dict[str, Any]:
        return self.request("POST", path, body, timeout=timeout)


def _tls_failure(e: Endpoint, exc: BaseException, files: TlsFiles) -> None:
    """Raise the error that says so when ``exc`` is TLS refused (endpoints.explain) or
    plain HTTP sent to a TLS port: nothing reached fleetd, and no other endpoint will
    take the client's TLS files better."""
    why = explain(exc, e, files)
    if why is None and isinstance(exc, ConnectionResetError) and speaks_tls(e):
        why = plain_to_tls(e)
    if why is not None:
        raise ApiError(0, why) from None


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _route(path: str) -> str:
    return path.partition("?")[0]


def _unreachable(tried: List[Tuple[str, str]]) -> ApiError:
    """No fleetd answered, or none could do it now: each endpoint tried and why, in the
    order tried (a fleetd that answered "not ready" was reached: its reason is the news,
    such as etcd's lost quorum, and the hint to start one would mislead)."""
    where = "; ".join(f"at {e}: {why}" for e, why in tried)
    if any(why.startswith(NOT_READY) for _, why in tried):
        return ApiError(503, f"no fleetd could do it now: {where}", tried=tried)
    return ApiError(0, f"cannot reach fleetd {where} ({HINT})", tried=tried)


def _quoted(path: str) -> str:
    """``path`` as a request line may carry it: a unit or machine name with a space, a
    newline or ``é`` in it percent-encoded (http.client refuses those raw, with an error
    that is no answer of fleetd's or a traceback), the URL's own ``/ ? & =`` kept."""
    return urllib.parse.quote(path, safe="/?&=%:@!$'()*+,;~", errors="surrogatepass")


def _decode(raw: bytes) -> Dict[str, Any]:
    """An answer's JSON body; a body that is not JSON becomes its ``error``."""
    try:
        data = json.loads(raw) if raw else {}
    except ValueError:
        data = {"error": raw.decode(errors="replace")[:500]}
    return data if isinstance(data, dict) else {"error": str(data)[:500]}


def _refusal(status: int, data: Dict[str, Any], reason: str = "") -> ApiError:
    return ApiError(status, str(data.get("error") or reason), data)
