"""fleetd.engine.scheduler: candidates, ranking, capacity, refusals and Global units.

The reconciler-level scenarios (fleet's functional tests) live in test_engine_plan.py;
these pin the building blocks, so a broken rule fails here with a precise name.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import pytest

from fleetd.engine.scheduler import (
    Cluster,
    GiB,
    Globs,
    Host,
    MiB,
    apart,
    global_placements,
    global_targets,
    metadata_matches,
    size,
)
from fleetd.engine.views import MachineView, UnitView
from fleetd.registry.base import INACTIVE, LAUNCHED, LOADED
from fleetd.units.xfleet import Requirements


def machine(name: str, up: bool = True, machine_id: Optional[str] = None, cpus: float = 4.0,
            memory: int = 8 * GiB, caps: Sequence[str] = (), **metadata: str) -> MachineView:
    return MachineView(name=name, machine_id=machine_id or f"{name}-0123456789", up=up,
                       metadata=metadata, cpus=cpus, memory_bytes=memory,
                       capabilities=frozenset(caps))


def unit(name: str, desired: str = LAUNCHED, machine: Optional[str] = None,
         **req: object) -> UnitView:
    return UnitView(name=name, desired=desired, machine=machine, reason="",
                    req=Requirements(**req))  # type: ignore[arg-type]


Metadata = Tuple[Tuple[str, Tuple[str, ...]], ...]


def meta(**kv: str) -> Metadata:
    """MachineMetadata= as Requirements holds it; ``role="db|cache"`` is two values."""
    return tuple((k, tuple(v.split("|"))) for k, v in sorted(kv.items()))


def place(cluster: Cluster, name: str, req: Requirements) -> Optional[str]:
    """Choose among the unit's static group and add it there, as the reconciler does."""
    group = cluster.group(req)
    host = cluster.choose(group, name, req)
    if host is None:
        return None
    cluster.add(host, name, req)
    return host.name


# --- static filters -------------------------------------------------------------------------


@pytest.mark.parametrize(("have", "want", "ok"), [
    ({}, (), True),
    ({"role": "db"}, meta(role="db"), True),
    ({"role": "db"}, meta(role="web"), False),
    ({"role": "db"}, meta(role="web|db"), True),  # values OR'd within a key
    ({"role": "db", "zone": "a"}, meta(role="db", zone="a"), True),  # keys AND'ed
    ({"role": "db", "zone": "b"}, meta(role="db", zone="a"), False),
    ({"role": "db"}, meta(role="db", zone="a"), False),  # a missing key never matches
    ({"role": "db", "zone": "b"}, meta(role="db|web", zone="a|b"), True),
])
def test_metadata_matches_like_fleet(have: Dict[str, str], want: Metadata, ok: bool) -> None:
    assert metadata_matches(have, want) is ok


IDS = [machine("h1", machine_id="abc123"), machine("h2", machine_id="abd456"),
       machine("h3", machine_id="abc1239"), machine("h4", machine_id="ffff", up=False)]


@pytest.mark.parametrize(("value", "host", "why"), [
    ("abd456", "h2", ""),  # the full id
    ("abd", "h2", ""),  # a unique prefix
    ("abc123", "h1", ""),  # a full id wins over being a prefix of another
    ("abc1239", "h3", ""),
    ("ff", "h4", ""),  # found even when down: the caller says "which is not up"
    ("ab", None, "MachineID=ab is ambiguous: it matches h1, h2, h3"),
    ("abc", None, "MachineID=abc is ambiguous: it matches h1, h3"),
    ("zz", None, "MachineID=zz matches no machine (by id or name)"),
])
def test_machine_id_full_or_unique_prefix(value: str, host: Optional[str], why: str) -> None:
    found, text = Cluster(IDS).resolve_machine_id(value)
    assert (found.name if found else None, text) == (host, why)


NAMED = [machine("web-1", machine_id="abc123"), machine("web-10", machine_id="abd456"),
         machine("db", machine_id="77ef01"), machine("ab", machine_id="99aa00"),
         machine("7", machine_id="cafe00")]


