-- Perch publish outbox (DESIGN.md section 4). {outbox} is the configured
-- table name. A publish the broker cannot take is kept here, in order, until
-- the relay has published it and the broker confirmed.
CREATE TABLE IF NOT EXISTS {outbox} (
    id           bigserial   PRIMARY KEY,
    pubsub       text        NOT NULL,
    topic        text        NOT NULL,
    data         bytea       NOT NULL,
    content_type text,
    metadata     text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS {outbox}_pubsub ON {outbox} (pubsub, id);
