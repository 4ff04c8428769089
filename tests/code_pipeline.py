"""The code pipeline in this process: the dispatcher plus the codegen and build/test workers,
and the examples they run on (``examples/sample-repo``, whose copy is the ``repo`` fixture)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

from cogo.agents.build_test import BuildTestActor
from cogo.agents.codegen import CodegenActor
from cogo.config import Config
from cogo.runtime.base import Actor
from cogo.runtime.dispatcher import ExecutorDispatcher
from tests.helpers import running

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CODEGEN = "codegen.generate.0"
BUILD_TEST = "code.build-test.0"


@contextlib.asynccontextmanager
async def pipeline(url: str, config: Config, data_dir: Path) -> AsyncIterator[list[Actor]]:
    """The dispatcher plus the codegen and build/test workers, in this process."""
    async with (
        running(url, config, ExecutorDispatcher),
        running(url, config, CodegenActor, BuildTestActor, data_dir=data_dir) as workers,
    ):
        yield workers
