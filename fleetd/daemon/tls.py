"""The TCP API's TLS: which addresses may go without it, and the server's SSLContext.

A token sent in clear over a network is anyone's who can see the traffic, so fleetd
serves plain HTTP on loopback only (the machine's own users, who can read the traffic
anyway only as root); any other address needs ``[api] tls_cert`` and ``tls_key``. With
``client_ca`` the handshake also asks for a client certificate that CA signed (mutual
TLS), so a stolen token alone does not get in."""

from __future__ import annotations

import ipaddress
import ssl
from typing import Optional


class TlsError(ValueError):
    """A certificate, key or CA file that cannot be used; the message names the file."""


def is_loopback(host: str) -> bool:
    """Is ``host`` (an IP address, or ``localhost``) reachable only from this machine?
    A name other than localhost may resolve anywhere: it is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def server_context(cert: str, key: str, client_ca: Optional[str]) -> ssl.SSLContext:
    """The listener's context: TLS 1.2 at least, ``cert`` with ``key``, and with
    ``client_ca`` a client certificate signed by it required."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(cert, key)
    except FileNotFoundError as exc:
        raise TlsError(f"{exc.filename}: no such file") from None
    except (ssl.SSLError, OSError) as exc:
        raise TlsError(f"{cert} with {key}: not a PEM certificate and its private key "
                       f"({exc})") from None
    if client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=client_ca)
        except FileNotFoundError:
            raise TlsError(f"{client_ca}: no such file") from None
        except (ssl.SSLError, OSError) as exc:
            raise TlsError(f"{client_ca}: not a PEM CA certificate ({exc})") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx
