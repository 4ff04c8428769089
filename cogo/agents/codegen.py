"""The codegen actor on ``codegen.generate.0``: a change request in, ``edits.json`` out.

Payload::

    {"repo": "/path/to/repo",
     "change": {"generator": "edits" | "llm",
                "edits": [...],              # generator "edits": the edits themselves
                "instruction": "...",        # generator "llm": what to change
                "files": ["calc/ops.py"]}}   # generator "llm": files the model should see

Either way the edits are validated (shape, paths) and dry-run against the repository, then
stored as the artifact ``<taskId>/edits.json``. The ``llm`` generator calls an
OpenAI-compatible endpoint through ``ctx.llm`` (``cogo.sdk.llm``: ``COGO_LLM_BASE_URL``,
``COGO_LLM_API_KEY``) with the assignment's model, never asking for more tokens than the
task's budget has left; the tokens and their cost (``[pricing]``) are the attempt's usage,
so the dispatcher enforces ``max_tokens`` / ``max_cost_usd``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from pathlib import Path
from typing import Any, Literal

import msgspec

from cogo.agents.edits import (
    EDITS_ARTIFACT,
    Edit,
    decode_edits,
    encode_edits,
    plan_edits,
    resolve_inside,
)
from cogo.config import Config
from cogo.errors import (
    CogoError,
    EditError,
    InvalidPayload,
    LlmBadReply,
    RepoMissing,
    WorkerError,
)
from cogo.sdk.context import Outcome, TaskContext
from cogo.sdk.worker import Worker
from cogo.streams.artifacts import ArtifactStore
from cogo.streams.envelope import Usage, WorkOrder

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 100_000  # per file shown to the model
MAX_CONTEXT_BYTES = 400_000  # all files together

SYSTEM_PROMPT = """You edit source code. Reply with exactly one JSON object and nothing else:
{"edits": [ ... ]}
Each edit is one of:
  {"op": "search_replace", "path": P, "search": TEXT, "replace": TEXT}
  {"op": "replace", "path": P, "content": WHOLE_FILE}
  {"op": "create", "path": P, "content": WHOLE_FILE}
  {"op": "delete", "path": P}
  {"op": "patch", "path": P, "diff": UNIFIED_DIFF}
