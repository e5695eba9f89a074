"""systemd's text both ways: the unit file fleetd hands to systemd (units.systemd_text),
and what the systemd driver makes of ``systemctl show`` (its pure parsing half; the real
systemd is in tests/integration/test_systemd_driver.py). The show outputs below are
systemd 252's, captured in the lab."""

from __future__ import annotations

from typing import Any, Dict

import pytest

from fleetd.drivers.base import DriverError
from fleetd.drivers.systemd_files import check_name, dropin_text
from fleetd.drivers.systemd_show import parse_show, service_status
from fleetd.units import systemd_text
from fleetd.units.context import UnitContext
from fleetd.units.model import parse_name
from fleetd.units.parser import UnitError, parse

UNIT = """\
# a vendor's unit, run by Driver=systemd
[Unit]
Description=Vendor daemon %n
After=network.target

[X-Fleet]
Driver=systemd
MachineMetadata=role=db

[Service]
Type=forking
PIDFile=/run/vendor.pid
ExecStart=
ExecStart=/opt/vendor/bin/daemon \\
  --config /etc/vendor.conf
ExecStart=/opt/vendor/bin/daemon --second
MemoryMax=64M
CPUQuota=50%
TasksMax=32
ProtectSystem=full

[X-Check]
Type=tcp
Port=5432

[Install]
WantedBy=multi-user.target
"""


def ctx(text: str, name: str = "vendor.service") -> UnitContext:
    return UnitContext(parse(text, name), parse_name(name), name)


def test_render_drops_fleet_sections_and_keeps_the_rest_in_order() -> None:
    assert systemd_text.render(parse(UNIT)) == """\
[Unit]
Description=Vendor daemon %n
After=network.target

[Service]
Type=forking
PIDFile=/run/vendor.pid
ExecStart=
ExecStart=/opt/vendor/bin/daemon    --config /etc/vendor.conf
ExecStart=/opt/vendor/bin/daemon --second
MemoryMax=64M
CPUQuota=50%
TasksMax=32
ProtectSystem=full

[Install]
WantedBy=multi-user.target
"""


def test_render_means_the_same_to_the_parser_minus_fleet_sections() -> None:
    original = parse(UNIT)
    again = parse(systemd_text.render(original))
    kept = [(e.section, e.key, e.value) for e in original.entries
            if not e.section.startswith("X-")]
    assert [(e.section, e.key, e.value) for e in again.entries] == kept


def test_a_section_split_by_a_fleet_section_stays_in_file_order() -> None:
    text = "[Service]\nExecStart=/bin/a\n[X-Fleet]\nDriver=systemd\n[Service]\nRestart=always\n"
    assert systemd_text.render(parse(text)) == \
        "[Service]\nExecStart=/bin/a\nRestart=always\n"


def test_only_fleet_sections_renders_empty() -> None:
    assert systemd_text.render(parse("[X-Fleet]\nDriver=systemd\n")) == ""


def test_keys_with_x_prefix_in_systemd_sections_are_systemds_business() -> None:
    text = "[Unit]\nX-Note=kept\n[Service]\nExecStart=/bin/a\n"
    assert "X-Note=kept" in systemd_text.render(parse(text))


def test_config_carries_text_type_timeouts_and_limits() -> None:
    cfg = systemd_text.config(ctx(UNIT))
    assert cfg["unit_text"] == systemd_text.render(parse(UNIT))
    assert cfg["type"] == "forking"  # fleetd's own drivers refuse it; systemd runs it
    assert cfg["timeout_start_s"] == 90.0 and cfg["timeout_stop_s"] == 90.0
    assert cfg["limits"]["memory_max"] == 64 << 20
    assert cfg["limits"]["cpu_quota"] == 0.5
    assert cfg["limits"]["tasks_max"] == 32


@pytest.mark.parametrize(("service", "start", "stop"), [
    ("ExecStart=/bin/a\nTimeoutSec=5", 5.0, 5.0),
    ("ExecStart=/bin/a\nTimeoutSec=5\nTimeoutStopSec=1min", 5.0, 60.0),
    ("ExecStart=/bin/a\nTimeoutStartSec=infinity", None, 90.0),
    ("ExecStart=/bin/a\nTimeoutStartSec=0", None, 90.0),
    ("Type=oneshot\nExecStart=/bin/a", None, 90.0),  # systemd: no start timeout
    ("Type=oneshot\nExecStart=/bin/a\nTimeoutStartSec=10", 10.0, 90.0),
])
def test_timeouts_follow_systemd(service: str, start: float, stop: float) -> None:
    cfg = systemd_text.config(ctx(f"[Service]\n{service}\n"))
    assert (cfg["timeout_start_s"], cfg["timeout_stop_s"]) == (start, stop)


@pytest.mark.parametrize(("text", "message"), [
    ("[Service]\nType=daemonish\nExecStart=/bin/a\n", "x.service:2: Type=: Type=daemonish"),
    ("[Service]\nRestart=always\n", "has no ExecStart="),
    ("[Service]\nExecStart=/bin/a\nTimeoutSec=soon\n", "x.service:3: TimeoutSec="),
    ("[Service]\nExecStart=/bin/a\nMemoryMax=lots\n", "x.service:3: MemoryMax="),
])
def test_config_errors_name_file_line_and_option(text: str, message: str) -> None:
    with pytest.raises(UnitError, match=message.replace("(", r"\(")):
        systemd_text.config(ctx(text, "x.service"))


