#!/bin/sh
# Provisioning of the fleetd VM (run as root by `vagrant up`/`vagrant provision`):
# fleetd from the project in /vagrant as a systemd service, the lab's key and known
# hosts, and the agents added (fleetd pushes the agent to each: the bootstrap).
# Env (set by the Vagrantfile): FLEETD_AGENTS, "NAME:IP:METADATA ..." (empty: register
# none; with several fleetd only the last control VM does), and with several fleetd
# (FLEETD_SERVERS > 1) FLEETD_NAME and FLEETD_REGISTRY ("etcd://IP:2379,..."): this
# fleetd's name among them and the etcd cluster they share (provision/etcd.sh).
set -eu
FLEETD_AGENTS=${FLEETD_AGENTS-}
FLEETD_REGISTRY=${FLEETD_REGISTRY-}
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

# With etcd: this fleetd's name and the shared registry. fleetd exits while etcd has no
# quorum (the other control VMs may not be up yet): systemd starts it again, forever.
args=""
if [ -n "$FLEETD_REGISTRY" ]; then
  cat > /etc/fleetd/fleetd.toml <<CONF
# written by fleetd's vagrant/provision/fleetd.sh
name = "${FLEETD_NAME:?FLEETD_NAME unset}"
registry = "$FLEETD_REGISTRY"
CONF
  args=" --config /etc/fleetd/fleetd.toml"
fi

cat > /etc/systemd/system/fleetd.service <<UNIT
[Unit]
Description=fleetd: runs units across the lab's agents
After=network-online.target etcd.service
Wants=network-online.target
StartLimitIntervalSec=0

[Service]
ExecStart=/opt/fleetd/bin/fleetd$args
Restart=always
RestartSec=2

[Install]
WantedBy=multi-user.target
UNIT
systemctl daemon-reload
systemctl enable -q fleetd
systemctl restart fleetd   # the code may be new (vagrant provision)

if [ -z "$FLEETD_AGENTS" ]; then
  echo "fleetd ${FLEETD_NAME:-fleetd} started; the last control VM registers the agents"
  exit 0
fi

i=0
until fleetctl list-machines >/dev/null 2>&1; do
  i=$((i + 1))
  [ $i -lt 240 ] || { journalctl -u fleetd -n 20 --no-pager; echo "fleetd did not start" >&2; exit 1; }
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
  echo "  vagrant ssh $(hostname) -c 'sudo fleetctl machine add root@$ip --name $name" \
       "--metadata $metadata --identity /etc/fleetd/id_ed25519" \
       "--known-hosts /etc/fleetd/known_hosts'" >&2
done
echo "fleetd ready: vagrant ssh $(hostname) -c 'sudo fleetctl list-machines'"
