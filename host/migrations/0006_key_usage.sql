-- Key usage: signs counted in memory and added here in batches (so replicas add up),
-- and the time of the latest (milliseconds since the epoch; NULL: never used).
ALTER TABLE keys ADD COLUMN sign_count BIGINT NOT NULL DEFAULT 0;
ALTER TABLE keys ADD COLUMN last_used_at BIGINT;
