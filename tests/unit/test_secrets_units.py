"""SecretEnvironment= in unit files and what a secret does to a spec (fleetd.units.secrets):
the names a unit reads, errors at file:line, and the hash that rolls a unit when one of
its secrets gets a new version."""

from __future__ import annotations

import pytest

from fleetd.testing.secrets import MemorySecrets
from fleetd.units import secrets
from fleetd.units.model import load
from fleetd.units.parser import UnitError

EXEC = "[Service]\nExecStart=/bin/true\n"
JAVA = "[X-Fleet]\nDriver=java\n[X-Java]\nJar=/opt/app.jar\n[Service]\n"


def test_secret_environment_names_variables_and_secrets() -> None:
    unit = load("a.service", EXEC + "SecretEnvironment=DB=db_pw KEY=vendor.key-1\n"
                "SecretEnvironment=TOKEN=t_0\n", "a.service")
    assert unit.config["secret_environment"] == {"DB": "db_pw", "KEY": "vendor.key-1",
                                                 "TOKEN": "t_0"}


def test_a_java_unit_takes_secrets_too() -> None:
    unit = load("j.service", JAVA + "SecretEnvironment=DB=db_pw\n", "j.service")
    assert unit.config["secret_environment"] == {"DB": "db_pw"}


def test_a_unit_without_secrets_has_no_field() -> None:
    assert "secret_environment" not in load("a.service", EXEC, "a.service").config


@pytest.mark.parametrize("line, why", [
    ("SecretEnvironment=DB=\n", "secret name ''"),
    ("SecretEnvironment=DB=-x\n", "secret name '-x'"),
    ("SecretEnvironment=DB=a/b\n", "secret name 'a/b'"),
    ("SecretEnvironment=DB=" + "x" * 129 + "\n", "want 1 to 128"),
    ("SecretEnvironment=1DB=x\n", "'1DB=x' is not VAR=secret_name"),
    ("SecretEnvironment=DB\n", "'DB' is not VAR=secret_name"),
])
def test_a_bad_reference_is_an_error_at_its_line(line: str, why: str) -> None:
    with pytest.raises(UnitError) as err:
        load("a.service", EXEC + "\n" + line, "/srv/a.service")
    assert str(err.value).startswith("/srv/a.service:4: SecretEnvironment=: ")
    assert why in str(err.value)


def test_a_systemd_unit_refuses_secrets_at_the_line() -> None:
    text = "[X-Fleet]\nDriver=systemd\n[Service]\nSecretEnvironment=DB=x\nExecStart=/bin/true\n"
    with pytest.raises(UnitError, match=r"^a.service:4: SecretEnvironment=: only exec and java"
                                        r".*Driver=systemd at a.service:2 makes this a "
                                        r"systemd unit"):
        load("a.service", text, "a.service")


def test_values_are_checked() -> None:
    assert secrets.check_value("pa ss\nword") == "pa ss\nword"
    with pytest.raises(ValueError, match="NUL"):
        secrets.check_value("a\0b")
    with pytest.raises(ValueError, match="at most 65536 bytes"):
        secrets.check_value("x" * (secrets.VALUE_MAX + 1))


def test_the_hash_is_the_units_without_secrets_and_moves_with_each_version() -> None:
    assert secrets.sealed_hash("h", {}) == "h"
    one = secrets.sealed_hash("h", {"DB": ("db", "v1")})
    assert one != "h"
    assert secrets.sealed_hash("h", {"DB": ("db", "v1")}) == one
    assert secrets.sealed_hash("h", {"DB": ("db", "v2")}) != one  # a new version rolls
    assert secrets.sealed_hash("h", {"DB": ("other", "v1")}) != one
    assert secrets.sealed_hash("h", {"PW": ("db", "v1")}) != one
    assert secrets.sealed_hash("g", {"DB": ("db", "v1")}) != one


def test_seal_gives_the_values_and_a_hash_of_their_versions() -> None:
    source = MemorySecrets()
    source.set("db", "hunter2")
    hash_, values = secrets.seal("h", {"DB": "db", "ALSO": "db"}, source)  # type: ignore[misc]
    assert values == {"DB": "hunter2", "ALSO": "hunter2"}
    assert "hunter2" not in hash_
    source.set("db", "hunter3")
    assert secrets.seal("h", {"DB": "db", "ALSO": "db"}, source)[0] != hash_


def test_a_missing_secret_is_a_reason_naming_it() -> None:
    source = MemorySecrets()
    assert secrets.seal("h", {"DB": "db"}, source) == \
        "secret db is not set (fleetctl secret set db)"
    assert secrets.seal("h", {"DB": "db", "K": "k"}, source) == \
        "secrets db, k are not set (fleetctl secret set NAME)"
    assert secrets.seal("h", {}, None) == ("h", {})
    assert secrets.seal("h", {"DB": "db"}, None) == "this fleetd keeps no secrets"


def test_a_secret_that_does_not_open_is_a_reason_without_its_value() -> None:
    source = MemorySecrets()
    source.set("db", "hunter2")
    source.unreadable.add("db")
    why = secrets.seal("h", {"DB": "db"}, source)
    assert why == "secret db: does not open with this fleetd's secrets key"


def test_masked_shows_names_never_values() -> None:
    assert secrets.masked({"DB": "db"}) == {"DB": "*** (secret db)"}
