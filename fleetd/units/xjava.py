"""``[X-Java]``: a JVM program described by what it is, not by a java command line.

A java unit - one with an ``[X-Java]`` section; ``Driver=java`` may say so too, another
Driver= is an error (xfleet.driver) - names its code (``Jar=``, or ``MainClass=`` +
``ClassPath=``), its JVM options, its arguments and which Java it needs (``JavaHome=`` or a minimum
``JavaVersion=``), and leaves the command line to the agent. The agent knows which
Java installations its host has, so only it can pick the ``java`` binary; it also sizes
the heap from ``MemoryMax=`` when the unit does not (see fleetd/drivers/java.py).
[Service] still applies in full except ExecStart= (Environment=, WorkingDirectory=,
User=, limits, restart policy...): model.py reads it with ``needs_exec_start=False``
and then this module adds a ``"java"`` key to that config.

Options, validated here so that the agent never meets a value it cannot use:

``Jar=``          absolute path of a runnable jar (``java -jar``)
``MainClass=``    a binary class name (``com.example.Main``, ``a.Outer$Inner``), run with
``ClassPath=``    entries separated by ``:`` and/or given on several lines (an empty
                  assignment resets); absolute, or relative to WorkingDirectory= when
                  that is set and not optional (the JVM resolves them from its working
                  directory); ``dir/*`` is the JVM's own jar wildcard, no shell needed
``JvmOptions=``   split like ExecStart= words (quotes, C escapes), repeatable, empty
                  resets; ``$VAR``/``${VAR}`` expand on the agent as in ExecStart=
``Args=``         the program's arguments, same syntax as JvmOptions=
``JavaHome=``     an absolute directory whose ``bin/java`` runs the unit, or
``JavaVersion=``  the minimum major version: ``17``, ``17+`` or ``1.8`` (== 8)

Jar=, MainClass=, ClassPath= and JavaHome= are literal paths and names (a ``$`` in
``a.Outer$Inner`` is not a variable). Unknown keys are refused with a suggestion.
[Service] Environment=JAVA_HOME= is refused (the agent sets it to the Java it runs),
and the exits 129/130/143 of a JVM stopped by SIGHUP/SIGINT/SIGTERM count as success.

Scheduling: a machine advertises ``java`` when it has any Java, and ``java:K`` for every
K from CAPABILITY_FLOOR up to the newest major version it has (drivers/java.py,
``machine_capabilities``). ``java:K`` thus reads "runs programs built for Java K", which
is what a *minimum* version means (a newer JVM runs older class files), and a unit's
minimum becomes one exact string the scheduler can test by set membership, without the
scheduler learning about versions. ``capabilities()`` below is the unit's side of it.
"""

from __future__ import annotations

import re
import signal
from typing import List, Optional, Tuple

from fleetd.units.context import UnitContext, later
from fleetd.units.parser import Entry, UnitError
from fleetd.wire.unitspec import Java, SuccessExitStatus, UnitConfig

X = "X-Java"
KNOWN = ("Jar", "MainClass", "ClassPath", "JvmOptions", "Args", "JavaHome", "JavaVersion")

# Machines list java:K from here up (Java 8 is the oldest a host plausibly has); a unit
# asking for less is satisfied by any of them, so its minimum is raised to this floor.
CAPABILITY_FLOOR = 8

# A Java binary class name: identifiers (Unicode letters, digits, _ and $) joined by dots.
_IDENT = r"(?:[^\W\d]|\$)(?:\w|\$)*"
_CLASS_NAME = re.compile(rf"{_IDENT}(?:\.{_IDENT})*")
_VERSION = re.compile(r"(?:1\.)?([0-9]{1,3})\+?")

# java launcher options that fleetd writes itself from Jar=/MainClass=/ClassPath=:
# in JvmOptions= they would fight the generated command line.
_OWNED = {
    "-jar": "Jar=",
    "-cp": "ClassPath=",
    "-classpath": "ClassPath=",
    "--class-path": "ClassPath=",
    "-m": "a module (not supported; use MainClass= + ClassPath=)",
    "--module": "a module (not supported; use MainClass= + ClassPath=)",
}
# launcher options whose value is the next word (all others are one word: -Dx=y, -Xmx1g)
_TAKES_VALUE = ("-p", "--module-path", "--upgrade-module-path", "--add-modules",
                "--limit-modules", "--add-reads", "--add-exports", "--add-opens",
                "--patch-module", "--enable-native-access")
