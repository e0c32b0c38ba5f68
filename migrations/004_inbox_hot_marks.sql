-- Marks as heap-only (HOT) updates. A `done` mark changed `state`, which
-- the partial index on `done_at` names, so every mark wrote new entries in
-- both indexes; with only the primary key indexed (and room left in each
-- page), claims' starts and marks rewrite the row in place. The purge finds
-- old rows through a BRIN index on `first_seen` (rows are appended in
-- arrival order, so a few bytes cover the table) and checks `done_at`.
DROP INDEX IF EXISTS {inbox}_done_at;
CREATE INDEX IF NOT EXISTS {inbox}_first_seen ON {inbox} USING brin (first_seen);
ALTER TABLE {inbox} SET (fillfactor = 80);
