"""``fleetctl ssh``'s plan (issue 14): which machine a MACHINE|UNIT argument means, the
ssh command line (strict host keys, fleetd's files only), and who may ask fleetd where
its files are. tests/integration/test_fleetctl_ssh.py runs it against real sshd."""

from __future__ import annotations

import os
from typing import Any, Dict

import click
import pytest
from apikit import http, post, served

from fleetd.cli.ssh import machine_named, machine_of, ssh_argv, unreadable
from fleetd.cli.unitargs import unit_name
from fleetd.daemon.http import roles

MACHINES = [{"name": "h1", "machine_id": "abc123"}, {"name": "h2", "machine_id": "abd456"},
            {"name": "abd", "machine_id": None}]
INFO: Dict[str, Any] = {"name": "h1", "address": "10.0.0.1", "port": 2222, "user": "core",
                        "identity": "/etc/fleetd/id_ed25519",
                        "known_hosts": "/etc/fleetd/known_hosts"}


def test_the_command_line_checks_host_keys_strictly_against_fleetds_file_alone() -> None:
    argv = ssh_argv(INFO, ["ls", "-l"])
    assert argv == ["ssh", "-o", "StrictHostKeyChecking=yes",
                    "-o", "UserKnownHostsFile=/etc/fleetd/known_hosts",
                    "-o", "GlobalKnownHostsFile=/dev/null", "-o", "UpdateHostKeys=no",
                    "-p", "2222", "-l", "core",
                    "-i", "/etc/fleetd/id_ed25519", "-o", "IdentitiesOnly=yes",
                    "--", "10.0.0.1", "ls", "-l"]
    shell = ssh_argv({**INFO, "identity": None, "known_hosts": "/a b/kh"}, [])
    assert "-i" not in shell and shell[-2:] == ["--", "10.0.0.1"]
    assert 'UserKnownHostsFile="/a b/kh"' in shell


def test_a_machine_is_named_by_its_name_or_a_unique_start_of_its_id() -> None:
    assert machine_named("h2", MACHINES) == "h2"
    assert machine_named("abc", MACHINES) == "h1"
    assert machine_named("abd", MACHINES) == "abd"  # a name before an id's prefix
    assert machine_named("web.service", MACHINES) is None
    with pytest.raises(click.UsageError, match="several machines' ids: h1, h2"):
        machine_named("ab", MACHINES)


def test_a_unit_is_where_it_is_placed() -> None:
    assert unit_name("web") == "web.service" and unit_name("web@1.service") == "web@1.service"
    assert machine_of({"unit": "a.service", "machine": "h2", "machines": ["h2"]}) == "h2"
    with pytest.raises(click.UsageError, match="runs on several machines: name one of h1, h2"):
        machine_of({"unit": "g.service", "machine": "global (2)", "machines": ["h1", "h2"]})
    with pytest.raises(click.ClickException, match=r"a\.service is not on any machine"):
        machine_of({"unit": "a.service", "machine": None, "machines": []})


def test_files_this_user_cannot_read_are_named(tmp_path: Any) -> None:
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    assert unreadable({**INFO, "identity": None, "known_hosts": str(kh)}) is None
    said = unreadable({**INFO, "known_hosts": str(kh)})
    assert said is not None and "/etc/fleetd/id_ed25519" in said and "h1" in said
    if os.geteuid() != 0:  # root reads any file
        kh.chmod(0)
        assert "is not readable" in (unreadable({**INFO, "identity": None,
                                                 "known_hosts": str(kh)}) or "")


def test_where_fleetds_key_is_is_for_admins_only_and_names_no_secret(tmp_path: Any) -> None:
    assert roles.required("GET", "/v1/machines/{name}/ssh") == roles.ADMIN
    with served(tmp_path) as fleetd:
        sock = fleetd.config.socket
        status, answer = http(sock, "GET", "/v1/machines/nope/ssh")
        assert status == 404 and "machine nope does not exist" in answer["error"]


def test_fleetd_says_where_its_files_for_a_machine_are(tmp_path: Any) -> None:
    key, kh = tmp_path / "id", tmp_path / "kh"
    key.write_text("not read by fleetd here")
    kh.write_text("")
    with served(tmp_path) as fleetd:
        sock = fleetd.config.socket
        status, added = post(sock, "/v1/machines", {
            "address": "10.0.0.9", "port": 2200, "user": "core", "name": "m9",
            "identity": str(key), "known_hosts": str(kh), "agent_command": "true"})
        assert status == 201, added
        status, answer = http(sock, "GET", "/v1/machines/m9/ssh")
    assert status == 200
    assert answer == {"name": "m9", "address": "10.0.0.9", "port": 2200, "user": "core",
                      "identity": str(key), "known_hosts": str(kh)}