@pytest.mark.parametrize(("value", "host", "why"), [
    ("db", "db", ""),  # the name list-machines shows
    ("d", "db", ""),  # a unique prefix of a name
    ("web-1", "web-1", ""),  # a full name wins over being a prefix of another
    ("web-10", "web-10", ""),
    ("77ef01", "db", ""),  # ids as before
    ("ab", "ab", ""),  # a full name wins over being a prefix of ids
    ("abc", "web-1", ""),
    ("web", None, "MachineID=web is ambiguous: it matches web-1, web-10"),
    ("7", "7", ""),  # the name 7, though the id 77ef01 starts with 7 too
    ("c", "7", ""),  # the start of 7's id
    ("a", None, "MachineID=a is ambiguous: it matches ab, web-1, web-10"),  # ids and a name
    ("9", "ab", ""),
    ("x", None, "MachineID=x matches no machine (by id or name)"),
])
def test_machine_id_takes_the_machine_name_or_a_unique_prefix(
        value: str, host: Optional[str], why: str) -> None:
    found, text = Cluster(NAMED).resolve_machine_id(value)
    assert (found.name if found else None, text) == (host, why)


@pytest.mark.parametrize(("value", "ok"), [
    ("web-1", True), ("web", True), ("abc1", True), ("web-2", False), ("abd", False)])
def test_a_machine_passes_machine_id_by_its_name_or_id(value: str, ok: bool) -> None:
    host = Host(machine("web-1", machine_id="abc123"), 0)
    assert (host.static_refusal(Requirements(machine_id=value)) is None) is ok


GROUPS = [machine("a", role="db", zone="x", caps=("java:17",)),
          machine("b", role="db", zone="y"),
          machine("c", role="web", zone="x", caps=("java:17", "systemd")),
          machine("d", role="db", zone="x", up=False, caps=("java:17",))]


@pytest.mark.parametrize(("req", "members", "refusal"), [
    (Requirements(), ["a", "b", "c"], ""),  # only machines that are up
    (Requirements(metadata=meta(role="db")), ["a", "b"], ""),
    (Requirements(metadata=meta(role="db|web", zone="x")), ["a", "c"], ""),
    (Requirements(capabilities=("java:17",)), ["a", "c"], ""),
    (Requirements(capabilities=("java:17", "systemd")), ["c"], ""),
    (Requirements(metadata=meta(role="db"), capabilities=("java:17",)), ["a"], ""),
    (Requirements(metadata=meta(role="cache")), [],
     "no machine matches MachineMetadata=role=cache"),
    (Requirements(metadata=meta(role="db", zone="y"), capabilities=("java:17",)), [],
     "no machine matching MachineMetadata=role=db zone=y has capability java:17"),
    (Requirements(capabilities=("java:21", "docker")), [],
     "no machine that is up has capabilities docker, java:21"),
])
def test_groups_filter_up_metadata_and_capabilities(req: Requirements, members: List[str],
                                                    refusal: str) -> None:
    group = Cluster(GROUPS).group(req)
    assert [h.name for h in group.members] == members
    assert group.refusal == refusal


def test_metadata_only_a_down_machine_matches() -> None:
    group = Cluster([machine("a", role="web"), machine("b", role="db", up=False)]).group(
        Requirements(metadata=meta(role="db")))
    assert group.refusal == ("no machine that is up matches MachineMetadata=role=db "
                             "(b matches but is not up)")


@pytest.mark.parametrize(("machines", "refusal"), [
    ([], "no machines are registered"),
    ([machine("a", up=False), machine("b", up=False)],
     "no machine is up (2 registered, none connected)"),
])
def test_nothing_to_choose_from(machines: List[MachineView], refusal: str) -> None:
    group = Cluster(machines).group(Requirements())
    assert (group.members, group.refusal) == ([], refusal)


