"""fleetd's configuration: defaults that work with no file, a TOML file to override.

    state_dir = "/var/lib/fleetd"        # registry (SQLite), lease
    heartbeat_s = 1.0                    # agents' heartbeat interval
    machine_ttl_s = 5.0                  # silent this long: the machine is lost, units move
    name = "fleetd-1"                    # this fleetd among several (default: the hostname)
    registry = "etcd://10.0.0.1:2379,10.0.0.2:2379"   # default: SQLite in state_dir
    secrets_key = "/etc/fleetd/secrets.key"  # default: state_dir/secrets.key (0600, made on
                                         # first `secret set`); the same file on each fleetd

    [etcd]                               # with registry = "etcd://..." (or etcds://: TLS)
    prefix = "/fleetd"                   # every key of this cluster lives under it
    leader_ttl_s = 3                     # the leader lock's lease; whole seconds, >= 2
    ca = "/etc/fleetd/etcd-ca.pem"       # TLS: the CA that signed etcd's certificates,
    cert = "/etc/fleetd/etcd-client.pem" # and this fleetd's client certificate and key
    key = "/etc/fleetd/etcd-client.key"

    [api]
    socket = "/run/fleetd/fleetd.sock"   # always on, mode 0600: root's fleetctl
    listen = "127.0.0.1:7070"            # optional TCP listener (tokens: fleetctl token)
    tls_cert = "/etc/fleetd/api.pem"     # TLS; required unless listen is on loopback
    tls_key = "/etc/fleetd/api.key"
    client_ca = "/etc/fleetd/clients.pem" # optional: mutual TLS, client certs it signed
    token = "..."                        # optional: one admin token (named "config")
    token_file = "/etc/fleetd/token"     # or read it from a file
    idle_timeout_s = 30.0                # a connection without a whole request is closed
    max_connections = 256                # the TCP listener holds at most this many

A TCP listener on an address other than loopback needs TLS: a token in clear on a
network is anyone's who sees the traffic (daemon/tls.py).

Unknown keys are errors (a misspelt key silently ignored is a setting silently lost).
Numbers are finite and in range (TOML reads ``nan`` and ``inf``; a NaN heartbeat would
stop asyncio's timers). A token is at least 16 bytes, and a file that holds one (the
token file, or this file with ``api.token``) is readable by its owner only: anyone who
reads it is anyone on the network.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
from socket import gethostname
from typing import Any, Callable, Dict, List, Optional, Tuple, TypeVar

import tomllib

from fleetd.daemon.tls import TlsError, is_loopback, server_context
from fleetd.wire import numbers

DEFAULT_STATE_DIR = "/var/lib/fleetd"
DEFAULT_PREFIX = "/fleetd"
DEFAULT_LEADER_TTL_S = 3  # bench/ha_failover.py: kill -9 of the leader -> writes again in
# about TTL + a campaign; 2 leaves too little room for a renewal on a loaded machine
DEFAULT_SOCKET = "/run/fleetd/fleetd.sock"
TOKEN_MIN = 16  # bytes: guessing it over the network must be hopeless
N = TypeVar("N", int, float)


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
    tls_cert: Optional[str] = None
    tls_key: Optional[str] = None
    client_ca: Optional[str] = None
    idle_timeout_s: float = 30.0
    max_connections: int = 256
    name: str = dataclasses.field(default_factory=gethostname)
    registry: Optional[str] = None  # None: SQLite in state_dir; else etcd://host:port,...
    etcd_prefix: str = DEFAULT_PREFIX
    leader_ttl_s: int = DEFAULT_LEADER_TTL_S
    etcd_ca: Optional[str] = None
    etcd_cert: Optional[str] = None
    etcd_key: Optional[str] = None
    secrets_key: Optional[str] = None  # None: state_dir/secrets.key

    @property
    def secrets_key_path(self) -> str:
        """The key that seals secrets (fleetd/daemon/secrets.py)."""
        return self.secrets_key or os.path.join(self.state_dir, "secrets.key")

    @property
    def registry_kind(self) -> str:
        return "sqlite" if self.registry is None else "etcd"

    def addresses(self) -> List[str]:
        """Where this fleetd's API answers: its socket, and its TCP address if any, as
        ``fleetctl --endpoint`` takes it (``https://`` when it serves TLS, so what
        list-servers shows can be pasted)."""
        tcp = [("https://" if self.tls_cert else "") + self.listen] if self.listen else []
        return [f"unix:{self.socket}", *tcp]

    @property
    def listen_host_port(self) -> tuple[str, int]:
        assert self.listen is not None
        return split_listen(self.listen)


def split_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:7070``, ``:7070`` for 127.0.0.1) as (host, port); raise
    NumberError for a port that is not 1 to 65535 in ASCII digits."""
    host, _, port = listen.rpartition(":")
    return host.strip("[]") or "127.0.0.1", numbers.parse_int(port, 1, 65535)


