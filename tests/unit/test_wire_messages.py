"""The typed wire (fleetd.wire.messages, fleetd.wire.unitspec) changes nothing on the
wire: every built message is byte for byte what ``protocol.encode`` wrote before, and a
driver's capabilities pick its runner (fleetd.agent.runner)."""

from __future__ import annotations

import dataclasses
import signal
from pathlib import Path
from typing import Any, Dict

import pytest

from fleetd import protocol
from fleetd.agent.state import AgentState
from fleetd.agent.supervisor import Supervisor
from fleetd.cgroups.none import NoneBackend
from fleetd.drivers.base import HOST_SUPERVISED, PROCESS, Handle
from fleetd.drivers.exec import ExecDriver
from fleetd.drivers.java import JavaDriver
from fleetd.drivers.systemd import SystemdDriver
from fleetd.testing.driver import FakeDriver
from fleetd.wire import messages, unitspec

STATUS = protocol.unit_status("a.service", "h" * 64, protocol.RUNNING, pid=7)


@pytest.mark.parametrize(("built", "kind", "fields"), [
    (messages.daemon_hello(1.5), "hello", {"daemon": "fleetd", "heartbeat_s": 1.5,
                                           "epoch": 0}),
    (messages.daemon_hello(1.5, epoch=7), "hello",
     {"daemon": "fleetd", "heartbeat_s": 1.5, "epoch": 7}),
    (messages.agent_hello("m", "h", "1", {"cpus": 2}, ["x.service"]), "hello",
     {"machine_id": "m", "hostname": "h", "agent_version": "1", "facts": {"cpus": 2},
      "fenced": ["x.service"]}),
    (messages.agent_hello("m", "h", "1", {}, [], epoch=7), "hello",
     {"machine_id": "m", "hostname": "h", "agent_version": "1", "facts": {}, "fenced": [],
      "epoch": 7}),
    (messages.log_request("tail", 3, "a.service", 10), "tail",
     {"id": 3, "unit": "a.service", "lines": 10}),
    (messages.log_request("follow", 4, "a.service", 0), "follow",
     {"id": 4, "unit": "a.service", "lines": 0}),
    (messages.unfollow(4), "unfollow", {"id": 4}),
    (messages.ping(9), "ping", {"seq": 9}),
    (messages.bye(), "bye", {}),
    (messages.unit_changed(STATUS), "unit", {"unit": STATUS}),
    (messages.removed("a.service"), "removed", {"name": "a.service"}),
    (messages.reply_error(5, "no"), "reply", {"id": 5, "error": "no"}),
    (messages.heartbeat(2, 1000.5), "heartbeat", {"seq": 2, "time": 1000.5}),
    (messages.error("bad"), "error", {"message": "bad"}),
    (messages.epoch_refused(5, 7), "error",
     {"message": "epoch 5 is older than 7: a newer fleetd leads this host", "epoch": 7}),
])
def test_a_built_message_is_what_encode_writes(built: protocol.Message, kind: str,
                                               fields: Dict[str, Any]) -> None:
    assert protocol.dump(built) == protocol.encode(kind, **fields)
    assert protocol.decode(protocol.dump(built)) == built


def test_a_spec_is_the_same_dict_typed_or_not() -> None:
    config: unitspec.UnitConfig = {"commands": [{"words": ["/bin/true"]}]}
    typed = protocol.unit_spec("a.service", "h" * 64, protocol.WANT_RUNNING, "exec", config)
    plain = protocol.unit_spec("a.service", "h" * 64, protocol.WANT_RUNNING, "exec",
                               dict(config))
    assert typed == plain
    assert typed["generation"] == unitspec.GENERATION


def test_the_shared_defaults() -> None:
    assert unitspec.timeout_stop({}) == unitspec.TIMEOUT_STOP_S == 90.0
    assert unitspec.timeout_stop({"timeout_stop_s": None}) is None  # wait for ever
    assert unitspec.kill_signal({}) == int(signal.SIGTERM)
    assert unitspec.kill_signal({"kill_signal": 9}) == 9


def test_drivers_declare_their_capabilities() -> None:
    exec_driver = ExecDriver()
    assert exec_driver.capabilities == PROCESS
    assert JavaDriver(exec_driver).capabilities == PROCESS
    assert SystemdDriver().capabilities == HOST_SUPERVISED
    assert FakeDriver().capabilities.supervises_itself


def test_the_runner_is_picked_by_capabilities(tmp_path: Path) -> None:
    backend = NoneBackend("test")
    fake = FakeDriver()
    sup = Supervisor(AgentState(str(tmp_path)), "m1", lambda data: None, backend,
                     {"exec": ExecDriver(backend), "systemd": fake})
    assert sup._runner(sup.drivers["exec"]) is sup.processes
    assert sup._runner(fake) is sup.systemd
    assert sup.systemd.driver is fake


def test_a_handle_record_holds_every_field_of_the_handle() -> None:
    handle = Handle(driver="exec", pid=7, create_time=1.5, started_at=2.5,
                    invocation_id="i", start_ticks=99, unit="a.service")
    assert handle.to_record() == dataclasses.asdict(handle)
    assert Handle.from_record(dict(handle.to_record())) == handle
