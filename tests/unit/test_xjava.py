"""fleetd.units.xjava: [X-Java] into the java driver's config, and its scheduling needs.

Units are read the way model.py reads a Driver=java unit: service.config with
needs_exec_start=False, then xjava.config on top.
"""

from __future__ import annotations

from typing import Any, Dict, List

import pytest

from fleetd.drivers.java import JavaInstall, machine_capabilities
from fleetd.units import model, service, xjava
from fleetd.units.context import UnitContext
from fleetd.units.model import parse_name
from fleetd.units.parser import UnitError, parse

SRC = "units/app@1.service"
HEAD = "[X-Fleet]\nDriver=java\n[X-Java]\n"  # Driver= is line 2, [X-Java] options from 4


def _ctx(text: str) -> UnitContext:
    return UnitContext(parse(text, SRC), parse_name("app@1.service"), SRC)


def _config(text: str) -> Dict[str, Any]:
    ctx = _ctx(text)
    return xjava.config(ctx, service.config(ctx, needs_exec_start=False))


def _java(body: str) -> Dict[str, Any]:
    java: Dict[str, Any] = _config(HEAD + body)["java"]
    return java


def _error(text: str) -> UnitError:
    with pytest.raises(UnitError) as info:
        _config(text)
    return info.value


NONE: Dict[str, Any] = {"jar": None, "main_class": None, "class_path": [], "jvm_options": [],
                        "args": [], "java_home": None, "min_version": None}


# --- valid units -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("Jar=/opt/app/app.jar\n", {"jar": "/opt/app/app.jar"}),
        ("Jar=/opt/%p/%i.jar\n", {"jar": "/opt/app/1.jar"}),  # specifiers expand
        # ClassPath: ':'-separated, repeated, duplicates dropped, empty pieces skipped
        ("MainClass=com.example.Main\nClassPath=/opt/a.jar:/opt/lib/*\n"
         "ClassPath=/opt/conf::/opt/a.jar:\n",
         {"main_class": "com.example.Main",
          "class_path": ["/opt/a.jar", "/opt/lib/*", "/opt/conf"]}),
        # an empty assignment resets the list, as in systemd
        ("MainClass=Main\nClassPath=/old.jar\nClassPath=\nClassPath=/new.jar\n",
         {"main_class": "Main", "class_path": ["/new.jar"]}),
        # nested classes and Unicode identifiers are class names too
        ("MainClass=a.Outer$Inner\nClassPath=/c\n",
         {"main_class": "a.Outer$Inner", "class_path": ["/c"]}),
        ("MainClass=été.Main_2\nClassPath=/c\n", {"main_class": "été.Main_2",
                                                  "class_path": ["/c"]}),
        # JvmOptions: systemd words, repeatable, empty resets, separate-value options
        ("Jar=/a.jar\nJvmOptions=-Xss1m \"-Dgreeting=hello world\"\n"
         "JvmOptions=--add-opens java.base/java.lang=ALL-UNNAMED $JAVA_OPTS ${X}\n",
         {"jar": "/a.jar", "jvm_options": ["-Xss1m", "-Dgreeting=hello world", "--add-opens",
                                           "java.base/java.lang=ALL-UNNAMED", "$JAVA_OPTS",
                                           "${X}"]}),
        ("Jar=/a.jar\nJvmOptions=-Xmx1g\nJvmOptions=\nJvmOptions=-Dx=%i\n",
         {"jar": "/a.jar", "jvm_options": ["-Dx=1"]}),
        # Args: anything, the same word syntax
        ("Jar=/a.jar\nArgs=--port 80 'two words' \\t\nArgs=$PORT -x\n",
         {"jar": "/a.jar", "args": ["--port", "80", "two words", "\t", "$PORT", "-x"]}),
        ("Jar=/a.jar\nArgs=old\nArgs=\n", {"jar": "/a.jar"}),
        ("Jar=/a.jar\nJavaHome=/usr/lib/jvm/java-17-openjdk-amd64\n",
         {"jar": "/a.jar", "java_home": "/usr/lib/jvm/java-17-openjdk-amd64"}),
        ("Jar=/a.jar\nJavaVersion=17\n", {"jar": "/a.jar", "min_version": 17}),
        ("Jar=/a.jar\nJavaVersion=21+\n", {"jar": "/a.jar", "min_version": 21}),
        ("Jar=/a.jar\nJavaVersion=1.8\n", {"jar": "/a.jar", "min_version": 8}),
        ("Jar=/a.jar\nJavaVersion=11\nJavaVersion=\n", {"jar": "/a.jar"}),  # reset
    ],
)
def test_options(body: str, expected: Dict[str, Any]) -> None:
    assert _java(body) == {**NONE, **expected}


