"""The leadership loop (engine/leader.py) and the locks it runs on (engine/leadership.py).

Three levels. The table tests drive the pure ``decide`` with a FakeClock: which task,
why, and the deadline it keeps (last confirmed renewal's *send* time + confirmed TTL -
margin). The loop tests run ``Leadership`` on FakeLocks (fleetd.testing.leader) in
simulated time (fleetd.testing.vtime: the event loop jumps to its next timer, so a
minute runs in milliseconds and "when" is exact, not a race): renewals every TTL/3, a
leader whose renewals fail, are slow or are refused steps down and has finished stopping
before the store could let anyone else in, terms come back after a resignation with a
larger epoch. The simulation lets hypothesis schedule cuts, slow and failing stores,
crashes and restarts among three fleetd whose clocks run at different rates, and a
referee asserts at every election that nobody else leads and at every stepping down that
the lease was still ours; a control run with no skew margin shows the referee catches
the overlap it is there to catch. FileLock runs on real files with a real second
process holding the flock.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetd.engine import leader as L
from fleetd.engine.leader import (
    Failed,
    Leadership,
    Lost,
    Plan,
    Renewed,
    State,
    Timing,
    Won,
    decide,
)
from fleetd.engine.leadership import (
    EpochUnreadable,
    FileLease,
    FileLock,
    LeaseHeld,
    LockLost,
    epoch_path,
)
from fleetd.testing import vtime
from fleetd.testing.clock import FakeClock
from fleetd.testing.leader import FakeLock, FakeStore, SkewedClock

TTL = 3.0  # every = 1.0
TIMING = Timing(skew_s=0.25, stop_s=0.5, retry_s=0.25)  # margin 0.75


# --- decide: tables ---------------------------------------------------------------------

def leader(now: float, epoch: int = 7, **kw: object) -> State:
    fields: Dict[str, object] = dict(epoch=epoch, announced=True, deadline=now + 2.0,
                                     renew_at=now + 0.5, campaigned=True)
    fields.update(kw)
    return State(**fields)  # type: ignore[arg-type]


def step(state: State, now: float, result: L.Result, timing: Timing = TIMING,
         ttl: float = TTL) -> Plan:
    return decide(state, now, result, ttl, timing)


def test_a_fresh_loop_campaigns_for_as_long_as_a_win_could_be_led() -> None:
    clock = FakeClock()
    plan = step(State(), clock.now, None)
    assert (plan.task.action, plan.task.reason) == (L.CAMPAIGN, L.FIRST)
    assert plan.task.until == clock.now + TTL - 0.75


def test_a_win_leads_with_a_deadline_from_the_campaigns_send_time() -> None:
    clock = FakeClock()
    sent = clock.now
    clock.advance(0.4)  # the answer took 0.4 s: the deadline does not move for it
    plan = step(State(), clock.now, Won(epoch=7, ttl=TTL, sent=sent))
    assert (plan.task.action, plan.task.reason, plan.task.epoch) == (L.LEAD, L.ELECTED, 7)
    assert plan.state.deadline == sent + TTL - 0.75
    assert plan.state.renew_at == sent + 1.0
    assert plan.state.announced
    # announced: wait for the renewal, which is due every TTL/3
    wait = step(plan.state, clock.now, None)
    assert (wait.task.action, wait.task.reason, wait.task.until) == (L.WAIT, L.LEADING,
                                                                    sent + 1.0)


def test_a_win_answered_after_its_deadline_is_resigned_unannounced() -> None:
    clock = FakeClock()
    sent = clock.now
    clock.advance(TTL - 0.75)
    plan = step(State(), clock.now, Won(epoch=3, ttl=TTL, sent=sent))
    assert (plan.task.action, plan.task.reason, plan.task.epoch) == (L.RESIGN,
                                                                    L.ELECTED_LATE, 3)
    assert plan.state.epoch is None
    assert plan.state.campaign_at == clock.now + 1.0


@pytest.mark.parametrize("answer_after, confirmed, deadline, wake", [
    # a renewal sent at t: deadline t + confirmed TTL - margin, however late the answer
    (0.1, TTL, 2.25, 1.0),
    (1.5, TTL, 2.25, 1.0),
    # the store confirmed less than the full TTL: wake at the nearer deadline
    (0.1, 1.0, 0.25, 0.25 - L.EARLY),
])
def test_a_renewal_moves_the_deadline_from_its_send_time(answer_after: float,
                                                         confirmed: float, deadline: float,
                                                         wake: float) -> None:
    clock = FakeClock()
    sent = clock.now
    state = leader(sent, renew_at=sent, deadline=sent + 0.9, failures=2, error="x")
    clock.advance(answer_after)
    plan = step(state, clock.now, Renewed(ttl=confirmed, sent=sent))
    assert plan.state.deadline == pytest.approx(sent + deadline, abs=1e-9)
    assert plan.state.failures == 0
    assert plan.task.action == (L.WAIT if clock.now < sent + wake else L.RENEW)
    if plan.task.action == L.WAIT:
        assert plan.task.until == pytest.approx(sent + wake, abs=1e-9)


def test_a_due_renewal_is_bounded_by_the_deadline() -> None:
    clock = FakeClock()
    state = leader(clock.now, renew_at=clock.now)
    plan = step(state, clock.now, None)
    assert (plan.task.action, plan.task.reason) == (L.RENEW, L.RENEW_DUE)
    assert plan.task.until == state.deadline - L.EARLY  # answered by then, or step down


def test_a_failed_renewal_is_retried_before_the_deadline() -> None:
    clock = FakeClock()
    state = leader(clock.now, renew_at=clock.now)
    plan = step(state, clock.now, Failed("refused", sent=clock.now))
    assert (plan.task.action, plan.task.reason) == (L.WAIT, L.RENEW_RETRY)
    assert plan.task.until == clock.now + 0.25
    clock.advance(0.25)
    again = step(plan.state, clock.now, None)
    assert (again.task.action, again.task.reason, again.task.detail) == (
        L.RENEW, L.RENEW_RETRY, "refused")


def test_a_retry_never_waits_past_the_deadline() -> None:
    clock = FakeClock()
    state = leader(clock.now, deadline=clock.now + 0.1)
    plan = step(state, clock.now, Failed("timeout", sent=clock.now))
    assert (plan.task.action, plan.task.until) == (L.WAIT, clock.now + 0.1 - L.EARLY)


@pytest.mark.parametrize("result", [None, Failed("no answer by the deadline", sent=0.0)])
def test_at_the_deadline_the_leader_steps_down(result: L.Result) -> None:
    clock = FakeClock()
    state = leader(clock.now, deadline=clock.now, failures=3, error="store down")
    plan = step(state, clock.now, result)
    assert (plan.task.action, plan.task.reason, plan.task.epoch) == (L.STEP_DOWN,
                                                                    L.EXPIRING, 7)
    assert plan.state == State(campaign_at=clock.now + 1.0, campaigned=True,
                               failures=plan.state.failures, error=plan.state.error)


def test_a_lock_the_store_says_is_gone_is_left_at_once() -> None:
    clock = FakeClock()
    state = leader(clock.now, deadline=clock.now + 2.0)  # long before the deadline
    plan = step(state, clock.now, Failed("taken", sent=clock.now, lost=True))
    assert (plan.task.action, plan.task.reason) == (L.STEP_DOWN, L.LOCK_LOST)


def test_a_follower_waits_a_third_of_the_ttl_and_campaigns_again() -> None:
    clock = FakeClock()
    plan = step(State(), clock.now, Lost(holder="fleetd-b", sent=clock.now))
    assert (plan.task.action, plan.task.reason, plan.task.detail) == (
        L.WAIT, L.FOLLOWING, "fleetd-b")
    assert plan.task.until == clock.now + 1.0
    clock.advance(1.0)
    again = step(plan.state, clock.now, None)
    assert (again.task.action, again.task.reason) == (L.CAMPAIGN, L.CAMPAIGN_DUE)


def test_a_failed_campaign_is_retried_sooner() -> None:
    clock = FakeClock()
    plan = step(State(), clock.now, Failed("connection refused", sent=clock.now))
    assert (plan.task.action, plan.task.reason, plan.task.until) == (
        L.WAIT, L.UNASKED, clock.now + 0.25)


def test_an_impatient_follower_gives_up_naming_the_holder() -> None:
    plan = step(State(), 5.0, Lost(holder="fleetd pid 42", sent=5.0),
                timing=Timing(patient=False))
    assert (plan.task.action, plan.task.reason, plan.task.detail) == (
        L.GIVE_UP, L.HELD, "fleetd pid 42")


def test_a_lock_for_life_is_led_without_renewals() -> None:
    plan = step(State(), 0.0, Won(epoch=1, ttl=math.inf, sent=0.0), ttl=math.inf)
    assert plan.task.action == L.LEAD
    wait = step(plan.state, 1e9, None, ttl=math.inf)
    assert (wait.task.action, wait.task.until) == (L.WAIT, math.inf)


@pytest.mark.parametrize("timing", [Timing(skew_s=1.0, stop_s=1.0), Timing(retry_s=0),
                                    Timing(skew_s=-1)])
def test_a_margin_that_leaves_no_time_to_renew_is_refused(timing: Timing) -> None:
    with pytest.raises(ValueError):
        timing.check(TTL)


# --- the loop on fake locks, in simulated time -------------------------------------------

class Referee:
    """Watches every fleetd of a simulation: at each election nobody else leads and the
    store agrees; each stepping down is finished while the store still had the lease."""

    def __init__(self, store: FakeStore) -> None:
        self.store = store
        self.leading: Dict[str, int] = {}
        self.elections: List[Tuple[float, str, int]] = []
        self.depositions: List[Tuple[float, str, str]] = []
        self.violations: List[str] = []

    def elected(self, name: str, epoch: int) -> None:
        now = self.store.clock()
        if self.leading:
            self.violations.append(f"{now:.3f}: {name} elected (epoch {epoch}) while "
                                   f"{self.leading} lead")
        if self.elections and epoch <= self.elections[-1][2]:
            self.violations.append(f"{now:.3f}: epoch {epoch} after {self.elections[-1]}")
        term = self.store.current()
        if term is None or (term.holder, term.epoch) != (name, epoch):
            self.violations.append(f"{now:.3f}: {name} leads epoch {epoch}; store: {term}")
        self.elections.append((now, name, epoch))
        self.leading[name] = epoch

    def stopped(self, name: str, reason: str, checked: bool = True) -> None:
        """``name`` no longer drives hosts (its sessions are stopped, or it died)."""
        now = self.store.clock()
        epoch = self.leading.pop(name, None)
        if epoch is None:
            return
        self.depositions.append((now, name, reason))
        self.store.current()
        term = self.store.terms[epoch]
        if checked and term.ended is not None and reason != L.LOCK_LOST:
            self.violations.append(f"{now:.3f}: {name} stopped epoch {epoch} ({reason}) "
                                   f"after its lease ended at {term.ended:.3f}")


class Node:
    """One fleetd: a Leadership on its FakeLock; on_deposed takes ``stop_s`` seconds to
    stop its sessions (the worst case the margin allows)."""

    def __init__(self, name: str, store: FakeStore, referee: Referee,
                 timing: Timing = TIMING, rate: float = 1.0, offset: float = 0.0) -> None:
        self.name = name
        self.store = store
        self.referee = referee
        self.timing = timing
        self.clock = SkewedClock(store.clock, offset, rate)
        self.lock = FakeLock(store, name, TTL)
        self.task: Optional[asyncio.Task[None]] = None
        self.leadership = self._leadership()
        self.reasons: List[str] = []

    def _leadership(self) -> Leadership:
        return Leadership(self.lock, self._elected, self._deposed, self.timing,
                          clock=self.clock.now, sleep=self.clock.sleep)

    @property
    def running(self) -> bool:
        return self.task is not None and not self.task.done()

    def start(self) -> None:
        self.task = asyncio.ensure_future(self.leadership.run())

    async def _elected(self, epoch: int) -> None:
        self.referee.elected(self.name, epoch)

    async def _deposed(self, reason: str) -> None:
        self.reasons.append(reason)
        try:
            await asyncio.sleep(self.timing.stop_s)
        finally:
            self.referee.stopped(self.name, reason)

    async def _cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def crash(self) -> None:
        """kill -9: its sessions die with it; its lock is left to expire."""
        await self._cancel()
        self.referee.stopped(self.name, "crash", checked=False)
        self.lock = FakeLock(self.store, self.name, TTL)  # a new process, a new session
        self.leadership = self._leadership()

    async def stop(self) -> None:
        """A graceful stop: cancel the loop, stop the sessions, resign."""
        await self._cancel()
        if self.name in self.referee.leading:
            await asyncio.sleep(self.timing.stop_s)
            self.referee.stopped(self.name, "stop")
        await self.leadership.resign()


async def until_true(check: object, seconds: float = 60.0) -> None:
    """Wait in simulated time (a hang is bounded by simulated seconds, not the wall)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while not check():  # type: ignore[operator]
        assert loop.time() < deadline, "not within the simulated bound"
        await asyncio.sleep(0.05)


