"""The dashboard on a real Daemon's TCP listener (apikit): a browser without a token gets
the login page; the login call turns a token into an HttpOnly, SameSite cookie; with it
the pages answer, as that token's role allows; the cookie counts on a write only with the
dashboard's header; the assets need no token."""

from __future__ import annotations

import http.client
from pathlib import Path
from typing import Dict, Iterator, Optional, Tuple

import pytest
from apikit import Served, free_port, role_tokens, served

from fleetd.daemon.dashboard.cookie import COOKIE, HEADER

Answer = Tuple[int, Dict[str, str], str]


@pytest.fixture
def tcp(tmp_path: Path) -> Iterator[Tuple[Served, Dict[str, str]]]:
    with served(tmp_path, listen=f"127.0.0.1:{free_port()}") as s:
        made = role_tokens(str(tmp_path / "api.sock"))
        yield s, {role: header.decode().split(" ", 1)[1] for role, header in made.items()}


def ask(s: Served, method: str, path: str, headers: Optional[Dict[str, str]] = None,
        body: Optional[str] = None) -> Answer:
    host, port = s.config.listen_host_port
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, {k.lower(): v for k, v in r.getheaders()}, r.read().decode()
    finally:
        conn.close()


def cookie(token: str) -> Dict[str, str]:
    return {"Cookie": f"{COOKIE}={token}"}


def test_no_token_gets_the_login_page_and_the_assets(tcp: Tuple[Served, Dict[str, str]]
                                                     ) -> None:
    s, _ = tcp
    status, headers, body = ask(s, "GET", "/ui/machines")
    assert status == 401 and headers["content-type"].startswith("text/html")
    assert 'id="login"' in body and "/ui/assets/login.js" in body
    assert ask(s, "GET", "/v1/units")[0] == 401  # the API itself still answers JSON 401
    for asset in ("dashboard.js", "login.js", "dashboard.css"):
        assert ask(s, "GET", f"/ui/assets/{asset}")[0] == 200, asset
    assert ask(s, "GET", "/ui/assets/nothing.js")[0] == 404
    status, _, body = ask(s, "GET", "/ui/machines", cookie("not-a-token"))
    assert status == 401 and "not (or no longer)" in body


def test_the_login_call_sets_the_cookie_and_the_pages_answer(
        tcp: Tuple[Served, Dict[str, str]]) -> None:
    s, token = tcp
    assert ask(s, "POST", "/ui/session", {"Authorization": "Bearer nope"})[0] == 401
    status, headers, _ = ask(s, "POST", "/ui/session",
                             {"Authorization": f"Bearer {token['read']}"})
    assert status == 200
    set_cookie = headers["set-cookie"]
    assert set_cookie.startswith(f"{COOKIE}={token['read']};")
    assert "HttpOnly" in set_cookie and "SameSite=Strict" in set_cookie
    for path in ("/ui/machines", "/ui/units", "/ui/machines?state=up&q=m*&page=3"):
        status, headers, body = ask(s, "GET", path, cookie(token["read"]))
        assert status == 200, (path, body)
        assert "frame-ancestors 'none'" in headers["content-security-policy"]
        assert "read-bot (read)" in body and 'class="act' not in body
    status, headers, _ = ask(s, "GET", "/ui", cookie(token["read"]))
    assert status == 302 and headers["location"] == "/ui/machines"
    status, headers, body = ask(s, "GET", "/ui/units?page=x", cookie(token["read"]))
    assert status == 400 and 'id="error">page:' in body  # a refusal, as a page
    assert headers["content-type"].startswith("text/html")
    status, _, body = ask(s, "GET", "/ui/units/none.service", cookie(token["read"]))
    assert status == 404 and 'id="error">unit none.service does not exist' in body
    status, headers, _ = ask(s, "GET", "/ui/units/none.service?fragment=1",
                             cookie(token["read"]))
    assert status == 404 and headers["content-type"].startswith("application/json")
    status, headers, _ = ask(s, "POST", "/ui/session/end",
                             {**cookie(token["read"]), HEADER: "1"})
    assert status == 200 and 'Max-Age=0' in headers["set-cookie"]


def test_a_write_takes_the_cookie_only_with_the_dashboards_header(
        tcp: Tuple[Served, Dict[str, str]]) -> None:
    s, token = tcp
    body = '{"names": ["x.service"], "desired": "loaded"}'
    json_type = {"Content-Type": "application/json"}
    status, _, answer = ask(s, "POST", "/v1/units/state", {**cookie(token["operate"]),
                                                           **json_type}, body)
    assert status == 401, answer  # what another site's form could make a browser send
    status, _, answer = ask(s, "POST", "/v1/units/state",
                            {**cookie(token["read"]), **json_type, HEADER: "1"}, body)
    assert status == 403 and "role operate" in answer
    status, _, answer = ask(s, "POST", "/v1/units/state",
                            {**cookie(token["operate"]), **json_type, HEADER: "1"}, body)
    assert status != 401 and status != 403, answer  # past access: the unit is unknown
    status, _, page = ask(s, "GET", "/ui/units", cookie(token["operate"]))
    assert status == 200 and "operate-bot (operate)" in page