def test_oneshot_may_go_without_exec_start() -> None:
    cfg = systemd_text.config(ctx("[Service]\nType=oneshot\nExecStop=/bin/a\n"))
    assert (cfg["type"], cfg["timeout_start_s"]) == ("oneshot", None)
    assert "ExecStart" not in cfg["unit_text"] and "ExecStop=/bin/a" in cfg["unit_text"]


# --- the driver reading systemctl show ------------------------------------------------------
def show(**props: Any) -> Dict[str, str]:
    base = {"LoadState": "loaded", "ActiveState": "active", "SubState": "running",
            "MainPID": "139", "NRestarts": "0", "ExecMainCode": "0", "ExecMainStatus": "0",
            "Result": "success", "MemoryMax": "infinity", "LoadError": "",
            "NeedDaemonReload": "no"}
    base.update({k: str(v) for k, v in props.items()})
    return base


@pytest.mark.parametrize(("props", "state", "exit_status", "error"), [
    ({}, "running", None, None),
    ({"NRestarts": 1, "MainPID": 144}, "running", None, None),
    ({"ActiveState": "activating", "SubState": "start", "MainPID": 0}, "starting", None, None),
    ({"ActiveState": "activating", "SubState": "auto-restart", "MainPID": 0,
      "Result": "signal", "ExecMainCode": 2, "ExecMainStatus": 9}, "starting", -9,
     "killed by SIGKILL"),
    ({"ActiveState": "deactivating", "SubState": "stop-sigterm"}, "stopping", None, None),
    ({"ActiveState": "active", "SubState": "exited", "MainPID": 0, "ExecMainCode": 1},
     "exited", 0, None),
    # systemd unloads a cleanly ended unit at once: no record of the run is left
    ({"ActiveState": "inactive", "SubState": "dead", "MainPID": 0}, "stopped", None, None),
    ({"ActiveState": "inactive", "SubState": "dead", "MainPID": 0, "ExecMainCode": 1},
     "exited", 0, None),
    ({"ActiveState": "failed", "SubState": "failed", "MainPID": 0, "Result": "exit-code",
      "ExecMainCode": 1, "ExecMainStatus": 203}, "failed", 203, "exited 203"),
    ({"ActiveState": "failed", "SubState": "failed", "MainPID": 0, "Result": "signal",
      "ExecMainCode": 2, "ExecMainStatus": 9, "MemoryMax": 67108864}, "failed", -9,
     "killed by SIGKILL (the OOM killer, most likely: MemoryMax=64M)"),
    ({"ActiveState": "failed", "SubState": "failed", "MainPID": 0, "Result": "oom-kill",
      "ExecMainCode": 2, "ExecMainStatus": 9, "MemoryMax": 67108864}, "failed", -9,
     "killed by the OOM killer (MemoryMax=64M)"),
    ({"ActiveState": "failed", "SubState": "failed", "MainPID": 0, "Result": "core-dump",
      "ExecMainCode": 3, "ExecMainStatus": 11}, "failed", -11,
     "killed by SIGSEGV (core dumped)"),
    ({"ActiveState": "failed", "SubState": "failed", "MainPID": 0,
      "Result": "start-limit-hit"}, "failed", None, "restarted too often"),
    ({"ActiveState": "failed", "SubState": "failed", "MainPID": 0, "Result": "exit-code"},
     "failed", None, "ExecStartPre="),
])
def test_show_maps_to_fleet_states(props: Dict[str, Any], state: str,
                                   exit_status: Any, error: Any) -> None:
    st = service_status(show(**props))
    assert st["state"] == state
    assert st["exit_status"] == exit_status
    if error is None:
        assert st["error"] is None
    else:
        assert error in st["error"]


def test_show_of_several_units_and_an_unknown_one() -> None:
    text = ("MainPID=154\nLoadState=loaded\nActiveState=active\nSubState=running\n\n"
            "MainPID=0\nLoadState=not-found\nActiveState=inactive\nSubState=dead\n"
            'LoadError=org.freedesktop.systemd1.NoSuchUnit "Unit nope.service not found."\n')
    a, nope = (service_status(b) for b in parse_show(text))
    assert (a["state"], a["pid"], a["known"]) == ("running", 154, True)
    assert (nope["state"], nope["pid"], nope["known"]) == ("stopped", None, False)
    assert nope["load_error"] == "Unit nope.service not found."


def test_dropin_quotes_for_systemd() -> None:
    text = dropin_text("web@1.service", 'odd "id" 100%')
    assert 'Environment="FLEET_UNIT=web@1.service" "FLEET_MACHINE_ID=odd \\"id\\" 100%%"' \
        in text


@pytest.mark.parametrize("name", ["../etc/passwd", "a/b.service", "web.socket", "",
                                  ".service", "web@.service"])
def test_names_that_are_not_service_units_are_refused(name: str) -> None:
    with pytest.raises(DriverError):
        check_name(name)


def test_show_reads_systemds_counters_of_the_units_cgroup_as_usage() -> None:
    st = service_status(show(ActiveState="active", SubState="running", MainPID=7,
                             MemoryCurrent=5 << 20, CPUUsageNSec=2_500_000_000,
                             TasksCurrent=3))
    assert st["usage"] == {"memory_bytes": 5 << 20, "cpu_usage_usec": 2_500_000, "tasks": 3}
    # counters systemd does not keep (accounting off, not running) are left out
    off = service_status(show(ActiveState="inactive", SubState="dead", MainPID=0,
                              MemoryCurrent="[not set]", CPUUsageNSec=2**64 - 1))
    assert off["usage"] == {}
