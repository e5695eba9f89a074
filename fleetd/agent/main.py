"""``fleet-agent``: the host side. Standard library and psutil only; Python 3.9+.

  fleet-agent attach [--state-dir D] [--systemd-service NAME]
                                       relay stdin/stdout to the agent (start it if needed:
                                       detached, or with systemctl start NAME)
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
from fleetd.agent.state import DEFAULT_STATE_DIR


def main(argv: Optional[List[str]] = None, launcher: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="fleet-agent", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    for name in ("attach", "daemon"):
        p = sub.add_parser(name)
        p.add_argument("--state-dir", default=os.environ.get("FLEET_AGENT_STATE_DIR",
                                                             DEFAULT_STATE_DIR))
        if name == "attach":
            p.add_argument("--systemd-service", metavar="NAME",
                           help="the agent runs as this systemd service: start it with "
                                "systemctl, never detached")
    sub.add_parser("version")
    args = parser.parse_args(argv)
    if args.command == "version":
        print(__version__)
        return 0
    if args.command == "attach":
        from fleetd.agent.attach import attach

        return attach(args.state_dir, launcher, args.systemd_service)
    # asyncio imports ssl for TLS the agent never speaks: ~3.5 MB of a ~25 MB agent
    sys.modules.setdefault("ssl", None)  # type: ignore[arg-type]
    from fleetd.agent.daemon import run

    return run(args.state_dir)


if __name__ == "__main__":
    sys.exit(main())
