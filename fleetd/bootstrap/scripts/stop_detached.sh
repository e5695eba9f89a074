#!/bin/sh
# Functions, included by stop.sh and uninstall.sh.

# alive PID: a process is gone once it is a zombie: a detached agent's parent (the
# attach that started it) is long gone, and whoever inherited it may reap it late
alive() {
  [ -r "/proc/$1/stat" ] || return 1
  [ "$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d ' ' -f 1)" != Z ]
}

# stop_detached STATE WAIT_S: stop the agent named by the pid file, if it is one (not a
# reused pid): SIGTERM, wait, SIGKILL past WAIT_S (its programs are not signalled)
stop_detached() {
  pid=$(cat "$1/agent.pid" 2>/dev/null) || return 0
  [ -r "/proc/$pid/cmdline" ] || return 0
  tr '\000' ' ' < "/proc/$pid/cmdline" | grep -q fleet || return 0
  kill -TERM "$pid" 2>/dev/null || return 0
  echo "stopped=$pid"
  i=0
  while alive "$pid" && [ $i -lt $(($2 * 20)) ]; do sleep 0.05; i=$((i + 1)); done
  if alive "$pid"; then kill -KILL "$pid" 2>/dev/null; echo "killed=$pid"; fi
}
