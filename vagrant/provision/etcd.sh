#!/bin/sh
# Provisioning of a control VM's etcd member (FLEETD_SERVERS > 1; run as root by
# `vagrant up`/`vagrant provision`, before fleetd.sh): Debian's etcd-server as one member
# of a static cluster of the control VMs, whose fleetd share it as their registry.
# Env (set by the Vagrantfile): ETCD_NAME (fleetdK), ETCD_IP (its private address),
# ETCD_CLUSTER ("fleetd1=http://IP:2380,...": every member, this one included).
#
# The cluster is bootstrapped statically: every member knows all the others from the
# start, so no discovery service is needed and the VMs may come up in any order. A
# member waits for a quorum of the others, so etcd is started without waiting for it
# (--no-block); fleetd, which needs the quorum, retries until there is one (fleetd.sh).
# Plain HTTP on the lab's private network: this is a throwaway lab (a real cluster
# uses TLS: fleetd's [etcd] ca/cert/key).
set -eu
name=${ETCD_NAME:?ETCD_NAME unset}
ip=${ETCD_IP:?ETCD_IP unset}
cluster=${ETCD_CLUSTER:?ETCD_CLUSTER unset}

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends etcd-server >/dev/null

# The package started a single-member etcd of its own (data in /var/lib/etcd/default);
# this member's data lives elsewhere, so that one is never mistaken for the lab's.
cat > /etc/default/etcd.new <<CONF
# written by fleetd's vagrant/provision/etcd.sh
ETCD_NAME=$name
ETCD_DATA_DIR=/var/lib/etcd/fleetd-lab
ETCD_LISTEN_PEER_URLS=http://$ip:2380
ETCD_LISTEN_CLIENT_URLS=http://$ip:2379,http://127.0.0.1:2379
ETCD_ADVERTISE_CLIENT_URLS=http://$ip:2379
ETCD_INITIAL_ADVERTISE_PEER_URLS=http://$ip:2380
ETCD_INITIAL_CLUSTER=$cluster
ETCD_INITIAL_CLUSTER_STATE=new
ETCD_INITIAL_CLUSTER_TOKEN=fleetd-vagrant-lab
CONF
if ! cmp -s /etc/default/etcd.new /etc/default/etcd; then
  mv /etc/default/etcd.new /etc/default/etcd
  systemctl enable -q etcd
  systemctl restart --no-block etcd
else
  rm /etc/default/etcd.new
  systemctl start --no-block etcd
fi
echo "etcd member $name ($ip) of $cluster started"
