"""fleetd.wire.execline: ExecStart= splitting and $VAR expansion, as systemd does it."""

from __future__ import annotations

import pytest

from fleetd.wire.execline import Command, CommandLineError, argv, expand, split, split_words

# --- split: words, quotes, escapes -------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("/bin/true", ["/bin/true"]),
        ("  /bin/echo   a\tb  ", ["/bin/echo", "a", "b"]),
        ('/bin/echo "hello world"', ["/bin/echo", "hello world"]),
        ("/bin/echo 'hello world'", ["/bin/echo", "hello world"]),
        ("/bin/echo \"it's\" 'say \"hi\"'", ["/bin/echo", "it's", 'say "hi"']),
        ('/bin/echo ""', ["/bin/echo", ""]),
        ("/bin/echo ''", ["/bin/echo", ""]),
        ('/bin/echo "a" "b"', ["/bin/echo", "a", "b"]),
        ('/bin/echo "quoted at end"', ["/bin/echo", "quoted at end"]),
        # systemd 252's extract_first_word: quotes open and close inside a word
        ('/bin/echo a"b"c', ["/bin/echo", "abc"]),
        ('/bin/echo --name="a b" x"y z"w "q r"', ["/bin/echo", "--name=a b", "xy zw", "q r"]),
        ('/bin/echo "a"b', ["/bin/echo", "ab"]),
        ("/bin/echo 'a'\"b\"", ["/bin/echo", "ab"]),
        ('"/bin/echo" x', ["/bin/echo", "x"]),
        ("/bin/sh -c 'echo $HOME; exit 1'", ["/bin/sh", "-c", "echo $HOME; exit 1"]),
    ],
)
def test_split_words_and_quotes(text: str, words: list[str]) -> None:
    assert list(split(text).words) == words


@pytest.mark.parametrize(
    ("escaped", "char"),
    [
        ("\\n", "\n"),
        ("\\t", "\t"),
        ("\\r", "\r"),
        ("\\a", "\a"),
        ("\\b", "\b"),
        ("\\f", "\f"),
        ("\\v", "\v"),
        ("\\s", " "),
        ("\\\\", "\\"),
        ('\\"', '"'),
        ("\\'", "'"),
        ("\\x41", "A"),
        ("\\x7a", "z"),
        ("\\x7A", "z"),
        ("\\101", "A"),
        ("\\040", " "),
        ("\\u00e9", "é"),
        ("\\U0001F600", "\U0001f600"),
    ],
)
def test_split_decodes_c_escapes_in_plain_and_quoted_words(escaped: str, char: str) -> None:
    assert split(f"/bin/echo a{escaped}b").words == ("/bin/echo", f"a{char}b")
    assert split(f'/bin/echo "a{escaped}b"').words == ("/bin/echo", f"a{char}b")
    assert split(f"/bin/echo 'a{escaped}b'").words == ("/bin/echo", f"a{char}b")


def test_escaped_space_keeps_a_word_together() -> None:
    assert split("/bin/echo a\\sb c").words == ("/bin/echo", "a b", "c")


def test_escaped_quote_does_not_open_a_quoted_word() -> None:
    assert split('/bin/echo \\"a b\\"').words == ("/bin/echo", '"a', 'b"')


def test_escaped_quote_inside_quotes_does_not_close_them() -> None:
    assert split('/bin/echo "a \\" b"').words == ("/bin/echo", 'a " b')


# --- split: prefixes -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "flags"),
    [
        ("/bin/true", {}),
        ("-/bin/true", {"ignore_failure": True}),
        (":/bin/true", {"no_expand": True}),
        ("+/bin/true", {"privileged": True}),
        ("!/bin/true", {"privileged": True}),
        ("!!/bin/true", {"privileged": True}),
        ("@/bin/true true", {"argv0_given": True}),
        ("-:/bin/true", {"ignore_failure": True, "no_expand": True}),
        ("@-+/bin/true x", {"argv0_given": True, "ignore_failure": True, "privileged": True}),
        (":-@/bin/true x", {"argv0_given": True, "ignore_failure": True, "no_expand": True}),
    ],
)
def test_split_prefixes(text: str, flags: dict[str, bool]) -> None:
    cmd = split(text)
    expected = {"ignore_failure": False, "argv0_given": False, "no_expand": False,
                "privileged": False, **flags}
    assert {k: getattr(cmd, k) for k in expected} == expected
    assert cmd.path == "/bin/true"


