"""``fleetctl dashboard``'s proxy (fleetd/cli/dashboard_proxy.py) in front of a real
Daemon's Unix socket (apikit): without its key nothing passes; the key's first visit
becomes the proxy's cookie, kept from fleetd; then pages and streams pass, as root's on
the socket; a write passes only with the dashboard's header."""

from __future__ import annotations

import http.client
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, Optional, Tuple

import pytest
from aiohttp import web
from apikit import Served, free_port, served

from fleetd.cli.dashboard_proxy import KEY_COOKIE, Proxy, forwarded
from fleetd.daemon.dashboard.cookie import HEADER
from fleetd.endpoints import parse_endpoint

KEY = "k3y-k3y-k3y"


@pytest.fixture
def proxied(tmp_path: Path) -> Iterator[Tuple[Served, int]]:
    with served(tmp_path) as s:
        port = free_port()
        proxy = Proxy(parse_endpoint(f"unix://{tmp_path / 'api.sock'}"), None, None, KEY)

        async def start() -> web.AppRunner:
            await proxy.start()
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", proxy.handle)
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", port).start()
            return runner

        runner = s.call(start())
        try:
            yield s, port
        finally:
            s.call(runner.cleanup())
            s.call(proxy.close())


def ask(port: int, method: str, path: str, headers: Optional[Dict[str, str]] = None,
        body: Optional[str] = None) -> Tuple[int, Any, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        r = conn.getresponse()
        return r.status, r, r.read().decode()
    finally:
        conn.close()


def test_nothing_passes_without_the_key(proxied: Tuple[Served, int]) -> None:
    _, port = proxied
    for path in ("/ui/machines", "/v1/units", "/ui/machines?key=wrong"):
        status, _, body = ask(port, "GET", path)
        assert status == 403 and "open the address it printed" in body, path
    assert ask(port, "GET", "/v1/units", {"Cookie": f"{KEY_COOKIE}=wrong"})[0] == 403


def test_the_key_becomes_a_cookie_and_the_dashboard_passes(proxied: Tuple[Served, int]
                                                           ) -> None:
    _, port = proxied
    status, r, _ = ask(port, "GET", f"/ui/units?state=up&key={KEY}")
    assert status == 302 and r.getheader("Location") == "/ui/units?state=up"
    set_cookie = r.getheader("Set-Cookie")
    assert set_cookie.startswith(f"{KEY_COOKIE}={KEY};") and "HttpOnly" in set_cookie
    jar = {"Cookie": f"{KEY_COOKIE}={KEY}"}
    status, r, body = ask(port, "GET", "/ui/machines", jar)
    assert status == 200 and "root (unix socket) (admin)" in body, body
    assert "frame-ancestors" in r.getheader("Content-Security-Policy")
    status, _, body = ask(port, "GET", "/v1/events?after=0&timeout=0", jar)
    assert status == 200 and '"events"' in body
    write = ("POST", "/v1/units/state", '{"names": ["x.service"], "desired": "loaded"}')
    status, _, body = ask(port, write[0], write[1], jar, write[2])
    assert status == 403 and HEADER in body  # another site's form: the cookie alone
    status, _, body = ask(port, write[0], write[1], {**jar, HEADER: "1"}, write[2])
    assert status == 404 and "x.service" in body  # reached fleetd, as root


def test_what_fleetd_is_sent() -> None:
    headers = {"Host": "127.0.0.1:9", "Accept": "text/html", "Connection": "keep-alive"}
    assert forwarded(headers, {KEY_COOKIE: KEY}, "tok") == {
        "Accept": "text/html", "Authorization": "Bearer tok"}
    # fleetd's own login cookie passes, and then fleetctl's token is not added
    assert forwarded(headers, {KEY_COOKIE: KEY, "fleetd_token": "t"}, "tok") == {
        "Accept": "text/html", "Cookie": "fleetd_token=t"}


def test_fleetctl_dashboard_prints_its_address_and_ends_on_sigterm(tmp_path: Path) -> None:
    with served(tmp_path):
        env = dict(os.environ, FLEETCTL_ENDPOINT=f"unix://{tmp_path / 'api.sock'}")
        proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "fleetctl"),
                                 "dashboard"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                env=env)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            found = re.search(r"http://127\.0\.0\.1:(\d+)(/ui/\?key=\S+)", line)
            assert found, line
            port, path = int(found.group(1)), found.group(2)
            status, r, _ = ask(port, "GET", path)
            assert status == 302 and r.getheader("Location") == "/ui/"
            jar = {"Cookie": r.getheader("Set-Cookie").split(";")[0]}
            status, r, _ = ask(port, "GET", "/ui/", jar)
            assert status == 302 and r.getheader("Location") == "/ui/machines"
            assert ask(port, "GET", "/ui/machines", jar)[0] == 200
            assert ask(port, "GET", "/ui/machines")[0] == 403
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(10) == 0, proc.stderr.read() if proc.stderr else ""


def test_fleetctl_dashboard_passes_to_a_fleetd_that_answers(tmp_path: Path) -> None:
    fleetctl = os.path.join(os.path.dirname(sys.executable), "fleetctl")
    gone = f"unix://{tmp_path / 'gone.sock'}"
    env = dict(os.environ, FLEETCTL_ENDPOINT=gone)
    done = subprocess.run([fleetctl, "dashboard"], capture_output=True, text=True, env=env,
                          timeout=30)
    assert done.returncode == 1 and f"no fleetd answers at {gone}" in done.stderr
    with served(tmp_path):
        live = f"unix://{tmp_path / 'api.sock'}"
        env = dict(os.environ, FLEETCTL_ENDPOINT=f"{gone},{live}")
        proc = subprocess.Popen([fleetctl, "dashboard"], stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True, env=env)
        try:
            assert proc.stdout is not None
            assert f"(through {live})" in proc.stdout.readline()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)
