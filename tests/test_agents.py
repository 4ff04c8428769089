"""``cogo.App`` / ``@app.agent`` end to end on a real nats-server (``cogo.testing``): payload
validation, results, the worker errors, timeouts, budgets, unknown routes, the client and the
task status."""

from __future__ import annotations

import asyncio

import msgspec
import pytest

import cogo
from cogo.errors import ConfigError, InvalidRoute, RouteConflict, UnknownRoute
from cogo.testing import CogoEnv
from tests import sample_apps


@pytest.fixture
def cogo_apps():
    return [sample_apps.app]


async def test_struct_payload_in_struct_result_out(cogo_env):
    handle = await cogo_env.client.submit("sample.greet.0", {"name": "ada", "times": 2})
    result = await handle.result(timeout=20)
    assert result["text"] == "hello ada hello ada"
    status = await handle.status()
    assert status.status == "succeeded" and status.attempt == 1
    assert [e["type"] for e in status.events] == ["execute_enqueued", "execute_done"]


async def test_payload_mismatch_is_payload_invalid_with_the_field_and_never_retried(cogo_env):
    client = cogo_env.client
    wrong_type = await client.submit("sample.greet.0", {"name": 7})
    missing = await client.submit("sample.greet.0", {"times": 1})
    unknown_field = await client.submit("sample.greet.0", {"name": "x", "colour": "red"})
    pydantic_bad = await client.submit("sample.flaky.0", {"fail_times": -1})
    typed_bad = await client.submit("sample.boom.0", {"items": "not a list"})
    for handle, where in (
        (wrong_type, "$.payload.name"),
        (missing, "$.payload"),
        (unknown_field, "$.payload"),
        (pydantic_bad, "$.payload.fail_times"),
        (typed_bad, "$.payload.items"),
    ):
        with pytest.raises(cogo.TaskFailed) as failed:
            await handle.result(timeout=20)
        assert failed.value.code == "payload.invalid", failed.value
        assert failed.value.attempts == 1  # no retry: no attempt can make it fit
        assert where in failed.value.message
    assert "Expected `str`, got `int`" in str((await wrong_type.status()).error)
    events = await cogo_env.events(wrong_type.task_id)
    failed_event = events[-1]
    assert failed_event["data"]["detail"] == [{"loc": ["payload", "name"], "msg": "Expected `str`, got `int`"}]


async def test_worker_errors_retry_permanent_errors_do_not(cogo_env):
    client = cogo_env.client
    recovers = await client.submit("sample.flaky.0", {"fail_times": 2})
    assert await recovers.result(timeout=30) == {"attempt": 3}
    permanent = await client.submit("sample.flaky.0", {"fail_times": 0, "permanent": True})
    with pytest.raises(cogo.TaskFailed) as failed:
        await permanent.result(timeout=20)
    assert failed.value.code == "worker.permanent" and failed.value.attempts == 1
    status = await recovers.status()
    assert [e["type"] for e in status.events].count("execute_retry") == 2
    assert status.events[1]["error"] == "attempt 1 fails on purpose"


async def test_any_other_exception_is_a_retryable_worker_error_with_type_and_message(cogo_env):
    handle = await cogo_env.client.submit("sample.boom.0", {"items": ["tea"]})
    with pytest.raises(cogo.TaskFailed) as failed:
        await handle.result(timeout=30)
    assert failed.value.code == "attempts.exhausted" and failed.value.attempts == 2
    status = await handle.status()
    retry = next(e for e in status.events if e["type"] == "execute_retry")
    assert retry["error_code"] == "worker.error"
    assert retry["error"] == "KeyError: 'no such item: tea'"
    assert "Traceback" not in (status.error or "")  # tracebacks stay in the log


async def test_a_handler_that_never_returns_times_out_and_is_retried(cogo_env):
    handle = await cogo_env.client.submit("sample.sleepy.0", {"seconds": 60})
    running = None
    for _ in range(100):  # past 500 ms the worker announces the attempt: `running`
        status = await handle.status()
        if status.status == "running":
            running = status
            break
        await asyncio.sleep(0.1)
    assert running is not None and running.attempt == 1
    with pytest.raises(cogo.TaskFailed) as failed:
        await handle.result(timeout=30)
    assert failed.value.code == "attempts.exhausted"
    assert "attempt.timeout" in failed.value.message
    quick = await cogo_env.client.submit("sample.sleepy.0", {"seconds": 0.01})
    assert await quick.result(timeout=20) == {"slept": 0.01}
    types = [e["type"] for e in (await quick.status()).events]
    assert "execute_started" not in types  # a quick attempt costs no event


