-- A kept message the broker refused for good (too large, unknown topic,
-- access refused) is parked instead of retried: `parked` holds the broker's
-- reason and the relay skips the row, so it never holds up the messages
-- after it. Parked rows stay for an operator to inspect and delete.
ALTER TABLE {outbox} ADD COLUMN IF NOT EXISTS parked text;
ALTER TABLE {outbox} ADD COLUMN IF NOT EXISTS parked_at timestamptz;
CREATE INDEX IF NOT EXISTS {outbox}_waiting ON {outbox} (pubsub, id) WHERE parked IS NULL;
