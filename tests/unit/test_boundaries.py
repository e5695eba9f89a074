"""The import rules of fleetd/LAYERS.md, checked on a static import graph of fleetd/.

Static (an AST walk of every module), so it sees imports inside functions and under
``if TYPE_CHECKING:`` too, and both count (LAYERS.md says why). The runtime tests
(test_agent_side_imports.py, test_lab_imports.py) check what really loads; this one checks
every line, including the branches no test runs.

The checker is the functions below; the last tests run it on synthetic trees to show it
fails when someone adds a forbidden import.
"""

from __future__ import annotations

import ast
import dataclasses
import pathlib
import re
import sys
from typing import Dict, FrozenSet, List, Optional, Set, Tuple

import pytest

from fleetd.bootstrap import bundle

SOURCE_ROOT = pathlib.Path(__file__).resolve().parents[2]  # holds the fleetd package
LAYERS_DOC = SOURCE_ROOT / "fleetd" / "LAYERS.md"

# (rank, side, area): an import of another area goes to a lower rank (rule 2). Sides:
# "agent" is what bundle.AGENT_SIDE pushes to hosts, "daemon" fleetd and fleetctl,
# "lab" the lab and the tests' helpers. The same table is in fleetd/LAYERS.md.
LAYERS: Tuple[Tuple[int, str, str], ...] = (
    (0, "agent", "fleetd"),
    (1, "agent", "fleetd.wire"),
    (2, "agent", "fleetd.protocol"),
    (3, "agent", "fleetd.cgroups"),
    (4, "agent", "fleetd.drivers"),
    (5, "agent", "fleetd.agent"),
    (6, "daemon", "fleetd.units"),
    (7, "daemon", "fleetd.registry"),
    (8, "daemon", "fleetd.engine"),
    (9, "daemon", "fleetd.transport"),
    (10, "daemon", "fleetd.bootstrap"),
    (11, "daemon", "fleetd.daemon"),
    (12, "daemon", "fleetd.endpoints"),
    (13, "daemon", "fleetd.client"),
    (14, "lab", "fleetd.procfs"),
    (15, "lab", "fleetd.lab"),
    (15, "lab", "fleetd.testing"),
    (16, "daemon", "fleetd.cli"),
)
RANK = {area: rank for rank, _, area in LAYERS}
SIDE = {area: side for _, side, area in LAYERS}
# rule 1: what the agent side may import besides the standard library and itself
AGENT_THIRD_PARTY = frozenset({"psutil"})
# rule 3: the agent-side areas the daemon side may import
SHARED = frozenset({"fleetd", "fleetd.wire", "fleetd.protocol"})
# rule 4: the product module that may import the lab side (fleetctl lab)
LAB_ENTRY = frozenset({"fleetd.cli.lab"})

# Imports that break a rule and are allowed for now: (importer, imported) -> why, and who
# removes it. An entry that no longer matches an import fails the test.
ALLOWED: Dict[Tuple[str, str], str] = {
    ("fleetd.bootstrap.target", "fleetd.agent.state"):
        "DEFAULT_STATE_DIR, where the agent keeps its state, is a fact both sides share: it "
        "belongs in fleetd.wire; moved once fleetd/agent is not being restructured (issue 11)",
}
# Import cycles that exist today in code being restructured: the cycle's modules -> why,
# and who removes it. A cycle not listed fails; a listed one that is gone fails too.
KNOWN_CYCLES: Dict[FrozenSet[str], str] = {}


# --- the import graph ------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Import:
    importer: str  # a fleetd module
    target: str  # a fleetd module, or the top-level name of anything else
    line: int
    how: str  # "module", "function" or "TYPE_CHECKING"
    internal: bool  # target is a fleetd module

    def where(self) -> str:
        how = "" if self.how == "module" else f" ({self.how})"
        return f"{self.importer}:{self.line}{how}"


def module_names(root: pathlib.Path, package: str = "fleetd") -> Dict[str, pathlib.Path]:
    """Every module under root/package by its dotted name (a package by its own name)."""
    found = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def scan(root: pathlib.Path, package: str = "fleetd") -> Dict[str, List[Import]]:
    """Each module's imports, resolved: ``from a import b`` is an import of the module a.b
    if there is one, else of a; relative imports are made absolute. The implicit import of
    a module's parent packages is not an edge."""
    modules = module_names(root, package)
    return {name: _Scanner(name, path, modules, package).imports
            for name, path in modules.items()}