def test_relative_class_path_with_working_directory() -> None:
    java = _config("[Service]\nWorkingDirectory=/opt/app\n" + HEAD +
                   "MainClass=Main\nClassPath=lib/*:classes\n")["java"]
    assert java["class_path"] == ["lib/*", "classes"]


def test_service_settings_still_apply() -> None:
    config = _config("[Service]\nEnvironment=A=1\nMemoryMax=512M\nRestart=always\n"
                     "SuccessExitStatus=3 SIGUSR1\n" + HEAD + "Jar=/a.jar\n")
    assert config["environment"] == {"A": "1"}
    assert config["limits"]["memory_max"] == 512 << 20
    assert config["restart"] == "always"
    assert config["commands"] == []  # the agent writes the java command line
    # a JVM stopped by SIGHUP/SIGINT/SIGTERM runs its hooks and exits 128+n: clean, as
    # systemd counts a death by those signals
    assert config["success_exit_status"]["codes"] == [3, 129, 130, 143]
    assert config["success_exit_status"]["signals"] == [10]


# --- errors: file:line, the option, and why -------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "fragments"),
    [
        (HEAD + "Jar=/a.jar\nJarr=/b.jar\n", 5, ["unknown option Jarr= in [X-Java]",
                                                  "did you mean Jar=?"]),
        (HEAD + "Jar=/a.jar\nJvmOption=-Xss1m\n", 5, ["did you mean JvmOptions=?"]),
        (HEAD + "JAR=/a.jar\n", 4, ["did you mean Jar=? (option names are case-sensitive)"]),
        (HEAD + "Jar=/a.jar\nHeap=1g\n", 5, ["unknown option Heap=", "known: Args, ClassPath"]),
        (HEAD + "Jar=app.jar\n", 4, ["Jar=:", "'app.jar' is not an absolute path"]),
        (HEAD + "Jar=/opt/%h.jar\n", 4, ["Jar=:", "specifier %h is not supported"]),
        (HEAD + "Jar=/a.jar\nMainClass=Main\nClassPath=/c\n", 5,
         ["MainClass=:", "Jar= and MainClass= exclude each other"]),
        (HEAD + "MainClass=Main\nClassPath=/c\nJar=/a.jar\n", 6,
         ["Jar=:", "exclude each other"]),
        (HEAD + "Jar=/a.jar\nClassPath=/lib/x.jar\n", 5,
         ["ClassPath=:", "java -jar ignores the class path"]),
        (HEAD + "JvmOptions=-Xss1m\n", 2,
         ["Driver=:", "Driver=java needs Jar= or MainClass= + ClassPath="]),
        (HEAD + "MainClass=Main\n", 4, ["MainClass=:", "needs ClassPath="]),
        (HEAD + "MainClass=com..Main\nClassPath=/c\n", 4,
         ["MainClass=:", "'com..Main' is not a Java class name"]),
        (HEAD + "MainClass=9lives.Main\nClassPath=/c\n", 4, ["not a Java class name"]),
        (HEAD + "MainClass=Main.class\nClassPath=/c\n", 4, ["want a class name", "not a file"]),
        (HEAD + "MainClass=com/x/Main\nClassPath=/c\n", 4, ["not a file"]),
        (HEAD + "MainClass=Main\nClassPath=/ok:lib/*\n", 5,
         ["ClassPath=:", "'lib/*' is relative", "WorkingDirectory="]),
        ("[Service]\nWorkingDirectory=-/opt/maybe\n" + HEAD + "MainClass=M\nClassPath=lib\n",
         7, ["ClassPath=:", "'lib' is relative"]),
        (HEAD + "Jar=/a.jar\nJvmOptions=-verbose 256m\n", 5,
         ["JvmOptions=:", "'256m' is not a JVM option", "Args="]),
        (HEAD + "Jar=/a.jar\nJvmOptions=-Xms 256m\n", 5,
         ["JvmOptions=:", "'-Xms': want -XmsSIZE, like -Xms512m"]),
        (HEAD + "Jar=/a.jar\nJvmOptions=-Xmx²g\n", 5, ["JvmOptions=:", "want -XmxSIZE"]),
        (HEAD + "Jar=/a.jar\nJvmOptions=-Xss1e9\n", 5, ["want -XssSIZE"]),
        (HEAD + "Jar=/a.jar\nJvmOptions=-Xmx99999999999t\n", 5,
         ["the size in '-Xmx99999999999t': want a whole number from 1 to 8388607"]),
        (HEAD + "Jar=/a.jar\nJvmOptions=-jar /b.jar\n", 5,
         ["JvmOptions=:", "fleetd writes -jar itself; use Jar="]),
        (HEAD + "MainClass=M\nClassPath=/c\nJvmOptions=-cp /d\n", 6, ["use ClassPath="]),
        (HEAD + "MainClass=M\nClassPath=/c\nJvmOptions=--class-path=/d\n", 6,
         ["--class-path", "use ClassPath="]),
        (HEAD + "Jar=/a.jar\nJvmOptions=--module app/app.Main\n", 5, ["module (not supported"]),
        (HEAD + "Jar=/a.jar\nJvmOptions=-Xss1m --add-opens\n", 5,
         ["JvmOptions=:", "--add-opens needs a value after it"]),
        (HEAD + "Jar=/a.jar\nJvmOptions=\"-Dx=1\n", 5, ["JvmOptions=:", "unbalanced quote"]),
        (HEAD + "Jar=/a.jar\nArgs='oops\n", 5, ["Args=:", "unbalanced quote"]),
        (HEAD + "Jar=/a.jar\nArgs=\\q\n", 5, ["Args=:", "unknown escape"]),
        (HEAD + "Jar=/a.jar\nJavaHome=jdk17\n", 5, ["JavaHome=:", "not an absolute path"]),
        (HEAD + "Jar=/a.jar\nJavaHome=/opt/jdk\nJavaVersion=17\n", 6,
         ["JavaVersion=:", "JavaHome= and JavaVersion= exclude each other"]),
        (HEAD + "Jar=/a.jar\nJavaVersion=seventeen\n", 5,
         ["JavaVersion=:", "want the minimum major version, like 17, 17+ or 1.8"]),
        (HEAD + "Jar=/a.jar\nJavaVersion=17.0.2\n", 5, ["JavaVersion=:", "17.0.2"]),
        (HEAD + "Jar=/a.jar\nJavaVersion=>=17\n", 5, ["JavaVersion=:"]),
        (HEAD + "Jar=/a.jar\nJavaVersion=0\n", 5, ["JavaVersion=:"]),
        # the assignment that sets JAVA_HOME itself, not a later one that merely ends so
        ("[Service]\nEnvironment=\"JAVA_HOME=/opt/jdk\" B=2\nEnvironment=MY_JAVA_HOME=x\n"
         + HEAD + "Jar=/a.jar\n", 2, ["Environment=:", "agent sets JAVA_HOME", "JavaHome="]),
        ("[Service]\nExecStart=/usr/bin/java -jar /a.jar\n" + HEAD + "Jar=/a.jar\n", 2,
         ["ExecStart=:", "builds the command itself"]),
    ],
)
def test_errors(text: str, line: int, fragments: List[str]) -> None:
    err = _error(text)
    assert (err.source, err.line) == (SRC, line), str(err)
    assert str(err).startswith(f"{SRC}:{line}: ")
    for fragment in fragments:
        assert fragment in str(err), str(err)


