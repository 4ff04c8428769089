"""Checked by mypy in `make lint` (never run): the typed client infers what it returns."""

from typing import Any, assert_type

import msgspec

import cogo
from cogo.sdk.handle import TaskHandle

app = cogo.App("typing")


class Text(msgspec.Struct):
    text: str


class Counted(msgspec.Struct):
    words: int


@app.agent("typing.count.0")
async def count(ctx: cogo.TaskContext, doc: Text) -> Counted:
    return Counted(words=len(doc.text.split()))


async def typed(client: cogo.Client) -> None:
    handle = await client.submit(count, Text(text="a b"))
    assert_type(handle, TaskHandle[Counted])
    assert_type(await handle.result(), Counted)
    assert_type(await handle.result(timeout=5, type=dict[str, int]), dict[str, int])
    untyped = await client.submit("typing.count.0", {"text": "a"})
    assert_type(untyped, TaskHandle[Any])
    assert_type(await untyped.result(type=Counted), Counted)
