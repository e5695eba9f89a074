"""The local multi-host lab (``fleetctl lab``): fleetd.lab.netns makes the hosts,
fleetd.lab.systemd_host boots the systemd ones, fleetd.lab.daemon tells fleetd of them."""

DEFAULT_LAB_DIR = "/var/lib/fleet-lab"
