#!/bin/bash
# vm-build.sh: build the lab VM's image into $BUILD (run by fleetd.lab.vm.image, which
# renames $BUILD into the cache only when this script succeeded).
#
# Env: BUILD (an empty dir), MIRROR, SUITE, PACKAGES (comma-separated, for debootstrap).
# Leaves in $BUILD: vmlinuz (the cloud kernel: NVMe and ext4 built in, so no initrd),
# root.img (ext4 made from the tree with mkfs.ext4 -d: no loop device, no mount) and
# ssh_host_ed25519_key.pub (the image's one fixed host key, for the lab's known_hosts).
# Per boot, the kernel command line brings what differs between VMs (fleetd.lab.vm):
# root's authorized key (fleet_lab.key=, read by sshd's AuthorizedKeysCommand), the
# hostname and the machine id.
set -euo pipefail
: "${BUILD:?}" "${MIRROR:?}" "${SUITE:?}" "${PACKAGES:?}"
cd "$BUILD"

echo "== kernel: linux-image-cloud-amd64 and the versioned package it depends on"
mkdir kpkg
versioned=$(apt-cache depends linux-image-cloud-amd64 |
            awk '/Depends: linux-image-[0-9]/ {print $2; exit}')
if [ -z "$versioned" ]; then
  echo "vm-build: apt-cache knows no linux-image-cloud-amd64 (run apt-get update?)" >&2
  exit 1
fi
(cd kpkg && apt-get download -q linux-image-cloud-amd64 "$versioned")
# unpacked aside: dpkg -x into the tree would replace its usr-merge /lib symlink
dpkg -x kpkg/"$versioned"_*.deb kx
kver=$(ls kx/lib/modules)
cp "kx/boot/vmlinuz-$kver" vmlinuz

echo "== root tree: debootstrap $SUITE"
debootstrap --variant=minbase "--include=$PACKAGES" "$SUITE" rootfs "$MIRROR"
mkdir -p rootfs/usr/lib/modules
cp -a "kx/lib/modules/$kver" rootfs/usr/lib/modules/
chroot rootfs /usr/sbin/depmod -a "$kver"
rm -rf kx kpkg rootfs/var/cache/apt/archives/*.deb

echo "== ssh: a fixed host key, root's key from the kernel command line"
rm -f rootfs/etc/ssh/ssh_host_*
ssh-keygen -q -t ed25519 -N '' -C fleet-lab-vm -f rootfs/etc/ssh/ssh_host_ed25519_key
cp rootfs/etc/ssh/ssh_host_ed25519_key.pub .
cat > rootfs/usr/local/sbin/fleet-lab-keys <<'EOF'
#!/bin/sh
# sshd's AuthorizedKeysCommand: root's one key is the lab identity this VM was booted
# with (fleet_lab.key=ALGO:BASE64 on the kernel command line; fleetd.lab.vm).
[ "$1" = root ] || exit 0
read -r cmdline < /proc/cmdline
for word in $cmdline; do
  case $word in
    fleet_lab.key=*) key=${word#fleet_lab.key=}; echo "${key%%:*} ${key#*:}" ;;
  esac
done
EOF
chmod 755 rootfs/usr/local/sbin/fleet-lab-keys
cat > rootfs/etc/ssh/sshd_config.d/fleet-lab.conf <<'EOF'
# fleet lab VM: key-only root login with the lab's identity; the one fixed host key
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
AuthorizedKeysCommand /usr/local/sbin/fleet-lab-keys %u
AuthorizedKeysCommandUser nobody
UseDNS no
MaxStartups 100:30:200
EOF

echo "== system: fstab, network (QEMU user-mode), no timers"
echo "/dev/nvme0n1 / ext4 rw,relatime 0 1" > rootfs/etc/fstab
echo fleet-lab-vm > rootfs/etc/hostname
printf '127.0.0.1 localhost\n::1 localhost ip6-localhost\n' > rootfs/etc/hosts
# the VM reaches no network (restrict=on): no name server to wait for; its own name
# (systemd.hostname=, per boot) resolves through libnss-myhostname
rm -f rootfs/etc/resolv.conf  # a symlink would lead out of the tree
echo "# fleet lab VM: no network, no name server" > rootfs/etc/resolv.conf
# a set machine id: an empty one would make every boot a first boot (systemd-firstboot);
# each VM gets its own through systemd.machine_id= on the kernel command line
tr -d - < /proc/sys/kernel/random/uuid > rootfs/etc/machine-id
cat > rootfs/etc/systemd/network/10-lab.network <<'EOF'
[Match]
Name=en* eth*
[Network]
Address=10.0.2.15/24
Gateway=10.0.2.2
EOF
systemctl --root=rootfs enable systemd-networkd.service >/dev/null 2>&1
systemctl --root=rootfs mask apt-daily.timer apt-daily-upgrade.timer dpkg-db-backup.timer \
  e2scrub_all.timer fstrim.timer e2scrub_reap.service systemd-networkd-wait-online.service \
  getty@tty1.service serial-getty@ttyS0.service >/dev/null 2>&1

echo "== ext4 image from the tree"
mkfs.ext4 -q -F -L root -d rootfs root.img 2G
rm -rf rootfs
