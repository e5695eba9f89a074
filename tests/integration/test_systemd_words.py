"""Word splitting, quoting, escapes and specifiers, differentially: the same lines go
through fleetd's unit reader (fleetd.units.model.load) and through a real systemd 252
(a lab systemd host: Debian bookworm booted with systemd as PID 1), and must agree.

What systemd made of a line is read back over D-Bus (``busctl --json=short``: exact
arrays, not ``systemctl show``'s space-joined text): ``ExecStartEx`` (path, argv, flags)
and ``Environment``. Where systemd refuses a line (or one assignment of it) it logs a
warning naming the file and line and goes on without it; the test reads those warnings
from the guest's journal, and fleetd must then refuse the unit, naming that line.

The lines are
  * every ``Exec*=`` and ``Environment=`` line of every unit file under this machine's
    /lib/systemd/system (each ``Exec*=`` as ``ExecStart=``: one parser serves them all);
  * lines hypothesis generates from quotes, escapes, prefixes, ``$VAR``, ``;`` and the
    specifiers fleetd expands, in batches (one systemd reload per batch);
  * templates whose instance holds an escaped space, for the specifiers %i/%I.

Known deviations, where fleetd refuses on purpose what systemd takes (each asserted to
be refused with the line named): specifiers other than %n %N %p %i %I %% (fleetd expands
those itself for the exec and java drivers; host facts are {{ machine.* }}), and a lone
``;`` (several commands on one line: fleetd wants one ExecStart= each).
"""

from __future__ import annotations

import ast
import glob
import json
import os
import re
import subprocess
from typing import Any, Dict, Iterator, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetd.lab import systemd_host
from fleetd.lab.systemd_host import SystemdHost, SystemdHostError
from fleetd.units.model import load
from fleetd.units.parser import UnitError

NETNS = "fs-sdw"
UNIT_DIR = "/run/systemd/system"
SUPPORTED_SPECIFIERS = set("nNpiI%")
CORPUS_DIR = "/lib/systemd/system"
SEEN: Dict[str, int] = {"corpus": 0, "generated": 0, "templates": 0, "refused by both": 0,
                        "deviations": 0}

# Runs in the guest: writes the unit files, reloads, loads each unit, prints what systemd
# made of it and the warnings it logged since the cursor, as one JSON document.
GUEST = r"""
import json, os, subprocess, sys
job = json.load(sys.stdin)
cursor = subprocess.run(["journalctl", "-n", "0", "--show-cursor", "-q"],
                        capture_output=True, text=True).stdout.strip()
cursor = cursor.split("cursor: ", 1)[-1]
for path, text in job["files"].items():
    with open(path, "w") as f:
        f.write(text)
subprocess.run(["systemctl", "daemon-reload"], check=True)
out = {}
for unit in job["units"]:
    got = {}
    path = subprocess.run(["busctl", "--json=short", "call", "org.freedesktop.systemd1",
                           "/org/freedesktop/systemd1", "org.freedesktop.systemd1.Manager",
                           "LoadUnit", "s", unit], capture_output=True, text=True)
    if path.returncode != 0:
        got["error"] = path.stderr.strip()
    else:
        obj = json.loads(path.stdout)["data"][0]
        for prop in ("ExecStartEx", "Environment"):
            p = subprocess.run(["busctl", "--json=short", "get-property",
                                "org.freedesktop.systemd1", obj,
                                "org.freedesktop.systemd1.Service", prop],
                               capture_output=True, text=True)
            if p.returncode != 0:  # a value D-Bus cannot carry (not UTF-8)
                got["error"] = f"{prop}: {p.stderr.strip()}"
                break
            got[prop] = json.loads(p.stdout)["data"]
    out[unit] = got
subprocess.run(["journalctl", "--sync"], capture_output=True)
log = subprocess.run(["journalctl", "--after-cursor", cursor, "-o", "cat", "--no-pager",
                      "--all"],  # --all: a message with a control character too
                     capture_output=True, text=True).stdout
for path in job["files"]:
    os.unlink(path)
subprocess.run(["systemctl", "daemon-reload"], check=True)
print(json.dumps({"units": out, "log": log}))
"""


