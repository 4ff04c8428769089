"""The dashboard in a real headless Chromium, against a real ``cogo up``.

Echo tasks (some failing, one malformed message dead-lettered), two codeBuildTest runs on
the sample repo (one passing its gate, one failing it) and a short rollout, then the page:
the cards show non-zero figures, the runs table shows the verdict and opens an artifact
and a run's node timeline, and nothing is loaded from outside the facade. The screenshot
lands in ``test-artifacts/dashboard.png``.
"""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import httpx

from cogo.streams.envelope import EXECUTE_SUBJECT, MSG_ID
from tests.browser import ARTIFACTS, CHROMIUM, CHROMIUM_ARGS, dashboard_page, playwright_api
from tests.helpers import submit_many, wait_until
from tests.upsystem import cogo_up, stop, up_with_candidate

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def workflow_params(name: str, repo: Path) -> dict[str, Any]:
    params = json.loads((EXAMPLES / name).read_text())
    params["repo"] = str(repo)
    return params


async def produce_activity(http: httpx.AsyncClient, js: Any, repo: Path) -> dict[str, str]:
    """Tasks that succeed, retry, fail and violate policy; two workflow runs; a dead letter."""
    ids = [f"ok-{i}" for i in range(40)]
    await submit_many(js, ids)
    for _ in range(8):
        r = await http.post("/api/tasks", json={"route": "echo.run.0", "payload": {"fail_always": "permanent"}})
        assert r.status_code == 202
    for _ in range(4):
        await http.post(
            "/api/tasks",
            json={"route": "echo.run.0", "payload": {"fail_times": 1, "__assignment": {"backoff": {"initial_ms": 50}}}},
        )
        await http.post("/api/tasks", json={"route": "echo.run.0", "payload": {"__assignment": {"model": "gpt-9"}}})
    await js.publish(EXECUTE_SUBJECT, b"not json at all", headers={MSG_ID: "garbage-1"})
    runs = {}
    for name in ("fix.json", "bad-fix.json"):
        started = await http.post(
            "/api/workflows/execute", json={"workflowId": "codeBuildTest", "parameters": workflow_params(name, repo)}
        )
        assert started.status_code == 202, started.text
        runs[name] = started.json()["runId"]
    # codeBuildTest as a child run, then a human gate the page approves
    started = await http.post(
        "/api/workflows/execute", json={"workflowId": "approveMerge", "parameters": workflow_params("fix.json", repo)}
    )
    assert started.status_code == 202, started.text
    runs["approval"] = started.json()["runId"]
    return runs


async def test_dashboard_in_headless_chromium(tmp_path, config_path):
    repo = tmp_path / "sample-repo"
    shutil.copytree(EXAMPLES / "sample-repo", repo)
    async with up_with_candidate(tmp_path / "up", config_path) as (http, js, info):
        # the page is public; its data is not
        async with httpx.AsyncClient(base_url=info["http_url"]) as anonymous:
            page = await anonymous.get("/")
            assert page.status_code == 200 and "Cogo dashboard" in page.text
            assert "script-src 'self'" in page.headers["content-security-policy"]
            assert (await anonymous.get("/api/dashboard")).status_code == 401
        assert (await http.get("/api/dashboard?window=nope")).status_code == 422
        assert "/api/dashboard" in (await http.get("/openapi.json")).json()["paths"]

        runs = await produce_activity(http, js, repo)
        rollout = await http.post(
            "/api/rollouts",
            json={
                "route": "echo.run.0",
                "candidate": "v2",
                "min_samples": 5,
                "dev_e2e_tasks": 2,
                "smoke_tasks": 4,
                "stage_timeout_s": 30,
            },
        )
        assert rollout.status_code == 201, rollout.text
        rollout_id = rollout.json()["id"]

        async def finished_runs() -> bool:
            states = [
                (await http.get("/api/orchestrator/state", params={"runId": r})).json()
                for n, r in runs.items()
                if n != "approval"
            ]
            return all(s.get("status") in ("succeeded", "failed") for s in states)

        await wait_until(finished_runs, 45, "codeBuildTest runs finished")

        sent = 0

        async def rollout_over() -> bool:
            nonlocal sent
            state = (await http.get(f"/api/rollouts/{rollout_id}")).json()
            if state["stage"] in ("canary", "promote"):
                await submit_many(js, [f"live-{sent + i}" for i in range(20)])
                sent += 20
            return state["status"] in ("promoted", "rolled_back")

        await wait_until(rollout_over, 40, "rollout finished")

        async def summary_ready() -> dict[str, Any] | None:
            body = (await http.get("/api/dashboard")).json()
            done = {r["runId"] for r in body["runs"] if r["status"] in ("succeeded", "failed")}
            built = {runs["fix.json"], runs["bad-fix.json"]} <= done
            ready = built and body["dlq"]["messages"] and body["failures"]["total"]
            return body if ready else None

        summary = await wait_until(summary_ready, 20, "dashboard summary complete")
        by_run = {r["runId"]: r for r in summary["runs"]}
        good, bad = by_run[runs["fix.json"]], by_run[runs["bad-fix.json"]]
        assert good["status"] == "succeeded" and good["verdict"] == "passed"
        assert bad["status"] == "failed" and bad["verdict"] == "failed"
        assert any(k.endswith("build-test/report.json") for k in good["artifacts"])
        quality = summary["decision_quality"]
        assert 0 < quality["overall"]["quality"] < 1
        assert {v["version"] for v in quality["by_version"]} >= {"unversioned", "v2"}
        assert {c["cohort"] for c in summary["cohorts"]} == {"baseline", "canary"}
        codes = {f["error_code"] for f in summary["failures"]["series"]}
        assert {"worker.permanent", "policy.model_not_allowed"} <= codes
        assert summary["rollouts"][0]["status"] == "promoted"

        await browse(info, summary, good)
        approval = runs["approval"]
        child = f"{approval}:build:1"

        async def waiting() -> bool:
            rows = (await http.get("/api/dashboard")).json()["runs"]
            row = next((r for r in rows if r["runId"] == approval), None)
            return bool(row and row["waiting"])

        await wait_until(waiting, 45, "approval run waiting at its signal")
        await approve_in_browser(info, approval, child)
        final = (await http.get("/api/orchestrator/state", params={"runId": approval})).json()
        assert final["status"] == "succeeded", final
        approve_node = next(n for n in final["nodes"] if n["id"] == "approve")
        assert approve_node["result"] == {"approved": True, "by": "dashboard"}
        assert final["children"] == [child]
        assert next(n for n in final["nodes"] if n["id"] == "build")["result"]["status"] == "succeeded"


