"""The registry contract for secrets (fleetd/registry/base.py), on SQLite and
MemoryRegistry (the ``reg`` of test_registry_contract.py) and, through
tests/integration/test_registry_contract_etcd.py, on a real etcd: a secret is stored
whole (sealed, as given), replaced by the next put, listed by name, deleted once."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from test_registry_contract import reg  # noqa: F401  (the fixture: every registry)

from fleetd.registry.base import NotFound, Registry, SecretRecord
from fleetd.registry.sqlite import SqliteRegistry

A = SecretRecord("db_pw", "v1:c2VhbGVk", "0123456789abcdef", 1700000000.5)
B = SecretRecord("api.key-2", "v1:b3RoZXI=", "fedcba9876543210", 1700000001.0)


async def test_secrets_are_stored_listed_and_read_back(reg: Registry) -> None:  # noqa: F811
    assert reg.list_secrets() == [] and reg.get_secret("db_pw") is None
    await reg.put_secret(A)
    await reg.put_secret(B)
    assert reg.get_secret("db_pw") == A
    assert reg.list_secrets() == [B, A]  # by name


async def test_a_put_replaces_the_secret_of_its_name(reg: Registry) -> None:  # noqa: F811
    await reg.put_secret(A)
    newer = SecretRecord("db_pw", "v1:bmV3", "1111111111111111", 1700000002.0)
    await reg.put_secret(newer)
    assert reg.get_secret("db_pw") == newer and reg.list_secrets() == [newer]


async def test_delete_forgets_one_secret_once(reg: Registry) -> None:  # noqa: F811
    await reg.put_secret(A)
    await reg.put_secret(B)
    await reg.delete_secret("db_pw")
    assert reg.get_secret("db_pw") is None and reg.list_secrets() == [B]
    with pytest.raises(NotFound, match="secret db_pw does not exist"):
        await reg.delete_secret("db_pw")


async def test_secrets_leave_units_and_machines_alone(reg: Registry) -> None:  # noqa: F811
    await reg.put_secret(A)
    assert reg.list_units() == [] and reg.list_machines() == []


def test_sqlite_keeps_secrets_across_a_reopen(tmp_path: Path,
                                              loop: asyncio.AbstractEventLoop) -> None:
    path = str(tmp_path / "registry.db")
    first = SqliteRegistry(path)
    loop.run_until_complete(first.put_secret(A))
    loop.run_until_complete(first.close())
    again = SqliteRegistry(path)
    assert again.list_secrets() == [A]
    loop.run_until_complete(again.close())
