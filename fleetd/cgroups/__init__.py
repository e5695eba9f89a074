"""cgroups for the agent: limits, membership and kill for each unit's program.

    backend = detect(parent=f"fleet/{machine_id}")    # once, at agent start
    cg = backend.unit("app.service")
    cg.create(Limits.from_config(config["limits"]))   # LimitsUnsupported, CgroupError
    proc = subprocess.Popen(argv, preexec_fn=cg.preexec(), start_new_session=True, ...)
    ...
    cg.kill(signal.SIGTERM)    # every process, daemonised ones too; poll cg.empty()
    cg.kill(signal.SIGKILL)    # after TimeoutStopSec
    cg.remove()                # once empty (and the main pid reaped or not: zombies
                               # are already out of the cgroup)

Modules: ``limits`` (Limits, percentages), ``base`` (the protocols, errors), ``detect``
(the mount table -> a backend), ``kernel`` (v1, v2 and hybrid hosts, composing ``v1`` and
``v2``, which know each version's files), ``none`` (no usable cgroups), ``fs`` (cgroupfs
file access). Standard library and psutil only, Python 3.9+: this runs on agent hosts.
"""

from fleetd.cgroups.base import Backend, CgroupError, LimitsUnsupported, UnitCgroup
from fleetd.cgroups.detect import detect
from fleetd.cgroups.limits import HostSize, Limits

__all__ = ["Backend", "CgroupError", "HostSize", "Limits", "LimitsUnsupported", "UnitCgroup",
           "detect"]
