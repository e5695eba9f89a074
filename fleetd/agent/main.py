"""``fleet-agent``: the host side. Standard library and psutil only; Python 3.9+.

  fleet-agent attach [--state-dir D] [--systemd-service NAME] [--start-only]
                                       relay stdin/stdout to the agent (start it if needed:
                                       detached, or with systemctl start NAME); with
                                       --start-only, only start it and print its socket
  fleet-agent daemon [--state-dir D]   run the agent in the foreground
  fleet-agent version

``launcher`` is how to run this same agent again (fleetd.bootstrap's bin/fleet-agent
passes itself: ``python -m fleetd.agent.main`` would not find its modules).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from fleetd import __version__
from fleetd.wire.paths import DEFAULT_STATE_DIR, STATE_DIR_ENV

# What the agent daemon never uses but its imports would load: asyncio imports ssl (for
# TLS the agent never speaks), shutil (argparse's help, the drivers) imports bz2 and lzma
# (for archives), uuid its C helper (uuid4, all the agent makes, needs only os.urandom);
# ~4.6 MB of a 25 MB agent. Each is optional where it is imported. (So
# this module imports nothing that imports asyncio: the state directory's default comes
# from fleetd.wire, not fleetd.agent.state, which imports the drivers and asyncio.)
UNUSED = ("ssl", "bz2", "lzma", "_uuid")


def main(argv: Optional[List[str]] = None, launcher: Optional[List[str]] = None) -> int:
    if (sys.argv[1:] if argv is None else argv)[:1] == ["daemon"]:
        for name in UNUSED:  # before argparse, whose help formatter imports shutil
            sys.modules.setdefault(name, None)  # type: ignore[arg-type]
    parser = argparse.ArgumentParser(prog="fleet-agent", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("attach", "daemon"):
        p = sub.add_parser(name)
        p.add_argument("--state-dir", default=os.environ.get(STATE_DIR_ENV, DEFAULT_STATE_DIR))
        if name == "attach":
            p.add_argument("--systemd-service", metavar="NAME",
                           help="the agent runs as this systemd service: start it with "
                                "systemctl, never detached")
            p.add_argument("--start-only", action="store_true",
                           help="start the agent if its socket does not answer, print "
                                "socket=PATH once it does, and exit: fleetd then reaches "
                                "the socket through sshd's stream-local forwarding")
    sub.add_parser("version")
    args = parser.parse_args(argv)
    if args.command == "version":
        print(__version__)
        return 0
    if args.command == "attach":
        from fleetd.agent.attach import attach, start_only

        if args.start_only:
            return start_only(args.state_dir, launcher, args.systemd_service)
        return attach(args.state_dir, launcher, args.systemd_service)
    from fleetd.agent.daemon import run

    return run(args.state_dir)


if __name__ == "__main__":
    sys.exit(main())
