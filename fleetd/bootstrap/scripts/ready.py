"""ready.py STATE_DIR TIMEOUT_S SERVICE: wait for the agent's socket; prints pid=PID.

A systemd service (SERVICE, or "" for a detached agent) whose agent exits has failed at
once: systemd restarts it and NRestarts grows. Its journal then says why."""

import os
import socket
import subprocess
import sys
import time


def restarts(service: str) -> str:
    out = subprocess.run(["systemctl", "show", "-p", "NRestarts", "--value", service],
                         stdout=subprocess.PIPE, text=True)
    return out.stdout.strip()


def journal(service: str) -> str:
    out = subprocess.run(["journalctl", "-u", service, "-n", "8", "-o", "cat", "--no-pager"],
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return out.stdout.strip()


def main() -> None:
    state, timeout, service = sys.argv[1], float(sys.argv[2]), sys.argv[3]
    path = os.path.join(state, "agent.sock")
    before = restarts(service) if service else ""
    deadline = time.monotonic() + timeout
    while True:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            s.connect(path)
            break
        except OSError as exc:
            if service and restarts(service) != before:
                sys.exit(f"{service} exited and is being restarted by systemd:\n"
                         f"{journal(service)}")
            if time.monotonic() > deadline:
                sys.exit(f"the agent's socket {path} did not answer within {int(timeout)}s: "
                         f"{exc}" + (("\n" + journal(service)) if service else ""))
            time.sleep(0.05)
        finally:
            s.close()
    with open(os.path.join(state, "agent.pid")) as f:
        print("pid=" + f.read().strip())


if __name__ == "__main__":
    main()
