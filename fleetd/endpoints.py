"""Where fleetd's API is, and how to connect there: ``unix:///PATH``, ``http://HOST:PORT``
(loopback: fleetd serves a network only over TLS) or ``https://HOST:PORT``, read in one
place (``parse_endpoints``), and the TLS that ``https://`` needs: the CA that signed
fleetd's certificate (``--ca-file``; without it the system's CAs), and a client
certificate where fleetd asks for one (``--cert-file``, ``--key-file``).

A TLS failure is no reason to try the next endpoint or to guess whether fleetd acted:
nothing reached fleetd. ``explain`` turns one into the error a user can act on, naming
the endpoint and the file; ``speaks_tls`` tells "plain HTTP sent to a TLS port" from a
fleetd that went away, which look alike on the wire (the connection closes unanswered).
The standard library only (fleetd.client says why not aiohttp); ``http.client`` and
``ssl`` only where TLS needs them (``PlainConnection`` says why).
"""

from __future__ import annotations

import dataclasses
import socket
import urllib.parse
from typing import TYPE_CHECKING, BinaryIO, Dict, List, Optional, Tuple, Union

if TYPE_CHECKING:
    import http.client
    import ssl

PROBE_S = 2.0  # a TLS handshake on loopback or a LAN takes milliseconds


class EndpointError(ValueError):
    """An endpoint (or list of them) that cannot be read; the message says which."""


@dataclasses.dataclass(frozen=True)
class TlsFiles:
    """fleetctl's ``--ca-file``, ``--cert-file``, ``--key-file`` (or FLEETCTL_CA_FILE,
    FLEETCTL_CERT_FILE, FLEETCTL_KEY_FILE)."""

    ca_file: Optional[str] = None
    cert_file: Optional[str] = None
    key_file: Optional[str] = None

    def context(self) -> ssl.SSLContext:
        """The client's context; EndpointError naming the option of a file it cannot
        use."""
        import ssl

        if (self.cert_file is None) != (self.key_file is None):
            raise EndpointError("--cert-file and --key-file go together (a client "
                                "certificate and its private key)")
        try:
            ctx = ssl.create_default_context(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as exc:
            raise EndpointError(f"--ca-file {self.ca_file}: not a PEM CA certificate "
                                f"({_why(exc)})") from None
        if self.cert_file and self.key_file:
            try:
                ctx.load_cert_chain(self.cert_file, self.key_file)
            except (OSError, ssl.SSLError) as exc:
                raise EndpointError(f"--cert-file {self.cert_file} with --key-file "
                                    f"{self.key_file}: not a PEM certificate and its key "
                                    f"({_why(exc)})") from None
        return ctx


@dataclasses.dataclass(frozen=True)
class Endpoint:
    """One fleetd API address: ``unix:///PATH`` or ``http(s)://HOST[:PORT]``."""

    text: str  # as the user wrote it: what errors name
    path: Optional[str] = None  # a Unix socket's path
    host: str = ""
    port: int = 0
    tls: bool = False

    def connection(self, timeout: float, tls: Optional[ssl.SSLContext] = None,
                   plain: bool = False) -> Union[http.client.HTTPConnection,
                                                 PlainConnection]:
        """http.client's connection; ``plain``: a PlainConnection where no TLS is
        needed (an answer read whole: not for a stream)."""
        if plain and not self.tls:
            return PlainConnection(self, timeout)
        import http.client

        if self.path is not None:
            return _unix_connection(self.path, timeout)
        if self.tls:
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout,
                                               context=tls)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def connect(self, timeout: float) -> socket.socket:
        """A connected socket to ``e`` (a Unix socket's path, or TCP), not TLS."""
        if self.path is None:
            sock = socket.create_connection((self.host, self.port), timeout)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            return sock
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        return sock


def parse_endpoint(text: str) -> Endpoint:
    """``unix:///PATH`` (everything after ``unix://`` is the path, which must be
    absolute) or ``http(s)://HOST[:PORT]`` (port 80 or 443 by default, IPv6 in
    brackets)."""
    text = text.strip()
    if text.startswith("unix://"):
        path = text[len("unix://"):]
        if not path.startswith("/"):
            raise EndpointError(f"{text!r}: want unix:///ABSOLUTE/PATH")
        return Endpoint(text, path=path)
    url = urllib.parse.urlsplit(text)
    if url.scheme not in ("http", "https"):
        raise EndpointError(f"{text!r}: want unix:///PATH, http://HOST:PORT or "
                            "https://HOST:PORT")
    try:
        port = url.port or (443 if url.scheme == "https" else 80)
    except ValueError:
        raise EndpointError(f"{text!r}: bad port") from None
    if not url.hostname:
        raise EndpointError(f"{text!r}: no host")
    if url.path not in ("", "/") or url.query or url.fragment or url.username:
        raise EndpointError(f"{text!r}: want {url.scheme}://HOST:PORT, nothing else "
                            "(fleetd's API is at the root)")
    return Endpoint(text, host=url.hostname, port=port, tls=url.scheme == "https")