def simulate(scenario: object) -> Referee:
    async def main() -> Referee:
        store = FakeStore(asyncio.get_running_loop().time)
        referee = Referee(store)
        await scenario(store, referee)  # type: ignore[operator]
        return referee
    return vtime.run(main())


def test_the_leader_renews_every_third_of_the_ttl() -> None:
    async def scenario(store: FakeStore, referee: Referee) -> None:
        a = Node("a", store, referee)
        a.start()
        await asyncio.sleep(10.5)
        await a.crash()

    referee = simulate(scenario)
    assert [(t, n, e) for t, n, e in referee.elections] == [(0.0, "a", 1)]
    renewals = [t for t, _, what in referee.store.calls if what == "renew"]
    assert renewals == pytest.approx([float(i) for i in range(1, 11)])
    assert referee.violations == []


@pytest.mark.parametrize("trouble", ["failing", "slow", "cut off"])
def test_a_leader_whose_renewals_do_not_come_back_steps_down_before_expiry(
        trouble: str) -> None:
    """Renewals fail, or are answered after the deadline (though the store got them),
    or never reach the store: on_deposed is called at the deadline (sent + TTL -
    margin) and has finished stopping before the lease could end."""
    async def scenario(store: FakeStore, referee: Referee) -> None:
        a = Node("a", store, referee)
        a.start()
        await until_true(lambda: referee.leading)
        await asyncio.sleep(3.5)  # a few good renewals; the last one sent at 3.0
        if trouble == "failing":
            a.lock.fail_renewals = math.inf
        elif trouble == "slow":
            a.lock.latency = 1.0  # the store renews at 5.0, answers at 6.0
        else:
            a.lock.cut()
        await until_true(lambda: not referee.leading)
        await a.crash()

    referee = simulate(scenario)
    assert referee.violations == []
    (when, name, reason), = referee.depositions
    assert (name, reason) == ("a", L.EXPIRING)
    # deposed 1 ms before 3.0 + 3 - 0.75; its sessions stopped 0.5 s later, before 6.0
    assert when == pytest.approx(3.0 + TTL - 0.75 - L.EARLY + 0.5)
    if trouble == "failing":  # retried every 0.25 s until the deadline (5.25)
        refused = [t for t, _, what in referee.store.calls if what == "renew refused"]
        assert refused == pytest.approx([4.0, 4.25, 4.5, 4.75, 5.0])
    if trouble == "slow":
        assert referee.store.terms[1].expires == pytest.approx(5.0 + TTL)


