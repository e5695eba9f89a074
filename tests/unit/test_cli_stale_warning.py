"""fleetctl's listings warn on stderr when the fleetd that answered says its reads may be
stale (etcd without a quorum): the rows still print, an operator needs them most then,
but must not take them for the current state."""

from __future__ import annotations

import types
from typing import Any, Dict, Optional

import pytest

from fleetd.cli import listing
from fleetd.client import ApiError


class FakeClient:
    """Answers /v1/health with ``stale``, or refuses it."""

    def __init__(self, stale: Optional[str], refuse: bool = False) -> None:
        self.stale, self.refuse = stale, refuse
        self.asked: list = []

    def get(self, path: str, timeout: float = 60.0) -> Dict[str, Any]:
        self.asked.append(path)
        if self.refuse:
            raise ApiError(0, "no fleetd answered")
        return {"ok": True, "stale": self.stale}


def warned(client: FakeClient, capsys: pytest.CaptureFixture[str]) -> str:
    listing.warn_if_stale(types.SimpleNamespace(client=client))  # type: ignore[arg-type]
    out = capsys.readouterr()
    assert out.out == ""
    return out.err


def test_a_stale_answer_is_said_on_stderr_with_the_reason(capsys) -> None:
    why = "etcd: no quorum since 21:40:01 (etcdserver: request timed out); answers may be stale"
    client = FakeClient(why)
    assert warned(client, capsys) == f"warning: {why}\n"
    assert client.asked == ["/v1/health"]


def test_a_current_answer_or_a_fleetd_that_does_not_say_adds_nothing(capsys) -> None:
    assert warned(FakeClient(None), capsys) == ""
    assert warned(FakeClient(None, refuse=True), capsys) == ""


def test_the_reason_cannot_drive_the_terminal(capsys) -> None:
    assert warned(FakeClient("etcd: \x1b]0;pwned\x07"), capsys) == \
        "warning: etcd: \\x1b]0;pwned\\x07\n"
