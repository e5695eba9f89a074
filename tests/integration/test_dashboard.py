"""Issue 18's web dashboard in a real browser: Debian's chromium, driven by Playwright for
Python (its own browser download cannot be reached here), in front of a real fleetd with
the lab's 3 machines (real sshd and fleet-agent per host), reached as an operator would
from the Unix socket: through ``fleetctl dashboard``'s local port.

The dashboard shows each unit running where ``fleetctl list-units`` says; stopping a unit
from its page stops it (list-units says so, and its program is gone from the host); a
unit's program killed from outside (SIGKILL in the host namespace) shows its restart on
the open page, without a reload. Screenshots of each step go to the test's temporary
directory and to SHOTS (printed), for a person to look at; they are not committed.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest
from labkit import FLEETCTL, ROOT, Fleet, wait_for

pytestmark = pytest.mark.browser
playwright = pytest.importorskip("playwright.sync_api")

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]
SHOTS = Path("/tmp/fleetd-dashboard-shots")
UNITS = ("dash-a.service", "dash-b.service", "dash-c.service")
UNIT = ("[Service]\nExecStart=/bin/sh -c 'echo hello from %n; exec /bin/sleep 100000'\n"
        "Restart=always\nRestartSec=100ms\n")
WAIT_MS = 20000


@pytest.fixture
def dashboard(cluster: Fleet) -> Iterator[str]:
    """``fleetctl dashboard`` against the fleet's socket: the address it printed."""
    env = dict(os.environ, FLEETCTL_ENDPOINT=cluster.endpoint)
    proc = subprocess.Popen([FLEETCTL, "dashboard"], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True, env=env, cwd=ROOT)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        found = re.search(r"(http://127\.0\.0\.1:\d+/ui/\?key=\S+)", line)
        assert found, f"fleetctl dashboard printed {line!r}"
        yield found.group(1)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Any]:
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        try:
            context = browser.new_context(viewport={"width": 1400, "height": 900})
            yield context.new_page()
        finally:
            browser.close()


@pytest.fixture(scope="module", autouse=True)
def fresh_shots() -> None:
    """SHOTS holds this run's screenshots only."""
    shutil.rmtree(SHOTS, ignore_errors=True)
    SHOTS.mkdir(parents=True)


class Shots:
    """Screenshots into the test's directory and SHOTS, named by test and in order."""

    def __init__(self, page: Any, where: Path, request: pytest.FixtureRequest) -> None:
        self.page, self.where, self.n = page, where, 0
        self.prefix = request.node.name.removeprefix("test_")[:40]
        where.mkdir(parents=True, exist_ok=True)
        print(f"\ndashboard screenshots: {where} and {SHOTS}")

    def take(self, name: str) -> None:
        self.n += 1
        path = self.where / f"{self.prefix}-{self.n:02d}-{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        shutil.copy(path, SHOTS / path.name)


def list_units(fleet: Fleet) -> List[Dict[str, Any]]:
    return list(json.loads(fleet.ctl("list-units", "-o", "json").stdout))


def running_where(fleet: Fleet) -> Dict[str, str]:
    return {r["unit"]: r["machine"] for r in list_units(fleet) if r["state"] == "running"}


