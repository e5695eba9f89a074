import sys

from fleetd.agent.main import main

sys.exit(main())