# JVM options that take a size glued on (-Xmx512m): the JVM refuses a bad one only when
# the unit starts on its host, so fleetd checks it at submit time
_SIZED = ("-Xmx", "-Xms", "-Xmn", "-Xss")
_JVM_SIZE = re.compile(r"([0-9]+)([kKmMgGtT]?)")
_JVM_FACTOR = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
MAX_JVM_SIZE = (1 << 63) - 1  # bytes; the JVM keeps sizes in a 64-bit word

# The JVM turns these signals into exit(128 + n) after running its shutdown hooks;
# systemd counts a death by SIGHUP/SIGINT/SIGTERM as a clean stop, so the JVM's
# equivalent exit codes are clean too (systemd users write SuccessExitStatus=143).
_CLEAN_SIGNAL_EXITS = tuple(128 + int(s) for s in (signal.SIGHUP, signal.SIGINT,
                                                     signal.SIGTERM))


def config(ctx: UnitContext, service_config: UnitConfig) -> UnitConfig:
    """``service_config`` (from service.config(ctx, needs_exec_start=False)) with the
    validated [X-Java] settings under ``"java"``."""
    ctx.check_known(X, KNOWN)
    jar = _absolute(ctx, "Jar")
    main_class = _main_class(ctx)
    class_path = _class_path(ctx, service_config.get("working_directory"))
    if jar is not None and main_class is not None:
        ctx.fail(later(ctx.entry(X, "Jar"), ctx.entry(X, "MainClass")),
                 "Jar= and MainClass= exclude each other: a runnable jar names its own "
                 "main class (use MainClass= + ClassPath= to pick another)")
    if jar is not None and class_path:
        ctx.fail(ctx.many(X, "ClassPath")[0],
                 "java -jar ignores the class path (the jar's manifest Class-Path applies); "
                 "use MainClass= + ClassPath= with the jar in it instead")
    if jar is None and main_class is None:
        driver = ctx.entry("X-Fleet", "Driver")
        if driver is None:  # a java unit by its [X-Java] section
            raise UnitError(ctx.source, ctx.file.header(X),
                            "[X-Java] needs Jar= or MainClass= + ClassPath=")
        ctx.fail(driver, "Driver=java needs Jar= or MainClass= + ClassPath= in [X-Java]")
    if main_class is not None and not class_path:
        ctx.fail(ctx.entry(X, "MainClass"),
                 "MainClass= needs ClassPath= (where the JVM finds the class)")
    java_home = _absolute(ctx, "JavaHome")
    min_version = _min_version(ctx)
    if java_home is not None and min_version is not None:
        ctx.fail(later(ctx.entry(X, "JavaHome"), ctx.entry(X, "JavaVersion")),
                 "JavaHome= and JavaVersion= exclude each other: JavaHome= picks one "
                 "Java exactly, JavaVersion= lets the agent pick the newest that fits")
    _refuse_java_home_environment(ctx, service_config)
    success: SuccessExitStatus = service_config.get("success_exit_status") or {
        "codes": [], "signals": []}
    codes = list(success.get("codes", []))
    codes += [c for c in _CLEAN_SIGNAL_EXITS if c not in codes]
    return {
        **service_config,
        "success_exit_status": {**success, "codes": codes},
        "java": {
            "jar": jar,
            "main_class": main_class,
            "class_path": class_path,
            "jvm_options": _jvm_options(ctx),
            "args": ctx.words(X, "Args"),
            "java_home": java_home,
            "min_version": min_version,
        },
    }


def capabilities(java_cfg: Java) -> Tuple[str, ...]:
    """What a machine must advertise to run this unit (see the module docstring).

    JavaHome= asks for nothing: the path may be a JDK unpacked under /opt that no scan
    finds, and refusing every machine would be worse than the driver's clear error on a
    machine that lacks it (pin such units with MachineMetadata=)."""
    if java_cfg.get("java_home"):
        return ()
    minimum = java_cfg.get("min_version")
    if minimum is None:
        return ("java",)
    return (f"java:{max(int(minimum), CAPABILITY_FLOOR)}",)


# --- options -------------------------------------------------------------------------------
def _absolute(ctx: UnitContext, key: str) -> Optional[str]:
    value = ctx.single(X, key)
    if value is not None and not value.startswith("/"):
        ctx.fail(ctx.entry(X, key), f"{value!r} is not an absolute path")
    return value


