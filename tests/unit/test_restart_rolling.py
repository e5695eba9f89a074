"""fleetctl restart's globs and --rolling (against a scripted API), and the API's
``until=healthy`` verdict (pure, and over a real SQLite registry)."""

from __future__ import annotations

import inspect
from typing import Any, Dict, List, Optional, Tuple

import click
import pytest
from click.testing import CliRunner

from fleetd import protocol
from fleetd.cli import units as cli_units
from fleetd.cli.main import cli
from fleetd.client import ApiError, Client
from fleetd.daemon.changes import Changes
from fleetd.daemon.service import waits
from fleetd.daemon.service.placement import Fixed
from fleetd.daemon.service.units import Units
from fleetd.engine.snapshot import Snapshot
from fleetd.registry.base import INACTIVE, LAUNCHED, LOADED, ObservedRecord, UnitInput
from fleetd.registry.sqlite import SqliteRegistry
from fleetd.testing.registry import at_once
from fleetd.units.compiled import CompiledUnits
from fleetd.units.model import content_hash

# click 8.2 keeps a result's stderr apart always and dropped mix_stderr; before it,
# result.stderr needs mix_stderr=False (pyproject admits click 8.1: the floors job)
SEPARATE_STDERR: Dict[str, Any] = (
    {"mix_stderr": False} if "mix_stderr" in inspect.signature(CliRunner).parameters else {})

# --- globs and order ------------------------------------------------------------------


def files(*rows: Tuple[str, str]) -> List[Dict[str, Any]]:
    return [{"unit": name, "desired": desired} for name, desired in rows]


FILES = files(("web@.service", INACTIVE), ("web@10.service", LAUNCHED),
              ("web@2.service", LAUNCHED), ("web@1.service", LAUNCHED),
              ("web@3.service", LOADED), ("db.service", LAUNCHED),
              ("webby.service", LAUNCHED))


def test_name_order_compares_numbers_as_numbers() -> None:
    names = ["web@10.service", "web@2.service", "web@1.service", "a.service", "web@02.service"]
    assert sorted(names, key=cli_units.name_key) == [
        "a.service", "web@1.service", "web@02.service", "web@2.service", "web@10.service"]
    assert sorted(["b9x", "b10", "b9", "ab"], key=cli_units.name_key) == [
        "ab", "b9", "b9x", "b10"]


def test_a_glob_is_every_launched_instance_in_name_order_never_the_template() -> None:
    assert cli_units.expand_units(["web@*.service"], FILES) == [
        "web@1.service", "web@2.service", "web@10.service"]  # web@3 is only loaded
    assert cli_units.expand_units(["web@[12].service"], FILES) == [
        "web@1.service", "web@2.service"]
    assert cli_units.expand_units(["web*"], FILES) == [
        "web@1.service", "web@2.service", "web@10.service", "webby.service"]
    assert cli_units.expand_units(["*"], FILES)[0] == "db.service"


def test_plain_names_stay_as_given_and_each_unit_comes_once() -> None:
    assert cli_units.expand_units(["web@3.service", "some/dir/db.service"], FILES) == [
        "web@3.service", "db.service"]  # named: fleetd says whether it exists
    assert cli_units.expand_units(["web@2.service", "web@*.service", "db.service"],
                                  FILES) == ["web@2.service", "web@1.service",
                                             "web@10.service", "db.service"]
    assert cli_units.expand_units(["gone.service"], []) == ["gone.service"]


def test_a_glob_matching_nothing_is_an_error_naming_it() -> None:
    with pytest.raises(click.ClickException) as nothing:
        cli_units.expand_units(["db.service", "api@*.service"], FILES)
    assert nothing.value.message == "'api@*.service' matches no launched unit"
    with pytest.raises(click.ClickException) as idle:
        cli_units.expand_units(["web@3*"], FILES)
    assert idle.value.message == ("'web@3*' matches no launched unit (web@3.service "
                                  "matched but are not launched: name them to start them)")
    with pytest.raises(click.ClickException):  # a template is never an instance
        cli_units.expand_units(["web@.serv*"], FILES)


