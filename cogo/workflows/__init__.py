"""Workflows: definitions as data, the planner, the node engine, runs as folds of events.

    definition.py   node types (Publish, Wait, Gate, Notify, Retry, Signal, Map, Workflow),
                    parameters, the catalog
    expressions.py  the safe condition language and ``${...}`` templates
    planner.py      definition + parameters -> a checked ``Plan`` (nothing runs)
    engine.py       (plan, run state, now) -> next actions: a pure function
    actions.py      the actions and the events they carry; deterministic ids
    fanout.py       map nodes: items, bounded parallelism, results in item order
    run.py          ``RunState``: the fold of a run's events (its nodes from nodes.py)
    nodes.py        where each node stands: attempts, map items, the inputs it started with
    record.py       ``RunRecord``: start, outcome, gates, signals: the run-level fold the
                    projection's ``workflow_runs`` stores too (one fold, two readers)
    history.py      where workflow events go in ``EVENTS`` and how they are read back
    inbox.py        the orchestrators' commands and the partition of runs each goes to
    leases.py       which orchestrator drives which partition (KV, compare-and-set, TTL)
    driver.py       carrying out a run's actions on the bus; timers and log watchers
    schedules.py    schedules (cron / interval), their ticks and catch-up, in KV
    scheduler.py    fires due ticks, in the orchestrator holding the scheduler lease
    throughput.py   ``cogo bench --workflow-runs``: runs/s per number of orchestrators
    commands.py     ``cogo workflow ...`` and ``cogo schedule ...``

The orchestrator actor (``cogo.runtime.workflow_engine``) drives runs; the HTTP routes are in
``cogo.http.orchestrator`` and ``cogo.http.schedules``.

Workflow events (subject ``events.<type>.wf.<workflowId>.<runId>``, ``correlation_id`` =
run id, ``data.run_id`` / ``data.workflow_id`` always set; ``task_id`` of the event is
left empty so task views only see tasks: the node's task id is ``data.task_id``):

    workflow_started    <run>:started              data.plan, data.parent (a child run)
    node_started        <run>:<node>:started:<n>   attempt, data.node_id, node_type,
                                                   task_id/route/task (Publish, Notify),
                                                   deadline (Wait, Signal, unix s),
                                                   event/condition, name (Signal),
                                                   child_run_id/child (Workflow), items (Map)
    node_succeeded      <run>:<node>:outcome:<n>   duration_ms, data.result
    node_failed         <run>:<node>:outcome:<n>   error_code, error, data.retry_at (Retry)
    gate_passed/failed  <run>:<node>:outcome:<n>   data.condition, data.verdict
    node_skipped        <run>:<node>:skipped       data.reason: condition | upstream
    map_item_started    <run>:<node>:<n>:item:<i>:started   data.index, task or child
    map_item_succeeded/failed  <run>:<node>:<n>:item:<i>:outcome   data.result / error
    workflow_signaled   <run>:signal:<signal id>   data.name, data.data, data.signal_id
    workflow_succeeded/failed/cancelled  <run>:outcome   duration_ms, error_code, error
"""