class _Scanner:
    def __init__(self, name: str, path: pathlib.Path, modules: Dict[str, pathlib.Path],
                 package: str) -> None:
        self.name, self.modules, self.package = name, modules, package
        self.here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        self.imports: List[Import] = []
        self.visit(ast.parse(path.read_text(), str(path)), "module")

    def visit(self, node: ast.AST, how: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for stmt in child.body:
                    self.visit_one(stmt, "TYPE_CHECKING")
                for stmt in child.orelse:
                    self.visit_one(stmt, how)
            elif isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                self.visit_one(child, "function" if how == "module" else how)
            else:
                self.visit_one(child, how)

    def visit_one(self, node: ast.AST, how: str) -> None:
        if isinstance(node, ast.Import):
            for alias in node.names:
                self.add(alias.name, node.lineno, how)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = self.here.split(".")
                parts = parts[: len(parts) - (node.level - 1)]
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                self.add(sub if sub in self.modules else base, node.lineno, how)
        self.visit(node, how)

    def add(self, target: str, line: int, how: str) -> None:
        internal = target == self.package or target.startswith(self.package + ".")
        if not internal:
            target = target.split(".")[0]
        if target != self.name:
            self.imports.append(Import(self.name, target, line, how, internal))


def area(module: str) -> str:
    return ".".join(module.split(".")[:2])


# --- the rules -------------------------------------------------------------------------
def violations(graph: Dict[str, List[Import]],
               allowed: Optional[Dict[Tuple[str, str], str]] = None) -> List[str]:
    """Every import that breaks rules 1-4 of LAYERS.md (and is not in ``allowed``), and
    every module in no area of the table. Cycles are cycles()."""
    allowed = ALLOWED if allowed is None else allowed
    out: List[str] = []
    for module in sorted(graph):
        if area(module) not in RANK:
            out.append(f"{module}: its area {area(module)} is not in LAYERS (add a row)")
    for module in sorted(graph):
        mine = area(module)
        if mine not in RANK:
            continue
        for imp in graph[module]:
            if (imp.importer, imp.target) in allowed:
                continue
            why = rule_broken(imp, mine)
            if why:
                out.append(f"{imp.where()} imports {imp.target}: {why}")
    return out


def rule_broken(imp: Import, mine: str) -> Optional[str]:
    side = SIDE[mine]
    if not imp.internal:
        if side == "agent" and imp.target not in sys.stdlib_module_names \
                and imp.target not in AGENT_THIRD_PARTY:
            return "the agent side imports only the standard library and psutil (rule 1)"
        return None
    theirs = area(imp.target)
    if theirs not in RANK:
        return f"{theirs} is not in LAYERS"
    if side == "agent" and SIDE[theirs] != "agent":
        return "the agent side imports only the agent side (rule 1)"
    if theirs != mine and RANK[theirs] >= RANK[mine]:
        return (f"upward: {mine} (rank {RANK[mine]}) may import only lower ranks, "
                f"{theirs} is {RANK[theirs]} (rule 2)")
    if side == "daemon" and SIDE[theirs] == "agent" and theirs not in SHARED:
        return ("the daemon side reaches the agent side only through "
                f"{', '.join(sorted(SHARED))} (rule 3)")
    if SIDE[theirs] == "lab" and side != "lab" and imp.importer not in LAB_ENTRY:
        return "product code never imports the lab side (rule 4)"
    return None


def cycles(graph: Dict[str, List[Import]]) -> Dict[FrozenSet[str], List[Import]]:
    """Each import cycle among fleetd modules (a strongly connected set of modules), with
    one chain of imports that runs around it."""
    edges: Dict[str, Dict[str, Import]] = {m: {} for m in graph}
    for module, imports in graph.items():
        for imp in imports:
            if imp.internal and imp.target in graph:
                edges[module].setdefault(imp.target, imp)
    # Tarjan's strongly connected components, iteratively
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on_stack: Set[str] = set()
    found: Dict[FrozenSet[str], List[Import]] = {}
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                members = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    members.add(member)
                    if member == node:
                        break
                if len(members) > 1:
                    found[frozenset(members)] = _chain(edges, members)
    return found


def _chain(edges: Dict[str, Dict[str, Import]], members: Set[str]) -> List[Import]:
    """The shortest way from the first member back to itself, inside the cycle."""
    first = min(members)
    paths: Dict[str, List[Import]] = {first: []}
    queue = [first]
    while queue:
        node = queue.pop(0)
        for target, imp in sorted(edges[node].items()):
            if target == first:
                return paths[node] + [imp]
            if target in members and target not in paths:
                paths[target] = paths[node] + [imp]
                queue.append(target)
    raise AssertionError(f"no cycle through {first}")


def describe(chain: List[Import]) -> str:
    return " -> ".join([imp.where() for imp in chain] + [chain[0].importer])


# --- fleetd ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def graph() -> Dict[str, List[Import]]:
    return scan(SOURCE_ROOT)


def test_fleetd_keeps_the_import_rules(graph: Dict[str, List[Import]]) -> None:
    found = violations(graph)
    assert not found, "imports that break fleetd/LAYERS.md:\n" + "\n".join(found)


def test_every_allowed_exception_is_still_needed(graph: Dict[str, List[Import]]) -> None:
    for importer, target in ALLOWED:
        found = [imp for imp in graph.get(importer, []) if imp.target == target]
        assert found, f"{importer} no longer imports {target}: remove it from ALLOWED"
        assert violations({importer: found}, allowed={}), \
            f"{importer} -> {target} breaks no rule: remove it from ALLOWED"


def test_no_import_cycles_but_the_known_ones(graph: Dict[str, List[Import]]) -> None:
    found = cycles(graph)
    new = [describe(chain) for members, chain in found.items() if members not in KNOWN_CYCLES]
    assert not new, "import cycles (fleetd/LAYERS.md, rule 5):\n" + "\n".join(new)
    gone = [sorted(members) for members in KNOWN_CYCLES if members not in found]
    assert gone == [], "the cycle is gone (or changed): remove it from KNOWN_CYCLES"


def test_the_agent_side_is_what_the_payload_ships() -> None:
    shipped = {entry.rstrip("/").removesuffix(".py").removesuffix("/__init__")
               .replace("/", ".") for entry in bundle.AGENT_SIDE}
    assert shipped == {a for a, side in SIDE.items() if side == "agent"}
    # whole directories: a package of the agent side is shipped with every module in it
    for entry in bundle.AGENT_SIDE:
        assert entry.endswith("/") or entry.count("/") == 1, entry


def test_layers_md_shows_the_same_table() -> None:
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*(\w+)\s*\|\s*`([\w.]+)`\s*\|",
                      LAYERS_DOC.read_text(), re.MULTILINE)
    assert sorted((int(rank), side, a) for rank, side, a in rows) == sorted(LAYERS)


