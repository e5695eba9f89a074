"""Same unit, same process (issue 14 §1): one unit run with ``Driver=exec`` and with
``Driver=systemd`` on the same lab systemd host sees the same argv, environment, working
directory, user and groups, umask, capabilities, rlimits (every Limit*=), nice and OOM
score (Nice=, OOMScoreAdjust=), and the same cgroup limits.

The host is a lab systemd host (Debian bookworm, systemd 252 as PID 1), reached the way a
user reaches it: ``fleetctl machine add`` installs fleet-agent there as a systemd service,
and ``fleetctl start`` starts two units whose files differ only in their name and their
``Driver=`` line. Each runs a probe (PROBE) that writes what its own process sees, as
JSON, and then waits, so its cgroup is read while it runs.

The cgroup limits are the effective ones: for each limit the smallest value on the path
from the probe's cgroup up to its hierarchy's root (the exec driver may put a run in a
cgroup below the unit's; systemd puts a unit under system.slice), on the v1 controllers
of this hybrid host (memory, pids, cpu) and on the v2 hierarchy.

Three pairs run: as User=daemon, as root, and "restarted" (its first run exits; its second,
which Restart= starts at once, comes under Driver=exec from the process the agent prepared
for it, fleetd.drivers.spare). The cgroup limits are read again once every unit ran and
restarted ("later").

What may differ, and why, is in EXPECTED_ENV_DIFFERENCES; nothing else may, but for the
one known difference CPU_ESCAPES names (an explicit strict xfail: on this hybrid host
systemd moves the exec driver's processes out of their cpu cgroup when it starts a unit
with CPUQuota=).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from typing import Any, Callable, Dict, Iterator, Tuple

import pytest
from labkit import Fleet, lab_slot, need_systemd_hosts, wait_for

from fleetd.lab.netns import Host, Lab

PREFIX, SUBNET = "fq", "10.97.0"
OUT = "/var/tmp/same-process"
PROBE_PATH = "/usr/local/bin/same-probe.py"

# The probe: what its process sees, as JSON, into OUT/$FLEET_UNIT.json; then it waits.
PROBE = r'''
import json, os, resource, sys, time

def read(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None

def started_at():
    """When this process was forked (exec keeps it), in seconds since boot."""
    ticks = int(read("/proc/self/stat").rsplit(")", 1)[1].split()[19])
    return ticks / os.sysconf("SC_CLK_TCK")

def status():
    keep = ("Umask", "CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb", "NoNewPrivs",
            "Seccomp")
    out = {}
    for line in open("/proc/self/status"):
        key, _, value = line.partition(":")
        if key in keep:
            out[key] = value.strip()
    return out

def smallest(values):
    numbers = [v for v in values if v is not None]
    return min(numbers) if numbers else None

def number(text, unlimited=("max", "-1")):
    if text is None or text in unlimited:
        return None
    return int(text)

def chain(root, path):
    """Each cgroup directory from ``path`` up to (not including) the hierarchy's root."""
    parts = [p for p in path.split("/") if p]
    return [os.path.join(root, *parts[:i]) for i in range(len(parts), 0, -1)]

def v1_memory(d):
    n = number(read(d + "/memory.limit_in_bytes"))
    return None if n is None or n >= (1 << 62) else n  # "no limit" is a page-rounded 2^63

def v1_cpu(d):
    quota, period = number(read(d + "/cpu.cfs_quota_us")), number(read(d + "/cpu.cfs_period_us"))
    return None if quota is None or not period else round(quota / period, 4)

def v2_cpu(d):
    text = read(d + "/cpu.max")
    if text is None:
        return None
    quota, _, period = text.partition(" ")
    return None if quota == "max" else round(int(quota) / int(period), 4)

