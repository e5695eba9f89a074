#!/bin/sh
# guest-launch.sh CGROUP_DIR...: run by `sh -ec` with guest-pid1.sh's text in $INNER:
# moves itself into every cgroup subtree given, then enters the lab netns (NETNS_PATH)
# and new namespaces; unshare --fork makes guest-pid1.sh PID 1.

for p in "$@"; do echo $$ > "$p/cgroup.procs"; done
exec nsenter "--net=$NETNS_PATH" unshare --cgroup --pid --fork --mount --uts --ipc \
  --propagation private /bin/sh -ec "$INNER"
