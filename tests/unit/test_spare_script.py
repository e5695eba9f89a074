"""The script that turns a prepared process (fleetd.drivers.spare) into the unit's program,
run by a real /bin/sh as the spare runs it (empty environment, script on stdin): the
program must get exactly the argv, environment, directory and output the exec driver
gives it by fork, whatever the words hold - quotes, $, backslashes, newlines, empty
words, non-UTF-8 bytes, names sh refuses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

from fleetd.drivers import spare

REPORT = ("import json, os, sys\n"
          "env = open('/proc/self/environ', 'rb').read().split(b'\\0')[:-1]\n"
          "print(json.dumps({'argv': sys.argv[1:], 'cwd': os.getcwd(),\n"
          "                  'env': sorted(e.decode('utf-8', 'surrogateescape')\n"
          "                                for e in env)}, ensure_ascii=True))\n")
TRICKY = ["it's", 'a "b"', "$HOME", "`id`", "back\\slash", "new\nline", "", " lead ",
          "*", "~", "-x", "\\c", "caf\udce9"]


def run(tmp_path: Path, argv: List[str], env: Dict[str, str], cwd: Optional[str] = None,
        path: str = sys.executable) -> subprocess.CompletedProcess[bytes]:
    script = spare.script(path, argv, env, cwd or str(tmp_path), str(tmp_path / "unit.log"),
                          None)
    assert script is not None
    return subprocess.run([spare.SH], input=script, env={}, cwd="/",
                          capture_output=True, timeout=20)


def report(tmp_path: Path) -> Dict[str, Any]:
    return dict(json.loads((tmp_path / "unit.log").read_text().splitlines()[-1]))


@pytest.mark.skipif(not os.access(spare.SH, os.X_OK), reason="no /bin/sh")
def test_the_program_gets_exactly_its_argv_environment_and_directory(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "QUOTE": "it's \"x\" $y `z`",
           "MULTI": "a\nb", "EMPTY": "", "IFS": ":", "PWD": "/not/where/it/runs"}
    workdir = tmp_path / "dir with 'quote'"
    workdir.mkdir()
    done = run(tmp_path, [sys.executable, "-c", REPORT, *TRICKY], env, str(workdir))
    assert done.returncode == 0 and done.stderr == b"", done.stderr
    got = report(tmp_path)
    assert got["argv"] == TRICKY
    assert got["cwd"] == str(workdir)
    assert got["env"] == sorted(f"{k}={v}" for k, v in env.items())  # nothing of sh's


@pytest.mark.skipif(spare.tool(spare.ENV_PATHS) is None, reason="no env(1)")
def test_names_sh_refuses_are_set_through_env(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "a.b": "1", "1X": "two words"}
    done = run(tmp_path, [sys.executable, "-c", REPORT], env)
    assert done.returncode == 0, done.stderr
    assert report(tmp_path)["env"] == sorted(f"{k}={v}" for k, v in env.items())


def test_a_failed_step_says_why_on_the_error_pipe_and_runs_nothing(tmp_path: Path) -> None:
    done = run(tmp_path, [sys.executable, "-c", REPORT], {}, str(tmp_path / "missing"))
    assert done.returncode != 0
    assert b"missing" in done.stderr  # sh's "can't cd to ...", which becomes the DriverError
    assert not (tmp_path / "unit.log").exists()


def test_an_argv0_other_than_the_path_is_not_for_a_prepared_process() -> None:
    assert spare.script("/bin/sleep", ["sleeper", "1"], {}, "/", "/dev/null", None) is None