def test_the_deadline_counts_from_when_the_renewal_was_sent() -> None:
    """Renewals answered 0.8 s after they were sent, then a cut: the deadline is the
    last one's send time (4.0) + TTL - margin, not its answer's (4.8)."""
    async def scenario(store: FakeStore, referee: Referee) -> None:
        a = Node("a", store, referee)
        a.start()
        await asyncio.sleep(3.5)
        a.lock.latency = 0.4  # the store renews at 4.4 (until 7.4), answers at 4.8
        await asyncio.sleep(4.9 - 3.5)
        a.lock.cut()
        await until_true(lambda: not referee.leading)
        await a.crash()

    referee = simulate(scenario)
    assert referee.violations == []
    (when, _, reason), = referee.depositions
    assert reason == L.EXPIRING
    assert when == pytest.approx(4.0 + TTL - 0.75 - L.EARLY + 0.5)


def test_a_leader_whose_lock_is_taken_steps_down_at_its_next_renewal() -> None:
    async def scenario(store: FakeStore, referee: Referee) -> None:
        a = Node("a", store, referee)
        a.start()
        await asyncio.sleep(1.5)
        store.take("intruder", TTL)
        await until_true(lambda: not referee.leading)
        await a.crash()

    referee = simulate(scenario)
    assert [(round(t, 3), n, r) for t, n, r in referee.depositions] == [
        (2.5, "a", L.LOCK_LOST)]  # renewal at 2.0, then 0.5 s to stop


