"""The lab's fleetd servers, the pure parts: the configuration each is given, and how the
lab reads who leads from what a fleetd answers."""

from __future__ import annotations

import os

import tomllib

from fleetd.daemon.config import load
from fleetd.lab import certs
from fleetd.lab.servers import Server, config_text, role_of


def server(tmp_path) -> Server:
    return Server(name="fleetd-2", netns="fh-f2", address="10.79.0.212",
                  dir=str(tmp_path / "fleetd-2"), socket="/run/fleetd/fh-fleetd-2.sock")


def test_on_etcd_the_config_names_the_server_the_cluster_and_the_api(tmp_path) -> None:
    text = config_text(server(tmp_path), "/lab/servers/token",
                       "etcd://10.79.0.201:2379,10.79.0.202:2379")
    assert tomllib.loads(text) == {
        "name": "fleetd-2", "registry": "etcd://10.79.0.201:2379,10.79.0.202:2379",
        "state_dir": str(tmp_path / "fleetd-2" / "state"),
        "etcd": {"prefix": "/fleetd"},
        "api": {"socket": "/run/fleetd/fh-fleetd-2.sock", "listen": "10.79.0.212:7070",
                "token_file": "/lab/servers/token"}}


def test_without_etcd_today_s_fleetd_takes_the_config(tmp_path) -> None:
    token = tmp_path / "token"
    token.write_text("0123456789abcdef0123456789abcdef\n")
    os.chmod(token, 0o600)
    path = tmp_path / "fleetd.toml"
    tls = certs.issue(certs.make_ca(str(tmp_path)), str(tmp_path), "api", ["10.79.0.212"])
    path.write_text(config_text(server(tmp_path), str(token), None, tls))
    cfg = load(str(path))
    assert (cfg.state_dir, cfg.socket, cfg.listen, cfg.tls_cert, cfg.tls_key) == (
        str(tmp_path / "fleetd-2" / "state"), "/run/fleetd/fh-fleetd-2.sock",
        "10.79.0.212:7070", tls.cert, tls.key)
    assert cfg.token == "0123456789abcdef0123456789abcdef"


def test_a_path_with_quotes_stays_one_toml_string(tmp_path) -> None:
    s = Server(name="fleetd-1", netns="fh-f1", address="10.79.0.211",
               dir='/lab "x"\\y', socket="/run/fleetd/fleetd-1.sock")
    assert tomllib.loads(config_text(s, "/t", None))["state_dir"] == '/lab "x"\\y/state'


def test_role_from_health_first_its_own_belief() -> None:
    assert role_of("fleetd-1", {"ok": True, "role": "leader"},
                   {"servers": [{"kind": "fleetd", "name": "fleetd-1", "leader": False}]}
                   ) == "leader"
    assert role_of("fleetd-1", {"leader": False}, None) == "follower"
    assert role_of("fleetd-1", {"leader": "fleetd-3"}, None) == "follower"
    assert role_of("fleetd-3", {"leader": "fleetd-3"}, None) == "leader"


def test_role_from_the_servers_route_rows_of_fleetd_only() -> None:
    rows = {"servers": [
        {"kind": "etcd", "name": "fleetd-1", "leader": True},  # an etcd member so named
        {"kind": "fleetd", "name": "fleetd-1", "leader": False},
        {"kind": "fleetd", "name": "fleetd-2", "leader": True}]}
    assert role_of("fleetd-1", {"ok": True}, rows) == "follower"
    assert role_of("fleetd-2", {"ok": True}, rows) == "leader"
    assert role_of("fleetd-2", {"ok": True}, {"leader": "fleetd-2"}) == "leader"


def test_a_fleetd_that_says_nothing_of_roles_is_unknown() -> None:
    assert role_of("fleetd-1", {"ok": True, "pid": 7}, None) == "?"
    assert role_of("fleetd-1", {"ok": True}, {"servers": "nonsense"}) == "?"
