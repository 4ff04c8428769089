-- The agent runtime as data (cogo/sdk/llm.py, cogo/sdk/steps.py): views over bus_events.
--
-- `llm_call` events carry one call's own usage (bus_events.tokens / cost_usd are that call's,
-- not a running total) and data = {"model", "step", "prompt_tokens", "completion_tokens",
-- "cost_usd", "finish_reason", "usage_estimated", "stream", "retry", "max_tokens",
-- "prompt_estimate", "delivery", "usage_disputed" (why the reported usage was clamped), ...}.
-- Every call that reached the endpoint has one, the calls
-- of a worker that died afterwards included: summing them is what was really spent, which
-- can be more than the usage the dispatcher enforced on the task (`execute_done.usage`)
-- when a worker died between a call and its result. `step_completed` events journal durable
-- steps (data = {"step", "delivery", "result" | "artifact"}).
-- Views only: nothing to migrate, and a replay rebuilds them with bus_events.

-- One row per LLM call.
CREATE OR REPLACE VIEW llm_calls AS
SELECT seq,
       "at",
       task_id,
       correlation_id,
       route,
       actor,
       attempt,
       coalesce(version, 'unversioned')                  AS version,
       coalesce(cohort, 'baseline')                      AS cohort,
       raw->>'$.data.model'                              AS model,
       raw->>'$.data.step'                               AS step,
       coalesce((raw->>'$.data.prompt_tokens')::BIGINT, 0)     AS prompt_tokens,
       coalesce((raw->>'$.data.completion_tokens')::BIGINT, 0) AS completion_tokens,
       coalesce(tokens, 0)                               AS tokens,
       coalesce(cost_usd, 0)                             AS cost_usd,
       duration_ms,
       raw->>'$.data.finish_reason'                      AS finish_reason,
       coalesce((raw->>'$.data.usage_estimated')::BOOLEAN, false) AS usage_estimated,
       coalesce((raw->>'$.data.stream')::BOOLEAN, false) AS stream,
       coalesce((raw->>'$.data.retry')::INTEGER, 0)      AS retry,
       error_code,
       raw->>'$.data.usage_disputed'                     AS usage_disputed  -- a lying endpoint
FROM bus_events
WHERE type = 'llm_call';

-- Per task: its calls, tokens and cost, by the route and version that ran it.
CREATE OR REPLACE VIEW llm_spend_by_task AS
SELECT task_id,
       arg_min(route, seq)                               AS route,
       arg_max(version, seq)                             AS version,
       list(DISTINCT model ORDER BY model)               AS models,
       count(*)                                          AS calls,
       count(*) FILTER (error_code IS NOT NULL)          AS failed_calls,
       sum(prompt_tokens)                                AS prompt_tokens,
       sum(completion_tokens)                            AS completion_tokens,
       sum(tokens)                                       AS tokens,
       sum(cost_usd)                                     AS cost_usd,
       bool_or(usage_estimated)                          AS usage_estimated,
       min("at")                                         AS first_call_at,
       max("at")                                         AS last_call_at
FROM llm_calls
GROUP BY task_id;

-- By route, model and version: what the calls cost and how long they took.
CREATE OR REPLACE VIEW llm_spend AS
SELECT route,
       model,
       version,
       count(*)                                          AS calls,
       count(DISTINCT task_id)                           AS tasks,
       count(*) FILTER (error_code IS NOT NULL)          AS failed_calls,
       count(*) FILTER (usage_estimated)                 AS estimated_calls,
       sum(prompt_tokens)                                AS prompt_tokens,
       sum(completion_tokens)                            AS completion_tokens,
       sum(tokens)                                       AS tokens,
       sum(cost_usd)                                     AS cost_usd,
       quantile_cont(duration_ms, 0.50)                  AS duration_p50_ms,
       quantile_cont(duration_ms, 0.99)                  AS duration_p99_ms
FROM llm_calls
GROUP BY ALL;

-- The journal: one row per durable step of a task (the first journaled wins, as on replay).
CREATE OR REPLACE VIEW task_steps AS
SELECT seq, "at", task_id, route, attempt, step, delivery, duration_ms, tokens, cost_usd, artifact
FROM (
    SELECT seq, "at", task_id, route, attempt,
           raw->>'$.data.step'                           AS step,
           coalesce((raw->>'$.data.delivery')::INTEGER, 1) AS delivery,
           duration_ms,
           coalesce(tokens, 0)                           AS tokens,
           coalesce(cost_usd, 0)                         AS cost_usd,
           raw->>'$.data.artifact.name'                  AS artifact,
           row_number() OVER (PARTITION BY task_id, raw->>'$.data.step' ORDER BY seq) AS nth
    FROM bus_events
    WHERE type = 'step_completed'
)
WHERE nth = 1;