def parse_endpoints(text: str) -> Tuple[Endpoint, ...]:
    """A comma-separated list of endpoints, in the order they are tried (a Unix socket
    path with a comma in it cannot be listed). Refused: an empty entry, one given twice."""
    parts = [p.strip() for p in text.split(",")]
    if not text.strip() or not all(parts):
        raise EndpointError(f"{text!r}: an empty endpoint in the list")
    endpoints = tuple(parse_endpoint(p) for p in parts)
    seen = set()
    for e in endpoints:
        key = (e.path, e.host, e.port)
        if key in seen:
            raise EndpointError(f"{e.text!r} is given twice")
        seen.add(key)
    return endpoints


def _unix_connection(path: str, timeout: float) -> http.client.HTTPConnection:
    """http.client's connection over the Unix socket at ``path`` (a stream's)."""
    import http.client

    class UnixConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = Endpoint("", path=path).connect(timeout)

    return UnixConnection("localhost", timeout=timeout)


class BadAnswer(ConnectionError):
    """What came back is no HTTP/1.1 answer (read as a broken connection)."""


class PlainConnection:
    """The part of http.client's connection that fleetd.client's requests use, for
    ``unix://`` and ``http://``: one request with ``Connection: close``, its answer read
    whole (Content-Length, chunked, or up to the close). Its own because importing
    http.client (with the email package it reads headers with) and ssl took ~15 ms of
    a ~65 ms ``fleetctl list-units`` (issue 14); a stream (``journal -f``) and https://
    still use http.client. Failures are OSErrors: ConnectionResetError when the
    connection closes before an answer, as http.client's RemoteDisconnected is."""

    MAX_LINE = 65536  # as http.client's
    MAX_HEADERS = 100

    def __init__(self, e: Endpoint, timeout: float) -> None:
        self.endpoint = e
        self.timeout = timeout
        self.sock: Optional[socket.socket] = None
        self.answer: Optional[BinaryIO] = None  # the socket's file getresponse reads
        self.host = "localhost" if e.path is not None else _host_header(e)

    def connect(self) -> None:
        self.sock = self.endpoint.connect(self.timeout)

    def close(self) -> None:
        """The socket's file too: a socket with a file open keeps its descriptor."""
        if self.answer is not None:
            self.answer.close()
            self.answer = None
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def request(self, method: str, path: str, body: Optional[str] = None,
                headers: Optional[Dict[str, str]] = None) -> None:
        if self.sock is None:
            self.connect()
        assert self.sock is not None
        data = body.encode() if body is not None else b""
        lines = [f"{method} {path} HTTP/1.1", f"Host: {self.host}",
                 "Accept-Encoding: identity", "Connection: close"]
        lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
        if body is not None or method in ("POST", "PUT", "PATCH"):
            lines.append(f"Content-Length: {len(data)}")
        bad = next((line for line in lines if any(c in line for c in "\r\n\0")), None)
        if bad is not None:  # a line break would start a header of its own: as http.client
            raise ValueError(f"a line break or NUL in the request's {bad[:40]!r}")
        self.sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data)

    def getresponse(self) -> PlainResponse:
        assert self.sock is not None
        self.answer = self.sock.makefile("rb")
        return PlainResponse(self.answer)


