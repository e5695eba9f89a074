"""The machine simulator: N simulated machines (fleetd.lab.sim_host) in one process.

``python -m fleetd.lab.sim --dir DIR --machines N [--endpoint unix://fleetd.sock]``

Each machine gets a directory under ``DIR/machines/NAME``: its own ed25519 host key, a
known_hosts file holding only that key (``[127.0.0.1]:PORT``), and the agent's state
directory. One client key (``DIR/id_ed25519``) is authorized on all of them. The
machines listen on loopback ports the kernel picks; once all listen, ``DIR/machines.json``
says where each is (name, port, known_hosts, identity, agent command) and, with
``--endpoint``, each is registered with that fleetd exactly as ``fleetctl machine add
--agent-command`` would. Keys and state directories are kept across runs of the same
DIR: a simulator restarted on it serves the same machines (not their programs, which
"ran" in the process that ended).

The levers are reached through ``DIR/sim.sock``, one JSON object a line each way
(fleetd.lab.sim_control has the client and the ops): kill, revive, cut, heal, slow, fail,
and ``machines`` (each machine's state and its driver's start/stop counts).

The simulator's own cost is not fleetd's: bench/scale.py measures the fleetd process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from typing import Any, Dict, List, Optional, Sequence

import asyncssh

from fleetd.client import ApiError, Client
from fleetd.lab import sim_control, sim_host

log = logging.getLogger("fleetd.sim")

ADDRESS = "127.0.0.1"
REGISTER_CONCURRENCY = 16  # POST /v1/machines in flight at once
STALL_TICK_S = 0.25
STALL_S = 1.0  # a heartbeat late: worth saying (fleetd drops a session after 3 s silent)


def machine_names(prefix: str, count: int) -> List[str]:
    """``sim0001``, ``sim0002``, ...: zero-padded, so they sort as they count."""
    width = max(4, len(str(count)))
    return [f"{prefix}{i:0{width}d}" for i in range(1, count + 1)]


def ensure_key(path: str) -> str:
    """The ed25519 private key at ``path``, made once (0600); returns its public key line."""
    if not os.path.exists(path):
        key = asyncssh.generate_private_key("ssh-ed25519")
        tmp = path + ".partial"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key.export_private_key())
        os.replace(tmp, path)
        return key.export_public_key().decode().strip()
    return asyncssh.read_private_key(path).export_public_key().decode().strip()


def plan(root: str, names: Sequence[str]) -> List[sim_host.Plan]:
    """Each machine's directory and host key (port 0: the kernel picks at listen)."""
    plans = []
    for name in names:
        mdir = os.path.join(root, "machines", name)
        os.makedirs(os.path.join(mdir, "agent"), mode=0o700, exist_ok=True)
        p = sim_host.Plan(name=name, port=0, dir=mdir)
        ensure_key(p.host_key)
        plans.append(p)
    return plans


def known_hosts_line(host: str, port: int, public_key: str) -> str:
    """OpenSSH's known_hosts entry for a host on a port other than 22."""
    words = public_key.split()
    return f"[{host}]:{port} {words[0]} {words[1]}\n"


def previous_ports(root: str) -> Dict[str, int]:
    """The ports an earlier run of this directory listened on (machines.json), so that a
    fleetd which registered them finds them there again; {} if none or unreadable."""
    try:
        with open(os.path.join(root, sim_control.MACHINES)) as f:
            return {m["name"]: int(m["port"]) for m in json.load(f)}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


def write_atomically(path: str, text: str) -> None:
    tmp = path + ".partial"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