def cgroups():
    limits = {}
    for line in read("/proc/self/cgroup").splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # the v2 hierarchy (unified on a hybrid host)
            root = "/sys/fs/cgroup/unified"
            if not os.path.isdir(root):
                root = "/sys/fs/cgroup"
            dirs = chain(root, path)
            limits["v2 memory.max"] = smallest(number(read(d + "/memory.max")) for d in dirs)
            limits["v2 pids.max"] = smallest(number(read(d + "/pids.max")) for d in dirs)
            limits["v2 cpu.max (CPUs)"] = smallest(v2_cpu(d) for d in dirs)
            continue
        for controller in controllers.split(","):
            root = "/sys/fs/cgroup/" + controllers
            dirs = chain(root, path)
            if controller == "memory":
                limits["v1 memory.limit_in_bytes"] = smallest(v1_memory(d) for d in dirs)
            elif controller == "pids":
                limits["v1 pids.max"] = smallest(number(read(d + "/pids.max")) for d in dirs)
            elif controller == "cpu":
                limits["v1 cfs quota (CPUs)"] = smallest(v1_cpu(d) for d in dirs)
    return limits

numbers = {name: getattr(resource, name) for name in dir(resource)
           if name.startswith("RLIMIT_")}
numbers.setdefault("RLIMIT_LOCKS", 10)  # Linux's; Python's resource does not name it
rlimits = {name: list(resource.getrlimit(n)) for name, n in sorted(numbers.items())}
if os.environ.get("PROBE_EXIT_FIRST"):  # the "restarted" variant: its first run ends
    first = os.path.join("''' + OUT + r'''", os.environ["FLEET_UNIT"] + ".first")
    if not os.path.exists(first):
        time.sleep(1)  # long enough for the agent to prepare the next run's process
        with open(first, "w") as f:  # when it ended, on the clock of /proc's start ticks
            f.write(repr(time.clock_gettime(time.CLOCK_BOOTTIME)))
        sys.exit(3)
seen = {
    "argv": sys.argv[1:],
    "cgroup paths": read("/proc/self/cgroup").splitlines(),
    "started at": started_at(),
    "first run ended at": float(read(first)) if os.environ.get("PROBE_EXIT_FIRST")
    else None,
    "environ": dict(os.environ),
    "cwd": os.getcwd(),
    "uid": list(os.getresuid()),
    "gid": list(os.getresgid()),
    "groups": sorted(os.getgroups()),
    "status": status(),
    "rlimits": rlimits,
    "nice": os.nice(0),
    "oom_score_adj": read("/proc/self/oom_score_adj"),
    "cgroup limits": cgroups(),
}
path = os.path.join("''' + OUT + r'''", os.environ["FLEET_UNIT"] + ".json")
with open(path + ".tmp", "w") as f:
    json.dump(seen, f, indent=1, sort_keys=True)
os.rename(path + ".tmp", path)
# once every unit has run (and the restarted ones restarted), the test asks again:
# where the process is now and what limits it is under
again = os.path.join("''' + OUT + r'''", "again")
while not os.path.exists(again):
    time.sleep(0.1)
with open(path + ".again.tmp", "w") as f:
    json.dump({"cgroup limits": cgroups(), "cgroup paths": read("/proc/self/cgroup").splitlines()},
              f, indent=1, sort_keys=True)
os.rename(path + ".again.tmp", path + ".again")
while True:
    time.sleep(3600)