def test_prefix_chars_after_the_path_are_ordinary() -> None:
    assert split("/bin/echo -n @x :y +z !w").words == ("/bin/echo", "-n", "@x", ":y", "+z", "!w")


def test_command_to_json_round_trips_through_argv() -> None:
    cmd = split("-/bin/echo hi")
    data = cmd.to_json()
    assert data == {"words": ["/bin/echo", "hi"], "ignore_failure": True,
                    "argv0_given": False, "no_expand": False, "privileged": False}
    assert Command(**{**data, "words": tuple(data["words"])}) == cmd  # type: ignore[arg-type]


# --- split: errors ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "empty command line"),
        ("   ", "empty command line"),
        ("-", "empty command line"),
        ("@:-", "empty command line"),
        ('/bin/echo "unbalanced', "unbalanced quote"),
        ("/bin/echo 'unbalanced", "unbalanced quote"),
        ("/bin/echo \"mixed'", "unbalanced quote"),
        ("--/bin/true", "neither a valid executable name nor an absolute path"),
        ("/bin/echo a ; /bin/echo b", "lone ';'"),
        ("/bin/echo ;", "lone ';'"),
        ('/bin/echo "a\\', "trailing backslash"),
        ("@/bin/true", "'@' prefix needs the path and then argv[0]"),
    ],
)
def test_split_errors(text: str, fragment: str) -> None:
    with pytest.raises(CommandLineError) as info:
        split(text)
    assert fragment in str(info.value)


def test_semicolon_inside_a_word_is_ordinary() -> None:
    assert split("/bin/echo a;b c;").words == ("/bin/echo", "a;b", "c;")


def test_escaped_lone_semicolon_is_a_literal_argument() -> None:
    cmd = split("/usr/bin/find /tmp -name core -exec rm {} \\;")
    assert cmd.words[-1] == ";"


def test_quoted_semicolon_is_a_literal_argument() -> None:
    assert split('/bin/echo ";"').words == ("/bin/echo", ";")


@pytest.mark.parametrize("word", [
    "a\\;", "\\q", '"\\q"', "\\x4", "\\xZZ", "\\u12", "\\18", "\\7", "\\x00", "\\000",
    "\\u0000", "\\U00110000", "\\UFFFFFFFF"])
def test_an_escape_systemd_cannot_decode_stays_as_written_in_a_command_line(word: str
                                                                          ) -> None:
    """systemd 252 reads command lines with EXTRACT_CUNESCAPE_RELAX: such an escape is
    kept verbatim (with a warning), not refused; each case checked against the real
    systemd by tests/integration/test_systemd_words.py."""
    assert split(f"/bin/echo {word}").words == ("/bin/echo", word.strip('"'))


@pytest.mark.parametrize("escape", ["\\q", "\\x4", "\\x00", "\\000", "\\u0000",
                                    "\\U00110000"])
def test_an_escape_systemd_cannot_decode_is_refused_in_an_assignment(escape: str) -> None:
    with pytest.raises(CommandLineError):
        split_words(f"A=a{escape}")


# --- split_words (Environment=) -------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('"A=1 2" B=3', ["A=1 2", "B=3"]),
        ("A=1 B=2", ["A=1", "B=2"]),
        ("'A=x y'", ["A=x y"]),
        ("A=a\\sb", ["A=a b"]),
        ("", []),
        ("   ", []),
        ("A=", ["A="]),
        # split_words itself has no opinion on ';' (only split() refuses it)
        ("A=1 ; B=2", ["A=1", ";", "B=2"]),
    ],
)
def test_split_words_for_environment(text: str, words: list[str]) -> None:
    assert split_words(text) == words


def test_split_words_errors() -> None:
    with pytest.raises(CommandLineError, match="unbalanced"):
        split_words('"A=1')
    assert split_words('"A=1"B=2') == ["A=1B=2"]
    assert split_words('GREETING="hello world" JAVA_OPTS="-Xmx1g -Xms512m"') == [
        "GREETING=hello world", "JAVA_OPTS=-Xmx1g -Xms512m"]


