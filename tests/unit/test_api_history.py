"""``GET /v1/units/{name}/history`` and ``POST /v1/units/{name}/rollback`` on a real
fleetd API (apikit: a real Daemon on SQLite, no machines), and fleetctl's two verbs."""

from __future__ import annotations

from typing import Any, Dict

from apikit import http, post, served
from click.testing import CliRunner

from fleetd.cli.main import cli
from fleetd.daemon.service.versions import ended
from fleetd.registry.base import VersionRecord

TEXT = "[Service]\nExecStart=/bin/sleep {v}\n"


def submit(sock: str, name: str, v: int) -> None:
    status, answer = post(sock, "/v1/units", {"units": [{"name": name, "text": TEXT.format(v=v)}],
                                              "replace": True})
    assert status == 200, answer


def versions(sock: str, name: str) -> Dict[str, Any]:
    status, answer = http(sock, "GET", f"/v1/units/{name}/history")
    assert status == 200, answer
    return dict(answer)


def test_history_lists_each_content_with_who_and_how_it_ended(tmp_path: Any) -> None:
    with served(tmp_path) as fleetd:
        sock = fleetd.config.socket
        for v in (1, 2, 3):
            submit(sock, "web@.service", v)
        submit(sock, "web@.service", 3)  # the same content: no new version
        h = versions(sock, "web@.service")
        assert [(v["version"], v["via"], v["current"]) for v in h["versions"]] == [
            (1, "root (unix socket)", False), (2, "root (unix socket)", False),
            (3, "root (unix socket)", True)]
        assert [v["ended"] for v in h["versions"][:2]] == ["replaced by v2", "replaced by v3"]

        status, answer = post(sock, "/v1/units/web@.service/rollback", {})
        assert status == 200 and answer["to"] == 2, answer
        status, answer = post(sock, "/v1/units/web@.service/rollback", {"to": 1})
        assert status == 200, answer
        h = versions(sock, "web@.service")
        assert [v["via"] for v in h["versions"][3:]] == [
            "rollback to v2 by root (unix socket)", "rollback to v1 by root (unix socket)"]
        assert h["versions"][2]["ended"] == ("rolled back by v4 (rollback to v2 by root "
                                             "(unix socket))")
        assert h["hash"] == h["versions"][0]["hash"]  # v1's content again


def test_rollback_refusals_name_what_is_wrong(tmp_path: Any) -> None:
    with served(tmp_path) as fleetd:
        sock = fleetd.config.socket
        submit(sock, "a.service", 1)
        status, answer = post(sock, "/v1/units/a.service/rollback", {})
        assert status == 400 and "no earlier content to go back to (versions kept: v1-v1)" \
            in answer["error"], answer
        status, answer = post(sock, "/v1/units/a.service/rollback", {"to": 7})
        assert status == 404 and "a.service has no version 7" in answer["error"], answer
        status, answer = post(sock, "/v1/units/a.service/rollback", {"to": 1})
        assert status == 400 and "has the content of v1 already" in answer["error"], answer
        status, answer = post(sock, "/v1/units/a.service/rollback", {"to": "1"})
        assert status == 400 and "to: want a version number" in answer["error"], answer
        status, answer = post(sock, "/v1/units/nope.service/rollback", {})
        assert status == 404 and "nope.service does not exist" in answer["error"], answer
        status, answer = http(sock, "GET", "/v1/units/nope.service/history")
        assert status == 404, answer


def test_how_a_version_ended_comes_from_the_one_after_it() -> None:
    def v(n: int, via: str) -> VersionRecord:
        return VersionRecord("web@.service", n, f"h{n}", float(n), via)
    vs = [v(1, "alice"), v(2, "bob"), v(3, "AutoRevert: v2 (h2) failed (web@1.service "
                                            "failed: boom)")]
    assert ended(vs, 0, "") == "replaced by v2"
    assert ended(vs, 1, "") == ("failed: reverted by v3 (AutoRevert: v2 (h2) failed "
                                "(web@1.service failed: boom))")
    assert ended(vs, 2, "v3 (h3) on all 3 copies") == "v3 (h3) on all 3 copies"
    assert ended(vs, 2, "") == "current"


def test_fleetctl_history_and_rollback(tmp_path: Any) -> None:
    with served(tmp_path) as fleetd:
        sock = fleetd.config.socket
        submit(sock, "a.service", 1)
        submit(sock, "a.service", 2)
        env = {"FLEETCTL_ENDPOINT": f"unix://{sock}"}
        out = CliRunner().invoke(cli, ["history", "a.service"], env=env)
        assert out.exit_code == 0, out.output
        lines = out.output.splitlines()
        assert lines[0].split() == ["VERSION", "HASH", "SUBMITTED", "VIA", "ENDED"]
        assert lines[1].startswith("v1 ") and "replaced by v2" in lines[1]
        assert lines[2].startswith("v2 *") and lines[2].endswith("current")
        out = CliRunner().invoke(cli, ["rollback", "a.service", "--to", "1"], env=env)
        assert out.exit_code == 0 and "a.service: back to v1 (" in out.output, out.output
        out = CliRunner().invoke(cli, ["rollback", "a.service", "--to", "9"], env=env)
        assert out.exit_code != 0 and "a.service has no version 9" in out.output, out.output


def test_rollout_options_stay_with_the_version_and_promote_clears_the_canary(
        tmp_path: Any) -> None:
    with served(tmp_path) as fleetd:
        sock = fleetd.config.socket
        submit(sock, "web@.service", 1)
        env = {"FLEETCTL_ENDPOINT": f"unix://{sock}"}
        path = tmp_path / "web@.service"
        path.write_text(TEXT.format(v=2))
        out = CliRunner().invoke(cli, ["submit", "--replace", "--canary", "1",
                                       "--max-parallel", "2", "--min-healthy", "3s",
                                       "--no-auto-revert", str(path)], env=env)
        assert out.exit_code == 0, out.output
        h = versions(sock, "web@.service")
        assert h["versions"][1]["options"] == {"canary": 1, "max_parallel": 2,
                                               "min_healthy_s": 3.0, "auto_revert": False}
        out = CliRunner().invoke(cli, ["promote", "web@.service"], env=env)
        assert out.exit_code == 0 and "web@.service: v2 promoted" in out.output, out.output
        options = versions(sock, "web@.service")["versions"][1]["options"]
        assert options["canary"] == 0 and options["promoted_by"] == "root (unix socket)"
        status, answer = post(sock, "/v1/units/web@.service/promote", {})
        assert status == 400 and "has no canary waiting to be promoted" in answer["error"]


def test_bad_rollout_options_are_refused_naming_the_option(tmp_path: Any) -> None:
    with served(tmp_path) as fleetd:
        sock = fleetd.config.socket
        for rollout, says in [
            ({"canary": -1}, "rollout.canary: want a whole number from 0 to 10000"),
            ({"canary": 1.5}, "rollout.canary: want a whole number"),
            ({"max_parallel": True}, "rollout.max_parallel: want a whole number"),
            ({"min_healthy_s": "5s"}, "rollout.min_healthy_s: want a number"),
            ({"auto_revert": "yes"}, "rollout.auto_revert: want true or false"),
            ({"canari": 1}, "rollout.canari: unknown option (known: canary, "),
            ([1], "rollout: want an object of rollout options"),
        ]:
            status, answer = post(sock, "/v1/units", {
                "units": [{"name": "a.service", "text": TEXT.format(v=1)}], "rollout": rollout})
            assert status == 400 and says in answer["error"], (rollout, answer)
        status, answer = http(sock, "GET", "/v1/units/a.service/history")
        assert status == 404  # nothing was stored
