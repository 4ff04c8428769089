-- Traces (cogo/tracing.py): with OTEL_EXPORTER_OTLP_* set, every event carries the
-- OpenTelemetry trace it happened in (`trace_id`, 32 hex digits), so a slow task found
-- here leads to its trace in Jaeger, Tempo or Logfire:
--     SELECT trace_id FROM task_traces WHERE task_id = '...';
-- A task's events share its trace; a task submitted without one gets a trace of its own.
-- Views only: nothing to migrate, and a replay rebuilds them with bus_events.

CREATE OR REPLACE VIEW task_traces AS
SELECT task_id,
       raw->>'$.trace_id'     AS trace_id,
       any_value(route)       AS route,
       min("at")              AS first_at,
       max("at")              AS last_at,
       count(*)               AS events
FROM bus_events
WHERE raw->>'$.trace_id' IS NOT NULL
GROUP BY task_id, raw->>'$.trace_id';