def test_terms_come_back_after_a_resignation_with_a_larger_epoch() -> None:
    async def scenario(store: FakeStore, referee: Referee) -> None:
        a = Node("a", store, referee)
        b = Node("b", store, referee)
        a.start()
        await until_true(lambda: referee.leading)
        b.start()
        await until_true(lambda: b.leadership.status().holder == "a")
        assert not b.leadership.status().leading
        assert a.leadership.status().epoch == 1
        await a.stop()
        await until_true(lambda: referee.leading == {"b": 2})
        a.start()
        await until_true(lambda: a.leadership.status().holder == "b")
        await b.stop()
        await until_true(lambda: referee.leading == {"a": 3})
        await a.crash()

    referee = simulate(scenario)
    assert referee.violations == []
    assert [(n, e) for _, n, e in referee.elections] == [("a", 1), ("b", 2), ("a", 3)]
    # a resignation hands over within a follower's campaign interval, not a whole TTL
    t2 = referee.elections[1][0]
    stopped = referee.depositions[0][0]
    assert t2 - stopped <= TTL / 3 + 1e-9


def test_a_cut_off_leader_steps_down_and_another_leads_once_the_lease_is_over() -> None:
    async def scenario(store: FakeStore, referee: Referee) -> None:
        a, b = Node("a", store, referee), Node("b", store, referee, rate=0.95)
        a.start()
        await until_true(lambda: referee.leading)
        b.start()
        await asyncio.sleep(5.2)
        a.lock.cut()
        await until_true(lambda: "b" in referee.leading)
        a.lock.heal()
        await until_true(lambda: a.leadership.status().holder == "b")
        await a.crash()
        await b.crash()

    referee = simulate(scenario)
    assert referee.violations == []
    assert [(n, e) for _, n, e in referee.elections] == [("a", 1), ("b", 2)]
    assert referee.elections[1][0] >= referee.store.terms[1].expires


