-- Perch idempotency inbox (DESIGN.md section 5). {inbox} is the configured
-- table name. One row per (subscriber, event): claimed with a lease on the
-- database clock, then marked done (or dead) and kept for the retention.
CREATE TABLE IF NOT EXISTS {inbox} (
    subscriber  text        NOT NULL,
    msg_key     text        NOT NULL,
    state       text        NOT NULL CHECK (state IN ('in_progress', 'done', 'dead')),
    lease_owner uuid        NOT NULL,
    lease_until timestamptz NOT NULL,
    attempts    integer     NOT NULL DEFAULT 1,
    first_seen  timestamptz NOT NULL DEFAULT now(),
    done_at     timestamptz,
    PRIMARY KEY (subscriber, msg_key)
);
CREATE INDEX IF NOT EXISTS {inbox}_done_at ON {inbox} (done_at) WHERE state <> 'in_progress';
