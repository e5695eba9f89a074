"""What the benches share beyond tests/integration's labkit and agentkit: the percentile
they report and where their results go."""

from __future__ import annotations

import json
import os
from typing import Any, List

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def pct(values: List[float], p: float) -> float:
    """The ``p``-th percentile, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))]


def save(name: str, data: Any) -> str:
    """Write ``data`` to bench/results/``name``.json; its path."""
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, f"{name}.json")
    with open(path, "w") as f:
        json.dump(data, f, indent=1)
    return path
