"""The compiled-unit cache across threads: submit's ``check`` runs in a worker thread
(asyncio.to_thread) while the engine's pass reads, renders and ``retain``s on the loop."""

from __future__ import annotations

import threading
from typing import List

from fleetd.units.compiled import CompiledUnits, Invalid
from fleetd.units.model import Unit, content_hash

SERVICE = "[Service]\nExecStart=/bin/sleep 1000\n"


def test_checks_in_a_worker_thread_while_the_loop_retains() -> None:
    units = CompiledUnits()
    # a cache as large as a fleet's, so that each retain's copy takes a while (without
    # the lock, a check storing meanwhile broke it: "dictionary changed size")
    kept = [(f"x{i}.service", "h", "{}") for i in range(20000)]
    units._probed.update((k, Invalid("invalid: x")) for k in kept)
    stop = threading.Event()
    errors: List[BaseException] = []

    def engine() -> None:
        while not stop.is_set():
            try:
                units.retain(kept, [])
            except BaseException as exc:  # reported below
                errors.append(exc)
                return

    loop = threading.Thread(target=engine)
    loop.start()
    try:
        for i in range(300):
            text = f"{SERVICE}Environment=N={i}\n"
            unit = units.check(f"u{i}.service", content_hash(text), {}, text, "f.service")
            assert isinstance(unit, Unit)
    finally:
        stop.set()
        loop.join()
    assert errors == [] and units.parses == 300
    assert all(units.known(*k[:2], {}) is not None for k in kept[:10])
