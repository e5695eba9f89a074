"""The dashboard's pure parts (fleetd/daemon/dashboard): which rows a page shows at
1,000 machines, the counts and the pager, a machine's load, and the pages rendered from
fixed rows: escaped, buttons only for operate, the live view's start, ``fragment``."""

from __future__ import annotations

import re
from typing import Any, Dict, List

from fleetd.daemon.dashboard import pages
from fleetd.daemon.dashboard.cookie import COOKIE, HEADER, authorization
from fleetd.daemon.dashboard.render import render
from fleetd.daemon.http.access import Caller

OPERATOR, READER = Caller("ops", "operate"), Caller("viewer", "read")


def fleet(n: int) -> List[Dict[str, Any]]:
    return [{"name": f"m{i}", "address": f"10.0.{i // 256}.{i % 256}",
             "state": "unreachable" if i % 10 == 0 else "up", "metadata": {"rack": str(i % 4)},
             "drain": None} for i in range(1, n + 1)]


UNITS = [
    {"unit": "web@1.service", "machine": "m2", "state": "running", "desired": "launched",
     "health": "passing", "restarts": 3, "pid": 41},
    {"unit": "web@2.service", "machine": "m2", "state": "running", "desired": "launched",
     "health": None, "restarts": 0, "pid": 42},
    {"unit": "db.service", "machine": "m10", "state": "failed", "desired": "launched"},
]
USAGE = {("web@1.service", "m2"): {"cpu_seconds": 1.25, "memory_bytes": 2 * 1024 * 1024},
         ("web@2.service", "m2"): {"cpu_seconds": 0.75, "memory_bytes": None}}


def test_pages_of_a_hundred_in_the_order_people_count() -> None:
    listing = pages.machines_listing(fleet(1000), None, None, 3)
    assert [m["name"] for m in listing.page.rows][:2] == ["m201", "m202"]
    assert len(listing.page.rows) == 100 and listing.page.pages == 10
    assert listing.counts == {"up": 900, "unreachable": 100}  # over all of them
    assert pages.paginate(list(range(5)), 99, size=2).rows == [4]  # past the end: the last
    assert pages.paginate([], 1).pages == 1


def test_a_state_and_a_glob_narrow_the_list_not_the_counts() -> None:
    listing = pages.machines_listing(fleet(1000), "unreachable", "m1*", 1)
    assert listing.counts["up"] == 900
    assert {m["state"] for m in listing.page.rows} == {"unreachable"}
    assert [m["name"] for m in listing.page.rows][:3] == ["m10", "m100", "m110"]
    # a name without wildcards matches names containing it
    assert [m["name"] for m in pages.machines_listing(fleet(30), None, "2", 1).page.rows] \
        == ["m2", "m12", "m20", "m21", "m22", "m23", "m24", "m25", "m26", "m27", "m28", "m29"]


def test_the_pager_links_the_ends_and_the_pages_around() -> None:
    page = pages.paginate(list(range(10000)), 50)
    assert pages.page_links(page) == [1, None, 47, 48, 49, 50, 51, 52, 53, None, 100]
    assert pages.page_links(pages.paginate(list(range(250)), 1)) == [1, 2, 3]


def test_a_machines_load_is_its_units_and_their_usage() -> None:
    view = pages.machine_view(fleet(2)[1], UNITS, USAGE)
    assert view.load == pages.Load(units=2, cpu_seconds=2.0, memory_bytes=2 * 1024 * 1024)
    assert view.units == [("web@1.service", "running"), ("web@2.service", "running")]
    assert pages.load_of("m1", UNITS, USAGE) == pages.Load(0, None, None)
    assert pages.size(2 * 1024 * 1024) == "2.0 MiB" and pages.seconds(None) == "-"


def test_the_units_of_one_machine() -> None:
    listing = pages.units_listing(UNITS, None, None, 1, machine="m2")
    assert [r["unit"] for r in listing.page.rows] == ["web@1.service", "web@2.service"]
    assert listing.query(page=2) == {"machine": "m2", "page": 2}


def context(caller: Caller, **more: Any) -> Dict[str, Any]:
    return {"caller": caller, "after": 7, "unit_glob": None,
            "operate": caller.role != "read", **more}


