"""fleetd.daemon.config: defaults with no file, TOML overrides, strict keys and types."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetd.daemon.config import (
    DEFAULT_SOCKET,
    DEFAULT_STATE_DIR,
    Config,
    ConfigError,
    load,
)


def write(tmp_path: Path, text: str, name: str = "fleetd.toml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def error(path: str) -> str:
    with pytest.raises(ConfigError) as info:
        load(path)
    return str(info.value)


def test_no_file_gives_defaults() -> None:
    cfg = load(None)
    assert cfg == Config()
    assert (cfg.state_dir, cfg.heartbeat_s, cfg.socket, cfg.listen, cfg.token) == (
        DEFAULT_STATE_DIR, 1.0, DEFAULT_SOCKET, None, None)


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load(write(tmp_path, "")) == Config()


def test_file_overrides_everything(tmp_path: Path) -> None:
    path = write(tmp_path, """
state_dir = "/tmp/fleetd-state"
heartbeat_s = 0.25

[api]
socket = "/tmp/fleetd.sock"
listen = "0.0.0.0:7070"
token = "s3cret"
""")
    assert load(path) == Config(state_dir="/tmp/fleetd-state", heartbeat_s=0.25,
                                socket="/tmp/fleetd.sock", listen="0.0.0.0:7070",
                                token="s3cret")


def test_partial_file_keeps_other_defaults(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "heartbeat_s = 3\n"))
    assert cfg.heartbeat_s == 3.0
    assert isinstance(cfg.heartbeat_s, float)
    assert (cfg.state_dir, cfg.socket, cfg.listen, cfg.token) == (
        DEFAULT_STATE_DIR, DEFAULT_SOCKET, None, None)


def test_token_file_is_read_and_stripped(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("  from-file\n")
    path = write(tmp_path, f'[api]\nlisten = "127.0.0.1:7070"\ntoken_file = "{token}"\n')
    cfg = load(path)
    assert cfg.token == "from-file"
    assert cfg.listen == "127.0.0.1:7070"


def test_token_file_wins_over_token(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("from-file")
    path = write(tmp_path, f'[api]\ntoken = "inline"\ntoken_file = "{token}"\n')
    assert load(path).token == "from-file"


def test_missing_token_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    path = write(tmp_path, f'[api]\ntoken_file = "{missing}"\n')
    msg = error(path)
    assert msg.startswith(f"{path}: api.token_file: {missing}: ")
    assert "No such file" in msg


@pytest.mark.parametrize(
    ("listen", "host", "port"),
    [
        ("127.0.0.1:7070", "127.0.0.1", 7070),
        ("0.0.0.0:80", "0.0.0.0", 80),
        (":7070", "127.0.0.1", 7070),
        ("[::1]:7070", "::1", 7070),
    ],
)
def test_listen_host_port(tmp_path: Path, listen: str, host: str, port: int) -> None:
    cfg = load(write(tmp_path, f'[api]\nlisten = "{listen}"\ntoken = "t"\n'))
    assert cfg.listen_host_port == (host, port)


# --- errors ----------------------------------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "absent.toml")
    assert error(path) == f"{path}: No such file or directory"


def test_bad_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "state_dir = \n")
    assert error(path).startswith(f"{path}: ")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("stat_dir = '/x'\n", "unknown key stat_dir"),
        ("[api]\nlisen = '127.0.0.1:1'\n", "unknown key api.lisen"),
        ("[api]\nsocket = '/s'\n[metrics]\nport = 1\n", "unknown key metrics"),
        ("zzz = 1\naaa = 2\n", "unknown key aaa"),
    ],
)
def test_unknown_keys_are_errors(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    assert error(path) == f"{path}: {message}"


def test_listen_without_token_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "[api]\nlisten = '127.0.0.1:7070'\n")
    msg = error(path)
    assert msg.startswith(f"{path}: api.listen needs api.token or api.token_file")


def test_listen_with_empty_token_file_is_an_error(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("\n")
    path = write(tmp_path, f"[api]\nlisten = '127.0.0.1:7070'\ntoken_file = '{token}'\n")
    assert "api.listen needs api.token" in error(path)


@pytest.mark.parametrize("listen", ["127.0.0.1", "127.0.0.1:", "host:http", "7070"])
def test_listen_needs_host_and_port(tmp_path: Path, listen: str) -> None:
    path = write(tmp_path, f"[api]\nlisten = '{listen}'\ntoken = 't'\n")
    assert error(path) == f"{path}: api.listen: want HOST:PORT, got {listen!r}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("state_dir = 5\n", "state_dir: expected a string, got 5"),
        ("api = 'x'\n", "api: expected a table, got 'x'"),
        ("[api]\nsocket = 1\n", "api.socket: expected a string, got 1"),
        ("[api]\nlisten = 7070\n", "api.listen: expected a string, got 7070"),
        ("[api]\ntoken = false\n", "api.token: expected a string, got False"),
        ("[api]\ntoken_file = ['a']\n", "api.token_file: expected a string, got ['a']"),
        ("heartbeat_s = 0\n", "heartbeat_s: must be > 0"),
        ("heartbeat_s = -1.5\n", "heartbeat_s: must be > 0"),
    ],
)
def test_wrong_types_and_values_are_named(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    assert error(path) == f"{path}: {message}"


def test_heartbeat_of_wrong_type_is_named(tmp_path: Path) -> None:
    path = write(tmp_path, "heartbeat_s = 'fast'\n")
    assert error(path).startswith(f"{path}: heartbeat_s: expected ")


def test_boolean_heartbeat_is_refused(tmp_path: Path) -> None:
    error(write(tmp_path, "heartbeat_s = true\n"))
