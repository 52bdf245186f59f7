-- A solution's payout address: the welcome's `address` of the connection that sent
-- it, so that a miner's solutions over time are one indexed range of rows. Rows
-- stored before have none (NULL) and are counted for no one. Only rows with an
-- address are indexed: a query by address or over addresses never needs the others.
ALTER TABLE solution ADD COLUMN address TEXT NULL;
CREATE INDEX solution_address_created_at_idx ON solution (address, created_at) WHERE address IS NOT NULL;