async def test_report_usage_holds_the_budget_mid_attempt(cogo_env):
    client = cogo_env.client
    fits = await client.submit("sample.spend.0", {"tokens": 30, "calls": 2})
    assert await fits.result(timeout=20) == {"remaining": 40}
    over = await client.submit("sample.spend.0", {"tokens": 30, "calls": 5})
    with pytest.raises(cogo.TaskFailed) as failed:
        await over.result(timeout=20)
    assert failed.value.code == "budget.tokens_exceeded"
    status = await over.status()
    assert status.usage["tokens"] == 120  # stopped at the call that crossed 100, not after 5


async def test_results_that_are_not_json_or_too_large_fail_clearly(cogo_env):
    client = cogo_env.client
    for payload, words in (({}, "not JSON data"), ({"big": True}, "over the")):
        handle = await client.submit("sample.odd.0", payload)
        with pytest.raises(cogo.TaskFailed) as failed:
            await handle.result(timeout=20)
        assert failed.value.code == "result.invalid" and failed.value.attempts == 1
        assert words in failed.value.message


async def test_class_based_worker_joins_with_app_add(cogo_env):
    handle = await cogo_env.client.submit("sample.upper.0", {"text": "shout"})
    assert await handle.result(timeout=20) == "SHOUT"
    events = await cogo_env.events(handle.task_id)
    assert events[-1]["actor"].startswith("upper@")


async def test_unknown_route_fails_at_once(cogo_env):
    with pytest.raises(UnknownRoute):
        await cogo_env.client.submit("sample.nobody.0", {})
    # published straight to NATS: the dispatcher ends it at once with route.unknown
    js = cogo_env.client.nc.jetstream()
    body = b'{"task_id": "lost-1", "route": "sample.nobody.0", "payload": {}}'
    await js.publish("orchestrator.execute.0", body, headers={"Nats-Msg-Id": "lost-1"})
    final = await cogo_env.client.handle("lost-1", "sample.nobody.0").wait(timeout=10)
    assert final.status == "failed" and final.error_code == "route.unknown"
    assert "no app declared it" in final.error


async def test_result_of_a_task_that_already_finished_answers_at_once(cogo_env):
    client = cogo_env.client
    first = await client.submit("sample.greet.0", {"name": "bo"}, task_id="greet-bo")
    await first.result(timeout=20)
    again = await client.submit("sample.greet.0", {"name": "bo"}, task_id="greet-bo")
    assert again.duplicate  # the bus already had it: nothing runs twice
    assert (await again.result(timeout=2))["text"] == "hello bo"
    with pytest.raises(cogo.CogoError, match="no events"):
        await client.status("never-submitted")


def test_declaring_refuses_bad_names_handlers_and_policies():
    app = cogo.App("checks")
    with pytest.raises(InvalidRoute, match="<service>.<role>.<shard>"):
        app.agent("not-a-route")
    with pytest.raises(InvalidRoute, match="reserved"):
        app.agent("orchestrator.mine.0")
    with pytest.raises(ConfigError, match="async def"):

        @app.agent("checks.sync.0")
        def sync_handler(ctx, payload):  # noqa: ANN001, ANN202
            return None

    with pytest.raises(ConfigError, match="takes"):

        @app.agent("checks.one.0")
        async def one_arg(ctx):  # noqa: ANN001, ANN202
            return None

    with pytest.raises(ConfigError, match="invalid policy"):

        @app.agent("checks.policy.0", policy={"max_token": 5})
        async def typo(ctx, payload: dict):  # noqa: ANN001, ANN202
            return None

    @app.agent("checks.ok.0")
    async def ok(ctx, payload: dict):  # noqa: ANN001, ANN202
        return None

    with pytest.raises(RouteConflict, match="'ok' and 'ok2' both declare"):

        @app.agent("checks.ok.0", name="ok2")
        async def ok2(ctx, payload: dict):  # noqa: ANN001, ANN202
            return None


async def test_two_apps_on_one_route_are_refused_on_the_bus_with_both_names(tmp_path):
    async with CogoEnv(sample_apps.app, data_dir=tmp_path / "a") as env:
        from cogo.runtime.loader import declare_apps

        with pytest.raises(RouteConflict) as conflict:
            await declare_apps(env.client.nc.jetstream(), env.config, [sample_apps.rival])
    assert "'sample'" in str(conflict.value) and "'rival'" in str(conflict.value)


def test_results_keep_their_types_as_json():
    from cogo.sdk.agent import to_result

    assert to_result(sample_apps.Greeted("hi", 1)) == {"text": "hi", "pid": 1}
    assert to_result(sample_apps.Flaky(fail_times=1)) == {"fail_times": 1, "permanent": False}
    assert to_result([1, "a", None]) == [1, "a", None]
    assert msgspec.json.encode(to_result({"n": 1.5})) == b'{"n":1.5}'
