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
for d in null zero full random urandom tty; do
  touch "$R/dev/$d"; mount --bind "/dev/$d" "$R/dev/$d"
done
touch "$R/dev/console"; mount --bind /dev/null "$R/dev/console"
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