@pytest.fixture(scope="module")
def host() -> Iterator[SystemdHost]:
    if os.geteuid() != 0:
        pytest.fail("the systemd host needs root (namespaces, mounts, cgroups)")
    try:
        root = systemd_host.rootfs()
    except SystemdHostError as exc:
        pytest.fail(f"cannot build the systemd host's rootfs: {exc}")
    subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)
    subprocess.run(["ip", "netns", "add", NETNS], check=True)
    systemd_host.sweep("sdw")  # what a crashed earlier run left behind
    try:
        h = systemd_host.boot(NETNS, "sdw", root=root)
        yield h
        h.poweroff()
    finally:
        subprocess.run(["ip", "netns", "del", NETNS], capture_output=True)
        print("\nsystemd word-splitting corpus: " +
              ", ".join(f"{k} {v}" for k, v in SEEN.items()))


# --- one case: a line as ExecStart= or Environment= of a unit ------------------------

class Case:
    """One line to compare: ``key`` (ExecStart or Environment) set to ``line`` in the
    unit ``unit`` (an instance of a template when it has an @)."""

    def __init__(self, n: int, key: str, line: str, instance: Optional[str] = None,
                 origin: str = "") -> None:
        self.key, self.line, self.origin = key, line, origin
        base = f"wd{n}"
        self.unit = f"{base}@{instance}.service" if instance is not None else f"{base}.service"
        self.file = f"{base}@.service" if instance is not None else f"{base}.service"
        lines = ["[Service]", "Type=oneshot"]
        if key != "ExecStart":
            lines.append("ExecStart=/bin/true")
        lines.append(f"{key}={line}")
        self.text = "\n".join(lines) + "\n"
        self.lineno = len(lines)

    def fleetd(self) -> Tuple[Optional[Dict[str, Any]], Optional[UnitError]]:
        try:
            return load(self.unit, self.text, source=self.file).config, None
        except UnitError as exc:
            return None, exc


def systemd_view(host: SystemdHost, cases: List[Case]) -> Tuple[Dict[str, Any], str]:
    job = {"files": {f"{UNIT_DIR}/{c.file}": c.text for c in cases},
           "units": [c.unit for c in cases]}
    out = host.run(["python3", "-c", GUEST], input=json.dumps(job), timeout=600)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    return doc["units"], doc["log"]


def refused_by_systemd(case: Case, got: Dict[str, Any], log: str) -> Optional[str]:
    """Why systemd dropped the case's line (or an assignment of it), if it did. A
    command line it cannot read is dropped whole (ExecStartEx is then empty); one it
    reads with a warning (an unknown escape, kept as written) is not. An Environment=
    line's every warning drops the line or one of its assignments."""
    warning = next((line for line in log.splitlines()
                    if line.startswith(f"{UNIT_DIR}/{case.file}:{case.lineno}:")), None)
    if case.key == "ExecStart":
        return None if got.get("ExecStartEx") else f"dropped: {warning}"
    return warning


def dropped_silently(error: UnitError, got: Dict[str, Any]) -> bool:
    """Did systemd drop, without a warning, the word fleetd refuses as no assignment?
    systemd 252 does so for a word with a control character (``\\n;x``: seen here, no
    journal entry), so its absence from systemd's Environment is the refusal."""
    m = re.search(r"(\'.*\'|\".*\") is not a VAR=value assignment", error.message)
    return m is not None and ast.literal_eval(m.group(1)) not in got.get("Environment", [])