Paths are relative to the repository root. `search` must match the file exactly once,
including whitespace. Prefer search_replace for small changes."""


class Change(msgspec.Struct, frozen=True):
    """What to change and how to produce the edits."""

    generator: Literal["edits", "llm"] = "edits"
    edits: list[Any] | None = None
    instruction: str | None = None
    files: list[str] = msgspec.field(default_factory=list)


class CodegenRequest(msgspec.Struct, frozen=True):
    """The payload of ``codegen.generate.0`` (``__assignment`` and unknown keys ignored)."""

    repo: str
    change: Change


class CodegenActor(Worker):
    """Turns a change request into validated edits stored as ``<taskId>/edits.json``."""

    kind = "codegen"
    route = "codegen.generate.0"
    needs_data_dir = True

    def __init__(
        self,
        nc: Any,
        config: Config,
        *,
        concurrency: int | None = None,
        version: str | None = None,
        data_dir: Path | None = None,
    ) -> None:
        super().__init__(nc, config, concurrency=concurrency, version=version)
        self.artifacts = ArtifactStore(self.js, data_dir, self.events)

    async def run(self, order: WorkOrder, ctx: TaskContext) -> Outcome:
        request = _decode_request(order.payload)
        repo = Path(request.repo)
        if not await asyncio.to_thread(repo.is_dir):
            raise RepoMissing(f"repository {request.repo!r} is not a directory")
        change = request.change
        if change.generator == "edits":
            if change.edits is None:
                raise InvalidPayload("change.edits is required with generator 'edits'")
            edits = decode_edits(change.edits)
            await asyncio.to_thread(plan_edits, repo, edits)  # conflicts fail here, not later
            usage = Usage()
        else:
            edits, usage = await self._generate(order, ctx, repo, change)
        try:
            ref = await self.artifacts.put(order, EDITS_ARTIFACT, encode_edits(edits), actor=self.name)
        except Exception as exc:  # storing failed after tokens were spent: report them
            raise _with_usage(WorkerError(f"storing edits.json failed: {exc}"), usage) from exc
        result = {
            "edits_count": len(edits),
            "artifacts": [ref.name],
            "generator": change.generator,
            "paths": list(dict.fromkeys(e.path for e in edits)),
        }
        return Outcome(result=result, usage=usage)

    # -- the llm generator -------------------------------------------------------------

    async def _generate(
        self, order: WorkOrder, ctx: TaskContext, repo: Path, change: Change
    ) -> tuple[list[Edit], Usage]:
        if not change.instruction:
            raise InvalidPayload("change.instruction is required with generator 'llm'")
        files = await asyncio.to_thread(_read_context, repo, change.files)
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": _user_prompt(change.instruction, files)},
        ]
        # ctx.llm enforces the assignment (model, max_tokens after the prompt, cost), records
        # the llm_call event and charges the usage to this attempt (ctx.report_usage)
        reply = await ctx.llm.chat(messages)
        if not reply.content:
            raise LlmBadReply("the model's reply has no content")
        try:
            edits = decode_edits(parse_reply(reply.content))
            await asyncio.to_thread(plan_edits, repo, edits)
        except EditError as exc:  # the model erred, not the request: another try may do
            raise LlmBadReply(f"the model's edits are unusable: {exc}", detail=exc.code) from exc
        return edits, Usage()  # the usage is already the attempt's (ctx.llm reported it)


def _decode_request(payload: dict[str, Any]) -> CodegenRequest:
    try:
        return msgspec.convert(payload, CodegenRequest)
    except msgspec.ValidationError as exc:
        raise InvalidPayload(f"invalid codegen payload: {exc}", detail=str(exc)) from None


def _read_context(repo: Path, paths: list[str]) -> list[tuple[str, str]]:
    """The files the model should see, checked to stay inside the repo, size-capped."""
    files: list[tuple[str, str]] = []
    budget = MAX_CONTEXT_BYTES
    for path in paths:
        target = resolve_inside(repo, path)
        if not target.is_file():
            files.append((path, "(this file does not exist yet)"))
            continue
        data = target.read_bytes()[: min(MAX_FILE_BYTES, max(budget, 0))]
        budget -= len(data)
        files.append((path, data.decode("utf-8", errors="replace")))
    return files


def _user_prompt(instruction: str, files: list[tuple[str, str]]) -> str:
    parts = [f"Instruction:\n{instruction.strip()}\n"]
    for path, text in files:
        parts.append(f"=== {path} ===\n{text}\n=== end of {path} ===\n")
    return "\n".join(parts)


_FENCE = re.compile(r"```(?:json|JSON)?[ \t]*\n(.*?)```", re.DOTALL)


def parse_reply(content: str) -> list[Any]:
    """The edit list in a model's reply: bare JSON, a ```json fence, or the outermost {...}."""
    candidates = [content.strip(), *_FENCE.findall(content)]
    first, last = content.find("{"), content.rfind("}")
    if 0 <= first < last:
        candidates.append(content[first : last + 1])
    for candidate in candidates:
        try:
            value = json.loads(candidate)
        except ValueError:
            continue
        if isinstance(value, dict) and isinstance(edits := value.get("edits"), list):
            return edits
        if isinstance(value, list):
            return value
    raise LlmBadReply(f'no {{"edits": [...]}} object in the reply: {content[:200]!r}')


def _with_usage(exc: CogoError, usage: Usage) -> CogoError:
    if getattr(exc, "usage", None) is None:
        # a failed attempt still spent tokens: the worker charges what the error carries
        setattr(exc, "usage", usage)  # noqa: B010 - CogoError declares no usage
    return exc
