"""Where each unit is (issue 18), in the lab through the real fleetctl: a unit that
declares ``Ports=`` shows its machine's address and port in ``list-units``, and that
address:port is where it answers."""

from __future__ import annotations

import urllib.request

from labkit import Fleet, Lab, wait_for

WEB = """\
[Service]
WorkingDirectory={dir}
ExecStart=/usr/bin/python3 -m http.server 8080 --bind {{{{ machine.address }}}}

[X-Fleet]
Ports=8080
"""


def test_list_units_shows_the_address_and_port_a_unit_answers_at(
        cluster: Fleet, lab: Lab, tmp_path) -> None:
    (tmp_path / "hello.txt").write_text("here\n")
    (tmp_path / "web.service").write_text(WEB.format(dir=tmp_path))
    cluster.ctl("start", str(tmp_path / "web.service"))
    row = wait_for("web.service running", lambda: (
        (u := cluster.unit("web.service")) and u["state"] == "running" and u))
    address = next(h.address for h in lab.hosts() if h.name == row["machine"])
    out = cluster.ctl("list-units", "--fields", "unit,machine,address,ports", "--no-legend")
    assert out.stdout.split() == ["web.service", row["machine"], f"{address}:8080", "8080/tcp"]
    assert cluster.unit("web.service")["address"] == address  # the API's row too

    def answers() -> bytes:
        try:
            with urllib.request.urlopen(f"http://{address}:8080/hello.txt", timeout=2) as r:
                return bytes(r.read())
        except OSError:
            return b""
    assert wait_for(f"an answer at {address}:8080", answers) == b"here\n"