def test_a_unit_with_x_java_and_no_driver_is_a_java_unit() -> None:
    unit = model.load("app.service", "[X-Java]\nJar=/opt/app.jar\n", source="app.unit")
    assert unit.driver == "java"
    assert unit.config["java"]["jar"] == "/opt/app.jar"
    assert "java" in unit.requirements.capabilities
    assert model.load("app.service", "[Service]\nExecStart=/bin/true\n").driver == "exec"


def test_an_empty_x_java_section_is_still_a_java_unit_named_by_its_header() -> None:
    with pytest.raises(UnitError) as info:
        model.load("app.service", "[Service]\nUser=nobody\n\n[X-Java]\n", source="a.unit")
    assert str(info.value) == "a.unit:4: [X-Java] needs Jar= or MainClass= + ClassPath="


@pytest.mark.parametrize(
    ("text", "driver_line", "section", "section_line", "hint"),
    [
        ("[Service]\nExecStart=/bin/true\n[X-Java]\nJar=/a.jar\n[X-Fleet]\nDriver=exec\n",
         6, "X-Java", 3, "a unit with [X-Java] is a java unit"),
        ("[X-Fleet]\nDriver=systemd\n[Service]\nExecStart=/bin/true\n\n[X-Java]\n"
         "Jar=/a.jar\n", 2, "X-Java", 6, "a unit with [X-Java] is a java unit"),
        ("[X-Check]\nType=tcp\nPort=80\n[X-Fleet]\nDriver=systemd\n[Service]\n"
         "ExecStart=/bin/true\n", 5, "X-Check", 1, "a systemd unit's health is systemd's"),
    ],
)
def test_a_driver_that_contradicts_a_section_names_both_lines(
        text: str, driver_line: int, section: str, section_line: int, hint: str) -> None:
    with pytest.raises(UnitError) as info:
        model.load("app.service", text, source="units/app.unit")
    err = info.value
    assert (err.source, err.line) == ("units/app.unit", driver_line), str(err)
    assert str(err).startswith(f"units/app.unit:{driver_line}: Driver=: ")
    assert f"contradicts [{section}] at units/app.unit:{section_line}" in str(err)
    assert hint in str(err)


