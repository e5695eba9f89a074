"""What fleetd and fleet-agent agree on, beyond the message format: the one rule for a
unit's name, the one way a number is read and the one way a command line is split (split
by fleetd at submit, expanded by the agent at start). Both sides import this package, so
it uses only the standard library and runs on Python 3.9+ (the agent side's rule)."""
