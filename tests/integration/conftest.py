"""The real thing: a network-namespace lab with one sshd per host, a real fleetd process,
the real ``fleetctl`` console script. Nothing here is mocked.

One 3-host lab serves the whole session (prefix ``ft``, 10.78.0.0/24, apart from the
demo lab's ``fl``/10.77.0.0/24). A second test run at the same time (two engineers on
one machine) takes the next free slot (``t1``/10.78.1.0/24, ...), claimed by a flock
that dies with its run, so runs never sweep each other's namespaces. Each test gets a
fresh fleetd (own state dir and socket) and, afterwards, hosts wiped back to "sshd
only": every other process in the host's namespace is killed and the agent state
directory emptied. A test parametrized with labkit.ON_BOTH_REGISTRIES runs on its
SQLite registry and again on a real one-member etcd (the ``registry`` fixture).
"""

from __future__ import annotations

import fcntl
import os
from typing import Any, Iterator, List, Optional, Tuple

import pytest
from etcdkit import etcd_cluster
from labkit import Fleet, reset_host, wait_for

from fleetd.lab.netns import Lab


def pytest_collection_modifyitems(items: List[pytest.Item]) -> None:
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.lab)


def _claim_slot() -> Tuple[int, str, str]:
    """(lock fd, prefix, subnet) of the first lab slot no other test run holds."""
    for slot in range(10):
        fd = os.open(f"/run/fleetd-test-lab-{slot}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        return fd, ("ft" if slot == 0 else f"t{slot}"), f"10.78.{slot}"
    pytest.fail("ten test runs hold every lab slot")


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.fail("integration tests need root (network namespaces, sshd, cgroups)")
    fd, prefix, subnet = _claim_slot()
    the_lab = Lab(str(tmp_path_factory.mktemp("lab")), prefix=prefix, subnet=subnet)
    the_lab.down()  # sweeps namespaces and the bridge a crashed earlier run left behind
    try:
        the_lab.up(3)
        yield the_lab
    finally:
        the_lab.down()
        os.close(fd)


@pytest.fixture
def registry(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Optional[str]]:
    """The ``fleet`` fixture's registry: None (SQLite, the default) or, for a test
    parametrized with labkit.ON_BOTH_REGISTRIES, the URL of a real one-member etcd on
    loopback (fleetd in Fleet runs on the machine, not in a namespace), taken down after."""
    kind = getattr(request, "param", "sqlite")
    if kind == "sqlite":
        yield None
        return
    assert kind == "etcd", kind
    with etcd_cluster(str(tmp_path / "etcd"), 1) as c:
        yield "etcd://" + ",".join(c.endpoints)


@pytest.fixture
def fleet(lab: Lab, tmp_path: Any, registry: Optional[str]) -> Iterator[Fleet]:
    f = Fleet(lab, str(tmp_path), registry=registry)
    f.start()
    assert f.api.get("/v1/health")["registry"] == ("etcd" if registry else "sqlite")
    yield f
    f.stop()
    for h in lab.hosts():
        reset_host(lab, h)


@pytest.fixture
def lone_fleet(tmp_path: Any) -> Iterator[Fleet]:
    """A real fleetd with no lab and no machines (nothing it is asked for is ever placed):
    for what fleetd itself answers. Its stop fails the test if fleetd does not end
    within 15 s of SIGTERM."""
    os.makedirs(tmp_path / "fleetd")
    f = Fleet(None, str(tmp_path / "fleetd"))
    f.start()
    yield f
    f.stop()


@pytest.fixture
def cluster(fleet: Fleet, lab: Lab) -> Fleet:
    """fleetd with the lab's 3 hosts registered and up."""
    for h in lab.hosts():
        fleet.add(h)
    wait_for("3 machines up",
             lambda: all(m["state"] == "up" for m in fleet.machines().values()), 20)
    return fleet

