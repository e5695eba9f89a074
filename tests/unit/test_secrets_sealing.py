"""Secrets at rest (fleetd.daemon.secrets) and their service (daemon/service/secrets.py):
sealed with AES-256-GCM under a 0600 key file made on first use, bound to their name,
never stored, answered or logged in clear; removal refused while a unit uses one."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
from pathlib import Path

import pytest

from fleetd.daemon import secrets as sealing
from fleetd.daemon.service.errors import Conflict, Invalid, NotFound
from fleetd.daemon.service.secrets import Secrets
from fleetd.registry.base import LAUNCHED, UnitInput
from fleetd.registry.sqlite import SqliteRegistry
from fleetd.testing.registry import MemoryRegistry, at_once
from fleetd.units.model import content_hash

VALUE = "correct horse battery staple"
USER = "[Service]\nExecStart=/bin/true\nSecretEnvironment=DB=db_pw\n"


def test_sealed_values_open_with_their_key_and_name_only() -> None:
    key, other = os.urandom(32), os.urandom(32)
    sealed = sealing.seal(key, "db_pw", VALUE)
    assert sealed.startswith("v1:") and VALUE not in sealed
    assert sealing.seal(key, "db_pw", VALUE) != sealed  # a fresh nonce each time
    assert sealing.open_sealed(key, "db_pw", sealed) == VALUE
    with pytest.raises(LookupError, match="does not open with this fleetd's secrets key"):
        sealing.open_sealed(other, "db_pw", sealed)
    with pytest.raises(LookupError):  # copied under another name: refused
        sealing.open_sealed(key, "other", sealed)
    with pytest.raises(LookupError, match="form this fleetd does not know"):
        sealing.open_sealed(key, "db_pw", VALUE)


def test_the_key_is_made_once_with_mode_0600(tmp_path: Path) -> None:
    path = str(tmp_path / "secrets.key")
    assert sealing.load_key(path, create=False) is None  # never made by a reader
    assert not os.path.exists(path)
    key = sealing.load_key(path, create=True)
    assert key is not None and len(key) == 32
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert sealing.load_key(path, create=True) == key  # kept, not replaced
    assert sorted(os.listdir(tmp_path)) == ["secrets.key"]


def test_a_key_others_may_read_or_not_a_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "secrets.key"
    sealing.load_key(str(path), create=True)
    path.chmod(0o640)
    with pytest.raises(sealing.SecretKeyError, match=r"mode 0640.*chmod 600"):
        sealing.load_key(str(path), create=True)
    path.write_text("not a key\n")
    path.chmod(0o600)
    with pytest.raises(sealing.SecretKeyError, match="not a key fleetd made"):
        sealing.load_key(str(path), create=False)


def _service(tmp_path: Path, registry: object = None) -> Secrets:
    reg = registry if registry is not None else MemoryRegistry()
    return Secrets(reg, str(tmp_path / "secrets.key"), lambda: None)  # type: ignore[arg-type]


def test_set_stores_only_the_sealed_value(tmp_path: Path, loop: asyncio.AbstractEventLoop,
                                          caplog: pytest.LogCaptureFixture) -> None:
    registry = SqliteRegistry(str(tmp_path / "registry.db"))
    service = _service(tmp_path, registry)
    caplog.set_level(logging.DEBUG)
    row = loop.run_until_complete(service.set("db_pw", VALUE))
    assert row["name"] == "db_pw" and VALUE not in repr(row) and "sealed" not in row
    assert service.lookup("db_pw") == (row["version"], VALUE)
    assert VALUE not in repr(service.rows()) and VALUE not in caplog.text
    loop.run_until_complete(registry.close())
    for name in os.listdir(tmp_path):  # the SQLite file, its WAL, the key
        assert VALUE.encode() not in (tmp_path / name).read_bytes(), name


def test_each_set_is_a_new_version(tmp_path: Path, loop: asyncio.AbstractEventLoop) -> None:
    service = _service(tmp_path)
    first = loop.run_until_complete(service.set("db_pw", "one"))["version"]
    second = loop.run_until_complete(service.set("db_pw", "two"))["version"]
    assert first != second and service.lookup("db_pw") == (second, "two")


def test_a_value_under_another_key_is_a_reason(tmp_path: Path,
                                               loop: asyncio.AbstractEventLoop) -> None:
    registry = MemoryRegistry()
    loop.run_until_complete(_service(tmp_path, registry).set("db_pw", VALUE))
    (tmp_path / "other").mkdir()
    elsewhere = _service(tmp_path / "other", registry)  # another fleetd, without the key
    with pytest.raises(LookupError, match=r"no secrets key at .*copy the key file"):
        elsewhere.lookup("db_pw")
    sealing.load_key(str(tmp_path / "other" / "secrets.key"), create=True)  # a wrong one
    with pytest.raises(LookupError, match="does not open"):
        _service(tmp_path / "other", registry).lookup("db_pw")


@pytest.mark.parametrize("name", ["", "-x", "a/b", "../x", "a b", "x" * 129])
def test_bad_names_are_invalid_naming_the_field(tmp_path: Path, name: str,
                                                loop: asyncio.AbstractEventLoop) -> None:
    with pytest.raises(Invalid, match=r"^name: secret name"):
        loop.run_until_complete(_service(tmp_path).set(name, VALUE))


def test_bad_values_are_invalid_without_quoting_them(tmp_path: Path,
                                                     loop: asyncio.AbstractEventLoop) -> None:
    with pytest.raises(Invalid, match=r"^value: .*NUL") as err:
        loop.run_until_complete(_service(tmp_path).set("db_pw", "hunter\0two"))
    assert "hunter" not in str(err.value)
    with pytest.raises(Invalid, match=r"^value: want a string, not int"):
        loop.run_until_complete(_service(tmp_path).set("db_pw", 5))
    assert not (tmp_path / "secrets.key").exists()


def test_removal_is_refused_while_a_unit_uses_it(tmp_path: Path,
                                                 loop: asyncio.AbstractEventLoop) -> None:
    registry = MemoryRegistry()
    service = _service(tmp_path, registry)
    loop.run_until_complete(service.set("db_pw", VALUE))
    at_once(registry.put_units([UnitInput("a.service", USER, content_hash(USER))], LAUNCHED))
    assert service.rows()[0]["units"] == ["a.service"]
    with pytest.raises(Conflict, match=r"secret db_pw is used by a\.service"):
        loop.run_until_complete(service.remove("db_pw"))
    assert service.lookup("db_pw") is not None
    at_once(registry.delete_units(["a.service"]))
    assert loop.run_until_complete(service.remove("db_pw")) == {"name": "db_pw",
                                                                "removed": True}
    assert service.lookup("db_pw") is None and service.rows() == []
    with pytest.raises(NotFound, match="secret db_pw does not exist"):
        loop.run_until_complete(service.remove("db_pw"))
