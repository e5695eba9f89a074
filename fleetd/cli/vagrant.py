"""``fleetctl machine add --vagrant DIR``: a Vagrant project's machines, added to fleetd.

Why read ``vagrant ssh-config``: how to reach a Vagrant machine depends on its provider
(VirtualBox forwards a port on 127.0.0.1, libvirt gives the VM's own address, each
machine has its own generated key), and ``vagrant ssh-config`` is the interface Vagrant
keeps stable for exactly this: OpenSSH client configuration, one ``Host`` block per
machine. ``vagrant status --machine-readable`` first says which machines run, because
``vagrant ssh-config`` fails outright on the first machine that does not.

Host keys: Vagrant's configuration turns host key checking off (``StrictHostKeyChecking
no``, ``UserKnownHostsFile /dev/null``); fleetd checks host keys strictly. So each
machine's known_hosts file (``DIR/.vagrant/fleetd/NAME.known_hosts``) gets, in order of
preference:

1. the host key this project pinned, ``DIR/.keys/host_NAME_ed25519.pub`` (this
   repository's ``vagrant/Vagrantfile`` makes one per agent before any VM exists and
   installs it when provisioning): nothing is trusted on first use;
2. else what ``ssh-keyscan`` reads from the machine now: trust on first use. That is
   only as safe as the path to the VM at this moment (normally a local hypervisor's
   network); from then on fleetd refuses a different key.

The user: fleetd logs in as root, with the key ``vagrant ssh-config`` names (its user
is ``vagrant``, but the agent is installed and runs as root; this repository's
Vagrantfile authorizes the box's key for root too). So, as with ``fleetctl machine add
root@HOST``, fleetd checks the host and pushes the agent itself (the bootstrap), unless
``--agent-command`` names an agent already installed there.

Parsing is pure (``parse_ssh_config``, ``parse_status``) and tested on Vagrant's real
output; the rest runs ``vagrant`` (``$FLEETCTL_VAGRANT`` overrides which) and
``ssh-keyscan`` and calls the same ``POST /v1/machines`` as ``fleetctl machine add``.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from dataclasses import dataclass
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple

import click

from fleetd.cli.context import Ctx
from fleetd.cli.output import echo

# the lab's control VMs: "fleetd", or fleetd1..N with FLEETD_SERVERS=N (each an etcd
# member and a fleetd): not machines to place units on
SKIPPED_BY_DEFAULT = re.compile(r"fleetd[0-9]*")
VAGRANT_TIMEOUT_S = 120.0
KEYSCAN_TIMEOUT_S = 5
WAIT_UP_S = 30.0
_KEYWORD = re.compile(r"([A-Za-z][A-Za-z0-9]*)(?:\s*=\s*|\s+|$)(.*)")


class VagrantError(click.ClickException):
    """What went wrong, said for the user (fleetctl prints it and exits 1)."""


@dataclass(frozen=True)
class SshHost:
    """One ``Host`` block of ``vagrant ssh-config``."""

    name: str
    hostname: str
    user: str
    port: int
    identity_files: Tuple[str, ...]


# --- pure parsing -------------------------------------------------------------------------
def _split_line(line: str) -> Optional[Tuple[str, List[str]]]:
    """An ssh_config line -> (lower-case keyword, arguments); None for blanks/comments.
    As OpenSSH: ``Keyword value`` or ``Keyword=value``, double quotes group words."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    match = _KEYWORD.match(line)
    if match is None:
        raise ValueError(f"{line!r} is not 'Keyword value'")
    lexer = shlex.shlex(match.group(2), posix=True)
    lexer.whitespace_split = True
    lexer.commenters = ""
    lexer.quotes = '"'
    lexer.escape = ""  # backslashes are literal in ssh_config (and in Windows paths)
    return match.group(1).lower(), list(lexer)


