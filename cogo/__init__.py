"""Cogo: run your AI agents reliably, as actors on NATS JetStream.

    import cogo

    app = cogo.App("lexicon")

    @app.agent("lexicon.count.0", policy={"max_attempts": 3})
    async def count(ctx: cogo.TaskContext, doc: Text) -> dict:
        return {"words": len(doc.text.split())}

Run it with ``cogo run lexicon.agents:app`` (or ``cogo up --app lexicon.agents:app``);
submit with ``cogo.Client``, ``POST /api/tasks`` or plain NATS.
"""

from cogo.errors import BudgetExhausted, CogoError, PermanentWorkerError, TaskFailed, WorkerError
from cogo.errors import TaskSignalTimeout as SignalTimeout
from cogo.sdk.app import AgentSpec, App
from cogo.sdk.client import Client
from cogo.sdk.context import Outcome, TaskContext
from cogo.sdk.handle import TaskHandle
from cogo.sdk.llm import LlmReply, LlmUsage, ToolCall
from cogo.sdk.worker import Worker
from cogo.streams.envelope import Usage
from cogo.streams.status import TaskStatus

__version__ = "0.1.0"

__all__ = [
    "AgentSpec",
    "App",
    "BudgetExhausted",
    "Client",
    "CogoError",
    "LlmReply",
    "LlmUsage",
    "Outcome",
    "PermanentWorkerError",
    "SignalTimeout",
    "TaskContext",
    "TaskFailed",
    "TaskHandle",
    "TaskStatus",
    "ToolCall",
    "Usage",
    "Worker",
    "WorkerError",
]
