"""fleetd.transport.ssh reads the known_hosts file and the identity a machine names
itself: a file that is not one is named, with what is wrong, and never quoted (fleetd
may be root and the caller not)."""

from __future__ import annotations

from pathlib import Path

import asyncssh
import pytest

from fleetd.transport.base import TransportError
from fleetd.transport.ssh import KNOWN_HOSTS_MAX, load_identity, load_known_hosts

SECRET = "root:$6$Sup3rS3cretHash$abcdefgh:19000:0:99999:7:::"
KEY = asyncssh.generate_private_key("ssh-ed25519")
HOST_LINE = f"10.0.0.5 {KEY.export_public_key().decode().strip()}"


@pytest.mark.parametrize("content, message", [
    (f"{SECRET}\n", "is not a known_hosts file: line 1 is not HOST KEYTYPE KEY"),
    (f"# comment\n{HOST_LINE}\n\n{SECRET}\n",
     "is not a known_hosts file: line 4 is not HOST KEYTYPE KEY"),
    (f"{HOST_LINE}\n{SECRET}\xff\n".encode("latin-1"),
     "is not a known_hosts file: line 2 is not HOST KEYTYPE KEY"),
    (b"x" * (KNOWN_HOSTS_MAX + 1), f"is larger than {KNOWN_HOSTS_MAX >> 10} KiB"),
])
def test_a_file_that_is_not_known_hosts(tmp_path: Path, content: object,
                                        message: str) -> None:
    path = tmp_path / "known_hosts"
    path.write_bytes(content if isinstance(content, bytes) else str(content).encode())
    with pytest.raises(TransportError) as err:
        load_known_hosts(str(path))
    assert str(err.value) == f"{path} {message}" and err.value.kind == "hostkey"
    assert "Sup3rS3cret" not in str(err.value)


def test_known_hosts_that_cannot_be_read(tmp_path: Path) -> None:
    with pytest.raises(TransportError) as err:
        load_known_hosts(str(tmp_path))
    assert str(err.value) == f"cannot read {tmp_path}: Is a directory"


def test_a_real_known_hosts_file(tmp_path: Path) -> None:
    path = tmp_path / "known_hosts"
    path.write_text(f"# mine\n{HOST_LINE}\n")
    trusted = load_known_hosts(str(path)).match("10.0.0.5", "10.0.0.5", 22)[0]
    assert {k.export_public_key() for k in trusted} == {KEY.export_public_key()}


@pytest.mark.parametrize("content", [
    f"{SECRET}\n".encode(),
    KEY.export_public_key(),  # a public key where the private one belongs
    KEY.export_private_key("pkcs8-pem", passphrase="pass"),  # fleetd cannot ask for it
    b"-----BEGIN OPENSSH PRIVATE KEY-----\n" + SECRET.encode() + b"\n"
    b"-----END OPENSSH PRIVATE KEY-----\n",
])
def test_an_identity_that_is_not_a_usable_key(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "id"
    path.write_bytes(content)
    with pytest.raises(TransportError) as err:
        load_identity(str(path))
    assert str(err.value) == (f"{path} is not an SSH private key fleetd can use (OpenSSH, "
                              "PEM or PKCS#8, without a passphrase)")
    assert err.value.kind == "auth" and "Sup3rS3cret" not in str(err.value)


def test_a_real_identity(tmp_path: Path) -> None:
    path = tmp_path / "id"
    KEY.write_private_key(str(path))
    assert load_identity(str(path)).export_public_key() == KEY.export_public_key()
