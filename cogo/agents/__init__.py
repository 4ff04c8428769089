"""The agents Cogo ships, declared as an app exactly as a team declares its own (``cogo.App``).

``cogo run echo`` runs the agent ``echo`` of this app, and ``cogo up`` starts every agent of
it that has ``up=True``. They use the SDK and the foundation only, never the runtime (whose
own components, the dispatcher, the workflow engine and the projector, are declared in
``cogo.runtime.components``). Classes are named as ``"module:Class"`` so that running one
agent imports only its module.
"""

from __future__ import annotations

from cogo.sdk.app import App

app = App("cogo", _builtin=True)

# a diagnostic agent (`cogo up` serves it): echoes, sleeps, fails and spends on request
app.add(
    "cogo.agents.echo:EchoActor",
    name="echo",
    route="echo.run.0",
    policy={"model": "local", "timeout_ms": 10000, "backoff": {"initial_ms": 200, "multiplier": 2.0, "max_ms": 5000}},
)
app.add("cogo.agents.codegen:CodegenActor", name="codegen", route="codegen.generate.0", policy={"timeout_ms": 120000})
app.add(
    "cogo.agents.build_test:BuildTestActor",
    name="build_test",
    route="code.build-test.0",
    policy={"model": "local", "timeout_ms": 300000, "max_attempts": 2},
)
app.add(
    "cogo.agents.indexer:IndexerActor",
    name="indexer",
    route="indexing.index.0",
    policy={"model": "local", "timeout_ms": 300000},
)
app.add(
    "cogo.agents.notifier:NotifierActor",
    name="notifier",
    route="notify.webhook.0",
    policy={"model": "local", "timeout_ms": 10000, "max_attempts": 5},
)

__all__ = ["app"]
