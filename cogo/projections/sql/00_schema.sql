-- Cogo projections: the event log (EVENTS, DLQ) as DuckDB tables and views.
--
-- The projector runs every *.sql file in this directory, in filename order, each time it
-- opens the database, in one transaction. Files must therefore be idempotent
-- (CREATE TABLE IF NOT EXISTS, CREATE OR REPLACE VIEW). Add views in new files
-- (20_code_index.sql, ...) rather than editing this one; query the raw event with
-- `raw->>'$.data.some_key'`.
--
-- Rows depend only on the stream's content (never on wall-clock time at ingest), so
-- `cogo replay` rebuilds exactly the same tables. It is also the migration path: change a
-- table here, run `cogo replay`, and the new file is built with the new definition.
--
-- `at` is a reserved word in DuckDB: write "at" or bus_events.at in queries.

-- One row per EVENTS message, in stream order.
CREATE TABLE IF NOT EXISTS bus_events (
    seq              BIGINT NOT NULL,     -- EVENTS stream sequence
    event_id         VARCHAR,
    type             VARCHAR,             -- NULL when the message was not an event object
    "at"             TIMESTAMP,           -- UTC
    task_id          VARCHAR,
    correlation_id   VARCHAR,
    causation_id     VARCHAR,
    route            VARCHAR,
    actor            VARCHAR,
    attempt          INTEGER,
    queue_wait_ms    DOUBLE,              -- enqueued: submit -> dispatch; results: enqueued -> claimed
    duration_ms      DOUBLE,              -- claimed -> result, for one attempt
    backoff_ms       BIGINT,
    next_attempt_at  TIMESTAMP,
    error_code       VARCHAR,
    error            VARCHAR,
    version          VARCHAR,
    cohort           VARCHAR,
    tokens           BIGINT,              -- usage accumulated across attempts so far
    cost_usd         DOUBLE,
    usage_duration_ms DOUBLE,
    submitted_at     TIMESTAMP,           -- data.submitted_at
    claimed_at       TIMESTAMP,           -- data.claimed_at (worker results)
    deadline         TIMESTAMP,           -- data.deadline (execute_enqueued)
    -- the message as published (a JSON string if it was not JSON); zstd compresses these
    -- large unique strings far cheaper than the default FSST analysis at each checkpoint
    raw              JSON USING COMPRESSION zstd
);

-- Dead letters from the DLQ stream, with the reason headers the bus attached.
CREATE TABLE IF NOT EXISTS dlq_messages (
    seq              BIGINT NOT NULL,     -- DLQ stream sequence
    "at"             TIMESTAMP,           -- when it was dead-lettered (stream timestamp, UTC)
    subject          VARCHAR,
    original_subject VARCHAR,
    original_seq     BIGINT,              -- sequence in TASKS
    deliveries       INTEGER,
    error_code       VARCHAR,
    reason           VARCHAR,
    actor            VARCHAR,
    task_id          VARCHAR,
    route            VARCHAR,
    data             VARCHAR              -- the dead message's body (UTF-8, invalid bytes replaced)
);

-- The last stream sequence applied, written in the same transaction as the rows.
CREATE TABLE IF NOT EXISTS projector_checkpoint (
    stream           VARCHAR PRIMARY KEY,
    last_seq         BIGINT NOT NULL,
    applied          BIGINT NOT NULL      -- rows written from this stream
);
INSERT INTO projector_checkpoint VALUES ('EVENTS', 0, 0), ('DLQ', 0, 0) ON CONFLICT DO NOTHING;

-- The worker's measurements: one row per attempt that reached a worker.
CREATE OR REPLACE VIEW attempts AS
SELECT seq, "at", task_id, route, actor, attempt, type, queue_wait_ms, duration_ms,
       error_code, version, cohort, claimed_at
FROM bus_events
WHERE type IN ('execute_done', 'execute_retry', 'execute_failed') AND duration_ms IS NOT NULL;

