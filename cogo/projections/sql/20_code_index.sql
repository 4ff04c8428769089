-- The code index: what the indexer actor (cogo/agents/indexer.py) reported, as views over
-- bus_events. `code_file_indexed` / `code_file_removed` events carry
-- data = {"repo", "files": [{"path", "language", "size", "sha256", "lines",
-- "symbols": [{"kind", "name", "line", "parent"}]}]} (removed files carry only "path").
-- Views only: nothing to migrate, and a replay rebuilds them with bus_events.

-- One row per file mention, in stream order.
CREATE OR REPLACE VIEW code_file_events AS
SELECT e.seq,
       e.type,
       e."at",
       e.task_id,
       e.correlation_id,
       e.raw->>'$.data.repo'       AS repo,
       f.key::INTEGER              AS ord,
       f.value->>'$.path'          AS path,
       f.value                     AS file
FROM bus_events AS e, json_each(e.raw, '$.data.files') AS f
WHERE e.type IN ('code_file_indexed', 'code_file_removed');

-- The files of every repository as last indexed (removed files drop out).
CREATE OR REPLACE VIEW code_files AS
SELECT repo,
       path,
       file->>'$.language'                  AS language,
       (file->>'$.size')::BIGINT            AS size,
       file->>'$.sha256'                    AS sha256,
       (file->>'$.lines')::BIGINT           AS lines,
       json_array_length(file, '$.symbols') AS symbols,
       "at"                                 AS indexed_at,
       task_id,
       correlation_id,
       seq,
       file
FROM (
    SELECT *, row_number() OVER (PARTITION BY repo, path ORDER BY seq DESC, ord DESC) AS latest
    FROM code_file_events
)
WHERE latest = 1 AND type = 'code_file_indexed';

-- Classes, functions, methods, imports (and struct/interface/trait/... for Go and Rust)
-- of the files in code_files.
CREATE OR REPLACE VIEW code_symbols AS
SELECT f.repo,
       f.path,
       f.language,
       s.value->>'$.kind'              AS kind,
       s.value->>'$.name'              AS name,
       (s.value->>'$.line')::INTEGER   AS line,
       s.value->>'$.parent'            AS parent,
       f.sha256,
       f.indexed_at
FROM code_files AS f, json_each(f.file, '$.symbols') AS s;
