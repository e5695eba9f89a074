from fleetd.daemon.main import main

main()