async def approve_in_browser(info: dict[str, Any], run_id: str, child: str) -> None:
    """The page shows the run waiting at its human gate; Approve sends the signal."""
    async with dashboard_page(info) as page:
        errors = page.errors
        row = page.locator(f"tr[data-run='{run_id}']")
        await row.locator("[data-testid='approve']").wait_for(timeout=15_000)
        assert "waiting: approve" in await row.inner_text()
        assert await row.locator("[data-testid='reject']").count() == 1
        assert await row.locator("[data-children='1']").count() == 1
        child_row = page.locator(f"tr[data-run='{child}']")
        assert await child_row.locator(f"a[data-parent='{run_id}']").count() == 1
        ARTIFACTS.mkdir(exist_ok=True)
        await page.screenshot(path=str(ARTIFACTS / "dashboard-approval.png"), full_page=True)
        await row.locator("[data-testid='approve']").click()
        await row.locator("[data-testid='signal-sent']").wait_for(timeout=10_000)
        # the run goes on: the page's next refreshes show it succeeded, no buttons left
        await page.locator(f"tr[data-run='{run_id}'][data-status='succeeded']").wait_for(timeout=30_000)
        assert await page.locator(f"tr[data-run='{run_id}'] [data-testid='approve']").count() == 0
        await page.locator(f"tr[data-run='{run_id}']").click()
        links = page.locator("#timeline [data-testid='run-links']")
        await links.locator(f"a[data-open-run='{child}']").wait_for(timeout=10_000)
        assert errors == [], errors


