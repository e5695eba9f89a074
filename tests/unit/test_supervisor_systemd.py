"""The supervisor's Driver=systemd wiring, against a fake systemd driver: start through
the driver, poll its view, report changes, stop, forget, re-adopt after a restart.
(The driver itself is tested against a real systemd in tests/integration.)"""

from __future__ import annotations

import asyncio
from pathlib import Path

from fleetd import protocol
from fleetd.testing.driver import status
from fleetd.testing.systemd import Supervised
from fleetd.testing.waiting import until

UNIT = {"name": "sd.service", "hash": "a" * 64, "want": protocol.WANT_RUNNING,
        "driver": "systemd", "config": {"unit_text": "[Service]\nExecStart=/bin/true\n"},
        "generation": 0}


async def running(root: Path) -> Supervised:
    """A supervisor that was given UNIT, once it reports it running."""
    h = Supervised(str(root))
    h.sup.recover()
    h.sup.set_desired([UNIT])
    await until(lambda: "running" in h.states())
    return h


def test_start_poll_stop_forget(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = await running(tmp_path)
        fake = h.fake
        assert h.reports[-1]["pid"] == 4242
        # systemd restarts it by itself: the poll reports its pid and NRestarts
        fake.now["sd.service"] = status("running", pid=5151, restarts=1)
        await until(lambda: h.reports[-1]["pid"] == 5151)
        assert h.reports[-1]["restarts"] == 1
        # it gives up (its own start limit): failed, with systemd's reason
        fake.now["sd.service"] = status("failed", error="restarted too often")
        await until(lambda: h.reports[-1]["state"] == "failed")
        assert h.reports[-1]["error"] == "restarted too often"
        assert fake.calls == ["start sd.service"]  # no restart of ours on top of systemd's
        h.sup.set_desired([UNIT])  # the same set again: a failed unit stays failed
        await asyncio.sleep(0.1)
        assert fake.calls == ["start sd.service"]
        h.sup.set_desired([{**UNIT, "generation": 1}])  # a new generation restarts it
        await until(lambda: fake.calls.count("start sd.service") == 2)
        h.sup.set_desired([{**UNIT, "generation": 1, "want": protocol.WANT_STOPPED}])
        await until(lambda: h.reports[-1]["state"] == "stopped")
        assert "stop sd.service" in fake.calls
        h.sup.set_desired([])
        await until(lambda: "forget sd.service" in fake.calls)

    asyncio.run(scenario())


def test_ran_out_on_its_own_is_exited(tmp_path: Path) -> None:
    async def scenario() -> None:
        h = await running(tmp_path)
        h.fake.now["sd.service"] = status("stopped")  # nobody asked systemd to stop it
        await until(lambda: h.reports[-1]["state"] == "exited")

    asyncio.run(scenario())


def test_readopted_after_an_agent_restart_and_strays_forgotten(tmp_path: Path) -> None:
    async def scenario() -> None:
        fake = (await running(tmp_path)).fake
        fake.left = ["sd.service", "stray.service"]
        second = Supervised(str(tmp_path), fake)  # same state directory: a restarted agent
        second.sup.recover()
        assert second.sup.units["sd.service"].state == "running"
        await until(lambda: "forget stray.service" in fake.calls)
        assert fake.calls.count("start sd.service") == 1  # adopted, not started again
        assert "forget sd.service" not in fake.calls

    asyncio.run(scenario())
