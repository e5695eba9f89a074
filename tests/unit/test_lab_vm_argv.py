"""fleetd.lab.vm without booting: QEMU's command line keeps every boot clean and the guest
off every network but one loopback forward to its sshd; bad settings are refused naming
what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleetd.lab import vm


def test_qemu_boots_a_snapshot_of_the_image_with_only_a_loopback_ssh_forward() -> None:
    img = vm.Image("/cache/bookworm-vm")
    argv = vm.qemu_argv(img, "h3", 40022, "ssh-ed25519:AAAAC3", "tcg")
    line = " ".join(argv)
    assert argv[0] == vm.QEMU
    assert "-accel tcg -cpu max -machine q35 -smp 2 -m 1024" in line
    assert "file=/cache/bookworm-vm/root.img,if=none,id=root,format=raw,snapshot=on" in argv
    assert "-initrd" not in argv  # the cloud kernel has NVMe and ext4 built in
    assert "user,id=net,restrict=on,hostfwd=tcp:127.0.0.1:40022-:22" in argv
    append = argv[argv.index("-append") + 1].split()
    assert "root=/dev/nvme0n1" in append and "systemd.hostname=h3" in append
    assert "fleet_lab.key=ssh-ed25519:AAAAC3" in append
    assert "-enable-kvm" not in argv
    assert vm.qemu_argv(img, "h3", 40022, "k", "kvm")[3:7] == ["-accel", "kvm", "-cpu", "host"]


def test_two_boots_get_different_machine_ids() -> None:
    img = vm.Image("/cache/bookworm-vm")

    def machine_id() -> str:
        append = vm.qemu_argv(img, "h3", 1, "k", "tcg")
        words = append[append.index("-append") + 1].split()
        return next(w for w in words if w.startswith("systemd.machine_id="))

    assert machine_id() != machine_id()


def test_a_bad_accel_setting_is_refused_naming_the_variable(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(vm.ACCEL_VARIABLE, "hvf")
    with pytest.raises(vm.VmError, match=r"\$FLEETD_LAB_VM_ACCEL='hvf': want kvm or tcg"):
        vm.accel()
    monkeypatch.setenv(vm.ACCEL_VARIABLE, "tcg")
    assert vm.accel() == "tcg"


def test_an_identity_without_its_public_half_is_refused_naming_the_file(
        tmp_path: Path) -> None:
    identity = tmp_path / "id_lab"
    identity.write_text("private")
    with pytest.raises(vm.VmError, match=f"{identity}.pub: not a readable public key"):
        vm._public_key(str(identity))
    (tmp_path / "id_lab.pub").write_text("ssh-ed25519 AAAAC3Nza lab\n")
    assert vm._public_key(str(identity)) == "ssh-ed25519:AAAAC3Nza"


def test_the_known_hosts_line_names_the_forwarded_port(tmp_path: Path) -> None:
    (tmp_path / vm.HOST_KEY_FILE).write_text("ssh-ed25519 AAAAC3Nza fleet-lab-vm\n")
    assert vm.Image(str(tmp_path)).known_hosts_line(40022) == \
        "[127.0.0.1]:40022 ssh-ed25519 AAAAC3Nza\n"
