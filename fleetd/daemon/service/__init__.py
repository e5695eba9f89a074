"""fleetd's service layer: what the API may do to units and machines, in domain terms.

``units.Units`` and ``machines.Machines`` take their collaborators (the registry, a
read-only ``placement.Placement`` view of the engine, the change counter, the machines'
sessions) and raise ``errors`` (NotFound, Conflict, Invalid, ...), never HTTP statuses.
``waits`` and ``views`` are pure. Nothing here imports ``fleetd.daemon.http``.
"""
