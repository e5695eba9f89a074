"""fleetd.cli.vagrant: reading ``vagrant ssh-config`` and ``vagrant status
--machine-readable``, choosing machines, known_hosts lines, and the option checks of
``fleetctl machine add --vagrant``.

The ssh-config samples are Vagrant 2.3.4's own output: its template
(templates/commands/ssh_config/config.erb) rendered by its own TemplateRenderer.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import pytest
from click.testing import CliRunner

from fleetd.cli.main import cli
from fleetd.cli.vagrant import (
    LOGIN_USER,
    SshHost,
    VagrantError,
    add_machines,
    known_hosts_lines,
    parse_ssh_config,
    parse_status,
    prepare,
    select_machines,
)

# `vagrant ssh-config` for two VirtualBox machines (forwarded ports on 127.0.0.1); the
# second's project lives under a path with a space, so Vagrant quotes it, and it has two
# keys (the generated one and the insecure one). Vagrant prints a blank line after each.
VIRTUALBOX = """\
Host agent1
  HostName 127.0.0.1
  User vagrant
  Port 2222
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  PasswordAuthentication no
  IdentityFile /home/me/fleetd/vagrant/.vagrant/machines/agent1/virtualbox/private_key
  IdentitiesOnly yes
  LogLevel FATAL

Host agent2
  HostName 127.0.0.1
  User vagrant
  Port 2200
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  PasswordAuthentication no
  IdentityFile "/home/John Doe/fleetd/vagrant/.vagrant/machines/agent2/virtualbox/private_key"
  IdentityFile "/home/John Doe/.vagrant.d/insecure_private_key"
  IdentitiesOnly yes
  LogLevel FATAL

"""

# vagrant-libvirt: the VM's own address on libvirt's management network, port 22.
LIBVIRT = """\
Host agent3
  HostName 192.168.121.45
  User vagrant
  Port 22
  UserKnownHostsFile /dev/null
  StrictHostKeyChecking no
  PasswordAuthentication no
  IdentityFile /home/me/fleetd/vagrant/.vagrant/machines/agent3/libvirt/private_key
  IdentitiesOnly yes
  LogLevel FATAL
  ForwardAgent yes

"""

# `vagrant status --machine-readable` as Vagrant 2.3.4 prints it (commas in data are
# escaped as %!(VAGRANT_COMMA), newlines as \\n); two machines up, one off, one never made.
STATUS = "".join(f"{line}\n" for line in [
    r"1795525310,fleetd,metadata,provider,virtualbox",
    r"1795525310,agent1,metadata,provider,virtualbox",
    r"1795525310,agent2,metadata,provider,virtualbox",
    r"1795525310,agent3,metadata,provider,virtualbox",
    r"1795525310,fleetd,provider-name,virtualbox",
    r"1795525310,fleetd,state,running",
    r"1795525310,fleetd,state-human-short,running",
    r"1795525310,fleetd,state-human-long,The VM is running. To stop this VM%!(VAGRANT_COMMA)"
    r" you can run `vagrant halt` to\nshut it down forcefully%!(VAGRANT_COMMA) or you can"
    r" run `vagrant suspend` to simply\nsuspend the virtual machine.",
    r"1795525310,agent1,provider-name,virtualbox",
    r"1795525310,agent1,state,running",
    r"1795525310,agent1,state-human-short,running",
    r"1795525310,agent2,provider-name,virtualbox",
    r"1795525310,agent2,state,poweroff",
    r"1795525310,agent2,state-human-short,poweroff",
    r"1795525310,agent3,provider-name,virtualbox",
    r"1795525310,agent3,state,not_created",
    r"1795525310,agent3,state-human-short,not created",
    r"1795525310,agent3,state-human-long,The environment has not yet been created. Run"
    r" `vagrant up` to\ncreate the environment. If a machine is not created%!(VAGRANT_COMMA)"
    r" only the\ndefault provider will be shown.",
    r"1795525310,,ui,info,Current machine states:\n\nfleetd                    running"
    r" (virtualbox)\nagent1                    running (virtualbox)",
])


def test_virtualbox_output_gives_each_host_with_port_user_and_keys() -> None:
    assert parse_ssh_config(VIRTUALBOX) == [
        SshHost("agent1", "127.0.0.1", "vagrant", 2222, (
            "/home/me/fleetd/vagrant/.vagrant/machines/agent1/virtualbox/private_key",)),
        SshHost("agent2", "127.0.0.1", "vagrant", 2200, (
            "/home/John Doe/fleetd/vagrant/.vagrant/machines/agent2/virtualbox/private_key",
            "/home/John Doe/.vagrant.d/insecure_private_key")),
    ]


def test_libvirt_output_and_several_commands_concatenated() -> None:
    hosts = parse_ssh_config(VIRTUALBOX + LIBVIRT)
    assert [(h.name, h.hostname, h.port) for h in hosts] == [
        ("agent1", "127.0.0.1", 2222), ("agent2", "127.0.0.1", 2200),
        ("agent3", "192.168.121.45", 22)]


def test_comments_equals_signs_tabs_case_and_unknown_options() -> None:
    text = f"""\
