#!/bin/sh
# guest-pid1.sh: a systemd host's PID 1 until it execs systemd (fleetd.lab.systemd_host),
# run by guest-launch.sh as `sh -ec` in the new PID, mount, UTS, IPC and cgroup namespaces.
# It follows shared/lab/sd-pid1.sh with an overlay instead of a bind of the rootfs.
# Environment: R (the overlay's mount point), LOWER, UPPER, WORK (its layers), CG (the
# cgroup hierarchies to mount), SOURCE (a fleetd tree to mount at GUEST_SOURCE, or ""),
# HOST_NAME.

mount -t overlay overlay -o "lowerdir=$LOWER,upperdir=$UPPER,workdir=$WORK" "$R"
mount -t proc proc "$R/proc"
# global sysctls must not be touched by the guest (systemd-sysctl would set kernel.pid_max)
for p in sys sysrq-trigger; do
  [ -e "$R/proc/$p" ] || continue
  mount --bind "$R/proc/$p" "$R/proc/$p"; mount -o remount,bind,ro "$R/proc/$p"
done
mount -t sysfs -o ro sysfs "$R/sys"
mount -t tmpfs -o mode=755 cgroup_root "$R/sys/fs/cgroup"
for c in $CG; do
  mkdir "$R/sys/fs/cgroup/$c"
  case $c in
    systemd) mount -t cgroup -o none,name=systemd cgroup "$R/sys/fs/cgroup/$c" ;;
    unified) mount -t cgroup2 cgroup2 "$R/sys/fs/cgroup/$c" ;;
    *)       mount -t cgroup -o "$c" cgroup "$R/sys/fs/cgroup/$c"
             case $c in *,*) for one in $(echo "$c" | tr , ' '); do
               ln -s "$c" "$R/sys/fs/cgroup/$one"; done ;; esac ;;
  esac
done
mount -t tmpfs -o mode=755 tmpfs "$R/run"
mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
mount -t tmpfs -o mode=755 tmpfs "$R/dev"
# Device nodes of the guest's own (mknod on its tmpfs), never binds of the machine's: the
# guest's systemd chowns and chmods /dev/console (and may touch the others), and through a
# bind that was the machine's /dev/null (it became crw--w---- root:tty). The console is a
# null device: nothing reads a lab guest's console.
mknod -m 666 "$R/dev/null" c 1 3
mknod -m 666 "$R/dev/zero" c 1 5
mknod -m 666 "$R/dev/full" c 1 7
mknod -m 666 "$R/dev/random" c 1 8
mknod -m 666 "$R/dev/urandom" c 1 9
mknod -m 666 "$R/dev/tty" c 5 0
mknod -m 600 "$R/dev/console" c 1 3
mkdir "$R/dev/pts" "$R/dev/shm"
mount -t devpts -o newinstance,ptmxmode=0666 devpts "$R/dev/pts"
ln -s pts/ptmx "$R/dev/ptmx"; mount -t tmpfs -o mode=1777 tmpfs "$R/dev/shm"
if [ -n "$SOURCE" ]; then
  mkdir -p "$R$GUEST_SOURCE"
  mount --bind "$SOURCE" "$R$GUEST_SOURCE"; mount -o remount,bind,ro "$R$GUEST_SOURCE"
fi
hostname "$HOST_NAME"
cd "$R" || exit; mkdir -p .oldroot; pivot_root . .oldroot; umount -l /.oldroot; rmdir /.oldroot
exec env -i container=fleetd-lab /lib/systemd/systemd
