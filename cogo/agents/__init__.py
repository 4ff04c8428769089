"""Actors: one module per actor kind, and ``app``, the app that declares Cogo's own.

The built-in actors are declared exactly as a team declares its agents (``cogo.App``):
``cogo run echo`` runs the agent ``echo`` of this app, and ``cogo up`` starts every agent
of it that has ``up=True``. Classes are named as ``"module:Class"`` so that running one
actor imports only its module (``cogo run echo`` does not load DuckDB).
"""

from __future__ import annotations

from cogo.sdk.app import AgentSpec, App
from cogo.streams.envelope import EXECUTE_SUBJECT, RESULT_SUBJECT, RESULTS_SUBJECT, RETRY_SUBJECT
from cogo.streams.topology import ORCHESTRATOR_ROUTES

app = App("cogo", _builtin=True)

# workers' reports arrive on RESULTS (orchestrator.results.0); orchestrator.result.0 on TASKS
# is where versions before it reported, still drained after an upgrade
app.add("cogo.runtime.dispatcher:ExecutorDispatcher", name="dispatcher",
        routes=[EXECUTE_SUBJECT, RESULTS_SUBJECT, RESULT_SUBJECT, RETRY_SUBJECT], tasks=False)  # fmt: skip
app.add("cogo.agents.echo:EchoActor", name="echo", route="echo.run.0",
        policy={"model": "local", "timeout_ms": 10000,
                "backoff": {"initial_ms": 200, "multiplier": 2.0, "max_ms": 5000}})  # fmt: skip
app.add("cogo.agents.codegen:CodegenActor", name="codegen", route="codegen.generate.0",
        policy={"timeout_ms": 120000})  # fmt: skip
app.add("cogo.agents.build_test:BuildTestActor", name="build_test", route="code.build-test.0",
        policy={"model": "local", "timeout_ms": 300000, "max_attempts": 2})  # fmt: skip
app.add("cogo.agents.indexer:IndexerActor", name="indexer", route="indexing.index.0",
        policy={"model": "local", "timeout_ms": 300000})  # fmt: skip
app.add("cogo.agents.notifier:NotifierActor", name="notifier", route="notify.webhook.0",
        policy={"model": "local", "timeout_ms": 10000, "max_attempts": 5})  # fmt: skip
# one command queue per partition of runs; a process pulls those whose lease it holds
app.add("cogo.runtime.workflow_engine:Orchestrator", name="orchestrator",
        routes=ORCHESTRATOR_ROUTES, tasks=False)  # fmt: skip
# runs inside `cogo up` (it owns the DuckDB file there); `cogo run projector` elsewhere
app.add("cogo.projections.projector:Projector", name="projector", routes=[], tasks=False,
        up=False)  # fmt: skip

__all__ = ["AgentSpec", "App", "app"]
