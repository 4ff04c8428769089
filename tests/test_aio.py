"""``cancel_and_wait``: a task that loses a cancellation (Python 3.11's ``wait_for``) still
ends, and errors of the stopped tasks are collected, not left for the loop to report."""

from __future__ import annotations

import asyncio

from cogo.aio import cancel_and_wait, dump_tasks


async def _swallows_once(started: asyncio.Event) -> str:
    started.set()
    try:
        await asyncio.sleep(3600)
    except asyncio.CancelledError:
        pass  # what wait_for does when the result and the cancel race: the loop goes on
    await asyncio.Event().wait()  # never set: only a second cancel ends this


async def test_a_task_that_swallowed_the_cancel_is_cancelled_again():
    started = asyncio.Event()
    task = asyncio.create_task(_swallows_once(started))
    await started.wait()
    async with asyncio.timeout(30):  # a hang guard: a single cancel would wait forever
        await cancel_and_wait([task], nudge_s=0.05)
    assert task.cancelled()


async def test_errors_and_finished_tasks_are_fine():
    async def boom() -> None:
        raise RuntimeError("x")

    failed = asyncio.create_task(boom())
    await asyncio.sleep(0)
    done = asyncio.create_task(asyncio.sleep(0))
    await cancel_and_wait([failed, done, None])
    assert failed.done() and done.done()
    await cancel_and_wait([])


async def test_dump_tasks_names_the_waiting_coroutine():
    started = asyncio.Event()
    task = asyncio.create_task(_swallows_once(started), name="the-stuck-one")
    await started.wait()
    assert "the-stuck-one" in dump_tasks() and "_swallows_once" in dump_tasks()
    await cancel_and_wait([task], nudge_s=0.05)
