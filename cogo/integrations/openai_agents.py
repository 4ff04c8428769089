"""An OpenAI Agents SDK agent as a Cogo agent: ``await run(ctx, agent, input)``.

    from agents import Agent, function_tool
    from cogo.integrations import openai_agents as cogo_agents

    triage = Agent(name="triage", model="gpt-4o-mini", tools=[lookup], handoffs=[billing])

    @app.agent("support.answer.0")
    async def answer(ctx: cogo.TaskContext, q: Question) -> str:
        return (await cogo_agents.run(ctx, triage, q.text)).final_output

What ``run`` changes, through the SDK's public interfaces only (a ``ModelProvider`` in the
run's ``RunConfig``, ``Agent.clone``, ``FunctionTool``, ``Handoff``, ``RunHooks``), as the
Temporal, DBOS and Restate integrations of the SDK do:

- models: every agent's model name is served by ``CogoModelProvider``: an
  ``OpenAIChatCompletionsModel`` whose client sends through ``ctx.llm`` (``LlmTransport``:
  the route's model allowance and the task's budget checked before anything is sent,
  ``llm_call`` after), each response a journaled step ``<key>:model:<n>``;
- tools: every ``FunctionTool`` of the agent and of every agent it can hand off to, and
  every tool of their MCP servers, is a journaled step ``<key>:tool:<n>:<call id>`` (``n``:
  model requests made before it);
- handoffs: follow the journaled responses, so a replayed run hands off to the same agents
  (their models and tools wrapped the same way); a ``Handoff``'s ``on_handoff`` callback
  runs again on replay: make it idempotent or journal its effect with ``ctx.step``;
- ``stream=True``: the model's text goes to ``ctx.emit`` as it arrives, each tool call as
  ``{"tool": name, "args": ...}`` and each handoff as ``{"handoff": agent name}``.

The SDK turns an exception in a ``@function_tool`` into a message to the model by default;
declare tools with ``failure_error_function=None`` for a raise to reach Cogo, which then
applies the route's policy (``cogo.WorkerError`` retried, ``cogo.PermanentWorkerError`` not).
An agent whose ``model`` is a ``Model`` instance (not a name) is refused: its requests would
not go through ``ctx.llm``. The SDK's own tracing (to OpenAI's platform) is off unless the
given ``run_config`` turns it on; Cogo's traces cover the run.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from cogo.errors import CogoError
from cogo.integrations import require

VERSION = require("openai-agents", "0.24", "1", "cogo.integrations.openai_agents")

from agents import (  # noqa: E402 - after the version check, on purpose
    Agent,
    FunctionTool,
    Handoff,
    Model,
    ModelProvider,
    ModelResponse,
    OpenAIChatCompletionsModel,
    RunConfig,
    RunContextWrapper,
    RunHooks,
    Runner,
    Tool,
    Usage,
)
from agents.items import TResponseStreamEvent  # noqa: E402
from agents.tool_context import ToolContext  # noqa: E402
from openai.types.responses import (  # noqa: E402
    Response,
    ResponseCompletedEvent,
    ResponseOutputItem,  # noqa: E402
    ResponseUsage,
)
from openai.types.responses.response_usage import (  # noqa: E402
    InputTokensDetails,
    OutputTokensDetails,
)
from pydantic import TypeAdapter  # noqa: E402
from pydantic_core import to_jsonable_python  # noqa: E402

from cogo.integrations.transport import openai_client  # noqa: E402

if TYPE_CHECKING:
    from agents import RunResult

    from cogo.sdk.context import TaskContext

__all__ = [
    "VERSION",
    "CogoModelProvider",
    "JournaledModel",
    "agent_tool",
    "journaled_agent",
    "run",
]

_ITEMS: TypeAdapter[list[ResponseOutputItem]] = TypeAdapter(list[ResponseOutputItem])


async def run(
    ctx: TaskContext,
    agent: Agent[Any],
    input: str | list[Any],
    *,
    key: str = "agent",
    stream: bool = False,
    run_config: RunConfig | None = None,
    hooks: RunHooks[Any] | None = None,
    **run_kwargs: Any,
) -> RunResult:
    """``Runner.run(agent, input, ...)`` with every model request, tool call and handoff
    of the run metered and journaled in ``ctx``'s task (see the module docstring)."""
    provider = CogoModelProvider(ctx, key=key, stream=stream)
    config = run_config or RunConfig(tracing_disabled=True)
    config = dataclasses.replace(config, model_provider=provider)
    wrapped = journaled_agent(agent, provider)
    if stream:
        hooks = _Emitting(ctx, hooks)
    try:
        return await Runner.run(wrapped, input, run_config=config, hooks=hooks, **run_kwargs)
    except Exception as exc:
        # the SDK wraps what a tool raised (UserError "Error running tool ..."): Cogo's own
        # errors come out as they are, so the route's policy sees WorkerError, budget.* ...
        cause = _cogo_cause(exc)
        if cause is None or cause is exc:
            raise
        raise cause from None