# --- fleetctl restart against a scripted API ---------------------------------------------


class FakeApi:
    """fleetd as far as restart sees it: unit files, restarts, and scripted waits."""

    def __init__(self, unit_files: List[Dict[str, Any]],
                 verdicts: Optional[Dict[str, Any]] = None) -> None:
        """``verdicts``: a unit's answer to every wait, or a list of its answers in turn."""
        self.unit_files = unit_files
        self.verdicts = verdicts or {}
        self.calls: List[Tuple[str, str, Optional[Dict[str, Any]]]] = []

    def request(self, method: str, path: str, body: Optional[Dict[str, Any]] = None,
                timeout: float = 60.0) -> Dict[str, Any]:
        self.calls.append((method, path, body))
        if path == "/v1/unit-files":
            return {"unit_files": self.unit_files}
        if path == "/v1/units/restart":
            assert body is not None
            for name in body["names"]:
                if name not in {f["unit"] for f in self.unit_files}:
                    raise ApiError(404, f"unit {name} does not exist")
            return {"restarted": body["names"]}
        if "/wait?" in path:
            name = path.split("/")[3]
            default = {"reached": True, "why": "healthy on h1 (pid 7, health check passing)"}
            verdict = self.verdicts.get(name, default)
            return {"unit": name, **(verdict.pop(0) if isinstance(verdict, list) else verdict)}
        raise AssertionError(f"unexpected call {method} {path}")

    def restarts(self) -> List[List[str]]:
        return [b["names"] for m, p, b in self.calls if p == "/v1/units/restart" and b]

    def waits(self) -> List[str]:
        return [p for m, p, b in self.calls if "/wait?" in p]


def fleetctl(monkeypatch: pytest.MonkeyPatch, fake: FakeApi, *args: str) -> Any:
    monkeypatch.setattr(Client, "request", lambda self, *a, **k: fake.request(*a, **k))
    return CliRunner(**SEPARATE_STDERR).invoke(cli, ["restart", *args])


