"""fleetd.daemon.config: defaults with no file, TOML overrides, strict keys and types."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from fleetd.daemon.config import (
    DEFAULT_SOCKET,
    DEFAULT_STATE_DIR,
    Config,
    ConfigError,
    load,
)
from fleetd.lab import certs

TOKEN = "s3cret-s3cret-s3cret"  # the 16 bytes a token needs, and more


def write(tmp_path: Path, text: str, name: str = "fleetd.toml") -> str:
    """A private file (0600), as one holding the token must be."""
    path = tmp_path / name
    path.write_text(text)
    path.chmod(0o600)
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
listen = "127.0.0.1:7070"
token = "s3cret-s3cret-s3cret"
""")
    assert load(path) == Config(state_dir="/tmp/fleetd-state", heartbeat_s=0.25,
                                socket="/tmp/fleetd.sock", listen="127.0.0.1:7070",
                                token=TOKEN)


def test_partial_file_keeps_other_defaults(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "heartbeat_s = 3\n"))
    assert cfg.heartbeat_s == 3.0
    assert isinstance(cfg.heartbeat_s, float)
    assert (cfg.state_dir, cfg.socket, cfg.listen, cfg.token) == (
        DEFAULT_STATE_DIR, DEFAULT_SOCKET, None, None)


def test_token_file_is_read_and_stripped(tmp_path: Path) -> None:
    token = write(tmp_path, f"  {TOKEN}\n", "token")
    path = write(tmp_path, f'[api]\nlisten = "127.0.0.1:7070"\ntoken_file = "{token}"\n')
    cfg = load(path)
    assert cfg.token == TOKEN
    assert cfg.listen == "127.0.0.1:7070"


def test_token_file_wins_over_token(tmp_path: Path) -> None:
    token = write(tmp_path, "from-file-from-file", "token")
    path = write(tmp_path, f'[api]\ntoken = "{TOKEN}"\ntoken_file = "{token}"\n')
    assert load(path).token == "from-file-from-file"


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
        ("localhost:80", "localhost", 80),
        (":7070", "127.0.0.1", 7070),
        ("[::1]:7070", "::1", 7070),
    ],
)
def test_listen_host_port(tmp_path: Path, listen: str, host: str, port: int) -> None:
    cfg = load(write(tmp_path, f'[api]\nlisten = "{listen}"\ntoken = "{TOKEN}"\n'))
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


def test_listen_without_token_is_allowed(tmp_path: Path) -> None:
    """Tokens come from `fleetctl token create` over the socket; api.token is optional."""
    path = write(tmp_path, "[api]\nlisten = '127.0.0.1:7070'\n")
    assert load(path).token is None


@pytest.mark.parametrize("listen", ["0.0.0.0:7070", "10.1.2.3:7070", "[::]:7070",
                                    "fleetd.example:7070"])
def test_listen_beyond_loopback_needs_tls(tmp_path: Path, listen: str) -> None:
    path = write(tmp_path, f"[api]\nlisten = '{listen}'\ntoken = '{TOKEN}'\n")
    msg = error(path)
    assert msg.startswith(f"{path}: api.listen = {listen!r} is not a loopback address")
    assert "set api.tls_cert and api.tls_key" in msg


def test_tls_files_are_loaded_and_named(tmp_path: Path) -> None:
    ca = certs.make_ca(str(tmp_path))
    server = certs.issue(ca, str(tmp_path), "api", ["10.1.2.3"])
    tls = f"tls_cert = '{server.cert}'\ntls_key = '{server.key}'\n"
    cfg = load(write(tmp_path, f"[api]\nlisten = '0.0.0.0:7070'\n{tls}"
                               f"client_ca = '{ca.cert}'\n"))
    assert (cfg.tls_cert, cfg.tls_key, cfg.client_ca) == (server.cert, server.key, ca.cert)
    assert cfg.addresses()[1] == "https://0.0.0.0:7070"  # list-servers: as --endpoint takes it
    swapped = write(tmp_path, f"[api]\nlisten = ':1'\ntls_cert = '{server.key}'\n"
                              f"tls_key = '{server.cert}'\n")
    assert error(swapped).startswith(f"{swapped}: api.tls_cert/tls_key/client_ca: "
                                     f"{server.key} with {server.cert}: not a PEM")
    alone = write(tmp_path, f"[api]\nlisten = ':1'\ntls_cert = '{server.cert}'\n")
    assert "tls_cert and tls_key go together" in error(alone)
    no_tls = write(tmp_path, f"[api]\nlisten = ':1'\nclient_ca = '{ca.cert}'\n")
    assert "api.client_ca needs api.tls_cert" in error(no_tls)
    missing = write(tmp_path, f"[api]\nlisten = ':1'\n{tls}client_ca = '/nope.pem'\n")
    assert error(missing).endswith("/nope.pem: no such file")


@pytest.mark.parametrize("listen", ["127.0.0.1", "127.0.0.1:", "host:http", "7070",
                                    "h:\u00b2", "h:0", "h:65536", "h:+1e3"])
def test_listen_needs_host_and_port(tmp_path: Path, listen: str) -> None:
    path = write(tmp_path, f"[api]\nlisten = '{listen}'\ntoken = '{TOKEN}'\n")
    assert error(path) == (f"{path}: api.listen: want HOST:PORT (a port from 1 to 65535), "
                           f"got {listen!r}")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("state_dir = 5\n", "state_dir: expected a string, got 5"),
        ("api = 'x'\n", "api: expected a table, got 'x'"),
        ("[api]\nsocket = 1\n", "api.socket: expected a string, got 1"),
        ("[api]\nlisten = 7070\n", "api.listen: expected a string, got 7070"),
        ("[api]\ntoken = false\n", "api.token: expected a string, got False"),
        ("[api]\ntoken_file = ['a']\n", "api.token_file: expected a string, got ['a']"),
        ("heartbeat_s = 0\n", "heartbeat_s: want a number from 0.01 to 3600, not 0"),
        ("heartbeat_s = -1.5\n", "heartbeat_s: want a number from 0.01 to 3600, not -1.5"),
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


