"""Who may do what: the route -> role table (every route of the app has a role), the
token store (only a hash kept, revoked at once), and the API refusing each role what
is above it, over real TCP to a real Daemon (apikit)."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from pathlib import Path
from typing import Any, Dict, Iterator, Tuple

import pytest
from aiohttp.test_utils import make_mocked_request
from apikit import Served, as_holder, free_port, http, role_tokens, served

from fleetd.daemon.http import access, roles
from fleetd.daemon.service.errors import Conflict, Invalid, NotFound
from fleetd.daemon.tokens import LAST_USED_FLUSH_S, TOKENS_FILE, TokenStore, digest

CONFIG_TOKEN = "s3cret-s3cret-s3cret"


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# --- the table -------------------------------------------------------------------------------
def test_every_route_of_the_app_has_a_role(tmp_path: Path) -> None:
    with served(tmp_path) as s:
        app = s.daemon.api()
    seen = set()
    for route in app.router.routes():
        resource = route.resource
        assert resource is not None
        seen.add((route.method, resource.canonical))
        assert roles.required(route.method, resource.canonical) in roles.ROLES
    # and the table names no route that is gone (a stale row would hide a new one's gap)
    assert {k for k in roles.ROUTES if not roles.admin_only(k[1])} <= seen


def test_the_table_reads_as_the_issue_says() -> None:
    r = roles.required
    assert [r("GET", "/v1/units"), r("GET", "/v1/units/{name}/journal"),
            r("HEAD", "/v1/machines"), r("GET", "/v1/servers")] == ["read"] * 4
    assert [r("POST", "/v1/units/state"), r("POST", "/v1/units/restart"),
            r("POST", "/v1/machines/{name}/drain")] == ["operate"] * 3
    assert [r("POST", "/v1/machines"), r("DELETE", "/v1/tokens/{name}"),
            r("GET", "/v1/secrets"), r("PUT", "/v1/secrets/{name}")] == ["admin"] * 4
    with pytest.raises(roles.NoRole):
        r("POST", "/v1/new-thing")
    assert roles.allows("admin", "operate") and not roles.allows("read", "operate")
    assert not roles.allows("nobody", "read")


# --- the store -------------------------------------------------------------------------------
def test_the_store_keeps_only_a_hash_and_forgets_at_once(tmp_path: Path) -> None:
    path = tmp_path / "state" / TOKENS_FILE
    store = TokenStore(str(path))
    token = run(store.create("grafana", "read"))
    assert token.startswith("fltk_") and len(token) > 40
    raw = path.read_bytes()
    assert token.encode() not in raw and digest(token).encode() in raw
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    found = store.lookup(token)
    assert found is not None and (found.name, found.role) == ("grafana", "read")
    assert store.lookup(token + "x") is None and store.lookup("") is None
    again = TokenStore(str(path))  # as a restarted fleetd reads it
    assert [t["name"] for t in again.list()] == ["grafana"]
    assert set(again.list()[0]) == {"name", "role", "created", "last_used"}
    run(store.revoke("grafana"))
    assert store.lookup(token) is None
    assert TokenStore(str(path)).list() == []


def test_the_store_refuses_what_it_cannot_take(tmp_path: Path) -> None:
    store = TokenStore(str(tmp_path / TOKENS_FILE))
    for name, role, field in [("", "read", "name"), ("a b", "read", "name"),
                              ("-x", "read", "name"), ("config", "read", "name"),
                              ("ok", "root", "role"), ("ok", None, "role")]:
        with pytest.raises(Invalid) as err:
            run(store.create(name, role))
        assert err.value.field == field
    run(store.create("ok", "operate"))
    with pytest.raises(Conflict):
        run(store.create("ok", "admin"))
    with pytest.raises(NotFound):
        run(store.revoke("nobody"))


def test_last_used_is_written_at_most_once_a_minute(tmp_path: Path) -> None:
    now = [1000.0]
    path = tmp_path / TOKENS_FILE
    store = TokenStore(str(path), clock=lambda: now[0])
    token = run(store.create("ci", "operate"))
    now[0] += 1
    assert store.lookup(token) is not None
    assert json.loads(path.read_text())["tokens"][0]["last_used"] is None
    now[0] += LAST_USED_FLUSH_S
    store.lookup(token)
    assert json.loads(path.read_text())["tokens"][0]["last_used"] == now[0]


def test_a_damaged_token_file_is_named(tmp_path: Path) -> None:
    path = tmp_path / TOKENS_FILE
    path.write_text("{not json")
    with pytest.raises(Exception) as err:
        TokenStore(str(path))
    assert str(path) in str(err.value)


# --- the API ---------------------------------------------------------------------------------
@pytest.fixture
def tcp(tmp_path: Path) -> Iterator[Tuple[Served, Dict[str, bytes]]]:
    with served(tmp_path, listen=f"127.0.0.1:{free_port()}", token=CONFIG_TOKEN) as s:
        yield s, role_tokens(str(tmp_path / "api.sock"))


as_ = as_holder


UNIT_STATE = ("POST", "/v1/units/state", {"names": ["x.service"], "desired": "launched"})
ADD_MACHINE = ("POST", "/v1/machines", {"address": "10.0.0.9", "agent_command": "true"})


def test_a_read_token_reads_and_may_not_change(tcp: Tuple[Served, Dict[str, bytes]]) -> None:
    s, token = tcp
    for path in ("/v1/units", "/v1/machines", "/v1/unit-files", "/v1/health"):
        assert as_(s, token["read"], "GET", path)[0] == 200, path
    for method, path, body in (UNIT_STATE, ("POST", "/v1/units/restart", {"names": ["x"]}),
                               ADD_MACHINE, ("POST", "/v1/tokens", {"name": "n",
                                                                    "role": "admin"})):
        status, answer = as_(s, token["read"], method, path, body)
        assert status == 403, (path, answer)
        assert "read-bot's role is read" in answer["error"]


def test_an_operate_token_operates_but_adds_no_machine_and_sees_no_secret(
        tcp: Tuple[Served, Dict[str, bytes]]) -> None:
    s, token = tcp
    status, answer = as_(s, token["operate"], *UNIT_STATE)
    assert status != 403, answer  # past the role check (the unit does not exist)
    status, answer = as_(s, token["operate"], *ADD_MACHINE)
    assert status == 403 and "needs a token with role admin" in answer["error"]
    # secrets are admin's, routes there or not: 403, never a 404 that tells what exists
    for method, path in (("GET", "/v1/secrets"), ("PUT", "/v1/secrets/db"),
                         ("GET", "/v1/secrets/db/value"), ("DELETE", "/v1/secrets/nope")):
        assert as_(s, token["operate"], method, path)[0] == 403, path
    assert as_(s, token["operate"], "GET", "/v1/no-such-route")[0] == 404


def test_admin_tokens_and_the_socket_may_do_all(tcp: Tuple[Served, Dict[str, bytes]],
                                                tmp_path: Path) -> None:
    s, token = tcp
    config_admin = f"Bearer {CONFIG_TOKEN}".encode()  # fleetd.toml's, as before
    for header in (token["admin"], config_admin):
        status, answer = as_(s, header, "GET", "/v1/tokens")
        assert status == 200
        assert {t["name"]: t["role"] for t in answer["tokens"]} == {
            "read-bot": "read", "operate-bot": "operate", "admin-bot": "admin"}
        assert all("token" not in t and "sha256" not in t for t in answer["tokens"])
    assert http(str(tmp_path / "api.sock"), "GET", "/v1/tokens")[0] == 200


def test_a_revoked_token_is_refused_at_once(tcp: Tuple[Served, Dict[str, bytes]],
                                            tmp_path: Path) -> None:
    s, token = tcp
    assert as_(s, token["operate"], "GET", "/v1/units")[0] == 200
    assert as_(s, token["admin"], "DELETE", "/v1/tokens/operate-bot")[0] == 200
    status, answer = as_(s, token["operate"], "GET", "/v1/units")
    assert status == 401 and "bearer token" in answer["error"]
    assert os.path.exists(tmp_path / "state" / TOKENS_FILE)


def test_a_token_file_that_cannot_be_written_is_a_503_and_nothing_changes(
        tcp: Tuple[Served, Dict[str, bytes]], tmp_path: Path) -> None:
    s, token = tcp
    state = tmp_path / "state"
    (state / f"{TOKENS_FILE}.tmp").mkdir()  # where the new file is written: EISDIR
    try:
        status, answer = as_(s, token["admin"], "POST", "/v1/tokens",
                             {"name": "late", "role": "read"})
        assert status == 503 and TOKENS_FILE in answer["error"], answer
        status, answer = as_(s, token["admin"], "DELETE", "/v1/tokens/read-bot")
        assert status == 503
        assert as_(s, token["read"], "GET", "/v1/units")[0] == 200  # not revoked
    finally:
        (state / f"{TOKENS_FILE}.tmp").rmdir()
    names = [t["name"] for t in TokenStore(str(state / TOKENS_FILE)).list()]
    assert names == ["admin-bot", "operate-bot", "read-bot"]


def test_only_a_unix_socket_is_root_and_a_gone_connection_is_nobody(tmp_path: Path) -> None:
    """caller_of fails closed: a request whose transport is gone, or whose socket is not
    a path (AF_UNIX), is judged by its token, never taken for root's."""
    store = TokenStore(str(tmp_path / TOKENS_FILE))
    unix = make_mocked_request("GET", "/v1/units")
    unix.transport.get_extra_info = lambda key, default=None: "/run/fleetd/fleetd.sock"
    assert access.caller_of(unix, store, None) == access.Caller(access.UNIX_CALLER, "admin")
    for sockname in (("127.0.0.1", 7070), ("::1", 7070, 0, 0), None, b"\0abstract"):
        odd = make_mocked_request("GET", "/v1/units")
        odd.transport.get_extra_info = lambda key, default=None, s=sockname: s
        assert access.caller_of(odd, store, None) is None, sockname
    gone = make_mocked_request("GET", "/v1/units",
                               headers={"Authorization": f"Bearer {CONFIG_TOKEN}"})
    gone.protocol.transport = None  # as aiohttp leaves it once the connection is lost
    assert gone.transport is None
    assert access.caller_of(gone, store, CONFIG_TOKEN) is None
