"""``fleetctl ssh MACHINE|UNIT -- COMMAND`` through the real fleetctl, the real ssh and
the lab's real sshd (issue 14): the command runs on that machine, reached with fleetd's
key and known_hosts file for it."""

from __future__ import annotations

import os
import subprocess

from labkit import ROOT, Fleet

from fleetd.cli.ssh import ssh_argv

HELLO = os.path.join(ROOT, "units", "hello.service")
WHERE = ["--", "echo $SSH_CONNECTION; id -un"]  # as ssh: the remote shell reads it


def server_address(stdout: str) -> str:
    return stdout.splitlines()[0].split()[2]  # client, its port, server, its port


def test_ssh_runs_a_command_on_the_machine_or_the_units(cluster: Fleet) -> None:
    for h in cluster.lab.hosts():  # type: ignore[union-attr]
        out = cluster.ctl("ssh", h.name, *WHERE)
        assert server_address(out.stdout) == h.address
        assert out.stdout.splitlines()[1] == "root"

    cluster.ctl("start", HELLO)
    on = cluster.host(cluster.unit("hello.service")["machine"])  # type: ignore[index]
    assert server_address(cluster.ctl("ssh", "hello.service", *WHERE).stdout) == on.address
    assert server_address(cluster.ctl("ssh", "hello", *WHERE).stdout) == on.address

    # the command's exit status is fleetctl's
    assert cluster.ctl("ssh", "h1", "--", "exit", "7", check=False).returncode == 7
    nothing = cluster.ctl("ssh", "nope", "--", "true", check=False)
    assert nothing.returncode == 2 and "no machine or unit named 'nope'" in nothing.stderr


def test_a_host_key_not_in_fleetds_file_is_refused(cluster: Fleet, tmp_path) -> None:
    """The command line fleetctl ssh runs checks host keys strictly: with a known_hosts
    file that lacks the host's key, the real ssh refuses and runs nothing."""
    info = cluster.api.get("/v1/machines/h1/ssh")
    assert info["known_hosts"] == cluster.lab.known_hosts  # type: ignore[union-attr]
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    argv = ssh_argv({**info, "known_hosts": str(empty)}, ["touch", str(tmp_path / "ran")])
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 255
    assert "Host key verification failed" in proc.stderr
    assert not (tmp_path / "ran").exists()  # the lab's hosts share this file system