def parse_ssh_config(text: str) -> List[SshHost]:
    """``vagrant ssh-config`` output -> one SshHost per ``Host`` block, in order.

    Reads Host, HostName, User, Port and IdentityFile (repeatable); other options
    (StrictHostKeyChecking, LogLevel, Include, ...) are ignored. Raises ValueError
    naming the line for what cannot be used."""
    hosts: List[SshHost] = []
    current: Optional[Dict[str, Any]] = None

    def close() -> None:
        if current is None:
            return
        if not current.get("hostname"):
            raise ValueError(f"Host {current['name']}: no HostName")
        hosts.append(SshHost(
            name=current["name"], hostname=current["hostname"],
            user=current.get("user") or "root", port=current.get("port", 22),
            identity_files=tuple(current["identity"]),
        ))

    for number, raw in enumerate(text.splitlines(), 1):
        try:
            parsed = _split_line(raw)
        except ValueError as exc:  # an unbalanced quote, a line with no keyword
            raise ValueError(f"line {number}: {exc}") from None
        if parsed is None:
            continue
        keyword, args = parsed
        if keyword == "host":
            close()
            if len(args) != 1:
                raise ValueError(f"line {number}: want one name after Host, got {args!r}")
            current = {"name": args[0], "identity": []}
            continue
        if current is None:
            raise ValueError(f"line {number}: {raw.strip()!r} comes before any Host line")
        if not args:
            raise ValueError(f"line {number}: {keyword} has no value")
        if keyword == "hostname":
            current["hostname"] = args[0]
        elif keyword == "user":
            current["user"] = args[0]
        elif keyword == "port":
            if not args[0].isdigit() or not 0 < int(args[0]) < 65536:
                raise ValueError(f"line {number}: bad Port {args[0]!r}")
            current["port"] = int(args[0])
        elif keyword == "identityfile":
            current["identity"].append(args[0])
    close()
    return hosts


def parse_status(text: str) -> Dict[str, str]:
    """``vagrant status --machine-readable`` -> {machine: state}, in Vagrant's order.

    Lines are ``TIMESTAMP,TARGET,TYPE,DATA...``; the ``state`` type carries the state id
    (``running``, ``poweroff``, ``not_created``, ``shutoff``, ...)."""
    states: Dict[str, str] = {}
    for line in text.splitlines():
        fields = line.strip().split(",")
        if len(fields) >= 4 and fields[1] and fields[2] == "state":
            states[fields[1]] = fields[3]
    return states


def select_machines(states: Dict[str, str], wanted: Sequence[str]) -> List[str]:
    """The machines to add: those named (each must be running), or else every running
    machine but the lab's fleetd VM(s)."""
    if wanted:
        for name in wanted:
            if name not in states:
                raise VagrantError(f"vagrant has no machine {name!r} "
                                   f"(it has: {', '.join(states) or 'none'})")
            if states[name] != "running":
                raise VagrantError(f"vagrant machine {name} is {states[name]}, not running "
                                   f"(vagrant up {name})")
        return list(dict.fromkeys(wanted))
    chosen = [n for n, s in states.items()
              if s == "running" and not SKIPPED_BY_DEFAULT.fullmatch(n)]
    if not chosen:
        why = [f"{n} is skipped (--machine {n} adds it)" if s == "running" else f"{n} is {s}"
               for n, s in states.items()]
        raise VagrantError(f"no vagrant machine to add in this project: "
                           f"{', '.join(why) or 'it has none'}; vagrant up first")
    return chosen


def known_hosts_host(hostname: str, port: int) -> str:
    """How known_hosts names a host: bare on port 22, else ``[host]:port``."""
    return hostname if port == 22 else f"[{hostname}]:{port}"


def known_hosts_lines(hostname: str, port: int, keys: Iterable[str]) -> List[str]:
    """known_hosts lines for this host from public keys (``TYPE BASE64 [comment]``) or
    ssh-keyscan lines (``HOST TYPE BASE64``); comments and blank lines are dropped."""
    lines = []
    marker = known_hosts_host(hostname, port)
    for key in keys:
        fields = key.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) >= 3 and not fields[0].startswith(("ssh-", "ecdsa-", "sk-")):
            fields = fields[1:]  # ssh-keyscan: "host type key"
        if len(fields) >= 2:
            lines.append(f"{marker} {fields[0]} {fields[1]}")
    return lines


