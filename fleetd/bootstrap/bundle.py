"""What is pushed to a host: the agent side of fleetd, a launcher, and psutil if needed.

The payload is a zip, built in memory, extracted on the host by the host's own python3:

  fleetd/...            the agent-side modules only (AGENT_SIDE: the agent, drivers,
                        cgroups, wire and protocol, whole directories); stdlib + psutil,
                        Python 3.9+
  bin/fleet-agent       the launcher: the host's python3 in its #! line, run isolated
                        (-I: no PYTHONPATH, no user site), puts its version directory
                        and lib/ first on sys.path and runs fleetd.agent.main
  lib/psutil/...        only on a host without a usable psutil: a wheel from the
                        wheelhouse (psutil publishes abi3 manylinux wheels), unpacked
  VERSION               the version id

The version id is fleetd's version plus a hash of the agent code and the launcher's
template, so a changed agent is a new version even under the same version string.
``FLEETD_AGENT_VERSION_SUFFIX`` (read by fleetd) is hashed in too: a way to make a new
version without changing code (tests, or forcing a reinstall). The per-host parts (the
#! line, psutil) are not in the id: the id names the agent's code.

The wheelhouse is ``$FLEETD_WHEELHOUSE``, else ``<sys.prefix>/share/fleetd-wheels``
(``run.sh setup`` fills it with ``pip download``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import re
import sys
import zipfile
from typing import Dict, List, Optional, Tuple

import fleetd

SUFFIX_VARIABLE = "FLEETD_AGENT_VERSION_SUFFIX"
WHEELHOUSE_VARIABLE = "FLEETD_WHEELHOUSE"
# relative to the directory holding the fleetd package; directories: every .py below
AGENT_SIDE = ("fleetd/__init__.py", "fleetd/protocol.py", "fleetd/wire/", "fleetd/agent/",
              "fleetd/drivers/", "fleetd/cgroups/")
# the modules the host's python must import from the unpacked payload before it is used
VERIFY_MODULES = ("fleetd.agent.main", "fleetd.agent.attach", "fleetd.agent.daemon",
                  "fleetd.agent.supervisor", "fleetd.agent.facts", "fleetd.drivers.exec",
                  "fleetd.drivers.java", "fleetd.drivers.systemd", "fleetd.cgroups.detect",
                  "psutil")
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)  # fixed: the same payload makes the same zip

LAUNCHER = '''#!{python} -I
# fleet-agent {version}, installed by fleetd: fleetd's agent-side modules beside this
# bin/ directory, and psutil in lib/ if the host had none. See fleetd.bootstrap.
import os
import sys

HERE = os.path.dirname(os.path.dirname(os.path.realpath(__file__)))
sys.path[:0] = [HERE, os.path.join(HERE, "lib")]

from fleetd.agent.main import main  # noqa: E402

sys.exit(main(launcher=[sys.executable, "-I", os.path.join(HERE, "bin", "fleet-agent")]))
'''


def source_root() -> str:
    """The directory that holds the ``fleetd`` package this fleetd runs from."""
    return os.path.dirname(os.path.dirname(os.path.abspath(fleetd.__file__)))


def agent_files(root: Optional[str] = None) -> Dict[str, bytes]:
    """The agent-side sources, by path relative to ``root`` (``fleetd/...``)."""
    root = root or source_root()
    files: Dict[str, bytes] = {}
    for entry in AGENT_SIDE:
        path = os.path.join(root, entry)
        if entry.endswith("/"):
            for dirpath, dirnames, filenames in os.walk(path):
                dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
                for name in sorted(filenames):
                    if name.endswith(".py"):
                        full = os.path.join(dirpath, name)
                        files[os.path.relpath(full, root)] = _read(full)
        else:
            files[entry] = _read(path)
    return files


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def version_id(files: Dict[str, bytes], suffix: str = "") -> str:
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.encode() + b"\0" + hashlib.sha256(files[path]).digest())
    digest.update(b"launcher\0" + LAUNCHER.encode() + b"\0suffix\0" + suffix.encode())
    return f"{fleetd.__version__}-{digest.hexdigest()[:12]}"


# --- psutil wheels ------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Wheel:
    path: str
    version: str

    @property
    def name(self) -> str:
        return os.path.basename(self.path)


def wheelhouse() -> str:
    return os.environ.get(WHEELHOUSE_VARIABLE) or os.path.join(sys.prefix, "share",
                                                               "fleetd-wheels")


_WHEEL = re.compile(r"psutil-(?P<version>[^-]+)-(?P<python>[^-]+)-(?P<abi>[^-]+)-"
                    r"(?P<platform>[^-]+)\.whl")


def _glibc_of(tag: str, arch: str) -> Optional[Tuple[int, int]]:
    """The oldest glibc a platform tag runs on, or None if it is not for ``arch`` glibc."""
    legacy = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
    m = re.fullmatch(r"(manylinux1|manylinux2010|manylinux2014)_" + re.escape(arch), tag)
    if m:
        return legacy[m.group(1)]
    m = re.fullmatch(r"manylinux_(\d+)_(\d+)_" + re.escape(arch), tag)
    return (int(m.group(1)), int(m.group(2))) if m else None


def pick_wheel(directory: str, arch: str, libc: Tuple[str, str],
               python: Tuple[int, ...]) -> Optional[Wheel]:
    """The newest psutil wheel in ``directory`` that runs on this host: its architecture,
    its glibc (manylinux tags), its Python (abi3 for cp3X <= the host's, or its exact
    cpXY). None if there is none (musl hosts, say: no manylinux wheel fits)."""
    if libc[0] != "glibc":
        return None
    host_glibc = tuple(int(x) for x in re.findall(r"\d+", libc[1])[:2])
    try:
        names = os.listdir(directory)
    except OSError:
        return None
    found: List[Tuple[Tuple[int, ...], Wheel]] = []
    for name in names:
        m = _WHEEL.fullmatch(name)
        if not m:
            continue
        py = m.group("python")
        if m.group("abi") == "abi3":
            tag = re.fullmatch(r"cp3(\d+)", py)
            if not tag or int(tag.group(1)) > python[1]:
                continue
        elif py != f"cp{python[0]}{python[1]}":
            continue
        fits = [g for g in (_glibc_of(t, arch) for t in m.group("platform").split("."))
                if g is not None]
        if not fits or min(fits) > host_glibc:
            continue
        version = tuple(int(x) for x in re.findall(r"\d+", m.group("version")))
        found.append((version, Wheel(os.path.join(directory, name), m.group("version"))))
    return max(found, key=lambda f: f[0])[1] if found else None


# --- the payload -----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Bundle:
    version: str
    data: bytes  # the zip
    unpacked_bytes: int  # what it takes on disk, before bytecode
    wheel: Optional[Wheel]

    def need_kb(self) -> int:
        """Room the install needs under the prefix: the zip while it is unpacked, the
        files, their bytecode (about as big again), and a margin."""
        return (len(self.data) + 2 * self.unpacked_bytes) // 1024 + 1024


def build(python: str, wheel: Optional[Wheel] = None, suffix: Optional[str] = None,
          files: Optional[Dict[str, bytes]] = None) -> Bundle:
    """The payload for a host whose agent runs on ``python``; ``wheel`` is unpacked into
    lib/. ``suffix`` defaults to $FLEETD_AGENT_VERSION_SUFFIX; ``files`` to the agent
    side of this fleetd (tests hand in their own)."""
    if suffix is None:
        suffix = os.environ.get(SUFFIX_VARIABLE, "")
    files = dict(files if files is not None else agent_files())
    version = version_id(files, suffix)
    files["bin/fleet-agent"] = LAUNCHER.format(python=python, version=version).encode()
    files["VERSION"] = f"{version}\n".encode()
    if wheel is not None:
        with zipfile.ZipFile(wheel.path) as whl:
            for info in whl.infolist():
                if not info.is_dir() and ".dist-info/" not in info.filename:
                    files["lib/" + info.filename] = whl.read(info)
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as z:
        for path in sorted(files):
            info = zipfile.ZipInfo(path, _ZIP_TIME)
            info.external_attr = (0o755 if path.startswith("bin/") else 0o644) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, files[path])
    return Bundle(version=version, data=out.getvalue(),
                  unpacked_bytes=sum(len(v) for v in files.values()), wheel=wheel)