async def browse(info: dict[str, Any], summary: dict[str, Any], good: dict[str, Any]) -> None:
    origin = info["http_url"]
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            context = await browser.new_context(viewport={"width": 1440, "height": 1000})
            page = await context.new_page()
            requested: list[str] = []
            errors: list[str] = []
            page.on("request", lambda r: requested.append(r.url))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)

            # without a token: the login form
            await page.goto(origin + "/")
            await page.wait_for_selector("#login:not([hidden])")
            # a first visit was given no token: it is asked for, not "refused" (issue 25 item 5)
            why = await page.text_content("#login-why") or ""
            assert "needs the API token" in why and "refused" not in why
            assert await page.text_content("#status") == "waiting for a token"
            # the link `cogo up` prints: the token rides in the fragment, then leaves the URL
            await page.goto(f"{origin}/#token={info['api_token']}")
            await page.reload()
            try:
                await page.wait_for_selector("body[data-loaded='true']", timeout=15_000)
            except playwright_api.Error:
                status = await page.inner_text("#status")
                raise AssertionError(f"dashboard did not load: {status} {errors}") from None
            assert "#token" not in page.url
            assert await page.evaluate("localStorage.getItem('cogo.apiToken')") == info["api_token"]

            values = {
                key: (await page.inner_text(f"[data-testid='{key}']")).strip()
                for key in ("quality", "queue", "throughput", "failures", "dlq", "lag")
            }
            for key in ("quality", "queue", "throughput", "failures", "dlq"):
                number = float(values[key].split()[0].rstrip("%").replace(",", "").rstrip("ms"))
                assert number > 0, values
            assert values["lag"].split()[0].isdigit(), values
            for chart in ("quality", "queue", "throughput", "failures", "dlq", "lag"):
                assert await page.locator(f"#chart-{chart} svg").count() == 1, chart
            assert await page.locator("#chart-failures svg rect").count() >= 2

            row = page.locator(f"tr[data-run='{good['runId']}']")
            assert (await row.locator("[data-testid='verdict']").inner_text()) == "passed"
            rollout = page.locator(f"[data-rollout='{summary['rollouts'][0]['id']}']")
            assert "promoted" in await rollout.inner_text()
            assert await rollout.locator("svg circle").count() == 4

            report = [k for k in good["artifacts"] if k.endswith("report.json")][0]
            await row.locator(f"a[data-artifact='{report}']").click()
            # a locator wait, not wait_for_function: the page's CSP forbids eval, rightly
            await page.locator("#artifact-body", has_text="verdict").wait_for(timeout=10_000)
            assert '"pass"' in await page.inner_text("#artifact-body")
            await page.click("#artifact-close")

            await row.click()
            await page.wait_for_selector("#timeline svg[data-testid='timeline']")
            timeline = await page.inner_text("#timeline")
            assert "build_test" in timeline and "verdict" in timeline

            await page.wait_for_timeout(3500)  # one more live refresh, charts and all
            assert await page.locator("body[data-loaded='true']").count() == 1
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        finally:
            await browser.close()
    outside = [u for u in requested if not u.startswith(origin) and not u.startswith("data:")]
    assert not outside, outside
    # the one 401: the first visit, before the page had a token
    assert [e for e in errors if "401" not in e] == [], errors


async def test_dashboard_streams_a_running_tasks_output_and_shows_spend(
    tmp_path, config_path, chat_server, monkeypatch
):
    """An agent emits one chunk, then waits at a gate (a file): the page, watching the task,
    shows that chunk while the task is still running, the rest once the gate opens, then its
    end; the spend card shows what an LLM call cost."""
    monkeypatch.setenv("COGO_LLM_BASE_URL", chat_server.url)
    chat_server.reply("fine", prompt_tokens=40, completion_tokens=2)
    proc, info = await cogo_up(tmp_path / "up", config_path, "--app", "tests.runtime_apps:app")
    gate = tmp_path / "gate"
    headers = {"Authorization": f"Bearer {info['api_token']}"}
    try:
        async with httpx.AsyncClient(base_url=info["http_url"], headers=headers, timeout=20) as http:
            talk = (await http.post("/api/tasks", json={"route": "rt.talk.0", "payload": {"prompt": "hi"}})).json()
            speak = (
                await http.post("/api/tasks", json={"route": "rt.speak.0", "payload": {"lines": 3, "gate": str(gate)}})
            ).json()["task_id"]

            async def spent() -> bool:
                body = (await http.get("/api/dashboard")).json()
                return body["spend"]["cost_usd"] > 0 and any(t["task_id"] == speak for t in body["tasks"])

            await wait_until(spent, 30, "the LLM call's cost and the task in the summary")
            summary = (await http.get("/api/dashboard")).json()
            assert summary["spend"]["calls"] == 1 and summary["spend"]["tokens"] == 42
            assert summary["spend"]["by_route"][0]["route"] == "rt.talk.0"
            assert talk["task_id"] in {t["task_id"] for t in summary["tasks"]}
            async with dashboard_page(info, height=1200) as page:
                cost = (await page.inner_text("[data-testid='spend']")).strip()
                assert cost.startswith("$") and float(cost[1:]) > 0, cost
                assert await page.locator("#chart-spend svg").count() == 1
                await page.locator(f"tr[data-task='{speak}']").click()
                output = page.locator(f"#output[data-task='{speak}']")
                await output.locator(".chunk[data-seq='1']").wait_for(timeout=15_000)
                # live: the first chunk is on the page while the task waits at its gate
                assert await output.get_attribute("data-state") == "live"
                assert await output.locator(".chunk").count() == 1
                state = (await http.get(f"/api/tasks/{speak}")).json()["status"]
                assert state in ("queued", "running"), state
                ARTIFACTS.mkdir(exist_ok=True)
                await page.screenshot(path=str(ARTIFACTS / "dashboard-output.png"), full_page=True)
                gate.write_text("open")
                await page.locator(
                    f"#output[data-task='{speak}'][data-state='ended'][data-status='succeeded']"
                ).wait_for(timeout=20_000)
                texts = await output.locator(".chunk").all_inner_texts()
                assert [json.loads(t)["line"] for t in texts] == [0, 1, 2]
                assert page.errors == [], page.errors
    finally:
        await asyncio.to_thread(stop, proc)
