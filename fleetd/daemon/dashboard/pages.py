"""What each dashboard page shows, from the API's own rows: pure (no I/O, no aiohttp),
so a page's content is tested from fixed data.

At 1,000 machines (or 10,000 units) a page lists one page of rows (``PAGE_SIZE``) after
counts by state over all of them; a state and a name glob narrow the list, and the
counts stay those of the whole fleet, so an operator sees at once where to look.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
import re
from typing import Any, Dict, Generic, List, Mapping, Optional, Sequence, Tuple, TypeVar

PAGE_SIZE = 100
UNITS_SHOWN = 8  # a machine's units listed on the machines page; the rest as "+N more"
T = TypeVar("T")
Key = Tuple[str, str]  # (unit, machine), as usage is keyed


@dataclasses.dataclass(frozen=True)
class Page(Generic[T]):
    """One page of ``total`` rows: ``number`` of ``pages`` (both from 1)."""

    rows: List[T]
    number: int
    pages: int
    total: int


@functools.lru_cache(maxsize=65536)
def name_key(name: str) -> Tuple[Tuple[int, int, str], ...]:
    """Names in the order people count: m2 before m10, web@2 before web@10. Cached:
    every look at a page sorts the same 10,000 names again."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part)
                 for part in re.split(r"(\d+)", name) if part)


