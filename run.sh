#!/usr/bin/env bash
# One entry point for a fresh Debian 12 machine, as root:
#   ./run.sh demo    install what is needed, bring up a 3-host lab with fleetd, start a unit
#   ./run.sh test    install what is needed, run the static checks and the whole test suite
#   ./run.sh setup   only install (Debian packages + .venv)
#   ./run.sh floors  only the unit tests on the lowest dependency versions allowed (.venv-floors)
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$PWD
VENV=$ROOT/.venv

# Debian packages: sshd for lab hosts, ip for namespaces, venv for Debian's python3
# (nsenter, unshare, setsid and setpriv come with util-linux, which Debian always has);
# redis-server and nginx are real programs the tests supervise (forking, own signals);
# a JDK builds and runs the java driver's test jar; debootstrap builds the lab's systemd
# host (cached in /var/cache/fleetd-lab); supervisor is the peer bench/restart_latency.py
# measures against (its daemon is never started by the package: see policy-rc.d below);
# vagrant (2.3.4, ~7 s without recommends) runs `vagrant validate` on vagrant/Vagrantfile;
# the scripts fleetd runs on hosts (fleetd/{bootstrap,lab}/scripts/*.sh) must pass shellcheck;
# etcd-server (3.4, its etcd.service never started: policy-rc.d) and etcd-client (etcdctl)
# are the etcd the tests run members of (tests/integration/etcdkit.py); qemu-system-x86
# boots the lab's VM hosts (a real pure cgroup v2 kernel: fleetd/lab/vm.py); chromium is
# the real browser the dashboard's tests drive headless (Playwright's own browser download
# cannot be reached here: the tests point it at /usr/bin/chromium); gcc and python3-dev build
# psutil's floor (5.9.0 has no wheel for Python 3.11) for the floors job below.
APT_PACKAGES=(openssh-server openssh-client iproute2 python3 python3-venv
              redis-server nginx-light openjdk-17-jdk-headless debootstrap supervisor vagrant
              shellcheck etcd-server etcd-client qemu-system-x86 chromium gcc python3-dev)

need_root() {
  if [ "$(id -u)" != 0 ]; then
    echo "run.sh: needs root (it installs Debian packages and creates network namespaces)" >&2
    exit 1
  fi
}

setup_system() {
  local missing=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "run.sh: installing ${missing[*]}"
    apt-get update -qq
    # No package may start its daemon: the tests start what they supervise themselves.
    local policy=/usr/sbin/policy-rc.d had_policy=0
    [ -e $policy ] && had_policy=1 || printf '#!/bin/sh\nexit 101\n' > $policy
    chmod +x $policy
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    [ $had_policy = 1 ] || rm -f $policy
  fi
}

setup_venv() {
  # Debian's /usr/bin/python3, not a user's pyenv: lab hosts get their own /root, where a
  # pyenv interpreter would not be found.
  local stamp=$VENV/.installed-$(sha256sum pyproject.toml | cut -c1-16)
  if [ ! -x "$VENV/bin/python" ]; then
    /usr/bin/python3 -m venv "$VENV"
  fi
  if [ ! -f "$stamp" ]; then
    "$VENV/bin/pip" install -q --upgrade pip
    "$VENV/bin/pip" install -q -e ".[test]"
    rm -f "$VENV"/.installed-*; touch "$stamp"
  fi
}

# psutil wheels fleetd pushes to hosts that have no psutil (fleetd.bootstrap): psutil's
# abi3 manylinux wheels for x86_64 and aarch64, fetched once into the venv, where fleetd
# looks for them (FLEETD_WHEELHOUSE overrides). No pip is needed on the hosts.
WHEELHOUSE=$VENV/share/fleetd-wheels
setup_wheels() {
  local arch
  for arch in x86_64 aarch64; do
    ls "$WHEELHOUSE"/psutil-*-abi3-*"$arch"*.whl >/dev/null 2>&1 && continue
    mkdir -p "$WHEELHOUSE"
    "$VENV/bin/pip" download -q --disable-pip-version-check --no-deps --only-binary=:all: \
      --platform "manylinux2014_$arch" --implementation cp --python-version 3.9 \
      --abi abi3 --dest "$WHEELHOUSE" "psutil>=5.9"
  done
}

setup() { need_root; setup_system; setup_venv; setup_wheels; }

demo() {
  setup
  export PATH=$VENV/bin:$PATH
  fleetctl lab down >/dev/null 2>&1 || true
  fleetctl lab up --hosts 3
  fleetctl start units/hello.service
  echo
  fleetctl list-machines
  echo
  fleetctl list-units
  cat <<MSG

The lab is up: fleetd at unix:///run/fleetd/fleetd.sock, hosts h1..h3 (lab dir /var/lib/fleet-lab).
Go on with (PATH=$VENV/bin:\$PATH):
  fleetctl list-unit-files          fleetctl cat hello.service
  fleetctl stop hello.service       fleetctl destroy hello.service
  fleetctl status hello.service     fleetctl journal -f hello.service
  fleetctl start --var port=8080 units/web@1.service units/web@2.service
  fleetctl lab status
Tear it all down with:
  $VENV/bin/fleetctl lab down
MSG
}

# The floors (issue 14 §4): the lowest version of each direct dependency that pyproject.toml
# allows (tools/floors.py reads them from it, markers for this Python; pytest and hypothesis
# at their own floors), in a venv of their own with fleetd itself (--no-deps), running the
# unit tests. Rebuilt only when pyproject.toml or tools/floors.py change (pip's cache keeps
# the downloads); psutil's floor is built here (gcc, python3-dev).
FLOORS_VENV=$ROOT/.venv-floors
floors() {
  local stamp
  stamp=$FLOORS_VENV/.installed-$(cat pyproject.toml tools/floors.py | sha256sum | cut -c1-16)
  if [ ! -f "$stamp" ]; then
    rm -rf "$FLOORS_VENV"
    /usr/bin/python3 -m venv "$FLOORS_VENV"
    /usr/bin/python3 tools/floors.py --also pytest --also hypothesis > "$FLOORS_VENV/floors.txt"
    echo "floors: $(tr '\n' ' ' < "$FLOORS_VENV/floors.txt")"
    "$FLOORS_VENV/bin/pip" install -q -r "$FLOORS_VENV/floors.txt"
    "$FLOORS_VENV/bin/pip" install -q --no-deps -e .
    touch "$stamp"
  fi
  "$FLOORS_VENV/bin/python" -m pytest -q -p no:cacheprovider tests/unit
}

tests() {
  setup
  export PATH=$VENV/bin:$PATH
  echo "== ruff";  ruff check fleetd tests bench tools
  echo "== mypy";  mypy
  echo "== shellcheck (the scripts fleetd and its lab run on hosts; -x follows includes)"
  shellcheck -x fleetd/bootstrap/scripts/*.sh fleetd/lab/scripts/*.sh
  echo "== vermin (agent side and the python3 scripts run on hosts: Python 3.9+)"
  vermin -q --no-tips --violations -t=3.9- --eval-annotations --backport typing \
    fleetd/agent fleetd/drivers fleetd/cgroups fleetd/wire fleetd/protocol.py \
    fleetd/bootstrap/scripts
  echo "== floors (the lowest allowed version of each dependency: the unit tests)"
  floors
  echo "== pytest"
  pytest "$@"
}

case "${1:-}" in
  demo) demo ;;
  test) shift; tests "$@" ;;
  setup) setup ;;
  floors) setup; floors ;;
  *) echo "usage: $0 demo|test|setup|floors" >&2; exit 2 ;;
esac
