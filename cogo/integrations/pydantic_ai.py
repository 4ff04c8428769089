"""A Pydantic AI ``Agent`` as a Cogo agent: ``await run(ctx, agent, prompt)``.

    from pydantic_ai import Agent
    from cogo.integrations import pydantic_ai as cogo_ai

    agent = Agent("openai:gpt-4o-mini", tools=[lookup, save])

    @app.agent("support.answer.0")
    async def answer(ctx: cogo.TaskContext, q: Question) -> str:
        return (await cogo_ai.run(ctx, agent, q.text)).output

What ``run`` changes, through Pydantic AI's public interfaces only (a run's ``model=``, a
``WrapperModel``, a per-run capability's ``get_wrapper_toolset``, ``event_stream_handler``),
as its own Temporal, DBOS and Prefect integrations do:

- every model request goes to ``ctx.llm`` (the agent's OpenAI-compatible mapping is kept,
  the wire is ``LlmTransport``): the route's model allowance and the task's budget are
  checked before anything is sent, ``llm_call`` is recorded after, and the response is a
  journaled step ``<key>:model:<n>``;
- every tool call (function tools, MCP servers, any toolset) is a journaled step
  ``<key>:tool:<n>:<tool call id>``, ``n`` being the model requests made before it;
- ``stream=True``: the model's text goes to ``ctx.emit`` as it arrives, and each tool call
  as ``{"tool": name, "args": ...}``.

A retried attempt or a worker that died mid-run replays the run from the top: finished
requests and tool calls come back from the journal (nothing is sent or run again), so the
step names must come out the same, which they do because they count requests in order and
take the tool call ids from the journaled responses. ``key`` tells two agent runs in one
handler apart. A tool that raises is not journaled: the exception ends the run, and the
route's policy decides about another attempt (``cogo.WorkerError`` retried,
``cogo.PermanentWorkerError`` not); ``ModelRetry`` goes back to the model as usual.

A tool that is another Cogo agent: ``agent_tool(route, ...)`` builds one that calls it as a
child task with ``ctx.call`` (its own journal, so it is not wrapped in a step).
"""

from __future__ import annotations

import contextvars
from collections.abc import AsyncIterable, AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cogo.integrations import require

VERSION = require("pydantic-ai-slim", "2.78", "3", "cogo.integrations.pydantic_ai")

from pydantic_ai import Agent  # noqa: E402 - after the version check, on purpose
from pydantic_ai.capabilities import AbstractCapability  # noqa: E402
from pydantic_ai.messages import (  # noqa: E402
    AgentStreamEvent,
    FunctionToolCallEvent,
    ModelMessage,
    ModelMessagesTypeAdapter,
    ModelResponse,
)
from pydantic_ai.models import (  # noqa: E402
    CompletedStreamedResponse,
    Model,
    ModelRequestParameters,
    StreamedResponse,
)
from pydantic_ai.models.openai import OpenAIChatModel  # noqa: E402
from pydantic_ai.models.wrapper import WrapperModel  # noqa: E402
from pydantic_ai.providers.openai import OpenAIProvider  # noqa: E402
from pydantic_ai.settings import ModelSettings  # noqa: E402
from pydantic_ai.tools import RunContext, Tool  # noqa: E402
from pydantic_ai.toolsets import AbstractToolset, ToolsetTool, WrapperToolset  # noqa: E402
from pydantic_core import to_jsonable_python  # noqa: E402

from cogo.integrations.transport import LlmTransport, openai_client  # noqa: E402

if TYPE_CHECKING:
    from pydantic_ai.run import AgentRunResult

    from cogo.sdk.context import TaskContext

__all__ = ["VERSION", "JournaledModel", "agent_tool", "model_for", "run", "task_context"]

CALL_METADATA = "cogo_call"  # tool metadata: a child task, journaled by ctx.call itself
_task: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar("cogo_pydantic_ai_task", default=None)


def task_context() -> TaskContext:
    """The Cogo task the agent runs in, for a tool that needs it (``ctx.emit``, ``ctx.call``)."""
    ctx = _task.get()
    if ctx is None:
        raise RuntimeError("no Cogo task here: call tools through cogo.integrations.pydantic_ai.run")
    return ctx


async def run(
    ctx: TaskContext,
    agent: Agent[Any, Any],
    user_prompt: str | None = None,
    *,
    key: str = "agent",
    model: str | None = None,
    stream: bool = False,
    **run_kwargs: Any,
) -> AgentRunResult[Any]:
    """``agent.run(user_prompt, **run_kwargs)`` with every model request and tool call
    metered and journaled in ``ctx``'s task (see the module docstring).

    ``model``: the model name to ask ``ctx.llm`` for; by default the agent's own (its name
    without the provider prefix), else the task's assigned model.
    """
    journaled = model_for(ctx, agent, key=key, model=model, stream=stream)
    capabilities = [*(run_kwargs.pop("capabilities", None) or []), _Journal(journaled)]
    handler = run_kwargs.pop("event_stream_handler", None)
    if stream:
        handler = _emitting(ctx, handler)
    token = _task.set(ctx)
    try:
        return await agent.run(
            user_prompt,
            model=journaled,
            capabilities=capabilities,
            event_stream_handler=handler,
            **run_kwargs,
        )
    finally:
        _task.reset(token)


