-- eligo's schema on SQLite: the original system's tables with eligo's columns, and
-- `rejected_message`.
--
-- Timestamps are UTC text 'YYYY-MM-DD HH:MM:SS.ffffff'. The store always writes all six
-- fraction digits, so that comparing and `max()` on the text order by time. The column
-- defaults (milliseconds only) serve hand-written rows.
-- `proof_target` and `solution_target` are u64 values stored bit-cast to a signed
-- integer: values above i64::MAX read back negative in SQL, so never compare them in SQL.

CREATE TABLE job (
    id INTEGER PRIMARY KEY,
    block_height INTEGER NOT NULL UNIQUE,
    epoch_challenge TEXT NOT NULL,
    task_id VARCHAR(36) NOT NULL UNIQUE,
    created_at TIMESTAMP NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    proof_target INTEGER NOT NULL DEFAULT 0,
    broadcast_at TIMESTAMP NULL
);

CREATE TABLE solution (
    id INTEGER PRIMARY KEY,
    hardware_id VARCHAR(255),
    caption VARCHAR(255),
    task_id VARCHAR(36),
    unique_key TEXT UNIQUE,
    solution TEXT,
    valid BOOLEAN DEFAULT false,
    checked BOOLEAN DEFAULT false,
    created_at TIMESTAMP NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now')),
    solution_target INTEGER NOT NULL DEFAULT 0,
    invalid_reason TEXT NULL,
    broadcast_at TIMESTAMP NULL
);
CREATE INDEX solution_task_id_idx ON solution (task_id);
-- The original's (hardware_id, caption) index, extended by created_at: finishing a
-- worker's connection looks up that worker's latest solution in a time range.
CREATE INDEX solution_hardware_id_caption_created_at_idx ON solution (hardware_id, caption, created_at);

CREATE TABLE worker (
    id INTEGER PRIMARY KEY,
    ip VARCHAR(45),
    address TEXT,
    hardware TEXT,
    hardware_id VARCHAR(255),
    caption VARCHAR(255),
    connected_at TIMESTAMP NOT NULL,
    disconnected_at TIMESTAMP NULL,
    instance TEXT NOT NULL DEFAULT ''
);
CREATE INDEX worker_ip_idx ON worker (ip);
CREATE INDEX worker_address_idx ON worker (address);
CREATE INDEX worker_hardware_id_caption_idx ON worker (hardware_id, caption);
-- A restarted instance finishes the connections it left open.
CREATE INDEX worker_open_instance_idx ON worker (instance) WHERE disconnected_at IS NULL;

CREATE TABLE rejected_message (
    id INTEGER PRIMARY KEY,
    stream TEXT NOT NULL,
    payload TEXT NOT NULL,
    reason TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL DEFAULT (strftime('%Y-%m-%d %H:%M:%f', 'now'))
);
