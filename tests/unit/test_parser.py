"""fleetd.units.parser: systemd's unit-file syntax."""

from __future__ import annotations

import glob
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleetd.units.parser import Entry, UnitError, UnitFile, parse, serialise


def triples(unit: UnitFile) -> list[tuple[str, str, str]]:
    return [(e.section, e.key, e.value) for e in unit.entries]


# --- sections, keys, values -----------------------------------------------------


def test_entries_keep_section_key_value_line_and_order() -> None:
    text = (
        "[Unit]\n"
        "Description=web server\n"
        "\n"
        "[Service]\n"
        "ExecStart=/usr/bin/web --port 80\n"
        "Environment=A=1\n"
    )
    unit = parse(text, "web.service")
    assert unit.source == "web.service"
    assert unit.entries == (
        Entry("Unit", "Description", "web server", 2),
        Entry("Service", "ExecStart", "/usr/bin/web --port 80", 5),
        Entry("Service", "Environment", "A=1", 6),
    )
    assert unit.sections() == ["Unit", "Service"]
    assert [e.key for e in unit.section("Service")] == ["ExecStart", "Environment"]
    assert list(unit.section("Install")) == []


def test_sections_are_listed_once_in_first_seen_order() -> None:
    unit = parse("[B]\nx=1\n[A]\ny=2\n[B]\nz=3\n")
    assert unit.sections() == ["B", "A"]
    assert [e.key for e in unit.section("B")] == ["x", "z"]


def test_empty_text_has_no_entries() -> None:
    assert parse("").entries == ()
    assert parse("\n\n# only a comment\n").entries == ()


def test_section_without_entries_is_accepted() -> None:
    assert parse("[Unit]\n").entries == ()


@pytest.mark.parametrize(
    ("line", "key", "value"),
    [
        ("Key=value", "Key", "value"),
        ("Key = value", "Key", "value"),
        ("  Key\t=\t value  ", "Key", "value"),
        ("Key=", "Key", ""),
        ("Key=  ", "Key", ""),
        ("Key=a=b=c", "Key", "a=b=c"),
        ("Key=a   b", "Key", "a   b"),  # inner whitespace is kept
        ("Key=#not a comment", "Key", "#not a comment"),
        ("Key=x ; y", "Key", "x ; y"),
    ],
)
def test_assignment_whitespace_around_equals_is_stripped(line: str, key: str, value: str) -> None:
    (entry,) = parse(f"[S]\n{line}\n").entries
    assert (entry.key, entry.value) == (key, value)


def test_repeated_keys_are_all_kept() -> None:
    unit = parse("[Service]\nEnvironment=A=1\nEnvironment=B=2\nEnvironment=C=3\n")
    assert [e.value for e in unit.values("Service", "Environment")] == ["A=1", "B=2", "C=3"]


@pytest.mark.parametrize(
    ("assignments", "expected"),
    [
        (["a", "b"], ["a", "b"]),
        (["a", "", "b"], ["b"]),
        (["a", "b", ""], []),
        (["", "a"], ["a"]),
        (["a", "", "b", "", "c", "d"], ["c", "d"]),
    ],
)
def test_values_honours_empty_assignment_reset(assignments: list[str], expected: list[str]) -> None:
    text = "[Service]\n" + "".join(f"ExecStartPre={v}\n" for v in assignments)
    unit = parse(text)
    assert [e.value for e in unit.values("Service", "ExecStartPre")] == expected


def test_values_only_looks_at_the_given_section_and_key() -> None:
    unit = parse("[A]\nK=1\n[B]\nK=2\nK=\n[A]\nK=3\nL=4\n")
    assert [e.value for e in unit.values("A", "K")] == ["1", "3"]
    assert unit.values("B", "K") == []
    assert unit.values("A", "Missing") == []


def test_values_entries_carry_their_line_numbers() -> None:
    unit = parse("[S]\nK=1\n\nK=2\n")
    assert [e.line for e in unit.values("S", "K")] == [2, 4]


def test_last_returns_the_winning_assignment() -> None:
    unit = parse("[Service]\nType=simple\n[Unit]\nType=other\n[Service]\nType=oneshot\n")
    last = unit.last("Service", "Type")
    assert last == Entry("Service", "Type", "oneshot", 6)
    assert unit.last("Service", "Nope") is None
    assert unit.last("Nope", "Type") is None


def test_last_returns_an_empty_assignment_too() -> None:
    last = parse("[S]\nK=1\nK=\n").last("S", "K")
    assert last is not None
    assert last.value == ""


