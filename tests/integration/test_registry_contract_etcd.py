"""The registry contract (tests/unit/test_registry_contract.py) on EtcdRegistry and a
real etcd (one member of Debian's etcd-server, shared by the module; each test on a
prefix of its own): every test there, with its ``reg`` fixture an EtcdRegistry. The
unit tests stay free of etcd processes; what only etcd has is in test_registry_etcd.py.
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path
from typing import Iterator

import pytest
from etcdkit import EtcdCluster, etcd_cluster

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from test_registry_contract import *  # noqa: F403  (the contract's tests and fixtures)
from test_registry_secrets import (  # noqa: F401  (the secrets' part of the contract)
    test_a_put_replaces_the_secret_of_its_name,
    test_delete_forgets_one_secret_once,
    test_secrets_are_stored_listed_and_read_back,
    test_secrets_leave_units_and_machines_alone,
)

from fleetd.registry.base import Registry
from fleetd.registry.etcd import EtcdRegistry
from fleetd.registry.etcdv3 import EtcdClient

pytestmark = pytest.mark.etcd


@pytest.fixture(scope="module")
def contract_etcd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with etcd_cluster(str(tmp_path_factory.mktemp("contract-etcd")), 1) as c:
        yield c


@pytest.fixture
def reg(contract_etcd: EtcdCluster,  # the contract's ``reg``, replaced
        loop: asyncio.AbstractEventLoop) -> Iterator[Registry]:
    """An EtcdRegistry on a fresh prefix, opened on the test's loop (its watch runs
    there while the test does)."""
    client = EtcdClient(contract_etcd.endpoints)
    registry = loop.run_until_complete(
        EtcdRegistry.open(client, f"/contract-{uuid.uuid4().hex[:8]}"))
    yield registry
    loop.run_until_complete(registry.close())
    loop.run_until_complete(client.close())
