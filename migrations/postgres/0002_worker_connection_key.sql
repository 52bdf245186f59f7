-- Worker connections are recorded by the presence processor from events on the
-- `worker` queue: each connection has a key of its own, so an event delivered twice
-- writes its row once. Rows written before (or by the original system) have none.
ALTER TABLE worker ADD COLUMN IF NOT EXISTS connection_key text NULL;
CREATE UNIQUE INDEX IF NOT EXISTS worker_connection_key_idx ON worker (connection_key);
