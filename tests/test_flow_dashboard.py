"""The dashboard's flow control panel in a real headless Chromium.

The facade serves from this process (uvicorn on a free loopback port) next to a real
dispatcher, echo worker and projector; a flow-controlled route has a key holding back
tasks, and the page must show that key running one and holding the rest. The screenshot
lands in ``test-artifacts/flow.png``.
"""

from __future__ import annotations

import asyncio
import contextlib

import uvicorn

from cogo.agents.echo import EchoActor
from cogo.http.app import create_app
from cogo.http.server import server_config
from cogo.http.state import AppState
from cogo.runtime.dispatcher import ExecutorDispatcher
from cogo.runtime.system import _extra_routes
from cogo.streams.policies import PolicyStore, set_policy
from cogo.streams.server import free_port
from tests.browser import ARTIFACTS, dashboard_page
from tests.helpers import EventReader, projecting, running, submit

TOKEN = "flow-dashboard-token"


async def test_flow_panel_shows_what_runs_and_what_waits(nats_server, nc, js, config, data_dir):
    await set_policy(js, "echo.run.0", {"flow": {"concurrency_per_key": 1}})
    policies = PolicyStore(js)
    await policies.start()
    port = free_port()
    async with (
        running(nats_server.url, config, ExecutorDispatcher, EchoActor),
        projecting(nc, config, data_dir) as projector,
    ):
        state = AppState(
            nc=nc, config=config, policies=policies, data_dir=data_dir, api_token=TOKEN, projector=projector
        )
        server = uvicorn.Server(server_config(create_app(state, extra_routes=_extra_routes()), port=port))
        serving = asyncio.create_task(server.serve())
        try:
            while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for it
                await asyncio.sleep(0.05)
            # the first holds the key's one slot for a while; the three after it wait
            ids = [
                await submit(js, payload={"sleep_ms": 5000 if i == 0 else 50, "__assignment": {"key": "acme"}})
                for i in range(4)
            ]
            ids.append(await submit(js, payload={"result": 1}))
            info = {"http_url": f"http://127.0.0.1:{port}", "api_token": TOKEN}
            async with dashboard_page(info, height=1100) as page:
                row = page.locator("#flow tr[data-key='acme']")
                await row.wait_for(timeout=15_000)
                await page.wait_for_function(
                    "() => { const r = document.querySelector(\"#flow tr[data-key='acme']\");"
                    " return r && r.cells[2].textContent === '1'"
                    " && r.cells[3].textContent === '3'; }",
                    timeout=15_000,
                )
                assert await row.locator("td").nth(5).inner_text() == "concurrency_per_key"
                route_row = page.locator("#flow tr[data-route='echo.run.0']").first
                assert "1 per key" in await route_row.inner_text()
                ARTIFACTS.mkdir(exist_ok=True)
                await page.locator("#panel-flow").screenshot(path=str(ARTIFACTS / "flow.png"))
                assert not page.errors, page.errors
            await EventReader(js).wait_terminal(ids, timeout=30)
        finally:
            server.should_exit = True
            with contextlib.suppress(Exception):
                await serving
            await policies.stop()
