"""fleetd.agent.reconciler.next_task: one unit's desired spec + current state -> next task."""

from __future__ import annotations

from typing import Any, Optional

import pytest

from fleetd import protocol
from fleetd.agent.reconciler import (
    FORGET,
    LOAD,
    RELOAD,
    START,
    STOP,
    Current,
    Task,
    next_task,
)

HASH = "a" * 64
OTHER = "b" * 64

STATES = (
    protocol.STARTING,
    protocol.RUNNING,
    protocol.STOPPING,
    protocol.STOPPED,
    protocol.EXITED,
    protocol.FAILED,
)

RUN = protocol.WANT_RUNNING
HALT = protocol.WANT_STOPPED


def spec(want: str) -> dict[str, Any]:
    return protocol.unit_spec("web.service", HASH, want, "exec", {"commands": []})


# (desired want or None for no spec, the agent's hash vs the spec's) -> the expected task
# for each state, in the order of STATES:
#                    starting  running  stopping  stopped  exited  failed
GRID: dict[tuple[Optional[str], str], tuple[Optional[str], ...]] = {
    (None, "same"):  (STOP,     STOP,    STOP,     FORGET,  FORGET, FORGET),
    (None, "other"): (STOP,     STOP,    STOP,     FORGET,  FORGET, FORGET),
    (RUN, "same"):   (None,     None,    None,     START,   None,   None),
    (RUN, "other"):  (STOP,     STOP,    STOP,     LOAD,    LOAD,   LOAD),
    (HALT, "same"):  (STOP,     STOP,    None,     None,    None,   None),
    (HALT, "other"): (STOP,     STOP,    STOP,     LOAD,    LOAD,   LOAD),
}

# the agent has nothing for the unit
NO_CURRENT: dict[Optional[str], Optional[str]] = {None: None, RUN: LOAD, HALT: LOAD}

EXPECTED: dict[tuple[Optional[str], Optional[str], Optional[str]], Optional[str]] = {
    (want, None, None): kind for want, kind in NO_CURRENT.items()
}
for (_want, _current), _kinds in GRID.items():
    assert len(_kinds) == len(STATES)
    for _state, _kind in zip(STATES, _kinds):
        EXPECTED[(_want, _current, _state)] = _kind


def test_table_is_complete() -> None:
    # 3 wants with no current unit, 3 wants x 2 hashes x 6 states with one
    assert len(EXPECTED) == 3 + 3 * 2 * 6
    assert set(STATES) == set(protocol.UNIT_STATES)


@pytest.mark.parametrize(
    ("want", "current", "state", "kind"),
    [(*key, kind) for key, kind in EXPECTED.items()],
    ids=[f"{k[0]}-{k[1]}-{k[2]}" for k in EXPECTED],
)
def test_next_task(want: Optional[str], current: Optional[str], state: Optional[str],
                   kind: Optional[str]) -> None:
    desired = None if want is None else spec(want)
    cur = None if current is None else Current(HASH if current == "same" else OTHER, state or "")
    task = next_task(desired, cur)
    if kind is None:
        assert task is None
    else:
        assert isinstance(task, Task)
        assert task.kind == kind
        assert task.reason


@pytest.mark.parametrize("state", [protocol.EXITED, protocol.FAILED])
@pytest.mark.parametrize("want", [RUN, HALT])
def test_resending_the_same_spec_does_not_restart_a_finished_unit(want: str, state: str) -> None:
    """The key property: a program that exited or failed stays so, however often fleetd
    re-sends the same desired set (e.g. after every reconnect)."""
    desired = spec(want)
    for _ in range(3):
        assert next_task(desired, Current(HASH, state)) is None