-- One row per task: when it was submitted, enqueued, claimed and finished, and how.
CREATE OR REPLACE VIEW task_latency AS
SELECT
    task_id,
    arg_min(route, seq)                                                       AS route,
    arg_min(correlation_id, seq)                                              AS correlation_id,
    min(submitted_at)                                                         AS submitted_at,
    min("at") FILTER (type = 'execute_enqueued')                              AS enqueued_at,
    max(claimed_at)                                                           AS claimed_at,
    max("at") FILTER (type IN ('execute_done', 'execute_failed'))             AS finished_at,
    -- the last attempt's measurements; totals across attempts alongside
    arg_max(queue_wait_ms, seq) FILTER (type <> 'execute_enqueued' AND duration_ms IS NOT NULL) AS queue_wait_ms,
    arg_max(duration_ms, seq) FILTER (duration_ms IS NOT NULL)                AS duration_ms,
    sum(queue_wait_ms) FILTER (type <> 'execute_enqueued' AND duration_ms IS NOT NULL) AS total_queue_wait_ms,
    sum(duration_ms)                                                          AS total_duration_ms,
    date_diff('microsecond', min(submitted_at),
              max("at") FILTER (type IN ('execute_done', 'execute_failed'))) / 1000.0 AS end_to_end_ms,
    coalesce(max(attempt), 0)                                                 AS attempts,
    count(*) FILTER (type = 'execute_retry')                                  AS retries,
    CASE
        WHEN bool_or(type = 'execute_done') THEN 'done'
        WHEN bool_or(type = 'execute_failed') THEN 'failed'
        ELSE 'running'
    END                                                                       AS status,
    arg_max(error_code, seq) FILTER (type = 'execute_failed')                 AS error_code,
    max(tokens)                                                               AS tokens,
    max(cost_usd)                                                             AS cost_usd
FROM bus_events
WHERE task_id IS NOT NULL
GROUP BY task_id;

-- p50/p90/p99 of queue wait and duration per route (all time; filter attempts for a window).
CREATE OR REPLACE VIEW latency_by_route AS
SELECT
    route,
    count(*)                                AS attempts,
    quantile_cont(queue_wait_ms, 0.50)      AS queue_wait_p50_ms,
    quantile_cont(queue_wait_ms, 0.90)      AS queue_wait_p90_ms,
    quantile_cont(queue_wait_ms, 0.99)      AS queue_wait_p99_ms,
    quantile_cont(duration_ms, 0.50)        AS duration_p50_ms,
    quantile_cont(duration_ms, 0.90)        AS duration_p90_ms,
    quantile_cont(duration_ms, 0.99)        AS duration_p99_ms
FROM attempts
GROUP BY route;

-- The same per route and minute.
CREATE OR REPLACE VIEW latency_by_minute AS
SELECT
    time_bucket(INTERVAL 1 MINUTE, "at")    AS minute,
    route,
    count(*)                                AS attempts,
    quantile_cont(queue_wait_ms, 0.50)      AS queue_wait_p50_ms,
    quantile_cont(queue_wait_ms, 0.90)      AS queue_wait_p90_ms,
    quantile_cont(queue_wait_ms, 0.99)      AS queue_wait_p99_ms,
    quantile_cont(duration_ms, 0.50)        AS duration_p50_ms,
    quantile_cont(duration_ms, 0.90)        AS duration_p90_ms,
    quantile_cont(duration_ms, 0.99)        AS duration_p99_ms
FROM attempts
GROUP BY ALL;

-- Failures (terminal) and retries per minute, route and error code.
CREATE OR REPLACE VIEW failure_trend AS
SELECT
    time_bucket(INTERVAL 1 MINUTE, "at")                AS minute,
    route,
    error_code,
    count(*) FILTER (type = 'execute_failed')           AS failures,
    count(*) FILTER (type = 'execute_retry')            AS retries
FROM bus_events
WHERE type IN ('execute_failed', 'execute_retry')
GROUP BY ALL;

-- Events per type and route (what GET /metrics exports as counters).
CREATE OR REPLACE VIEW event_counts AS
SELECT type, route, count(*) AS events
FROM bus_events
GROUP BY ALL;

-- Rollout cohorts: how each version / cohort of a route performs.
CREATE OR REPLACE VIEW cohort_latency AS
SELECT
    route,
    version,
    cohort,
    count(*)                                            AS attempts,
    count(*) FILTER (type = 'execute_done')             AS done,
    count(*) FILTER (type <> 'execute_done')            AS failed_attempts,
    quantile_cont(duration_ms, 0.50)                    AS duration_p50_ms,
    quantile_cont(duration_ms, 0.99)                    AS duration_p99_ms
FROM attempts
GROUP BY ALL;