def test_a_fleetd_too_far_from_the_store_never_leads() -> None:
    """A round trip longer than TTL - margin: every win would come too late to lead
    safely, so it never leads; once the store is near again, it does."""
    async def scenario(store: FakeStore, referee: Referee) -> None:
        a = Node("a", store, referee)
        a.lock.latency = 1.2
        a.start()
        await asyncio.sleep(20)
        assert not referee.elections
        a.lock.latency = 0.01
        await until_true(lambda: referee.leading)
        await a.crash()

    referee = simulate(scenario)
    assert referee.violations == []


def test_the_referee_catches_two_leaders_when_the_margin_ignores_skew() -> None:
    """The control: a clock 40% slow and no skew in the margin. The cut-off leader's
    deadline comes too late, so the other is elected while it still leads. The
    simulation below would catch such a bug."""
    no_skew = Timing(skew_s=0.0, stop_s=0.5, retry_s=0.25)

    async def scenario(store: FakeStore, referee: Referee) -> None:
        a = Node("a", store, referee, timing=no_skew, rate=0.6)
        b = Node("b", store, referee, timing=no_skew)
        a.start()
        await until_true(lambda: referee.leading)
        b.start()
        await asyncio.sleep(2.1)
        a.lock.cut()
        await until_true(lambda: "b" in referee.leading)
        await asyncio.sleep(TTL)
        await a.crash()
        await b.crash()

    referee = simulate(scenario)
    assert any("elected" in v for v in referee.violations)
    assert any("after its lease ended" in v for v in referee.violations)