@pytest.mark.parametrize(("req", "refusal"), [
    (Requirements(), None),
    (Requirements(machine_id="h1-01"), None),
    (Requirements(machine_id="h2"), "is not MachineID=h2"),
    (Requirements(metadata=meta(role="db")), "does not match MachineMetadata=role=db"),
    (Requirements(capabilities=("java:17", "systemd", "docker")),
     "lacks capabilities java:17, docker"),
])
def test_static_refusal_names_the_rule(req: Requirements, refusal: Optional[str]) -> None:
    host = Host(machine("h1", caps=("systemd",), role="web"), 0)
    assert host.static_refusal(req) == refusal


def test_static_refusal_of_a_down_machine() -> None:
    assert Host(machine("h1", up=False), 0).static_refusal(Requirements()) == "is not up"


# --- Conflicts= and Replaces= ------------------------------------------------------------------


@pytest.mark.parametrize(("a", "a_req", "b", "b_req", "why"), [
    ("x", Requirements(), "y", Requirements(), None),
    ("x", Requirements(conflicts=("y",)), "y", Requirements(), "it conflicts with y"),
    ("x", Requirements(), "y", Requirements(conflicts=("x",)), "it conflicts with y"),
    ("web@1", Requirements(conflicts=("web@*",)), "web@2", Requirements(),
     "it conflicts with web@2"),
    ("web@1", Requirements(conflicts=("db@*",)), "web@2", Requirements(), None),
    ("x", Requirements(conflicts=("a", "b", "y")), "y", Requirements(), "it conflicts with y"),
    ("x", Requirements(replaces=("y",)), "y", Requirements(), "it replaces y"),
    ("x", Requirements(), "y", Requirements(replaces=("x",)), "y replaces it"),
    ("x", Requirements(conflicts=("f[ou]o",)), "foo", Requirements(), "it conflicts with foo"),
    ("x", Requirements(conflicts=("f?o",)), "fxx", Requirements(), None),
])
def test_apart_either_side_naming_the_other_is_enough(
        a: str, a_req: Requirements, b: str, b_req: Requirements, why: Optional[str]) -> None:
    assert apart(a, a_req, b, b_req) == why


def test_globs_match_by_literal_prefix_and_wildcards() -> None:
    g = Globs()
    for p in ("web@*.service", "*.socket", "db?.service", "web@1.servic[ex]", "a*"):
        g.register(p)
    assert g.matching("web@7.service") == {"web@*.service"}
    assert g.matching("web@1.servicx") == {"web@1.servic[ex]"}
    assert g.matching("app.socket") == {"*.socket", "a*"}
    assert g.matching("db1.service") == {"db?.service"}
    assert g.matching("db12.service") == frozenset()
    g.register("*")  # registering later must not leave stale answers
    assert g.matching("db12.service") == {"*"}


@pytest.mark.parametrize(("residents", "name", "req", "blocked"), [
    ([], "x", Requirements(conflicts=("*",)), False),
    ([("y", Requirements())], "x", Requirements(conflicts=("y",)), True),
    ([("y", Requirements(conflicts=("x",)))], "x", Requirements(), True),  # one-way, reversed
    ([("y", Requirements(conflicts=("x*",)))], "xyz", Requirements(), True),
    ([("web@1", Requirements())], "web@2", Requirements(conflicts=("web@*",)), True),
    ([("web@1", Requirements())], "web@2", Requirements(conflicts=("db@*",)), False),
    ([("y", Requirements(replaces=("x",)))], "x", Requirements(), True),
    ([("y", Requirements())], "x", Requirements(replaces=("y",)), True),
    ([("y", Requirements(conflicts=("z",)))], "x", Requirements(conflicts=("w",)), False),
])
def test_host_blocked(residents: List[Tuple[str, Requirements]], name: str, req: Requirements,
                      blocked: bool) -> None:
    cluster = Cluster([machine("h")])
    host = cluster.by_name["h"]
    for r, r_req in residents:
        cluster.add(host, r, r_req)
    assert cluster.can_take(host, name, req) is not blocked


def test_a_pattern_first_seen_after_residents_still_counts_them() -> None:
    cluster = Cluster([machine("h")])
    host = cluster.by_name["h"]
    cluster.add(host, "web@1", Requirements())
    assert not cluster.can_take(host, "web@2", Requirements(conflicts=("web@*",)))


