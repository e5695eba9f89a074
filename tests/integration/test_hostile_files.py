"""Files a caller names to fleetd (``machine add --known-hosts``, ``--identity``) that are
not what they claim to be: the answer names the file and what is wrong with it, and never
quotes a line of it - fleetd runs as root, the caller may not be able to read that file.

A real fleetd process, the real fleetctl, and a real SSH server on 127.0.0.1 (asyncssh,
in a thread of the test) for fleetd to reach, so the files are read where they would be:
as fleetd connects."""

from __future__ import annotations

import asyncio
import threading
from typing import Any, Iterator

import asyncssh
import pytest
from labkit import Fleet, wait_for

SECRET = "root:$6$Sup3rS3cretHash$abcdefgh:19000:0:99999:7:::"


@pytest.fixture
def sshd() -> Iterator[str]:
    """USER@HOST:PORT of an SSH server that lets nobody in: the files are read first."""
    loop = asyncio.new_event_loop()
    key = asyncssh.generate_private_key("ssh-ed25519")
    server = loop.run_until_complete(asyncssh.listen("127.0.0.1", 0, server_host_keys=[key]))
    port = server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    yield f"root@127.0.0.1:{port}"
    loop.call_soon_threadsafe(server.close)
    loop.call_soon_threadsafe(loop.stop)
    thread.join()
    loop.close()


@pytest.fixture
def shadow(tmp_path: Any) -> str:
    path = tmp_path / "shadow"
    path.write_text(f"{SECRET}\ndaemon:*:19000:0:99999:7:::\n")
    path.chmod(0o600)
    return str(path)


@pytest.fixture
def good_key(tmp_path: Any) -> str:
    path = tmp_path / "id_ed25519"
    asyncssh.generate_private_key("ssh-ed25519").write_private_key(str(path))
    return str(path)


@pytest.fixture
def good_known_hosts(tmp_path: Any) -> str:
    key = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    path = tmp_path / "known_hosts"
    path.write_text(f"# a comment\n\n127.0.0.1 {key}")
    return str(path)


def test_a_known_hosts_file_that_is_not_one_is_named_not_quoted(
        lone_fleet: Fleet, sshd: str, shadow: str, good_key: str) -> None:
    out = lone_fleet.ctl("machine", "add", sshd, "--known-hosts", shadow,
                         "--identity", good_key, "--no-wait", check=False)
    assert out.returncode != 0
    said = out.stdout + out.stderr
    assert "$6$" not in said and "Sup3rS3cret" not in said and "root:" not in said, said
    assert f"{shadow} is not a known_hosts file: line 1 is not HOST KEYTYPE KEY" in said, said
    assert "Traceback" not in said and "500" not in said, said
    assert lone_fleet.machines() == {}


def test_the_first_bad_line_is_the_one_named(lone_fleet: Fleet, sshd: str,
                                            good_known_hosts: str, good_key: str) -> None:
    with open(good_known_hosts, "a") as f:
        f.write(f"\n{SECRET}\n")
    out = lone_fleet.ctl("machine", "add", sshd, "--known-hosts",
                         good_known_hosts, "--identity", good_key, "--no-wait", check=False)
    said = out.stdout + out.stderr
    assert out.returncode != 0 and "Sup3rS3cret" not in said, said
    assert f"{good_known_hosts} is not a known_hosts file: line 5 is not HOST KEYTYPE " \
           "KEY" in said, said


def test_an_identity_that_is_not_a_key_is_named_not_quoted(
        lone_fleet: Fleet, sshd: str, shadow: str, good_known_hosts: str) -> None:
    out = lone_fleet.ctl("machine", "add", sshd, "--known-hosts",
                         good_known_hosts, "--identity", shadow, "--no-wait", check=False)
    assert out.returncode != 0
    said = out.stdout + out.stderr
    assert "Sup3rS3cret" not in said and "root:" not in said, said
    assert f"{shadow} is not an SSH private key fleetd can use" in said, said
    assert "Traceback" not in said and "500" not in said, said
    assert lone_fleet.machines() == {}


def test_a_registered_machine_says_the_same_in_its_error(
        lone_fleet: Fleet, sshd: str, shadow: str, good_key: str) -> None:
    """With --agent-command the machine is registered at once and its session reads the
    file: list-machines shows its error, which must not quote the file either."""
    lone_fleet.ctl("machine", "add", sshd, "--name", "m1", "--known-hosts", shadow,
                   "--identity", good_key, "--agent-command", "true", "--no-wait")
    error = wait_for("m1's session to fail",
                     lambda: lone_fleet.machines()["m1"].get("error"))
    assert "Sup3rS3cret" not in error and "root:" not in error, error
    assert f"{shadow} is not a known_hosts file: line 1 is not HOST KEYTYPE KEY" in error
    assert lone_fleet.machines()["m1"]["state"] == "error"
    listed = lone_fleet.ctl("list-machines", "--full").stdout
    assert "Sup3rS3cret" not in listed, listed