def test_the_machines_page_at_a_thousand_machines() -> None:
    listing = pages.machines_listing(fleet(1000), None, None, 1)
    views = pages.machine_views(listing.page.rows, UNITS, USAGE)
    assert views[1] == pages.machine_view(fleet(2)[1], UNITS, USAGE)  # m2: its 2 units
    html = render("machines.html", context(OPERATOR, listing=listing, views=views))
    assert len(re.findall(r'<tr data-machine="', html)) == 100
    assert 'data-state="up">up 900</a>' in html and "unreachable 100" in html
    assert "1000 shown in 10 pages" in html and 'href="/ui/machines?page=2"' in html
    assert 'data-unit="web@1.service"' in html and "cpu 2.00 s, mem 2.0 MiB" in html
    assert 'data-after="7"' in html and 'data-action="drain"' in html


def test_rows_are_text_and_buttons_are_for_operate() -> None:
    rows = [dict(UNITS[0], unit="<script>alert(1)</script>.service")]
    listing = pages.units_listing(rows, None, None, 1)
    views = [pages.unit_view(r, {rows[0]["unit"]: "machine 'm2': <only>"}, USAGE)
             for r in listing.page.rows]
    html = render("units.html", context(READER, listing=listing, views=views))
    assert "<script>alert" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "&lt;only&gt;" in html and "(3 restarts)" in html
    assert 'class="act' not in html  # a read token: no buttons
    html = render("units.html", context(OPERATOR, listing=listing, views=views))
    assert 'data-action="stop" data-confirm="Stop &lt;script&gt;' in html
    assert 'data-action="start">' in html  # starting asks nothing


STATUS = {"unit": "web@1.service", "description": "web", "desired": "launched",
          "machine": "m2", "reason": "fewest units among machines with rack=1",
          "copies": [{"machine": "m2", "state": "running", "pid": 41, "restarts": 3,
                      "exit_status": -9, "health": "passing",
                      "usage": {"cpu_seconds": 1.0, "memory_bytes": 4096}}]}
EVENTS = [{"id": 9, "time": 0.0, "kind": "restarted", "machine": "m2",
           "reason": "exited (signal 9); Restart=always"}]


def test_the_unit_page_and_its_fragment() -> None:
    ctx = context(OPERATOR, s=STATUS, events=EVENTS, unit_glob="web@1.service")
    html = render("unit.html", ctx)
    assert 'data-unit="web@1.service"' in html and "fewest units among machines" in html
    assert 'data-restarts="3"' in html and "restarted</b> on m2:" in html
    assert '<pre id="log" data-unit="web@1.service">' in html
    fragment = render("unit.html", ctx, fragment=True)
    assert fragment.lstrip().startswith("<h1") and "<html" not in fragment
    assert 'id="log"' not in fragment  # the streaming log is not swapped
    follower = render("unit.html", dict(ctx, after=None, events=[]))
    assert 'data-after=""' in follower and "not live" in follower


def test_where_the_cookie_stands_for_a_token() -> None:
    jar = {COOKIE: "tok"}
    assert authorization("GET", {}, jar) == "Bearer tok"
    assert authorization("POST", {}, jar) == ""  # a write another site's form could send
    assert authorization("POST", {HEADER: "1"}, jar) == "Bearer tok"
    assert authorization("POST", {"Authorization": "Bearer x"}, jar) == "Bearer x"
    assert authorization("GET", {}, {}) == ""


def test_a_draining_machine_says_what_is_left_and_offers_undrain() -> None:
    m = dict(fleet(2)[1], drain={"since": 1.0, "deadline": None, "done": False,
                                 "left": ["a.service", "b.service", "c.service", "d.service"]})
    view = pages.machine_view(m, UNITS, USAGE)
    assert view.draining == "draining: 4 units left (a.service, b.service, c.service and 1 more)"
    assert pages.drain_text({"left": [], "done": True}) == "drained"
    assert pages.drain_text(None) is None
    listing = pages.machines_listing([m], None, None, 1)
    html = render("machines.html", context(OPERATOR, listing=listing, views=[view]))
    assert 'data-action="undrain"' in html and 'data-action="drain"' not in html
    assert "draining: 4 units left" in html


def test_a_list_page_swaps_less_often_than_a_units_page() -> None:
    """A list's look asks up to 100 agents for usage: its live view swaps every 3 s at
    most, a unit's page every 1 s."""
    listing = pages.units_listing(UNITS, None, None, 1)
    assert 'data-every="3000"' in render("units.html", context(READER, listing=listing,
                                                               views=[]))
    ctx = context(READER, s=STATUS, events=[], unit_glob="web@1.service")
    assert 'data-every="1000"' in render("unit.html", ctx)