def test_removing_a_resident_lifts_its_conflicts() -> None:
    cluster = Cluster([machine("h")])
    host = cluster.by_name["h"]
    cluster.add(host, "web@1", Requirements(conflicts=("web@*",), memory_bytes=GiB))
    assert not cluster.can_take(host, "web@2", Requirements())
    cluster.remove(host, "web@1")
    assert cluster.can_take(host, "web@2", Requirements(conflicts=("web@*",)))
    assert (host.count, host.mem_used, host.glob_refs, host.glob_count) == (0, 0, {}, {})


# --- capacity ------------------------------------------------------------------------------


@pytest.mark.parametrize(("used", "req", "fits"), [
    ((0, 0), Requirements(), True),
    ((0, 0), Requirements(memory_bytes=8 * GiB), True),  # exactly full is still a fit
    ((0, 0), Requirements(memory_bytes=8 * GiB + 1), False),
    ((6 * GiB, 0), Requirements(memory_bytes=2 * GiB), True),
    ((6 * GiB, 0), Requirements(memory_bytes=3 * GiB), False),
    ((0, 0), Requirements(memory_percent=50.0), True),
    ((5 * GiB, 0), Requirements(memory_percent=50.0), False),  # 50% of 8 GiB is 4 GiB
    ((0, 0), Requirements(cpus=4.0), True),
    ((0, 3500), Requirements(cpus=0.5), True),
    ((0, 3500), Requirements(cpus=0.6), False),
    ((0, 0), Requirements(memory_bytes=GiB, cpus=5.0), False),
])
def test_fits_counts_memory_bytes_percent_and_cpus(used: Tuple[int, int], req: Requirements,
                                                   fits: bool) -> None:
    host = Host(machine("h", cpus=4.0, memory=8 * GiB), 0)
    host.mem_used, host.cpu_used = used
    assert host.fits(req, round(req.cpus * 1000)) is fits


@pytest.mark.parametrize(("req", "fits"), [
    (Requirements(), True),  # reserves nothing: fine anywhere
    (Requirements(memory_bytes=MiB), False),  # cannot promise memory we do not know of
    (Requirements(memory_percent=10.0), False),
    (Requirements(cpus=0.1), False),
])
def test_unknown_capacity_takes_only_units_that_reserve_nothing(req: Requirements,
                                                                 fits: bool) -> None:
    host = Host(machine("h", cpus=0.0, memory=0), 0)
    assert host.fits(req, round(req.cpus * 1000)) is fits


def test_least_loaded_by_reservation_wins() -> None:
    cluster = Cluster([machine("a"), machine("b"), machine("c")])
    for name, host, mem in (("x", "a", 4 * GiB), ("y", "b", 1 * GiB), ("z", "c", 2 * GiB)):
        cluster.add(cluster.by_name[host], name, Requirements(memory_bytes=mem))
    assert place(cluster, "u", Requirements(memory_bytes=512 * MiB)) == "b"


def test_load_is_relative_to_capacity() -> None:
    """2 GiB on a 32 GiB machine is less load than 1 GiB on an 8 GiB machine."""
    cluster = Cluster([machine("small", memory=8 * GiB), machine("big", memory=32 * GiB)])
    cluster.add(cluster.by_name["small"], "x", Requirements(memory_bytes=GiB))
    cluster.add(cluster.by_name["big"], "y", Requirements(memory_bytes=2 * GiB))
    assert place(cluster, "u", Requirements()) == "big"


def test_the_scarcer_resource_decides_the_load() -> None:
    cluster = Cluster([machine("a", cpus=4.0), machine("b", cpus=4.0)])
    cluster.add(cluster.by_name["a"], "x", Requirements(memory_bytes=2 * GiB))  # 25% memory
    cluster.add(cluster.by_name["b"], "y", Requirements(cpus=2.0))  # 50% CPU
    assert place(cluster, "u", Requirements()) == "a"


