#!/bin/sh
# uninstall.sh PREFIX STATE_DIR SERVICE PURGE WAIT_S OWN_STATE MARK [CREATED...]: stop
# the agent (its service, if fleetd wrote the service file: its first line is MARK; and
# a detached one); with PURGE=1, remove what the install recorded making (CREATED:
# innermost first) and the agent's empty cgroups. Prints stopped=, symlink=, left=UNIT
# (unit records still there), remains=PATH (could not be removed) and purged=1.
# shellcheck source-path=SCRIPTDIR
. ./stop_detached.sh
prefix=$1; state=$2; service=$3; purge=$4; wait_s=$5; own_state=$6; mark=$7; shift 7
unit="/etc/systemd/system/$service"
ours=0  # a service file fleetd did not write is never stopped nor removed
if [ -f "$unit" ]; then case "$(head -n 1 "$unit")" in "$mark"*) ours=1 ;; esac; fi
if [ $ours = 1 ] && command -v systemctl >/dev/null 2>&1; then
  if [ "$(systemctl is-active "$service" 2>/dev/null)" = active ]; then echo "stopped=1"; fi
  systemctl disable --now --quiet "$service" 2>&1 || true
fi
stop_detached "$state" "$wait_s"
[ "$purge" = 1 ] || exit 0
for p in "$prefix" "$state"; do
  if [ -L "$p" ]; then echo "symlink=$p"; exit 0; fi
done
for r in "$state"/units/*.json; do [ -e "$r" ] && basename "$r" .json | sed 's/^/left=/'; done
mid=$(cat "$state/machine-id" 2>/dev/null)
mine=""
if [ $ours = 1 ]; then
  rm -f "$unit"
  systemctl daemon-reload 2>&1 || true
  mine="$unit"
fi
rm -rf "$prefix/current" "$prefix/current.new" "$prefix/versions" "$prefix/install-record"
if [ "$own_state" = 1 ]; then rm -rf "$state"; mine="$mine $state"; fi
for d in "$@"; do rmdir "$d" 2>/dev/null || true; [ "$d" = "$prefix" ] && mine="$mine $d"; done
if [ -n "$mid" ]; then
  for d in /sys/fs/cgroup/*/fleet/"$mid" /sys/fs/cgroup/fleet/"$mid"; do
    [ -d "$d" ] || continue
    find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null
    rmdir "$(dirname "$d")" 2>/dev/null || true
  done
fi
# word splitting wanted: the paths are checked (Target.check) to need no quoting
for p in $mine; do
  [ -e "$p" ] || continue
  # a mount point cannot go (a lab host's own state directory is one): emptied is gone
  if [ -d "$p" ] && [ -z "$(ls -A "$p")" ] \
     && awk -v p="$p" '$5 == p { m = 1 } END { exit !m }' /proc/self/mountinfo; then
    continue
  fi
  echo "remains=$p"
done
echo "purged=1"
