"""What the agents' LLM calls cost, from the ``llm_calls`` view (``sql/30_agent_runtime.sql``):
the dashboard's spend card, by route and by model, over a window."""

from __future__ import annotations

import datetime as dt
from typing import Any

import duckdb

_SPEND = """
SELECT route, model, count(*), count(DISTINCT task_id), sum(prompt_tokens),
       sum(completion_tokens), sum(tokens), sum(cost_usd), count(*) FILTER (usage_estimated),
       count(*) FILTER (error_code IS NOT NULL), grouping(route, model)
FROM llm_calls
WHERE "at" >= $since
GROUP BY GROUPING SETS ((), (route), (model))
ORDER BY sum(cost_usd) DESC, route NULLS FIRST, model NULLS FIRST
"""


def summary(cur: duckdb.DuckDBPyConnection, since: dt.datetime) -> dict[str, Any]:
    """Calls, tokens and cost since ``since`` (naive UTC): in all, by route, by model."""
    out: dict[str, Any] = {
        "calls": 0,
        "tasks": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "tokens": 0,
        "cost_usd": 0.0,
        "estimated_calls": 0,
        "failed_calls": 0,
        "by_route": [],
        "by_model": [],
    }
    for route, model, calls, tasks, prompt, completion, tokens, cost, estimated, failed, grouping in cur.execute(
        _SPEND, {"since": since}
    ).fetchall():
        row = {
            "calls": calls,
            "tasks": tasks,
            "prompt_tokens": int(prompt or 0),
            "completion_tokens": int(completion or 0),
            "tokens": int(tokens or 0),
            "cost_usd": round(float(cost or 0.0), 9),
            "estimated_calls": estimated,
            "failed_calls": failed,
        }
        if grouping == 0b11:
            out.update(row)
        elif grouping == 0b01:
            out["by_route"].append({"route": route, **row})
        else:
            out["by_model"].append({"model": model, **row})
    return out
