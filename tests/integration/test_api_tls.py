"""The TCP API over TLS: a real fleetd with certificates this test makes (its own CA),
reached by fleetctl and the client with the right CA, and refused, with an error that
says what to do, with the wrong CA, in plain HTTP, or without the client certificate
that ``client_ca`` asks for."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator, Tuple

import pytest
from etcdkit import free_port
from labkit import FLEETCTL, Fleet

from fleetd.client import ApiError, Client
from fleetd.endpoints import TlsFiles
from fleetd.lab import certs

TOKEN = "s3cret-s3cret-s3cret"


class Pki:
    """Two CAs (fleetd's and a stranger's), fleetd's certificate for 127.0.0.1, and a
    client certificate fleetd's CA signed."""

    def __init__(self, root: Path) -> None:
        for d in ("ca", "other"):
            (root / d).mkdir()
        self.ca = certs.make_ca(str(root / "ca"))
        self.other = certs.make_ca(str(root / "other"), "a stranger's CA")
        self.server = certs.issue(self.ca, str(root / "ca"), "api", ["127.0.0.1"])
        self.client = certs.issue(self.ca, str(root / "ca"), "alice", client=True)
        self.stranger = certs.issue(self.other, str(root / "other"), "mallory", client=True)


def tls_fleet(tmp_path: Path, pki: Pki, client_ca: bool) -> Tuple[Fleet, str]:
    port = free_port()
    config = tmp_path / "fleetd.toml"
    config.write_text(f'[api]\nlisten = "127.0.0.1:{port}"\ntoken = "{TOKEN}"\n'
                      f'tls_cert = "{pki.server.cert}"\ntls_key = "{pki.server.key}"\n'
                      + (f'client_ca = "{pki.ca.cert}"\n' if client_ca else ""))
    config.chmod(0o600)
    f = Fleet(None, str(tmp_path), str(config))
    f.start()
    return f, f"127.0.0.1:{port}"


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return Pki(tmp_path)


@pytest.fixture
def served(tmp_path: Path, pki: Pki) -> Iterator[Tuple[Fleet, str]]:
    fleet, where = tls_fleet(tmp_path, pki, client_ca=False)
    yield fleet, where
    fleet.stop()


@pytest.fixture
def mutual(tmp_path: Path, pki: Pki) -> Iterator[Tuple[Fleet, str]]:
    fleet, where = tls_fleet(tmp_path, pki, client_ca=True)
    yield fleet, where
    fleet.stop()


def ctl(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """fleetctl with this environment only (no FLEETCTL_* of the caller's)."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("FLEETCTL_")}
    return subprocess.run([FLEETCTL, *args], capture_output=True,
                          text=True, timeout=60, env={**clean, **env})


def test_the_right_ca_works(served: Tuple[Fleet, str], pki: Pki) -> None:
    _, where = served
    url = f"https://{where}"
    assert Client(url, TOKEN, TlsFiles(pki.ca.cert)).get("/v1/machines")["machines"] == []
    out = ctl("--endpoint", url, "--ca-file", pki.ca.cert, "list-machines",
              FLEETCTL_TOKEN=TOKEN)
    assert out.returncode == 0 and out.stdout.startswith("MACHINE"), out.stderr
    by_env = ctl("list-unit-files", FLEETCTL_ENDPOINT=url, FLEETCTL_CA_FILE=pki.ca.cert,
                 FLEETCTL_TOKEN=TOKEN)
    assert by_env.returncode == 0 and by_env.stdout.startswith("UNIT"), by_env.stderr


def test_the_wrong_ca_is_refused_naming_endpoint_and_ca(served: Tuple[Fleet, str],
                                                         pki: Pki) -> None:
    _, where = served
    url = f"https://{where}"
    out = ctl("--endpoint", url, "--ca-file", pki.other.cert, "list-machines",
              FLEETCTL_TOKEN=TOKEN)
    assert out.returncode != 0
    assert f"{url}: certificate verify failed" in out.stderr, out.stderr
    assert f"the CA in {pki.other.cert} (--ca-file)" in out.stderr
    assert "Traceback" not in out.stderr
    # a write is refused as clearly: nothing reached fleetd, so nothing "may have applied"
    with pytest.raises(ApiError) as err:
        Client(url, TOKEN, TlsFiles(pki.other.cert)).post("/v1/units/restart",
                                                          {"names": ["x"]})
    assert "certificate verify failed" in str(err.value)
    assert "may have been applied" not in str(err.value)


def test_plain_http_to_the_tls_port_is_refused(served: Tuple[Fleet, str]) -> None:
    fleet, where = served
    for method in ("list-machines", "destroy"):
        args = [method] + (["x.service"] if method == "destroy" else [])
        out = ctl("--endpoint", f"http://{where}", *args, FLEETCTL_TOKEN=TOKEN)
        assert out.returncode != 0
        assert f"http://{where}: that port speaks TLS" in out.stderr, out.stderr
        assert f"use https://{where}" in out.stderr
    assert fleet.api.get("/v1/health")["ok"]  # and fleetd goes on


def test_a_missing_client_certificate_is_refused(mutual: Tuple[Fleet, str],
                                                 pki: Pki) -> None:
    _, where = mutual
    url = f"https://{where}"
    out = ctl("--endpoint", url, "--ca-file", pki.ca.cert, "list-machines",
              FLEETCTL_TOKEN=TOKEN)
    assert out.returncode != 0
    assert f"{url} asks for a client certificate" in out.stderr, out.stderr
    assert "--cert-file and --key-file" in out.stderr
    stranger = ctl("--endpoint", url, "--ca-file", pki.ca.cert, "--cert-file",
                   pki.stranger.cert, "--key-file", pki.stranger.key, "list-machines",
                   FLEETCTL_TOKEN=TOKEN)
    assert stranger.returncode != 0
    assert f"refused the client certificate {pki.stranger.cert}" in stranger.stderr, \
        stranger.stderr
    ok = ctl("--endpoint", url, "list-machines", FLEETCTL_TOKEN=TOKEN,
             FLEETCTL_CA_FILE=pki.ca.cert, FLEETCTL_CERT_FILE=pki.client.cert,
             FLEETCTL_KEY_FILE=pki.client.key)
    assert ok.returncode == 0 and ok.stdout.startswith("MACHINE"), ok.stderr


def test_listening_beyond_loopback_without_tls_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "fleetd.toml"
    config.write_text(f'[api]\nlisten = "0.0.0.0:{free_port()}"\ntoken = "{TOKEN}"\n')
    config.chmod(0o600)
    out = subprocess.run([sys.executable, "-m", "fleetd.daemon", "--config", str(config),
                          "--state-dir", str(tmp_path / "state"),
                          "--socket", str(tmp_path / "sock")],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert f"{config}: api.listen = '0.0.0.0:" in out.stderr, out.stderr
    assert "set api.tls_cert and api.tls_key" in out.stderr
    assert not (tmp_path / "sock").exists()
