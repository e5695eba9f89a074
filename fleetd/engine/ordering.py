"""The order a pass places units in, and the units that wait because of a cycle.

MachineOf= targets go before their followers (each unit's depth in the MachineOf=
graph), and a cycle of MachineOf= or of Replaces= must not make a pass flap: units in a
MachineOf= cycle wait, saying so; in a Replaces= cycle one unit runs (the placed one
whose name sorts first, else the first by name) and the rest wait with a reason, the
same answer every pass. Pure graph work on the reconciler's views. ``cycles`` and
``cycle_path`` also serve [Unit] After=/Before= (engine/dependencies.py).
"""

from __future__ import annotations

from typing import Dict, Iterator, List, Mapping, Tuple

from fleetd.engine.cluster import Cluster
from fleetd.engine.views import UnitView


def machine_of_order(units: Mapping[str, UnitView]) -> Tuple[Dict[str, int], Dict[str, str]]:
    """Each unit's depth in MachineOf= (targets first), and why units in a cycle wait.

    Iterative, so a long chain cannot exhaust the stack.
    """
    depth: Dict[str, int] = {}
    stuck: Dict[str, str] = {}
    state: Dict[str, int] = {}  # 1: on the current path, 2: done

    def targets(name: str) -> List[str]:
        return [t for t in units[name].req.machine_of if t in units]

    for start in sorted(units):
        if start in state:
            continue
        if not units[start].req.machine_of:
            state[start], depth[start] = 2, 0
            continue
        state[start] = 1
        path = [start]
        stack: List[Tuple[str, Iterator[str]]] = [(start, iter(targets(start)))]
        while stack:
            node, todo = stack[-1]
            for t in todo:
                if t not in state:
                    state[t] = 1
                    path.append(t)
                    stack.append((t, iter(targets(t))))
                    break
                if state[t] == 1:
                    cycle = path[path.index(t):]
                    text = "MachineOf= is circular: " + " -> ".join([*cycle, t])
                    for c in cycle:
                        stuck.setdefault(c, text)
            else:
                stack.pop()
                path.pop()
                state[node] = 2
                depth[node] = 1 + max((depth.get(t, 0) for t in targets(node)), default=-1)
    return depth, stuck


def replace_losers(units: Mapping[str, UnitView], cluster: Cluster) -> Dict[str, str]:
    """Units that wait because they sit in a Replaces= cycle that another unit of runs."""
    graph = {n: [x for x in u.req.replaces if x in units] for n, u in units.items()
             if u.req.replaces}
    graph = {n: [x for x in xs if x in graph] for n, xs in graph.items()}
    out: Dict[str, str] = {}
    for cycle in cycles(graph):
        placed = [n for n in cycle if units[n].machine in cluster.by_name]
        winner = (placed or cycle)[0]
        text = f"Replaces= is circular ({' '.join(cycle)}): {winner} runs instead"
        for n in cycle:
            if n != winner:
                out[n] = text
    return out


def cycles(graph: Mapping[str, List[str]]) -> List[List[str]]:
    """Strongly connected components with a cycle (Tarjan's, iterative), names sorted."""
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    on_stack: Dict[str, bool] = {}
    stack: List[str] = []
    found: List[List[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, 0)]
        while work:
            node, i = work.pop()
            if i == 0:
                index[node] = low[node] = len(index)
                stack.append(node)
                on_stack[node] = True
            succ = graph[node]
            for j in range(i, len(succ)):
                w = succ[j]
                if w not in index:
                    work.append((node, j + 1))
                    work.append((w, 0))
                    break
                if on_stack.get(w):
                    low[node] = min(low[node], index[w])
            else:
                if low[node] == index[node]:
                    comp: List[str] = []
                    while True:
                        w = stack.pop()
                        on_stack[w] = False
                        comp.append(w)
                        if w == node:
                            break
                    if len(comp) > 1 or node in graph[node]:
                        found.append(sorted(comp))
                if work:
                    parent = work[-1][0]
                    low[parent] = min(low[parent], low[node])
    return found


def cycle_path(graph: Mapping[str, List[str]], component: List[str]) -> List[str]:
    """One cycle through ``component`` (a strongly connected one, from ``cycles``) as
    the names met along it, the first name again at the end: what a message names.
    Breadth-first from the component's first name back to it, so it is a shortest one."""
    start, inside = component[0], set(component)
    came: Dict[str, str] = {}
    todo = [start]
    while todo:
        node = todo.pop(0)
        for nxt in graph[node]:
            if nxt == start:
                path = [node]
                while path[-1] != start:
                    path.append(came[path[-1]])
                return [*reversed(path), start]
            if nxt in inside and nxt not in came:
                came[nxt] = node
                todo.append(nxt)
    return [start, start]  # unreachable for a strongly connected component