def test_only_machines_with_room_are_candidates() -> None:
    cluster = Cluster([machine("a", memory=4 * GiB), machine("b", memory=64 * GiB)])
    cluster.add(cluster.by_name["b"], "x", Requirements(memory_bytes=40 * GiB))
    # b is the more loaded by fraction? no: 40/64 > 0/4, so a ranks first but lacks room
    assert place(cluster, "u", Requirements(memory_bytes=8 * GiB)) == "b"


def test_units_that_reserve_nothing_still_spread() -> None:
    """The ranking floor: without it every such unit would land on one machine."""
    cluster = Cluster([machine(f"m{i}") for i in range(4)])
    chosen = [place(cluster, f"u{i}", Requirements()) for i in range(8)]
    assert sorted(chosen, key=str) == ["m0", "m0", "m1", "m1", "m2", "m2", "m3", "m3"]


def test_units_that_reserve_nothing_still_add_load() -> None:
    """Without the ranking floor, an empty machine would look least loaded forever and
    take every unit that reserves nothing, however many it already runs."""
    cluster = Cluster([machine("a"), machine("b")])
    cluster.add(cluster.by_name["b"], "x", Requirements(memory_bytes=GiB))  # 12.5% of b
    chosen = [place(cluster, f"u{i}", Requirements()) for i in range(8)]
    # 200 MiB and 0.1 CPU each: after five, a is as loaded as b (12.5%) and runs more
    assert chosen[:6] == ["a"] * 5 + ["b"]


def test_ties_are_spread_by_a_stable_hash_not_by_name_order() -> None:
    names = [f"m{i}" for i in range(8)]
    first = [place(Cluster([machine(n) for n in names]), "u", Requirements()) for _ in range(3)]
    assert len(set(first)) == 1  # the same answer every time
    shuffled = Cluster([machine(n) for n in reversed(names)])
    assert place(shuffled, "u", Requirements()) == first[0]  # input order does not matter


def test_known_capacity_is_preferred_to_unknown() -> None:
    cluster = Cluster([machine("known", memory=8 * GiB), machine("unknown", cpus=0, memory=0)])
    cluster.add(cluster.by_name["known"], "x", Requirements(memory_bytes=7 * GiB))
    assert place(cluster, "u", Requirements()) == "known"
    assert place(cluster, "v", Requirements(memory_bytes=2 * GiB)) is None


def test_all_unknown_capacity_spreads_by_unit_count() -> None:
    cluster = Cluster([machine(f"m{i}", cpus=0, memory=0) for i in range(3)])
    chosen = [place(cluster, f"u{i}", Requirements()) for i in range(6)]
    assert sorted(chosen, key=str) == ["m0", "m0", "m1", "m1", "m2", "m2"]


def test_conflicts_skip_the_least_loaded_machine() -> None:
    cluster = Cluster([machine("a"), machine("b")])
    cluster.add(cluster.by_name["b"], "x", Requirements(memory_bytes=4 * GiB))
    cluster.add(cluster.by_name["a"], "web@1", Requirements())
    assert place(cluster, "web@2", Requirements(conflicts=("web@*",))) == "b"
    assert place(cluster, "web@3", Requirements(conflicts=("web@*",))) is None


def test_heap_stays_exact_as_loads_grow() -> None:
    """Many units through one group: every choice is the least loaded machine that fits."""
    machines = [machine(f"m{i}", memory=(4 + i) * GiB, cpus=2.0 + i) for i in range(6)]
    cluster = Cluster(machines)
    sizes = [256 * MiB, 512 * MiB, GiB, 128 * MiB]
    for i in range(60):
        req = Requirements(memory_bytes=sizes[i % 4], cpus=0.25 * (i % 3))
        group = cluster.group(req)
        fitting = [h for h in group.members if h.fits(req, round(req.cpus * 1000))]
        expected = min(fitting, key=lambda h: h.entry()[:5]) if fitting else None
        chosen = cluster.choose(group, f"u{i}", req)
        assert chosen is expected
        if chosen is not None:
            cluster.add(chosen, f"u{i}", req)


