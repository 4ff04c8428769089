"""Workflows: definitions as data, the planner, the node engine, runs as folds of events.

    definition.py   node types (Publish, Wait, Gate, Notify, Retry), parameters, the catalog
    expressions.py  the safe condition language and ``${...}`` templates
    planner.py      definition + parameters -> a checked ``Plan`` (nothing runs)
    engine.py       (plan, run state, now) -> next actions; deterministic event ids
    run.py          ``RunState``: the fold of a run's events
    history.py      where workflow events go in ``EVENTS`` and how they are read back
    commands.py     ``cogo workflow run|plan|state|list|cancel|defs``

The orchestrator actor (``cogo.actors.orchestrator``) drives runs; the HTTP routes are in
``cogo.http.orchestrator``.

Workflow events (subject ``events.<type>.wf.<workflowId>.<runId>``, ``correlation_id`` =
run id, ``data.run_id`` / ``data.workflow_id`` always set; ``task_id`` of the event is
left empty so task views only see tasks: the node's task id is ``data.task_id``):

    workflow_started    <run>:started              data.plan (the whole checked plan)
    node_started        <run>:<node>:started:<n>   attempt, data.node_id, node_type,
                                                   task_id/route/task (Publish, Notify),
                                                   deadline (Wait, unix s), event/condition
    node_succeeded      <run>:<node>:outcome:<n>   duration_ms, data.result
    node_failed         <run>:<node>:outcome:<n>   error_code, error, data.retry_at (Retry)
    gate_passed/failed  <run>:<node>:outcome:<n>   data.condition, data.verdict
    node_skipped        <run>:<node>:skipped       data.reason: condition | upstream
    workflow_succeeded/failed/cancelled  <run>:outcome   duration_ms, error_code, error
"""