LOGIN_USER = "root"  # the bootstrap installs the agent as root


# --- running vagrant and ssh-keyscan ------------------------------------------------------
def vagrant_executable() -> str:
    return os.environ.get("FLEETCTL_VAGRANT") or "vagrant"


def run_vagrant(directory: str, *args: str) -> str:
    """``vagrant ARGS`` in DIR (where its Vagrantfile is); its stdout."""
    argv = [vagrant_executable(), *args]
    try:
        proc = subprocess.run(argv, cwd=directory, capture_output=True, text=True,
                              timeout=VAGRANT_TIMEOUT_S, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        raise VagrantError(f"{argv[0]}: not found (install Vagrant, or set "
                           "FLEETCTL_VAGRANT to its path)") from None
    except subprocess.TimeoutExpired:
        raise VagrantError(f"{' '.join(argv)} (in {directory}) took over "
                           f"{VAGRANT_TIMEOUT_S:.0f}s") from None
    if proc.returncode != 0:
        raise VagrantError(f"{' '.join(argv)} (in {directory}) exited {proc.returncode}: "
                           f"{(proc.stderr or proc.stdout).strip()[-1500:]}")
    return proc.stdout


def keyscan(hostname: str, port: int) -> List[str]:
    """The host's public keys as ``ssh-keyscan`` reads them now (trust on first use)."""
    argv = ["ssh-keyscan", "-T", str(KEYSCAN_TIMEOUT_S), "-p", str(port), hostname]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                              timeout=KEYSCAN_TIMEOUT_S * 4)
    except FileNotFoundError:
        raise VagrantError("ssh-keyscan: not found (it comes with the OpenSSH client; "
                           "Debian: openssh-client)") from None
    except subprocess.TimeoutExpired:
        proc = subprocess.CompletedProcess(argv, -1, "", "timed out")
    lines = known_hosts_lines(hostname, port, proc.stdout.splitlines())
    if not lines:
        why = " ".join(ln for ln in proc.stderr.splitlines() if not ln.startswith("#"))
        raise VagrantError(f"ssh-keyscan -p {port} {hostname} got no host key"
                           + (f": {why.strip()}" if why.strip() else "")
                           + "; fleetd checks host keys strictly and adds no machine "
                             "whose key it cannot know")
    return lines


@dataclass(frozen=True)
class Plan:
    """One machine to add, with everything fleetd needs for it."""

    host: SshHost
    identity: str
    known_hosts: str
    trust: str  # "pinned" or "keyscan"


def prepare(directory: str, host: SshHost) -> Plan:
    """Pick the machine's key, write its known_hosts file (pinned key or keyscan)."""
    identities = [os.path.abspath(os.path.expanduser(p)) for p in host.identity_files]
    identity = next((p for p in identities if os.path.isfile(p)), None)
    if identity is None:
        raise VagrantError(f"vagrant machine {host.name}: no readable IdentityFile "
                           f"(ssh-config names {', '.join(identities) or 'none'})")
    pinned = os.path.join(directory, ".keys", f"host_{host.name}_ed25519.pub")
    if os.path.isfile(pinned):
        with open(pinned) as f:
            lines = known_hosts_lines(host.hostname, host.port, f.read().splitlines())
        trust = "pinned"
    else:
        lines = keyscan(host.hostname, host.port)
        trust = "keyscan"
    out_dir = os.path.join(directory, ".vagrant", "fleetd")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, f"{host.name}.known_hosts")
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        f.write("".join(f"{ln}\n" for ln in lines))
    os.replace(tmp, path)
    return Plan(host, identity, path, trust)


