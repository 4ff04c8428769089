"""Actors: one module per actor kind; ``ACTORS`` maps the names ``cogo run`` accepts."""

from __future__ import annotations

import importlib
from typing import Any

# name -> "module:Class"; imported lazily so `cogo run echo` does not load DuckDB
ACTORS: dict[str, str] = {
    "dispatcher": "cogo.actors.dispatcher:ExecutorDispatcher",
    "echo": "cogo.actors.echo:EchoActor",
    "orchestrator": "cogo.actors.orchestrator:Orchestrator",
    "indexer": "cogo.actors.indexer:IndexerActor",
    "notifier": "cogo.actors.notifier:NotifierActor",
    "projector": "cogo.projections.projector:Projector",
    "codegen": "cogo.actors.codegen:CodegenActor",
    "build_test": "cogo.actors.build_test:BuildTestActor",
}


def actor_class(name: str) -> Any:
    """The class registered under ``name`` (KeyError if none)."""
    module, _, cls = ACTORS[name].partition(":")
    return getattr(importlib.import_module(module), cls)


# what `cogo up` starts, one supervised process each (those registered so far)
UP_ACTORS = ["dispatcher", "echo", "codegen", "build_test", "indexer", "notifier", "orchestrator"]
