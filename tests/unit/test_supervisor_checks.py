"""The supervisor's wiring of an [X-Check] exec check: it runs as the unit's program
does - the same environment (User='s $USER/$HOME included, the run's invocation id)
and the same preexec (cgroup, LimitNOFILE=, User=). (The checker itself:
tests/integration/test_health.py.)"""

from __future__ import annotations

import asyncio
import os
import pwd
import time
from pathlib import Path

from fleetd import protocol
from fleetd.agent.managed import Managed
from fleetd.agent.state import AgentState
from fleetd.agent.supervisor import Supervisor
from fleetd.cgroups.none import NoneBackend
from fleetd.drivers.base import Handle
from fleetd.drivers.exec import ExecDriver


def test_an_exec_check_gets_the_environment_of_the_units_run(tmp_path: Path) -> None:
    nobody = pwd.getpwnam("nobody")
    config = {"user": "nobody", "environment": {"A": "1"},
              "check": {"type": "exec", "command": {"words": ["/bin/true"]},
                        "interval_s": 60.0, "on_failure": "none"}}
    spec = protocol.unit_spec("chk.service", "h" * 64, protocol.WANT_RUNNING, "exec", config)

    async def scenario() -> None:
        backend = NoneBackend("test")
        driver = ExecDriver(backend)
        sup = Supervisor(AgentState(str(tmp_path)), "m1", lambda _data: None, backend,
                         {"exec": driver})
        m = Managed(spec)
        handle = Handle(driver="exec", pid=os.getpid(), create_time=0.0,
                        started_at=time.time(), invocation_id="run-1", unit="chk.service")
        m.handle = handle
        m.gone.clear()
        checks = sup.processes.checks
        checks.start(m, handle, driver, sup.context(m))
        try:
            assert m.checker is not None and m.checker.env is not None
            env = m.checker.env
            assert (env["USER"], env["LOGNAME"], env["HOME"]) == \
                ("nobody", "nobody", nobody.pw_dir)
            assert env["A"] == "1" and env["FLEET_UNIT"] == "chk.service"
            assert env["FLEET_INVOCATION_ID"] == "run-1"  # the program's, not a new one
            assert m.checker.preexec is not None
        finally:
            checks.stop(m)

    asyncio.run(scenario())
