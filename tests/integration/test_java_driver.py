"""The java driver against a real JVM: unit file -> [X-Java] config -> JavaDriver.start.

One tiny app is built once per session (javac --release 17 + jar, ~1 s); each test
starts it (~0.1 s) through the driver exactly as the agent would, reads what the JVM
itself reports in its log, and reaps it with os.waitpid (no supervisor runs here).
The first half needs no JVM: how installed Javas are found, chosen and sized.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import signal
import stat
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional

import pytest

from fleetd.drivers import java as jd
from fleetd.drivers.base import DriverError, Handle, StartContext
from fleetd.drivers.exec import same_process
from fleetd.units import service, xjava
from fleetd.units.context import UnitContext
from fleetd.units.model import parse_name
from fleetd.units.parser import parse

MiB = 1 << 20


def unit_config(text: str) -> Dict[str, Any]:
    """The config fleetd would send for this Driver=java unit."""
    ctx = UnitContext(parse(text, "app.service"), parse_name("app.service"), "app.service")
    return xjava.config(ctx, service.config(ctx, needs_exec_start=False))


# --- finding, choosing, sizing (no JVM runs) ---------------------------------------------


def _fake_home(root: Path, name: str, version: Optional[str], java: bool = True) -> Path:
    home = root / name
    (home / "bin").mkdir(parents=True)
    if version is not None:
        (home / "release").write_text(f'IMPLEMENTOR="Test"\nJAVA_VERSION="{version}"\n')
    if java:
        exe = home / "bin" / "java"
        exe.write_text("#!/bin/sh\necho 'openjdk version \"11.0.22\" 2024-01-16' >&2\n")
        exe.chmod(exe.stat().st_mode | stat.S_IXUSR)
    return home


def test_installed_javas_newest_first_each_once(tmp_path: Path) -> None:
    jvm = tmp_path / "jvm"
    _fake_home(jvm, "java-8-openjdk", "1.8.0_392")
    _fake_home(jvm, "java-17-openjdk", "17.0.15")
    (jvm / "java-1.17.0-openjdk").symlink_to(jvm / "java-17-openjdk")  # Debian's alias
    _fake_home(jvm, "temurin-21", "21.0.3")
    _fake_home(jvm, "temurin-17-older", "17.0.2")
    _fake_home(jvm, "openjdk-17", None, java=False)  # docs only (src.zip): no bin/java
    own = _fake_home(tmp_path, "opt-jdk", None)  # $JAVA_HOME without a release file
    javas = jd.installed_javas(str(jvm), java_home=str(own))
    assert [(j.version, Path(j.home).name) for j in javas] == [
        ("21.0.3", "temurin-21"),
        ("17.0.15", "java-17-openjdk"),
        ("17.0.2", "temurin-17-older"),
        ("11.0.22", "opt-jdk"),  # asked with java -version
        ("1.8.0_392", "java-8-openjdk"),
    ]
    assert [j.major for j in javas] == [21, 17, 17, 11, 8]
    assert javas[0].java == str(jvm / "temurin-21" / "bin" / "java")
    assert javas[0].to_fact() == {"version": "21.0.3", "major": 21,
                                  "home": str(jvm / "temurin-21")}
    caps = jd.machine_capabilities(javas)
    assert caps[:2] == ["java", "java:8"] and caps[-1] == "java:21" and len(caps) == 15
    assert jd.installed_javas(str(tmp_path / "nothing"), java_home="") == []
    assert jd.machine_capabilities([]) == []


@pytest.mark.parametrize(
    ("minimum", "chosen"), [(None, "21.0.3"), (8, "21.0.3"), (17, "21.0.3"), (21, "21.0.3")],
)
def test_choose_newest_meeting_the_minimum(minimum: Optional[int], chosen: str) -> None:
    javas = [jd.JavaInstall(f"/j/{v}", f"/j/{v}/bin/java", v) for v in ("21.0.3", "1.8.0_1")]
    assert jd.choose_java({"min_version": minimum}, javas).version == chosen


def test_choose_fails_naming_what_is_installed() -> None:
    javas = [jd.JavaInstall("/j/17", "/j/17/bin/java", "17.0.15")]
    with pytest.raises(DriverError, match=r"JavaVersion=21: this host has no Java 21 or newer "
                                          r"\(installed: 17.0.15 at /j/17\)"):
        jd.choose_java({"min_version": 21}, javas)
    with pytest.raises(DriverError, match=r"this host has no Java \(no Java found in"):
        jd.choose_java({}, [])
    with pytest.raises(DriverError, match=r"JavaHome=/nonexistent: no executable "
                                          r"/nonexistent/bin/java here \(installed: 17"):
        jd.choose_java({"java_home": "/nonexistent"}, javas)


@pytest.mark.parametrize(
    ("limit_mib", "heap_mib"),
    # 75%, but at least 64 MiB left beside the heap, and never under half
    [(512, 384), (1024, 768), (4096, 3072), (256, 192), (128, 64), (100, 50), (10, 8)],
)
def test_heap_bytes(limit_mib: int, heap_mib: int) -> None:
    assert jd.heap_bytes(limit_mib * MiB) == heap_mib * MiB


@pytest.mark.parametrize(
    ("options", "limits", "environment", "expected"),
    [
        ([], {"memory_max": 512 * MiB}, {}, "-Xmx384m"),
        ([], {"memory_max": None, "memory_max_percent": 25.0}, {}, "-Xmx3072m"),  # of 16 GiB
        ([], {"memory_max": None}, {}, None),  # no limit: the JVM's own default
        ([], None, {}, None),
        (["-Xmx1g"], {"memory_max": 512 * MiB}, {}, None),
        (["-XX:MaxRAMPercentage=50"], {"memory_max": 512 * MiB}, {}, None),
        (["-XX:MaxRAM=1g"], {"memory_max": 512 * MiB}, {}, None),
        (["-XX:MaxHeapSize=100m"], {"memory_max": 512 * MiB}, {}, None),
        (["-Xms64m", "-Xss1m"], {"memory_max": 512 * MiB}, {}, "-Xmx384m"),
        ([], {"memory_max": 512 * MiB}, {"JAVA_TOOL_OPTIONS": "-Dx=1 -Xmx200m"}, None),
        ([], {"memory_max": 512 * MiB}, {"JDK_JAVA_OPTIONS": "-XX:MaxRAMPercentage=60"}, None),
        ([], {"memory_max": 512 * MiB}, {"JAVA_OPTS": "-Xmx200m"}, "-Xmx384m"),  # not read
    ],
)
def test_heap_option(options: List[str], limits: Optional[Dict[str, Any]],
                     environment: Dict[str, str], expected: Optional[str]) -> None:
    assert jd.heap_option({"jvm_options": options}, limits, environment,
                          total_memory=16 << 30) == expected


def test_command_line_keeps_paths_and_class_names_literal() -> None:
    cfg = unit_config("[X-Fleet]\nDriver=java\n[X-Java]\nMainClass=a.Outer$Main\n"
                      "ClassPath=/opt/$dir/lib/*:/c\nJvmOptions=-Dhome=${HOME}\n"
                      "Args=$PORT x\n")
    words = jd.command_words(cfg["java"], "/jdk$1/bin/java", "-Xmx384m")
    # $ in paths and class names is doubled, so the exec driver's expansion restores it;
    # JvmOptions=/Args= keep their variables, as ExecStart= words would
    assert words == ["/jdk$$1/bin/java", "-Xmx384m", "-Dhome=${HOME}", "-cp",
                     "/opt/$$dir/lib/*:/c", "a.Outer$$Main", "$PORT", "x"]


def test_missing_jar_is_a_driver_error(tmp_path: Path) -> None:
    cfg = unit_config(f"[X-Fleet]\nDriver=java\n[X-Java]\nJar={tmp_path}/nope.jar\n")
    javas = [jd.JavaInstall("/j/17", "/j/17/bin/java", "17.0.15")]
    with pytest.raises(DriverError, match=r"Jar=.*/nope.jar: no such file on this host"):
        jd.JavaDriver().exec_config(cfg, javas)
    with pytest.raises(DriverError, match=r"no \[X-Java\] settings"):
        jd.JavaDriver().exec_config({"environment": {}}, javas)


# --- a real JVM ---------------------------------------------------------------------------

MAIN_JAVA = """\
package demo;