def test_several_spellings_of_one_key_count_as_one() -> None:
    # fleet's X-ConditionMachineOf= and MachineOf=, TimeoutSec= and TimeoutStopSec=
    unit = parse("[S]\nA=1\nB=2\nA=\nB=3\nA=4\n[T]\nB=5\n")
    assert [e.value for e in unit.values("S", "A", "B")] == ["3", "4"]
    assert unit.last("S", "B", "A") == Entry("S", "A", "4", 6)
    assert unit.last("S", "B") == Entry("S", "B", "3", 5)


def test_keys_and_sections_are_case_sensitive() -> None:
    unit = parse("[Service]\nexecstart=/a\n")
    assert unit.last("Service", "ExecStart") is None
    assert unit.last("service", "execstart") is None
    assert unit.last("Service", "execstart") is not None


# --- comments ------------------------------------------------------------------


@pytest.mark.parametrize("comment", ["# hash", "; semicolon", "   # indented", "\t;tab", "#", ";"])
def test_comment_lines_are_skipped(comment: str) -> None:
    unit = parse(f"{comment}\n[S]\n{comment}\nK=1\n{comment}\n")
    assert triples(unit) == [("S", "K", "1")]
    assert unit.entries[0].line == 4


def test_comment_can_look_like_an_assignment_or_header() -> None:
    unit = parse("[S]\n#K=1\n;[Other]\nL=2\n")
    assert triples(unit) == [("S", "L", "2")]


# --- continuations ---------------------------------------------------------------


def test_backslash_continuation_joins_with_a_space() -> None:
    unit = parse("[Service]\nExecStart=/bin/echo \\\n  hello \\\n  world\n")
    (entry,) = unit.entries
    # each backslash becomes a space; the next line is appended as it stands
    assert entry.value == "/bin/echo    hello    world"
    assert entry.line == 2  # the line where the logical line starts


def test_backslash_directly_after_text() -> None:
    (entry,) = parse("[S]\nK=abc\\\ndef\n").entries
    assert entry.value == "abc def"


def test_comment_lines_inside_a_continuation_are_skipped() -> None:
    text = "[S]\nK=one \\\n# a comment\n; another\n  two\nL=3\n"
    unit = parse(text)
    assert [(e.key, e.value, e.line) for e in unit.entries] == [
        ("K", "one    two", 2),
        ("L", "3", 6),
    ]


def test_empty_line_ends_a_continuation() -> None:
    unit = parse("[S]\nK=one \\\n\nL=2\n")
    assert triples(unit) == [("S", "K", "one"), ("S", "L", "2")]


@pytest.mark.parametrize(
    ("value_line", "expected"),
    [
        ("K=a\\\\", "a\\\\"),  # two backslashes: a literal pair, no continuation
        ("K=a\\\\\\\\", "a\\\\\\\\"),  # four
    ],
)
def test_even_number_of_trailing_backslashes_is_not_a_continuation(
    value_line: str, expected: str
) -> None:
    unit = parse(f"[S]\n{value_line}\nL=2\n")
    assert triples(unit) == [("S", "K", expected), ("S", "L", "2")]


def test_odd_number_of_trailing_backslashes_continues() -> None:
    # three backslashes: an escaped pair, then the continuation backslash
    unit = parse("[S]\nK=a\\\\\\\nb\n")
    assert triples(unit) == [("S", "K", "a\\\\ b")]


def test_continuation_running_into_end_of_file_is_kept() -> None:
    assert triples(parse("[S]\nK=a \\\n")) == [("S", "K", "a")]
    assert triples(parse("[S]\nK=a \\")) == [("S", "K", "a")]


def test_continued_section_header() -> None:
    assert triples(parse("[My\\\nSection]\nK=1\n")) == [("My Section", "K", "1")]


def test_crlf_line_endings() -> None:
    unit = parse("[S]\r\nK=1\r\nL=2\r\n")
    assert triples(unit) == [("S", "K", "1"), ("S", "L", "2")]


# --- errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "fragment"),
    [
        ("K=1\n", 1, "outside of any section"),
        ("# c\n\nK=1\n[S]\n", 3, "outside of any section"),
        ("[S]\nK=1\njust words\n", 3, "expected 'Key=Value'"),
        ("[S]\nK=1\n[Broken\n", 3, "invalid section header"),
        ("[]\nK=1\n", 1, "invalid section header"),
        ("[S]]\n", 1, "invalid section name"),
        ("[a[b]\n", 1, "invalid section name"),
        ("[ S]\n", 1, "invalid section name"),
        ("[S]\nMy Key=1\n", 2, "keys have no spaces"),
        ("[S]\n=value\n", 2, "without a key"),
        ("[S]\n.include /etc/x\n", 2, ".include"),
        ("[S]\nK=a \\\nno equals here\nmore words\n", 4, "expected 'Key=Value'"),
    ],
)
def test_errors_name_file_and_line(text: str, line: int, fragment: str) -> None:
    with pytest.raises(UnitError) as info:
        parse(text, "units/web.service")
    err = info.value
    assert str(err).startswith(f"units/web.service:{line}: ")
    assert fragment in str(err)
    assert (err.source, err.line) == ("units/web.service", line)