def deviation(case: Case) -> Optional[str]:
    """Why fleetd refuses this line on purpose although systemd takes it, if it does."""
    for m in re.finditer(r"%(.)", case.line.replace("%%", "")):
        if m.group(1) not in SUPPORTED_SPECIFIERS:
            return f"specifier %{m.group(1)}"
    if case.key == "ExecStart" and re.search(r"(^|\s);(\s|$)", case.line):
        return "a lone ;"
    return None


def compare(case: Case, got: Dict[str, Any], log: str) -> Optional[str]:
    """None if fleetd and systemd agree on the case, else what differs."""
    config, error = case.fleetd()
    if "error" in got and error is not None and "not UTF-8" in str(error):
        SEEN["refused by both"] += 1  # systemd's D-Bus cannot carry it either
        return None
    warned = refused_by_systemd(case, got, log)
    if error is not None:
        if error.line != case.lineno:
            return f"fleetd's error does not name line {case.lineno}: {error}"
        if warned is not None or (case.key == "Environment" and dropped_silently(error, got)):
            SEEN["refused by both"] += 1
            return None
        if deviation(case) is not None:
            SEEN["deviations"] += 1
            return None
        return f"fleetd refuses ({error}) what systemd takes: {json.dumps(got)}"
    assert config is not None
    if warned is not None:
        return f"systemd refuses ({warned}) what fleetd takes: {json.dumps(config)}"
    if "error" in got:
        return f"systemd could not load it: {got['error']}"
    if case.key == "ExecStart":
        return _compare_exec(config["commands"], got["ExecStartEx"])
    env = dict(a.split("=", 1) for a in got["Environment"])
    if env != config["environment"]:
        return f"environment: fleetd {config['environment']!r}, systemd {env!r}"
    return None


def _compare_exec(commands: List[Dict[str, Any]], sd: List[Any]) -> Optional[str]:
    if len(commands) != len(sd):
        return f"{len(commands)} command(s) in fleetd, {len(sd)} in systemd: {sd!r}"
    for cmd, (path, argv, flags, *_rest) in zip(commands, sd):
        words = list(cmd["words"])
        mine_argv = words[1:] if cmd["argv0_given"] else words
        mine_flags = {"ignore-failure": cmd["ignore_failure"],
                      "no-env-expand": cmd["no_expand"],
                      "privileged": cmd["privileged"]}
        theirs = {"ignore-failure": "ignore-failure" in flags,
                  "no-env-expand": "no-env-expand" in flags,
                  # fleetd has no sandboxing to keep: + ! !! all run with full privileges
                  "privileged": bool({"privileged", "no-setuid", "ambient"} & set(flags))}
        if argv != mine_argv:
            return f"argv: fleetd {mine_argv!r}, systemd {argv!r}"
        if path != words[0] and not path.endswith("/" + words[0]):
            return f"path: fleetd {words[0]!r}, systemd {path!r}"
        if mine_flags != theirs:
            return f"flags: fleetd {mine_flags}, systemd {flags}"
    return None


def check(host: SystemdHost, cases: List[Case]) -> List[str]:
    units, log = systemd_view(host, cases)
    problems = []
    for case in cases:
        why = compare(case, units[case.unit], log)
        if why is not None:
            problems.append(f"{case.origin} {case.key}={case.line!r}: {why}")
    return problems


# --- the corpus: the machine's own unit files -----------------------------------------

def corpus() -> List[Tuple[str, str, str]]:
    """(origin file:line, key, value) of every Exec*= and Environment= line of the units
    under /lib/systemd/system, continuation lines joined as systemd joins them."""
    found = []
    for path in sorted(glob.glob(f"{CORPUS_DIR}/*")):
        if not os.path.isfile(path) or os.path.islink(path):
            continue
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except (UnicodeDecodeError, OSError):
            continue
        logical: List[Tuple[int, str]] = []
        pending: Optional[Tuple[int, str]] = None
        for n, raw in enumerate(text.splitlines(), 1):
            if pending is not None:
                start, acc = pending
                if raw.lstrip().startswith(("#", ";")):
                    continue  # a comment inside a continuation is skipped, as systemd does
                joined = acc + " " + raw
            else:
                start, joined = n, raw
            if joined.endswith("\\"):
                pending = (start, joined[:-1])
                continue
            pending = None
            logical.append((start, joined))
        for n, line in logical:
            m = re.match(r"\s*(Exec[A-Za-z]+|Environment)\s*=\s*(.*)$", line)
            if m is None or m.group(2).strip() == "":
                continue
            key = "Environment" if m.group(1) == "Environment" else "ExecStart"
            found.append((f"{os.path.basename(path)}:{n}", key, m.group(2).rstrip()))
    return found