def test_a_conflict_is_not_remembered_as_no_room() -> None:
    cluster = Cluster([machine("a")])
    cluster.add(cluster.by_name["a"], "x", Requirements())
    req = Requirements(memory_bytes=GiB, conflicts=("x",))
    assert place(cluster, "u1", req) is None
    assert place(cluster, "u2", Requirements(memory_bytes=GiB)) == "a"


def test_a_reservation_that_fitted_nowhere_is_remembered() -> None:
    cluster = Cluster([machine("a", memory=GiB), machine("b", memory=GiB)])
    req = Requirements(memory_bytes=2 * GiB)
    assert place(cluster, "u1", req) is None
    group = cluster.group(req)
    group.heap = []  # the memo answers before the heap is looked at
    assert cluster.choose(group, "u2", req) is None


# --- refusals in user terms ---------------------------------------------------------------


def explain(machines: List[MachineView], residents: Dict[str, List[Tuple[str, Requirements]]],
            name: str, req: Requirements) -> str:
    cluster = Cluster(machines)
    for host, units in residents.items():
        for r, r_req in units:
            cluster.add(cluster.by_name[host], r, r_req)
    return cluster.explain(name, req, cluster.group(req).members)


def test_explain_too_big_names_the_best_candidate() -> None:
    why = explain([machine("h1", memory=8 * GiB), machine("h2", memory=4 * GiB)],
                  {"h1": [("x", Requirements(memory_bytes=6 * GiB + 819 * MiB))]},
                  "u", Requirements(memory_bytes=2 * GiB))
    assert why == "no machine with 2.0 GiB free; h2 has 4.0 GiB"


def test_explain_too_big_for_every_machine() -> None:
    why = explain([machine("h1"), machine("h2")], {}, "u", Requirements(memory_bytes=16 * GiB))
    assert why == "no machine with 16.0 GiB free; h1 has 8.0 GiB"


@pytest.mark.parametrize(("n", "text"), [
    (0, "0 bytes"), (1000, "1000 bytes"), (MiB, "1 MiB"), (512 * MiB, "512 MiB"),
    (GiB, "1.0 GiB"), (1536 * MiB, "1.5 GiB"), (100 * 1024 * GiB, "100.0 TiB"),
])
def test_sizes_read_like_systemd_units(n: int, text: str) -> None:
    assert size(n) == text


def test_explain_cpu_and_memory() -> None:
    why = explain([machine("h1", cpus=2.0), machine("h2", cpus=1.0)], {}, "u",
                  Requirements(memory_bytes=GiB, cpus=3.0))
    assert why == "no machine with 1.0 GiB and 3.0 CPUs free; h1 has 8.0 GiB and 2.0 CPUs"


def test_explain_memory_percent() -> None:
    why = explain([machine("h1")], {"h1": [("x", Requirements(memory_bytes=6 * GiB))]}, "u",
                  Requirements(memory_percent=50.0))
    assert why == "h1 has only 2.0 GiB of 8.0 GiB free, it needs 50% of its memory"


def test_explain_unknown_capacity() -> None:
    why = explain([machine("h1", memory=0), machine("h2", memory=0)], {}, "u",
                  Requirements(memory_bytes=GiB))
    assert why == "no candidate machine reports its memory, and the unit reserves memory"


def test_explain_conflicts_everywhere() -> None:
    why = explain([machine("h1"), machine("h2")],
                  {"h1": [("web@1", Requirements())],
                   "h2": [("web@2", Requirements(conflicts=("web@*",)))]},
                  "web@3", Requirements(conflicts=("web@*",)))
    assert why == ("every candidate machine runs a unit it must stay apart from: "
                   "h1 (it conflicts with web@1), h2 (it conflicts with web@2)")


def test_explain_conflicts_on_many_machines_names_a_few() -> None:
    ms = [machine(f"h{i}") for i in range(5)]
    why = explain(ms, {f"h{i}": [(f"web@{i}", Requirements())] for i in range(5)},
                  "web@9", Requirements(conflicts=("web@*",)))
    assert why == ("every candidate machine runs a unit it must stay apart from: "
                   "h0 (it conflicts with web@0), h1 (it conflicts with web@1), "
                   "h2 (it conflicts with web@2) and 2 more")


