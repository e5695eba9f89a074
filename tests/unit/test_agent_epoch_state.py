"""The agent's epoch on disk and in a hello (issue 12): read back as written, a file
that is not one read as 0 (and said so), a hello's epoch a whole number 0..2**63-1 or
absent (an older fleetd: 0). The real agent's refusals: tests/integration/test_agent_epoch.py."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Dict

import pytest

from fleetd.agent import specs
from fleetd.agent.state import AgentState
from fleetd.wire import messages


def test_the_epoch_is_read_back_as_written(tmp_path: Path) -> None:
    state = AgentState(str(tmp_path))
    assert state.load_epoch() == 0  # none yet
    state.save_epoch(messages.EPOCH_MAX)
    assert AgentState(str(tmp_path)).load_epoch() == messages.EPOCH_MAX
    assert oct(os.stat(tmp_path / "epoch").st_mode & 0o777) == "0o644"
    assert [p for p in os.listdir(tmp_path) if ".tmp." in p] == []


@pytest.mark.parametrize("content", ["", "seven\n", "-1\n", f"{2 ** 63}\n", "1" * 100])
def test_an_epoch_file_that_is_not_one_reads_as_0_and_says_so(
        tmp_path: Path, caplog: pytest.LogCaptureFixture, content: str) -> None:
    (tmp_path / "epoch").write_text(content)
    with caplog.at_level(logging.WARNING, "fleet-agent"):
        assert AgentState(str(tmp_path)).load_epoch() == 0
    assert "epoch 0 until fleetd says hello" in caplog.text


@pytest.mark.parametrize(("hello", "epoch"), [
    ({}, 0), ({"epoch": 0}, 0), ({"epoch": 7}, 7), ({"epoch": 7.0}, 7),
    ({"epoch": messages.EPOCH_MAX}, messages.EPOCH_MAX),
])
def test_a_hellos_epoch(hello: Dict[str, Any], epoch: int) -> None:
    assert specs.epoch(hello) == epoch


@pytest.mark.parametrize("value", [True, -1, 2 ** 63, 1.5, "7", None, [7]])
def test_a_hellos_epoch_that_is_not_one_is_refused_naming_it(value: object) -> None:
    with pytest.raises(specs.SpecError, match=r"^hello: epoch: want a whole number from 0"):
        specs.epoch({"epoch": value})