'''

# One unit text, run once per driver: quoted words in ExecStart= (quotes opening inside a
# word), quoted assignments in Environment=, a directory, a umask, rlimits and cgroup
# limits; and as one of IDENTITIES: a user and group that exist on the host (Debian's
# daemon user, home /usr/sbin, shell nologin, with a supplementary group added by the
# test), or none (root, as the agent and systemd run).
UNIT = """\
[Unit]
Description=same-process probe ({driver})
[Service]
ExecStart=/usr/bin/python3 {probe} --name="a b" x"y z"w "q r" 'single quoted' plain
Environment=GREETING="hello world" JAVA_OPTS="-Xmx1g -Xms512m" PLAIN=1
Environment="QUOTED=whole assignment"
WorkingDirectory=/var/tmp/same-process
{identity}UMask=0027
LimitNOFILE=1234:2345
LimitCORE=1M:2M
LimitNPROC=300:400
LimitMEMLOCK=96K
LimitCPU=1h:infinity
LimitFSIZE=1G
LimitSIGPENDING=777
LimitMSGQUEUE=400K
LimitLOCKS=5000
LimitRTTIME=2s
Nice=5
OOMScoreAdjust=300
MemoryMax=64M
TasksMax=17
CPUQuota=30%
[X-Fleet]
Driver={driver}
MachineMetadata=hostname=h1
"""

DAEMON = "User=daemon\nGroup=daemon\n"
# "restarted": its first run exits, and what is compared is its second, which Restart=
# starts at once: under Driver=exec from the process the agent prepared for it
# (fleetd.drivers.spare: a /bin/sh waiting in the unit's cgroup that execs the program
# through setpriv), not a fork of the agent
IDENTITIES = {"daemon": DAEMON, "root": "",
              "restarted": DAEMON + "Restart=always\nRestartSec=0\n"
                                    "Environment=PROBE_EXIT_FIRST=1\n"}
UNITS = [(f"same-{who}-{driver}.service", who, driver)
         for who in IDENTITIES for driver in ("exec", "systemd")]
Seen = Dict[str, Tuple[Dict[str, Any], Dict[str, Any]]]

# Variables only one side has, each on purpose:
EXPECTED_ENV_DIFFERENCES = {
    # systemd's own, set by PID 1 for every service it runs (systemd.exec(5),
    # "Environment Variables in Spawned Processes")
    "INVOCATION_ID": "systemd: the unit's invocation id",
    "JOURNAL_STREAM": "systemd: stdout/stderr are connected to the journal",
    "SYSTEMD_EXEC_PID": "systemd: the pid systemd forked for ExecStart=",
    "MANAGERPID": "systemd: the service manager's pid (user managers)",
    "LISTEN_PID": "systemd: socket activation", "LISTEN_FDS": "systemd: socket activation",
    "NOTIFY_SOCKET": "systemd: Type=notify", "WATCHDOG_PID": "systemd: WatchdogSec=",
    "WATCHDOG_USEC": "systemd: WatchdogSec=",
    # fleetd's agent, on purpose: the exec driver's identity evidence that a restarted
    # agent checks before adopting a running program (drivers/exec.py same_process);
    # systemd knows its units by name and needs none
    "FLEET_INVOCATION_ID": "fleetd's exec driver: identity evidence for re-adoption",
}
# Variables both sides have with values that differ on purpose:
EXPECTED_ENV_VALUES = {
    "FLEET_UNIT": "the unit's name, and the two units have different names",
}


def ssh(lab: Lab, h: Host, command: str) -> str:
    out = subprocess.run(
        ["ssh", "-F", "/dev/null", "-i", lab.identity, "-o", "BatchMode=yes",
         "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={lab.known_hosts}",
         "-o", "ConnectTimeout=5", f"root@{h.address}", command],
        capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        pytest.fail(f"{h.name}: {command}: exit {out.returncode}: {out.stderr}{out.stdout}")
    return out.stdout


def exists(lab: Lab, h: Host, path: str) -> bool:
    return ssh(lab, h, f"test -e {path} && echo yes || true").strip() == "yes"


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    need_systemd_hosts()
    with lab_slot(PREFIX):
        the_lab = Lab(str(tmp_path_factory.mktemp("samelab")), prefix=PREFIX, subnet=SUBNET)
        the_lab.down()
        try:
            the_lab.up(1, systemd=1)
            yield the_lab
        finally:
            the_lab.down()


@pytest.fixture(scope="module")
def seen(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Seen]:
    """What the probe saw under Driver=exec and under Driver=systemd, by identity."""
    work = tmp_path_factory.mktemp("samefleet")
    h = lab.hosts()[0]
    assert h.systemd
    ssh(lab, h, f"install -d -m 1777 {OUT} && cat > {PROBE_PATH} <<'EOF'\n{PROBE}EOF\n"
                "getent group adm >/dev/null && usermod -a -G adm daemon")
    fleet = Fleet(lab, str(work))
    fleet.start()
    try:
        fleet.ctl("machine", "add", f"root@{h.address}", "--name", h.name,
                  "--metadata", f"hostname={h.name}", "--identity", lab.identity,
                  "--known-hosts", lab.known_hosts, timeout=300)
        files = []
        for name, who, driver in UNITS:
            path = os.path.join(str(work), name)
            with open(path, "w") as f:
                f.write(UNIT.format(driver=driver, probe=PROBE_PATH, identity=IDENTITIES[who]))
            files.append(path)
        fleet.ctl("start", *files, timeout=120)
        out = {}
        for name, _, _ in UNITS:
            wait_for(f"{name}'s probe", functools.partial(exists, lab, h,
                                                          f"{OUT}/{name}.json"), 30)
            out[name] = json.loads(ssh(lab, h, f"cat {OUT}/{name}.json"))
        ssh(lab, h, f"touch {OUT}/again")
        for name, _, _ in UNITS:
            wait_for(f"{name}'s probe again", functools.partial(
                exists, lab, h, f"{OUT}/{name}.json.again"), 30)
            out[name]["later"] = json.loads(ssh(lab, h, f"cat {OUT}/{name}.json.again"))
        yield {who: (out[f"same-{who}-exec.service"], out[f"same-{who}-systemd.service"])
               for who in IDENTITIES}
    finally:
        fleet.ctl("destroy", *(name for name, _, _ in UNITS), check=False)
        fleet.stop()


FIELDS = ["argv", "cwd", "uid", "gid", "groups", "status", "rlimits", "nice",
          "oom_score_adj"]  # and the cgroup limits, below


@pytest.mark.parametrize("who", IDENTITIES)
@pytest.mark.parametrize("field", FIELDS)
def test_the_same_under_both_drivers(seen: Seen, who: str, field: str) -> None:
    exec_side, systemd_side = seen[who]
    assert exec_side[field] == systemd_side[field], \
        f"{field}: Driver=exec {exec_side[field]!r}, Driver=systemd {systemd_side[field]!r}"


CPU_KEYS = ("v1 cfs quota (CPUs)", "v2 cpu.max (CPUs)")
WHEN: Dict[str, Callable[[Dict[str, Any]], Dict[str, Any]]] = {
    "at start": lambda side: dict(side["cgroup limits"]),
    "later": lambda side: dict(side["later"]["cgroup limits"])}
# The CPU quota of an exec unit's process on this hybrid systemd host, known to differ
CPU_ESCAPES = pytest.mark.xfail(strict=True, reason=(
    "known, not fixed yet: on a hybrid systemd host, when systemd starts a unit with "
    "CPUQuota= (here the Driver=systemd twins; `systemd-run -p CPUQuota=20%` alone does "
    "it too, MemoryMax= or daemon-reload do not), it moves the exec driver's programs from "
    "their unit's v1 cpu cgroup (/fleet/<machine>/<unit>) to the root one (cpu:/, no "
    "quota): their CPUQuota= no longer holds, while memory and pids stay. Moving the "
    "programs out of fleet-agent.service in the name=systemd hierarchy too was tried and "
    "does not prevent it; a restarted unit's prepared process is moved while it waits"))


@pytest.mark.parametrize("when", WHEN)
@pytest.mark.parametrize("who", IDENTITIES)
def test_the_same_cgroup_limits_but_cpu(seen: Seen, who: str, when: str) -> None:
    """Memory and pids, as the probe started and again once the Driver=systemd units
    all started and restarted."""
    exec_side, systemd_side = ({k: v for k, v in WHEN[when](side).items()
                                if k not in CPU_KEYS} for side in seen[who])
    assert exec_side == systemd_side


@pytest.mark.parametrize("who, when", [
    ("daemon", "at start"), ("root", "at start"),
    pytest.param("restarted", "at start", marks=CPU_ESCAPES),
    *(pytest.param(who, "later", marks=CPU_ESCAPES) for who in IDENTITIES)])
def test_the_same_cpu_quota(seen: Seen, who: str, when: str) -> None:
    exec_side, systemd_side = ({k: v for k, v in WHEN[when](side).items() if k in CPU_KEYS}
                               for side in seen[who])
    assert exec_side == systemd_side, seen[who][0]["cgroup paths"]


def test_the_unit_text_is_what_both_ran(seen: Seen) -> None:
    """Guards the comparison: the probe's words and limits are the unit's, not defaults
    that would agree by accident."""
    exec_side, systemd_side = seen["daemon"]
    assert systemd_side["uid"] == [1, 1, 1] and seen["root"][1]["uid"] == [0, 0, 0]
    assert exec_side["argv"] == ["--name=a b", "xy zw", "q r", "single quoted", "plain"]
    assert systemd_side["environ"]["GREETING"] == "hello world"
    assert systemd_side["cwd"] == OUT
    assert systemd_side["status"]["Umask"] == "0027"
    assert systemd_side["rlimits"]["RLIMIT_NOFILE"] == [1234, 2345]
    assert systemd_side["rlimits"]["RLIMIT_CORE"] == [1 << 20, 2 << 20]
    assert systemd_side["rlimits"]["RLIMIT_LOCKS"] == [5000, 5000]
    assert systemd_side["rlimits"]["RLIMIT_RTTIME"] == [2_000_000, 2_000_000]
    assert (systemd_side["nice"], systemd_side["oom_score_adj"]) == (5, "300")
    limits = systemd_side["cgroup limits"]
    assert 64 << 20 in (limits.get("v1 memory.limit_in_bytes"), limits.get("v2 memory.max"))
    assert 17 in (limits.get("v1 pids.max"), limits.get("v2 pids.max"))
    assert 0.3 in (limits.get("v1 cfs quota (CPUs)"), limits.get("v2 cpu.max (CPUs)"))


@pytest.mark.parametrize("who", IDENTITIES)
def test_the_same_environment_but_for_named_variables(seen: Seen, who: str) -> None:
    exec_env, systemd_env = (dict(s["environ"]) for s in seen[who])
    for name in EXPECTED_ENV_DIFFERENCES:
        exec_env.pop(name, None)
        systemd_env.pop(name, None)
    for name in EXPECTED_ENV_VALUES:
        assert name in exec_env and name in systemd_env, name
        exec_env.pop(name)
        systemd_env.pop(name)
    only_exec = {k: v for k, v in exec_env.items() if systemd_env.get(k) != v}
    only_systemd = {k: v for k, v in systemd_env.items() if exec_env.get(k) != v}
    assert (only_exec, only_systemd) == ({}, {}), \
        f"Driver=exec alone (or other value): {only_exec}; Driver=systemd: {only_systemd}"


def test_the_restarted_exec_run_came_from_a_prepared_process(seen: Seen) -> None:
    """Guards the "restarted" comparison: under Driver=exec its second run's process was
    forked while the first run still ran (a prepared process: fleetd.drivers.spare), in
    a run's own cgroup below the unit's; under systemd after the first run ended."""
    exec_side, systemd_side = seen["restarted"]
    assert exec_side["started at"] < exec_side["first run ended at"] - 0.02  # ticks: 10 ms
    assert systemd_side["started at"] > systemd_side["first run ended at"] - 0.02
    paths = [line.split(":", 2)[2] for line in exec_side["cgroup paths"]]
    unit = "/same-restarted-exec.service/"
    print("PATHS", exec_side["cgroup paths"], seen["daemon"][0]["cgroup paths"])
    assert any(unit in p and p.split(unit, 1)[1] for p in paths), paths