def test_every_exec_and_environment_line_of_the_machines_units(host: SystemdHost) -> None:
    lines = corpus()
    assert len(lines) > 50, f"only {len(lines)} lines under {CORPUS_DIR}"
    cases = [Case(i, key, value, origin=origin)
             for i, (origin, key, value) in enumerate(lines)]
    SEEN["corpus"] += len(cases)
    assert check(host, cases) == []


# --- generated lines -------------------------------------------------------------------

PIECES = ["a", "b", "x=y", "--n=", " ", "  ", "\t", '"', "'", '""', "''", '"a b"', "'c d'",
          "\\\\", '\\"', "\\'", "\\n", "\\s", "\\t", "\\x41", "\\101", "\\u00e9", "\\;", ";",
          "$A", "${B}", "$$", "%n", "%i", "%p", "%N", "%I", "%%", "=", "é", "\\", "\\q"]
PREFIXES = ["", "-", "@", ":", "+", "!", "!!", "-@", "@-", ":-", "+-", "--"]
WORDS = st.lists(st.sampled_from(PIECES), max_size=8).map("".join)


@st.composite
def exec_line(draw: st.DrawFn) -> str:
    prefix = draw(st.sampled_from(PREFIXES))
    path = draw(st.sampled_from(["/bin/echo", '"/bin/echo"', "/bin/e'c'ho", "echo"]))
    argv0 = " argv0" if "@" in prefix else ""
    return whole(f"{prefix}{path}{argv0} {draw(WORDS)}".rstrip())


@st.composite
def env_line(draw: st.DrawFn) -> str:
    name = draw(st.sampled_from(["A", "B_1", "_x", "1A", "A-B", ""]))
    return whole(f"{name}={draw(WORDS)} {draw(WORDS)}".strip())


def whole(line: str) -> str:
    """``line`` as one line of a unit file: one that ends in a backslash continues on
    the next (the file's rule, not the words'), so such a line gets a last word."""
    return line + " x" if line.endswith("\\") else line


BATCH = 250


@settings(max_examples=8, deadline=None, derandomize=True, database=None,
          suppress_health_check=list(HealthCheck))
@given(st.lists(st.one_of(exec_line().map(lambda s: ("ExecStart", s)),
                          env_line().map(lambda s: ("Environment", s))),
                min_size=BATCH, max_size=BATCH))
def test_generated_lines(host: SystemdHost, lines: List[Tuple[str, str]]) -> None:
    cases = [Case(10_000 + i, key, value, origin="generated")
             for i, (key, value) in enumerate(lines)]
    SEEN["generated"] += len(cases)
    assert check(host, cases) == []


# --- instances: %i and %I with an escaped space -------------------------------------------

@pytest.mark.parametrize("key,line", [
    ("Environment", "A=%i B=%I"),
    ("Environment", 'A="%I"'),
    ("ExecStart", "/bin/echo %i %I"),
    ("ExecStart", '/bin/echo "%I" x%Iy'),
])
def test_specifiers_of_an_instance_with_a_space(host: SystemdHost, key: str, line: str
                                                ) -> None:
    cases = [Case(20_000, key, line, instance="a\\x20b", origin="template")]
    SEEN["templates"] += 1
    assert check(host, cases) == []
