"""GET /v1/machines?after=VERSION: the long poll the CLI waits with (machines coming up,
a drain ending) instead of polling fleetd every few milliseconds."""

from __future__ import annotations

import threading
import time
from typing import Any, Dict

from labkit import Fleet


def test_machines_answer_at_the_next_change_or_at_the_timeout(cluster: Fleet,
                                                              tmp_path) -> None:
    first = cluster.api.get("/v1/machines")
    version = first["version"]
    started = time.monotonic()
    quiet = cluster.api.get(f"/v1/machines?after={version + 10**9}&timeout=0.5")
    assert 0.4 < time.monotonic() - started < 5  # nothing newer came: the timeout
    assert quiet["version"] >= version  # versions never go back

    got: Dict[str, Any] = {}

    def wait() -> None:
        got["answer"] = cluster.api.get(f"/v1/machines?after={quiet['version']}&timeout=20",
                                        timeout=30)
        got["at"] = time.monotonic()

    waiter = threading.Thread(target=wait)
    waiter.start()
    time.sleep(0.3)
    assert "answer" not in got  # still waiting: nothing changed yet
    cluster.ctl("drain", "h1")
    changed_at = time.monotonic()
    waiter.join(30)
    assert got["answer"]["version"] > quiet["version"]
    assert got["at"] - changed_at < 2.0  # at the change, not at the 20 s timeout
    assert next(m for m in got["answer"]["machines"] if m["name"] == "h1")["drain"]
    cluster.ctl("undrain", "h1")
