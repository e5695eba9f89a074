"""fleetctl's time-span parameters (fleetd.cli.params): what each takes and refuses."""

from __future__ import annotations

import click
import pytest

from fleetd.cli.params import Span, Timespan


def test_a_timespan_is_above_0_and_may_be_infinite() -> None:
    assert Timespan().convert("2min 30s", None, None) == 150.0
    assert Timespan().convert("infinity", None, None) == float("inf")
    with pytest.raises(click.BadParameter, match="'0': want a time span above 0"):
        Timespan().convert("0", None, None)
    with pytest.raises(click.BadParameter):
        Timespan().convert("soon", None, None)


def test_a_span_is_finite_and_may_be_0() -> None:
    assert Span().convert("0", None, None) == 0.0
    assert Span().convert("30s", None, None) == 30.0
    with pytest.raises(click.BadParameter, match="'infinity': want a finite time span"):
        Span().convert("infinity", None, None)
    with pytest.raises(click.BadParameter):
        Span().convert("soon", None, None)
