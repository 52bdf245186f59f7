-- Worker connections are recorded by the presence processor from events on the
-- `worker` queue: each connection has a key of its own, so an event delivered twice
-- writes its row once. Rows written before have none.
ALTER TABLE worker ADD COLUMN connection_key TEXT NULL;
CREATE UNIQUE INDEX worker_connection_key_idx ON worker (connection_key);