class Simulator:
    """The machines, their listeners, the control socket."""

    def __init__(self, root: str, names: Sequence[str], host: str = ADDRESS) -> None:
        self.root = os.path.abspath(root)
        self.host = host
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        self.identity = os.path.join(self.root, "id_ed25519")
        client_key = ensure_key(self.identity)
        self.machines: Dict[str, sim_host.SimMachine] = {}
        ports = previous_ports(self.root)
        for p in plan(self.root, names):
            m = sim_host.SimMachine(p, client_key + "\n", host=host)
            m.port = ports.get(p.name, 0)
            self.machines[p.name] = m
        self.stopped = asyncio.Event()
        self.stalls = 0  # times its loop was stalled past STALL_S (watch_stalls)
        self.worst_stall_s = 0.0
        self._control: Optional[asyncio.AbstractServer] = None

    @property
    def control_path(self) -> str:
        return os.path.join(self.root, sim_control.SOCKET)

    async def start(self) -> None:
        """Every machine listening, its known_hosts written; then machines.json."""
        for m in self.machines.values():
            await m.start()
            pub = asyncssh.read_private_key(m.plan.host_key).export_public_key().decode()
            write_atomically(m.plan.known_hosts, known_hosts_line(self.host, m.port, pub))
        write_atomically(os.path.join(self.root, sim_control.MACHINES),
                         json.dumps(self.listing(), indent=1) + "\n")
        self._control = await asyncio.start_unix_server(
            self._client, path=self.control_path, limit=1 << 20)
        os.chmod(self.control_path, 0o600)

    def listing(self) -> List[Dict[str, Any]]:
        """What fleetd needs to reach each machine (as ``fleetctl machine add`` takes it)."""
        return [{"name": m.name, "address": self.host, "port": m.port, "user": "root",
                 "identity": self.identity, "known_hosts": m.plan.known_hosts,
                 "agent_command": m.plan.agent_command, "metadata": {"sim": "1"}}
                for m in self.machines.values()]

    async def stop(self) -> None:
        if self._control is not None:
            self._control.close()
        for m in self.machines.values():
            m.kill()

    async def _client(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        try:
            while line := await reader.readline():
                try:
                    answer = await sim_control.apply(self, json.loads(line))
                except (ValueError, sim_control.ControlError) as exc:
                    answer = {"ok": False, "error": str(exc)}
                writer.write(json.dumps(answer).encode() + b"\n")
                await writer.drain()
        except (ConnectionError, ValueError):
            pass
        finally:
            writer.close()


def register(endpoint: str, listing: List[Dict[str, Any]], metadata: Dict[str, str]
             ) -> int:
    """Each machine fleetd does not know yet, added as ``fleetctl machine add`` would;
    returns how many were added. Several at once: 1,000 in a row take long."""
    from concurrent.futures import ThreadPoolExecutor

    client = Client(endpoint)
    known = {m["name"] for m in client.get("/v1/machines", timeout=60)["machines"]}
    todo = [dict(m, metadata={**m["metadata"], **metadata})
            for m in listing if m["name"] not in known]

    def add(body: Dict[str, Any]) -> None:
        client.post("/v1/machines", body, timeout=120)

    with ThreadPoolExecutor(REGISTER_CONCURRENCY) as pool:
        list(pool.map(add, todo))
    return len(todo)


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m fleetd.lab.sim", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", required=True, help="the simulator's directory (kept)")
    ap.add_argument("--machines", type=int, required=True, metavar="N")
    ap.add_argument("--prefix", default="sim", help="machine names: PREFIX0001, ...")
    ap.add_argument("--endpoint", help="register the machines with this fleetd")
    ap.add_argument("--metadata", default="", help="k=v,... added to each machine's")
    ap.add_argument("--log-level", default="warning")
    args = ap.parse_args(argv)
    if not 1 <= args.machines <= 20000:
        ap.error(f"--machines: {args.machines} is not between 1 and 20000")
    try:
        args.meta = dict(kv.split("=", 1) for kv in args.metadata.split(",") if kv)
    except ValueError:
        ap.error(f"--metadata: {args.metadata!r} is not k=v,k=v")
    return args


async def serve(args: argparse.Namespace) -> None:
    loop = asyncio.get_running_loop()
    loop.set_task_factory(sim_host.task_factory)
    sim = Simulator(args.dir, machine_names(args.prefix, args.machines))

    def stop_on_signal() -> None:
        """Set again after each agent starts: each agent's serve() takes SIGTERM."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, sim.stopped.set)

    sim_host.SimMachine.after_agent_start = stop_on_signal
    stop_on_signal()
    await sim.start()
    watch = asyncio.ensure_future(watch_stalls(sim))
    if args.endpoint:
        try:
            added = await loop.run_in_executor(
                None, register, args.endpoint, sim.listing(), args.meta)
        except ApiError as exc:
            await sim.stop()
            raise SystemExit(f"--endpoint {args.endpoint}: {exc}") from None
        log.warning("registered %d machines with %s", added, args.endpoint)
    print(f"ready {len(sim.machines)} machines; control {sim.control_path}", flush=True)
    await sim.stopped.wait()
    watch.cancel()
    await sim.stop()


async def watch_stalls(sim: Simulator) -> None:
    """Log each time the simulator's own loop was stalled past STALL_S: every machine in
    this process is silent meanwhile, which fleetd sees as all of them at once going
    quiet - the simulator's limit, not fleetd's. ``machines`` reports the worst."""
    loop = asyncio.get_running_loop()
    while True:
        t0 = loop.time()
        await asyncio.sleep(STALL_TICK_S)
        late = loop.time() - t0 - STALL_TICK_S
        if late > STALL_S:
            sim.stalls += 1
            sim.worst_stall_s = max(sim.worst_stall_s, late)
            log.warning("the simulator's loop stalled %.1fs: its machines were silent", late)


def main(argv: Optional[Sequence[str]] = None) -> None:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        asyncio.run(serve(args))
    except OSError as exc:  # a port or directory it cannot have: said, not a traceback
        raise SystemExit(f"fleetd.lab.sim: {exc}") from None


if __name__ == "__main__":
    main()
