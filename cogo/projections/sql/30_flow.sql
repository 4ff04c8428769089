-- Flow control (cogo/runtime/flow/admission.py): attempts held back by their route's flow limits,
-- as views over bus_events. An attempt's hold is told by
--   execute_throttled  its first hold: data = {"limit", "key", "priority", "held_at",
--                      "limits", "running", "waiting"} (once per task and attempt)
--   execute_enqueued   the hold ends: admitted (data.held_ms says for how long)
--   execute_failed     the hold ends: the task expired while held (data.limit, data.held_ms)
-- Views only: nothing to migrate, and a replay rebuilds them with bus_events.
--
-- "How long was tenant X throttled?"
--   SELECT throttled_ms FROM flow_throttled_by_key WHERE key = 'X'        -- wall clock
--   SELECT sum(held_ms) FROM flow_holds WHERE key = 'X' AND held_at > now() - INTERVAL 1 HOUR

-- One row per held attempt: who, which limit, from when to when, and how it ended.
CREATE OR REPLACE VIEW flow_holds AS
WITH held AS (
    SELECT task_id,
           attempt,
           arg_min(route, seq)                                             AS route,
           arg_min(raw->>'$.data.key', seq)                                AS key,
           arg_min(TRY_CAST(raw->>'$.data.priority' AS INTEGER), seq)      AS priority,
           arg_min(raw->>'$.data.limit', seq)                              AS held_by,
           min(coalesce(TRY_CAST(raw->>'$.data.held_at' AS TIMESTAMP), "at")) AS held_at,
           min("at")                                                       AS throttled_at
    FROM bus_events
    WHERE type = 'execute_throttled'
    GROUP BY task_id, attempt
),
admitted AS (
    SELECT task_id, attempt, min("at") AS admitted_at
    FROM bus_events
    WHERE type = 'execute_enqueued'
    GROUP BY task_id, attempt
),
expired AS (
    -- a held attempt that expired is the task's end: its execute_failed names the limit
    SELECT task_id, min("at") AS expired_at
    FROM bus_events
    WHERE type = 'execute_failed' AND raw->>'$.data.limit' IS NOT NULL
    GROUP BY task_id
)
SELECT h.task_id,
       h.attempt,
       h.route,
       h.key,
       h.priority,
       h.held_by,
       h.held_at,
       h.throttled_at,
       coalesce(a.admitted_at, x.expired_at)                               AS released_at,
       CASE WHEN a.admitted_at IS NOT NULL THEN 'admitted'
            WHEN x.expired_at IS NOT NULL THEN 'expired'
            ELSE 'held' END                                                AS outcome,
       date_diff('microsecond', h.held_at, coalesce(a.admitted_at, x.expired_at)) / 1000.0
                                                                           AS held_ms
FROM held AS h
LEFT JOIN admitted AS a USING (task_id, attempt)
LEFT JOIN expired AS x USING (task_id);

-- The periods in which a key had at least one attempt held (overlapping holds merged):
-- the wall-clock time a tenant was throttled. A hold still going on ends at its start.
CREATE OR REPLACE VIEW flow_throttled_periods AS
WITH spans AS (
    SELECT route, key, held_at AS starts, coalesce(released_at, held_at) AS ends
    FROM flow_holds
),
marked AS (
    SELECT *,
           max(ends) OVER (PARTITION BY route, key ORDER BY starts, ends
                           ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS before_end
    FROM spans
),
numbered AS (
    SELECT *,
           sum(CASE WHEN before_end IS NULL OR starts > before_end THEN 1 ELSE 0 END)
               OVER (PARTITION BY route, key ORDER BY starts, ends) AS period
    FROM marked
)
SELECT route,
       key,
       period,
       min(starts)                                                         AS held_from,
       max(ends)                                                           AS held_until,
       date_diff('microsecond', min(starts), max(ends)) / 1000.0           AS held_ms,
       count(*)                                                            AS holds
FROM numbered
GROUP BY route, key, period;

-- Per route and key: how often and how long its attempts were held, in all.
CREATE OR REPLACE VIEW flow_throttled_by_key AS
WITH periods AS (
    SELECT route, key, sum(held_ms) AS throttled_ms, count(*) AS periods
    FROM flow_throttled_periods
    GROUP BY route, key
)
SELECT h.route,
       h.key,
       count(*)                                                            AS holds,
       count(*) FILTER (h.outcome = 'expired')                             AS expired,
       count(*) FILTER (h.outcome = 'held')                                AS holding,
       any_value(p.throttled_ms)                                           AS throttled_ms,
       any_value(p.periods)                                                AS periods,
       sum(h.held_ms)                                                      AS held_ms_total,
       quantile_cont(h.held_ms, 0.5)                                       AS held_ms_p50,
       max(h.held_ms)                                                      AS held_ms_max,
       min(h.held_at)                                                      AS first_held_at,
       max(h.released_at)                                                  AS last_released_at
FROM flow_holds AS h
LEFT JOIN periods AS p USING (route, key)
GROUP BY h.route, h.key;