SKEW = 0.3  # Timing.skew_s of the simulation: clocks may run 10% slow over a TTL of 3 s

events = st.tuples(
    st.floats(0.0, 40.0),                                       # when (true time)
    st.integers(0, 2),                                          # which fleetd
    st.sampled_from(["cut", "slow", "fail", "crash", "stop"]),
    st.floats(0.0, 2 * TTL),                                    # for how long / how much
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rates=st.lists(st.floats(1 - SKEW / TTL, 1.1), min_size=3, max_size=3),
       offsets=st.lists(st.floats(-1e4, 1e4), min_size=3, max_size=3),
       schedule=st.lists(events, max_size=14))
def test_never_two_leaders_whatever_the_store_and_the_clocks_do(
        rates: List[float], offsets: List[float],
        schedule: List[Tuple[float, int, str, float]]) -> None:
    """Three fleetd, clocks at different rates (down to the skew the margin allows)
    and offsets, under a schedule of cuts, slow and failing stores, crashes and graceful
    stops, each followed by a restart: at every election nobody else leads and the store
    agrees, epochs grow, and every leader finished stopping while its lease held."""
    timing = Timing(skew_s=SKEW, stop_s=0.5, retry_s=0.25)

    async def scenario(store: FakeStore, referee: Referee) -> None:
        nodes = [Node(f"f{i}", store, referee, timing, rates[i], offsets[i])
                 for i in range(3)]
        for node in nodes:
            node.start()
        loop = asyncio.get_running_loop()
        later: List[asyncio.Task[None]] = []

        async def after(seconds: float, then: str, node: Node) -> None:
            await asyncio.sleep(seconds)
            if then == "heal":
                node.lock.heal()
            elif then == "fast":
                node.lock.latency = 0.0
            elif then == "restart" and not node.running:
                node.start()

        for when, i, what, amount in sorted(schedule):
            await asyncio.sleep(max(0.0, when - loop.time()))
            node = nodes[i]
            if what == "cut":
                node.lock.cut()
                later.append(asyncio.ensure_future(after(amount, "heal", node)))
            elif what == "slow":
                node.lock.latency = amount / 4
                later.append(asyncio.ensure_future(after(2 * TTL, "fast", node)))
            elif what == "fail":
                node.lock.fail_renewals = int(amount * 3)
            elif node.running:  # crash or stop, then start again
                await (node.crash() if what == "crash" else node.stop())
                later.append(asyncio.ensure_future(after(amount, "restart", node)))
        await asyncio.sleep(max(0.0, 45.0 - loop.time()))
        for task in later:
            task.cancel()
        for node in nodes:
            await node.crash()

    referee = simulate(scenario)
    assert referee.violations == []
    assert referee.elections  # someone led


