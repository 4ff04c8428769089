"""The agent runtime's events: LLM calls, durable steps, artifacts, and the indexer's files."""

from __future__ import annotations

from typing import Any

import msgspec

from cogo.streams.catalogue.base import EventData

# the agent runtime (docs/design.md §11): one per LLM call, one per durable step's first success
LLM_CALL = "llm_call"
STEP_COMPLETED = "step_completed"
ARTIFACT_STORED = "artifact_stored"
# the indexer: batches of files (re)indexed or gone
FILE_INDEXED = "code_file_indexed"
FILE_REMOVED = "code_file_removed"


class ArtifactRef(EventData, frozen=True, kw_only=True, omit_defaults=True):
    """What was stored: the key, its size in bytes and its SHA-256 (hex)."""

    name: str
    size: int
    sha256: str


class LlmCall(EventData, frozen=True, kw_only=True, omit_defaults=True):
    """One request to the LLM endpoint (its usage is the event's ``usage``); every field is
    written, nulls included (``step`` is null outside a step, ``finish_reason`` and
    ``reply_model`` when no reply came)."""

    model: str
    step: str | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    finish_reason: str | None
    usage_estimated: bool
    prompt_estimate: int
    max_tokens: int
    stream: bool
    retry: int
    tool_calls: int
    reply_model: str | None
    delivery: int
    # the reported usage was outside what was sent and received (a lying endpoint): what it
    # claimed and why it was not believed; the event's usage is what was charged
    usage_disputed: str | None = None


class StepCompleted(EventData, frozen=True, kw_only=True, omit_defaults=True):
    """A durable step's first result: inline, or in the artifact store when large."""

    step: str
    delivery: int = 1
    result: Any = None
    artifact: ArtifactRef | None = None
    # the request's place in the handler (durable agents check a replay asks the same) and
    # which run of the attempt journaled it (a resumed attempt runs again)
    seq: int | None = None
    run: int | None = None


class Symbol(msgspec.Struct, frozen=True, kw_only=True):
    """A class, function, import ... of an indexed file."""

    kind: str
    name: str
    line: int
    parent: str | None = None


class IndexedFile(msgspec.Struct, frozen=True, kw_only=True, omit_defaults=True):
    """A file as the indexer saw it; removed files carry only ``path``."""

    path: str
    language: str | None = None
    size: int | None = None
    sha256: str | None = None
    lines: int | None = None
    symbols: list[Symbol] | None = None


class CodeFiles(EventData, frozen=True, kw_only=True, omit_defaults=True):
    """A batch of files of one repository (``code_file_indexed`` / ``code_file_removed``)."""

    repo: str
    files: list[IndexedFile]


TYPES: dict[str, type[EventData]] = {
    LLM_CALL: LlmCall,
    STEP_COMPLETED: StepCompleted,
    ARTIFACT_STORED: ArtifactRef,
    FILE_INDEXED: CodeFiles,
    FILE_REMOVED: CodeFiles,
}
REQUIRED: dict[str, tuple[str, ...]] = {
    LLM_CALL: ("task_id", "attempt", "usage"),
    STEP_COMPLETED: ("task_id", "attempt"),
}