def _take(table: Dict[str, Any], key: str, kinds: Tuple[type, ...], where: str) -> Any:
    value = table.pop(key, None)
    # bool is an int to Python, never a number or a string to a user
    if value is not None and (isinstance(value, bool) or not isinstance(value, kinds)):
        wanted = " or ".join({"str": "a string", "int": "a number", "float": "a number",
                              "dict": "a table"}[k.__name__] for k in kinds)
        raise ConfigError(f"{where}{key}: expected {wanted}, got {value!r}")
    return value


def _check_listen(listen: str, where: str) -> None:
    wrong = ConfigError(f"{where}api.listen: want HOST:PORT (a port from 1 to 65535), "
                        f"got {listen!r}")
    if ":" not in listen:
        raise wrong
    try:
        split_listen(listen)
    except numbers.NumberError:
        raise wrong from None


def _number(table: Dict[str, Any], key: str, where: str, read: Callable[[object], N],
            default: N) -> N:
    """A TOML number as ``read`` (numbers.json_*) takes it: never a bool, NaN or inf,
    within the range it states; ``default`` when absent."""
    value = _take(table, key, (int, float), where)
    if value is None:
        return default
    try:
        return read(value)
    except numbers.NumberError as exc:
        raise ConfigError(f"{where}{key}: {exc}") from None