# --- FileLock: the single fleetd ----------------------------------------------------------

def test_each_start_on_a_file_lock_is_a_new_term(tmp_path: Path) -> None:
    path = str(tmp_path / "fleetd.lock")

    async def term() -> Optional[int]:
        lock = FileLock(path)
        won = await lock.campaign()
        assert await lock.renew() == math.inf
        await lock.resign()
        with pytest.raises(LockLost):
            await lock.renew()
        return won.epoch

    assert [asyncio.run(term()) for _ in range(3)] == [1, 2, 3]
    assert Path(epoch_path(path)).read_text() == "3\n"

    async def again() -> List[Optional[int]]:  # the holder campaigning again: a new term
        lock = FileLock(path)
        return [(await lock.campaign()).epoch for _ in range(2)]

    assert asyncio.run(again()) == [4, 5]
    assert epoch_path(path) == str(tmp_path / "fleetd.epoch")


def test_an_unreadable_term_count_refuses_instead_of_starting_over(tmp_path: Path) -> None:
    path = str(tmp_path / "fleetd.lock")
    Path(epoch_path(path)).write_text("garbage\n")
    lock = FileLock(path)
    with pytest.raises(EpochUnreadable):
        asyncio.run(lock.campaign())
    FileLease(path).acquire()  # the lease was let go: nothing held by the failed start


HOLDER = """
import asyncio, sys
from fleetd.engine.leadership import FileLock
lock = FileLock(sys.argv[1])
print(asyncio.run(lock.campaign()).epoch, flush=True)
sys.stdin.read()
"""


def test_a_second_fleetd_refuses_to_start_while_the_first_holds_the_file_lock(
        tmp_path: Path) -> None:
    path = str(tmp_path / "fleetd.lock")
    first = subprocess.Popen([sys.executable, "-c", HOLDER, path], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout is not None and first.stdout.readline() == "1\n"
        lock = FileLock(path)
        assert asyncio.run(lock.campaign()).holder == f"fleetd pid {first.pid}"
        loop = Leadership(lock, _never, _never, Timing(patient=False))
        with pytest.raises(LeaseHeld, match=f"fleetd pid {first.pid}"):
            asyncio.run(loop.run())
        with pytest.raises(LeaseHeld, match=f"{path} is held by fleetd pid {first.pid}"):
            FileLease(path).acquire()  # main.open_daemon's lease, as before
    finally:
        first.communicate("")
    assert first.returncode == 0
    # the first is gone: the next start leads, a new term
    elected: List[int] = []

    async def second() -> None:
        async def on_elected(epoch: int) -> None:
            elected.append(epoch)
        lead = Leadership(FileLock(path), on_elected, _never, Timing(patient=False))
        task = asyncio.ensure_future(lead.run())
        await until_true(lambda: elected)
        await asyncio.sleep(7 * 24 * 3600)  # a week: no renewal, no stepping down
        assert lead.status().leading and lead.status().epoch == 2
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await lead.resign()

    vtime.run(second())
    assert elected == [2]
    FileLease(path).acquire()  # resigned: free


async def _never(_: object) -> None:
    raise AssertionError("not expected")


def test_a_simulated_week_runs_in_no_time_and_deadlocks_are_reported() -> None:
    async def wait_forever() -> None:
        await asyncio.Event().wait()

    with pytest.raises(vtime.Deadlock):
        vtime.run(wait_forever())

    async def week() -> float:
        await asyncio.sleep(7 * 24 * 3600)
        return asyncio.get_running_loop().time()

    assert vtime.run(week()) == 7 * 24 * 3600


def test_os_pid_is_what_the_lease_file_names(tmp_path: Path) -> None:
    lease = FileLease(str(tmp_path / "fleetd.lock"))
    lease.acquire()
    assert (tmp_path / "fleetd.lock").read_text() == f"{os.getpid()}\n"
    assert lease.held
    lease.release()
    assert not lease.held