# --- expand ----------------------------------------------------------------------------

ENV = {"FOO": "a b  c", "ONE": "single", "EMPTY": "", "SPACES": "   ", "DOLLAR": "$ONE"}


@pytest.mark.parametrize(
    ("words", "expanded"),
    [
        # $VAR as a whole word: split at whitespace into zero or more words
        (["$FOO"], ["a", "b", "c"]),
        (["$ONE"], ["single"]),
        (["$EMPTY"], []),
        (["$SPACES"], []),
        (["$UNDEFINED"], []),
        (["x", "$FOO", "y"], ["x", "a", "b", "c", "y"]),
        # ${VAR}: exact value, in place, one word
        (["${FOO}"], ["a b  c"]),
        (["--opt=${FOO}!"], ["--opt=a b  c!"]),
        (["${ONE}${ONE}"], ["singlesingle"]),
        (["${EMPTY}"], [""]),
        (["${UNDEFINED}"], [""]),
        (["pre${UNDEFINED}post"], ["prepost"]),
        # $$ is a literal dollar, and no expansion follows it
        (["$$"], ["$"]),
        (["$$FOO"], ["$FOO"]),
        (["cost: $$5"], ["cost: $5"]),
        (["$${FOO}"], ["${FOO}"]),
        # $VAR inside a word is not expanded (only ${VAR} is)
        (["a$FOO"], ["a$FOO"]),
        (["$FOO-x"], ["$FOO-x"]),
        # not variable names
        (["$"], ["$"]),
        (["$1"], ["$1"]),
        (["${1}"], ["${1}"]),
        (["${FOO"], ["${FOO"]),
        # values are not expanded again
        (["$DOLLAR"], ["$ONE"]),
        (["${DOLLAR}"], ["$ONE"]),
    ],
)
def test_expand(words: list[str], expanded: list[str]) -> None:
    assert expand(words, ENV) == expanded


def test_expand_accepts_a_tuple_and_leaves_it_alone() -> None:
    words = ("/bin/echo", "$FOO")
    assert expand(words, ENV) == ["/bin/echo", "a", "b", "c"]
    assert words == ("/bin/echo", "$FOO")


def test_expand_after_split_of_quoted_braces_keeps_spaces() -> None:
    cmd = split('/bin/echo "${FOO}" $FOO')
    assert expand(cmd.words, ENV) == ["/bin/echo", "a b  c", "a", "b", "c"]


# --- argv --------------------------------------------------------------------------------


def test_argv_expands_and_uses_the_first_word_as_path_and_argv0() -> None:
    cmd = split("/bin/echo $FOO ${ONE}").to_json()
    assert argv(cmd, ENV) == ("/bin/echo", ["/bin/echo", "a", "b", "c", "single"])


def test_argv_no_expand_passes_words_verbatim() -> None:
    cmd = split(":/bin/echo $FOO ${ONE} $$").to_json()
    assert argv(cmd, ENV) == ("/bin/echo", ["/bin/echo", "$FOO", "${ONE}", "$$"])


def test_argv_argv0_given_separates_path_from_argv() -> None:
    cmd = split("@/usr/bin/python3 my-daemon --flag").to_json()
    assert argv(cmd, ENV) == ("/usr/bin/python3", ["my-daemon", "--flag"])


def test_argv_argv0_given_with_no_expand() -> None:
    cmd = split("@:/bin/sh $NAME -c x").to_json()
    assert argv(cmd, ENV) == ("/bin/sh", ["$NAME", "-c", "x"])


def test_argv_path_may_come_from_a_variable() -> None:
    cmd = split("$ONE arg").to_json()
    assert argv(cmd, ENV) == ("single", ["single", "arg"])


def test_argv_that_expands_to_nothing_is_an_error() -> None:
    cmd = split("$UNDEFINED $EMPTY").to_json()
    with pytest.raises(CommandLineError, match="expands to nothing"):
        argv(cmd, ENV)


def test_argv_accepts_words_as_a_list_from_json() -> None:
    command = {"words": ["/bin/echo", "$ONE"], "no_expand": False, "argv0_given": False}
    assert argv(command, ENV) == ("/bin/echo", ["/bin/echo", "single"])
