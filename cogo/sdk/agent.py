"""Function agents: an ``@app.agent`` handler run as a worker.

The handler's second parameter's annotation *is* the payload's validation: a msgspec
Struct, a pydantic model, a TypedDict, a dataclass, or ``dict`` (anything, as JSON gave it).
A payload that does not fit ends the task with ``payload.invalid`` and the field's path, and
is never retried: no attempt can make it fit. The return value (a Struct, model, dataclass,
dict, list or scalar) is turned into JSON data here, in the worker, so a value that cannot
be sent is reported as ``result.invalid`` rather than failing somewhere on the bus.
"""

from __future__ import annotations

import inspect
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import msgspec

from cogo.errors import ConfigError, InvalidPayload, InvalidResult
from cogo.sdk.context import Outcome, TaskContext
from cogo.sdk.worker import Worker
from cogo.streams.envelope import WorkOrder

if TYPE_CHECKING:
    from cogo.sdk.app import AgentSpec

PayloadDecoder = Callable[[dict[str, Any]], Any]


def check_handler(fn: Any, route: str) -> None:
    """Refuse, at declaration, a handler the runtime could not call."""
    where = f"@app.agent({route!r}) on {getattr(fn, '__qualname__', fn)!r}"
    if not inspect.iscoroutinefunction(fn):
        raise ConfigError(
            f"{where}: the handler must be `async def` (run blocking work in "
            "`await asyncio.to_thread(...)` so the actor's event loop stays free)"
        )
    params = [
        p for p in inspect.signature(fn).parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
    ]
    if len(params) != 2:
        raise ConfigError(f"{where}: the handler takes (ctx: cogo.TaskContext, payload: T)")
    try:
        payload_decoder(fn)
    except NameError:
        pass  # a payload type defined further down the module: resolved when the agent starts


def payload_type(fn: Any) -> Any:
    """The annotation of the handler's payload parameter (``Any`` when there is none)."""
    name = list(inspect.signature(fn).parameters)[1]
    return typing.get_type_hints(fn).get(name, Any)


def payload_decoder(fn: Any) -> PayloadDecoder:
    """A function from the raw payload (a dict) to the handler's payload type."""
    tp = payload_type(fn)
    if (
        tp in (Any, dict, inspect.Parameter.empty)
        or typing.get_origin(tp) is dict
        and (typing.get_args(tp) in ((), (str, Any)))
    ):
        return _as_is
    if isinstance(tp, type) and hasattr(tp, "model_validate") and hasattr(tp, "model_fields"):
        return _pydantic(tp)
    return _msgspec(tp)


def _as_is(payload: dict[str, Any]) -> dict[str, Any]:
    return payload


def _msgspec(tp: Any) -> PayloadDecoder:
    def decode(payload: dict[str, Any]) -> Any:
        try:
            return msgspec.convert(payload, tp)
        except msgspec.ValidationError as exc:
            message = str(exc)
            path = message.rsplit(" - at `", 1)[1].rstrip("`") if " - at `" in message else "$"
            where = "$.payload" + path[1:]
            reason = message.rsplit(" - at `", 1)[0]
            raise InvalidPayload(
                f"invalid payload: {reason} - at `{where}`",
                detail=[{"loc": _loc(where), "msg": reason}],
            ) from None

    return decode


def _pydantic(model: Any) -> PayloadDecoder:
    import pydantic

    def decode(payload: dict[str, Any]) -> Any:
        try:
            return model.model_validate(payload)
        except pydantic.ValidationError as exc:
            errors = exc.errors(include_url=False, include_context=False, include_input=False)
            detail = [{"loc": ["payload", *e["loc"]], "msg": e["msg"]} for e in errors]
            first = detail[0]
            where = "$." + ".".join(str(p) for p in first["loc"])
            raise InvalidPayload(
                f"invalid payload: {first['msg']} - at `{where}`"
                + (f" (and {len(detail) - 1} more)" if len(detail) > 1 else ""),
                detail=detail,
            ) from None

    return decode


def _loc(path: str) -> list[str | int]:
    """``$.payload.items[2].name`` as ``["payload", "items", 2, "name"]``."""
    out: list[str | int] = []
    for part in path.removeprefix("$.").replace("[", ".[").split("."):
        if part.startswith("[") and part.endswith("]") and part[1:-1].isdigit():
            out.append(int(part[1:-1]))
        elif part:
            out.append(part)
    return out


def to_result(value: Any) -> Any:
    """A handler's return value as JSON data; InvalidResult if it has no JSON form."""
    if hasattr(value, "model_dump") and hasattr(type(value), "model_fields"):
        return value.model_dump(mode="json")
    try:
        return msgspec.to_builtins(value)
    except TypeError as exc:
        raise InvalidResult(f"the handler returned a {type(value).__name__}, which is not JSON data: {exc}") from None


class FunctionAgent(Worker):
    """Runs one ``@app.agent`` handler: validate, call, convert; the rest is the runtime's."""

    def __init__(
        self,
        nc: Any,
        config: Any,
        *,
        spec: AgentSpec,
        concurrency: int | None = None,
        version: str | None = None,
        **_: Any,
    ) -> None:
        assert spec.handler is not None
        self.kind = spec.name
        self.route = spec.routes[0]
        super().__init__(nc, config, concurrency=concurrency, version=version)
        self.spec = spec
        self._handler = spec.handler
        try:
            self._decode = payload_decoder(spec.handler)
        except NameError as exc:
            raise ConfigError(f"agent {spec.name!r}: cannot resolve its payload annotation: {exc}") from exc

    async def run(self, order: WorkOrder, ctx: TaskContext) -> Outcome:
        payload = self._decode(ctx.payload)
        value = await self._handler(ctx, payload)
        return Outcome(result=to_result(value))