# --- hostile values (issue 10) ------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("heartbeat_s = nan\n", "heartbeat_s: want a number from 0.01 to 3600, not nan"),
        ("heartbeat_s = inf\n", "heartbeat_s: want a number from 0.01 to 3600, not inf"),
        ("machine_ttl_s = nan\n", "machine_ttl_s: want a number from 0.02 to 86400, not nan"),
        ("machine_ttl_s = -inf\n", "machine_ttl_s: want a number from 0.02 to 86400, not -inf"),
        ("[api]\nidle_timeout_s = nan\n", "api.idle_timeout_s: want a number from 0.1 to 3600"),
        ("[api]\nmax_connections = 1.5\n", "api.max_connections: want a whole number from 1"),
        ("[api]\nmax_connections = 0\n", "api.max_connections: want a whole number from 1"),
        ("[api]\nmax_connections = true\n", "api.max_connections: expected a number"),
    ],
)
def test_numbers_are_finite_and_in_range(tmp_path: Path, text: str, message: str) -> None:
    """TOML reads nan and inf; a NaN heartbeat would sit in asyncio's timer heap."""
    path = write(tmp_path, text)
    assert error(path).startswith(f"{path}: {message}")


def test_connection_settings_are_read(tmp_path: Path) -> None:
    cfg = load(write(tmp_path, "[api]\nidle_timeout_s = 2\nmax_connections = 8\n"))
    assert (cfg.idle_timeout_s, cfg.max_connections) == (2.0, 8)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_a_token_file_others_can_read_is_refused(tmp_path: Path, mode: int) -> None:
    token = write(tmp_path, TOKEN, "token")
    os.chmod(token, mode)
    path = write(tmp_path, f"[api]\nlisten = '127.0.0.1:7070'\ntoken_file = '{token}'\n")
    assert error(path) == (f"{path}: api.token_file: {token}: mode {mode:04o}, but a file "
                           f"holding the API token must be readable by its owner only "
                           f"(chmod 600 {token})")


def test_a_config_file_others_can_read_may_not_hold_the_token(tmp_path: Path) -> None:
    path = write(tmp_path, f"[api]\nlisten = '127.0.0.1:7070'\ntoken = '{TOKEN}'\n")
    os.chmod(path, 0o644)
    assert error(path).startswith(f"{path}: api.token: mode 0644, but a file holding")
    os.chmod(path, 0o600)
    assert load(path).token == TOKEN


@pytest.mark.parametrize("key", ["token", "token_file"])
def test_a_short_token_is_refused(tmp_path: Path, key: str) -> None:
    short = "fifteen-bytes.."
    value = write(tmp_path, short, "token") if key == "token_file" else short
    path = write(tmp_path, f"[api]\nlisten = '127.0.0.1:7070'\n{key} = '{value}'\n")
    assert error(path).startswith(f"{path}: api.{key}: the token is 15 bytes; want at "
                                  "least 16")


# --- several fleetd on etcd ---------------------------------------------------------


def test_an_etcd_registry_and_its_table(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    cfg = load(write(tmp_path, f'name = "fleetd-2"\n'
                               f'registry = "etcd://10.0.0.1:2379,10.0.0.2"\n'
                               f'[etcd]\nprefix = "/prod"\nleader_ttl_s = 5\nca = "{ca}"\n'))
    assert (cfg.name, cfg.registry, cfg.registry_kind) == (
        "fleetd-2", "etcd://10.0.0.1:2379,10.0.0.2", "etcd")
    assert (cfg.etcd_prefix, cfg.leader_ttl_s, cfg.etcd_ca) == ("/prod", 5, str(ca))
    assert load(None).registry_kind == "sqlite"


@pytest.mark.parametrize("text, named", [
    ('registry = "etdc://10.0.0.1:2379"', "registry: not an etcd URL"),
    ('registry = "etcd://10.0.0.1:99999"', "registry: bad etcd endpoint '10.0.0.1:99999'"),
    ('[etcd]\nprefix = "/x"', "[etcd] is set, but registry is not an etcd:// URL"),
    ('registry = "etcd://h"\n[etcd]\nprefix = "fleetd/"', "etcd.prefix: 'fleetd/'"),
    ('registry = "etcd://h"\n[etcd]\nleader_ttl_s = 1', "etcd.leader_ttl_s:"),
    ('registry = "etcd://h"\n[etcd]\nleader_ttl_s = 2.5', "etcd.leader_ttl_s:"),
    ('registry = "etcd://h"\n[etcd]\nca = "/nonexistent/ca.pem"',
     "etcd.ca: /nonexistent/ca.pem: cannot be read"),
    ('registry = "etcd://h"\n[etcd]\ncert = "/etc/hostname"', "cert and key go together"),
    ('registry = "etcd://h"\n[etcd]\nttl = 3', "unknown key etcd.ttl"),
    ('name = "a b"', "name: 'a b'"),
])
def test_etcd_settings_that_are_wrong_are_named(tmp_path: Path, text: str, named: str) -> None:
    assert named in error(write(tmp_path, text + "\n"))
