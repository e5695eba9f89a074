"""tools/floors.py: the pins the floors job installs (run.sh floors, issue 14 §4) are read
from pyproject.toml itself: every direct dependency at its floor, markers respected, and
anything it cannot read refused naming pyproject.toml's line."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

from fleetd.bootstrap.probe import MIN_PSUTIL

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("floors", ROOT / "tools" / "floors.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["floors"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


floors = _load()

TOML = '''[project]
name = "x"
dependencies = [
    "psutil>=5.9",
    "click>=8.1,<9; python_version>='3.11'",
    "old>=1.0; python_version < '3.10'",
]

[project.optional-dependencies]
test = ["pytest>=8", "hypothesis==6.100", "ruff>=0.5"]
'''


def test_every_direct_dependency_of_pyproject_is_pinned_at_its_floor() -> None:
    text = PYPROJECT.read_text()
    direct, optional = text.split("[project.optional-dependencies]")
    written = re.findall(r'^\s*"([A-Za-z0-9_.-]+)>=([0-9.]+)', direct, re.M)
    assert len(written) >= 7  # psutil, asyncssh, aiohttp, jinja2, click, cryptography, ...
    tools = dict(re.findall(r'"(pytest|hypothesis)>=([0-9.]+)"', optional))
    pins = floors.floors(text, "pyproject.toml", (3, 11), ["pytest", "hypothesis"])
    assert pins == [f"{name}=={floor}" for name, floor in written] + [
        f"pytest=={tools['pytest']}", f"hypothesis=={tools['hypothesis']}"]


def test_markers_decide_for_the_python_the_pins_are_for() -> None:
    assert floors.floors(TOML, "p.toml", (3, 11)) == ["psutil==5.9", "click==8.1"]
    assert floors.floors(TOML, "p.toml", (3, 9)) == ["psutil==5.9", "old==1.0"]
    # the agent side (Python 3.9) needs psutil alone, at the floor the bootstrap checks
    real = floors.floors(PYPROJECT.read_text(), "pyproject.toml", (3, 9))
    assert real == [f"psutil=={'.'.join(map(str, MIN_PSUTIL))}"]


def test_optional_dependencies_are_pinned_only_when_asked() -> None:
    pins = floors.floors(TOML, "p.toml", (3, 11), ["hypothesis", "PyTest"])
    assert pins == ["psutil==5.9", "click==8.1", "hypothesis==6.100", "pytest==8"]
    with pytest.raises(floors.FloorError, match=r"^p\.toml: 'mypy' is in no "):
        floors.floors(TOML, "p.toml", (3, 11), ["mypy"])


@pytest.mark.parametrize(("line", "says"), [
    ('"jinja2"', "want exactly one floor (>=X or ==X), found 0"),
    ('"jinja2<4"', "want exactly one floor"),
    ('"jinja2>=3,>=3.1"', "found 2"),
    ('"jinja2>=3.1; sys_platform == \'linux\'"', "is not python_version OP 'X.Y'"),
    ('"jinja2>=3.1; python_version>=\'3.11\' and os_name==\'posix\'"', "is not python_version"),
    ('"jinja2 >> 3"', "'>> 3' is not a version clause"),
    ('"@jinja2"', "not a requirement"),
])
def test_what_it_cannot_read_is_refused_naming_the_line(line: str, says: str) -> None:
    text = TOML.replace('    "psutil>=5.9",\n', f"    \"psutil>=5.9\",\n    {line},\n")
    with pytest.raises(floors.FloorError) as caught:
        floors.floors(text, "pyproject.toml", (3, 11))
    assert str(caught.value).startswith("pyproject.toml:5: ")  # the line it is written on
    assert says in str(caught.value)


def test_the_command_prints_pins_or_says_what_is_wrong(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "pyproject.toml"
    good.write_text(TOML)
    assert floors.main(["--pyproject", str(good), "--python", "3.9", "--also", "pytest"]) == 0
    assert capsys.readouterr().out == "psutil==5.9\nold==1.0\npytest==8\n"
    good.write_text(TOML.replace("psutil>=5.9", "psutil"))
    assert floors.main(["--pyproject", str(good)]) == 1
    assert capsys.readouterr().err == (
        f"floors: {good}:4: 'psutil': want exactly one floor (>=X or ==X), found 0\n")
    good.write_text("[project\n")
    assert floors.main(["--pyproject", str(good)]) == 1
    assert capsys.readouterr().err.startswith(f"floors: {good}: ")
    with pytest.raises(SystemExit):
        floors.main(["--python", "three"])
