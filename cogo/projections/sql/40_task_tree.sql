-- Durable agents: the task tree. A task started by ctx.call has the id <parent>/<key> and
-- its parent as causation_id; usage is each task's own (accumulated across attempts), and
-- summed over its subtree (itself and every descendant).

-- A task's usage is the larger of what its execute_* events accumulated and what its LLM
-- calls spent: a run cancelled while it ran ends on an event appended before it stopped.
CREATE OR REPLACE VIEW task_nodes AS
SELECT task_id,
       any_value(route) FILTER (route IS NOT NULL)                              AS route,
       any_value(causation_id) FILTER (starts_with(task_id, causation_id || '/')
                                       AND type LIKE 'execute_%')               AS parent_id,
       coalesce(arg_min(type, seq) FILTER (type IN ('execute_done', 'execute_failed',
                                                    'execute_cancelled')),
                arg_max(type, seq) FILTER (type LIKE 'execute_%'))              AS last_type,
       greatest(coalesce(max(tokens) FILTER (type LIKE 'execute_%'), 0),
                coalesce(sum(tokens) FILTER (type = 'llm_call'), 0))            AS tokens,
       greatest(coalesce(max(cost_usd) FILTER (type LIKE 'execute_%'), 0),
                coalesce(sum(cost_usd) FILTER (type = 'llm_call'), 0))          AS cost_usd,
       min("at")                                                                AS first_at
FROM bus_events
WHERE task_id IS NOT NULL AND (type LIKE 'execute_%' OR type = 'llm_call')
GROUP BY task_id;

CREATE OR REPLACE VIEW task_tree AS
WITH RECURSIVE up(task_id, ancestor, depth) AS (
    SELECT task_id, task_id, 0 FROM task_nodes
    UNION ALL
    SELECT up.task_id, n.parent_id, up.depth + 1
    FROM up JOIN task_nodes n ON n.task_id = up.ancestor
    WHERE n.parent_id IS NOT NULL AND up.depth < 64
),
roots AS (
    SELECT task_id, arg_max(ancestor, depth) AS root_id, max(depth) AS depth
    FROM up GROUP BY task_id
),
subtree AS (
    SELECT up.ancestor AS task_id, count(*) AS subtree_tasks,
           sum(n.tokens) AS subtree_tokens, sum(n.cost_usd) AS subtree_cost_usd
    FROM up JOIN task_nodes n ON n.task_id = up.task_id
    GROUP BY up.ancestor
)
SELECT n.task_id, n.parent_id, r.root_id, r.depth, n.route,
       CASE n.last_type
           WHEN 'execute_done' THEN 'succeeded'
           WHEN 'execute_failed' THEN 'failed'
           WHEN 'execute_cancelled' THEN 'cancelled'
           WHEN 'execute_suspended' THEN 'suspended'
           WHEN 'execute_retry' THEN 'retrying'
           WHEN 'execute_started' THEN 'running'
           ELSE 'queued'
       END                                   AS status,
       n.tokens, n.cost_usd, s.subtree_tasks, s.subtree_tokens, s.subtree_cost_usd, n.first_at
FROM task_nodes n JOIN roots r USING (task_id) JOIN subtree s USING (task_id);