def _main_class(ctx: UnitContext) -> Optional[str]:
    value = ctx.single(X, "MainClass")
    if value is None:
        return None
    if value.endswith(".class") or "/" in value:
        ctx.fail(ctx.entry(X, "MainClass"),
                 f"{value!r}: want a class name like com.example.Main, not a file")
    if not _CLASS_NAME.fullmatch(value):
        ctx.fail(ctx.entry(X, "MainClass"), f"{value!r} is not a Java class name")
    return value


def _class_path(ctx: UnitContext, working_directory: Optional[str]) -> List[str]:
    """Entries in order, duplicates dropped. Relative entries need a working directory
    that surely exists (WorkingDirectory= set, not optional), or the JVM would resolve
    them from / and start without the user's classes."""
    entries: List[str] = []
    relative_ok = bool(working_directory) and not str(working_directory).startswith("-")
    for entry in ctx.many(X, "ClassPath"):
        for item in ctx.expand(entry).split(":"):
            item = item.strip()
            if not item:
                continue  # "a.jar::b.jar" or a trailing ":" adds nothing
            if not item.startswith("/") and not relative_ok:
                ctx.fail(entry, f"{item!r} is relative: make it absolute, or set "
                                "WorkingDirectory= in [Service] (entries resolve from it)")
            if item not in entries:
                entries.append(item)
    return entries


def _jvm_options(ctx: UnitContext) -> List[str]:
    """JvmOptions= words. A word that is not an option would become the main class in
    the java command line (``-Xms 256m`` runs a class named 256m), so each word must be
    an option, the value of one that takes a separate value, or a ``$VAR`` that the
    agent expands."""
    words: List[str] = []
    for entry in ctx.many(X, "JvmOptions"):
        these = ctx.split(entry)
        expects_value = False
        for word in these:
            if expects_value:
                expects_value = False
            elif word.startswith("-"):
                name = word.split("=", 1)[0]
                if name in _OWNED:
                    ctx.fail(entry, f"{word!r}: fleetd writes {name} itself; "
                                    f"use {_OWNED[name]}")
                expects_value = word in _TAKES_VALUE
                _jvm_size(ctx, entry, word)
            elif not word.startswith("$"):
                ctx.fail(entry, f"{word!r} is not a JVM option (options start with -; "
                                "the program's own arguments go in Args=)")
            words.append(word)
        if expects_value:
            ctx.fail(entry, f"{these[-1]} needs a value after it")
    return words


def _jvm_size(ctx: UnitContext, entry: Entry, word: str) -> None:
    """``-Xmx512m`` and its kin: ASCII digits and an optional k/m/g/t, at most
    MAX_JVM_SIZE bytes (``-Xmx²g`` or ``-Xmx1e9`` would stop the JVM at start-up)."""
    prefix = next((p for p in _SIZED if word.startswith(p)), None)
    if prefix is None or word[len(prefix):].startswith("$"):
        return
    m = _JVM_SIZE.fullmatch(word[len(prefix):])
    if m is None:
        ctx.fail(entry, f"{word!r}: want {prefix}SIZE, like {prefix}512m (k, m, g or t)")
    factor = _JVM_FACTOR[m.group(2).lower()]
    ctx.whole(entry, m.group(1), 1, MAX_JVM_SIZE // factor, f"the size in {word!r}")


def _min_version(ctx: UnitContext) -> Optional[int]:
    value = ctx.single(X, "JavaVersion")
    if value is None:
        return None
    m = _VERSION.fullmatch(value)
    if not m or int(m.group(1)) == 0:
        ctx.fail(ctx.entry(X, "JavaVersion"),
                 f"{value!r}: want the minimum major version, like 17, 17+ or 1.8")
    return int(m.group(1))


def _refuse_java_home_environment(ctx: UnitContext, service_config: UnitConfig) -> None:
    """JAVA_HOME is set by the agent to the Java it runs, so that it always tells the
    truth; a unit that sets it means to choose the Java, which is JavaHome='s job."""
    if "JAVA_HOME" not in (service_config.get("environment") or {}):
        return
    for entry in reversed(ctx.many("Service", "Environment")):
        if any(w.startswith("JAVA_HOME=") for w in ctx.split(entry)):
            ctx.fail(entry, "with Driver=java the agent sets JAVA_HOME to the Java it "
                            "runs; choose it with JavaHome= in [X-Java]")
    ctx.fail(None, "Environment=: with Driver=java the agent sets JAVA_HOME; "
                   "use JavaHome= in [X-Java]")