def test_the_scan_sees_function_and_type_checking_imports(
        graph: Dict[str, List[Import]]) -> None:
    assert len(graph) > 100 and "fleetd.agent.supervisor" in graph
    kinds = {imp.how for found in graph.values() for imp in found}
    assert kinds == {"module", "function", "TYPE_CHECKING"}


# --- the checker fails when someone adds a forbidden import ----------------------------
def tree(tmp_path: pathlib.Path, files: Dict[str, str]) -> Dict[str, List[Import]]:
    """A synthetic fleetd package, scanned: files by path under fleetd/ -> source."""
    for rel, text in files.items():
        path = tmp_path / "fleetd" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        for parent in [path.parent, *path.parent.parents]:
            if parent == tmp_path:
                break
            (parent / "__init__.py").touch()
        path.write_text(text)
    return scan(tmp_path)


def test_checker_an_agent_module_importing_aiohttp(tmp_path: pathlib.Path) -> None:
    g = tree(tmp_path, {"agent/ok.py": "import os\nimport psutil\nfrom fleetd.wire import names\n",
                        "agent/bad.py": "import json\n\ndef f():\n    import aiohttp\n",
                        "wire/names.py": ""})
    assert violations(g, allowed={}) == [
        "fleetd.agent.bad:4 (function) imports aiohttp: the agent side imports only the "
        "standard library and psutil (rule 1)"]


def test_checker_the_agent_side_importing_the_daemon_side(tmp_path: pathlib.Path) -> None:
    g = tree(tmp_path, {"drivers/x.py": "from fleetd.units import execline\n",
                        "units/execline.py": ""})
    assert violations(g, allowed={}) == [
        "fleetd.drivers.x:1 imports fleetd.units.execline: the agent side imports only the "
        "agent side (rule 1)"]


