#!/bin/sh
# probe.sh PREFIX STATE_DIR SERVICE MARK: what this host offers the agent, one key=value
# fact a line (fleetd.bootstrap.probe.parse reads them). It writes nothing that stays.
# The Python it runs must run on any python3 (an old one reports its version too): no
# f-strings.
prefix=$1; state=$2; service=$3; mark=$4
echo "probe=1"
echo "uid=$(id -u 2>/dev/null)"
echo "user=$(id -un 2>/dev/null)"
echo "arch=$(uname -m 2>/dev/null)"
echo "kernel=$(uname -r 2>/dev/null)"
echo "pid1=$(cat /proc/1/comm 2>/dev/null)"
if [ -d /run/systemd/system ]; then echo "run_systemd=1"; fi
echo "cgroup_fs=$(stat -fc %T /sys/fs/cgroup 2>/dev/null)"
if [ -d /sys/fs/cgroup/unified ]; then echo "cgroup_unified=1"; fi
seen=""
for name in python3 python3.14 python3.13 python3.12 python3.11 python3.10 python3.9 \
            python3.8 python3.7 python3.6 python3.5; do
  path=$(command -v "$name" 2>/dev/null) || continue
  case "$path" in /*) ;; *) continue ;; esac
  real=$(readlink -f "$path" 2>/dev/null || echo "$path")
  case " $seen " in *" $real "*) continue ;; esac
  seen="$seen $real"
  info=$("$path" -I -c '
import platform, sys
try:
    import psutil
    p = psutil.__version__
except Exception:
    p = "-"
lib, ver = platform.libc_ver()
print("%d.%d.%d %s %s:%s" % (sys.version_info[:3] + (p, lib or "-", ver or "-")))
' 2>/dev/null | tail -n 1) || info="? - -:-"
  echo "python=$path $info"
done
check() {
  p=$2
  while [ ! -e "$p" ]; do p=$(dirname "$p"); done
  echo "$1_existing=$p"
  if [ -d "$p" ] && out=$(mktemp -d "$p/.fleetd-probe.XXXXXX" 2>&1); then
    rmdir "$out"; echo "$1_writable=1"
  else
    echo "$1_writable=0"; echo "$1_error=$(echo "$out" | tail -n 1)"
  fi
  df -Pk "$p" 2>/dev/null | awk -v k="$1" 'NR == 2 { print k "_free_kb=" $4; print k "_mount=" $6 }'
}
check prefix "$prefix"
check state "$state"
if [ -d /run/systemd/system ]; then check units /etc/systemd/system; fi
if cur=$(readlink "$prefix/current" 2>/dev/null); then echo "installed=${cur##*/}"; fi
# the version directories are named by fleetd (0.1.0-<hash>, <id>.partial): ls lists them whole
# shellcheck disable=SC2012
if [ -d "$prefix/versions" ]; then echo "versions=$(ls "$prefix/versions" | tr '\n' ' ')"; fi
if [ -f "/etc/systemd/system/$service" ]; then
  echo "service_file=1"
  case "$(head -n 1 "/etc/systemd/system/$service")" in "$mark"*) echo "service_ours=1" ;; esac
fi
if command -v systemctl >/dev/null 2>&1; then
  echo "service_active=$(systemctl is-active "$service" 2>/dev/null)"
fi
if pid=$(cat "$state/agent.pid" 2>/dev/null) && [ -r "/proc/$pid/cmdline" ]; then
  echo "agent_pid=$pid"
  echo "agent_cmdline=$(tr '\000' ' ' < "/proc/$pid/cmdline")"
fi
for j in $(command -v java 2>/dev/null) /usr/lib/jvm/*/bin/java /usr/java/*/bin/java; do
  [ -x "$j" ] || continue
  home=$(dirname "$(dirname "$(readlink -f "$j")")")
  case " $javas " in *" $home "*) continue ;; esac
  javas="$javas $home"
  v=$(sed -n 's/^JAVA_VERSION="\(.*\)"/\1/p' "$home/release" 2>/dev/null)
  [ -n "$v" ] || v=$("$j" -version 2>&1 | sed -n '1s/.*version "\([^"]*\)".*/\1/p')
  echo "java=$home ${v:-?}"
done
echo "probe_end=1"