def test_explain_one_machine_with_a_replacing_unit() -> None:
    why = explain([machine("h1")], {"h1": [("new", Requirements(replaces=("old",)))]},
                  "old", Requirements())
    assert why == "new replaces it on h1"


def test_explain_room_elsewhere_but_conflicts() -> None:
    why = explain([machine("h1", memory=GiB), machine("h2")], {"h2": [("db", Requirements())]},
                  "u", Requirements(memory_bytes=2 * GiB, conflicts=("db",)))
    assert why == ("no machine with 2.0 GiB free; h1 has 1.0 GiB; 1 more has room but runs a "
                   "unit it must stay apart from")


# --- Global units --------------------------------------------------------------------------


FLEET3 = [machine("h1", role="web"), machine("h2", role="web"), machine("h3", role="db"),
          machine("h4", up=False)]


@pytest.mark.parametrize(("req", "placed", "targets"), [
    (Requirements(is_global=True), {}, ["h1", "h2", "h3"]),  # every machine that is up
    (Requirements(is_global=True, metadata=meta(role="web")), {}, ["h1", "h2"]),
    (Requirements(is_global=True, conflicts=("db*",)),
     {"h2": [unit("db1", machine="h2")]}, ["h1", "h3"]),
    # the other direction: a placed unit's Conflicts= names the global unit
    (Requirements(is_global=True), {"h3": [unit("x", machine="h3", conflicts=("g",))]},
     ["h1", "h2"]),
    (Requirements(is_global=True, capabilities=("systemd",)), {}, []),
    # placements on unknown machines are ignored
    (Requirements(is_global=True, conflicts=("x",)), {"gone": [unit("x", machine="gone")]},
     ["h1", "h2", "h3"]),
])
def test_global_targets(req: Requirements, placed: Dict[str, List[UnitView]],
                        targets: List[str]) -> None:
    g = UnitView("g", LAUNCHED, None, "", req)
    assert global_targets(g, FLEET3, placed) == targets


def test_global_placements_like_fleets_global_test() -> None:
    """fleet TestScheduleGlobalUnits: hello and goodbye placed, then a global unit runs on
    every machine; fleet's conflict-global fixture: a global unit skips machines running
    a unit its Conflicts= glob names."""
    units = [unit("hello", machine="h1"), unit("goodbye", machine="h2"),
             unit("global", is_global=True),
             unit("conflict-global.0", machine="h3"),
             unit("conflict-global.1", is_global=True, conflicts=("conflict-global.*",)),
             unit("off", INACTIVE, is_global=True)]
    assert global_placements(units, FLEET3) == {
        "global": ["h1", "h2", "h3"],
        "conflict-global.1": ["h1", "h2"],
    }


def test_conflicting_globals_first_name_keeps_the_machines() -> None:
    units = [unit("b-global", is_global=True, conflicts=("a-global",)),
             unit("a-global", LOADED, is_global=True, metadata=meta(role="web"))]
    assert global_placements(units, FLEET3) == {"a-global": ["h1", "h2"], "b-global": ["h3"]}


def test_a_global_unit_skips_a_machine_without_room() -> None:
    cluster = Cluster([machine("h1", memory=4 * GiB), machine("h2", memory=4 * GiB),
                       machine("h3", memory=0)])
    cluster.add(cluster.by_name["h1"], "big", Requirements(memory_bytes=3 * GiB))
    assert cluster.place_globals([unit("agent", is_global=True, memory_bytes=2 * GiB)]) == {
        "agent": ["h2"]}  # h1 is full; h3 does not say how much memory it has


def test_global_reservations_count_against_the_host() -> None:
    cluster = Cluster([machine("h1", memory=4 * GiB), machine("h2", memory=4 * GiB)])
    cluster.place_globals([unit("agent", is_global=True, memory_bytes=3 * GiB)])
    assert place(cluster, "u", Requirements(memory_bytes=2 * GiB)) is None
