"""The codegen actor on ``codegen.generate.0``: a change request in, ``edits.json`` out.

Payload::

    {"repo": "/path/to/repo",
     "change": {"generator": "edits" | "llm",
                "edits": [...],              # generator "edits": the edits themselves
                "instruction": "...",        # generator "llm": what to change
                "files": ["calc/ops.py"]}}   # generator "llm": files the model should see

Either way the edits are validated (shape, paths) and dry-run against the repository, then
stored as the artifact ``<taskId>/edits.json``. The ``llm`` generator calls an
OpenAI-compatible ``/v1/chat/completions`` endpoint (``COGO_LLM_BASE_URL``,
``COGO_LLM_API_KEY``) with the assignment's model, never asking for more tokens than the
task's budget has left, and reports the tokens and their cost (``[pricing]``) as usage so
the dispatcher enforces ``max_tokens`` / ``max_cost_usd``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import time
from pathlib import Path
from typing import Any, Literal

import httpx
import msgspec

from cogo.actors.edits import (
    EDITS_ARTIFACT,
    Edit,
    decode_edits,
    encode_edits,
    plan_edits,
    resolve_inside,
)
from cogo.actors.worker import Outcome, TaskContext, Worker
from cogo.config import Config
from cogo.errors import (
    CogoError,
    CostBudgetExhausted,
    EditError,
    InvalidPayload,
    LlmBadReply,
    LlmError,
    LlmNotConfigured,
    LlmRequestRejected,
    RepoMissing,
    TokenBudgetExhausted,
    WorkerError,
)
from cogo.streams.artifacts import ArtifactStore
from cogo.streams.envelope import Usage, WorkOrder

log = logging.getLogger(__name__)

MAX_FILE_BYTES = 100_000  # per file shown to the model
MAX_CONTEXT_BYTES = 400_000  # all files together
MIN_COMPLETION_TOKENS = 64  # below this a reply cannot hold an edit: fail before paying
CHARS_PER_TOKEN = 4  # rough prompt estimate, used to keep the request under the budget

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
        # read once at start: the endpoint is deployment config, never task input (no SSRF)
        self.llm_base_url = os.environ.get("COGO_LLM_BASE_URL", "").rstrip("/")
        self.llm_api_key = os.environ.get("COGO_LLM_API_KEY", "")
        self._http: httpx.AsyncClient | None = None

    async def on_start(self) -> None:
        self._http = httpx.AsyncClient()

    async def on_stop(self) -> None:
        if self._http is not None:
            await self._http.aclose()

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
            ref = await self.artifacts.put(
                order, EDITS_ARTIFACT, encode_edits(edits), actor=self.name
            )
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
        if not self.llm_base_url:
            raise LlmNotConfigured("set COGO_LLM_BASE_URL to use the 'llm' generator")
        files = await asyncio.to_thread(_read_context, repo, change.files)
        messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": _user_prompt(change.instruction, files)},
        ]
        prompt_estimate = sum(len(m["content"]) for m in messages) // CHARS_PER_TOKEN
        completion_cap = ctx.remaining_tokens - prompt_estimate
        if completion_cap < MIN_COMPLETION_TOKENS:
            raise TokenBudgetExhausted(
                f"the prompt alone needs ~{prompt_estimate} tokens; the task has "
                f"{ctx.remaining_tokens} left"
            )
        model = order.assignment.model
        reply = await self._complete(
            {"model": model, "messages": messages, "max_tokens": completion_cap},
            timeout=max(1.0, ctx.deadline - time.time()),
        )
        usage = self._usage(model, reply, messages)
        try:
            # the worker's own check: the dispatcher then fails the task without a retry
            if usage.tokens > ctx.remaining_tokens:
                raise TokenBudgetExhausted(
                    f"the reply used {usage.tokens} tokens; {ctx.remaining_tokens} were left"
                )
            if usage.cost_usd > ctx.remaining_cost_usd:
                raise CostBudgetExhausted(
                    f"the reply cost ${usage.cost_usd:.6f}; ${ctx.remaining_cost_usd:.6f} was left"
                )
            try:
                edits = decode_edits(parse_reply(_content_of(reply)))
                await asyncio.to_thread(plan_edits, repo, edits)
            except EditError as exc:  # the model erred, not the request: another try may do
                raise LlmBadReply(
                    f"the model's edits are unusable: {exc}", detail=exc.code
                ) from exc
        except CogoError as exc:
            raise _with_usage(exc, usage) from None
        return edits, usage

    async def _complete(self, body: dict[str, Any], *, timeout: float) -> dict[str, Any]:
        assert self._http is not None, "actor not started"
        url = self.llm_base_url
        url += "/chat/completions" if url.endswith("/v1") else "/v1/chat/completions"
        headers = {"Authorization": f"Bearer {self.llm_api_key}"} if self.llm_api_key else {}
        try:
            response = await self._http.post(url, json=body, headers=headers, timeout=timeout)
        except httpx.HTTPError as exc:
            raise LlmError(f"LLM request failed: {type(exc).__name__}: {exc}") from None
        if response.status_code in (408, 429) or response.status_code >= 500:
            raise LlmError(f"LLM endpoint answered {response.status_code}: {response.text[:300]}")
        if response.status_code >= 400:
            raise LlmRequestRejected(
                f"LLM endpoint refused the request ({response.status_code}): {response.text[:300]}"
            )
        try:
            reply = response.json()
        except ValueError:
            raise LlmBadReply(f"LLM reply is not JSON: {response.text[:200]!r}") from None
        if not isinstance(reply, dict):
            raise LlmBadReply("LLM reply is not a JSON object")
        return reply

    def _usage(self, model: str, reply: dict[str, Any], messages: list[dict[str, str]]) -> Usage:
        raw = reply.get("usage") if isinstance(reply.get("usage"), dict) else {}
        prompt = _int(raw.get("prompt_tokens"))
        completion = _int(raw.get("completion_tokens"))
        total = _int(raw.get("total_tokens")) or prompt + completion
        if not total:  # a server that reports nothing still spends: estimate from the text
            prompt = sum(len(m["content"]) for m in messages) // CHARS_PER_TOKEN
            completion = len(_content_of(reply, strict=False)) // CHARS_PER_TOKEN
            total = prompt + completion
        elif not prompt and not completion:
            prompt = total  # price an unsplit total at the input rate
        price = self.config.pricing.get(model)
        if price is None:
            log.warning("no [pricing] entry for model %r; its cost counts as 0", model)
            cost = 0.0
        else:
            cost = round(price.cost_usd(prompt, completion), 9)
        return Usage(tokens=total, cost_usd=cost)


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
        if isinstance(value, dict) and isinstance(value.get("edits"), list):
            return value["edits"]
        if isinstance(value, list):
            return value
    raise LlmBadReply(f'no {{"edits": [...]}} object in the reply: {content[:200]!r}')


def _content_of(reply: dict[str, Any], *, strict: bool = True) -> str:
    try:
        content = reply["choices"][0]["message"]["content"]
    except (KeyError, IndexError, TypeError):
        content = None
    if not isinstance(content, str):
        if strict:
            raise LlmBadReply("LLM reply has no choices[0].message.content")
        return ""
    return content


def _int(value: Any) -> int:
    return value if isinstance(value, int) and value > 0 else 0


def _with_usage(exc: CogoError, usage: Usage) -> CogoError:
    if getattr(exc, "usage", None) is None:
        exc.usage = usage  # type: ignore[attr-defined] - a failed attempt still spent tokens
    return exc
