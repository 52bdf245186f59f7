-- Nodes over HTTP outlive a restart of the process that serves them: each is kept
-- here (what it waits for, its webhook) until it expires.
CREATE TABLE http_node (
    id TEXT PRIMARY KEY,
    -- Milliseconds since the Unix epoch.
    expires_at BIGINT NOT NULL,
    -- The node server's own JSON record of the node.
    record TEXT NOT NULL
);
CREATE INDEX http_node_expires_idx ON http_node (expires_at);

-- The webhook deliveries a receiver acknowledged (2xx), so that one found again
-- after a restart (the node is caught up on its heights) is not sent again.
CREATE TABLE webhook_delivery (
    webhook_id TEXT PRIMARY KEY,
    -- Milliseconds since the Unix epoch: kept until the node's wait ends.
    expires_at BIGINT NOT NULL
);
CREATE INDEX webhook_delivery_expires_idx ON webhook_delivery (expires_at);
