"""When a machine is up, unreachable or lost (its units move only when lost)."""

from __future__ import annotations

import pytest

from fleetd.daemon.config import ConfigError, load
from fleetd.engine.liveness import LOST, UNREACHABLE, UP, assess


@pytest.mark.parametrize(("connected", "age", "state"), [
    (True, 0.2, UP),
    (True, 4.9, UP),
    (False, 0.5, UNREACHABLE),  # a dropped connection: units stay put
    (False, 4.9, UNREACHABLE),
    (False, 5.1, LOST),
    (True, 5.1, LOST),  # a partition can leave the connection open and silent
])
def test_states_by_silence(connected: bool, age: float, state: str) -> None:
    verdict = assess(connected, 1000.0 - age, 1000.0, ttl=5.0)
    assert verdict is not None and verdict[0] == state
    if state == LOST:
        assert verdict[1] == f"silent for {age:.1f}s (TTL 5s)"


def test_a_machine_never_heard_from_is_not_judged() -> None:
    assert assess(False, None, 1000.0, ttl=5.0) is None


def test_ttl_must_exceed_the_heartbeat(tmp_path) -> None:
    config = tmp_path / "fleetd.toml"
    config.write_text("heartbeat_s = 2\nmachine_ttl_s = 2\n")
    with pytest.raises(ConfigError, match="must be longer than heartbeat_s"):
        load(str(config))
    config.write_text("machine_ttl_s = 7.5\n")
    assert load(str(config)).machine_ttl_s == 7.5