def test_the_dashboard_follows_the_fleet(cluster: Fleet, dashboard: str, page: Any,
                                         tmp_path: Path, request: pytest.FixtureRequest
                                         ) -> None:
    fleet = cluster
    for name in UNITS:
        (tmp_path / name).write_text(UNIT)
    fleet.ctl("start", *(str(tmp_path / n) for n in UNITS))
    where = wait_for("3 units running", lambda: (
        (w := running_where(fleet)) and len(w) == 3 and w), 30)
    shots = Shots(page, tmp_path / "shots", request)
    page.on("dialog", lambda d: d.accept())  # the confirmation of stop

    # the machines page: 3 machines up, each unit under the machine list-units names
    page.goto(dashboard)
    assert page.url.endswith("/ui/machines"), page.url  # the key is out of the address
    page.wait_for_selector("tr[data-machine]")
    assert page.locator("tr[data-machine][data-state='up']").count() == 3
    for unit, machine in where.items():
        row = page.locator(f"tr[data-machine='{machine}']")
        assert row.locator(f"a[data-unit='{unit}']").count() == 1, (unit, machine)
    shots.take("machines")

    # the units page: each running where list-units says, with why there
    page.goto(dashboard.split("/ui/")[0] + "/ui/units")
    for unit, machine in where.items():
        row = page.locator(f"tr[data-unit='{unit}']")
        assert row.get_attribute("data-machine") == machine
        assert row.get_attribute("data-state") == "running"
        assert row.locator("td.reason").inner_text().strip() not in ("", "-")
    shots.take("units")

    # stop dash-b from the page (it asks first); the page and list-units agree
    page.locator("tr[data-unit='dash-b.service'] button[data-action='stop']").click()
    page.wait_for_selector("tr[data-unit='dash-b.service']:not([data-state='running'])",
                           timeout=WAIT_MS)
    wait_for("list-units: dash-b stopped", lambda: "dash-b.service" not in running_where(fleet)
             and all(r["desired"] == "loaded" for r in list_units(fleet)
                     if r["unit"] == "dash-b.service"), 20)
    wait_for("dash-b's program gone from its host", lambda: not fleet.copies("dash-b.service"))
    assert set(running_where(fleet)) == {"dash-a.service", "dash-c.service"}
    assert "done" in page.locator("#flash").inner_text()
    shots.take("stopped")

    # dash-a's page: its copy, why there, its log; then its program killed from outside
    page.locator("a[href='/ui/units/dash-a.service']").first.click()
    page.wait_for_selector("h1[data-unit='dash-a.service']")
    row = page.locator("table.copies tr[data-machine]")
    before = int(row.get_attribute("data-restarts") or 0)
    pid = int(row.get_attribute("data-pid") or 0)
    assert pid and pid in fleet.copies("dash-a.service"), (pid, fleet.copies("dash-a.service"))
    page.wait_for_function("document.getElementById('log').textContent"
                           ".includes('hello from dash-a')", timeout=WAIT_MS)
    page.evaluate("window.notReloaded = true")
    shots.take("unit-before-kill")
    os.kill(pid, signal.SIGKILL)
    page.wait_for_function(
        "(before) => { const r = document.querySelector('table.copies tr[data-machine]');"
        " return r && Number(r.dataset.restarts) > before && r.dataset.state === 'running'; }",
        arg=before, timeout=WAIT_MS)
    assert page.evaluate("window.notReloaded === true"), "the page was reloaded"
    assert int(row.get_attribute("data-pid") or 0) not in (0, pid)
    page.wait_for_selector("ol.events li[data-kind='restarted']", timeout=WAIT_MS)
    shots.take("unit-restarted")