def test_rolling_goes_one_at_a_time_in_name_order(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeApi(FILES)
    out = fleetctl(monkeypatch, fake, "web@*.service", "--rolling", "--rolling-timeout", "2min")
    assert out.exit_code == 0, out.output
    assert fake.restarts() == [["web@1.service"], ["web@2.service"], ["web@10.service"]]
    # each restart is followed by its wait for health before the next restart
    sequence = [p for m, p, b in fake.calls if p != "/v1/unit-files"]
    assert [p.split("?")[0] for p in sequence] == [
        "/v1/units/restart", "/v1/units/web@1.service/wait",
        "/v1/units/restart", "/v1/units/web@2.service/wait",
        "/v1/units/restart", "/v1/units/web@10.service/wait"]
    # each unit's wait asks for what is left of its 2 minutes
    for path in fake.waits():
        query = dict(kv.split("=") for kv in path.split("?")[1].split("&"))
        assert query["until"] == "healthy" and 119 < float(query["timeout"]) <= 120
    lines = out.output.splitlines()
    assert len(lines) == 3 and lines[0].startswith(
        "web@1.service: healthy on h1 (pid 7, health check passing) after ")


def test_rolling_stops_at_the_first_unhealthy_unit_and_names_the_rest(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeApi(FILES, {"web@2.service": {
        "reached": False, "why": "ended on h2 and is being restarted by its policy: "
                                 "health check failing: connection refused"}})
    out = fleetctl(monkeypatch, fake, "web@*.service", "db.service", "--rolling")
    assert out.exit_code == 1
    assert fake.restarts() == [["web@1.service"], ["web@2.service"]]
    assert out.stdout.startswith("web@1.service: healthy on h1")
    assert "Error: web@2.service: not healthy after " in out.stderr
    assert "on h2 and is being restarted by its policy: health check failing: " \
           "connection refused" in out.stderr
    assert out.stderr.rstrip().endswith(
        "rolling restart stopped: web@10.service, db.service not restarted")


def test_rolling_timeout_names_the_unit_and_what_it_was_doing(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeApi(FILES, {"web@10.service": {
        "reached": False, "timeout": True,
        "why": "running on h3 (pid 9), health check not passing yet"}})
    out = fleetctl(monkeypatch, fake, "web@*.service", "--rolling", "--rolling-timeout", "0.2")
    assert out.exit_code == 1
    assert ("web@10.service: not healthy after 0.2s: running on h3 (pid 9), health check "
            "not passing yet\nrolling restart stopped: web@10.service was the last unit"
            ) in out.stderr


def test_rolling_checks_every_name_before_restarting_any(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = FakeApi(FILES)
    out = fleetctl(monkeypatch, fake, "--rolling", "web@1.service", "nope.service")
    assert out.exit_code == 1 and fake.restarts() == []
    assert "nope.service: no such unit; nothing was restarted" in out.stderr


@pytest.mark.parametrize("args, error", [
    (["--rolling", "--no-block"], "--rolling waits for each unit; it cannot --no-block"),
    (["--rolling", "--timeout", "5"], "--timeout: with --rolling, --rolling-timeout"),
    (["--rolling-timeout", "5s"], "--rolling-timeout applies only with --rolling"),
    (["--rolling", "--rolling-timeout", "5 parsecs"], "unknown time unit 'parsecs'"),
    (["--rolling", "--rolling-timeout", "0"], "want a time span above 0"),
])
def test_option_mistakes_are_refused_before_anything_happens(
    monkeypatch: pytest.MonkeyPatch, args: List[str], error: str
) -> None:
    fake = FakeApi(FILES)
    out = fleetctl(monkeypatch, fake, "web@*.service", *args)
    assert out.exit_code == 2 and error in out.stderr, out.output
    assert fake.calls == []


def test_plain_restart_of_a_glob_restarts_all_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeApi(FILES)
    out = fleetctl(monkeypatch, fake, "web@*.service", "--no-block")
    assert out.exit_code == 0
    assert fake.restarts() == [["web@1.service", "web@2.service", "web@10.service"]]
    assert out.output.splitlines() == [f"Triggered unit web@{i}.service restart"
                                       for i in (1, 2, 10)]
    plain = FakeApi(FILES)
    assert fleetctl(monkeypatch, plain, "db.service", "--no-block").exit_code == 0
    assert plain.calls == [("POST", "/v1/units/restart", {"names": ["db.service"]})]


def test_a_wait_longer_than_fleetds_longest_is_asked_again(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    # fleetd ends any wait after an hour with "timeout"; a longer --timeout asks again
    assert cli_units._MAX_WAIT_S == waits.MAX_WAIT_S
    fake = FakeApi(FILES, {"db.service": [
        {"reached": False, "timeout": True, "why": "starting on h1"},
        {"reached": True, "why": "running on h1 (pid 7)"}]})
    out = fleetctl(monkeypatch, fake, "db.service", "--timeout", "7200")
    assert out.exit_code == 0, out.output
    assert out.output == "Unit db.service restarted: running on h1 (pid 7)\n"
    assert [p.split("?")[1] for p in fake.waits()] == [
        "until=running&timeout=3600.000", "until=running&timeout=3600.000"]


def test_a_wait_that_runs_out_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeApi(FILES, {"db.service": {"reached": False, "timeout": True,
                                          "why": "starting on h1"}})
    out = fleetctl(monkeypatch, fake, "db.service", "--timeout", "0.1")
    assert out.exit_code == 1
    assert "Error: db.service: timed out: starting on h1" in out.stderr


# --- the API's healthy verdict ------------------------------------------------------------
CHECK = {"type": "tcp", "on_failure": "restart"}
REPORT_ONLY = {"type": "tcp", "on_failure": "none"}


def report(state: str = protocol.RUNNING, health: str = "unknown", restarts: int = 0,
           error: Optional[str] = None, generation: int = 1, pid: Optional[int] = 42
           ) -> ObservedRecord:
    return ObservedRecord(unit="web@1.service", machine="h2", hash="h", state=state,
                          pid=pid, started_at=1.0, exit_status=None, restarts=restarts,
                          error=error, updated_at=1.0, generation=generation, health=health)


@pytest.mark.parametrize("row, check, verdict, why", [
    (report(), None, True, "healthy on h2 (pid 42, running; no health check)"),
    (report(health="passing"), CHECK, True, "healthy on h2 (pid 42, health check passing)"),
    (report(), CHECK, None, "running on h2 (pid 42), health check not passing yet"),
    (report(protocol.STARTING, pid=None), CHECK, None, "starting on h2"),
    (report(protocol.STOPPED, pid=None), None, None, "stopped on h2"),
    (report(health="failing"), CHECK, None,
     "health check failing on h2 (pid 42); the agent ends it"),
    (report(health="failing"), REPORT_ONLY, False, "health check failing on h2 (pid 42)"),
    (report(protocol.STARTING, error="health check failing: refused", pid=None), CHECK, False,
     "ended on h2 and is being restarted by its policy: health check failing: refused"),
    (report(protocol.FAILED, error="start limit hit", pid=None), CHECK, False,
     "failed on h2: start limit hit"),
    (report(protocol.EXITED, pid=None), None, False, "exited on h2: exited"),
    (report(health="passing", restarts=1), CHECK, False,
     "restarted 1 time(s) on h2 (pid 42) by its policy since this restart"),
])
def test_healthy_verdict(row: ObservedRecord, check: Optional[Dict[str, Any]],
                         verdict: Optional[bool], why: str) -> None:
    assert waits.healthy_verdict(row, check) == (verdict, why)


WEB = "[Service]\nExecStart=/bin/sleep 100\n[X-Check]\nType=tcp\nPort=80\n"
PLAIN = "[Service]\nExecStart=/bin/sleep 100\n"


def daemon(tmp_path: Any, text: str) -> Tuple[Units, SqliteRegistry]:
    registry = SqliteRegistry(str(tmp_path / "registry.db"))
    at_once(registry.put_units([UnitInput("web@1.service", text, content_hash(text))], LAUNCHED))
    at_once(registry.set_placements([("web@1.service", "h2", "test")]))
    placement = Snapshot.of({("web@1.service", "h2"): content_hash(text)}, {}, {},
                            frozenset(), 1.0)
    return Units(registry, Fixed(placement), Changes(), lambda: None, {},
                 CompiledUnits()), registry


def observe(registry: SqliteRegistry, text: str, generation: int, health: str,
            state: str = protocol.RUNNING) -> None:
    at_once(registry.upsert_observed(ObservedRecord(
        unit="web@1.service", machine="h2", hash=content_hash(text), state=state, pid=42,
        started_at=1.0, exit_status=None, restarts=0, error=None, updated_at=1.0,
        generation=generation, health=health)))


def test_after_a_restart_only_the_new_generation_counts(tmp_path: Any) -> None:
    d, registry = daemon(tmp_path, WEB)
    observe(registry, WEB, 0, "passing")
    assert d.verdict("web@1.service", "healthy")[0] is True
    at_once(registry.restart(["web@1.service"]))
    # the old program's passing report is about the generation before the restart
    assert d.verdict("web@1.service", "healthy") == (
        None, "placed on h2, not reported there yet")
    observe(registry, WEB, 1, "unknown")
    assert d.verdict("web@1.service", "healthy") == (
        None, "running on h2 (pid 42), health check not passing yet")
    assert d.verdict("web@1.service", "running")[0] is True  # running is less
    observe(registry, WEB, 1, "passing")
    assert d.verdict("web@1.service", "healthy") == (
        True, "healthy on h2 (pid 42, health check passing)")


def test_without_a_check_running_is_healthy_and_a_stopped_unit_never_will_be(
    tmp_path: Any
) -> None:
    d, registry = daemon(tmp_path, PLAIN)
    observe(registry, PLAIN, 0, "unknown")
    assert d.verdict("web@1.service", "healthy") == (
        True, "healthy on h2 (pid 42, running; no health check)")
    at_once(registry.set_desired(["web@1.service"], LOADED))
    assert d.verdict("web@1.service", "healthy") == (
        False, "no longer launched (desired state loaded)")
