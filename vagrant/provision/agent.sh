#!/bin/sh
# Provisioning of an agent VM (run as root by `vagrant up`/`vagrant provision`).
# What a host needs before fleetd can push the agent to it (the bootstrap): Python 3
# with psutil, a JRE for the java driver, fleetd's public key in root's authorized_keys,
# and (this lab) its pinned host key. The agent itself comes from fleetd, not from here.
# Env: AGENT_NAME (agent1..3), set by the Vagrantfile.
set -eu
name=${AGENT_NAME:?AGENT_NAME unset}
KEYS=/vagrant/vagrant/.keys   # made on the host by the Vagrantfile's trigger, rsynced here

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    python3 python3-psutil openjdk-17-jre-headless >/dev/null

# fleetd logs in as root with the lab key.
install -d -m 700 /root/.ssh
pub=$(cat "$KEYS/fleetd_ed25519.pub")
grep -qxF "$pub" /root/.ssh/authorized_keys 2>/dev/null || echo "$pub" >> /root/.ssh/authorized_keys
# and `fleetctl machine add --vagrant` logs in as root with the box's own key
if [ -f /home/vagrant/.ssh/authorized_keys ]; then
  while IFS= read -r line; do
    [ -n "$line" ] || continue
    grep -qxF "$line" /root/.ssh/authorized_keys || echo "$line" >> /root/.ssh/authorized_keys
  done < /home/vagrant/.ssh/authorized_keys
fi
chmod 600 /root/.ssh/authorized_keys

# The host key fleetd already has in its known_hosts (see the Vagrantfile).
if ! cmp -s "$KEYS/host_${name}_ed25519" /etc/ssh/ssh_host_ed25519_key; then
  install -m 600 "$KEYS/host_${name}_ed25519" /etc/ssh/ssh_host_ed25519_key
  install -m 644 "$KEYS/host_${name}_ed25519.pub" /etc/ssh/ssh_host_ed25519_key.pub
  systemctl restart ssh
fi
echo "agent $name ready: $(python3 --version), $(java -version 2>&1 | head -1)"
