"""The SSH transport's Shell side (run a command to its end, write a file over SFTP)
against an in-process asyncssh server."""

from __future__ import annotations

import asyncio
import os
import stat
from pathlib import Path

import pytest
from inproc_ssh import ssh_server

from fleetd.transport.base import TransportError


def test_run_collects_exit_status_stdout_stderr_and_feeds_stdin(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with ssh_server(str(tmp_path)) as t:
            ok = await t.run("cat; echo oops >&2")
            assert (ok.exit_status, ok.stdout, ok.stderr) == (0, "", "oops\n")
            fed = await t.run("tr a-z A-Z", input="hello\n")
            assert fed.ok and fed.stdout == "HELLO\n"
            failed = await t.run("echo out; exit 3")
            assert (failed.exit_status, failed.stdout, failed.ok) == (3, "out\n", False)
            script = await t.run("sh -s -- one 'two words'", input='echo "$1|$2"\n')
            assert script.stdout == "one|two words\n"
            # one connection serves every command
            assert t._conn is not None and not t._conn.is_closed()

    asyncio.run(scenario())


def test_run_past_its_timeout_is_a_command_error(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with ssh_server(str(tmp_path)) as t:
            with pytest.raises(TransportError) as err:
                await t.run("sleep 5", timeout=0.3)
            assert err.value.kind == "command"
            assert "'sleep' did not end within 0.3s" in str(err.value)

    asyncio.run(scenario())


def test_put_writes_the_file_with_its_mode(tmp_path: Path) -> None:
    target = tmp_path / "dir" / "payload.zip"
    target.parent.mkdir()
    data = os.urandom(300_000)  # several SFTP writes' worth

    async def scenario() -> None:
        async with ssh_server(str(tmp_path)) as t:
            await t.put(str(target), data, 0o600)
            await t.put(str(tmp_path / "small"), b"x", 0o755)

    asyncio.run(scenario())
    assert target.read_bytes() == data
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "small").stat().st_mode) == 0o755


def test_put_into_a_missing_directory_names_the_file(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with ssh_server(str(tmp_path)) as t:
            with pytest.raises(TransportError) as err:
                await t.put(str(tmp_path / "nope" / "f"), b"x")
            assert err.value.kind == "sftp"
            assert f"writing {tmp_path}/nope/f over SFTP" in str(err.value)
            assert (await t.run("true")).ok  # the connection survives

    asyncio.run(scenario())


def test_put_without_an_sftp_subsystem_says_so(tmp_path: Path) -> None:
    async def scenario() -> None:
        async with ssh_server(str(tmp_path), sftp=False) as t:
            with pytest.raises(TransportError) as err:
                await t.put(str(tmp_path / "f"), b"x")
            assert err.value.kind == "sftp"
            assert "SFTP" in str(err.value)
            # not a failed write: the subsystem is missing, and the message says what to fix
            assert "the host's SFTP server did not start" in str(err.value)
            assert "Subsystem sftp in sshd_config" in str(err.value)
            assert (await t.run("true")).ok  # the connection survives

    asyncio.run(scenario())


def test_run_on_a_host_with_an_untrusted_key_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    async def scenario() -> None:
        async with ssh_server(str(tmp_path), trust=False) as t:
            with pytest.raises(TransportError) as err:
                await t.run(f"touch {marker}")
            assert err.value.kind == "hostkey"

    asyncio.run(scenario())
    assert not marker.exists()
