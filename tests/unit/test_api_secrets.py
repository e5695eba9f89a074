"""``/v1/secrets`` and ``fleetctl secret`` against a real Daemon and its API (apikit):
set, list and remove; the key file made 0600 on first use where ``secrets_key`` says;
bad names and bodies refused naming what is wrong; and a value that never comes back,
in the API's answers, ``cat``, ``status``, the listings or fleetd's log."""

from __future__ import annotations

import json
import logging
import os
import stat
from pathlib import Path

import pytest
from apikit import http, post, served
from click.testing import CliRunner

from fleetd.cli.main import cli
from fleetd.daemon.config import load

VALUE = "s3cr3t-Value-never-shown"
UNIT = "[Service]\nExecStart=/bin/sleep 1000\nSecretEnvironment=DB_PASSWORD=db_pw\n"


def put(sock: str, name: str, body: bytes) -> tuple[int, object]:
    return http(sock, "PUT", f"/v1/secrets/{name}", body)


def test_set_list_remove_and_the_value_never_comes_back(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with served(tmp_path) as fleetd:
        sock = fleetd.config.socket
        status, row = put(sock, "db_pw", json.dumps({"value": VALUE}).encode())
        assert status == 200 and row["name"] == "db_pw" and row["units"] == []
        key = Path(fleetd.config.state_dir) / "secrets.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
        assert post(sock, "/v1/units", {"units": [{"name": "a.service", "text": UNIT}],
                                        "desired": "launched"})[0] == 200
        answers = [http(sock, "GET", path) for path in (
            "/v1/secrets", "/v1/units", "/v1/unit-files", "/v1/units/a.service",
            "/v1/units/a.service/status")]
        assert all(status == 200 for status, _ in answers), answers
        assert answers[0][1]["secrets"] == [{"name": "db_pw", "version": row["version"],
                                             "set_at": row["set_at"],
                                             "units": ["a.service"]}]
        assert "SecretEnvironment=DB_PASSWORD=db_pw" in answers[3][1]["text"]
        assert answers[4][1]["secrets"] == {"DB_PASSWORD": "*** (secret db_pw)"}
        shown = CliRunner().invoke(cli, ["--endpoint", f"unix://{sock}", "status",
                                         "a.service"]).output
        assert "   Secrets: DB_PASSWORD=*** (secret db_pw)\n" in shown
        status, again = put(sock, "db_pw", json.dumps({"value": VALUE + "2"}).encode())
        assert status == 200 and again["version"] != row["version"]
        assert again["units"] == ["a.service"]
        status, answer = http(sock, "DELETE", "/v1/secrets/db_pw")
        assert status == 409 and answer["error"] == (
            "secret db_pw is used by a.service: change or destroy those units first (they "
            "could not start again without it)")
        assert post(sock, "/v1/units/destroy", {"names": ["a.service"]})[0] == 200
        assert http(sock, "DELETE", "/v1/secrets/db_pw") == (
            200, {"name": "db_pw", "removed": True})
        assert http(sock, "GET", "/v1/secrets") == (200, {"secrets": []})
        registry_bytes = b"".join(p.read_bytes() for p in Path(fleetd.config.state_dir)
                                  .glob("registry.db*"))
    for text in [json.dumps(a) for _, a in answers] + [caplog.text, shown]:
        assert VALUE not in text
    assert VALUE.encode() not in registry_bytes


@pytest.mark.parametrize("name, body, error", [
    ("-x", b'{"value": "v"}', "name: secret name '-x': want 1 to 128 letters, digits, "
                              "'_', '.' or '-', not beginning with '.' or '-'"),
    ("a%2Fb", b'{"value": "v"}', "name: secret name 'a/b'"),
    ("db_pw", b"{}", "value: required: the secret's value, as a string"),
    ("db_pw", b'{"value": ["x"]}', "value: want a string, not list"),
    ("db_pw", b'{"value": "a\\u0000b"}', "value: a secret's value cannot hold a NUL"),
    ("db_pw", b"hunter2", "request body is not JSON"),
])
def test_bad_requests_are_400s_naming_what_is_wrong(tmp_path: Path, name: str, body: bytes,
                                                   error: str) -> None:
    with served(tmp_path) as fleetd:
        status, answer = put(fleetd.config.socket, name, body)
        assert status == 400 and answer["error"].startswith(error), answer
        assert "hunter2" not in answer["error"]
        assert not (Path(fleetd.config.state_dir) / "secrets.key").exists()
        assert http(fleetd.config.socket, "DELETE", "/v1/secrets/nothing") == (
            404, {"error": "secret nothing does not exist"})


def test_the_key_file_is_where_secrets_key_says(tmp_path: Path) -> None:
    config = tmp_path / "fleetd.toml"
    config.write_text(f'secrets_key = "{tmp_path}/keys/fleet.key"\n')
    assert load(str(config)).secrets_key_path == f"{tmp_path}/keys/fleet.key"
    assert load(None).secrets_key_path == "/var/lib/fleetd/secrets.key"
    config.write_text("secrets_key = 5\n")
    with pytest.raises(ValueError, match=r"fleetd.toml: secrets_key: expected a string"):
        load(str(config))
    (tmp_path / "keys").mkdir()
    with served(tmp_path, secrets_key=str(tmp_path / "keys" / "fleet.key")) as fleetd:
        assert put(fleetd.config.socket, "db_pw", b'{"value": "v"}')[0] == 200
    assert os.listdir(tmp_path / "keys") == ["fleet.key"]


def test_fleetctl_secret_verbs(tmp_path: Path) -> None:
    with served(tmp_path) as fleetd:
        endpoint = ["--endpoint", f"unix://{fleetd.config.socket}"]
        run = CliRunner().invoke
        out = run(cli, [*endpoint, "secret", "set", "db_pw"], input=VALUE + "\n")
        assert out.exit_code == 0 and out.output.startswith("Secret db_pw set (version ")
        value_file = tmp_path / "value"
        value_file.write_text("from a file")
        out = run(cli, [*endpoint, "secret", "set", "api_key", "--file", str(value_file)])
        assert out.exit_code == 0, out.output
        assert fleetd.daemon.secrets.lookup("db_pw")[1] == VALUE  # newline dropped
        assert fleetd.daemon.secrets.lookup("api_key")[1] == "from a file"
        out = run(cli, [*endpoint, "secret", "list"])
        assert out.exit_code == 0
        assert [line.split()[0] for line in out.output.splitlines()] == [
            "NAME", "api_key", "db_pw"]
        out = run(cli, [*endpoint, "secret", "list", "-o", "json"])
        assert [r["name"] for r in json.loads(out.output)] == ["api_key", "db_pw"]
        for listing in run(cli, [*endpoint, "secret", "list"]).output, out.output:
            assert VALUE not in listing and "from a file" not in listing
        out = run(cli, [*endpoint, "secret", "set", "bad/name"], input="x")
        assert out.exit_code == 1 and "Error: name: secret name 'bad/name'" in out.output
        out = run(cli, [*endpoint, "secret", "set", "db_pw"], input="")
        assert out.exit_code == 1 and "Error: stdin: the value is empty" in out.output
        out = run(cli, [*endpoint, "secret", "set", "db_pw", "--file", str(tmp_path / "no")])
        assert out.exit_code == 2 and "--file" in out.output
        out = run(cli, [*endpoint, "secret", "set", "db_pw", VALUE])
        assert out.exit_code == 2 and "unexpected extra argument" in out.output
        out = run(cli, [*endpoint, "secret", "rm", "api_key"])
        assert out.exit_code == 0 and out.output == "Secret api_key removed\n"
        out = run(cli, [*endpoint, "secret", "rm", "api_key"])
        assert out.exit_code == 1 and "secret api_key does not exist" in out.output