def test_a_driver_the_sections_agree_with_is_kept() -> None:
    assert model.load("app.service", HEAD + "Jar=/a.jar\n").driver == "java"
    text = "[Service]\nExecStart=/bin/true\n[X-Check]\nType=tcp\nPort=80\n"
    assert model.load("app.service", text + "[X-Fleet]\nDriver=exec\n").driver == "exec"
    assert model.load("app.service", HEAD + "Jar=/a.jar\n[X-Check]\nType=tcp\n"
                                            "Port=80\n").driver == "java"


# --- scheduling --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "needs"),
    [
        ("Jar=/a.jar\n", ("java",)),
        ("Jar=/a.jar\nJavaVersion=17\n", ("java:17",)),
        ("Jar=/a.jar\nJavaVersion=1.8\n", ("java:8",)),
        ("Jar=/a.jar\nJavaVersion=6\n", ("java:8",)),  # below the floor: any Java does
        ("Jar=/a.jar\nJavaVersion=99\n", ("java:99",)),
        ("Jar=/a.jar\nJavaHome=/opt/jdk-21\n", ()),  # the unit vouches for its path
    ],
)
def test_capabilities(body: str, needs: tuple[str, ...]) -> None:
    assert xjava.capabilities(_java(body)) == needs


def _install(version: str) -> JavaInstall:
    return JavaInstall(home=f"/jvm/{version}", java=f"/jvm/{version}/bin/java",
                       version=version)


@pytest.mark.parametrize(
    ("installed", "minimum", "fits"),
    [
        (["17.0.15", "25.0.3"], None, True),
        (["17.0.15", "25.0.3"], 17, True),
        (["17.0.15", "25.0.3"], 21, True),  # 25 runs what was built for 21
        (["17.0.15", "25.0.3"], 25, True),
        (["17.0.15", "25.0.3"], 26, False),
        (["1.8.0_392"], 8, True),
        (["1.8.0_392"], 6, True),
        (["1.8.0_392"], 11, False),
        ([], None, False),
        ([], 8, False),
    ],
)
def test_unit_and_machine_sides_agree(installed: List[str], minimum: int | None,
                                      fits: bool) -> None:
    """The scheduler tests set membership: the unit's strings must be among the
    machine's exactly when a Java there meets the minimum."""
    machine = set(machine_capabilities([_install(v) for v in installed]))
    unit = xjava.capabilities({**NONE, "jar": "/a.jar", "min_version": minimum})
    assert set(unit) <= machine if fits else not set(unit) <= machine
    assert xjava.CAPABILITY_FLOOR == 8