import java.nio.file.Files;
import java.nio.file.Path;

public class Main {
    public static void main(String[] args) throws Exception {
        String marker = System.getenv("MARKER");
        if (marker != null) {
            Runtime.getRuntime().addShutdownHook(new Thread(() -> {
                try { Files.writeString(Path.of(marker), "hook ran\\n"); } catch (Exception e) { }
            }));
        }
        StringBuilder out = new StringBuilder();
        out.append("maxMemory=").append(Runtime.getRuntime().maxMemory()).append('\\n');
        for (String a : args) out.append("arg=").append(a).append('\\n');
        out.append("prop=").append(System.getProperty("fleet.prop")).append('\\n');
        out.append("java.home=").append(System.getProperty("java.home")).append('\\n');
        out.append("JAVA_HOME=").append(System.getenv("JAVA_HOME")).append('\\n');
        out.append("ready\\n");
        System.out.print(out);
        System.out.flush();
        Thread.sleep(Long.MAX_VALUE);
    }

    public static class Inner {
        public static void main(String[] args) throws Exception { Main.main(args); }
    }
}
"""


@dataclasses.dataclass(frozen=True)
class App:
    jar: Path
    classes: Path


def _jdk_tool(name: str) -> Optional[str]:
    for install in jd.installed_javas():
        tool = os.path.join(install.home, "bin", name)
        if install.major >= 17 and os.access(tool, os.X_OK):
            return tool
    return shutil.which(name)


@pytest.fixture(scope="session")
def app(tmp_path_factory: pytest.TempPathFactory) -> App:
    javac, jar = _jdk_tool("javac"), _jdk_tool("jar")
    if not javac or not jar or not jd.installed_javas():
        pytest.skip("needs a JDK 17+ (javac, jar) in /usr/lib/jvm")
    root = tmp_path_factory.mktemp("javaapp")
    (root / "src" / "demo").mkdir(parents=True)
    (root / "src" / "demo" / "Main.java").write_text(MAIN_JAVA)
    (root / "manifest.txt").write_text("Main-Class: demo.Main\n")
    subprocess.run([javac, "--release", "17", "-d", str(root / "classes"),
                    str(root / "src" / "demo" / "Main.java")], check=True)
    subprocess.run([jar, "--create", "--file", str(root / "app.jar"), "--manifest",
                    str(root / "manifest.txt"), "-C", str(root / "classes"), "."], check=True)
    return App(jar=root / "app.jar", classes=root / "classes")


class Run:
    """Starts units through the JavaDriver and reaps whatever is left at the end."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.driver = jd.JavaDriver()
        self.handles: List[Handle] = []
        self.reaped: Dict[int, int] = {}

    def start(self, text: str) -> Handle:
        ctx = StartContext(unit="app.service", machine_id="m1",
                           log_path=str(self.tmp / "app.log"), invocation_id=uuid.uuid4().hex)
        handle = self.driver.start(unit_config(text), ctx)
        self.handles.append(handle)
        return handle

    def output(self, timeout: float = 15.0) -> Dict[str, List[str]]:
        """The app's report (key -> values), once it has printed ``ready``."""
        log = self.tmp / "app.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = log.read_text() if log.exists() else ""
            if "ready\n" in text:
                out: Dict[str, List[str]] = {}
                for line in text.splitlines():
                    key, _, value = line.partition("=")
                    out.setdefault(key, []).append(value)
                return out
            if any(pid in self.reaped or self._reap(pid, block=False) is not None
                   for pid in (h.pid for h in self.handles)):
                break
            time.sleep(0.02)
        pytest.fail(f"the JVM did not report ready; its log:\n{log.read_text()}")

    def _reap(self, pid: int, block: bool) -> Optional[int]:
        if pid in self.reaped:
            return self.reaped[pid]
        try:
            wpid, status = os.waitpid(pid, 0 if block else os.WNOHANG)
        except ChildProcessError:
            return None
        if wpid == 0:
            return None
        self.reaped[pid] = os.waitstatus_to_exitcode(status)
        return self.reaped[pid]

    def wait(self, handle: Handle) -> Optional[int]:
        return self._reap(handle.pid, block=True)

    def cleanup(self) -> None:
        for h in self.handles:
            if h.pid not in self.reaped:
                self.driver.signal(h, signal.SIGKILL)
                self._reap(h.pid, block=True)