def test_checker_a_units_module_importing_the_daemon(tmp_path: pathlib.Path) -> None:
    g = tree(tmp_path, {"units/model.py": "from fleetd.daemon import app\n",
                        "daemon/app.py": "from fleetd.units import model\n"})
    [upward] = violations(g, allowed={})
    assert upward.startswith("fleetd.units.model:1 imports fleetd.daemon.app: upward")


def test_checker_an_upward_import_under_type_checking(tmp_path: pathlib.Path) -> None:
    g = tree(tmp_path, {"registry/base.py": "from typing import TYPE_CHECKING\n"
                                            "if TYPE_CHECKING:\n"
                                            "    from fleetd.engine.loop import Engine\n",
                        "engine/loop.py": ""})
    [upward] = violations(g, allowed={})
    assert upward.startswith("fleetd.registry.base:3 (TYPE_CHECKING) imports "
                             "fleetd.engine.loop: upward")


def test_checker_the_daemon_reaching_into_the_agent(tmp_path: pathlib.Path) -> None:
    g = tree(tmp_path, {"daemon/api.py": "from fleetd.agent import health\n"
                                         "from fleetd.wire.names import is_template\n"
                                         "from fleetd import protocol\n",
                        "agent/health.py": "", "wire/names.py": "", "protocol.py": ""})
    assert violations(g, allowed={}) == [
        "fleetd.daemon.api:1 imports fleetd.agent.health: the daemon side reaches the agent "
        "side only through fleetd, fleetd.protocol, fleetd.wire (rule 3)"]


def test_checker_product_code_importing_the_lab_or_testing(tmp_path: pathlib.Path) -> None:
    g = tree(tmp_path, {"cli/units.py": "import fleetd.testing.registry\n",
                        "cli/lab.py": "from fleetd.lab import netns\n",
                        "engine/loop.py": "from ..testing import registry\n",
                        "lab/netns.py": "from fleetd import procfs\nfrom fleetd.cli import main\n",
                        "testing/registry.py": "", "procfs.py": "", "cli/main.py": ""})
    assert violations(g, allowed={}) == [
        "fleetd.cli.units:1 imports fleetd.testing.registry: product code never imports "
        "the lab side (rule 4)",
        "fleetd.engine.loop:1 imports fleetd.testing.registry: upward: fleetd.engine "
        "(rank 8) may import only lower ranks, fleetd.testing is 15 (rule 2)",
        "fleetd.lab.netns:2 imports fleetd.cli.main: upward: fleetd.lab (rank 15) may "
        "import only lower ranks, fleetd.cli is 16 (rule 2)"]


def test_checker_a_module_outside_the_table(tmp_path: pathlib.Path) -> None:
    g = tree(tmp_path, {"newthing/x.py": "", "units/y.py": "from fleetd.newthing import x\n"})
    assert violations(g, allowed={}) == [
        "fleetd.newthing: its area fleetd.newthing is not in LAYERS (add a row)",
        "fleetd.newthing.x: its area fleetd.newthing is not in LAYERS (add a row)",
        "fleetd.units.y:1 imports fleetd.newthing.x: fleetd.newthing is not in LAYERS"]


def test_checker_a_cycle(tmp_path: pathlib.Path) -> None:
    g = tree(tmp_path, {"engine/a.py": "from fleetd.engine import b\n",
                        "engine/b.py": "import os\n\ndef f():\n    from fleetd.engine.a import x\n",
                        "engine/c.py": "from fleetd.engine import a\n"})
    assert violations(g, allowed={}) == []  # within one area: only the cycle is wrong
    found = cycles(g)
    assert list(found) == [frozenset({"fleetd.engine.a", "fleetd.engine.b"})]
    assert describe(found[frozenset({"fleetd.engine.a", "fleetd.engine.b"})]) == \
        "fleetd.engine.a:1 -> fleetd.engine.b:4 (function) -> fleetd.engine.a"


def test_checker_a_cycle_closed_under_type_checking(tmp_path: pathlib.Path) -> None:
    g = tree(tmp_path, {"agent/sup.py": "from fleetd.agent.units import Units\n",
                        "agent/units.py": "import typing\nif typing.TYPE_CHECKING:\n"
                                          "    from .sup import Supervisor\n"})
    [chain] = cycles(g).values()
    assert describe(chain) == \
        "fleetd.agent.sup:1 -> fleetd.agent.units:3 (TYPE_CHECKING) -> fleetd.agent.sup"