# written by hand, as ssh_config allows
Host=web1
\thostname = 10.0.0.5{"   "}
  USER root
  # Port 2222
  port=2022
  PubkeyAcceptedKeyTypes +ssh-rsa
  HostKeyAlgorithms +ssh-rsa
  IdentityFile="C:/Users/John Doe/.vagrant.d/insecure_private_key"
  IdentityFile C:\\vagrant\\key
Host web2
  HostName web2.example
"""
    assert parse_ssh_config(text) == [
        SshHost("web1", "10.0.0.5", "root", 2022, (
            "C:/Users/John Doe/.vagrant.d/insecure_private_key", "C:\\vagrant\\key")),
        SshHost("web2", "web2.example", "root", 22, ()),
    ]


def test_no_output_gives_no_hosts() -> None:
    assert parse_ssh_config("") == []
    assert parse_ssh_config("\n\n# nothing\n") == []


@pytest.mark.parametrize(("text", "message"), [
    ("Host a\n  User vagrant\n", "Host a: no HostName"),
    ("  HostName 10.0.0.1\nHost a\n", "line 1: 'HostName 10.0.0.1' comes before any Host"),
    ("Host a\n  HostName x\n  Port 70000\n", "line 3: bad Port '70000'"),
    ("Host a\n  HostName x\n  Port ssh\n", "line 3: bad Port 'ssh'"),
    ("Host a\n  HostName x\n  IdentityFile \"/home/a b/key\n", "line 3: No closing quotation"),
    ("Host a b\n  HostName x\n", "line 1: want one name after Host"),
    ("Host a\n  HostName\n", "line 2: hostname has no value"),
    ("Host a\n  -x y\n", "line 2: '-x y' is not 'Keyword value'"),
])
def test_what_cannot_be_used_names_the_line(text: str, message: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_ssh_config(text)
    assert message in str(info.value)


def test_status_gives_each_machines_state_in_vagrants_order() -> None:
    assert parse_status(STATUS) == {
        "fleetd": "running", "agent1": "running", "agent2": "poweroff",
        "agent3": "not_created"}
    assert parse_status("") == {}


def test_default_selection_is_every_running_machine_but_fleetd() -> None:
    assert select_machines(parse_status(STATUS), []) == ["agent1"]


def test_named_machines_must_exist_and_run() -> None:
    states = parse_status(STATUS)
    assert select_machines(states, ["fleetd", "agent1", "fleetd"]) == ["fleetd", "agent1"]
    with pytest.raises(VagrantError, match=r"agent2 is poweroff, not running \(vagrant up"):
        select_machines(states, ["agent1", "agent2"])
    with pytest.raises(VagrantError, match=r"no machine 'db1' .*fleetd, agent1, agent2, agent3"):
        select_machines(states, ["db1"])


def test_nothing_running_is_an_error_naming_the_states() -> None:
    with pytest.raises(VagrantError, match=r"fleetd is skipped \(--machine fleetd adds it\), "
                                           r"agent2 is poweroff; vagrant up first"):
        select_machines({"fleetd": "running", "agent2": "poweroff"}, [])


def test_known_hosts_lines_from_keyscan_and_from_a_pub_file() -> None:
    scanned = ["# 127.0.0.1:2222 SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3",
               "[127.0.0.1]:2222 ssh-ed25519 AAAAC3Nza1",
               "[127.0.0.1]:2222 ecdsa-sha2-nistp256 AAAAE2Vj2", ""]
    assert known_hosts_lines("127.0.0.1", 2222, scanned) == [
        "[127.0.0.1]:2222 ssh-ed25519 AAAAC3Nza1",
        "[127.0.0.1]:2222 ecdsa-sha2-nistp256 AAAAE2Vj2"]
    assert known_hosts_lines("10.0.0.5", 22, ["ssh-ed25519 AAAAC3Nza1 root@agent1"]) == [
        "10.0.0.5 ssh-ed25519 AAAAC3Nza1"]
    assert known_hosts_lines("10.0.0.5", 22, ["10.0.0.5 ssh-rsa AAAAB3"]) == [
        "10.0.0.5 ssh-rsa AAAAB3"]


class RecordingApi:
    """fleetd's API as ``add_machines`` calls it (Ctx.call): no machine registered yet;
    each POST recorded."""

    def __init__(self) -> None:
        self.posts: List[Tuple[str, Dict[str, Any]]] = []

    def call(self, method: str, path: str, body: Optional[Dict[str, Any]] = None,
             timeout: float = 60.0) -> Dict[str, Any]:
        if method == "GET" and path == "/v1/machines":
            return {"machines": []}
        assert method == "POST" and body is not None, (method, path)
        self.posts.append((path, body))
        return {}


def test_fleetd_logs_in_as_root_to_push_the_agent(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """ssh-config says ``User vagrant``; the machine fleetd is given logs in as root (the
    bootstrap installs the agent as root), with ssh-config's address, port and key."""
    assert LOGIN_USER == "root"
    key = tmp_path / "private_key"
    key.write_text("k")
    (tmp_path / ".keys").mkdir()
    (tmp_path / ".keys" / "host_agent1_ed25519.pub").write_text(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPinned root@agent1\n")  # pinned: no keyscan
    (tmp_path / "status.txt").write_text(STATUS)
    (tmp_path / "ssh-config.txt").write_text(
        VIRTUALBOX.split("\nHost agent2")[0].replace(
            "/home/me/fleetd/vagrant/.vagrant/machines/agent1/virtualbox/private_key",
            str(key)))
    stub = tmp_path / "vagrant"
    stub.write_text(f"#!/bin/sh\ncase \"$1\" in status) cat {tmp_path}/status.txt ;;\n"
                    f"  ssh-config) cat {tmp_path}/ssh-config.txt ;;\n  *) exit 1 ;;\nesac\n")
    stub.chmod(0o755)
    monkeypatch.setenv("FLEETCTL_VAGRANT", str(stub))
    api = RecordingApi()
    add_machines(api, str(tmp_path), [], {"role": "web"}, None, wait=False)  # type: ignore[arg-type]
    known = tmp_path / ".vagrant" / "fleetd" / "agent1.known_hosts"
    assert api.posts == [("/v1/machines", {
        "address": "127.0.0.1", "port": 2222, "user": "root", "name": "agent1",
        "metadata": {"role": "web"}, "identity": str(key), "known_hosts": str(known),
        "agent_command": None})]


def test_a_pinned_host_key_is_used_as_is_no_keyscan(tmp_path: Path) -> None:
    (tmp_path / ".keys").mkdir()
    (tmp_path / ".keys" / "host_agent1_ed25519.pub").write_text(
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPinned root@agent1\n")
    key = tmp_path / "my key"
    key.write_text("private")
    # the port is closed: were it scanned, this would fail
    host = SshHost("agent1", "127.0.0.1", "vagrant", 1, ("/nonexistent/key", str(key)))
    plan = prepare(str(tmp_path), host)
    assert (plan.identity, plan.trust) == (str(key), "pinned")
    assert plan.known_hosts == str(tmp_path / ".vagrant" / "fleetd" / "agent1.known_hosts")
    assert Path(plan.known_hosts).read_text() == (
        "[127.0.0.1]:1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIPinned\n")


def test_a_machine_without_a_readable_key_is_refused(tmp_path: Path) -> None:
    host = SshHost("agent1", "127.0.0.1", "vagrant", 2222, ("/nonexistent/key",))
    with pytest.raises(VagrantError, match=r"agent1: no readable IdentityFile .*/nonexistent/key"):
        prepare(str(tmp_path), host)


@pytest.mark.parametrize(("args", "message"), [
    (["--vagrant", "{dir}", "--name", "x"], "drop --name"),
    (["root@h1", "--vagrant", "{dir}", "--identity", "{key}"], "drop ADDRESS, --identity"),
    (["--machine", "agent1"], "give --vagrant DIR too"),
    ([], "Missing argument 'ADDRESS' (or --vagrant DIR)"),
])
def test_vagrant_option_conflicts_are_usage_errors(tmp_path: Path, args: list,
                                                   message: str) -> None:
    key = tmp_path / "key"
    key.write_text("k")
    argv = [a.format(dir=tmp_path, key=key) for a in args]
    result = CliRunner().invoke(cli, ["--endpoint", f"unix://{tmp_path}/none.sock",
                                      "machine", "add", *argv])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_several_control_vms_are_skipped_by_default() -> None:
    """FLEETD_SERVERS=3: fleetd1..3 are control VMs (etcd member and fleetd), not agents."""
    states = {"fleetd1": "running", "fleetd2": "running", "fleetd3": "running",
              "agent1": "running", "agent2": "poweroff", "fleetdb": "running"}
    assert select_machines(states, []) == ["agent1", "fleetdb"]
    assert select_machines(states, ["fleetd2"]) == ["fleetd2"]
    with pytest.raises(VagrantError, match=r"fleetd1 is skipped \(--machine fleetd1 adds it\)"):
        select_machines({"fleetd1": "running", "agent1": "poweroff"}, [])


# --- the Vagrantfile's machines, read by Ruby with Vagrant's configure stubbed -------------
# Records what the Vagrantfile defines (machines, addresses, provisioners and their env)
# without Vagrant: `vagrant validate` (tests/integration/test_vagrant.py) checks that
# Vagrant takes the file; this checks what it says. Blocks other than a machine's
# definition (the keys trigger, provider settings) are not run.
RUBY_STUB = r"""
require "json"
class Rec
  def initialize(log, vm) @log, @vm = log, vm end
  def method_missing(name, *args, **kw, &blk)
    case name
    when :define then @log << { "define" => args[0] }; blk.call(Rec.new(@log, args[0]))
    when :provision then @log << { "vm" => @vm, "provision" => args[0], "env" => kw[:env] }
    when :network then @log << { "vm" => @vm, "ip" => kw[:ip] }
    when :hostname= then @log << { "vm" => @vm, "hostname" => args[0] }
    end
    self
  end
  def respond_to_missing?(*) true end
end
module Vagrant
  def self.configure(_version) log = []; yield Rec.new(log, nil); puts JSON.generate(log) end
end
load ARGV[0]
"""
VAGRANTFILE = Path(__file__).resolve().parents[2] / "vagrant" / "Vagrantfile"


def vagrantfile(tmp_path: Path, servers: Optional[str]) -> Tuple[int, Any, str]:
    """(exit status, {vm: {"ip", "hostname", provisioner: env}} in definition order, stderr)."""
    ruby = shutil.which("ruby")
    if ruby is None:
        pytest.skip("ruby is not installed (Debian's vagrant package brings it)")
    stub = tmp_path / "stub.rb"
    stub.write_text(RUBY_STUB)
    env = {k: v for k, v in os.environ.items() if k != "FLEETD_SERVERS"}
    if servers is not None:
        env["FLEETD_SERVERS"] = servers
    proc = subprocess.run([ruby, str(stub), str(VAGRANTFILE)], capture_output=True,
                          text=True, env=env, timeout=60)
    vms: Dict[str, Dict[str, Any]] = {}
    for rec in json.loads(proc.stdout) if proc.returncode == 0 else []:
        if "define" in rec:
            vms[rec["define"]] = {}
        elif "provision" in rec:
            vms[rec["vm"]][rec["provision"]] = rec["env"]
        else:
            vms[rec["vm"]].update({k: v for k, v in rec.items() if k != "vm"})
    return proc.returncode, vms, proc.stderr


def test_one_fleetd_on_sqlite_by_default(tmp_path: Path) -> None:
    status, vms, err = vagrantfile(tmp_path, None)
    assert status == 0, err
    assert list(vms) == ["fleetd", "agent1", "agent2", "agent3"]
    assert vms["fleetd"]["ip"] == "192.168.56.10" and "etcd" not in vms["fleetd"]
    assert "FLEETD_REGISTRY" not in vms["fleetd"]["fleetd"]
    assert vms["fleetd"]["fleetd"]["FLEETD_AGENTS"].split() == [
        "agent1:192.168.56.11:role=web,zone=a", "agent2:192.168.56.12:role=web,zone=b",
        "agent3:192.168.56.13:role=batch,zone=b"]


def test_fleetd_servers_3_three_control_vms_with_etcd(tmp_path: Path) -> None:
    status, vms, err = vagrantfile(tmp_path, "3")
    assert status == 0, err
    assert list(vms) == ["fleetd1", "fleetd2", "fleetd3", "agent1", "agent2", "agent3"]
    ips = {n: vms[n]["ip"] for n in ("fleetd1", "fleetd2", "fleetd3")}
    assert ips == {"fleetd1": "192.168.56.21", "fleetd2": "192.168.56.22",
                   "fleetd3": "192.168.56.23"}
    assert len({vm["ip"] for vm in vms.values()}) == 6  # no address twice
    cluster = ",".join(f"{n}=http://{ip}:2380" for n, ip in ips.items())
    registry = "etcd://" + ",".join(f"{ip}:2379" for ip in ips.values())
    for name, ip in ips.items():
        vm = vms[name]
        assert vm["hostname"] == name
        assert list(vm) == ["hostname", "ip", "etcd", "fleetd"]  # etcd provisioned first
        assert vm["etcd"] == {"ETCD_NAME": name, "ETCD_IP": ip, "ETCD_CLUSTER": cluster}
        assert vm["fleetd"]["FLEETD_NAME"] == name
        assert vm["fleetd"]["FLEETD_REGISTRY"] == registry
    # the agents are registered once, by the last control VM, into the shared registry
    assert [n for n in ips if vms[n]["fleetd"]["FLEETD_AGENTS"]] == ["fleetd3"]


@pytest.mark.parametrize("servers", ["2", "0", "three", "-1"])
def test_fleetd_servers_other_counts_are_refused(tmp_path: Path, servers: str) -> None:
    status, _, err = vagrantfile(tmp_path, servers)
    assert status != 0
    assert f'FLEETD_SERVERS="{servers}": want 1 (one fleetd on SQLite), 3 or 5' in err