@pytest.fixture
def run(tmp_path: Path) -> Iterator[Run]:
    r = Run(tmp_path)
    yield r
    r.cleanup()


def _cmdline(pid: int) -> List[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def test_jar_with_heap_from_memory_max_and_clean_stop(app: App, run: Run,
                                                      tmp_path: Path) -> None:
    marker = tmp_path / "hook-ran"
    handle = run.start(f"""\
[Service]
MemoryMax=512M
Environment=MARKER={marker} GREETING=hi
[X-Fleet]
Driver=java
[X-Java]
Jar={app.jar}
JvmOptions=-Dfleet.prop=hello "-Dquoted=a b"
Args=one "two words" ${{GREETING}}
""")
    newest = jd.installed_javas()[0]
    assert handle.driver == "java"
    out = run.output()
    # argv as the kernel sees it: the JVM itself, no shell, no wrapper
    assert _cmdline(handle.pid) == [newest.java, "-Xmx384m", "-Dfleet.prop=hello",
                                    "-Dquoted=a b", "-jar", str(app.jar),
                                    "one", "two words", "hi"]
    assert os.path.realpath(f"/proc/{handle.pid}/exe") == os.path.realpath(newest.java)
    assert out["arg"] == ["one", "two words", "hi"]
    assert out["prop"] == ["hello"]
    assert out["java.home"] == out["JAVA_HOME"] == [newest.home]
    # the heap the JVM really has: 75% of 512M (G1 reports -Xmx exactly; a collector
    # that keeps a survivor space aside reports up to ~10% less)
    max_memory = int(out["maxMemory"][0])
    assert 0.9 * 384 * MiB <= max_memory <= 384 * MiB, max_memory

    # a restarted agent finds the same JVM from the record it wrote
    record = handle.to_record()
    assert run.driver.recover(record) == handle
    assert run.driver.recover({**record, "start_ticks": handle.start_ticks - 500}) is None

    run.driver.signal(handle, signal.SIGTERM)
    assert run.wait(handle) == 143  # shutdown hooks ran, then exit(128 + SIGTERM)
    assert marker.read_text() == "hook ran\n"
    assert 143 in unit_config(f"[X-Fleet]\nDriver=java\n[X-Java]\nJar={app.jar}\n")[
        "success_exit_status"]["codes"]
    assert run.driver.recover(record) is None
    assert not same_process(handle)


def test_main_class_and_class_path(app: App, run: Run) -> None:
    """The class-path form; ``$`` in a nested class name stays literal; a heap option in
    JvmOptions= turns the automatic -Xmx off."""
    handle = run.start(f"""\
[Service]
MemoryMax=512M
[X-Fleet]
Driver=java
[X-Java]
MainClass=demo.Main$Inner
ClassPath={app.classes}
JvmOptions=-Xmx100m
JavaVersion=17
Args=x
""")
    out = run.output()
    cmd = _cmdline(handle.pid)
    assert cmd[1:] == ["-Xmx100m", "-cp", str(app.classes), "demo.Main$Inner", "x"]
    assert int(out["maxMemory"][0]) <= 100 * MiB
    assert out["arg"] == ["x"]


def test_java_home_explicit(app: App, run: Run) -> None:
    """JavaHome= wins over the newest Java (the oldest installed is taken, so that with
    two Javas here the choice is visibly not the default)."""
    javas = jd.installed_javas()
    if len(javas) < 2:
        pytest.skip("one Java here: JavaHome= would name the default, proving nothing")
    oldest = javas[-1]
    handle = run.start(f"[X-Fleet]\nDriver=java\n[X-Java]\nJar={app.jar}\n"
                       f"JavaHome={oldest.home}\n")
    out = run.output()
    assert _cmdline(handle.pid)[:2] == [oldest.java, "-jar"]  # no MemoryMax=: no -Xmx
    assert out["java.home"] == out["JAVA_HOME"] == [oldest.home]


def test_java_version_none_fits(app: App, run: Run) -> None:
    with pytest.raises(DriverError) as info:
        run.start(f"[X-Fleet]\nDriver=java\n[X-Java]\nJar={app.jar}\nJavaVersion=99\n")
    message = str(info.value)
    assert message.startswith("JavaVersion=99: this host has no Java 99 or newer (installed: ")
    for install in jd.installed_javas():
        assert f"{install.version} at {install.home}" in message
    assert not (run.tmp / "app.log").exists()  # nothing was started