def model_for(
    ctx: TaskContext,
    agent: Agent[Any, Any] | None = None,
    *,
    key: str = "agent",
    model: str | None = None,
    stream: bool = False,
) -> JournaledModel:
    """The model ``run`` gives the agent: its requests go to ``ctx.llm``, journaled."""
    name = model or _model_name(agent.model if agent is not None else None)
    client, transport = openai_client(ctx, stream=stream)
    inner = OpenAIChatModel(name or ctx.assignment.model, provider=OpenAIProvider(openai_client=client))
    return JournaledModel(inner, ctx=ctx, key=key, transport=transport)


def agent_tool(
    route: str,
    *,
    name: str,
    description: str,
    parameters: dict[str, Any] | None = None,
) -> Tool[Any]:
    """A tool that runs the Cogo agent on ``route`` as a child task (``ctx.call``) and
    returns its result; the model's arguments are the child's payload."""
    schema = parameters or {"type": "object", "additionalProperties": True}

    async def call(run_ctx: RunContext[Any], **payload: Any) -> Any:
        return await task_context().call(route, payload, key=f"{name}:{run_ctx.tool_call_id}")

    tool = Tool.from_schema(call, name=name, description=description, json_schema=schema, takes_ctx=True)
    tool.metadata = {**(tool.metadata or {}), CALL_METADATA: route}
    return tool


class JournaledModel(WrapperModel):
    """A model whose every request is a journaled step of the task (``<key>:model:<n>``)."""

    def __init__(self, wrapped: Model, *, ctx: TaskContext, key: str, transport: LlmTransport) -> None:
        super().__init__(wrapped)
        self.ctx = ctx
        self.key = key
        self.transport = transport
        self.requests = 0  # made (or replayed) so far in this run, in order

    async def request(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
    ) -> ModelResponse:
        name = f"{self.key}:model:{self.requests}"
        self.requests += 1

        async def send() -> Any:
            try:
                response = await self.wrapped.request(messages, model_settings, model_request_parameters)
            except Exception:
                error = self.transport.take_error()
                if error is not None:  # ctx.llm's own error, not the SDK's wrapping of it
                    raise error from None
                raise
            return ModelMessagesTypeAdapter.dump_python([response], mode="json")[0]

        doc = await self.ctx.step(name, send)
        (response,) = ModelMessagesTypeAdapter.validate_python([doc])
        assert isinstance(response, ModelResponse)
        return response

    @asynccontextmanager
    async def request_stream(
        self,
        messages: list[ModelMessage],
        model_settings: ModelSettings | None,
        model_request_parameters: ModelRequestParameters,
        run_context: RunContext[Any] | None = None,
    ) -> AsyncIterator[StreamedResponse]:
        # the request is one step (its text reached ctx.emit while it streamed); the run's
        # stream consumers see its parts replayed from the complete response
        response = await self.request(messages, model_settings, model_request_parameters)
        yield CompletedStreamedResponse(response, model_request_parameters=model_request_parameters, replay_events=True)


@dataclass
class JournaledToolset(WrapperToolset[Any]):
    """A toolset whose every tool call is a journaled step of the task."""

    model: JournaledModel = field(kw_only=True)

    async def call_tool(
        self, name: str, tool_args: dict[str, Any], ctx: RunContext[Any], tool: ToolsetTool[Any]
    ) -> Any:
        if CALL_METADATA in (tool.tool_def.metadata or {}):
            return await self.wrapped.call_tool(name, tool_args, ctx, tool)
        step = f"{self.model.key}:tool:{self.model.requests}:{ctx.tool_call_id or name}"

        async def call() -> Any:
            return to_jsonable_python(await self.wrapped.call_tool(name, tool_args, ctx, tool))

        return await self.model.ctx.step(step, call)


@dataclass
class _Journal(AbstractCapability[Any]):
    """Wraps the run's assembled toolset (function tools, MCP servers...) in steps."""

    model: JournaledModel

    def get_wrapper_toolset(self, toolset: AbstractToolset[Any]) -> AbstractToolset[Any] | None:
        return JournaledToolset(toolset, model=self.model)


def _emitting(
    ctx: TaskContext,
    inner: Callable[[RunContext[Any], AsyncIterable[AgentStreamEvent]], Awaitable[None]] | None,
) -> Callable[[RunContext[Any], AsyncIterable[AgentStreamEvent]], Awaitable[None]]:
    """An event handler putting tool calls on the task's output (text arrives from ctx.llm)."""

    async def handle(run_ctx: RunContext[Any], events: AsyncIterable[AgentStreamEvent]) -> None:
        async def mine() -> AsyncIterator[AgentStreamEvent]:
            async for event in events:
                if isinstance(event, FunctionToolCallEvent):
                    await ctx.emit({"tool": event.part.tool_name, "args": event.part.args})
                yield event

        if inner is None:
            async for _ in mine():
                pass
        else:
            await inner(run_ctx, mine())

    return handle


def _model_name(model: Any) -> str | None:
    if isinstance(model, str):
        return model.split(":", 1)[1] if ":" in model else model
    name = getattr(model, "model_name", None)
    return name if isinstance(name, str) and name else None
