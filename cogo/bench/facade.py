"""``POST /api/tasks`` per second against the HTTP facade under uvicorn, in its own process.

The facade alone (``serve_facade``, a spawned process) on 127.0.0.1, from
``--http-concurrency`` kept-alive connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import tempfile
import time
from pathlib import Path

from cogo.bench.system import ROUTE, Bench, peak_rss_mb
from cogo.config import load_config
from cogo.errors import CogoError
from cogo.runtime.runner import _use_uvloop
from cogo.streams.server import free_port


async def http_submit(bench: Bench) -> float:
    """Accepted ``POST /api/tasks`` per second."""
    import httpx

    port, token = free_port(), "bench-token"
    ctx = multiprocessing.get_context("spawn")
    facade = ctx.Process(target=serve_facade, args=(bench.url, port, token), name="cogo-bench-facade")
    facade.start()
    url = f"http://127.0.0.1:{port}"
    count, ok = bench.o.http_requests, 0
    update = bench.progress.task("POST /api/tasks", count)
    try:
        # every connection kept alive: a closed one costs a TCP handshake per request
        limits = httpx.Limits(
            max_connections=bench.o.http_concurrency,
            max_keepalive_connections=bench.o.http_concurrency,
        )
        headers = {"Authorization": f"Bearer {token}"}
        async with httpx.AsyncClient(base_url=url, limits=limits, headers=headers) as client:
            deadline = time.monotonic() + 30
            while True:
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/healthz")).status_code == 200:
                        break
                if time.monotonic() > deadline or not facade.is_alive():
                    raise CogoError("the HTTP facade did not start")
                await asyncio.sleep(0.1)
            queue = iter(range(count))
            body = {"route": ROUTE, "payload": {}}

            async def worker() -> None:
                nonlocal ok
                for _ in queue:
                    response = await client.post("/api/tasks", json=body)
                    ok += response.status_code == 202
                    if ok % 100 == 0:
                        update(ok, "")

            began = time.perf_counter()
            await asyncio.wait_for(
                asyncio.gather(*(worker() for _ in range(bench.o.http_concurrency))),
                bench.o.timeout,
            )
            elapsed = time.perf_counter() - began
    finally:
        if facade.pid is not None:
            bench.rss["facade"] = peak_rss_mb(facade.pid)
        facade.terminate()
        await asyncio.to_thread(facade.join, 10)
    if ok < count:
        raise CogoError(f"POST /api/tasks: only {ok} of {count} accepted")
    update(count, f"{count / elapsed:,.0f} req/s")
    return count / elapsed


def serve_facade(nats_url: str, port: int, token: str) -> None:
    """Process target: the HTTP facade alone, on 127.0.0.1:``port``."""
    import uvicorn

    from cogo.http.state import AppState
    from cogo.runtime.startup import Startup

    async def main() -> None:
        # `cogo up`'s start-up joining the bench's server: the facade alone
        data_dir = Path(tempfile.gettempdir())
        boot = Startup(data_dir, load_config(), nats_url=nats_url, name="cogo-bench-facade")
        nc = await boot.start_bus()
        policies = await boot.start_policies()
        state = AppState(nc=nc, config=boot.config, policies=policies, data_dir=boot.data_dir, api_token=token)
        server = uvicorn.Server(
            uvicorn.Config(
                boot.facade(state),
                host="127.0.0.1",
                port=port,
                log_level="warning",
                lifespan="off",
                access_log=False,
            )
        )
        await server.serve()

    _use_uvloop()
    asyncio.run(main())
