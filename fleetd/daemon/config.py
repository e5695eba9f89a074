"""fleetd's configuration: defaults that work with no file, a TOML file to override.

    state_dir = "/var/lib/fleetd"        # registry (SQLite), lease
    heartbeat_s = 1.0                    # agents' heartbeat interval
    machine_ttl_s = 5.0                  # silent this long: the machine is lost, units move

    [api]
    socket = "/run/fleetd/fleetd.sock"   # always on, mode 0600: root's fleetctl
    listen = "127.0.0.1:7070"            # optional TCP listener ...
    token = "..."                        # ... which then refuses requests without it
    token_file = "/etc/fleetd/token"     # or read the token from a file

Unknown keys are errors (a misspelt key silently ignored is a setting silently lost).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Tuple

import tomllib

DEFAULT_STATE_DIR = "/var/lib/fleetd"
DEFAULT_SOCKET = "/run/fleetd/fleetd.sock"


class ConfigError(ValueError):
    pass


@dataclasses.dataclass
class Config:
    state_dir: str = DEFAULT_STATE_DIR
    heartbeat_s: float = 1.0
    machine_ttl_s: float = 5.0
    socket: str = DEFAULT_SOCKET
    listen: Optional[str] = None
    token: Optional[str] = None

    @property
    def listen_host_port(self) -> tuple[str, int]:
        assert self.listen is not None
        host, _, port = self.listen.rpartition(":")
        return host.strip("[]") or "127.0.0.1", int(port)


def _take(table: Dict[str, Any], key: str, kinds: Tuple[type, ...], where: str) -> Any:
    value = table.pop(key, None)
    # bool is an int to Python, never a number or a string to a user
    if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
        wanted = " or ".join({"str": "a string", "int": "a number", "float": "a number",
                              "dict": "a table"}[k.__name__] for k in kinds)
        raise ConfigError(f"{where}{key}: expected {wanted}, got {value!r}")
    return value


def load(path: Optional[str]) -> Config:
    cfg = Config()
    if path is None:
        return cfg
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    where = f"{path}: "
    cfg.state_dir = _take(data, "state_dir", (str,), where) or cfg.state_dir
    heartbeat = _take(data, "heartbeat_s", (int, float), where)
    if heartbeat is not None:
        if heartbeat <= 0:
            raise ConfigError(f"{where}heartbeat_s: must be > 0")
        cfg.heartbeat_s = float(heartbeat)
    ttl = _take(data, "machine_ttl_s", (int, float), where)
    if ttl is not None:
        cfg.machine_ttl_s = float(ttl)
    if cfg.machine_ttl_s <= cfg.heartbeat_s:
        raise ConfigError(f"{where}machine_ttl_s ({cfg.machine_ttl_s:g}) must be longer than "
                          f"heartbeat_s ({cfg.heartbeat_s:g}): a machine would be lost "
                          "between two heartbeats")
    api = _take(data, "api", (dict,), where) or {}
    cfg.socket = _take(api, "socket", (str,), f"{where}api.") or cfg.socket
    cfg.listen = _take(api, "listen", (str,), f"{where}api.")
    cfg.token = _take(api, "token", (str,), f"{where}api.")
    token_file = _take(api, "token_file", (str,), f"{where}api.")
    if token_file:
        try:
            with open(token_file) as f:
                cfg.token = f.read().strip()
        except OSError as exc:
            raise ConfigError(f"{where}api.token_file: {token_file}: {exc.strerror}") from None
    for leftover, prefix in ((api, "api."), (data, "")):
        if leftover:
            raise ConfigError(f"{where}unknown key {prefix}{sorted(leftover)[0]}")
    if cfg.listen:
        if ":" not in cfg.listen or not cfg.listen.rpartition(":")[2].isdigit():
            raise ConfigError(f"{where}api.listen: want HOST:PORT, got {cfg.listen!r}")
        if not cfg.token:
            raise ConfigError(f"{where}api.listen needs api.token or api.token_file: "
                              "fleetd never serves TCP without authentication")
    return cfg
