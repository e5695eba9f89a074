"""Who may talk to fleetd: root through the 0600 socket; over TCP, only with a token
(fleetd.toml's api.token here: an admin's, as it always was)."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest
from labkit import Fleet

from fleetd.client import ApiError, Client

TOKEN = "s3cret-s3cret-s3cret"  # at least 16 bytes, in a file only its owner reads


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def tcp_fleet(tmp_path):
    port = free_port()
    config = tmp_path / "fleetd.toml"
    config.write_text(f'[api]\nlisten = "127.0.0.1:{port}"\ntoken = "{TOKEN}"\n')
    config.chmod(0o600)
    f = Fleet(None, str(tmp_path), str(config))
    f.start()
    yield f, f"http://127.0.0.1:{port}"
    f.stop()


def test_tcp_api_refuses_requests_without_the_token(tcp_fleet) -> None:
    fleet, url = tcp_fleet
    for token in (None, "wrong", TOKEN[:-1], TOKEN + "2"):
        with pytest.raises(ApiError) as err:
            Client(url, token).get("/v1/machines")
        assert err.value.status == 401
    assert Client(url, TOKEN).get("/v1/machines")["machines"] == []
    token_file = fleet.state_dir + ".token"
    with open(token_file, "w") as f:
        f.write(TOKEN + "\n")
    out = fleet.ctl("--endpoint", url, "--token-file", token_file, "list-unit-files")
    assert out.stdout.startswith("UNIT")
    refused = fleet.ctl("--endpoint", url, "list-unit-files", check=False)
    assert refused.returncode != 0 and "bearer token" in refused.stderr
    # the Unix socket needs no token: its mode (0600) is the check
    assert fleet.api.get("/v1/machines")["machines"] == []


@pytest.mark.parametrize("toml, message", [
    ('[api]\nlisten = "0.0.0.0:7999"\n', "is not a loopback address"),
    ('heartbeat_s = 1\nstate_dirr = "/x"\n', "unknown key state_dirr"),
    ('[api]\ntokn = "x"\n', "unknown key api.tokn"),
    ("heartbeat_s = [\n", "fleetd.toml"),
])
def test_bad_config_is_refused_naming_file_and_key(tmp_path, toml: str, message: str) -> None:
    config = tmp_path / "fleetd.toml"
    config.write_text(toml)
    out = subprocess.run([sys.executable, "-m", "fleetd.daemon", "--config", str(config),
                          "--state-dir", str(tmp_path / "state"),
                          "--socket", str(tmp_path / "sock")],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert str(config) in out.stderr and message in out.stderr, out.stderr
    assert not (tmp_path / "sock").exists()