def test_continued_line_error_names_the_line_where_it_starts() -> None:
    with pytest.raises(UnitError) as info:
        parse("[S]\nK=1\nbad \\\nstill bad\n", "f")
    assert str(info.value).startswith("f:3: ")


def test_unit_error_is_a_value_error() -> None:
    assert issubclass(UnitError, ValueError)


def test_nul_byte_is_refused_naming_the_file() -> None:
    with pytest.raises(UnitError, match="NUL") as info:
        parse("[S]\nK=a\x00b\n", "web.service")
    assert str(info.value).startswith("web.service")


def test_nul_byte_error_names_the_line() -> None:
    with pytest.raises(UnitError) as info:
        parse("[S]\nK=1\nL=a\x00b\n", "web.service")
    assert str(info.value).startswith("web.service:3: ")


def test_leading_byte_order_mark_is_ignored() -> None:
    assert triples(parse("\ufeff[Unit]\nDescription=x\n")) == [("Unit", "Description", "x")]


# --- serialise --------------------------------------------------------------------


def test_serialise_groups_by_section_in_order() -> None:
    unit = parse("# c\n[A]\nK = 1\n\n\n[B]\nL=two words\nL=\n[A]\nM=3\n")
    assert serialise(unit) == "[A]\nK=1\n\n[B]\nL=two words\nL=\n\n[A]\nM=3\n"


def test_serialise_of_nothing_is_empty() -> None:
    assert serialise(parse("")) == ""


# --- properties ----------------------------------------------------------------------

_unit_chars = st.sampled_from(list("[]=#;\\ \t\nabcK.-\x00\r\x0b\u2028\ufeffé"))
_unit_like = st.lists(
    st.one_of(
        st.sampled_from(["[Unit]", "[Service]", "[X]", "", "# c", "; c", "K=v \\", "\\"]),
        st.builds(lambda k, v: f"{k}={v}", st.sampled_from(["K", "L", " K ", "Key2"]),
                  st.text(_unit_chars, max_size=12)),
        st.text(_unit_chars, max_size=15),
    ),
    max_size=12,
).map("\n".join)


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=200), _unit_like))
def test_parse_returns_or_raises_unit_error(text: str) -> None:
    try:
        parse(text, "prop")
    except UnitError as exc:
        assert str(exc).startswith("prop")


@settings(max_examples=300, deadline=None)
@given(_unit_like)
def test_serialise_round_trips(text: str) -> None:
    try:
        unit = parse(text)
    except UnitError:
        return
    again = parse(serialise(unit))
    assert triples(again) == triples(unit)


# --- the real thing -----------------------------------------------------------------


def _system_units() -> list[str]:
    paths = []
    for pattern in ("*.service", "*.socket", "*.timer", "*.target"):
        for path in sorted(glob.glob(os.path.join("/lib/systemd/system", pattern))):
            if os.path.realpath(path) == "/dev/null" or not os.path.isfile(path):
                continue
            paths.append(path)
    return paths


def test_parses_every_unit_shipped_with_this_system() -> None:
    parsed = 0
    for path in _system_units():
        with open(path, encoding="utf-8") as f:
            unit = parse(f.read(), path)
        assert unit.source == path
        parsed += 1
    assert parsed >= 10


def test_backslash_followed_by_spaces_does_not_continue() -> None:
    f = parse("[Service]\nExecStart=/bin/echo a\\  \nDescription=b\n")
    assert [(e.key, e.value) for e in f.entries] == [
        ("ExecStart", "/bin/echo a\\"), ("Description", "b")]


def test_a_value_ending_in_a_backslash_survives_serialising() -> None:
    # found by hypothesis: "K=\\\t" holds a lone backslash, which must not become a
    # line continuation when written back
    unit = parse("[Unit]\nK=\\\t\nL=x\n")
    assert [(e.key, e.value) for e in unit.entries] == [("K", "\\"), ("L", "x")]
    assert triples(parse(serialise(unit))) == triples(unit)
