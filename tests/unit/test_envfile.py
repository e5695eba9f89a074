"""fleetd.drivers.envfile: EnvironmentFile= read the way systemd's env-file.c reads it."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetd.drivers.envfile import EnvironmentFileError, load, parse


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("A=1\nB=two words\n", [("A", "1"), ("B", "two words")]),
        ("  A =  padded value  \n", [("A", "padded value")]),  # key and value trimmed
        ("# comment\n; also a comment\n\n   # indented\nA=1", [("A", "1")]),
        ("A=x # not a comment\n", [("A", "x # not a comment")]),
        ("no equals sign\nA=1\n", [("A", "1")]),
        ("A=\nB=\n", [("A", ""), ("B", "")]),
        ("A='single $HOME \\n \"q\"'\n", [("A", 'single $HOME \\n "q"')]),
        ('A="double \\"q\\" \\$HOME \\\\ \\n \\` "\n',
         [("A", 'double "q" $HOME \\ \\n ` ')]),
        ("A='multi\nline'\n", [("A", "multi\nline")]),
        ('A="joined \\\nline"\n', [("A", "joined line")]),
        ("A=unquoted \\\n continued\n", [("A", "unquoted  continued")]),
        ("A=back\\slash \\ \n", [("A", "backslash  ")]),  # escaped space kept, then trimmed
        ('A="x"y\n', [("A", "xy")]),  # text after a closing quote continues the value
        ("A=1\nA=2\n", [("A", "1"), ("A", "2")]),
        ("1BAD=x\nBAD-NAME=y\nGOOD_1=z\n", [("GOOD_1", "z")]),  # invalid names dropped
        ("# comment \\\nA=1\n", [("A", "1")]),  # since v254 a comment does not continue
        ("A=no newline at the end", [("A", "no newline at the end")]),
        ("A='unterminated", [("A", "unterminated")]),
        ("A=1\r\nB=2\r\n", [("A", "1"), ("B", "2")]),
    ],
)
def test_parse(text: str, expected: list[tuple[str, str]]) -> None:
    assert parse(text) == expected


def test_load_merges_in_order_and_globs(tmp_path: Path) -> None:
    (tmp_path / "a.env").write_text("A=from-a\nB=from-a\n")
    (tmp_path / "b.env").write_text("B=from-b\n")
    (tmp_path / "conf.d").mkdir()
    (tmp_path / "conf.d" / "2.env").write_text("C=two\n")
    (tmp_path / "conf.d" / "1.env").write_text("C=one\nD=one\n")
    env = load([str(tmp_path / "a.env"), str(tmp_path / "b.env"),
                str(tmp_path / "conf.d" / "*.env"), f"-{tmp_path}/missing.env"])
    assert env == {"A": "from-a", "B": "from-b", "C": "two", "D": "one"}


def test_load_required_file_missing(tmp_path: Path) -> None:
    with pytest.raises(EnvironmentFileError,
                       match=r"EnvironmentFile=.*/nope.env: No such file or directory"):
        load([str(tmp_path / "nope.env")])
    with pytest.raises(EnvironmentFileError, match="no file matches"):
        load([str(tmp_path / "*.nothing")])
    assert load([f"-{tmp_path}/*.nothing", f"-{tmp_path}/nope.env"]) == {}
