"""The local multi-host lab (``fleetctl lab``): fleetd.lab.netns makes the hosts
(fleetd.lab.host), each with its sshd (fleetd.lab.sshd); fleetd.lab.systemd_host boots
the systemd ones from fleetd.lab.rootfs; fleetd.lab.daemon tells fleetd of them."""

DEFAULT_LAB_DIR = "/var/lib/fleet-lab"
