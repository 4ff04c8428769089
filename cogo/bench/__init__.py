"""``cogo bench``: how fast an isolated Cogo runs on this machine, end to end.

Parts, one module each, all on one throwaway system (``system``) unless said otherwise:

1. ``tasks_per_s``: ``--tasks`` echo tasks published at once; the clock stops when every
   task's ``execute_done`` is in DuckDB (``system.Bench.run_tasks``).
2. ``latency_ms``: submit -> ``execute_done`` percentiles at each ``--rate`` (``latency``).
3. ``workflow_steps``: a chain of ``--step-nodes`` publish nodes through the real
   orchestrator, per run and per step (``workflow``); ``workflows`` (opt-in,
   ``--workflow-runs N``): runs per second with each ``--orchestrators K``
   (``cogo.workflows.throughput``); ``flow`` (opt-in, ``--flow-tasks N``): the
   dispatcher's CPU per task with flow control off and on (``cogo.bench.flow``).
4. ``scale_out``: sleep-bound tasks with 1, 2, 4 worker processes (``scaleout``).
5. ``http_submit_per_s``: ``POST /api/tasks`` against the facade in its own process
   (``facade``).
6. ``projector_events_per_s``: fresh projectors alone on a pre-filled ``EVENTS``
   (``ingest``).
7. ``history`` (``--history N``, opt-in): the dashboard, the latency API, ``/metrics`` and
   the workflow metrics with N events in their window, on systems of their own (``history``).

Every process's peak RSS and CPU per task are reported, and the disk's fsync pace. Everything
binds 127.0.0.1, every part has a bounded count and a timeout, and the systems are torn
down at the end. ``cli`` holds the options and the order of the parts; ``report`` prints.
"""

from cogo.bench.cli import register

__all__ = ["register"]