def _cogo_cause(exc: BaseException) -> CogoError | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, CogoError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


class CogoModelProvider(ModelProvider):
    """Serves every model name through ``ctx.llm``, each request a journaled step."""

    def __init__(self, ctx: TaskContext, *, key: str = "agent", stream: bool = False) -> None:
        self.ctx = ctx
        self.key = key
        client, self.transport = openai_client(ctx, stream=stream)
        self._client = client
        self.requests = 0  # model requests made (or replayed) in this run, in order

    def get_model(self, model_name: str | None) -> Model:
        name = model_name or self.ctx.assignment.model
        return JournaledModel(OpenAIChatCompletionsModel(name, self._client), self)


class JournaledModel(Model):
    """A model whose every response is a journaled step of the task."""

    def __init__(self, wrapped: Model, provider: CogoModelProvider) -> None:
        self.wrapped = wrapped
        self.provider = provider

    async def get_response(self, *args: Any, **kwargs: Any) -> ModelResponse:
        provider = self.provider
        name = f"{provider.key}:model:{provider.requests}"
        provider.requests += 1

        async def send() -> dict[str, Any]:
            try:
                response = await self.wrapped.get_response(*args, **kwargs)
            except Exception:
                error = provider.transport.take_error()
                if error is not None:  # ctx.llm's own error, not the SDK's wrapping of it
                    raise error from None
                raise
            u = response.usage
            return {
                "output": [to_jsonable_python(item) for item in response.output],
                "usage": {
                    "requests": u.requests,
                    "input_tokens": u.input_tokens,
                    "output_tokens": u.output_tokens,
                    "total_tokens": u.total_tokens,
                },
                "response_id": response.response_id,
            }

        doc = await provider.ctx.step(name, send)
        return ModelResponse(
            output=_ITEMS.validate_python(doc["output"]),
            usage=Usage(**doc["usage"]),
            response_id=doc["response_id"],
        )

    async def stream_response(self, *args: Any, **kwargs: Any) -> AsyncIterator[TResponseStreamEvent]:
        # one journaled request; the stream is its completed response (its text reached
        # ctx.emit while it streamed, when the run streams)
        response = await self.get_response(*args, **kwargs)
        u = response.usage
        done = Response.model_construct(
            id=response.response_id or "cogo",
            object="response",
            created_at=0.0,
            model=getattr(self.wrapped, "model", ""),
            output=response.output,
            tools=[],
            parallel_tool_calls=True,
            tool_choice="auto",
            status="completed",
            # constructed, not validated: the fields of usage details grow between releases
            usage=ResponseUsage.model_construct(
                input_tokens=u.input_tokens,
                output_tokens=u.output_tokens,
                total_tokens=u.total_tokens,
                input_tokens_details=InputTokensDetails.model_construct(cached_tokens=0),  # type: ignore[call-arg]
                output_tokens_details=OutputTokensDetails.model_construct(reasoning_tokens=0),
            ),
        )
        yield ResponseCompletedEvent(type="response.completed", response=done, sequence_number=0)


def journaled_agent(agent: Agent[Any], provider: CogoModelProvider) -> Agent[Any]:
    """A clone of ``agent`` (and of every agent it can hand off to) whose function tools are
    journaled steps and whose model is served by ``provider``."""
    done: dict[int, Agent[Any]] = {}

    def wrap(original: Agent[Any]) -> Agent[Any]:
        if id(original) in done:
            return done[id(original)]
        if original.model is not None and not isinstance(original.model, str):
            raise TypeError(
                f"agent {original.name!r} has a Model instance: give it a model name, served by "
                "Cogo's LLM endpoint through ctx.llm"
            )
        tools = [_journaled_tool(t, provider) for t in original.tools]
        if original.mcp_servers:  # their tools are listed per run: journaled as they are
            fields = {f.name: getattr(original, f.name) for f in dataclasses.fields(original) if f.init}
            with_mcp = _WithMcp(**{**fields, "tools": tools})
            with_mcp.cogo_provider = provider
            clone: Agent[Any] = with_mcp
        else:
            clone = original.clone(tools=tools)
        done[id(original)] = clone  # before the handoffs: they may lead back here
        clone.handoffs = [wrap(h) if isinstance(h, Agent) else _handoff(h, wrap) for h in original.handoffs]
        return clone

    return wrap(agent)