def test_restart_drain_and_undrain_from_the_pages(
        cluster: Fleet, dashboard: str, page: Any, tmp_path: Path,
        request: pytest.FixtureRequest) -> None:
    fleet = cluster
    (tmp_path / "dash-a.service").write_text(UNIT)
    fleet.ctl("start", str(tmp_path / "dash-a.service"))
    first = wait_for("dash-a running", lambda: running_where(fleet).get("dash-a.service"), 30)
    old_pid = fleet.copies("dash-a.service")
    shots = Shots(page, tmp_path / "shots", request)
    page.on("dialog", lambda d: d.accept())
    page.goto(dashboard.replace("/ui/?", "/ui/units/dash-a.service?"))
    page.wait_for_selector("h1[data-unit='dash-a.service']")

    page.click("p.actions button[data-action='restart']")
    wait_for("dash-a restarted: a new program", lambda: (
        (now := fleet.copies("dash-a.service")) and now != old_pid), 20)
    page.wait_for_selector(f"table.copies tr[data-state='running']:not([data-pid='{old_pid[0]}'])",
                           timeout=WAIT_MS)

    page.click("a[href='/ui/machines']")
    page.locator(f"tr[data-machine='{first}'] button[data-action='drain']").click()
    moved = wait_for("dash-a moved off the drained machine", lambda: (
        (m := running_where(fleet).get("dash-a.service")) and m != first and m), 30)
    assert fleet.machines()[first]["drain"] is not None
    page.wait_for_selector(f"tr[data-machine='{first}'] small.drain", timeout=WAIT_MS)
    page.wait_for_selector(f"tr[data-machine='{moved}'] a[data-unit='dash-a.service']",
                           timeout=WAIT_MS)
    shots.take("draining")
    page.locator(f"tr[data-machine='{first}'] button[data-action='undrain']").click()
    wait_for("the machine undrained", lambda: fleet.machines()[first]["drain"] is None)
    page.wait_for_selector(f"tr[data-machine='{first}'] button[data-action='drain']",
                           timeout=WAIT_MS)
    shots.take("undrained")

    # someone typing in the filter: the live view waits for the field to lose focus
    page.click("a[href='/ui/units']")
    page.fill("input[name='q']", "dash")
    fleet.ctl("stop", "dash-a.service")
    wait_for("dash-a stopped", lambda: not fleet.copies("dash-a.service"), 20)
    page.wait_for_timeout(6000)  # the event came; a swap would have come within 3 s
    assert page.input_value("input[name='q']") == "dash"
    assert page.get_attribute("tr[data-unit='dash-a.service']", "data-state") == "running"
    page.click("h1")  # the field loses focus: the page catches up
    page.wait_for_selector("tr[data-unit='dash-a.service']:not([data-state='running'])",
                           timeout=WAIT_MS)

    # the unit destroyed while its page is open: the page says so
    page.click("a[href='/ui/units/dash-a.service']")
    page.wait_for_selector("h1[data-unit='dash-a.service']")
    fleet.ctl("destroy", "dash-a.service")
    page.wait_for_selector("#flash.bad:has-text('dash-a.service does not exist')",
                           timeout=WAIT_MS)
    shots.take("unit-destroyed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def tcp_fleet(tmp_path: Path) -> Iterator[Tuple[Fleet, str]]:
    """A real fleetd (no machines) with a TCP listener on loopback: its /ui/ address."""
    port = free_port()
    config = tmp_path / "fleetd.toml"
    config.write_text(f'[api]\nlisten = "127.0.0.1:{port}"\n')
    os.makedirs(tmp_path / "fleetd")
    fleet = Fleet(None, str(tmp_path / "fleetd"), config=str(config))
    fleet.start()
    try:
        yield fleet, f"http://127.0.0.1:{port}/ui/"
    finally:
        fleet.stop()


def test_a_browser_logs_in_with_a_token_and_the_cookie_does_not_write_alone(
        tcp_fleet: Tuple[Fleet, str], page: Any, tmp_path: Path,
        request: pytest.FixtureRequest) -> None:
    fleet, url = tcp_fleet
    read = fleet.ctl("token", "create", "--name", "viewer", "--role", "read").stdout.strip()
    shots = Shots(page, tmp_path / "shots", request)
    page.goto(url)
    page.fill("#token", "not-a-token")
    page.click("#login button")
    page.wait_for_selector("#login-error:not(:empty)")
    assert "bearer token" in page.inner_text("#login-error")
    shots.take("login-refused")

    page.fill("#token", read.splitlines()[-1].split()[-1])
    page.click("#login button")
    page.wait_for_selector("text=viewer (read)")
    assert page.url.endswith("/ui/machines")
    assert "fleetd_token" not in page.evaluate("document.cookie")  # HttpOnly
    page.wait_for_selector("#live-status[data-last]")  # its first poll of the events
    shots.take("logged-in-read")

    # what another page could make this browser send: the cookie, not the header
    status = page.evaluate("""async () => (await fetch('/v1/units/state', {method: 'POST',
        headers: {'Content-Type': 'text/plain'},
        body: JSON.stringify({names: ['x.service'], desired: 'loaded'})})).status""")
    assert status == 401
    status = page.evaluate("""async () => (await fetch('/v1/units/state', {method: 'POST',
        headers: {'X-Fleetd-Dashboard': '1', 'Content-Type': 'application/json'},
        body: JSON.stringify({names: ['x.service'], desired: 'loaded'})})).status""")
    assert status == 403  # the header makes it count: as a read token, which may not

    # the token revoked while the page is open: the next event brings the login page
    fleet.ctl("token", "revoke", "viewer")
    (tmp_path / "ev.service").write_text("[Service]\nExecStart=/bin/sleep 1\n")
    fleet.ctl("submit", str(tmp_path / "ev.service"))  # an event, to wake the page
    page.wait_for_selector("#login", timeout=WAIT_MS)
    shots.take("revoked")

    operate = fleet.ctl("token", "create", "--name", "ops", "--role", "operate").stdout
    page.fill("#token", operate.strip().splitlines()[-1].split()[-1])
    page.click("#login button")
    page.wait_for_selector("text=ops (operate)")
    page.click("#logout button")
    page.wait_for_selector("#login")
    assert page.context.cookies() == []
    shots.take("logged-out")
