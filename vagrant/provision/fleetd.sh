#!/bin/sh
# Provisioning of the fleetd VM (run as root by `vagrant up`/`vagrant provision`):
# fleetd from the project in /vagrant as a systemd service, the lab's key and known
# hosts, and the agents added (fleetd pushes the agent to each: the bootstrap).
# Env: FLEETD_AGENTS, "NAME:IP:METADATA ..." (set by the Vagrantfile).
set -eu
KEYS=/vagrant/vagrant/.keys   # made on the host by the Vagrantfile's trigger, rsynced here

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends \
    python3 python3-venv git rsync openssh-client ca-certificates >/dev/null

[ -x /opt/fleetd/bin/python ] || python3 -m venv /opt/fleetd
/opt/fleetd/bin/pip install -q /vagrant
ln -sf /opt/fleetd/bin/fleetd /opt/fleetd/bin/fleetctl /opt/fleetd/bin/fleet-agent /usr/local/bin/

# The key fleetd logs in to the agents with, and their host keys (checked strictly).
install -d -m 700 /etc/fleetd
install -m 600 "$KEYS/fleetd_ed25519" /etc/fleetd/id_ed25519
install -m 644 "$KEYS/known_hosts" /etc/fleetd/known_hosts

cat > /etc/systemd/system/fleetd.service <<'UNIT'
[Unit]
Description=fleetd: runs units across the lab's agents
After=network-online.target
Wants=network-online.target

[Service]
ExecStart=/opt/fleetd/bin/fleetd
Restart=on-failure

[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable -q fleetd
systemctl restart fleetd   # the code may be new (vagrant provision)

i=0
until fleetctl list-machines >/dev/null 2>&1; do
  i=$((i + 1))
  [ $i -lt 60 ] || { journalctl -u fleetd -n 20 --no-pager; echo "fleetd did not start" >&2; exit 1; }
  sleep 0.5
done

known=$(fleetctl list-machines --no-legend --fields machine)
pending=""
for agent in $FLEETD_AGENTS; do
  name=${agent%%:*}
  echo "$known" | grep -qx "$name" && echo "fleetd: $name already registered" && continue
  pending="$pending $agent"
done
# fleetd pushes the agent to each (the bootstrap), so an agent VM must answer first: the
# VMs may boot in parallel (libvirt), so retry for a while, then say how to add it later.
tries=0
while [ -n "$pending" ] && [ $tries -lt 60 ]; do
  left=""
  for agent in $pending; do
    name=${agent%%:*}; rest=${agent#*:}; ip=${rest%%:*}; metadata=${rest#*:}
    if ! fleetctl machine add "root@$ip" --name "$name" --metadata "$metadata" \
        --identity /etc/fleetd/id_ed25519 --known-hosts /etc/fleetd/known_hosts \
        2>"/tmp/fleetd-add-$name.err"
    then
      left="$left $agent"
    fi
  done
  pending=$left
  [ -z "$pending" ] || { tries=$((tries + 1)); sleep 5; }
done
for agent in $pending; do
  name=${agent%%:*}; rest=${agent#*:}; ip=${rest%%:*}; metadata=${rest#*:}
  echo "fleetd: $name not reachable yet ($(tail -1 "/tmp/fleetd-add-$name.err")); add it later with:" >&2
  echo "  vagrant ssh fleetd -c 'sudo fleetctl machine add root@$ip --name $name" \
       "--metadata $metadata --identity /etc/fleetd/id_ed25519" \
       "--known-hosts /etc/fleetd/known_hosts'" >&2
done
echo "fleetd ready: vagrant ssh fleetd -c 'sudo fleetctl list-machines'"
