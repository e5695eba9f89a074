"""fleetd: run legacy processes, JVM jars and systemd units across VMs, without containers."""

__version__ = "0.1.0"
