"""Schedule ticks and catch-up policies (pure functions), and the cursor's compare-and-set
against a real KV bucket."""

from __future__ import annotations

import datetime as dt

import pydantic
import pytest

from cogo.workflows.schedules import (
    ON_TIME_S,
    Cursor,
    Schedule,
    ScheduleSpec,
    ScheduleStore,
    due,
    next_tick,
    run_id_of,
    ticks,
)

T0 = dt.datetime(2026, 5, 1, 3, 0, 0, tzinfo=dt.UTC).timestamp()


def schedule(**spec: object) -> Schedule:
    base = {"id": "s", "workflowId": "w"}
    return Schedule(spec=ScheduleSpec.model_validate({**base, **spec}), created_at=T0)


def test_interval_ticks_are_anchored_at_creation_and_whole_seconds():
    every = schedule(interval_s=10)
    assert ticks(every, T0, T0 + 35, limit=100) == ([T0 + 10, T0 + 20, T0 + 30], 0)
    assert ticks(every, T0 + 10, T0 + 10, limit=100) == ([], 0)  # (after, until]
    assert ticks(every, T0, T0 + 35, limit=2) == ([T0 + 20, T0 + 30], 1)
    assert next_tick(every, T0 + 10) == T0 + 20
    assert run_id_of("nightly", T0 + 10) == "nightly:2026-05-01T03:00:10Z"


def test_cron_ticks_in_utc_with_seconds_field():
    hourly = schedule(cron="0 * * * *")
    found, before = ticks(hourly, T0, T0 + 3 * 3600, limit=100)
    assert found == [T0 + 3600, T0 + 7200, T0 + 10800] and before == 0
    every_five_s = schedule(cron="* * * * * */5")
    assert ticks(every_five_s, T0, T0 + 21, limit=2) == ([T0 + 15, T0 + 20], 2)


def test_catchup_policies():
    now = T0 + 60.5  # down for a minute: 60 ticks of an every-second schedule missed
    cursor = Cursor()
    fire, skipped, horizon = due(schedule(interval_s=1, catchup="all", max_catchup=100), cursor, now)
    assert fire == [T0 + i for i in range(1, 61)] and skipped == 0 and horizon == T0 + 60
    fire, skipped, _ = due(schedule(interval_s=1, catchup="all", max_catchup=10), cursor, now)
    assert fire == [T0 + i for i in range(51, 61)] and skipped == 50  # the newest ten
    fire, skipped, _ = due(schedule(interval_s=1, catchup="last"), cursor, now)
    assert fire == [T0 + 60] and skipped == 59
    fire, skipped, _ = due(schedule(interval_s=1, catchup="none"), cursor, now)
    assert fire == [T0 + 60] and skipped == 59  # the last tick is only 0.5 s late
    late = T0 + 60 + ON_TIME_S + 0.5
    fire, skipped, horizon = due(schedule(interval_s=60, catchup="none"), cursor, late)
    assert fire == [] and skipped == 1 and horizon == T0 + 60
    # from the cursor on: ticks up to it never fire again
    fire, _, _ = due(schedule(interval_s=1, catchup="all"), Cursor(last_tick=T0 + 58), now)
    assert fire == [T0 + 59, T0 + 60]
    assert due(schedule(interval_s=1), Cursor(last_tick=T0 + 60), now) == ([], 0, None)


@pytest.mark.parametrize(
    "spec, field",
    [
        ({"cron": "61 * * * *"}, "cron"),
        ({"cron": "0 0 31 2 *"}, "cron"),  # February 31st never comes
        ({"interval_s": 0}, "interval_s"),
        ({"cron": "0 * * * *", "interval_s": 5}, None),
        ({}, None),
        ({"interval_s": 5, "catchup": "some"}, "catchup"),
        ({"interval_s": 5, "max_catchup": 0}, "max_catchup"),
    ],
)
def test_invalid_specs(spec: dict[str, object], field: str | None):
    with pytest.raises(pydantic.ValidationError) as exc:
        ScheduleSpec.model_validate({"id": "s", "workflowId": "w", **spec})
    locs = [e["loc"] for e in exc.value.errors()]
    assert (field,) in locs if field else locs == [()]


async def test_cursor_compare_and_set(js):
    store = ScheduleStore(js)
    await store.put(ScheduleSpec.model_validate({"id": "s", "workflowId": "w", "interval_s": 5}), T0)
    cursor, revision = await store.cursor("s")
    assert revision == 0 and cursor.last_tick is None
    first = await store.save_cursor("s", Cursor(last_tick=T0 + 5, fired=1), revision)
    assert first
    # a second writer that read the same revision loses: it must read again
    assert await store.save_cursor("s", Cursor(last_tick=T0 + 5, fired=1), revision) is None
    assert await store.save_cursor("s", Cursor(last_tick=T0 + 10, fired=2), first)
    assert (await store.cursor("s"))[0].fired == 2
    assert await store.ids() == ["s"]
    assert await store.delete("s") and not await store.delete("s")
    assert await store.ids() == [] and (await store.cursor("s"))[1] == 0
