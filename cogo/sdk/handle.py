"""``TaskHandle``: a submitted task, typed by the handler it was submitted through.

``client.submit(count, doc)`` returns a ``TaskHandle[Counted]`` when ``count`` is declared
``-> Counted``: ``await handle.result()`` decodes the JSON result into it, so the type mypy
infers is the type it gets (``tests/typing``). The helpers below turn a handler into its
route, a typed payload into its JSON object, and JSON data back into a declared type.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

import msgspec

from cogo.errors import CogoError, TaskFailed
from cogo.streams.outputs import Output
from cogo.streams.status import TaskStatus

if TYPE_CHECKING:
    from cogo.sdk.client import Client

R = TypeVar("R")
T = TypeVar("T")


class Watch:
    """This client's view of a task it submitted: its end, once the terminal event came.

    Shared by every handle of the task made here; the client keeps it only while a handle
    does (a weak reference), so submitting without waiting holds no memory."""

    __slots__ = ("route", "final", "reconnects", "__weakref__")

    def __init__(self, route: str | None, final: asyncio.Future[TaskStatus], reconnects: int):
        self.route = route
        self.final = final
        self.reconnects = reconnects  # the connection's count when the subscription was made


class TaskHandle(Generic[R]):
    """A submitted task: ``await handle.result()``, ``await handle.status()``.

    Submitted through its handler (``client.submit(count, ...)``), the handle knows the
    handler's return type: ``result()`` decodes the JSON result into it (``type=`` decodes
    into another type; submitted by route name, the result is the JSON data)."""

    def __init__(
        self,
        client: Client,
        task_id: str,
        route: str | None,
        *,
        duplicate: bool = False,
        seq: int | None = None,
        submitted_at: float | None = None,
        watch: Watch | None = None,
    ) -> None:
        self._client = client
        self._watch = watch  # set when this client submitted the task
        self.task_id = task_id
        self.route = route
        self.duplicate = duplicate  # the bus already had this task_id (it runs once)
        self.seq = seq
        self.submitted_at = submitted_at or time.time()
        # submitted through its handler: the handler's return type, which result() decodes
        # into (so the type mypy infers is the type it gets)
        self.result_type: Any = None

    def __repr__(self) -> str:
        return f"TaskHandle({self.task_id!r}, route={self.route!r})"

    async def status(self) -> TaskStatus:
        """Where the task is now: ``queued`` right after this client submitted it, until its
        events say more (TaskNotFound for an unknown task submitted elsewhere)."""
        return await self._client.status(self.task_id)

    async def wait(self, timeout: float | None = None) -> TaskStatus:
        """Until the task ends; its final status. TimeoutError after ``timeout`` seconds."""
        return await self._client.wait(self, timeout)

    def stream(self, *, idle_s: float = 1.0) -> AsyncIterator[Output]:
        """The task's output (``ctx.emit``) as ``Output`` records, from the first, until
        the task ends; what was emitted is each record's ``data``.

        async for output in handle.stream():
            print(output.attempt, output.seq, output.data)

        Each record carries the ``attempt`` (and ``delivery``) that emitted it: a retried
        attempt starts its output again at ``seq`` 1, after the failed one's.
        """
        return self._client.stream(self.task_id, idle_s=idle_s)

    @overload
    async def result(self, timeout: float | None = None) -> R: ...
    @overload
    async def result(self, timeout: float | None = None, *, type: type[T]) -> T: ...
    async def result(self, timeout: float | None = None, *, type: Any = None) -> Any:
        """The task's result; ``cogo.TaskFailed`` (``code``, ``message``, ``attempts``) if it
        failed, TimeoutError if it has not ended within ``timeout`` seconds.

        The result travels as JSON data; ``type=`` (a msgspec Struct, pydantic model,
        dataclass, TypedDict...) decodes it into that type, as does the handler's return type
        for a task submitted through its handler (``msgspec.ValidationError`` /
        ``pydantic.ValidationError`` if it does not fit)."""
        final = await self.wait(timeout)
        if final.status != "succeeded":
            raise TaskFailed(
                final.error_code or "task.failed",
                final.error or "the task failed",
                final.attempt,
                task_id=self.task_id,
            )
        wanted = type if type is not None else self.result_type
        return final.result if wanted is None else decode_as(final.result, wanted)


def route_name(route: Any) -> str:
    """A route given as a string, or as the ``@app.agent`` function declared on it."""
    from cogo.sdk.app import route_of

    if isinstance(route, str):
        return route
    declared = route_of(route)
    if declared is None:
        raise CogoError(
            f"{getattr(route, '__qualname__', route)!r} is not an @app.agent handler: "
            "give its route (a string) or the decorated function"
        )
    return declared


def return_type(handler: Any) -> Any:
    """What an ``@app.agent`` handler declares it returns (None: not a handler, no
    annotation, ``Any``, or one that does not resolve): ``result()`` decodes into it."""
    import typing

    if isinstance(handler, str) or not callable(handler):
        return None
    try:
        declared = typing.get_type_hints(handler).get("return")
    except Exception:  # a forward reference that does not resolve: JSON data, as sent
        return None
    return None if declared in (None, Any, type(None)) else declared


def payload_dict(payload: Any) -> dict[str, Any]:
    """A payload as the JSON object the task carries: a dict as it is, a declared type
    (msgspec Struct, pydantic model, dataclass) in its JSON form."""
    if payload is None:
        return {}
    if isinstance(payload, dict):
        return dict(payload)
    if hasattr(payload, "model_dump") and hasattr(type(payload), "model_fields"):
        data = payload.model_dump(mode="json")
    else:
        try:
            data = msgspec.to_builtins(payload)
        except TypeError as exc:
            raise CogoError(f"the payload has no JSON form: {exc}") from None
    if not isinstance(data, dict):
        raise CogoError(f"a payload is a JSON object, not {type(payload).__name__}")
    return data


def decode_as(value: Any, tp: type[T]) -> T:
    """``value`` (JSON data) as an instance of ``tp``: pydantic models validate, anything
    else msgspec converts (Structs, dataclasses, TypedDicts, containers, scalars)."""
    validate = getattr(tp, "model_validate", None)
    if validate is not None and hasattr(tp, "model_fields"):
        return validate(value)  # type: ignore[no-any-return]
    return msgspec.convert(value, tp)
