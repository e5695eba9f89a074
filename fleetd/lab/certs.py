"""Certificates for fleetd's TLS API in the lab and the tests: a CA of the run's own, and
certificates it signs for a fleetd (its addresses as IP SANs) or for a client (mutual
TLS). Made with ``cryptography`` (asyncssh's dependency, so already installed); keys
are written 0600. Never for production: the CA's key sits beside its certificate."""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import os
from typing import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DAYS = 30  # a lab lives hours; a month leaves room without lasting


@dataclasses.dataclass(frozen=True)
class Pair:
    """A certificate and its key, as files."""

    cert: str
    key: str


def _write_key(path: str, key: ec.EllipticCurvePrivateKey) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM,
                                  serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))


def _write_cert(path: str, cert: x509.Certificate) -> None:
    with open(path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))


def _builder(subject: str, issuer: x509.Name, public: ec.EllipticCurvePublicKey
             ) -> x509.CertificateBuilder:
    now = datetime.datetime.now(datetime.timezone.utc)
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(issuer).public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=DAYS)))


def make_ca(directory: str, name: str = "fleetd lab CA") -> Pair:
    """A self-signed CA in ``directory`` (ca.pem, ca.key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    cert = (_builder(name, subject, key.public_key())
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False), critical=True)
            .sign(key, hashes.SHA256()))
    pair = Pair(os.path.join(directory, "ca.pem"), os.path.join(directory, "ca.key"))
    _write_key(pair.key, key)
    _write_cert(pair.cert, cert)
    return pair


def issue(ca: Pair, directory: str, name: str, addresses: Sequence[str] = (),
          client: bool = False) -> Pair:
    """A certificate ``ca`` signs, in ``directory`` (NAME.pem, NAME.key): for a server
    at ``addresses`` (IPs, or DNS names), or with ``client`` for a client."""
    with open(ca.key, "rb") as f:
        ca_key = serialization.load_pem_private_key(f.read(), None)
    with open(ca.cert, "rb") as f:
        ca_cert = x509.load_pem_x509_certificate(f.read())
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    key = ec.generate_private_key(ec.SECP256R1())
    builder = _builder(name, ca_cert.subject, key.public_key()).add_extension(
        x509.BasicConstraints(ca=False, path_length=None), critical=True)
    usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
    builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if addresses:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_san(a) for a in addresses]), critical=False)
    cert = builder.sign(ca_key, hashes.SHA256())
    pair = Pair(os.path.join(directory, f"{name}.pem"), os.path.join(directory, f"{name}.key"))
    _write_key(pair.key, key)
    _write_cert(pair.cert, cert)
    return pair


def _san(address: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(address))
    except ValueError:
        return x509.DNSName(address)
