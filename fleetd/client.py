"""fleetd's API client, for fleetctl and the lab: the standard library's http.client,
over a Unix socket or TCP.

Not aiohttp, which the daemon serves with: importing it costs ~170 ms, most of the wall
time of a blocking ``fleetctl start``. A CLI request is one blocking round trip anyway.
It sits below both of its users (fleetd.cli, fleetd.lab), so neither imports the other.
"""

from __future__ import annotations

import http.client
import json
import os
import socket
import urllib.parse
from typing import Any, Dict, Iterator, Optional

DEFAULT_ENDPOINT = "unix:///run/fleetd/fleetd.sock"


class ApiError(Exception):
    def __init__(self, status: int, message: str, body: Optional[Dict[str, Any]] = None):
        self.status = status
        self.body = body or {}
        super().__init__(message)


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.unix_path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class Client:
    def __init__(self, endpoint: Optional[str] = None, token: Optional[str] = None) -> None:
        self.endpoint = endpoint or os.environ.get("FLEETCTL_ENDPOINT") or DEFAULT_ENDPOINT
        self.token = token or os.environ.get("FLEETCTL_TOKEN")

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        url = urllib.parse.urlsplit(self.endpoint)
        if url.scheme == "unix":
            return _UnixConnection(url.path, timeout)
        if url.scheme == "http":
            return http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port or 80,
                                              timeout=timeout)
        raise ApiError(0, f"endpoint {self.endpoint!r}: want unix:///PATH or http://HOST:PORT")

    def request(self, method: str, path: str, body: Optional[Dict[str, Any]] = None,
                timeout: float = 60.0) -> Dict[str, Any]:
        conn = self._connection(timeout)
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        try:
            conn.request(method, _quoted(path),
                         body=json.dumps(body) if body is not None else None, headers=headers)
            resp = conn.getresponse()
            raw = resp.read()
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from None
        finally:
            conn.close()
        data = _decode(raw)
        if resp.status >= 400:
            raise _refused(resp, data)
        return dict(data)

    def stream(self, path: str, timeout: Optional[float] = None) -> Iterator[bytes]:
        """The body of a GET, line by line as it arrives (for ``journal -f``)."""
        conn = self._connection(timeout or 3600.0)
        if timeout is None:
            conn.timeout = None
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            conn.request("GET", _quoted(path), headers=headers)
            resp = conn.getresponse()
            if resp.status >= 400:
                raise _refused(resp, _decode(resp.read()))
            while True:
                line = resp.readline()
                if not line:
                    return
                yield line
        except (OSError, http.client.HTTPException) as exc:
            raise self._unreachable(exc) from None
        finally:
            conn.close()

    def _unreachable(self, exc: Exception) -> ApiError:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        return ApiError(0, f"cannot reach fleetd at {self.endpoint}: {reason} "
                           "(is fleetd running? `fleetctl lab up` starts one)")

    def get(self, path: str, timeout: float = 60.0) -> Dict[str, Any]:
        return self.request("GET", path, timeout=timeout)

    def post(self, path: str, body: Dict[str, Any], timeout: float = 60.0) -> Dict[str, Any]:
        return self.request("POST", path, body, timeout=timeout)


def _quoted(path: str) -> str:
    """``path`` as a request line may carry it: a unit or machine name with a space, a
    newline or ``é`` in it percent-encoded (http.client refuses those raw, with an error
    that is no answer of fleetd's or a traceback), the URL's own ``/ ? & =`` kept."""
    return urllib.parse.quote(path, safe="/?&=%:@!$'()*+,;~", errors="surrogatepass")


def _decode(raw: bytes) -> Dict[str, Any]:
    """An answer's JSON body; a body that is not JSON becomes its ``error``."""
    try:
        data: Dict[str, Any] = json.loads(raw) if raw else {}
    except ValueError:
        data = {"error": raw.decode(errors="replace")[:500]}
    return data


def _refused(resp: http.client.HTTPResponse, data: Dict[str, Any]) -> ApiError:
    return ApiError(resp.status, str(data.get("error") or resp.reason), data)
