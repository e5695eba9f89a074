"""An SSH server in the test's own event loop (asyncssh), for the transport and bootstrap
tests: a fresh host key and client key in memory, a known_hosts file that trusts exactly
that host key, commands run by ``/bin/sh -c`` here (with ``env`` added), and SFTP on the
local file system when ``sftp`` is set."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from typing import AsyncIterator, Dict, Optional

import asyncssh

from fleetd.transport.ssh import SshTransport


class _Server(asyncssh.SSHServer):
    def begin_auth(self, username: str) -> bool:
        return True  # the client's key is checked: authorized_client_keys


def _handler(env: Dict[str, str]):  # type: ignore[no-untyped-def]
    async def handle(process: asyncssh.SSHServerProcess) -> None:  # type: ignore[type-arg]
        local = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", process.command or "true",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env={**os.environ, **env},
            start_new_session=True)  # a process group of its own, to end as a whole
        assert local.stdin and local.stdout and local.stderr

        async def feed() -> None:
            assert local.stdin
            try:
                while data := await process.stdin.read(65536):
                    local.stdin.write(data)
                    await local.stdin.drain()
            except (asyncssh.Error, ConnectionError, BrokenPipeError):
                pass
            local.stdin.close()

        async def pump(src: asyncio.StreamReader, dst: asyncssh.SSHWriter) -> None:  # type: ignore[type-arg]
            while data := await src.read(65536):
                dst.write(data)

        feeding = asyncio.ensure_future(feed())
        try:
            await asyncio.gather(pump(local.stdout, process.stdout),
                                 pump(local.stderr, process.stderr))
            status = await local.wait()
        finally:
            feeding.cancel()
            # A session that ends first (the client gave up on a timeout, the test's loop
            # is shutting down) ends its command here and reaps it: left running, it
            # outlives the test, and its subprocess transport is collected after the loop
            # closed ("Event loop is closed" in whichever test runs then).
            if local.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(local.pid, signal.SIGKILL)  # sh and what it started
                await local.wait()
        process.exit(status)
    return handle


@contextlib.asynccontextmanager
async def ssh_server(tmp: str, *, sftp: bool = True, env: Optional[Dict[str, str]] = None,
                     trust: bool = True) -> AsyncIterator[SshTransport]:
    """A client transport connected to a server on 127.0.0.1; ``trust=False`` leaves the
    server's key out of known_hosts (a stranger's key is there instead)."""
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    identity = os.path.join(tmp, "id_ed25519")
    client_key.write_private_key(identity)
    os.chmod(identity, 0o600)
    server = await asyncssh.listen(
        "127.0.0.1", 0, server_host_keys=[host_key], server_factory=_Server,
        authorized_client_keys=asyncssh.import_authorized_keys(
            client_key.export_public_key().decode()),
        process_factory=_handler(env or {}), encoding=None,
        sftp_factory=True if sftp else None, allow_scp=False)
    port = server.sockets[0].getsockname()[1]
    known = host_key if trust else asyncssh.generate_private_key("ssh-ed25519")
    known_hosts = os.path.join(tmp, "known_hosts")
    with open(known_hosts, "w") as f:
        f.write(f"[127.0.0.1]:{port} {known.export_public_key().decode().strip()}\n")
    transport = SshTransport("127.0.0.1", port, "root", identity, known_hosts)
    try:
        yield transport
    finally:
        await transport.close()
        server.close()
        await server.wait_closed()
