"""What fleetd and fleet-agent agree on: the one rule for a unit's name (names), the one
way a number is read (numbers), the one way a command line is split (execline: split by
fleetd at submit, expanded by the agent at start), the shape of a unit spec and its
config with the defaults of an absent field (unitspec), and the shape of every message
(messages; fleetd.protocol encodes them). Both sides import this package, so it uses
only the standard library and runs on Python 3.9+ (the agent side's rule)."""
