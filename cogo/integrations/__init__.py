"""Agent frameworks on Cogo's runtime: their model requests metered and journaled, their
tool calls journaled, their streamed events on the task's output.

- ``cogo.integrations.pydantic_ai``: a Pydantic AI ``Agent`` (``pip install 'cogo[pydantic-ai]'``)
- ``cogo.integrations.openai_agents``: an OpenAI Agents SDK ``Agent``
  (``pip install 'cogo[openai-agents]'``)

Both reach the model through ``ctx.llm``: the framework's own OpenAI-compatible client is
given an HTTP transport (``LlmTransport``) that hands each request to ``ctx.llm.chat``, so
the route's model allowance and the task's budget are checked before anything is sent and
an ``llm_call`` event is recorded after. Only the frameworks' public interfaces are used.
"""

from __future__ import annotations

from importlib import metadata


def require(distribution: str, lowest: str, below: str, integration: str) -> str:
    """The installed version of ``distribution``; ``ImportError`` naming the supported
    range when it is missing or outside ``[lowest, below)``."""
    wanted = f"{distribution}>={lowest},<{below}"
    try:
        found = metadata.version(distribution)
    except metadata.PackageNotFoundError:
        raise ImportError(
            f"{integration} needs {wanted}, which is not installed: "
            f"pip install 'cogo[{integration.rsplit('.', 1)[-1].replace('_', '-')}]'"
        ) from None
    if not (_key(lowest) <= _key(found) < _key(below)):
        raise ImportError(f"{integration} supports {wanted}; {found} is installed")
    return found


def _key(version: str) -> tuple[int, ...]:
    """The numeric release of a version (``2.78.0rc1`` -> ``(2, 78, 0)``)."""
    parts: list[int] = []
    for piece in version.split(".")[:3]:
        digits = ""
        for char in piece:
            if not char.isdigit():
                break
            digits += char
        parts.append(int(digits or 0))
        if digits != piece:
            break
    return tuple(parts)
