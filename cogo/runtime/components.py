"""The runtime's own components: the dispatcher, the workflow engine and the projector.

They are not agents (they take no tasks through the dispatcher, they are the bus machinery),
so they are declared here and not in the app of the agents Cogo ships (``cogo.agents``).
``cogo run dispatcher`` / ``orchestrator`` / ``projector`` and ``cogo up`` find them with
Cogo's own agents (``cogo.runtime.loader.builtin``). Classes are named as ``"module:Class"``
so that running one imports only its module (``cogo run dispatcher`` does not load DuckDB).
"""

from __future__ import annotations

from cogo.sdk.app import App
from cogo.streams.envelope import EXECUTE_SUBJECT, RESULT_SUBJECT, RESULTS_SUBJECT, RETRY_SUBJECT
from cogo.streams.topology import ORCHESTRATOR_ROUTES

components = App("cogo", _builtin=True)

# workers' reports arrive on RESULTS (orchestrator.results.0); orchestrator.result.0 on TASKS
# is where versions before it reported, still drained after an upgrade
components.add(
    "cogo.runtime.dispatcher:ExecutorDispatcher",
    name="dispatcher",
    routes=[EXECUTE_SUBJECT, RESULTS_SUBJECT, RESULT_SUBJECT, RETRY_SUBJECT],
    tasks=False,
)
# one command queue per partition of runs; a process pulls those whose lease it holds
components.add(
    "cogo.runtime.workflow_engine:WorkflowEngine",
    name="orchestrator",
    routes=ORCHESTRATOR_ROUTES,
    tasks=False,
)
# runs inside `cogo up` (it owns the DuckDB file there); `cogo run projector` elsewhere
components.add("cogo.projections.projector:Projector", name="projector", routes=[], tasks=False, up=False)
