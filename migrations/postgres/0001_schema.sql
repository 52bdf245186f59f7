-- eligo's schema on PostgreSQL.
--
-- The first part is the original system's schema. It is created only where absent, so
-- eligo can also take over the database the original system filled; the columns eligo
-- adds follow as `ADD COLUMN IF NOT EXISTS` for the same reason.
--
-- Timestamps are `timestamp` (without time zone) holding UTC, as in the original.
-- `proof_target` and `solution_target` are u64 values stored bit-cast to bigint: values
-- above i64::MAX read back negative in SQL, so never compare them in SQL.

CREATE TABLE IF NOT EXISTS job (
    id serial PRIMARY KEY,
    block_height bigint NOT NULL UNIQUE,
    epoch_challenge text NOT NULL,
    task_id varchar(36) NOT NULL UNIQUE,
    created_at timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'utc')
);

CREATE TABLE IF NOT EXISTS solution (
    id bigserial PRIMARY KEY,
    hardware_id varchar(255),
    caption varchar(255),
    task_id varchar(36),
    unique_key text UNIQUE,
    solution text,
    valid boolean DEFAULT false,
    checked boolean DEFAULT false,
    created_at timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'utc')
);
CREATE INDEX IF NOT EXISTS solution_task_id_idx ON solution (task_id);

CREATE TABLE IF NOT EXISTS worker (
    id bigserial PRIMARY KEY,
    ip varchar(45),
    address text,
    hardware text,
    hardware_id varchar(255),
    caption varchar(255),
    connected_at timestamp NOT NULL,
    disconnected_at timestamp NULL
);
CREATE INDEX IF NOT EXISTS worker_ip_idx ON worker (ip);
CREATE INDEX IF NOT EXISTS worker_address_idx ON worker (address);
CREATE INDEX IF NOT EXISTS worker_hardware_id_caption_idx ON worker (hardware_id, caption);

-- eligo's additions.

ALTER TABLE job ADD COLUMN IF NOT EXISTS proof_target bigint NOT NULL DEFAULT 0;
ALTER TABLE job ADD COLUMN IF NOT EXISTS broadcast_at timestamp NULL;

ALTER TABLE solution ADD COLUMN IF NOT EXISTS solution_target bigint NOT NULL DEFAULT 0;
ALTER TABLE solution ADD COLUMN IF NOT EXISTS invalid_reason text NULL;
ALTER TABLE solution ADD COLUMN IF NOT EXISTS broadcast_at timestamp NULL;
-- The original's (hardware_id, caption) index, extended by created_at: finishing a
-- worker's connection looks up that worker's latest solution in a time range.
CREATE INDEX IF NOT EXISTS solution_hardware_id_caption_created_at_idx
    ON solution (hardware_id, caption, created_at);

ALTER TABLE worker ADD COLUMN IF NOT EXISTS instance text NOT NULL DEFAULT '';
-- A restarted instance finishes the connections it left open.
CREATE INDEX IF NOT EXISTS worker_open_instance_idx ON worker (instance) WHERE disconnected_at IS NULL;

CREATE TABLE IF NOT EXISTS rejected_message (
    id bigserial PRIMARY KEY,
    stream text NOT NULL,
    payload text NOT NULL,
    reason text NOT NULL,
    created_at timestamp NOT NULL DEFAULT (now() AT TIME ZONE 'utc')
);
