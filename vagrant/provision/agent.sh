#!/bin/sh
# Provisioning of an agent VM (run as root by `vagrant up`/`vagrant provision`).
# What fleet-agent needs on a host: Python 3 with psutil, a JRE for the java driver,
# fleetd's public key in root's authorized_keys, and (this lab) its pinned host key.
# Env: AGENT_NAME (agent1..3), set by the Vagrantfile.
set -eu
name=${AGENT_NAME:?AGENT_NAME unset}
KEYS=/vagrant/vagrant/.keys   # made on the host by the Vagrantfile's trigger, rsynced here

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    python3 python3-psutil python3-venv openjdk-17-jre-headless >/dev/null

# fleet-agent from the project in /vagrant. The agent side needs only the standard
# library and psutil, which Debian provides: no dependencies from PyPI.
[ -x /opt/fleetd/bin/python ] || python3 -m venv --system-site-packages /opt/fleetd
/opt/fleetd/bin/pip install -q --no-deps /vagrant
ln -sf /opt/fleetd/bin/fleet-agent /usr/local/bin/fleet-agent

# fleetd logs in as root with the lab key.
install -d -m 700 /root/.ssh
pub=$(cat "$KEYS/fleetd_ed25519.pub")
grep -qxF "$pub" /root/.ssh/authorized_keys 2>/dev/null || echo "$pub" >> /root/.ssh/authorized_keys
chmod 600 /root/.ssh/authorized_keys

# The host key fleetd already has in its known_hosts (see the Vagrantfile).
if ! cmp -s "$KEYS/host_${name}_ed25519" /etc/ssh/ssh_host_ed25519_key; then
  install -m 600 "$KEYS/host_${name}_ed25519" /etc/ssh/ssh_host_ed25519_key
  install -m 644 "$KEYS/host_${name}_ed25519.pub" /etc/ssh/ssh_host_ed25519_key.pub
  systemctl restart ssh
fi
echo "agent $name ready: $(python3 --version), $(java -version 2>&1 | head -1)"
