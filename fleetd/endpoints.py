"""Where fleetd's API is, and how to connect there: ``unix:///PATH``, ``http://HOST:PORT``
(loopback: fleetd serves a network only over TLS) or ``https://HOST:PORT``, read in one
place (``parse_endpoints``), and the TLS that ``https://`` needs: the CA that signed
fleetd's certificate (``--ca-file``; without it the system's CAs), and a client
certificate where fleetd asks for one (``--cert-file``, ``--key-file``).

A TLS failure is no reason to try the next endpoint or to guess whether fleetd acted:
nothing reached fleetd. ``explain`` turns one into the error a user can act on, naming
the endpoint and the file; ``speaks_tls`` tells "plain HTTP sent to a TLS port" from a
fleetd that went away, which look alike on the wire (the connection closes unanswered).
The standard library only (fleetd.client says why not aiohttp).
"""

from __future__ import annotations

import dataclasses
import http.client
import socket
import ssl
import urllib.parse
from typing import Optional, Tuple

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

    def connection(self, timeout: float, tls: Optional[ssl.SSLContext] = None
                   ) -> http.client.HTTPConnection:
        if self.path is not None:
            return _UnixConnection(self.path, timeout)
        if self.tls:
            return http.client.HTTPSConnection(self.host, self.port, timeout=timeout,
                                               context=tls)
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)


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


# --- TLS failures, as a user can act on them -------------------------------------------------
_NEEDS_CERT = ("CERTIFICATE_REQUIRED", "HANDSHAKE_FAILURE")
_BAD_CERT = ("UNKNOWN_CA", "BAD_CERTIFICATE", "CERTIFICATE_UNKNOWN", "DECRYPT_ERROR")


def explain(exc: BaseException, e: Endpoint, files: TlsFiles) -> Optional[str]:
    """What a TLS failure talking to ``e`` means, or None if ``exc`` is none. In TLS 1.3
    a client certificate is judged after the client's handshake ended, and fleetd closes
    the connection at once: the client sees only an end before the answer. Then a TLS
    1.2 handshake, where that judgement is part of the handshake, tells (``_refused``)."""
    if e.tls and isinstance(exc, _CLOSED) and _refused(e, files):
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


_CLOSED = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError,
           ssl.SSLEOFError, ssl.SSLZeroReturnError)


def _refused(e: Endpoint, files: TlsFiles) -> bool:
    """Does ``e`` refuse a TLS 1.2 handshake with ``files``' client certificate (or
    none)? Its certificate was verified already: what it refuses is the client's."""
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