def add_command(c: Ctx, directory: Optional[str], wanted: Sequence[str],
                metadata: Dict[str, str], agent_command: Optional[str], wait: bool,
                not_with: Dict[str, Optional[str]]) -> None:
    """``fleetctl machine add --vagrant DIR [--machine NAME ...]``; ``not_with``: the
    options that ssh-config decides, which must not be given too."""
    if directory is None:
        raise click.UsageError("--machine names a Vagrant machine: give --vagrant DIR too")
    given = [opt for opt, value in not_with.items() if value is not None]
    if given:
        raise click.UsageError(f"--vagrant takes the address, name, key and host key from "
                               f"vagrant ssh-config: drop {', '.join(given)}")
    add_machines(c, directory, wanted, metadata, agent_command, wait)


def add_machines(c: Ctx, directory: str, wanted: Sequence[str], metadata: Dict[str, str],
                 agent_command: Optional[str], wait: bool) -> None:
    """Add the project's running machines (or those named) to fleetd; with ``wait``, return
    once all are up, or fail naming each machine that is not and why."""
    directory = os.path.abspath(directory)
    names = select_machines(parse_status(run_vagrant(directory, "status", "--machine-readable")),
                            wanted)
    registered = {m["name"] for m in c.call("GET", "/v1/machines")["machines"]}
    for name in names:
        if name in registered:
            click.echo(f"Machine {name} already registered: skipped "
                       f"(fleetctl machine remove {name} first to add it anew)")
    names = [n for n in names if n not in registered]
    if not names:
        return
    try:
        hosts = parse_ssh_config(run_vagrant(directory, "ssh-config", *names))
    except ValueError as exc:
        raise VagrantError(f"vagrant ssh-config (in {directory}): {exc}") from None
    missing = set(names) - {h.name for h in hosts}
    if missing:
        raise VagrantError(f"vagrant ssh-config (in {directory}) says nothing of "
                           f"{', '.join(sorted(missing))}")
    plans = [prepare(directory, h) for h in hosts if h.name in names]  # all, before any add
    added: List[str] = []
    for p in plans:
        h = p.host
        c.call("POST", "/v1/machines", timeout=300, body={
            "address": h.hostname, "port": h.port, "user": LOGIN_USER, "name": h.name,
            "metadata": metadata, "identity": p.identity, "known_hosts": p.known_hosts,
            "agent_command": agent_command,  # None: fleetd bootstraps the agent
        })
        trust = ("pinned host key" if p.trust == "pinned"
                 else "host key from ssh-keyscan, trusted on first use")
        click.echo(f"Machine {h.name} added ({LOGIN_USER}@"
                   f"{known_hosts_host(h.hostname, h.port)}, "
                   f"{trust})")
        added.append(h.name)
    if wait:
        wait_up(c, added)


def wait_up(c: Ctx, names: List[str]) -> None:
    pending = set(names)
    errors: Dict[str, str] = {}
    rows: Dict[str, Dict[str, Any]] = {}
    deadline = time.monotonic() + WAIT_UP_S
    path = "/v1/machines"
    while pending and time.monotonic() < deadline:
        answer = c.call("GET", path, timeout=WAIT_UP_S + 30)
        rows = {m["name"]: m for m in answer["machines"]}
        for name in sorted(pending):
            m = rows.get(name)
            if m is None:
                errors[name] = "removed meanwhile"
            elif m["state"] == "up":
                echo(f"Machine {name} up ({m['address']}, machine id {m['machine_id']})")
            elif m["state"] == "error":
                errors[name] = str(m["error"])
            else:
                continue
            pending.discard(name)
        left = max(0.0, deadline - time.monotonic())
        path = f"/v1/machines?after={answer['version']}&timeout={left:.1f}"  # the next change
    for name in sorted(pending):
        errors[name] = f"not up after {WAIT_UP_S:.0f}s: {rows.get(name, {}).get('error')}"
    if errors:
        raise VagrantError("\n".join(f"machine {n}: {e}" for n, e in sorted(errors.items())))