class PlainResponse:
    """An answer's status, reason and headers, read; its body by ``read``."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        status_line = self._line()
        if not status_line:
            raise ConnectionResetError("fleetd closed the connection without answering")
        version, _, rest = status_line.decode("latin-1").rstrip("\r\n").partition(" ")
        code, _, self.reason = rest.partition(" ")
        if not version.startswith("HTTP/1.") or not code.isdigit() or len(code) != 3:
            raise BadAnswer(f"not an HTTP answer: {status_line[:80]!r}")
        self.status = int(code)
        self.headers: Dict[str, str] = {}
        for _ in range(PlainConnection.MAX_HEADERS + 1):
            line = self._line().decode("latin-1").rstrip("\r\n")
            if not line:
                return
            key, _, value = line.partition(":")
            self.headers[key.strip().lower()] = value.strip()
        raise BadAnswer("more than 100 headers")

    def _line(self) -> bytes:
        line = self.f.readline(PlainConnection.MAX_LINE + 1)
        if len(line) > PlainConnection.MAX_LINE:
            raise BadAnswer("a header line longer than 64 KiB")
        return line

    def _exactly(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) < n:
            raise ConnectionResetError(f"the answer ended after {len(data)} of {n} bytes")
        return data

    def read(self) -> bytes:
        if "chunked" in self.headers.get("transfer-encoding", "").lower():
            chunks: List[bytes] = []
            while True:
                size = self._line().split(b";")[0].strip()
                try:
                    n = int(size, 16)
                except ValueError:
                    raise BadAnswer(f"bad chunk size {size[:20]!r}") from None
                if n == 0:
                    while self._line() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self._exactly(n))
                self._line()
        length = self.headers.get("content-length")
        if length is not None:
            if not length.isdigit():
                raise BadAnswer(f"bad Content-Length {length[:20]!r}")
            return self._exactly(int(length))
        return self.f.read()


def _host_header(e: Endpoint) -> str:
    host = f"[{e.host}]" if ":" in e.host else e.host
    return host if e.port == 80 else f"{host}:{e.port}"


# --- TLS failures, as a user can act on them -------------------------------------------------
_NEEDS_CERT = ("CERTIFICATE_REQUIRED", "HANDSHAKE_FAILURE")
_BAD_CERT = ("UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_UNKNOWN", "DECRYPT_ERROR")


def explain(exc: BaseException, e: Endpoint, files: TlsFiles) -> Optional[str]:
    """What a TLS failure talking to ``e`` means, or None if ``exc`` is none. In TLS 1.3
    a client certificate is judged after the client's handshake ended, and fleetd closes
    the connection at once: the client sees only an end before the answer. Then a TLS
    1.2 handshake, where that judgement is part of the handshake, tells (``_refused``)."""
    if not e.tls:
        return None  # no TLS, no TLS failure: and no ssl module to load
    import ssl

    if isinstance(exc, _closed()) and _refused(e, files):
        return _client_cert(e, files, "")
    if isinstance(exc, ssl.SSLCertVerificationError):
        trusted = (f"the CA in {files.ca_file} (--ca-file)" if files.ca_file else
                   "the system's CAs (give fleetd's CA with --ca-file or FLEETCTL_CA_FILE)")
        return (f"{e.text}: certificate verify failed: {exc.verify_message}; fleetd's "
                f"certificate must be signed by {trusted} and name {e.host}")
    if not isinstance(exc, ssl.SSLError):
        return None
    reason = str(exc.reason or "")
    if "WRONG_VERSION_NUMBER" in reason or "RECORD_LAYER_FAILURE" in reason:
        return f"{e.text}: the port does not speak TLS (plain HTTP? then http://)"
    if any(r in reason for r in _BAD_CERT + _NEEDS_CERT):
        return _client_cert(e, files, f" ({reason.lower()})")
    return f"{e.text}: TLS failed: {_why(exc)}"


def _client_cert(e: Endpoint, files: TlsFiles, detail: str) -> str:
    if not files.cert_file:
        return (f"{e.text} asks for a client certificate (fleetd has api.client_ca): give "
                "--cert-file and --key-file (or FLEETCTL_CERT_FILE, FLEETCTL_KEY_FILE)")
    return (f"{e.text} refused the client certificate {files.cert_file}: it is not signed "
            f"by fleetd's api.client_ca{detail}")


def _closed() -> Tuple[type, ...]:
    """The ends of a connection before its answer (RemoteDisconnected is a reset)."""
    import ssl

    return (ConnectionResetError, BrokenPipeError, ssl.SSLEOFError, ssl.SSLZeroReturnError)


def _refused(e: Endpoint, files: TlsFiles) -> bool:
    """Does ``e`` refuse a TLS 1.2 handshake with ``files``' client certificate (or
    none)? Its certificate was verified already: what it refuses is the client's."""
    import ssl

    try:
        ctx = files.context()
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        with socket.create_connection((e.host, e.port), timeout=PROBE_S) as raw, \
                ctx.wrap_socket(raw, server_hostname=e.host):
            return False
    except ssl.SSLCertVerificationError:
        return False
    except ssl.SSLError:
        return True
    except (OSError, EndpointError):
        return False


def speaks_tls(e: Endpoint) -> bool:
    """Does ``e`` (an ``http://`` endpoint whose connection closed unanswered) answer a
    TLS handshake? Then the request went to fleetd's TLS port in clear: it was refused
    before anything was read."""
    if e.tls or e.path is not None:
        return False
    import ssl

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # only: is it TLS?
    try:
        with socket.create_connection((e.host, e.port), timeout=PROBE_S) as raw, \
                ctx.wrap_socket(raw, server_hostname=e.host):
            return True
    except ssl.SSLError as exc:  # TLS that did not like us, or an answer that is not TLS
        return "WRONG_VERSION_NUMBER" not in str(exc.reason or "")
    except OSError:
        return False


def plain_to_tls(e: Endpoint) -> str:
    return (f"{e.text}: that port speaks TLS (fleetd has api.tls_cert), and the request "
            f"went in clear: use https://{e.text.split('://', 1)[1].rstrip('/')} "
            "(with --ca-file for fleetd's CA)")


def _why(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