class _WithMcp(Agent[Any]):
    """An agent whose MCP servers' tools are journaled steps, like its function tools."""

    cogo_provider: CogoModelProvider  # set once built (not a dataclass field)

    async def get_mcp_tools(self, run_context: RunContextWrapper[Any]) -> list[Tool]:
        tools = await super().get_mcp_tools(run_context)
        return [_journaled_tool(t, self.cogo_provider) for t in tools]


def agent_tool(
    ctx: TaskContext,
    route: str,
    *,
    name: str,
    description: str,
    parameters: dict[str, Any] | None = None,
) -> FunctionTool:
    """A tool that runs the Cogo agent on ``route`` as a child task (``ctx.call``, journaled
    by the call itself, so never wrapped in a step) with the model's arguments as payload."""

    async def invoke(tool_ctx: ToolContext[Any], arguments: str) -> Any:
        payload = json.loads(arguments or "{}")
        return await ctx.call(route, payload, key=f"{name}:{tool_ctx.tool_call_id}")

    return _CallTool(
        name=name,
        description=description,
        on_invoke_tool=invoke,
        strict_json_schema=False,
        params_json_schema=parameters or {"type": "object", "additionalProperties": True},
    )


class _CallTool(FunctionTool):
    """An ``agent_tool``: a child task, journaled by ``ctx.call``, never wrapped in a step."""


def _journaled_tool(tool: Tool, provider: CogoModelProvider) -> Tool:
    if isinstance(tool, _CallTool):
        return tool
    if not isinstance(tool, FunctionTool):
        return tool  # hosted tools run at the provider; nothing runs here to journal
    invoke = tool.on_invoke_tool

    async def on_invoke_tool(tool_ctx: ToolContext[Any], arguments: str) -> Any:
        name = f"{provider.key}:tool:{provider.requests}:{tool_ctx.tool_call_id or tool.name}"

        async def call() -> Any:
            return to_jsonable_python(await invoke(tool_ctx, arguments))

        return await provider.ctx.step(name, call)

    return dataclasses.replace(tool, on_invoke_tool=on_invoke_tool)


def _handoff(handoff: Handoff[Any, Any], wrap: Any) -> Handoff[Any, Any]:
    invoke = handoff.on_invoke_handoff

    async def on_invoke_handoff(run_ctx: RunContextWrapper[Any], arguments: str) -> Any:
        return wrap(await invoke(run_ctx, arguments))

    return dataclasses.replace(handoff, on_invoke_handoff=on_invoke_handoff)


class _Emitting(RunHooks[Any]):
    """Tool calls and handoffs on the task's output (the text arrives from ctx.llm); the
    caller's own hooks, if any, still run."""

    def __init__(self, ctx: TaskContext, inner: RunHooks[Any] | None) -> None:
        self.ctx = ctx
        self.inner = inner or RunHooks()

    async def on_tool_start(self, context: Any, agent: Any, tool: Any) -> None:
        arguments = getattr(context, "tool_arguments", None)
        try:
            args = json.loads(arguments) if isinstance(arguments, str) else arguments
        except ValueError:
            args = arguments
        await self.ctx.emit({"tool": tool.name, "args": args})
        await self.inner.on_tool_start(context, agent, tool)

    async def on_handoff(self, context: Any, from_agent: Any, to_agent: Any) -> None:
        await self.ctx.emit({"handoff": to_agent.name})
        await self.inner.on_handoff(context, from_agent, to_agent)

    async def on_tool_end(self, context: Any, agent: Any, tool: Any, result: Any) -> None:
        await self.inner.on_tool_end(context, agent, tool, result)

    async def on_agent_start(self, context: Any, agent: Any) -> None:
        await self.inner.on_agent_start(context, agent)

    async def on_agent_end(self, context: Any, agent: Any, output: Any) -> None:
        await self.inner.on_agent_end(context, agent, output)

    async def on_llm_start(self, context: Any, agent: Any, *args: Any) -> None:
        await self.inner.on_llm_start(context, agent, *args)

    async def on_llm_end(self, context: Any, agent: Any, response: Any) -> None:
        await self.inner.on_llm_end(context, agent, response)
