"""A lab host's sshd: a plain host runs this machine's sshd in its own namespaces, with a
config the lab writes (``config``); a systemd host runs the guest's own (ssh.service),
to which the lab adds only a drop-in (``GUEST_CONFIG``). Either way, the one host key is
the one the lab's known_hosts lists, and root logs in with the lab's key only.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from typing import Optional

from fleetd import procfs
from fleetd.lab.host import AGENT_STATE_MOUNT, Host, LabError

SSHD = "/usr/sbin/sshd"

PLAIN_CONFIG = """\
# fleet lab host: key-only root login, on this host's own address and loopback
Port 22
ListenAddress {address}
ListenAddress 127.0.0.1
HostKey /etc/ssh/ssh_host_ed25519_key
AuthorizedKeysFile /etc/ssh/authorized_keys/%u
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
UseDNS no
PidFile /run/sshd.pid
MaxStartups 100:30:200
# as Debian's own sshd_config: fleetd's bootstrap pushes the agent over SFTP
Subsystem sftp internal-sftp
"""

# A systemd host's sshd is the rootfs's own (Debian's sshd_config, ssh.service); the lab
# adds only this drop-in. Its one host key is the one in known_hosts: no others exist.
GUEST_CONFIG = """# fleet lab: key-only root login; the host key the lab's known_hosts lists
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
MaxStartups 100:30:200
"""


def config(address: str) -> str:
    """A plain host's sshd_config."""
    return PLAIN_CONFIG.format(address=address)


def start(h: Host) -> None:
    """A plain host's own sshd, in the host's network namespace and a mount and UTS
    namespace of its own (its /etc/ssh, /root, /run, /etc/hosts and agent state)."""
    script = (
        f"hostname {h.name} && "
        "mount -t tmpfs -o mode=755 tmpfs /run && mkdir -m 755 /run/sshd && "
        f"mount --bind {h.dir}/etc-ssh /etc/ssh && "
        f"mount --bind {h.dir}/root /root && "
        f"mount --bind {h.dir}/hosts /etc/hosts && "
        f"mount --bind {h.state_dir} {AGENT_STATE_MOUNT} && "
        f"echo $$ > {h.dir}/sshd.pid && "
        f"exec {SSHD} -D -e -f /etc/ssh/sshd_config"
    )
    with open(os.path.join(h.dir, "sshd.log"), "ab") as log:
        # setsid -f: sshd is nobody's child here, so nothing waits to reap it
        subprocess.run(
            ["setsid", "-f", "nsenter", f"--net=/run/netns/{h.netns}", "unshare",
             "--mount", "--uts", "--propagation", "private", "sh", "-c", script],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, check=True,
        )


def wait(h: Host, timeout: float = 10.0) -> None:
    """Until ``h``'s sshd listens on its address (LabError past ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:  # the bridge routes the machine to every host's address
            socket.create_connection((h.address, 22), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.01)
    with open(os.path.join(h.dir, "sshd.log"), errors="replace") as f:
        tail = f.read()[-1000:]
    raise LabError(f"sshd of {h.name} did not listen on {h.address}:22 within "
                   f"{timeout:.0f}s: {tail}")


def configure(h: Host, **options: Optional[str]) -> None:
    """Set ``options`` in a plain host's sshd_config (None: remove the keyword) and
    restart its sshd with them: ``configure(h, AllowStreamLocalForwarding="no")`` makes a
    host whose sshd refuses fleetd's forwarding, as some sites' do. Connections already
    open end with the old sshd (it is stopped, not reloaded: a reload would leave a
    moment with no listener, and a connection made in it would be refused)."""
    if h.systemd:
        raise LabError(f"{h.name}: only a plain host's sshd is configured this way")
    path = os.path.join(h.dir, "etc-ssh", "sshd_config")
    with open(path) as f:  # sshd takes a keyword's first value: drop the old ones
        kept = [ln for ln in f.read().splitlines()
                if ln.split(None, 1)[:1] not in [[k] for k in options]]
    with open(path, "w") as f:
        f.write("\n".join(kept + [f"{k} {v}" for k, v in options.items() if v is not None])
                + "\n")
    with open(os.path.join(h.dir, "sshd.pid")) as f:
        pid = int(f.read().strip())
    if procfs.comm(pid) == "sshd":
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while procfs.alive(pid):  # not our child: init reaps it, alive skips a zombie
            if time.monotonic() > deadline:
                raise LabError(f"sshd of {h.name} (pid {pid}) did not stop on SIGTERM")
            time.sleep(0.01)
    start(h)
    wait(h)
