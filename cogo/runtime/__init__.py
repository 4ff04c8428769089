"""The runtime: what runs the agents an app declares on the bus.

The actor base (claim, heartbeat, ack, backoff), the dispatcher, flow control
(``cogo.runtime.flow``), the workflow engine, the supervisor and the runner, system start-up
(``cogo.runtime.system``). Users never import it; the SDK and the agents Cogo ships do not
either (``scripts/import_graph.py`` fails if they do).
"""
