"""``fleetctl lab up --vm M``: the counts that cannot make a lab are refused before
anything is made, naming the option and what would fit (fleetd.lab.vm_lab.check), and
the VM hosts are the last M of h1..hN."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from fleetd.cli.main import cli
from fleetd.lab import vm_lab


@pytest.mark.parametrize("args, message", [
    (["--hosts", "1", "--vm", "1"], "--vm 1: want 0 to --hosts minus 1 (0)"),
    (["--hosts", "3", "--vm", "-1"], "--vm -1: want 0 to --hosts minus 1 (2)"),
    (["--hosts", "3", "--vm", "1", "--systemd", "3"],
     "--systemd 3 with --vm 1: want at most --hosts minus --vm (2)"),
])
def test_lab_up_refuses_vm_counts_that_do_not_fit(tmp_path: Path, args: list[str],
                                                 message: str) -> None:
    lab_dir = tmp_path / "lab"
    result = CliRunner().invoke(cli, ["lab", "up", *args, "--lab-dir", str(lab_dir)])
    assert result.exit_code == 1
    assert f"Error: {message}" in result.output
    assert "Traceback" not in result.output
    assert not lab_dir.exists()  # refused before anything was made


def test_the_vm_hosts_are_the_last_of_the_hosts() -> None:
    assert vm_lab.names(4, 2) == ["h3", "h4"]
    assert vm_lab.names(3, 0) == []