@pytest.mark.parametrize(
    ("desired", "cur", "expected"),
    [
        (None, Current(HASH, protocol.RUNNING), Task(STOP, "no longer desired on this host")),
        (None, Current(HASH, protocol.EXITED), Task(FORGET, "no longer desired on this host")),
        (spec(RUN), None, Task(LOAD, "new unit")),
        (spec(RUN), Current(OTHER, protocol.RUNNING),
         Task(STOP, "content changed: stopping the old version")),
        (spec(RUN), Current(OTHER, protocol.FAILED), Task(LOAD, "content changed")),
        (spec(RUN), Current(HASH, protocol.STOPPED), Task(START, "desired running")),
        (spec(HALT), Current(HASH, protocol.RUNNING), Task(STOP, "desired stopped")),
    ],
)
def test_reasons(desired: Optional[dict[str, Any]], cur: Optional[Current],
                 expected: Task) -> None:
    assert next_task(desired, cur) == expected


def drive(desired: dict[str, Any], cur: Optional[Current]) -> tuple[list[str], Current]:
    """Simulate the supervisor: execute each task until next_task says None; the kinds
    of the tasks, and where the unit ends."""
    seen: list[str] = []
    for _ in range(10):
        task = next_task(desired, cur)
        if task is None:
            assert cur is not None
            return seen, cur
        seen.append(task.kind)
        if task.kind == LOAD:
            cur = Current(desired["hash"], protocol.STOPPED)
        else:
            assert cur is not None and task.kind in (START, STOP)
            cur = Current(cur.hash, protocol.RUNNING if task.kind == START else protocol.STOPPED)
    raise AssertionError(f"no end in sight after {seen}")


def test_driving_a_new_unit_to_running() -> None:
    assert drive(spec(RUN), None) == ([LOAD, START], Current(HASH, protocol.RUNNING))


def test_driving_a_content_change() -> None:
    assert drive(spec(RUN), Current(OTHER, protocol.RUNNING)) == \
        ([STOP, LOAD, START], Current(HASH, protocol.RUNNING))


# OnPeersChange=reload: the spec (reload: true) and the running copy have the same
# base, their hashes differ (only the placements its template read changed)
BASE = "c" * 64


def reload_spec(base: str = BASE, reload: bool = True, generation: int = 0
                ) -> dict[str, Any]:
    desired = protocol.unit_spec("lb.service", HASH, RUN, "exec", {"commands": []},
                                 generation)
    desired["base"] = base
    if reload:
        desired["reload"] = True
    return desired


# (the spec, the copy's base, its generation) -> the task in each state of STATES
#                    starting  running  stopping  stopped  exited  failed
RELOAD_GRID: list[tuple[str, dict[str, Any], str, tuple[Optional[str], ...]]] = [
    ("same base", reload_spec(), BASE,
                     (STOP,     RELOAD,  STOP,     LOAD,    LOAD,   LOAD)),
    ("other base", reload_spec(), "d" * 64,
                     (STOP,     STOP,    STOP,     LOAD,    LOAD,   LOAD)),
    ("no base", reload_spec(base=""), "",
                     (STOP,     STOP,    STOP,     LOAD,    LOAD,   LOAD)),
    ("restart", reload_spec(reload=False), BASE,
                     (STOP,     STOP,    STOP,     LOAD,    LOAD,   LOAD)),
    ("restart asked too", reload_spec(generation=1), BASE,
                     (STOP,     STOP,    STOP,     LOAD,    LOAD,   LOAD)),
]


@pytest.mark.parametrize(
    ("desired", "base", "state", "kind"),
    [(d, b, st, k) for _, d, b, kinds in RELOAD_GRID for st, k in zip(STATES, kinds)],
    ids=[f"{w}-{st}" for w, _, _, kinds in RELOAD_GRID for st in STATES],
)
def test_reload_grid(desired: dict[str, Any], base: str, state: str,
                     kind: Optional[str]) -> None:
    task = next_task(desired, Current(OTHER, state, base=base))
    assert task is not None and task.kind == kind


def test_reload_reason() -> None:
    assert next_task(reload_spec(), Current(OTHER, protocol.RUNNING, base=BASE)) == \
        Task(RELOAD, "only the placements it reads changed: reloading")


def test_a_reloaded_copy_is_left_alone() -> None:
    """Once it took the new spec (its hash and base), nothing more is done: no loop."""
    assert next_task(reload_spec(), Current(HASH, protocol.RUNNING, base=BASE)) is None