def paginate(rows: Sequence[T], number: int, size: int = PAGE_SIZE) -> Page[T]:
    """Page ``number`` of ``rows``; a number past the last is the last page (a page that
    emptied while someone looked at it shows what is left, not nothing)."""
    pages = max(1, -(-len(rows) // size))
    number = min(max(1, number), pages)
    start = (number - 1) * size
    return Page(list(rows[start:start + size]), number, pages, len(rows))


def page_links(page: Page[Any], around: int = 3) -> List[Optional[int]]:
    """The page numbers a pager links: the first, the last, and ``around`` either side of
    this one; None where numbers are left out (100 pages of units read as 1 ... 47 48
    49 50 51 52 53 ... 100)."""
    wanted = sorted({1, page.pages, *range(max(1, page.number - around),
                                           min(page.pages, page.number + around) + 1)})
    out: List[Optional[int]] = []
    for n in wanted:
        if out and out[-1] is not None and n > out[-1] + 1:
            out.append(None)
        out.append(n)
    return out


def count_by(rows: Sequence[Mapping[str, Any]], key: str) -> Dict[str, int]:
    """How many rows have each value of ``key``, most common first (then by name)."""
    counts: Dict[str, int] = {}
    for r in rows:
        value = str(r.get(key) or "-")
        counts[value] = counts.get(value, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def narrowed(rows: Sequence[Mapping[str, Any]], key: str, name_field: str,
             state: Optional[str], glob: Optional[str]) -> List[Mapping[str, Any]]:
    """The rows in ``state`` (any, when None) whose name matches ``glob`` (any, when None
    or empty; a glob without wildcards matches names containing it)."""
    if glob and not any(c in glob for c in "*?["):
        glob = f"*{glob}*"
    return [r for r in rows
            if (not state or str(r.get(key) or "-") == state)
            and (not glob or fnmatch.fnmatchcase(str(r.get(name_field, "")), glob))]


@dataclasses.dataclass(frozen=True)
class Load:
    """What a machine carries: its units, and their usage summed where agents answered."""

    units: int
    cpu_seconds: Optional[float]
    memory_bytes: Optional[float]


def load_of(machine: str, unit_rows: Sequence[Mapping[str, Any]],
            usage: Mapping[Key, Mapping[str, Any]]) -> Load:
    cpu: Optional[float] = None
    memory: Optional[float] = None
    units = 0
    for r in unit_rows:
        if r.get("machine") != machine:
            continue
        units += 1
        use = usage.get((str(r.get("unit")), machine)) or {}
        if use.get("cpu_seconds") is not None:
            cpu = (cpu or 0.0) + float(use["cpu_seconds"])
        if use.get("memory_bytes") is not None:
            memory = (memory or 0.0) + float(use["memory_bytes"])
    return Load(units, cpu, memory)


@dataclasses.dataclass(frozen=True)
class MachineView:
    name: str
    address: str
    state: str
    error: Optional[str]
    metadata: List[Tuple[str, str]]
    draining: Optional[str]  # "draining: 2 units left (a, b)", "drained", or None
    load: Load
    units: List[Tuple[str, str]]  # (unit, state) of the first UNITS_SHOWN
    more_units: int


def machine_view(m: Mapping[str, Any], unit_rows: Sequence[Mapping[str, Any]],
                 usage: Mapping[Key, Mapping[str, Any]]) -> MachineView:
    name = str(m["name"])
    here = [r for r in unit_rows if r.get("machine") == name]
    return MachineView(
        name=name, address=str(m.get("address", "")), state=str(m.get("state") or "-"),
        error=m.get("error") or None,
        metadata=sorted((str(k), str(v)) for k, v in (m.get("metadata") or {}).items()),
        draining=drain_text(m.get("drain")), load=load_of(name, unit_rows, usage),
        units=[(str(r["unit"]), str(r.get("state") or "-")) for r in here[:UNITS_SHOWN]],
        more_units=max(0, len(here) - UNITS_SHOWN))


def machine_views(machines: Sequence[Mapping[str, Any]],
                  unit_rows: Sequence[Mapping[str, Any]],
                  usage: Mapping[Key, Mapping[str, Any]]) -> List[MachineView]:
    """A page of machines: list-units' rows grouped by machine once (10,000 rows are
    read once, not once per machine shown)."""
    by_machine: Dict[str, List[Mapping[str, Any]]] = {}
    for r in unit_rows:
        by_machine.setdefault(str(r.get("machine")), []).append(r)
    return [machine_view(m, by_machine.get(str(m["name"]), []), usage) for m in machines]


def drain_text(drain: object) -> Optional[str]:
    """A machine's drain (list-machines' ``drain``: its units still there) as words."""
    if not isinstance(drain, dict):
        return None
    left = [str(u) for u in drain.get("left") or []]
    if not left:
        return "drained"
    shown = ", ".join(left[:3]) + (f" and {len(left) - 3} more" if len(left) > 3 else "")
    return f"draining: {len(left)} unit{'' if len(left) == 1 else 's'} left ({shown})"


@dataclasses.dataclass(frozen=True)
class Listing(Generic[T]):
    """A list page: counts by state over everything, the filter, and one page."""

    counts: Dict[str, int]
    state: Optional[str]
    glob: Optional[str]
    page: Page[T]
    machine: Optional[str] = None  # the units page of one machine's units

    def query(self, **changed: Any) -> Dict[str, Any]:
        """The page's query parameters with ``changed`` (a pager's or a count's link)."""
        now = {"state": self.state, "q": self.glob, "machine": self.machine,
               "page": None, **changed}
        return {k: v for k, v in now.items() if v}


def machines_listing(machines: Sequence[Mapping[str, Any]], state: Optional[str],
                     glob: Optional[str], number: int) -> Listing[Mapping[str, Any]]:
    """The machines page before usage: which machines (sorted by name) it shows."""
    rows = sorted(machines, key=lambda m: name_key(str(m.get("name"))))
    return Listing(count_by(rows, "state"), state, glob,
                   paginate(narrowed(rows, "state", "name", state, glob), number))


@dataclasses.dataclass(frozen=True)
class UnitView:
    """One copy of a unit where it is placed: list-units' row, and the unit's why."""

    unit: str
    machine: str
    state: str
    desired: str
    health: Optional[str]
    restarts: Optional[int]
    pid: Optional[int]
    reason: str
    cpu_seconds: Optional[float]
    memory_bytes: Optional[float]


def units_listing(rows: Sequence[Mapping[str, Any]], state: Optional[str],
                  glob: Optional[str], number: int, machine: Optional[str] = None
                  ) -> Listing[Mapping[str, Any]]:
    """The units page before usage: list-units' rows (a unit per machine) it shows;
    ``machine``: only that machine's (the machines page links there)."""
    ordered = sorted((r for r in rows if not machine or r.get("machine") == machine),
                     key=lambda r: (name_key(str(r.get("unit"))),
                                    name_key(str(r.get("machine")))))
    return Listing(count_by(ordered, "state"), state, glob,
                   paginate(narrowed(ordered, "state", "unit", state, glob), number),
                   machine)


def unit_view(row: Mapping[str, Any], reasons: Mapping[str, str],
              usage: Mapping[Key, Mapping[str, Any]]) -> UnitView:
    unit, machine = str(row["unit"]), str(row.get("machine") or "-")
    use = usage.get((unit, machine)) or {}
    return UnitView(
        unit=unit, machine=machine, state=str(row.get("state") or "-"),
        desired=str(row.get("desired") or "-"), health=row.get("health") or None,
        restarts=row.get("restarts"), pid=row.get("pid"),
        reason=reasons.get(unit, ""), cpu_seconds=use.get("cpu_seconds"),
        memory_bytes=use.get("memory_bytes"))


def machines_on(page: Page[Mapping[str, Any]], key: str) -> List[str]:
    """The machines a page's rows name: whose agents are asked for usage (not all 1,000)."""
    return sorted({str(r[key]) for r in page.rows if r.get(key)})


def size(n: Optional[float]) -> str:
    """Bytes as a person reads them: 1.5 MiB."""
    if n is None:
        return "-"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # not reached


def seconds(s: Optional[float]) -> str:
    return "-" if s is None else f"{s:.2f} s"