def _private(path: str, what: str) -> None:
    """Refuse a file holding the token that others than its owner may read."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise ConfigError(f"{what}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{what}: mode {stat.S_IMODE(mode):04o}, but a file holding the "
                          f"API token must be readable by its owner only (chmod 600 {path})")


def _token(api: Dict[str, Any], path: str, where: str) -> Optional[str]:
    """The API token, inline or from ``token_file`` (which wins), from a private file
    and at least TOKEN_MIN bytes."""
    token: Optional[str] = _take(api, "token", (str,), f"{where}api.")
    if token is not None:
        _private(path, f"{where}api.token")
    token_file = _take(api, "token_file", (str,), f"{where}api.")
    if token_file:
        _private(token_file, f"{where}api.token_file: {token_file}")  # before it is read
        try:
            with open(token_file) as f:
                token = f.read().strip()
        except OSError as exc:
            raise ConfigError(f"{where}api.token_file: {token_file}: {exc.strerror}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{where}api.token_file: {token_file}: not UTF-8 text") from None
    if token and len(token.encode()) < TOKEN_MIN:
        key = "token_file" if token_file else "token"
        raise ConfigError(f"{where}api.{key}: the token is {len(token.encode())} bytes; want "
                          f"at least {TOKEN_MIN} (openssl rand -hex 16 makes one)")
    return token


NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


def _etcd(cfg: Config, etcd: Dict[str, Any], where: str) -> None:
    """The registry URL and its [etcd] table: the URL parsed now (a typo is named here,
    not as a connection error later), the TLS files readable, the TTL whole seconds."""
    if cfg.registry is not None:
        from fleetd.registry.etcdv3 import parse_url  # only a config with etcd needs it

        try:
            parse_url(cfg.registry)  # etcds:// without etcd.ca trusts the system's CAs
        except ValueError as exc:
            raise ConfigError(f"{where}registry: {exc}") from None
    elif etcd:
        raise ConfigError(f"{where}[etcd] is set, but registry is not an etcd:// URL")
    prefix = _take(etcd, "prefix", (str,), f"{where}etcd.") or cfg.etcd_prefix
    if not prefix.startswith("/") or prefix.endswith("/") or "\n" in prefix:
        raise ConfigError(f"{where}etcd.prefix: {prefix!r}: want an absolute key prefix "
                          "without a trailing slash, such as /fleetd")
    cfg.etcd_prefix = prefix
    cfg.leader_ttl_s = _number(etcd, "leader_ttl_s", f"{where}etcd.",
                               lambda v: numbers.json_int(v, 2, 60), cfg.leader_ttl_s)
    for key in ("ca", "cert", "key"):
        path = _take(etcd, key, (str,), f"{where}etcd.")
        if path is not None and not os.access(path, os.R_OK):
            raise ConfigError(f"{where}etcd.{key}: {path}: cannot be read")
        setattr(cfg, f"etcd_{key}", path)
    if (cfg.etcd_cert is None) != (cfg.etcd_key is None):
        raise ConfigError(f"{where}etcd: cert and key go together (a client certificate "
                          "and its private key)")


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
    cfg.heartbeat_s = _number(data, "heartbeat_s", where,
                              lambda v: numbers.json_float(v, 0.01, 3600), cfg.heartbeat_s)
    cfg.machine_ttl_s = _number(data, "machine_ttl_s", where,
                                lambda v: numbers.json_float(v, 0.02, 86400), cfg.machine_ttl_s)
    if cfg.machine_ttl_s <= cfg.heartbeat_s:
        raise ConfigError(f"{where}machine_ttl_s ({cfg.machine_ttl_s:g}) must be longer than "
                          f"heartbeat_s ({cfg.heartbeat_s:g}): a machine would be lost "
                          "between two heartbeats")
    cfg.name = _take(data, "name", (str,), where) or cfg.name
    if not NAME.fullmatch(cfg.name):
        raise ConfigError(f"{where}name: {cfg.name!r}: want 1 to 63 letters, digits, '.', "
                          "'_' or '-' (it names this fleetd in etcd and list-servers)")
    cfg.registry = _take(data, "registry", (str,), where)
    cfg.secrets_key = _take(data, "secrets_key", (str,), where)
    etcd = _take(data, "etcd", (dict,), where) or {}
    _etcd(cfg, etcd, where)
    api = _take(data, "api", (dict,), where) or {}
    cfg.socket = _take(api, "socket", (str,), f"{where}api.") or cfg.socket
    cfg.listen = _take(api, "listen", (str,), f"{where}api.")
    cfg.token = _token(api, path, where)
    _tls(cfg, api, where)
    cfg.idle_timeout_s = _number(api, "idle_timeout_s", f"{where}api.",
                                 lambda v: numbers.json_float(v, 0.1, 3600), cfg.idle_timeout_s)
    cfg.max_connections = _number(api, "max_connections", f"{where}api.",
                                  lambda v: numbers.json_int(v, 1, 65536), cfg.max_connections)
    for leftover, prefix in ((api, "api."), (etcd, "etcd."), (data, "")):
        if leftover:
            raise ConfigError(f"{where}unknown key {prefix}{sorted(leftover)[0]}")
    if cfg.listen:
        _check_listen(cfg.listen, where)
        host = cfg.listen_host_port[0]
        if cfg.tls_cert is None and not is_loopback(host):
            raise ConfigError(
                f"{where}api.listen = {cfg.listen!r} is not a loopback address, and fleetd "
                "serves a network only over TLS (its tokens would travel in clear): set "
                "api.tls_cert and api.tls_key (and api.client_ca for client certificates), "
                "or listen on 127.0.0.1")
    return cfg


def _tls(cfg: Config, api: Dict[str, Any], where: str) -> None:
    """``tls_cert``, ``tls_key`` (together) and ``client_ca`` (only with them), loaded
    once here so that a wrong file is named now, not at the first connection."""
    for key in ("tls_cert", "tls_key", "client_ca"):
        setattr(cfg, key, _take(api, key, (str,), f"{where}api."))
    if (cfg.tls_cert is None) != (cfg.tls_key is None):
        raise ConfigError(f"{where}api: tls_cert and tls_key go together (the API's "
                          "certificate and its private key)")
    if cfg.client_ca is not None and cfg.tls_cert is None:
        raise ConfigError(f"{where}api.client_ca needs api.tls_cert and api.tls_key: "
                          "client certificates are asked for in a TLS handshake")
    if cfg.tls_cert is not None and not cfg.listen:
        raise ConfigError(f"{where}api.tls_cert is set, but api.listen is not: TLS is for "
                          "the TCP listener (the Unix socket needs none)")
    if cfg.tls_cert is not None and cfg.tls_key is not None:
        try:
            server_context(cfg.tls_cert, cfg.tls_key, cfg.client_ca)
        except TlsError as exc:
            raise ConfigError(f"{where}api.tls_cert/tls_key/client_ca: {exc}") from None
