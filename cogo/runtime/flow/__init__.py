"""Flow control: admission of held tasks of the routes that have a ``flow`` policy.

``admission`` (one ``FlowControl`` per dispatcher: partitions, leases, the fast path),
``admitter`` (one route's admission while its partition is held), ``fairness`` (the pure
choice of the next task: limits, priorities, round-robin keys) and ``slotlog`` (the
admitter's write-ahead log of slots). Names and wire types on the bus: ``cogo.streams.flow``.
"""
