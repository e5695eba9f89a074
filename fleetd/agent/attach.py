"""``fleet-agent attach``: what fleetd runs over SSH to reach the agent.

Where the host's sshd allows stream-local forwarding (Debian's does by default), fleetd
runs only ``attach --start-only`` - and only when the agent's socket does not answer:
it starts the agent, waits for its socket, prints the path and exits; fleetd then
speaks to that socket through sshd, and nothing but the agent stays on the host
(fleetd.transport.forward). Elsewhere ``attach`` is the relay:

It connects to the agent's Unix socket, starting the agent first if none runs, and then
relays bytes both ways between its stdin/stdout (the SSH channel) and the socket. It
holds no state: when the SSH connection drops it exits, and the agent, in its own
session, goes on supervising. So no port opens on the host; only sshd is exposed.
"""

from __future__ import annotations

import os
import selectors
import socket
import subprocess
import sys
import time
from typing import List, Optional

from fleetd.agent.state import AgentState

START_TIMEOUT_S = 10.0


def _connect(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError:
        sock.close()
        raise
    return sock


def start_agent(state: AgentState, launcher: Optional[List[str]] = None,
                service: Optional[str] = None) -> None:
    """Start the agent daemon detached: new session, no terminal, log to agent.log.

    ``launcher`` runs this agent's code (default: ``python -m fleetd.agent.main``);
    with ``service`` the agent is a systemd service, and systemd starts it (a detached
    one would hold the state directory's lock, and the service's would exit)."""
    with open(state.log_path, "ab") as logf:
        if service:
            done = subprocess.run(["systemctl", "start", service], stdin=subprocess.DEVNULL,
                                  stdout=logf, stderr=logf, timeout=START_TIMEOUT_S * 3)
            if done.returncode != 0:
                raise SystemExit(f"fleet-agent: systemctl start {service} failed "
                                 f"(exit {done.returncode}); see journalctl -u {service}")
            return
        subprocess.Popen(
            [*(launcher or [sys.executable, "-m", "fleetd.agent.main"]),
             "daemon", "--state-dir", state.root],
            stdin=subprocess.DEVNULL, stdout=logf, stderr=logf,
            start_new_session=True, close_fds=True, cwd="/",
        )


def connect_or_start(state: AgentState, launcher: Optional[List[str]] = None,
                     service: Optional[str] = None) -> socket.socket:
    try:
        return _connect(state.socket_path)
    except (FileNotFoundError, ConnectionRefusedError):
        pass
    start_agent(state, launcher, service)
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            return _connect(state.socket_path)
        except (FileNotFoundError, ConnectionRefusedError):
            if time.monotonic() > deadline:
                raise SystemExit(
                    f"fleet-agent: the agent did not come up within {START_TIMEOUT_S:.0f}s; "
                    f"see {state.log_path}"
                ) from None
            time.sleep(0.005)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def relay(sock: socket.socket, fd_in: int = 0, fd_out: int = 1) -> None:
    sel = selectors.DefaultSelector()
    sel.register(fd_in, selectors.EVENT_READ, "in")
    sel.register(sock, selectors.EVENT_READ, "sock")
    open_in = True
    while True:
        for key, _ in sel.select():
            if key.data == "in":
                data = os.read(fd_in, 65536)
                if not data:
                    open_in = False
                    sel.unregister(fd_in)
                    sock.shutdown(socket.SHUT_WR)  # the agent sees EOF, closes, we exit
                    continue
                sock.sendall(data)
            else:
                try:
                    data = sock.recv(65536)
                except ConnectionResetError:
                    data = b""
                if not data:
                    return
                try:
                    _write_all(fd_out, data)
                except BrokenPipeError:
                    return
        if not open_in and not sel.get_map():
            return


def start_only(state_dir: str, launcher: Optional[List[str]] = None,
               service: Optional[str] = None) -> int:
    """Start the agent unless its socket answers; print ``socket=PATH`` once it does.
    The path is the one fleetd derives too (fleetd.wire.paths); printed, a host whose
    state directory fleetd could not tell (an environment sshd sets) still works."""
    state = AgentState(state_dir)
    connect_or_start(state, launcher, service).close()
    sys.stdout.write(f"socket={state.socket_path}\n")
    sys.stdout.flush()
    return 0


def attach(state_dir: str, launcher: Optional[List[str]] = None,
           service: Optional[str] = None) -> int:
    state = AgentState(state_dir)
    sock = connect_or_start(state, launcher, service)
    try:
        relay(sock)
    finally:
        sock.close()
    return 0
