"""The agent's side of secrets (fleetd.agent.secretfiles, fleetd.drivers.secretenv): the
values leave each spec for one 0400 file in a 0700 directory before the agent keeps or
logs the spec; the driver reads them into the program's environment at each start."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any, Dict

import pytest

from fleetd.agent import secretfiles
from fleetd.drivers import secretenv, spare
from fleetd.drivers.base import DriverError, StartContext
from fleetd.drivers.exec import ExecDriver
from fleetd.drivers.java import JavaDriver, JavaInstall

VALUE = "hunter2-on-the-host"


def spec(name: str, **extra: Any) -> Dict[str, Any]:
    return {"name": name, "hash": "h-" + name, "want": "running", "driver": "exec",
            "config": {"commands": [{"argv": ["/bin/true"]}],
                       "secret_environment": {"DB": "db_pw"}}, **extra}


def test_values_move_to_a_0400_file_and_the_spec_keeps_its_path(tmp_path: Path) -> None:
    out = secretfiles.take(str(tmp_path), [spec("a.service", secrets={"DB": VALUE}),
                                           spec("b.service")])
    assert VALUE not in json.dumps(out)
    assert all("secrets" not in s for s in out)
    path = str(tmp_path / "secrets" / "a.service.json")
    assert out[0]["config"]["secret_file"] == path
    assert "secret_file" not in out[1]["config"]
    assert stat.S_IMODE(os.stat(tmp_path / "secrets").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o400
    assert os.listdir(tmp_path / "secrets") == ["a.service.json"]
    assert secretenv.load(path) == {"DB": VALUE}
    assert secretenv.load(None) == {}


def test_a_new_value_replaces_the_file_and_a_gone_unit_loses_it(tmp_path: Path) -> None:
    secretfiles.take(str(tmp_path), [spec("a.service", secrets={"DB": VALUE})])
    out = secretfiles.take(str(tmp_path), [spec("a.service", secrets={"DB": "new"})])
    assert secretenv.load(out[0]["config"]["secret_file"]) == {"DB": "new"}
    secretfiles.take(str(tmp_path), [spec("b.service")])
    assert os.listdir(tmp_path / "secrets") == []


def test_a_secret_file_from_elsewhere_is_dropped(tmp_path: Path) -> None:
    foreign = spec("a.service")
    foreign["config"]["secret_file"] = "/etc/shadow"
    out = secretfiles.take(str(tmp_path), [foreign])
    assert "secret_file" not in out[0]["config"]


def test_a_file_that_cannot_be_read_names_itself_not_a_value(tmp_path: Path) -> None:
    with pytest.raises(secretenv.SecretFileError, match=r"secrets file .*/none\.json: "):
        secretenv.load(str(tmp_path / "none.json"))
    bad = tmp_path / "bad.json"
    bad.write_text('{"DB": 5, "x": "' + VALUE + '"}')
    with pytest.raises(secretenv.SecretFileError, match="not an object of strings") as err:
        secretenv.load(str(bad))
    assert VALUE not in str(err.value)


def test_exec_and_java_put_the_values_into_the_programs_environment(tmp_path: Path) -> None:
    out = secretfiles.take(str(tmp_path), [spec("a.service", secrets={"DB": VALUE,
                                                                      "K": "v"})])
    config = out[0]["config"]
    config["environment"] = {"DB": "from Environment=", "OTHER": "x"}
    ctx = StartContext(unit="a.service", machine_id="m", log_path="/dev/null",
                       invocation_id="i")
    env = ExecDriver().environment(config, ctx, None)
    assert env["DB"] == VALUE and env["OTHER"] == "x"  # a secret wins over Environment=
    java = {**config, "java": {"jar": None, "main_class": "Main"}}
    jdk = JavaInstall(home="/jvm/17", java="/jvm/17/bin/java", version="17.0.1")
    exec_config = JavaDriver().exec_config(java, [jdk])
    assert ExecDriver().environment(exec_config, ctx, None)["DB"] == VALUE
    (tmp_path / "secrets" / "a.service.json").unlink()
    with pytest.raises(DriverError, match=r"secrets file .*a\.service\.json: No such file"):
        ExecDriver().environment(config, ctx, None)


@pytest.mark.skipif(spare.tool(spare.ENV_PATHS) is None, reason="no env(1)")
def test_a_prepared_process_never_passes_secrets_through_env_argv() -> None:
    """A name sh cannot export sends the whole environment through env(1)'s argv; with
    secrets in it the agent forks the program instead (the script is None)."""
    odd = {"a.b": "1", "DB": VALUE}
    assert spare.script("/bin/true", ["/bin/true"], odd, "/", "/dev/null", None,
                        hidden=True) is None
    shown = spare.script("/bin/true", ["/bin/true"], odd, "/", "/dev/null", None)
    assert shown is not None and b" -i -- " in shown  # env(1), values as its words
    plain = spare.script("/bin/true", ["/bin/true"], {"DB": VALUE}, "/", "/dev/null", None,
                         hidden=True)
    assert plain is not None and b"export " in plain  # a shell builtin: no argv
